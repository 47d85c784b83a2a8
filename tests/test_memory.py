"""The GPU memory and disk estimate: the model measured on the meta device, the figures it gives for the
guide's models, and the ``python -m musclebob_helpers.estimate`` command line (in-process)."""

import json

import pytest

from musclebob_helpers import estimate
from musclebob_helpers.config import TrainConfig, target_modules
from musclebob_helpers.memory import (
    _KNOWN_CONFIGS,
    _MODEL_CONFIGS,
    ModelShape,
    estimate_memory,
    fit_warning,
    _model_config,
    model_shape,
)

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"
MISTRAL = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"


def test_measured_shapes_give_the_published_parameter_totals():
    # Qwen2.5-0.5B: embeddings 151936 x 896 = 136,134,656 (tied head). One layer: q 896x896 + 896 bias = 803,712;
    # k, v 896x128 + 128 = 114,816 each; o 896x896 = 802,816; gate, up, down 896x4864 each = 13,074,432;
    # 2 norms 1,792 -> 14,912,384; x 24 = 357,897,216; + final norm 896 -> 494,032,768 ("0.49B").
    assert model_shape(QWEN).params == 494_032_768
    assert model_shape("Qwen/Qwen2.5-0.5B") == model_shape(QWEN)  # the base model: the same file
    # Mistral-Small-3.1-24B (language model): embeddings and untied head 2 x 131072 x 5120 = 1,342,177,280.
    # One layer: q 5120x4096 = 20,971,520; k, v 5120x1024 = 5,242,880 each; o 20,971,520; gate, up, down
    # 5120x32768 = 167,772,160 each -> 555,745,280 + 2 norms 10,240; x 40 = 22,230,220,800; + final norm 5,120
    # -> 23,572,403,200 ("24B").
    assert model_shape(MISTRAL).params == 23_572_403_200
    # Tensors saved / given AdamW state: Qwen 24 x (7 weights + 3 biases + 2 norms) + embeddings + final norm
    # (the tied head is the embeddings); Mistral 40 x (7 + 2) + embeddings + final norm + head.
    assert (model_shape(QWEN).tensors, model_shape(MISTRAL).tensors) == (290, 363)


def test_meta_measurement_of_the_tiny_model_matches_the_real_model(tiny_model):
    model, _ = tiny_model
    shape = ModelShape.from_hf_config(model.config)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.tensors == len(list(model.parameters()))
    assert model_shape("tiny") == shape  # from its folder's config.json
    assert ModelShape.from_hf_config(model.config) is shape  # measured once per config


def test_the_measured_linears_are_the_ones_bitsandbytes_quantizes_and_peft_adapts(tiny_path):
    """4-bit loading skips what transformers' get_keys_to_not_convert names; LoRA adapts what PEFT matches."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    model = AutoModelForCausalLM.from_pretrained(tiny_path)  # a copy of its own: PEFT changes it in place
    shape = model_shape("tiny")
    skip = get_keys_to_not_convert(model)
    converted = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and should_convert_module(n, skip)}
    assert {name for name, _, _ in shape.linears} == converted
    assert shape.quantized_params == sum(model.get_submodule(n).weight.numel() for n in converted)
    for targets in ("all-linear", "q_proj,v_proj", TrainConfig.lora_target_modules):
        cfg = TrainConfig(model="tiny", lora=True, lora_target_modules=targets)
        peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_r, target_modules=target_modules(cfg)))
        trained = [p for p in peft_model.parameters() if p.requires_grad]
        assert shape.trainable(cfg) == (sum(p.numel() for p in trained), len(trained))
        model = peft_model.unload()


def test_model_configs_resolve_known_ids_the_tiny_model_and_folders(tiny_path, tmp_path):
    assert set(_KNOWN_CONFIGS) == {QWEN, "Qwen/Qwen2.5-0.5B", MISTRAL}
    assert all((_MODEL_CONFIGS / f).is_file() for f in _KNOWN_CONFIGS.values())
    assert _model_config("tiny", offline=True).hidden_size == 128
    assert _model_config(str(tiny_path)).to_dict() == _model_config("tiny").to_dict()
    assert _model_config(str(tmp_path)) is None  # a folder without config.json (e.g. an adapter's)
    assert _model_config("nobody/no-such-model", offline=True) is None and model_shape("nobody/x", offline=True) is None


def test_mistral_config_file_has_the_language_models_architecture():
    raw = json.loads((_MODEL_CONFIGS / _KNOWN_CONFIGS[MISTRAL]).read_text())
    assert (
        raw["model_type"],
        raw["vocab_size"],
        raw["hidden_size"],
        raw["intermediate_size"],
        raw["num_hidden_layers"],
        raw["num_attention_heads"],
        raw["num_key_value_heads"],
        raw["head_dim"],
        raw["tie_word_embeddings"],
        raw["rope_theta"],
        raw["max_position_embeddings"],
    ) == ("mistral", 131072, 5120, 32768, 40, 32, 8, 128, False, 1e9, 131072)


def test_memory_qwen_05b_full_fine_tuning():
    shape = model_shape(QWEN)
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
    shape = model_shape(MISTRAL)
    # The guide's command + --lora --load-in-4bit (checkpointing on by default).
    cfg = TrainConfig(
        model=MISTRAL,
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


def test_memory_qwen_05b_qlora_keeps_biases_in_16_bit():
    shape = model_shape(QWEN)
    cfg = TrainConfig(lora=True, load_in_4bit=True)
    # nf4 holds the linear projections' weights: 24 x (896x896 + 2 x 896x128 + 896x896 + 3 x 896x4864)
    # = 357,826,560; embeddings, norms and the 24 x (896 + 2 x 128) = 27,648 q/k/v biases stay bf16
    # (bitsandbytes' Linear4bit keeps its bias unquantized).
    assert shape.quantized_params == 357_826_560
    # nf4: half a byte per weight (178,913,280) + an 8-bit absmax per 64 weights (5,591,040) + an fp32 scale per
    # 256 of those blocks (357,826,560 / 16,384 x 4 = 87,360) = 184,591,680 B; bf16: (494,032,768 - 357,826,560)
    # x 2 = 272,412,416 B; together 457,004,096 B.
    assert estimate_memory(shape, cfg).weights == 457_004_096


def test_estimate_cli_prints_the_estimate(capsys, tmp_path):
    argv = ["--model", MISTRAL, "--batch-size", "1", "--num-generations", "4", "--lora", "--load-in-4bit"]
    assert estimate.main([*argv, "--gpu-memory-gb", "14.7", "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "16.34 GiB" in out and "WARNING" in out
    assert "Disk need of this run" in out and "Google Drive quota" in out
    assert estimate.main([*argv, "--gpu-memory-gb=22.5", "--precision", "fp16", "--output-dir", str(tmp_path)]) == 0
    assert "Fits in 22.5 GiB." in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag, value, says",
    [("--gpu-memory-gb", "lots", "a number of GiB"), ("--precision", "fp8", "invalid choice: 'fp8'")],
)
def test_estimate_cli_refuses_a_bad_value_in_one_line(capsys, flag, value, says):
    with pytest.raises(SystemExit) as exit_info:
        estimate.main(["--model", QWEN, flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{estimate._PROG}: error: argument {flag}: ") and says in err
