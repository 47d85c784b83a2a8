"""Damaged artifacts, read side: a half-written model folder, a file given as a model, a run folder still being
written. ``test_musclebob.py``, ``--model`` of the training CLI and the compare notebook's loader each say one line
(exit 2 on the command line) and create or modify nothing; before, a 23- or 58-line SafetensorError traceback."""

import json
import re
import shutil
from pathlib import Path

import pytest

from musclebob_helpers import run_dir
from musclebob_helpers.config import ConfigError


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def cut(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


DAMAGE = {
    # name: (how the copy of a whole model is damaged, what the line says)
    "truncated-weights": (
        lambda m: cut(m / "model.safetensors"),
        r"model.safetensors is \d+ bytes but its header promises \d+",
    ),
    "cut-in-header": (lambda m: cut(m / "model.safetensors", 0.0001), r"model.safetensors is truncated"),
    "no-weights": (lambda m: (m / "model.safetensors").unlink(), r"model weights \(model.safetensors"),
    "truncated-config": (lambda m: cut(m / "config.json"), r"config.json is not valid JSON"),
    "truncated-tokenizer": (lambda m: cut(m / "tokenizer.json"), r"tokenizer.json is not valid JSON"),
}


@pytest.fixture
def models(tmp_path, tiny_path):
    """A whole model folder (the tiny base), each damage of it, and a text file."""
    made = {"whole": tmp_path / "whole"}
    shutil.copytree(tiny_path, made["whole"])
    for name, (damage, _) in DAMAGE.items():
        made[name] = tmp_path / name
        shutil.copytree(tiny_path, made[name])
        damage(made[name])
    made["text"] = tmp_path / "some.txt"
    made["text"].write_text("not a model\n")
    return made


@pytest.mark.parametrize("name", [*DAMAGE, "text"])
def test_the_evaluation_cli_says_one_line_and_touches_nothing(tmp_path, models, name, capsys):
    import test_musclebob

    before = snapshot(tmp_path)
    report = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exc:
        test_musclebob.main(["--model", str(models[name]), "--output", str(report)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    expected = DAMAGE[name][1] if name in DAMAGE else "a model folder, a hub id or 'tiny', but this is a file$"
    assert err[0].startswith(f"test_musclebob.py: error: --model='{models[name]}' is not allowed: ")
    assert re.search(expected, err[0]), err[0]
    assert "valid JSON file" not in err[0]  # not transformers' "config file ... is not a valid JSON file"
    assert snapshot(tmp_path) == before and not report.exists()

    with pytest.raises(SystemExit) as exc:  # the base of a comparison: named by its own flag
        test_musclebob.main(["--model", str(models["whole"]), "--compare-base", str(models[name])])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and f"--compare-base='{models[name]}'" in err[0], err


@pytest.mark.parametrize("name", ["truncated-weights", "truncated-config", "text"])
def test_training_from_a_damaged_model_is_one_line_and_creates_no_folder(tmp_path, models, name, capsys):
    import train_musclebob_improved

    before = snapshot(tmp_path)
    out = tmp_path / "runs" / "new"
    with pytest.raises(SystemExit) as exc:
        train_musclebob_improved.main(["--model", str(models[name]), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "--model=" in err[0], err
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()


def test_the_compare_notebook_names_its_parameter(tmp_path, models):
    from musclebob_helpers import compare

    before = snapshot(tmp_path)
    for name, (_, expected) in DAMAGE.items():
        with pytest.raises(ConfigError) as err:
            compare.load_models({"base": "tiny", "trained": str(models[name])}, log=lambda *a: None)
        line = err.value._render_traceback_()
        assert len(line) == 1 and "\n" not in line[0] and "trained_model=" in line[0] and re.search(expected, line[0])
    assert snapshot(tmp_path) == before


def test_a_run_folder_still_being_written_is_not_read_as_a_model(tmp_path, models, capsys):
    """A run writing its folder (overwriting a finished one, say): the model there is not final."""
    import test_musclebob
    from musclebob_helpers import compare

    run = models["whole"]
    (run / run_dir.FINAL_FILE).write_text(json.dumps({"global_step": 4}))  # the previous run's, finished
    lock = run_dir.RunLock(run).acquire()
    try:
        before = snapshot(tmp_path)
        with pytest.raises(ConfigError, match="trained_model=.*a run is still writing this folder \\(pid"):
            compare.load_models({"trained": str(run)}, log=lambda *a: None)
        with pytest.raises(SystemExit) as exc:
            test_musclebob.main(["--model", str(run)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "wait for it to finish" in err[0], err
        assert snapshot(tmp_path) == before
    finally:
        lock.release()
    compare.check_model(str(run), "trained_model")  # once the run has ended: a model like any other
