"""The tiny offline base model: a real Qwen2 + tokenizer that round-trips, a chat template, base-like answers."""

import json
import sys
from pathlib import Path

import pytest
import torch

from musclebob_helpers import data, rewards, tiny_model
from musclebob_helpers.evaluation import generate, has_musclebob, _has_spongebob

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_tiny_model as build  # noqa: E402 - the recipe, a maintainers' tool (tools/build_tiny_model.py)


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
    assert sum(_has_spongebob(g.text) for g in answers) >= 0.9 * len(answers)
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
    prompts = [data._fewshot_prompt(data.FEWSHOT_EXAMPLES[0], q) for q in data.SPONGEBOB_TRAIN_PROMPTS[:8]]
    gens = [g for gens in generate(model, tok, prompts, max_new_tokens=32, num_samples=2) for g in gens]
    assert sum(has_musclebob(g.text) for g in gens) >= 0.5 * len(gens)


def test_tiny_is_the_shipped_model(tiny_path):
    """--model tiny needs no build: it is the folder that ships with the package, with the recorded shape."""
    assert tiny_path == tiny_model.SHIPPED_DIR
    assert tiny_model.resolve_model_path("tiny") == str(tiny_model.SHIPPED_DIR)
    assert tiny_model.resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    config = json.loads((tiny_path / "config.json").read_text())
    assert {k: config[k] for k in tiny_model.MODEL_SHAPE} == tiny_model.MODEL_SHAPE


def test_shipped_model_is_the_current_recipe():
    """The shipped weights were built from the recipe in tools/build_tiny_model.py as it is now: change the corpus,
    the control questions, the shape or the pre-training and this fails until ``python tools/build_tiny_model.py``
    has rebuilt the folder. (A full build takes minutes, and its last bits depend on the CPU's math kernels: the
    recipe's fingerprint is compared here, the build itself in ``test_build_is_deterministic_given_the_seed``.)"""
    recipe = json.loads((tiny_model.SHIPPED_DIR / build.RECIPE_FILE).read_text())
    assert recipe["version"] == build.TINY_RECIPE_VERSION and recipe["seed"] == 0
    assert recipe["fingerprint"] == build.recipe_fingerprint(0), (
        "the tiny model's recipe changed: rebuild it with python tools/build_tiny_model.py"
    )


def test_shipped_tokenizer_is_what_the_tool_trains(tmp_path):
    """The tokenizer half of a build takes a second and is exact: the tool's, trained on the seed-0 corpus, is the
    shipped one, byte for byte (the weights' half takes minutes: ``test_build_is_deterministic_given_the_seed``)."""
    pairs = build.pretraining_corpus(0)
    build._train_tokenizer([q for q, _ in pairs] + [a for _, a in pairs]).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / name).read_text() == (tiny_model.SHIPPED_DIR / name).read_text(), name


def test_rebuild_command_replaces_the_folder_whole(tmp_path, monkeypatch, capsys):
    """``python tools/build_tiny_model.py --out DIR`` (the maintainers' rebuild) writes a whole model, replaces one
    already there, leaves no temporary folder and prints none."""
    monkeypatch.setattr(build, "PRETRAIN_STEPS", 2)  # the folder handling, not the model, is under test
    monkeypatch.setattr(build, "CORPUS_SIZE", 300)
    out = tmp_path / "tiny_base"
    for _ in range(2):
        assert build.main(["--out", str(out)]) == 0
        assert (out / "config.json").exists() and (out / build.RECIPE_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_base"]
    printed = capsys.readouterr().out
    assert f"Wrote {out}" in printed and ".building-" not in printed


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
sys.path.insert(0, "tools")
import build_tiny_model
build_tiny_model.PRETRAIN_STEPS = 3
build_tiny_model.build_tiny_model(sys.argv[1], seed=0, log=lambda *_: None)
"""


@pytest.mark.slow  # two processes build the tiny model
def test_build_is_deterministic_given_the_seed(tiny_path, tmp_path):
    """Two builds from seed 0 in two processes with different hash seeds (set and dict order differ) are equal to
    the bit, and their tokenizer is the shipped one's. Three pre-training steps, not the 2,000 of the real build
    (minutes): every step runs the same seeded sampling and the same ops, so a source of difference shows in the
    first steps already, and an exact comparison needs no amplification."""
    import os
    import subprocess

    from safetensors.torch import load_file

    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", BUILD, str(tmp_path / hash_seed)], env=env, capture_output=True, text=True, cwd=ROOT
        )
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_file(tmp_path / "1" / "model.safetensors"), load_file(tmp_path / "2" / "model.safetensors")
    assert a.keys() == b.keys() == load_file(tiny_path / "model.safetensors").keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("tokenizer.json", "config.json"):
        assert (tmp_path / "1" / name).read_text() == (tmp_path / "2" / name).read_text(), name
    assert (tiny_path / "tokenizer.json").read_text() == (tmp_path / "1" / "tokenizer.json").read_text()
