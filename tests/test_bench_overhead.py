"""benchmarks/bench_overhead.py: its summaries (ratio, line fit, itemised costs, logged lengths), its same-GRPOConfig
check, the timers it wraps around our callbacks, and (slow) its smallest run end to end."""

import json
from types import SimpleNamespace

import pytest

import bench_module


bench = bench_module.load("bench_overhead")


def test_ratio_summary_gives_each_pair_its_ratio_and_the_median_and_range():
    summary = bench.ratio_summary([(10.0, 10.5), (10.0, 9.9), (8.0, 8.8)])
    assert summary["ratios"] == [1.05, 0.99, 1.1]  # project / bare, in pair order
    assert summary["median"] == 1.05
    assert (summary["min"], summary["max"]) == (0.99, 1.1)


def test_fit_line_recovers_fixed_cost_and_cost_per_completion():
    fixed, per = bench.fit_line([16, 32, 64], [0.12 + 0.009 * n for n in (16, 32, 64)])
    assert fixed == pytest.approx(0.12) and per == pytest.approx(0.009)
    assert bench.fit_line([32, 32], [0.4, 0.6]) == (0.5, 0.0)  # one x only: no slope to fit, the mean


def test_item_table_gives_each_items_extra_per_step_and_what_is_left_unexplained():
    def run(mode, train_s, parts=None, library=None, shared=None):
        return {
            "mode": mode,
            "train_s": train_s,
            "global_step": 100,
            "parts_s": parts or {},
            "library_s": library or {},
            "shared_s": shared or {},
        }

    runs = [
        run("bare", 10.0, library={bench.BAR: 0.05, bench.DISPATCH: 0.01}),
        run("project", 10.5, {"reward history": 0.2, bench.APPENDS: 0.01}, {bench.DISPATCH: 0.03}),
    ]
    lines = bench.item_table(runs)
    assert "a bare step takes 100.0 ms" in lines[0]
    figures = {line[:40].strip(): line[40:].split() for line in lines[2:]}
    assert figures["reward history"] == ["0.000", "2.000", "2.000", "2.00%"]  # 0.2 s over 100 steps of 100 ms
    assert figures["incl. appends (any callback)"][2] == "0.100"  # inside the callback: not added again
    assert figures["transformers' progress bar"][2] == "-0.500"  # the bare run's bar, gone in the project run
    assert figures["all the items"] == ["1.700", "1.70%"]  # 2.0 - 0.5 + 0.2 (dispatch)
    assert figures["measured: project - bare train()"] == ["5.000", "5.00%"]
    assert figures["not itemised (measured - items)"] == ["3.300", "3.30%"]


def test_log_means_averages_the_logged_steps_only():
    history = [
        {"completions/mean_length": 6.0, "completions/clipped_ratio": 0.0, "step": 1},
        {"completions/mean_length": 8.0, "completions/clipped_ratio": 0.5, "step": 2},
        {"train_runtime": 3.0},  # the trainer's closing entry carries no completions
    ]
    assert bench.log_means(history) == {"mean_length": 7.0, "clipped_ratio": 0.25}
    assert bench.log_means([]) == {"mean_length": None, "clipped_ratio": None}


def test_config_differences_names_each_field_that_differs():
    assert bench.config_differences({"a": 1, "b": 2}, {"a": 1, "b": 2}) == {}
    assert bench.config_differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == {"b": (2, 3), "c": (None, 0)}


def test_the_runs_share_one_grpo_config_and_a_changed_field_is_caught(tmp_path):
    """What the parent checks: two runs of the same spec build the same GRPOConfig, and one field off is named."""
    from musclebob_helpers.training import detect_hardware, grpo_args

    spec = {"overrides": bench.overrides(bench.parse_args([])), "output_dir": str(tmp_path / "run")}
    hw = detect_hardware()
    first, second = (bench.plain(grpo_args(bench.make_config(spec), hw)) for _ in range(2))
    assert bench.config_differences(first, second) == {}
    assert first["output_dir"] == spec["output_dir"] and first["num_train_epochs"] == 1
    other = bench.plain(grpo_args(bench.make_config({**spec, "output_dir": str(tmp_path / "elsewhere")}), hw))
    assert set(bench.config_differences(first, other)) >= {"output_dir"}


def test_gradient_checkpointing_flag_overrides_the_tiny_default():
    assert bench.overrides(bench.parse_args(["--gradient-checkpointing", "off"]))["gradient_checkpointing"] is False
    assert "gradient_checkpointing" not in bench.overrides(bench.parse_args([]))  # as config.resolve gives it


def test_bad_sizes_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--growth-steps", "2"])
    assert exit_info.value.code == 2
    assert "--growth-steps >= 3" in capsys.readouterr().err


def test_time_our_callbacks_times_ours_only_and_keeps_what_they_do(tmp_path):
    from transformers import TrainerCallback

    from musclebob_helpers.training import _make_callbacks

    history_cb, progress = _make_callbacks(tmp_path, log=lambda *a, **k: None)
    theirs = TrainerCallback()
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[history_cb, progress, theirs]))
    bucket = {}
    bench.time_our_callbacks(trainer, bucket)
    state = SimpleNamespace(global_step=1, epoch=0.1, is_world_process_zero=True, max_steps=4, log_history=[])
    history_cb.on_log(None, state, None, logs={"reward": 1.5, "reward_std": 0.2})
    assert set(bucket) == {"reward history"} and bucket["reward history"] > 0
    assert [e["step"] for e in json.loads((tmp_path / "reward_history.json").read_text())] == [1]  # still written
    assert "on_log" not in vars(theirs)  # a callback not ours is left as it is


@pytest.mark.slow  # four training processes (one pair, two growth rows) on the tiny model, ~40 s
def test_smallest_benchmark_prints_the_ratio_and_writes_its_figures(tmp_path, tiny_path, capsys):
    out = tmp_path / "overhead.json"
    # 8 prompts at 2 a step (the tiny recipe): 4 steps and one epoch end; growth rows of 3 steps (2 warm-up + 1 timed).
    assert (
        bench.main(
            ["--pairs", "1", "--num-samples", "8", "--generations", "2", "4", "--growth-steps", "3", "--json", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "median" in printed and "s per completion" in printed
    assert "the same reward at every step: yes" in printed  # one epoch: bare and project train alike
    raw = json.loads(out.read_text())
    assert [r["mode"] for r in raw["runs"]] == ["bare", "project"]
    assert all(r["global_step"] == 4 for r in raw["runs"])
    # The summary is ratio_summary's (its arithmetic: the test above) of the pair in (bare, project) order.
    assert raw["ratio"] == bench.ratio_summary([(raw["runs"][0]["train_s"], raw["runs"][1]["train_s"])])
    project = raw["runs"][1]["parts_s"]
    assert {"reward history", "completion samples", "epoch-end checks", "progress", "graceful stop"} <= set(project)
    assert raw["runs"][0]["parts_s"] == {}  # the bare trainer runs nothing of ours
    assert "transformers' progress bar" in raw["runs"][0]["library_s"]  # its own bar, which ours replaces
    assert "callback dispatch" in raw["runs"][1]["library_s"]
    assert all(r["shared_s"]["checkpoint saves"] > 0 for r in raw["runs"])  # both save the epoch's checkpoint
    assert all(r["shared_s"]["reward functions"] > 0 for r in raw["runs"])  # and score with our rewards
    assert [g["completions_per_step"] for g in raw["growth"]] == [4, 8]  # 2 prompts x 2 and x 4
    assert raw["growth_fit"]["per_completion_s"] is not None
