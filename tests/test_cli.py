"""Every training flag reaches the config; bad values stop at once with one line and exit code 2."""

import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import train_musclebob_improved
from musclebob_helpers.cli import config_from_args, print_config
from musclebob_helpers.config import TINY_DEFAULTS, TrainConfig, flag_name

ROOT = Path(__file__).resolve().parent.parent
PROG = "train_musclebob_improved.py"


def parse(argv):
    """(config, where each value came from); the run folder's check runs too (its refusals exit 2)."""
    return config_from_args(argv, PROG, "test")[:2]


def test_each_flag_reaches_the_config(tmp_path):
    argv = [
        "--model",
        "tiny",
        "--epochs",
        "3",
        "--learning-rate",
        "1e-3",
        "--num-samples",
        "40",
        "--num-generations",
        "4",
        "--batch-size",
        "5",
        "--fewshot-ratio",
        "0.5",
        "--no-fewshot",
        "--control-ratio",
        "0.1",
        "--reward",
        "guide",
        "--max-completion-length",
        "20",
        "--temperature",
        "0.9",
        "--beta",
        "0.02",
        "--lora",
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--lora-dropout",
        "0.1",
        "--lora-target-modules",
        "q_proj,v_proj",
        "--load-in-4bit",
        "--merge-adapter",
        "--no-gradient-checkpointing",
        "--use-vllm",
        "--vllm-gpu-memory-utilization",
        "0.5",
        "--preset",
        "colab-t4",
        "--validation-samples",
        "2",
        "--validate-every",
        "3",
        "--keep-checkpoints",
        "3",
        "--output-dir",
        str(tmp_path / "o"),
        "--resume-from-checkpoint",
        "auto",
        "--overwrite",
        "--seed",
        "7",
        "--ignore-mismatch",
        "--trust-remote-code",
    ]
    cfg, sources = parse(argv)
    assert cfg == TrainConfig(
        model="tiny",
        epochs=3,
        learning_rate=1e-3,
        num_samples=40,
        num_generations=4,
        batch_size=5,
        fewshot_ratio=0.5,
        use_fewshot=False,
        control_ratio=0.1,
        reward="guide",
        max_completion_length=20,
        temperature=0.9,
        beta=0.02,
        lora=True,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        lora_target_modules="q_proj,v_proj",
        load_in_4bit=True,
        merge_adapter=True,
        gradient_checkpointing=False,
        use_vllm=True,
        vllm_gpu_memory_utilization=0.5,
        preset="colab-t4",
        validation_samples=2,
        validate_every=3,
        keep_checkpoints=3,
        output_dir=str(tmp_path / "o"),
        resume_from_checkpoint="auto",
        overwrite=True,
        seed=7,
        ignore_mismatch=True,
        trust_remote_code=True,
    )
    assert set(sources.values()) == {"you"}  # the user set everything: no preset or tiny default applied
    # The test above names every field's flag (a boolean in either form): a new field without a test fails here.
    assert all(flag_name(f) in argv or "--no-" + flag_name(f)[2:] in argv for f in fields(TrainConfig))


def test_guide_defaults_and_tiny_defaults():
    cfg, sources = parse([])
    assert (
        cfg.model,
        cfg.epochs,
        cfg.learning_rate,
        cfg.num_samples,
        cfg.num_generations,
        cfg.fewshot_ratio,
        cfg.output_dir,
    ) == ("Qwen/Qwen2.5-0.5B-Instruct", 5, 5e-5, 128, 8, 0.15, "./musclebob-model-improved")
    assert cfg.use_fewshot and cfg.resume_from_checkpoint is None and set(sources.values()) == {"default"}
    assert not cfg.trust_remote_code and not cfg.ignore_mismatch  # the safe choices unless asked
    cfg, sources = parse(["--model", "tiny"])
    assert {k for k, v in sources.items() if v == "tiny-model default"} == set(TINY_DEFAULTS)
    assert cfg.learning_rate == TINY_DEFAULTS["learning_rate"]
    cfg, sources = parse(["--model", "tiny", "--learning-rate", "0.01"])
    assert cfg.learning_rate == 0.01 and sources["learning_rate"] == "you"
    cfg, sources = parse(["--model", "tiny", "--fewshot", "--gradient-checkpointing"])  # the positive forms too
    assert cfg.use_fewshot and cfg.gradient_checkpointing and sources["use_fewshot"] == "you"


def printed(argv):
    lines = []
    print_config(*parse(argv), log=lines.append)
    pairs = (line.strip().rstrip(")").rsplit("  (", 1) for line in lines[1:-1])
    return {typed.strip(): source for typed, source in pairs}


def test_printed_config_reads_as_typed_with_its_source(tmp_path):
    out = ["--output-dir", str(tmp_path / "o")]
    default = printed(out)
    assert default["--fewshot"] == "default" and default["--gradient-checkpointing"] == "default"  # both on
    assert "--no-fewshot" not in default and "--no-gradient-checkpointing" not in default
    assert default["--no-lora"] == "default" and default["--epochs 5"] == "default"
    assert default["--model Qwen/Qwen2.5-0.5B-Instruct"] == "default"
    assert default[f"--output-dir {tmp_path / 'o'}"] == "you" and default["--preset (not set)"] == "default"
    tiny = printed(["--model", "tiny", "--no-fewshot", *out])
    assert tiny["--model tiny"] == "you" and tiny["--no-fewshot"] == "you"
    assert tiny["--learning-rate 0.0002"] == tiny["--max-completion-length 32"] == "tiny-model default"
    preset = printed(["--preset", "colab-a100", "--epochs", "2", *out])
    assert preset["--batch-size 8"] == preset["--no-gradient-checkpointing"] == "preset colab-a100"
    assert preset["--epochs 2"] == "you" and preset["--preset colab-a100"] == "you"
    lora = printed(["--model", "tiny", "--lora", *out])
    assert lora["--learning-rate 0.005"] == "tiny-model LoRA default"
    # What is printed is what the user would type: the printed flags, typed back, give the same configuration.
    argv = ["--model", "tiny", "--preset", "colab-l4", "--output-dir", str(tmp_path / "my runs")]
    typed = [w for text in printed(argv) if not text.endswith("(not set)") for w in shlex.split(text.strip())]
    assert parse(typed)[0] == parse(argv)[0]


BAD = [
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "two"], "--epochs"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--fewshot-ratio", "1.5"], "--fewshot-ratio"),
    (["--fewshot-ratio", "-0.1"], "--fewshot-ratio"),
    (["--num-generations", "1"], "--num-generations"),
    (["--num-samples", "0"], "--num-samples"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "200"], "--batch-size"),  # more prompts per step than there are prompts
    (["--control-ratio", "1"], "--control-ratio"),
    (["--reward", "best"], "--reward"),
    (["--max-completion-length", "0"], "--max-completion-length"),
    (["--temperature", "0"], "--temperature"),
    (["--resume-from-checkpoint", "/no/such/checkpoint"], "--resume-from-checkpoint"),
    (["--model", "not a model name!"], "--model"),
    (["--model", "Nobody/does-not-exist-offline"], "--model"),
    (["--seed", "-3"], "--seed"),
    (["--bogus-flag"], "--bogus-flag"),
    (["--fewshot=no"], "--fewshot"),  # a boolean takes no value: --fewshot or --no-fewshot
    # What this machine cannot do (no GPU here), and the scaling options' values.
    (["--lora", "--load-in-4bit"], "--load-in-4bit", "CUDA GPU"),
    (["--load-in-4bit"], "--load-in-4bit", "only with --lora"),
    (["--merge-adapter"], "--merge-adapter", "only with --lora"),
    (["--use-vllm"], "--use-vllm", "vLLM is not installed"),
    (["--lora", "--lora-r", "0"], "--lora-r", ">= 1"),
    (["--lora", "--lora-dropout", "1"], "--lora-dropout", "probability"),
    (["--lora", "--lora-target-modules", ",,"], "--lora-target-modules", "module names"),
    (["--vllm-gpu-memory-utilization", "1.5"], "--vllm-gpu-memory-utilization", "between 0 and 1"),
    (["--preset", "h100-cluster"], "--preset", "cpu-tiny"),
]


@pytest.mark.parametrize("case", BAD, ids=[" ".join(c[0]) for c in BAD])
def test_bad_values_stop_early_with_one_line(tmp_path, monkeypatch, capsys, case):
    from musclebob_helpers import training

    argv, flag, why = (*case, "")[:3]
    if "--use-vllm" in argv and training.package_available("vllm"):
        pytest.skip("vllm is installed here")
    monkeypatch.setattr(training, "run_training", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model = [] if "--model" in argv else ["--model", "tiny"]
    with pytest.raises(SystemExit) as exc:
        train_musclebob_improved.main([*model, "--output-dir", str(out), *argv])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and not captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:") and flag in lines[0] and why in lines[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # nothing in the output dir changed


@pytest.mark.slow
def test_bad_value_from_the_real_script_is_exit_code_2(tmp_path):
    """The process boundary itself: the script run by Python exits 2 with one line and no traceback."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / PROG), "--model", "tiny", "--epochs", "two", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--epochs" in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())


def test_finished_run_is_not_overwritten_by_accident(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "final_validation.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        parse(["--model", "tiny", "--output-dir", str(out)])
    assert exc.value.code == 2
    parse(["--model", "tiny", "--output-dir", str(out), "--overwrite"])  # allowed when asked
    parse(["--model", "tiny", "--output-dir", str(out), "--resume-from-checkpoint", "auto"])


def test_unfinished_run_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    with pytest.raises(SystemExit):
        parse(["--model", "tiny", "--output-dir", str(tmp_path)])
    parse(["--model", "tiny", "--output-dir", str(tmp_path), "--resume-from-checkpoint", "auto"])


def test_help_is_instant_and_documents_batch_size():
    proc = subprocess.run([sys.executable, str(ROOT / PROG), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "PROMPTS per optimizer step" in proc.stdout
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv=['x','--help']\n"
            "import train_musclebob_improved as t\ntry: t.main(['--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert check.stdout.strip().endswith("False")  # heavy imports only after the flags are good


def test_unreachable_hub_is_one_line_even_with_retries(tmp_path):
    # Without HF_HUB_OFFLINE the hub client retries and logs each retry; the user still gets one line.
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: fails like an offline machine, never leaves it
    proc = subprocess.run(
        [sys.executable, str(ROOT / PROG), "--model", "Nobody/unreachable", "--output-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--model tiny" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
