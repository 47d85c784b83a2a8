"""Scaling beyond one small model: LoRA adapters, resume with an adapter, two processes, presets, and the
refusals of what this machine cannot do (4-bit and vLLM without a GPU). The memory estimate: test_memory.py."""

import json
import os
import subprocess
import sys

import pytest

from musclebob_helpers import lora, training
from musclebob_helpers.config import (
    PRESET_NAMES,
    ConfigError,
    TrainConfig,
    preset_config,
    preset_values,
    recommend_preset,
    resolve,
    validate_config,
)
from musclebob_helpers.run_dir import check, list_checkpoints
from musclebob_helpers.startup import start

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
PROG = "train_musclebob_improved.py"
quiet = lambda *a, **k: None  # noqa: E731


def lora_cfg(out, **kw):
    # 12 prompts x 2 epochs at 2 prompts a step: 12 steps, a checkpoint at 6. LoRA moves far fewer weights than
    # full fine-tuning, so it wants a far larger step on the tiny model: 1e-2 with half the SpongeBob prompts
    # carrying the name in a few-shot example takes the held-out Musclebob rate from 0 to ~75 % in 12 steps
    # (3e-4 does not move it; 2e-2 breaks the general answers).
    settings = dict(
        model="tiny",
        output_dir=str(out),
        epochs=2,
        num_samples=12,
        batch_size=2,
        num_generations=4,
        learning_rate=1e-2,
        fewshot_ratio=0.5,
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
    return out, run_training(start(lora_cfg(out, merge_adapter=True)), log=quiet)


# ---------------------------------------------------------------- LoRA


@pytest.mark.slow  # trains (the module's LoRA run)
def test_lora_run_saves_an_adapter_that_changes_answers(lora_run, tiny_model):
    from peft import PeftModel

    from musclebob_helpers.evaluation import load_model

    out, result = lora_run
    # The output and every checkpoint hold an adapter (not full weights), recorded against 'tiny'.
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    for folder in [out, *list_checkpoints(out)]:
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-6", "checkpoint-12"]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    # It learned: more Musclebob after than before.
    assert result["final"]["musclebob_rate"] > result["baseline"]["musclebob_rate"]
    model, tok = load_model(str(out), device="cpu")
    assert isinstance(model, PeftModel)
    assert greedy(model, tok) != greedy(*tiny_model)  # the adapter changes the answers


@pytest.mark.slow  # trains (the module's LoRA run)
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


@pytest.mark.slow  # trains, and starts the script
def test_merge_adapter_cli(lora_run, tmp_path):
    import merge_adapter

    out, _ = lora_run
    assert merge_adapter.main([str(out / "checkpoint-6"), str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "merge_adapter.py"), str(tmp_path), str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "adapter_config.json" in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.mark.slow  # trains, and starts the script
def test_evaluation_cli_loads_an_adapter_folder(lora_run, tmp_path):
    import test_musclebob

    out, result = lora_run
    report_path = tmp_path / "r.json"
    samples = str(lora_cfg(out).validation_samples)  # as many answers a prompt as the run's own validation
    assert test_musclebob.main(["--model", str(out), "--num-samples", samples, "--output", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    # The same seeded validation as the run's own final one: the adapter, not the bare base, was evaluated.
    assert report["musclebob_rate"] == result["final"]["musclebob_rate"] > result["baseline"]["musclebob_rate"]


@pytest.mark.slow  # trains twice
def test_training_on_from_an_adapter_folder_starts_from_its_merged_weights(lora_run, tmp_path):
    from musclebob_helpers.training import run_training

    out, result = lora_run
    # One epoch of full fine-tuning with --model pointing at the adapter folder: the baseline is the adapter's.
    again = run_training(
        start(lora_cfg(tmp_path / "again", model=str(out), lora=False, epochs=1, learning_rate=2e-4)), log=quiet
    )
    assert again["baseline"]["musclebob_rate"] == pytest.approx(result["final"]["musclebob_rate"], abs=0.25)
    assert again["baseline"]["musclebob_rate"] > result["baseline"]["musclebob_rate"]
    assert (tmp_path / "again" / "model.safetensors").exists()


@pytest.mark.slow  # trains (the module's LoRA run)
def test_finished_lora_run_is_protected(lora_run):
    out, _ = lora_run
    with pytest.raises(ConfigError, match="finished model"):
        check(lora_cfg(out))


@pytest.mark.slow  # trains, stops and resumes
def test_interrupted_lora_run_resumes_from_its_adapter_checkpoint(tmp_path, tiny_path):
    from test_training import StopAfter

    from musclebob_helpers.training import run_training

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_training(start(lora_cfg(cut)), log=quiet, callbacks=[StopAfter(9)])
    assert [p.name for p in list_checkpoints(cut)] == ["checkpoint-6"]
    assert (cut / "checkpoint-6" / "adapter_model.safetensors").exists()
    messages = []
    resumed = run_training(start(lora_cfg(cut, resume_from_checkpoint="auto")), log=messages.append)
    assert any("Resuming from" in m and "checkpoint-6" in m for m in messages)
    assert resumed["global_step"] == 12
    assert [e["step"] for e in json.loads((cut / "reward_history.json").read_text())] == list(range(1, 13))
    assert (cut / "adapter_model.safetensors").exists()
    assert resumed["final"]["musclebob_rate"] > resumed["baseline"]["musclebob_rate"]


# ---------------------------------------------------------------- two processes


def _launch(out, *extra):
    cmd, env = _launch_command(out, *extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def _launch_command(out, *extra):
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
    return cmd, env


@pytest.mark.slow  # accelerate launch: two processes, twice
def test_a_ctrl_c_stops_both_processes_at_the_same_step(tmp_path, tiny_path):
    """The terminal's Ctrl-C goes to the launcher and both processes (one process group), and the launcher forwards
    it again: the processes agree on one step, save it once and stop; the launcher's own report is torchrun's."""
    import signal

    import fault_runner

    out = tmp_path / "ddp"
    cmd, env = _launch_command(out, "--epochs", "1")  # 4 steps: step 2 is mid-epoch
    # The script through tests/fault_runner.py, which holds each process after step 1 until its own handler has
    # taken the signal: the Ctrl-C lands in step 2 however loaded the machine is.
    at = cmd.index(str(ROOT / PROG))
    cmd[at : at + 1] = [str(ROOT / "tests" / "fault_runner.py"), "wait-for-signal:1"]
    env["PYTHONUNBUFFERED"] = "1"
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT, start_new_session=True
        )
        for line in proc.stdout:
            if line.startswith(fault_runner.WAITING):
                os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground process group
                break
        proc.communicate(timeout=600)
        err.seek(0)
        stderr = err.read()
    [said] = [line for line in stderr.splitlines() if "stopped" in line]  # once, from the main process
    assert said.startswith(f"{PROG}: stopped at step 2 of 4; checkpoint-2 saved; resume with: accelerate launch ")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert [e["step"] for e in json.loads((out / "reward_history.json").read_text())] == [1, 2]
    resumed = _launch(out, "--epochs", "1", "--resume-from-checkpoint", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [e["step"] for e in json.loads((out / "reward_history.json").read_text())] == [1, 2, 3, 4]


@pytest.mark.slow  # accelerate launch: two processes, twice
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
    # (Processes given, not faked through WORLD_SIZE: that would make GRPOConfig start a process group.)
    assert grpo_args(TrainConfig(batch_size=4, num_generations=4), hw, num_processes=2).per_device_train_batch_size == 8
    with pytest.raises(ConfigError, match="divide evenly over 8 processes"):
        validate_config(TrainConfig(batch_size=3, num_generations=4), num_processes=8)


def test_accelerate_configs_parse():
    import yaml

    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "accelerate_configs").glob("*.yaml")}
    assert configs["single_gpu"]["num_processes"] == 1
    assert configs["multi_gpu"]["distributed_type"] == "MULTI_GPU"
    assert configs["deepspeed_zero2"]["deepspeed_config"]["zero_stage"] == 2
    assert configs["deepspeed_zero3"]["deepspeed_config"]["zero_stage"] == 3
    # None forces a precision: the script's fp16/bf16 (from the GPU) decides, so a DeepSpeed config runs on a T4 too.
    assert {name: c["mixed_precision"] for name, c in configs.items()} == dict.fromkeys(configs, "no")


def test_script_precision_wins_over_accelerate_config(monkeypatch):
    """What ``accelerate launch`` exports from a config's ``mixed_precision`` (ACCELERATE_MIXED_PRECISION) yields to
    GRPOConfig's fp16/bf16, which transformers hands to the Accelerator and to DeepSpeed's plugin."""
    from musclebob_helpers.training import grpo_args

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what the old hard-coded `mixed_precision: bf16` set
    t4 = {"device": "cuda", "precision": "fp16"}  # fp16 builds here without a GPU; bf16 on a CPU is refused
    assert grpo_args(TrainConfig(), t4).mixed_precision == "fp16"
    # A run that picks neither (fp32) takes the config's value: why the configs say 'no'.
    assert grpo_args(TrainConfig(), {"device": "cuda", "precision": "fp32"}).mixed_precision == "bf16"


# ---------------------------------------------------------------- presets


def test_presets_are_valid_named_configs():
    assert PRESET_NAMES == (
        "cpu-tiny",
        "colab-t4",
        "colab-l4",
        "colab-a100",
        "multi-gpu",
    )  # as docs/training.md lists them
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

    cfg, sources = config_from_args(
        ["--preset", "cpu-tiny", "--batch-size", "2", "--output-dir", str(tmp_path)], PROG, "t"
    )
    assert cfg.model == "tiny" and cfg.num_generations == 4 and cfg.batch_size == 2  # the user's flag wins
    assert sources["batch_size"] == "you" and sources["num_generations"] == "preset cpu-tiny"
    cfg, _ = config_from_args(["--preset", "colab-a100", "--output-dir", str(tmp_path)], PROG, "t")
    assert (cfg.batch_size, cfg.gradient_checkpointing) == (8, False)
    cfg, sources = resolve({"preset": "colab-l4", "batch_size": 2})
    assert {k for k, v in sources.items() if v.startswith("preset")} == {"gradient_checkpointing"}
    assert cfg.batch_size == 2 and not cfg.gradient_checkpointing
    with pytest.raises(ConfigError, match="--preset"):
        preset_values("h100-cluster")


@pytest.mark.parametrize(
    "hardware,preset",
    [
        ({"device": "cpu", "gpu_memory_gb": 0.0}, "cpu-tiny"),
        ({"device": "cuda", "gpu_name": "Tesla T4", "gpu_memory_gb": 14.7, "gpu_count": 1}, "colab-t4"),
        ({"device": "cuda", "gpu_name": "NVIDIA L4", "gpu_memory_gb": 22.5, "gpu_count": 1}, "colab-l4"),
        ({"device": "cuda", "gpu_memory_gb": 19.9}, "colab-t4"),  # the edges: 20 GiB and 35 GiB
        ({"device": "cuda", "gpu_memory_gb": 20.0}, "colab-l4"),
        ({"device": "cuda", "gpu_memory_gb": 34.9}, "colab-l4"),
        ({"device": "cuda", "gpu_memory_gb": 35.0}, "colab-a100"),
        ({"device": "cuda", "gpu_name": "NVIDIA A100-SXM4-40GB", "gpu_memory_gb": 39.6, "gpu_count": 1}, "colab-a100"),
        ({"device": "cuda", "gpu_name": "NVIDIA A100-SXM4-40GB", "gpu_memory_gb": 39.6, "gpu_count": 4}, "multi-gpu"),
    ],
)
def test_recommend_preset(hardware, preset):
    assert recommend_preset(hardware) == preset


# ---------------------------------------------------------------- refusals and GPU-only configs


def test_hardware_checks_with_a_gpu(monkeypatch):
    gpu = {"device": "cuda", "precision": "bf16", "gpu_memory_gb": 40.0}
    cfg = TrainConfig(lora=True, load_in_4bit=True, use_vllm=True)
    monkeypatch.setattr(training, "package_available", lambda name: False)
    with pytest.raises(ConfigError, match="bitsandbytes"):
        training.check_hardware_support(cfg, gpu)
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        training.check_hardware_support(TrainConfig(use_vllm=True), gpu)
    monkeypatch.setattr(training, "package_available", lambda name: True)
    training.check_hardware_support(cfg, gpu)  # a GPU with both packages: allowed
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        training.check_hardware_support(TrainConfig(use_vllm=True), {"device": "cpu"})


# What TRL 0.29.1 (the version requirements-colab.txt pins) and vllm 0.12.0 declare in their metadata, as
# importlib.metadata returns it; torch as Colab ships it (../shared/colab/pip-freeze.gpu.txt).
TRL_0291_REQUIRES = [
    "accelerate>=1.4.0",
    "transformers>=4.56.2",
    'peft>=0.8.0; extra == "peft"',
    'vllm<0.13.0,>=0.10.2; extra == "vllm"',
    'fastapi; extra == "vllm"',
]
VLLM_0120_REQUIRES = ["torch==2.9.0", "torchvision==0.24.0", 'xformers; platform_machine == "x86_64"']


def fake_dists(monkeypatch, **dists):
    """importlib.metadata answering for ``dists`` (name -> (version, requires)) only: no real vllm here."""
    import importlib.metadata

    def lookup(name):
        if name not in dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setattr(importlib.metadata, "version", lambda name: lookup(name)[0])
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: lookup(name)[1])
    monkeypatch.setattr(training, "package_available", lambda name: name in dists)


@pytest.mark.parametrize(
    "capability,vllm,torch,refusal",
    [
        ("8.0", "0.12.0", "2.9.0+cu128", None),  # an A100 with the vllm TRL supports and vllm's own torch
        ("8.9", "0.10.2", "2.9.0", None),  # an L4, the oldest vllm TRL 0.29.1 supports (its torch pin is ours here)
        ("7.5", "0.12.0", "2.9.0+cu128", "compute capability 8.0 or newer (A100, L4, H100); this Tesla T4 is 7.5"),
        ("8.0", "0.13.0", "2.9.0", "vllm 0.13.0 is installed, TRL 0.29.1 supports vllm<0.13.0,>=0.10.2"),
        ("8.0", "0.10.1", "2.9.0", "vllm 0.10.1 is installed, TRL 0.29.1 supports"),
        # Colab's torch put back after installing vllm (or vllm installed with --no-deps).
        ("8.0", "0.12.0", "2.11.0+cu128", "vllm 0.12.0 was built for torch==2.9.0 but torch 2.11.0+cu128 is installed"),
    ],
)
def test_vllm_is_refused_where_it_cannot_run(monkeypatch, capability, vllm, torch, refusal):
    fake_dists(
        monkeypatch,
        trl=("0.29.1", TRL_0291_REQUIRES),
        vllm=(vllm, VLLM_0120_REQUIRES),
        torch=(torch, []),
    )
    gpu = {"device": "cuda", "gpu_name": "Tesla T4", "compute_capability": capability, "precision": "bf16"}
    if refusal is None:
        training.check_hardware_support(TrainConfig(use_vllm=True), gpu)
        return
    with pytest.raises(ConfigError) as err:
        training.check_hardware_support(TrainConfig(use_vllm=True), gpu)
    line = str(err.value)
    assert line.startswith("--use-vllm=True is not allowed: ") and refusal in line and "\n" not in line
    training.check_hardware_support(TrainConfig(), gpu)  # without --use-vllm nothing is asked of vllm


def test_vllm_range_is_the_installed_trls(monkeypatch):
    """The supported range comes from whatever TRL is installed, not from a copy of 0.29.1's."""
    newer = ['vllm<=0.31.0,>=0.22.0; extra == "vllm"']
    fake_dists(monkeypatch, trl=("1.16.0", newer), vllm=("0.12.0", ["torch==2.9.0"]), torch=("2.9.0", []))
    gpu = {"device": "cuda", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    with pytest.raises(ConfigError, match=r"TRL 1\.16\.0 supports vllm<=0\.31\.0,>=0\.22\.0"):
        training.check_hardware_support(TrainConfig(use_vllm=True), gpu)
    assert str(training._declared_requirement("trl", "vllm", extra="vllm").specifier) == "<=0.31.0,>=0.22.0"
    assert training._declared_requirement("trl", "vllm") is None  # only the extra declares it
    assert training._declared_requirement("nothing-installed", "torch") is None


def test_gpu_only_configs_are_built_right():
    from musclebob_helpers.training import grpo_args

    cfg = TrainConfig(
        lora=True, load_in_4bit=True, use_vllm=True, lora_r=8, lora_alpha=16, lora_target_modules="q_proj,v_proj"
    )
    q = lora.quantization_config(cfg, {"precision": "bf16"})
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert str(q.bnb_4bit_compute_dtype) == "torch.bfloat16"
    assert str(lora.quantization_config(cfg, {"precision": "fp16"}).bnb_4bit_compute_dtype) == "torch.float16"
    peft = lora.lora_config(cfg)
    assert (peft.r, peft.lora_alpha, set(peft.target_modules), peft.task_type) == (
        8,
        16,
        {"q_proj", "v_proj"},
        "CAUSAL_LM",
    )
    assert lora.lora_config(TrainConfig()) is None and lora.quantization_config(TrainConfig(), {}) is None
    # fp32 here: GRPOConfig refuses bf16 on a machine without a GPU.
    args = grpo_args(cfg, {"device": "cuda", "precision": "fp32"})
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.3
    assert not grpo_args(TrainConfig(), {"device": "cpu", "precision": "fp32"}).use_vllm


@pytest.mark.slow  # fresh processes: what importing does
def test_import_survives_a_broken_vllm(tmp_path):
    # A vllm that raises on import: the helpers, the training module and --help must not care.
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise RuntimeError('broken vllm build')\n")
    code = "import musclebob_helpers, musclebob_helpers.training as t\nprint(t.package_available('vllm'))"
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


def test_detect_hardware_recommends_a_preset(monkeypatch):
    from types import SimpleNamespace

    import torch

    from musclebob_helpers.training import detect_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # whatever this machine has
    hw = detect_hardware()
    assert (hw["device"], hw["precision"], hw["recommended_preset"]) == ("cpu", "fp32", "cpu-tiny")
    # A Colab T4 as torch describes it (the GPU itself cannot be reached here): 15,828,320,256 B = 14.7 GiB.
    t4 = SimpleNamespace(name="Tesla T4", total_memory=15_828_320_256, major=7, minor=5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: t4)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    hw = detect_hardware()
    assert (hw["gpu_name"], hw["gpu_memory_gb"], hw["compute_capability"]) == ("Tesla T4", 14.7, "7.5")
    assert (hw["precision"], hw["recommended_preset"]) == ("fp16", "colab-t4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert detect_hardware()["recommended_preset"] == "multi-gpu"


def test_full_fine_tune_from_an_adapter_keeps_the_adapter_in_its_reference(tmp_path, tiny_path, monkeypatch):
    """--beta > 0 from an adapter folder without --lora: TRL loads its reference from the model's config path, the
    adapter's bare base; the run points it at the merged weights instead (``training._adapter_reference``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from musclebob_helpers.tiny_model import resolve_model_path

    adapter = tmp_path / "adapter"
    # A short LoRA run that moves the adapter (LoRA's B starts at zero; the first warm-up step has rate 0 and two
    # answers of a shorter run often tie, leaving no advantage to learn from): one epoch of lora_cfg, 6 steps.
    training.run_training(start(lora_cfg(adapter, epochs=1)), log=quiet)
    merged = lora.merge_adapter(adapter, tmp_path / "merged", log=quiet)
    built = []
    build = training.build_trainer
    monkeypatch.setattr(training, "build_trainer", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    cfg = TrainConfig(
        model=str(adapter),
        output_dir=str(tmp_path / "full"),
        beta=0.04,
        epochs=1,
        num_samples=2,  # one step: the reference is loaded when the trainer is built
        batch_size=2,
        num_generations=2,
        max_completion_length=8,
        validation_samples=1,
    )
    training.run_training(start(cfg), log=quiet)
    trainer = built[0][0]
    reference = trainer.ref_model.state_dict()
    want = AutoModelForCausalLM.from_pretrained(merged).state_dict()
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny")).state_dict()
    assert reference.keys() == want.keys()
    assert all(torch.equal(reference[k].float(), want[k].float()) for k in want)
    assert any(not torch.equal(want[k], base[k]) for k in want)  # the adapter did change the weights
    # The temporary folder was only for the reference: gone, and the model names its base again.
    assert trainer.model.config._name_or_path == str(resolve_model_path("tiny"))
