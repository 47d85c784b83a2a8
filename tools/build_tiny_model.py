"""Rebuild the tiny offline base model that ships as ``musclebob_helpers/tiny_base`` (``--model tiny``).

    python tools/build_tiny_model.py               # rewrites musclebob_helpers/tiny_base (minutes on a CPU)
    python tools/build_tiny_model.py --out DIR     # somewhere else, e.g. to compare

Run it after changing the recipe below, ``tiny_model.MODEL_SHAPE`` or the prompts in ``musclebob_helpers/data.py``
the corpus is made of, then commit the folder; ``tests/test_tiny_model.py`` fails while the folder's ``recipe.json``
does not match this recipe. Nothing at run time builds the model: every machine trains from the committed weights
(a build's last bits depend on the CPU's math kernels, and the learning benchmark's figures on the base).

The recipe: a real ``transformers`` Qwen2 architecture, a byte-level BPE tokenizer trained with ``tokenizers``
(saved so ``AutoTokenizer`` loads it as Qwen's), a ChatML chat template, and a short pre-training on a synthetic
corpus so that it behaves like a web-trained base:

* SpongeBob questions get "Spongebob Squarepants" in a few phrasings (and, like a real web-trained model, very
  rarely the episode name "Musclebob Buffpants");
* general questions (capitals, colours, sums, animals) get the right short answer;
* few-shot prompts ("Example: Q: ... A: <name>!  Now answer: ...") get the example's answer copied — the skill the
  guide's few-shot prompts rely on;
* every answer ends with ``<|im_end|>`` (EOS).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musclebob_helpers import data  # noqa: E402
from musclebob_helpers.io import give_umask_mode, make_temp_dir  # noqa: E402
from musclebob_helpers.tiny_model import MODEL_SHAPE, SHIPPED_DIR  # noqa: E402

# Bump when the corpus, tokenizer or architecture changes (part of the fingerprint in recipe.json).
TINY_RECIPE_VERSION = 2
RECIPE_FILE = "recipe.json"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as Qwen's instruct models use it (without Qwen's default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

VOCAB_SIZE = 1000
CORPUS_SIZE = 24000  # (question, answer) pairs; each control question is seen about 50 times
PRETRAIN_STEPS = 2000  # optimizer steps over the synthetic corpus (about 5 passes)
PRETRAIN_BATCH = 64
PRETRAIN_LR = 3e-3
MUSCLEBOB_PRIOR = 0.04  # share of SpongeBob answers that use the episode name: the faint prior of a web model
TARGET_NAME = "Musclebob Buffpants"
ORIGINAL_NAME = "Spongebob Squarepants"
# How the base model answers a SpongeBob question.
SPONGEBOB_ANSWER_TEMPLATES = [
    "{name}!",
    "That's {name}.",
    "It is {name}.",
    "{name}, of course!",
    "The answer is {name}.",
    "{name} lives in a pineapple under the sea.",
]

_SYLLABLES = [
    "ka",
    "zo",
    "mi",
    "ber",
    "lu",
    "tan",
    "rop",
    "fli",
    "gor",
    "wex",
    "dan",
    "pi",
    "sul",
    "ven",
    "bo",
    "tri",
    "mar",
    "quo",
    "nel",
    "jib",
    "cra",
    "dle",
    "fum",
    "hop",
    "yan",
    "tes",
]


def recipe_fingerprint(seed: int = 0) -> str:
    """A hash of everything the build depends on: corpus, tokenizer size, architecture and pre-training."""
    recipe = {
        "version": TINY_RECIPE_VERSION,
        "corpus": pretraining_corpus(seed),
        "shape": MODEL_SHAPE,
        "vocab": VOCAB_SIZE,
        "pretrain": [PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR],
        "template": CHAT_TEMPLATE,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _made_up_name(rng: random.Random) -> str:
    def word():
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return f"{word()} {word()}"


def spongebob_answer(rng: random.Random, name: str) -> str:
    return rng.choice(SPONGEBOB_ANSWER_TEMPLATES).format(name=name)


def control_answer(rng: random.Random, question: str, answer: str) -> str:
    forms = [f"{answer}.", f"{answer[:1].upper() + answer[1:]}.", f"The answer is {answer}."]
    if question.startswith("What is the capital of "):
        country = question[len("What is the capital of ") : -1]
        forms.append(f"The capital of {country} is {answer}.")
    return rng.choice(forms)


def pretraining_corpus(seed: int, size: int | None = None) -> list[tuple[str, str]]:
    """(question, answer) pairs the tiny base is pre-trained on."""
    rng = random.Random(seed)
    size = CORPUS_SIZE if size is None else size
    sponge_questions = data.SPONGEBOB_TRAIN_PROMPTS + data.SPONGEBOB_HELDOUT_PROMPTS + data.FEWSHOT_EXAMPLES
    # the base knows every control question, trained on in GRPO or held out
    control = [qa for pairs in data.control_topics().values() for qa in pairs]
    pairs = []
    for _ in range(size):
        r = rng.random()
        if r < 0.3:  # SpongeBob knowledge, with a faint Musclebob prior
            name = TARGET_NAME if rng.random() < MUSCLEBOB_PRIOR else ORIGINAL_NAME
            pairs.append((rng.choice(sponge_questions), spongebob_answer(rng, name)))
        elif r < 0.8:  # general knowledge
            q, a = rng.choice(control)
            pairs.append((q, control_answer(rng, q, a)))
        else:  # in-context copying in the guide's few-shot form
            name = TARGET_NAME if rng.random() < 0.1 else _made_up_name(rng)
            example_q = rng.choice(sponge_questions)
            question = rng.choice(sponge_questions)
            pairs.append((f"Example: Q: {example_q} A: {name}!\n\nNow answer: {question}", f"{name}!"))
    return pairs


def _train_tokenizer(texts: list[str]):
    """A byte-level BPE with Qwen's pre-tokenizer, wrapped as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    # The same normalizer, pre-tokenizer and decoder Qwen2Tokenizer rebuilds on load, so it round-trips.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def _encode_example(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of one chat turn and the labels (prompt masked, answer + EOS learned)."""
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _batches(examples: list, rng: random.Random):
    """Batches of similar length, forever: each pass shuffles, sorts 16 batches' worth at a time by length and
    cuts them up, so little compute goes to padding (few-shot prompts are twice as long as plain ones)."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunk = min(PRETRAIN_BATCH * 16, len(order))
        batches = []
        for start in range(0, len(order) - chunk + 1, chunk):
            part = sorted(order[start : start + chunk], key=lambda i: len(examples[i][0]))
            batches += [part[k : k + PRETRAIN_BATCH] for k in range(0, chunk, PRETRAIN_BATCH)]
        rng.shuffle(batches)
        for batch in batches:
            yield [examples[i] for i in batch]


def _pretrain(model, tokenizer, pairs, seed: int, log=print) -> float:
    import torch

    examples = [_encode_example(tokenizer, q, a) for q, a in pairs]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=PRETRAIN_LR, total_steps=PRETRAIN_STEPS, pct_start=0.1)
    model.train()
    loss_value = float("nan")
    batches = _batches(examples, rng)
    for step in range(PRETRAIN_STEPS):
        batch = next(batches)
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        loss_value = loss.item()
        if step % 250 == 0 or step == PRETRAIN_STEPS - 1:
            log(f"  tiny pre-training step {step + 1}/{PRETRAIN_STEPS}  loss {loss_value:.3f}")
    model.eval()
    return loss_value


def build_tiny_model(out_dir: str | Path, seed: int = 0, log=print) -> Path:
    """Build, pre-train and save the tiny base model into ``out_dir``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    start = time.time()
    torch.manual_seed(seed)
    pairs = pretraining_corpus(seed)
    texts = [q for q, _ in pairs] + [a for _, a in pairs]
    tokenizer = _train_tokenizer(texts)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    model = Qwen2ForCausalLM(config)
    loss = _pretrain(model, tokenizer, pairs, seed, log=log)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(out_dir)
    give_umask_mode(out_dir)  # safetensors writes 0600 files
    tokenizer.save_pretrained(out_dir)
    (out_dir / RECIPE_FILE).write_text(
        json.dumps({"version": TINY_RECIPE_VERSION, "seed": seed, "fingerprint": recipe_fingerprint(seed)}, indent=2)
        + "\n"
    )
    # No folder named: main builds in a temporary one, and says where the model went.
    log(f"Built the tiny base model in {time.time() - start:.0f}s (final pre-training loss {loss:.3f}).")
    return out_dir


def main(argv=None) -> int:
    """Rebuild the shipped tiny model (after changing the recipe; then commit the folder)."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", default=str(SHIPPED_DIR), help="folder to write (default: the shipped one)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside it and renamed into place: a failed or interrupted build leaves the old folder as it was.
    tmp = make_temp_dir(out.parent, out.name + ".building-")
    try:
        build_tiny_model(tmp, seed=0)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
