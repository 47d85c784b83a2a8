"""The run folder is checked by ``run_dir.check``, once per start; ``config.validate_config`` checks values only."""

import json

import pytest

from musclebob_helpers import run_dir
from musclebob_helpers.config import ConfigError, TrainConfig, validate_config


def test_validate_config_leaves_the_folder_to_run_dir(tmp_path):
    """Folders only ``run_dir.check`` refuses: a file in the way, a missing checkpoint, a finished run."""
    (tmp_path / "a-file").write_text("x")
    finished = tmp_path / "done"
    finished.mkdir()
    for name in ("config.json", "final_validation.json"):
        (finished / name).write_text("{}")
    cases = [
        (TrainConfig(model="tiny", output_dir=str(tmp_path / "a-file" / "out")), "is a file"),
        (TrainConfig(model="tiny", output_dir=str(tmp_path / "a-file")), "a file of that name exists"),
        (
            TrainConfig(model="tiny", output_dir=str(tmp_path), resume_from_checkpoint=str(tmp_path / "nowhere")),
            "the path of an existing checkpoint folder",
        ),
        (TrainConfig(model="tiny", output_dir=str(finished)), "already holds a finished model"),
    ]
    before = sorted(tmp_path.rglob("*"))
    for cfg, refusal in cases:
        validate_config(cfg)  # values only: no disk
        with pytest.raises(ConfigError, match=refusal):
            run_dir.check(cfg)
    assert sorted(tmp_path.rglob("*")) == before  # neither created anything


def test_check_reports_the_folder_state_and_the_disk_need(tmp_path):
    got = run_dir.check(TrainConfig(model="Qwen/Qwen2.5-0.5B-Instruct", lora=True, output_dir=str(tmp_path / "new")))
    assert got.state == "new" and got.need is not None and got.need.checkpoint > 0
    out = tmp_path / "cut"
    (out / "checkpoint-4").mkdir(parents=True)
    (out / run_dir.CONFIG_FILE).write_text(json.dumps({"config": TrainConfig(model="tiny").to_dict()}))
    got = run_dir.check(TrainConfig(model="tiny", output_dir=str(out), resume_from_checkpoint="auto"))
    assert got.state == "unfinished"
    assert run_dir.saved_config(out) == TrainConfig(model="tiny") and run_dir.saved_config(tmp_path) is None


class Loaded(Exception):
    """Raised where the model would load: everything before it ran for real."""


def test_the_cli_and_the_notebook_start_once(tmp_path, monkeypatch):
    """One start-up path (``startup.start``): a CLI run and a notebook run (parameters, baseline and training cells)
    each validate the values, check the folder, detect and check the hardware exactly once; run_training repeats
    none of it."""
    import train_musclebob_improved
    from musclebob_helpers import evaluation, startup, training
    from musclebob_helpers import notebook as nb

    calls = []

    def counted(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(name) or real(*a, **kw))

    for module, name in (
        (startup, "start"),
        (startup, "validate_config"),
        (run_dir, "check"),
        (training, "detect_hardware"),
        (training, "check_hardware_support"),
    ):
        counted(module, name)

    def load_model(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(evaluation, "load_model", load_model)
    with pytest.raises(Loaded):  # the real run_training, up to loading the model
        train_musclebob_improved.main(["--model", "tiny", "--output-dir", str(tmp_path / "out")])
    once = ["start", "validate_config", "check", "detect_hardware", "check_hardware_support"]
    assert sorted(calls) == sorted(once)

    calls.clear()  # the notebook: the parameters cell starts, the baseline and training cells go on from there
    monkeypatch.setattr(training, "measure_baseline", lambda cfg, model, tok, hardware, log=print: {"fake": True})
    monkeypatch.setattr(evaluation, "summary_table", lambda reports: "")
    monkeypatch.setattr(nb, "_show_answers", lambda report, limit=4: None)
    loaded = []

    def load_for_training(cfg, hardware, device=None):  # the baseline cell's model, then the training's
        loaded.append(hardware)
        if len(loaded) > 1:
            raise Loaded
        return None, None

    monkeypatch.setattr(training, "load_for_training", load_for_training)
    cfg = nb.make_config(model="tiny", precision=None, output_dir=str(tmp_path / "nb"), log=lambda *a: None)
    baseline = nb.baseline_validation(cfg, log=lambda *a: None)
    with pytest.raises(Loaded):
        nb.train(cfg, baseline, live=False, log=lambda *a: None)
    assert sorted(calls) == sorted(once) and baseline == {"fake": True}
    assert loaded[0] is loaded[1]  # the same decision (hardware, precision) handed to both cells


def _record(out, cfg, segments=None):
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": cfg.to_dict(), **({"segments": segments} if segments is not None else {})}
    (out / run_dir.CONFIG_FILE).write_text(json.dumps(record))


def test_the_settings_record_keeps_each_segment_of_the_run(tmp_path):
    out = tmp_path / "run"
    first = TrainConfig(model="tiny", output_dir=str(out), learning_rate=2e-4)
    segments, changed = run_dir.settings_segments(out, first, 0)  # a fresh run
    assert changed == {} and [s["from_step"] for s in segments] == [0]
    assert segments[0]["config"]["learning_rate"] == 2e-4 and "output_dir" not in segments[0]["config"]
    _record(out, first, segments)

    # Resumed from step 6 at another rate, from another spelling of the folder: only the rate is a change.
    second = TrainConfig(model="tiny", output_dir=str(out) + "/", learning_rate=1e-3, resume_from_checkpoint="auto")
    segments, changed = run_dir.settings_segments(out, second, 6)
    assert changed == {"learning_rate": [2e-4, 1e-3]}
    assert segments[1:] == [{"from_step": 6, "changed": {"learning_rate": [2e-4, 1e-3]}}]
    _record(out, second, segments)
    assert run_dir.settings_segments(out, second, 8) == (segments, {})  # the same settings again: nothing new

    # Resumed from step 4 (the newer checkpoints damaged): steps 5-6 are trained again, at the rate asked now.
    third = TrainConfig(model="tiny", output_dir=str(out), learning_rate=5e-4, epochs=9)
    segments, changed = run_dir.settings_segments(out, third, 4)
    assert changed == {"learning_rate": [2e-4, 5e-4], "epochs": [5, 9]}
    assert [s["from_step"] for s in segments] == [0, 4]

    _record(out, first)  # a record from before segments were kept: its settings began at step 0
    assert run_dir.settings_segments(out, second, 6)[0][0] == {
        "from_step": 0,
        "config": {k: v for k, v in first.to_dict().items() if k not in run_dir.PER_START_OPTIONS},
    }


def test_fewer_epochs_than_the_run_has_trained_are_refused(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(model="tiny", output_dir=str(out), num_samples=12, batch_size=3)  # 4 steps an epoch
    _record(out, cfg)
    (out / "checkpoint-10").mkdir()
    resume = dict(model="tiny", output_dir=str(out), num_samples=12, batch_size=3, resume_from_checkpoint="auto")
    with pytest.raises(ConfigError) as err:
        run_dir.check(TrainConfig(**resume, epochs=2))
    assert str(err.value) == (
        "--epochs=2 is not allowed: at least 3: the run being resumed has trained 10 steps (4 an epoch); more epochs "
        "may be given on resume, not fewer"
    )
    run_dir.check(TrainConfig(**resume, epochs=3))  # 12 steps: two more to train
    run_dir.check(TrainConfig(**resume, epochs=7))
    through = {**resume, "output_dir": str(tmp_path / "nowhere" / ".." / "run")}  # the same folder, through '..'
    with pytest.raises(ConfigError, match="at least 3: the run being resumed has trained 10 steps"):
        run_dir.check(TrainConfig(**through, epochs=2))
