"""Every training flag reaches the config; bad values stop at once with one line and exit code 2."""

import json
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
    """(config, where each value came from): the flags only (the start checks the rest: ``BAD`` below)."""
    return config_from_args(argv, PROG, "test")


def test_each_flag_reaches_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")  # --push-to-hub needs a token at start-up
    argv = [
        "--push-to-hub",
        "me/musclebob",
        "--hub-public",
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
        "--loss-type",
        "dr_grpo",
        "--scale-rewards",
        "none",
        "--mask-truncated-completions",
        "--num-iterations",
        "2",
        "--epsilon",
        "0.1",
        "--epsilon-high",
        "0.28",
        "--trl-arg",
        "top_entropy_quantile=0.2",
        "--trl-arg",
        "log_completions=true",
        "--lr-scheduler",
        "linear",
        "--precision",
        "fp16",  # over the colab-t4 preset's fp32
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
        "--on-collapse",
        "stop",
        "--report-to",
        "wandb,tensorboard",
        "--keep-checkpoints",
        "3",
        "--save-steps",
        "5",
        "--save-minutes",
        "2.5",
        "--output-dir",
        str(tmp_path / "o"),
        "--work-dir",
        str(tmp_path / "w"),
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
        loss_type="dr_grpo",
        scale_rewards="none",
        mask_truncated_completions=True,
        num_iterations=2,
        epsilon=0.1,
        epsilon_high=0.28,
        trl_args=["top_entropy_quantile=0.2", "log_completions=true"],
        lr_scheduler="linear",
        precision="fp16",
        lora=True,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        lora_target_modules="q_proj,v_proj",
        load_in_4bit=True,
        merge_adapter=True,
        push_to_hub="me/musclebob",
        hub_public=True,
        gradient_checkpointing=False,
        use_vllm=True,
        vllm_gpu_memory_utilization=0.5,
        preset="colab-t4",
        validation_samples=2,
        validate_every=3,
        on_collapse="stop",
        report_to="wandb,tensorboard",
        keep_checkpoints=3,
        save_steps=5,
        save_minutes=2.5,
        output_dir=str(tmp_path / "o"),
        work_dir=str(tmp_path / "w"),
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
    assert tiny["--learning-rate 0.0003"] == tiny["--max-completion-length 32"] == "tiny-model default"
    preset = printed(["--preset", "colab-a100", "--epochs", "2", *out])
    assert preset["--batch-size 8"] == preset["--no-gradient-checkpointing"] == "preset colab-a100"
    assert preset["--epochs 2"] == "you" and preset["--preset colab-a100"] == "you"
    lora = printed(["--model", "tiny", "--lora", *out])
    assert lora["--learning-rate 0.002"] == "tiny-model LoRA default"
    # What is printed is what the user would type: the printed flags, typed back, give the same configuration.
    argv = ["--model", "tiny", "--preset", "colab-l4", "--output-dir", str(tmp_path / "my runs")]
    typed = [w for text in printed(argv) if not text.endswith("(not set)") for w in shlex.split(text.strip())]
    assert parse(typed)[0] == parse(argv)[0]


# ---------------------------------------------------------------------------------------------
# Bad command lines: one line naming flag, value and what is allowed; exit 2; nothing touched. Each case once.


def _finished(out):
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "final_validation.json").write_text("{}")


def _with_checkpoint(out):
    out.mkdir()
    (out / "checkpoint-2").mkdir()


def _mismatched(out):
    _with_checkpoint(out)
    (out / "training_config.json").write_text(json.dumps({"config": {"model": "tiny", "num_generations": 6}}))


def _damaged_checkpoint(out):
    _with_checkpoint(out)
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_hi')


def _file_in_the_way(out):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("not a folder")


# (argv, setup of the output dir, text the one line must hold). "{out}" is the output dir.
BAD = [
    (["--epochs", "0"], None, "--epochs=0 is not allowed"),
    (["--epochs", "1.5"], None, "--epochs: invalid int value: '1.5'"),
    (["--learning-rate", "0"], None, "--learning-rate=0.0 is not allowed: a number between 0 and 1"),
    (["--learning-rate", "inf"], None, "--learning-rate=inf is not allowed"),
    (["--learning-rate", "-0.5"], None, "--learning-rate=-0.5 is not allowed"),
    (["--learning-rate", "fast"], None, "--learning-rate/--lr: invalid float value"),
    (["--num-samples", "0"], None, "--num-samples=0 is not allowed"),
    (["--num-generations", "1"], None, "--num-generations=1 is not allowed: a whole number >= 2"),
    (["--batch-size", "0"], None, "--batch-size=0 is not allowed"),
    (["--batch-size", "20", "--num-samples", "10"], None, "at most --num-samples (10)"),
    (["--fewshot-ratio", "1.5"], None, "--fewshot-ratio=1.5 is not allowed: a share between 0 and 1"),
    (["--fewshot-ratio", "nan"], None, "--fewshot-ratio=nan is not allowed"),
    (["--control-ratio", "0.95"], None, "--control-ratio=0.95 is not allowed: a share between 0 and 0.9"),
    (["--reward", "Musclebob"], None, "--reward: invalid choice: 'Musclebob'"),
    (["--max-completion-length", "0"], None, "--max-completion-length=0 is not allowed"),
    (
        ["--max-completion-length", "100000"],
        None,
        "--max-completion-length=100000 is not allowed: fewer tokens than the context of --model tiny (512)",
    ),
    (["--temperature", "0"], None, "--temperature=0.0 is not allowed: a number > 0 and <= 10"),
    (["--temperature", "50"], None, "--temperature=50.0 is not allowed: a number > 0 and <= 10"),
    (["--beta", "-0.1"], None, "--beta=-0.1 is not allowed: a number >= 0"),
    (["--beta", "inf"], None, "--beta=inf is not allowed"),
    (["--validation-samples", "0"], None, "--validation-samples=0 is not allowed"),
    (["--seed", "-3"], None, "--seed=-3 is not allowed"),
    (["--seed", "4294967296"], None, "--seed=4294967296 is not allowed: a whole number from 0 to 4294967295"),
    (["--seed", "1e3"], None, "--seed: invalid int value"),
    (["--model", ""], None, "--model='' is not allowed"),
    (["--model", "not a model name!"], None, "--model='not a model name!' is not allowed"),
    (["--model", "Nobody/does-not-exist-offline"], None, "use --model tiny"),
    (["--model", "../relative/missing folder"], None, "--model='../relative/missing folder' is not allowed"),
    (["--output-dir", ""], "skip-out", "--output-dir='' is not allowed: a folder path"),
    (["--output-dir", "/proc/musclebob-out"], "skip-out", "--output-dir='/proc/musclebob-out' is not allowed"),
    (["--output-dir", "{out}/sub"], _file_in_the_way, "is a file, so no folder can be created inside it"),
    ([], _file_in_the_way, "a folder, but a file of that name exists"),
    ([], _finished, "it already holds a finished model; pass --overwrite"),
    ([], _with_checkpoint, "pass --resume-from-checkpoint auto to continue it"),
    (["--resume-from-checkpoint", "/no/such/checkpoint"], None, "--resume-from-checkpoint='/no/such/checkpoint'"),
    (
        ["--resume-from-checkpoint", "{out}/checkpoint-2"],
        _damaged_checkpoint,
        "that checkpoint is damaged or incomplete (trainer_state.json is not valid JSON",
    ),
    (
        ["--resume-from-checkpoint", "auto"],
        _mismatched,
        "this run asks for --num-generations 4, but the run being resumed used --num-generations 6",
    ),
    (
        ["--resume-from-checkpoint", "auto", "--model", "Qwen/Qwen2.5-0.5B-Instruct"],
        _mismatched,
        "asks for --model Qwen/Qwen2.5-0.5B-Instruct --num-generations 8, but the run being resumed used --model tiny "
        "--num-generations 6",
    ),
    (["--bogus-flag"], None, "unrecognized argument --bogus-flag"),
    (["--overwrite=yes"], None, "--overwrite/--no-overwrite: ignored explicit argument 'yes'"),  # yes/no take none
    (["--trust-remote-code", "true"], None, "unrecognized arguments: true"),
    (["--num-generations"], None, "--num-generations: expected one argument"),
    (["--epochs", "3", "--epochs", "x"], None, "--epochs: invalid int value: 'x'"),
    # What this machine cannot do (no GPU here), and the scaling options' values.
    (["--lora", "--load-in-4bit"], None, "--load-in-4bit=True is not allowed: needs a CUDA GPU"),
    (["--load-in-4bit"], None, "--load-in-4bit=True is not allowed: only with --lora"),
    (["--merge-adapter"], None, "--merge-adapter=True is not allowed: only with --lora"),
    (["--use-vllm"], None, "--use-vllm=True is not allowed: vLLM is not installed"),
    (["--lora", "--lora-r", "0"], None, "--lora-r=0 is not allowed: a whole number >= 1"),
    (["--lora", "--lora-dropout", "1"], None, "--lora-dropout=1.0 is not allowed: a probability"),
    (["--lora", "--lora-target-modules", ",,"], None, "--lora-target-modules=',,' is not allowed: comma-separated"),
    (["--vllm-gpu-memory-utilization", "1.5"], None, "--vllm-gpu-memory-utilization=1.5 is not allowed: a share"),
    (["--preset", "h100-cluster"], None, "--preset='h100-cluster' is not allowed: one of cpu-tiny"),
    (["--report-to", "mlflow"], None, "--report-to='mlflow' is not allowed: none, or one or more of tensorboard,"),
    (["--report-to", "none,tensorboard"], None, "--report-to='none,tensorboard' is not allowed"),
    (["--report-to", "wandb"], None, "--report-to='wandb' is not allowed: wandb is not installed: pip install wandb"),
    # The working folder of a mirrored run (docs/drive.md).
    (["--work-dir", ""], None, "--work-dir='' is not allowed: a folder path on local disk"),
    (["--work-dir", "{out}/keep.txt"], None, "--work-dir='{out}/keep.txt' is not allowed: a folder, but a file"),
    (["--work-dir", "{out}/.."], None, "--work-dir='{out}/..' is not allowed: an empty folder, or the working folder"),
    (["--work-dir", "/proc/musclebob-work"], None, "--work-dir='/proc/musclebob-work' is not allowed"),
]


@pytest.mark.parametrize("argv,setup,message", BAD, ids=[" ".join(a) or s.__name__ for a, s, _ in BAD])
def test_bad_command_line_is_one_line_and_touches_nothing(tmp_path, monkeypatch, capsys, argv, setup, message):
    """In-process through the script's ``main(argv)``: the exit code, the one line and the untouched folder are what
    a user sees (the process boundary itself: ``test_bad_value_from_the_real_script_is_exit_code_2``)."""
    from musclebob_helpers import training

    for flag, package in (("--use-vllm", "vllm"), ("wandb", "wandb")):
        if flag in argv and training.package_available(package):
            pytest.skip(f"{package} is installed here")
    monkeypatch.setattr(training, "run_training", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    if callable(setup):
        setup(out)
    elif setup is None:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    argv = [a.replace("{out}", str(out)) for a in argv]
    args = [] if setup == "skip-out" else ["--output-dir", str(out)]
    model = [] if "--model" in argv else ["--model", "tiny"]
    with pytest.raises(SystemExit) as exc:
        train_musclebob_improved.main([*model, *args, *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exc.value.code == 2, captured.err
    message = message.replace("{out}", str(out))
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:") and message in lines[0], captured.err
    assert captured.out == ""  # refused before printing the config
    after = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    assert after == before  # nothing in (or around) the output dir created, changed or removed


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


def test_a_used_folder_is_taken_when_asked(tmp_path):
    """A finished or unfinished run is refused by default (``BAD`` above); --overwrite or a resume takes it: the
    start sees the run that is there, says what it does with it (``run_dir.decide``) and deletes nothing (clearing
    is training's, later)."""
    from musclebob_helpers.startup import start

    def taken(out, *flags):
        before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) if out.exists() else []
        cfg, _ = config_from_args(["--model", "tiny", "--output-dir", str(out), *flags], PROG, "test")
        run = start(cfg, log=lambda *a: None)
        after = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.name != ".musclebob.lock")
        assert after == before
        return run.cfg, run.folder

    _finished(tmp_path / "done")
    cfg, folder = taken(tmp_path / "done", "--overwrite")
    assert cfg.overwrite and cfg.resume_from_checkpoint is None and folder.action == "overwrite"
    assert folder.path == tmp_path / "done" and folder.state == "finished" and folder.resume is None
    cfg, folder = taken(tmp_path / "done", "--resume-from-checkpoint", "auto")
    assert cfg.resume_from_checkpoint == "auto" and not cfg.overwrite and folder.state == "finished"
    assert folder.action == "continue"
    _with_checkpoint(tmp_path / "unfinished")
    cfg, folder = taken(tmp_path / "unfinished", "--resume-from-checkpoint", "auto")
    assert cfg.resume_from_checkpoint == "auto" and folder.state == "unfinished" and folder.action == "continue"
    cfg, folder = taken(tmp_path / "unfinished", "--overwrite")
    assert cfg.overwrite and folder.state == "unfinished" and folder.action == "overwrite"
    _, folder = taken(tmp_path / "new")
    assert folder.action == "new" and folder.path == tmp_path / "new"


@pytest.mark.slow  # a fresh process: what --help imports
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


@pytest.mark.slow  # a fresh process: the hub client's settings are read from the environment at import
def test_unreachable_hub_is_one_line_even_with_retries(tmp_path):
    # Without HF_HUB_OFFLINE the hub client retries and logs each retry; the user still gets one line.
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: fails like an offline machine, never leaves it
    argv = ["--model", "Nobody/unreachable", "--output-dir", str(tmp_path / "o")]
    # The retries really happen (and log); only their back-off sleeps (1 + 2 + 4 + 8 + 8 s) are skipped.
    code = (
        "import sys, huggingface_hub.utils._http as http\n"
        "http.time.sleep = lambda seconds: None\n"
        f"import train_musclebob_improved as script\nsys.exit(script.main({argv!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--model tiny" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_printed_step_size_counts_the_batch_reused_over_num_iterations(tmp_path):
    """One generated batch serves --num-iterations optimizer steps, so a step uses fewer completions than made."""
    lines = []
    print_config(*parse(["--model", "tiny", "--num-iterations", "2", "--output-dir", str(tmp_path)]), log=lines.append)
    assert lines[-1] == (
        "  (one step = 2 prompts x 4 generations = 8 completions, each batch used for 2 steps: 4 completions)"
    )
    lines.clear()
    print_config(*parse(["--model", "tiny", "--output-dir", str(tmp_path)]), log=lines.append)
    assert lines[-1] == "  (one step = 2 prompts x 4 generations = 8 completions)"
