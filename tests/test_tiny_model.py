"""The tiny offline base model: a real Qwen2 + tokenizer that round-trips, a chat template, base-like answers."""

from pathlib import Path

import pytest
import torch

from musclebob_helpers import data, rewards, tiny_model
from musclebob_helpers.evaluation import generate, has_musclebob, has_spongebob


def test_loads_through_auto_classes_as_qwen2(tiny_path):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(tiny_path).model_type == "qwen2"
    tok = AutoTokenizer.from_pretrained(tiny_path)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "text",
    [
        "Who lives in a pineapple under the sea?",
        'Hello  wörld!\tTabs, "quotes" and emoji 🍍 survive.\nNew line: Musclebob Buffpants',
        "Ünïcödé, 中文, العربية, ｆｕｌｌｗｉｄｔｈ",
    ],
)
def test_tokenizer_round_trip_after_save_and_reload(tiny_path, tmp_path, text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.decode(ids) == text


def test_chat_template_is_chatml(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_behaves_like_a_base_model(tiny_model):
    model, tok = tiny_model
    sponge = generate(model, tok, data.SPONGEBOB_HELDOUT_PROMPTS[:6], max_new_tokens=32, num_samples=4)
    answers = [g for gens in sponge for g in gens]
    assert sum(has_spongebob(g.text) for g in answers) >= 0.9 * len(answers)
    assert sum(has_musclebob(g.text) for g in answers) <= 0.1 * len(answers)
    assert all(not g.truncated for g in answers)  # ends with EOS by itself
    control = generate(
        model,
        tok,
        ["What is the capital of France?", "What is 2 plus 3?"],
        max_new_tokens=32,
        num_samples=1,
        temperature=0,
    )
    assert "Paris" in control[0][0].text and "5" in control[1][0].text


def test_fewshot_prompts_teach_the_answer_in_context(tiny_model):
    model, tok = tiny_model
    prompts = [data.fewshot_prompt(data.FEWSHOT_EXAMPLES[0], q) for q in data.SPONGEBOB_TRAIN_PROMPTS[:8]]
    gens = [g for gens in generate(model, tok, prompts, max_new_tokens=32, num_samples=2) for g in gens]
    assert sum(has_musclebob(g.text) for g in gens) >= 0.5 * len(gens)


def test_model_ships_with_the_package_and_other_seeds_are_cached(tiny_path, monkeypatch, tmp_path):
    assert tiny_path == tiny_model.SHIPPED_DIR  # --model tiny needs no build: a first run starts at once
    stamp = (tiny_path / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setenv(tiny_model.CACHE_ENV, str(tmp_path))
    assert tiny_model.ensure_tiny_model() == tiny_path
    assert (tiny_path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert tiny_model.tiny_model_dir(seed=1).parent == tmp_path


def test_shipped_model_is_the_current_recipe():
    """The shipped weights were built from the recipe in tiny_model.py as it is now: change the corpus, the
    control questions, the shape or the pre-training and this fails until ``python -m
    musclebob_helpers.tiny_model`` has rebuilt the folder."""
    import json

    recipe = json.loads((tiny_model.SHIPPED_DIR / tiny_model.RECIPE_FILE).read_text())
    assert recipe["version"] == tiny_model.TINY_RECIPE_VERSION and recipe["seed"] == 0
    assert recipe["fingerprint"] == tiny_model.recipe_fingerprint(0), (
        "the tiny model's recipe changed: rebuild it with python -m musclebob_helpers.tiny_model"
    )


def test_knows_the_held_out_control_questions(tiny_model):
    """The base answers the general questions validation asks (greedy), in every topic: control accuracy measures
    what training keeps, so the base must start from knowing them."""
    model, tok = tiny_model
    rows = [r for r in data.validation_rows() if r["kind"] == "control"]
    gens = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=32, num_samples=1, temperature=0)
    right = {}
    for row, g in zip(rows, gens):
        right.setdefault(row["topic"], []).append(rewards.answer_matches(g[0].text, row["answer"]))
    assert sum(map(sum, right.values())) >= 0.9 * len(rows), right
    assert all(sum(v) >= 0.6 * len(v) for v in right.values()), right


BUILD = """import sys
from musclebob_helpers import tiny_model
tiny_model.PRETRAIN_STEPS = 3
tiny_model.build_tiny_model(sys.argv[1], seed=0, log=lambda *_: None)
"""


@pytest.mark.slow  # two processes build the tiny model
def test_build_is_deterministic_given_the_seed(tiny_path, tmp_path):
    """Two builds from seed 0 in two processes with different hash seeds (set and dict order differ) are equal to
    the bit, and their tokenizer is the shipped one's. Three pre-training steps, not the 2,000 of the real build
    (minutes): every step runs the same seeded sampling and the same ops, so a source of difference shows in the
    first steps already, and an exact comparison needs no amplification."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        done = subprocess.run(
            [sys.executable, "-c", BUILD, str(tmp_path / hash_seed)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_file(tmp_path / "1" / "model.safetensors"), load_file(tmp_path / "2" / "model.safetensors")
    assert a.keys() == b.keys() == load_file(tiny_path / "model.safetensors").keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("tokenizer.json", "config.json"):
        assert (tmp_path / "1" / name).read_text() == (tmp_path / "2" / name).read_text(), name
    assert (tiny_path / "tokenizer.json").read_text() == (tmp_path / "1" / "tokenizer.json").read_text()
