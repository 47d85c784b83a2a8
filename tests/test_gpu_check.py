"""benchmarks/gpu_check.py on this machine's CPU: the GPU variants are skipped, each in one line, and the CPU ones
(the tiny preset's trainer and a real ``run_training``) run and fill their rows; its non-finite logits counter."""

import json

import bench_module


gpu_check = bench_module.load("gpu_check")


def test_cpu_path_skips_the_gpu_variants_and_runs_the_rest(tmp_path, capsys, tiny_path):
    results = tmp_path / "results.json"
    # --cpu-tiny: the CPU path even where a GPU is present; 2 steps, the fewest with one timed after the warm-up.
    assert gpu_check.main(["--cpu-tiny", "--steps", "2", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    for name in gpu_check.VARIANTS:
        assert f"{name}: skipped, needs a CUDA GPU" in out
    assert "QLoRA 4-bit, fp16 (T4)" in gpu_check.VARIANTS  # the T4's QLoRA path is among them
    table = out[out.rindex("variant ") :].splitlines()
    assert table[0].split()[-3:] == ["left", "GiB", "non-finite"]  # the memory and non-finite columns
    rows = {line[:42].strip(): line[42:].split() for line in table[1:]}
    assert list(rows) == [*gpu_check.VARIANTS, gpu_check.CPU_VARIANT, gpu_check.RUN_TRAINING]
    saved = json.loads(results.read_text())
    for name in (gpu_check.CPU_VARIANT, gpu_check.RUN_TRAINING):
        row = saved[name]
        assert row["steps"] == 2 and row["step_s"] > 0
        assert row["left_gib"] is None and rows[name][-2] == "-"  # no GPU memory to measure here
        # Every forward pass was watched (the real run's include both validations' generation) and none overflowed.
        assert row["forwards"] > 0 and row["nonfinite_forwards"] == 0
        assert rows[name][-1] == f"0/{row['forwards']}"
    assert saved[gpu_check.RUN_TRAINING]["forwards"] > saved[gpu_check.CPU_VARIANT]["forwards"]
    assert saved[gpu_check.RUN_TRAINING]["precision"] == "fp32"  # the hardware's: a CPU runs fp32


def test_logits_watch_counts_forward_passes_with_non_finite_logits(tiny_model):
    import torch

    model, tokenizer = tiny_model
    inputs = tokenizer(["Who lives in a pineapple under the sea?"], return_tensors="pt")
    with torch.no_grad(), gpu_check.logits_watch() as clean:
        model(**inputs)
    assert clean == {"forwards": 1, "nonfinite": 0}
    weight = model.get_output_embeddings().weight
    saved = weight[0].clone()
    try:
        with torch.no_grad():
            weight[0] = float("inf")  # an fp16 overflow's result: one vocabulary entry's logit is inf
            with gpu_check.logits_watch() as broken:
                model(**inputs)
                model(**inputs)
    finally:
        with torch.no_grad():
            weight[0] = saved
    assert broken == {"forwards": 2, "nonfinite": 2}
