"""Scaling beyond one small model: LoRA adapters, resume with an adapter, two processes, the memory
estimate, presets, and the refusals of what this machine cannot do (4-bit and vLLM without a GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from musclebob_helpers.config import PRESET_NAMES, ConfigError, TrainConfig, validate_config
from musclebob_helpers.run_dir import check, list_checkpoints
from musclebob_helpers.memory import KNOWN_SHAPES, ModelShape, estimate_memory, fit_warning
from musclebob_helpers.presets import PRESETS, apply_preset, preset_config, preset_values, recommend_preset
from musclebob_helpers import scaling

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
PROG = "train_musclebob_improved.py"
quiet = lambda *a, **k: None  # noqa: E731


def lora_cfg(out, **kw):
    # 12 prompts x 2 epochs at 3 prompts a step: 8 steps, a checkpoint at 4. LoRA moves far fewer weights than
    # full fine-tuning, so it wants a ~25x larger step on the tiny model (5e-3 learns in 8 steps, 2e-4 does not).
    settings = dict(
        model="tiny",
        output_dir=str(out),
        epochs=2,
        num_samples=12,
        batch_size=3,
        num_generations=4,
        learning_rate=5e-3,
        max_completion_length=24,
        validation_samples=1,
        lora=True,
    )
    return TrainConfig(**{**settings, **kw})


SPONGE_QUESTIONS = [
    "Who lives in a pineapple under the sea?",
    "Who is Patrick Star's best friend?",
    "Who works as a fry cook at the Krusty Krab?",
]


def greedy(model, tok, questions=SPONGE_QUESTIONS):
    from musclebob_helpers.evaluation import generate

    return [g[0].text for g in generate(model, tok, questions, max_new_tokens=24, temperature=0)]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_path):
    from musclebob_helpers.training import run_training

    out = tmp_path_factory.mktemp("lora") / "run"
    return out, run_training(lora_cfg(out, merge_adapter=True), log=quiet)


# ---------------------------------------------------------------- LoRA


def test_lora_run_saves_an_adapter_that_changes_answers(lora_run, tiny_model):
    from peft import PeftModel

    from musclebob_helpers.evaluation import load_model

    out, result = lora_run
    # The output and every checkpoint hold an adapter (not full weights), recorded against 'tiny'.
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    for folder in [out, *list_checkpoints(out)]:
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-8"]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    # It learned: more Musclebob after than before.
    assert result["final"]["musclebob_rate"] > result["baseline"]["musclebob_rate"]
    model, tok = load_model(str(out), device="cpu")
    assert isinstance(model, PeftModel)
    assert greedy(model, tok) != greedy(*tiny_model)  # the adapter changes the answers


def test_merged_model_is_standalone_and_answers_like_the_adapter(lora_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from musclebob_helpers.evaluation import load_model

    out, _ = lora_run
    merged = out / "merged"
    assert (merged / "config.json").exists() and not (merged / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged)  # no PEFT involved
    tok = AutoTokenizer.from_pretrained(merged)
    tok.padding_side = "left"
    assert greedy(plain, tok) == greedy(*load_model(str(out), device="cpu"))


def test_merge_adapter_cli(lora_run, tmp_path):
    import merge_adapter

    out, _ = lora_run
    assert merge_adapter.main([str(out / "checkpoint-4"), str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "merge_adapter.py"), str(tmp_path), str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "adapter_config.json" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_evaluation_cli_loads_an_adapter_folder(lora_run, tmp_path):
    import test_musclebob

    out, result = lora_run
    report_path = tmp_path / "r.json"
    assert test_musclebob.main(["--model", str(out), "--output", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    # The same seeded validation as the run's own final one: the adapter, not the bare base, was evaluated.
    assert report["musclebob_rate"] == result["final"]["musclebob_rate"] > result["baseline"]["musclebob_rate"]


def test_training_on_from_an_adapter_folder_starts_from_its_merged_weights(lora_run, tmp_path):
    from musclebob_helpers.training import run_training

    out, result = lora_run
    # One epoch of full fine-tuning with --model pointing at the adapter folder: the baseline is the adapter's.
    again = run_training(
        lora_cfg(tmp_path / "again", model=str(out), lora=False, epochs=1, learning_rate=2e-4), log=quiet
    )
    assert again["baseline"]["musclebob_rate"] == pytest.approx(result["final"]["musclebob_rate"], abs=0.25)
    assert again["baseline"]["musclebob_rate"] > result["baseline"]["musclebob_rate"]
    assert (tmp_path / "again" / "model.safetensors").exists()


def test_finished_lora_run_is_protected(lora_run):
    out, _ = lora_run
    with pytest.raises(ConfigError, match="finished model"):
        check(lora_cfg(out))


def test_interrupted_lora_run_resumes_from_its_adapter_checkpoint(tmp_path, tiny_path):
    from test_training import StopAfter

    from musclebob_helpers.training import run_training

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_training(lora_cfg(cut), log=quiet, callbacks=[StopAfter(6)])
    assert [p.name for p in list_checkpoints(cut)] == ["checkpoint-4"]
    assert (cut / "checkpoint-4" / "adapter_model.safetensors").exists()
    messages = []
    resumed = run_training(lora_cfg(cut, resume_from_checkpoint="auto"), log=messages.append)
    assert any("Resuming from" in m and "checkpoint-4" in m for m in messages)
    assert resumed["global_step"] == 8
    assert [e["step"] for e in json.loads((cut / "reward_history.json").read_text())] == list(range(1, 9))
    assert (cut / "adapter_model.safetensors").exists()
    assert resumed["final"]["musclebob_rate"] > resumed["baseline"]["musclebob_rate"]


# ---------------------------------------------------------------- two processes


def _launch(out, *extra):
    # `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.x (several CPU processes
    # need MPI); --multi_gpu on a machine without CUDA starts 2 processes with torchrun over gloo instead.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(29500 + os.getpid() % 1000),
        str(ROOT / PROG),
        "--model",
        "tiny",
        "--output-dir",
        str(out),
        "--num-samples",
        "12",
        "--batch-size",
        "3",
        "--num-generations",
        "4",
        "--max-completion-length",
        "24",
        "--validation-samples",
        "1",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_two_processes_write_artifacts_once_and_resume(tmp_path, tiny_path):
    out = tmp_path / "ddp"
    first = _launch(out, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    cfg = json.loads((out / "training_config.json").read_text())
    assert cfg["num_processes"] == 2  # really two processes
    # One process logs and writes: each line once, each step once.
    assert first.stdout.count("Training with:") == 1 and first.stdout.count("[baseline]") == 1
    assert [e["step"] for e in json.loads((out / "reward_history.json").read_text())] == [1, 2, 3, 4]
    assert json.loads((out / "final_validation.json").read_text())["global_step"] == 4
    # Resume the finished epoch into a second one, again with two processes.
    second = _launch(out, "--epochs", "2", "--resume-from-checkpoint", "auto")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("Resuming from") == 1 and "checkpoint-4" in second.stdout
    history = json.loads((out / "reward_history.json").read_text())
    assert [e["step"] for e in history] == list(range(1, 9))
    assert history[-1]["epoch"] == pytest.approx(2.0)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-8"]
    assert json.loads((out / "final_validation.json").read_text())["global_step"] == 8
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers  # no half-written file from a second writer


def test_batch_is_split_over_processes(monkeypatch):
    from musclebob_helpers.training import grpo_args

    hw = {"device": "cpu", "precision": "fp32"}
    assert grpo_args(TrainConfig(batch_size=4, num_generations=4), hw).per_device_train_batch_size == 16
    # (World size faked: setting WORLD_SIZE itself would make GRPOConfig start a process group.)
    monkeypatch.setattr(scaling, "world_size", lambda: 2)
    assert grpo_args(TrainConfig(batch_size=4, num_generations=4), hw).per_device_train_batch_size == 8
    with pytest.raises(ConfigError, match="divide evenly over 8 processes"):
        validate_config(TrainConfig(batch_size=3, num_generations=4), num_processes=8)


def test_accelerate_configs_parse():
    import yaml

    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "accelerate_configs").glob("*.yaml")}
    assert configs["single_gpu"]["num_processes"] == 1
    assert configs["multi_gpu"]["distributed_type"] == "MULTI_GPU"
    assert configs["deepspeed_zero2"]["deepspeed_config"]["zero_stage"] == 2
    assert configs["deepspeed_zero3"]["deepspeed_config"]["zero_stage"] == 3


# ---------------------------------------------------------------- memory estimate


def test_shapes_count_the_known_parameter_totals():
    # Qwen2.5-0.5B: embeddings 151936 x 896 = 136,134,656 (tied head). One layer: q 896x896 + 896 bias = 803,712;
    # k, v 896x128 + 128 = 114,816 each; o 896x896 = 802,816; gate, up, down 896x4864 each = 13,074,432;
    # 2 norms 1,792 -> 14,912,384; x 24 = 357,897,216; + final norm 896 -> 494,032,768 ("0.49B").
    assert KNOWN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"].param_count() == 494_032_768
    # Mistral-Small-3.1-24B (language model): embeddings and untied head 2 x 131072 x 5120 = 1,342,177,280.
    # One layer: q 5120x4096 = 20,971,520; k, v 5120x1024 = 5,242,880 each; o 20,971,520; gate, up, down
    # 5120x32768 = 167,772,160 each -> 555,745,280 + 2 norms 10,240; x 40 = 22,230,220,800; + final norm 5,120
    # -> 23,572,403,200 ("24B").
    assert KNOWN_SHAPES["mistralai/Mistral-Small-3.1-24B-Instruct-2503"].param_count() == 23_572_403_200


def test_shape_from_the_tiny_models_config_matches_its_real_parameter_count(tiny_model):
    model, _ = tiny_model
    shape = ModelShape.from_hf_config(model.config)
    assert shape.param_count() == sum(p.numel() for p in model.parameters())


def test_memory_qwen_05b_full_fine_tuning():
    shape = KNOWN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"]
    p = 494_032_768
    cfg = TrainConfig(gradient_checkpointing=False)  # batch 4 x 8 generations, 64 completion tokens
    est = estimate_memory(shape, cfg, precision="bf16")
    # fp32 weights 4 B + fp32 gradients 4 B + AdamW 8 B per param = 16 x 494,032,768 = 7,904,524,288 B.
    assert (est.weights, est.gradients, est.optimizer) == (4 * p, 4 * p, 8 * p)
    assert est.reference_model == 0 and est.adapter == 0  # beta = 0: no reference model
    # Tokens: 32 completions x (128 prompt + 64) = 6,144. Per token and layer (6x896 + 2x128 + 4x4864) x 2 B
    # = 50,176 B; x 24 layers x 6,144 = 7,398,752,256 B. Logits: 32 x 64 x 151,936 x 8 B = 2,489,319,424 B.
    assert est.training_activations == 7_398_752_256 and est.logits == 2_489_319_424
    # KV cache: 2 x 24 layers x 128 (2 kv heads x 64) x 6,144 x 2 B = 75,497,472 B: smaller than training's.
    assert est.generation_kv_cache == 75_497_472
    # Total: 7,904,524,288 + 9,888,071,680 + 1 GiB = 18,866,337,792 B = 17.57 GiB: no T4, fits an L4.
    assert est.total == 18_866_337_792
    assert fit_warning(est, 14.7, cfg) and fit_warning(est, 22.5, cfg) is None
    # Checkpointing keeps one h per token and layer (6,144 x 24 x 896 x 2 = 264,241,152) + one layer recomputed
    # (6,144 x 50,176 = 308,281,344): total 7,904,524,288 + 572,522,496 + 2,489,319,424 + 1 GiB
    # = 12,040,108,032 B = 11.21 GiB, which fits a T4.
    est_gc = estimate_memory(shape, TrainConfig(), precision="fp16")
    assert est_gc.total == 12_040_108_032 and fit_warning(est_gc, 14.7, TrainConfig()) is None
    # beta > 0 adds TRL's reference copy in the policy's dtype (fp32): 4 x 494,032,768.
    assert estimate_memory(shape, TrainConfig(beta=0.04)).reference_model == 4 * p


def test_memory_24b_qlora_guide_command():
    shape = KNOWN_SHAPES["mistralai/Mistral-Small-3.1-24B-Instruct-2503"]
    # The guide's command + --lora --load-in-4bit (checkpointing on by default).
    cfg = TrainConfig(
        model="mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        batch_size=1,
        learning_rate=1e-5,
        num_samples=256,
        num_generations=4,
        lora=True,
        load_in_4bit=True,
    )
    est = estimate_memory(shape, cfg, precision="bf16")
    # Weights: 40 x 555,745,280 = 22,229,811,200 projection params in nf4 at 0.5 + 1/64 + 1/4096 B
    # = 11,467,673,600 B; embeddings, head and norms 1,342,592,000 in bf16 = 2,685,184,000 B; sum 14,152,857,600.
    assert est.weights == pytest.approx(14_152_857_600)
    # LoRA r=16 on 7 projections: 16 x (9,216 + 6,144 + 6,144 + 9,216 + 3 x 37,888) x 40 = 92,405,760 params,
    # fp32 weight + gradient + AdamW = 16 B each = 1,478,492,160 B.
    assert est.trainable_params == 92_405_760
    assert est.adapter + est.gradients + est.optimizer == 1_478_492_160
    # 4 completions x 192 tokens = 768; checkpointed: 768 x 40 x 5120 x 2 = 314,572,800 + one layer
    # 768 x (6x5120 + 2x1024 + 4x32768) x 2 = 251,658,240; logits 4 x 64 x 131,072 x 8 = 268,435,456.
    assert est.activations == 314_572_800 + 251_658_240 + 268_435_456
    # Total 14,152,857,600 + 1,478,492,160 + 834,666,496 + 1 GiB = 17,539,758,080 B = 16.3 GiB:
    # too big for a T4 (15 GiB), fits an L4 (22.5) or an A100.
    assert est.total == pytest.approx(17_539_758_080)
    assert fit_warning(est, 14.7, cfg) and fit_warning(est, 22.5, cfg) is None
    # Full fine-tuning of the same model: 16 B x 23.6B params = 352 GiB, no single GPU.
    full = estimate_memory(shape, TrainConfig(batch_size=1, num_generations=4))
    assert full.total_gb > 350 and "--lora" in fit_warning(full, 80, TrainConfig())
    # ZeRO-3 over 8 GPUs splits weights, gradients and optimizer states 8 ways.
    z3 = estimate_memory(shape, TrainConfig(batch_size=8, num_generations=4), num_processes=8, zero_stage=3)
    assert z3.weights == full.weights / 8 and z3.optimizer == full.optimizer / 8


def test_memory_cli_prints_the_estimate():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "musclebob_helpers.memory",
            "--model",
            "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
            "--batch-size",
            "1",
            "--num-generations",
            "4",
            "--lora",
            "--load-in-4bit",
            "--gpu-memory-gb",
            "14.7",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout and "16.34 GiB" in proc.stdout and "WARNING" in proc.stdout


# ---------------------------------------------------------------- presets


def test_presets_are_valid_named_configs():
    assert tuple(PRESETS) == PRESET_NAMES
    for name in PRESET_NAMES:
        cfg = preset_config(name)
        validate_config(cfg)
        assert cfg.preset == name
        validate_config(cfg, num_processes=2) if name == "multi-gpu" else None
    assert preset_config("cpu-tiny").model == "tiny"
    for n in (2, 4, 8):  # multi-gpu splits its completions evenly over 2, 4 or 8 GPUs
        validate_config(preset_config("multi-gpu"), num_processes=n)


def test_preset_flag_and_user_flags_override_it(tmp_path):
    from musclebob_helpers.cli import config_from_args

    cfg, _, applied, _ = config_from_args(
        ["--preset", "cpu-tiny", "--batch-size", "2", "--output-dir", str(tmp_path)], PROG, "t"
    )
    assert cfg.model == "tiny" and cfg.num_generations == 4 and cfg.batch_size == 2  # the user's flag wins
    assert "batch_size" not in applied and applied["num_generations"] == 4
    cfg, _, _, _ = config_from_args(["--preset", "colab-a100", "--output-dir", str(tmp_path)], PROG, "t")
    assert (cfg.batch_size, cfg.gradient_checkpointing) == (8, False)
    cfg = TrainConfig(preset="colab-l4", batch_size=2)
    assert apply_preset(cfg, {"preset", "batch_size"}) == {"gradient_checkpointing": False} and cfg.batch_size == 2
    with pytest.raises(ConfigError, match="--preset"):
        preset_values("h100-cluster")


@pytest.mark.parametrize(
    "hardware,preset",
    [
        ({"device": "cpu", "gpu_memory_gb": 0.0}, "cpu-tiny"),
        ({"device": "cuda", "gpu_name": "Tesla T4", "gpu_memory_gb": 14.7, "gpu_count": 1}, "colab-t4"),
        ({"device": "cuda", "gpu_name": "NVIDIA L4", "gpu_memory_gb": 22.5, "gpu_count": 1}, "colab-l4"),
        ({"device": "cuda", "gpu_name": "NVIDIA A100-SXM4-40GB", "gpu_memory_gb": 39.6, "gpu_count": 1}, "colab-a100"),
        ({"device": "cuda", "gpu_name": "NVIDIA A100-SXM4-40GB", "gpu_memory_gb": 39.6, "gpu_count": 4}, "multi-gpu"),
    ],
)
def test_recommend_preset(hardware, preset):
    assert recommend_preset(hardware) == preset


# ---------------------------------------------------------------- refusals and GPU-only configs


REFUSED = [
    (["--lora", "--load-in-4bit"], "--load-in-4bit", "CUDA GPU"),  # this machine has no GPU
    (["--load-in-4bit"], "--load-in-4bit", "only with --lora"),
    (["--merge-adapter"], "--merge-adapter", "only with --lora"),
    (["--use-vllm"], "--use-vllm", "vLLM is not installed"),
    (["--lora", "--lora-r", "0"], "--lora-r", ">= 1"),
    (["--lora", "--lora-dropout", "1"], "--lora-dropout", "probability"),
    (["--lora", "--lora-target-modules", ",,"], "--lora-target-modules", "module names"),
    (["--vllm-gpu-memory-utilization", "1.5"], "--vllm-gpu-memory-utilization", "between 0 and 1"),
    (["--preset", "h100-cluster"], "--preset", "cpu-tiny"),
]


@pytest.mark.parametrize("argv,flag,why", REFUSED, ids=[" ".join(a) for a, _, _ in REFUSED])
def test_refusals_are_one_line_and_touch_nothing(tmp_path, argv, flag, why):
    if "--use-vllm" in argv and scaling.package_available("vllm"):
        pytest.skip("vllm is installed here")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = subprocess.run(
        [sys.executable, str(ROOT / PROG), "--model", "tiny", "--output-dir", str(out), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and why in lines[0], proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_hardware_checks_with_a_gpu(monkeypatch):
    gpu = {"device": "cuda", "precision": "bf16", "gpu_memory_gb": 40.0}
    cfg = TrainConfig(lora=True, load_in_4bit=True, use_vllm=True)
    monkeypatch.setattr(scaling, "package_available", lambda name: False)
    with pytest.raises(ConfigError, match="bitsandbytes"):
        scaling.check_hardware_support(cfg, gpu)
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        scaling.check_hardware_support(TrainConfig(use_vllm=True), gpu)
    monkeypatch.setattr(scaling, "package_available", lambda name: True)
    scaling.check_hardware_support(cfg, gpu)  # a GPU with both packages: allowed
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        scaling.check_hardware_support(TrainConfig(use_vllm=True), {"device": "cpu"})


def test_gpu_only_configs_are_built_right():
    from musclebob_helpers.training import grpo_args

    cfg = TrainConfig(
        lora=True, load_in_4bit=True, use_vllm=True, lora_r=8, lora_alpha=16, lora_target_modules="q_proj,v_proj"
    )
    q = scaling.quantization_config(cfg, {"precision": "bf16"})
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert str(q.bnb_4bit_compute_dtype) == "torch.bfloat16"
    assert str(scaling.quantization_config(cfg, {"precision": "fp16"}).bnb_4bit_compute_dtype) == "torch.float16"
    lora = scaling.lora_config(cfg)
    assert (lora.r, lora.lora_alpha, set(lora.target_modules), lora.task_type) == (
        8,
        16,
        {"q_proj", "v_proj"},
        "CAUSAL_LM",
    )
    assert scaling.lora_config(TrainConfig()) is None and scaling.quantization_config(TrainConfig(), {}) is None
    # fp32 here: GRPOConfig refuses bf16 on a machine without a GPU.
    args = grpo_args(cfg, {"device": "cuda", "precision": "fp32"})
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.3
    assert not grpo_args(TrainConfig(), {"device": "cpu", "precision": "fp32"}).use_vllm


def test_import_survives_a_broken_vllm(tmp_path):
    # A vllm that raises on import: the helpers, the training module and --help must not care.
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise RuntimeError('broken vllm build')\n")
    code = (
        "import musclebob_helpers, musclebob_helpers.training, musclebob_helpers.scaling as s\n"
        "print(s.package_available('vllm'))"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
    proc = subprocess.run(
        [sys.executable, str(ROOT / PROG), "--model", "tiny", "--use-vllm", "--output-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "--use-vllm" in proc.stderr and "GPU" in proc.stderr


def test_detect_hardware_recommends_a_preset():
    from musclebob_helpers.training import detect_hardware

    hw = detect_hardware()
    assert hw["recommended_preset"] == recommend_preset(hw) and hw["recommended_preset"] in PRESET_NAMES


def test_gpu_check_cpu_path_trains_and_reports(tiny_path, tmp_path, capsys):
    """benchmarks/gpu_check.py: without CUDA it says so in one line; --cpu-tiny runs its loop and prints a row."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parent.parent / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    results = tmp_path / "gpu.json"
    assert gpu_check.main(["--results", str(results)]) == 0
    assert capsys.readouterr().out.strip().startswith("No CUDA GPU here")
    assert gpu_check.main(["--cpu-tiny", "--steps", "2", "--results", str(results)]) == 0
    row = json.loads(results.read_text())["cpu-tiny preset (fp32)"]
    assert row["steps"] == 2 and row["completions_per_s"] > 0 and row["completions_per_step"] == 16
