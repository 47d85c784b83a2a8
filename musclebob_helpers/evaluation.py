"""Loading models, generating answers, and validation (the rates and the health check).

* **musclebob**: "Musclebob" as a whole word; **full name**: "Musclebob Buffpants"; **spongebob**: "Spongebob" or
  "Squarepants" (these three rates over SpongeBob prompts).
* **coherent** (over all): at least one word, ended by EOS before the length limit, at most 100 words, no loop
  (``rewards.repetition_ratio``), no control characters but newlines and tabs.
* **leakage**: a control question answered with either name; **control accuracy**: with its known answer.

``health`` flags collapsed coherence, growing leakage, or control accuracy well below the baseline's."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from . import data, rewards, run_dir
from .config import HUB_ID, MODEL_ALLOWED, ConfigError, OneLineError, is_tiny
from .lock import being_written

# Fixed, seeded sampling: two validations of the same model give the same figures.
_VALIDATION_TEMPERATURE = 0.7
_VALIDATION_TOP_P = 0.95
_VALIDATION_SEED = 1234

_MIN_COHERENT_RATE = 0.8
_MAX_LEAKAGE_RATE = 0.2
MIN_CONTROL_ACCURACY_KEPT = 0.8  # share of the baseline's control accuracy that must survive


def has_musclebob(text: str) -> bool:
    return rewards.MUSCLEBOB.search(text) is not None


def _has_full_name(text: str) -> bool:
    return rewards.FULL_NAME.search(text) is not None


def _has_spongebob(text: str) -> bool:
    return bool(rewards.SPONGEBOB.search(text) or rewards.SQUAREPANTS.search(text))


def _is_coherent(text: str, truncated: bool = False) -> bool:
    ws = rewards.words(text)
    return (
        bool(ws)
        and not truncated
        and len(ws) <= rewards.MAX_WORDS
        and rewards.repetition_ratio(text) < 0.5
        and not rewards._CONTROL_CHARS.search(text)
    )


@dataclass
class Generation:
    text: str
    truncated: bool


def _pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def precision_for(device_name: str, capability: tuple[int, int] | None, asked: str = "auto") -> str:
    """``asked`` unless "auto"; auto is bf16 on Ampere or newer, fp16 on older GPUs (a T4), fp32 on a CPU."""
    if asked != "auto":
        return asked
    if not device_name.startswith("cuda") or capability is None:
        return "fp32"
    return "bf16" if capability[0] >= 8 else "fp16"


_HALF = {"fp16": "float16", "bf16": "bfloat16"}  # torch's names of the 16-bit precisions


def run_dtypes(precision: str, lora: bool) -> dict:
    """How a run in ``precision`` holds its weights and does its math (torch dtype names), one rule for
    rollouts and every validation: full fine-tuning keeps fp32 master weights (the optimizer's small updates need
    them) under 16-bit autocast; a frozen LoRA base stays 16-bit. fp32: no autocast."""
    half = _HALF.get(precision)
    if half is None:
        return {"weights": "float32", "autocast": None}
    return {"weights": half if lora else "float32", "autocast": half}


def generating_in(model, precision: str):
    """The autocast to generate in: accelerate wraps ``model.forward`` for training, but a PEFT model's
    ``generate`` calls its base's forward, which it never wrapped."""
    import torch

    half = run_dtypes(precision, lora=False)["autocast"]
    if half is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=model.device.type, dtype=getattr(torch, half))


def _recorded_precision(model, precision: str) -> dict:
    """What a validation report records of how it generated: precision, weight dtypes, autocast."""
    weights = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    return {"precision": precision, "weights": weights, "autocast": run_dtypes(precision, lora=False)["autocast"]}


class NonFiniteLogits(OneLineError):
    """inf/nan logits, in one line with the cure (``torch.multinomial``'s traceback names neither)."""

    def __init__(self, precision: str, where: str):
        self.precision, self.where = precision, where
        if precision == "fp16":
            cure = "fp16 overflowed; rerun with --precision fp32 (or --precision bf16 on an Ampere or newer GPU)"
        elif precision == "bf16":
            cure = "rerun with --precision fp32"
        else:
            cure = "in fp32 that is the weights themselves (a diverged run: a lower --learning-rate; or a broken model)"
        super().__init__(f"the model produced non-finite logits (inf/nan) in {precision} during {where}: {cure}")

    def __reduce__(self):
        return type(self), (self.precision, self.where)


def _generating_module(model):
    """The module whose forward ``generate`` calls: a PEFT model generates through its base model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextlib.contextmanager
def finite_logits_guard(model, precision: str, where: str):
    """While generating: ``NonFiniteLogits`` at the first forward whose last-position logits hold
    inf or nan. A hook for one generation only, so training's forwards pay nothing."""
    import torch

    def check(module, args, output):
        logits = getattr(output, "logits", None)
        if logits is not None and not bool(torch.isfinite(logits[:, -1]).all()):
            raise NonFiniteLogits(precision, where)

    handle = _generating_module(model).register_forward_hook(check)
    try:
        yield
    finally:
        handle.remove()


def load_model(
    name_or_path: str,
    device: str | None = None,
    trust_remote_code: bool = False,
    quantization_config=None,
    precision: str | None = None,
):
    """(model, tokenizer) for a hub id, a local folder, 'tiny' or a LoRA adapter (a folder or a pushed
    repo: its base with the adapter applied). ``quantization_config`` (4-bit) places the model with a device map;
    ``precision`` None: the automatic choice for ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .lora import adapter_base_model, adapter_folder, has_tokenizer, load_adapter
    from .tiny_model import resolve_model_path

    adapter = adapter_folder(name_or_path)  # an adapter folder, or a pushed adapter repo (downloaded)
    path = resolve_model_path(adapter_base_model(adapter) if adapter else name_or_path)
    device = device or _pick_device()
    cuda = device.startswith("cuda")
    if precision is None:
        # not torch.cuda.is_bf16_supported(): True on a T4 too (emulated), where the trainer uses fp16
        precision = precision_for(device, torch.cuda.get_device_capability(torch.device(device)) if cuda else None)
    dtype = getattr(torch, _HALF.get(precision, "float32"))
    tokenizer = AutoTokenizer.from_pretrained(
        adapter if adapter and has_tokenizer(adapter) else path, trust_remote_code=trust_remote_code
    )
    tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantization_config is not None:  # bitsandbytes places the weights itself
        index = torch.device(device).index or 0
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            quantization_config=quantization_config,
            device_map={"": index},
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        model.to(device)
    if adapter:
        model = load_adapter(adapter, model)
    model.eval()
    return model, tokenizer


def check_model_loadable(name: str, trust_remote_code: bool = False, max_completion_length: int | None = None) -> None:
    """``ConfigError`` when ``--model`` can't be loaded: a typo, offline, gated, not a model folder,
    remote code not allowed, or completions longer than the model's context."""
    from .tiny_model import MODEL_SHAPE

    if is_tiny(name):
        _check_context(name, MODEL_SHAPE, max_completion_length)
        return
    from .io import read_json
    from .lora import hub_adapter_folder, is_adapter_dir

    path = run_dir.expand_path(name)
    pushed = None if path.exists() else hub_adapter_folder(name)
    if pushed is not None:  # a pushed --lora run: its base must load
        _check_adapter_base(name, pushed, trust_remote_code, max_completion_length)
        return
    if path.is_file():  # "some.txt" also reads as a hub id, and transformers would parse it as a config file
        raise ConfigError("model", name, "a model folder, a hub id or 'tiny', but this is a file")
    if not path.is_dir() and not HUB_ID.match(name):
        raise ConfigError("model", name, MODEL_ALLOWED)
    if path.is_dir():
        writing = being_written(path)
        if writing:
            raise ConfigError("model", name, writing)
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ConfigError("model", name, "a model folder holds config.json; this folder has none")
        problems = run_dir.model_folder_problems(path)
        if problems:  # a save cut short (a kill, a full disk, Drive still syncing): loading it would be a traceback
            raise ConfigError(
                "model",
                name,
                f"the model in it is damaged or incomplete ({'; '.join(problems[:2])}); point at a complete model "
                "folder, or save or train it again",
            )
        if is_adapter_dir(path):
            _check_adapter_base(name, path, trust_remote_code, max_completion_length)
        _check_context(name, read_json(path / "config.json") or {}, max_completion_length)
        return
    import logging

    from transformers import AutoConfig

    # The hub client logs every retry; the user gets one line below instead.
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - any failure means the same to the user
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        why = (
            "it runs its own code from the hub; pass --trust-remote-code only if you trust its authors, or use "
            "another --model"
            if "trust_remote_code" in str(err)
            else f"it cannot be loaded ({reason}); check the name and your network, or use --model tiny to run offline"
        )
        raise ConfigError("model", name, why) from None
    finally:
        hub_log.setLevel(level)
    _check_context(name, config.to_dict(), max_completion_length)


def _check_adapter_base(name: str, folder, trust_remote_code: bool, max_completion_length: int | None) -> None:
    """An adapter's base must load here too: a base recorded as a folder of another machine does not."""
    from .lora import ADAPTER_CONFIG, adapter_base_model

    try:
        base = adapter_base_model(folder)
    except (OSError, ValueError) as err:
        raise ConfigError("model", name, f"its {ADAPTER_CONFIG} cannot be read ({err})") from None
    if not HUB_ID.match(base) and not run_dir.expand_path(base).is_dir():  # a path, not a hub id or 'tiny'
        raise ConfigError(
            "model",
            name,
            f"its base model {base!r} (the base_model_name_or_path of its {ADAPTER_CONFIG}) is a folder on the "
            "machine that trained it, not on this one; copy the base there, or set a hub id in that file",
        )
    try:
        check_model_loadable(base, trust_remote_code, max_completion_length)
    except ConfigError as err:
        raise ConfigError("model", name, f"its base model {base!r} cannot be used: {err.allowed}") from None


def _check_context(name: str, config: dict, max_completion_length: int | None) -> None:
    """Completions must fit the model's context (prompts need room too): TRL would fail mid-run otherwise."""
    context = config.get("max_position_embeddings")
    if max_completion_length is not None and isinstance(context, int) and max_completion_length >= context:
        raise ConfigError(
            "max_completion_length",
            max_completion_length,
            f"fewer tokens than the context of --model {name} ({context}), leaving room for the prompt",
        )


def eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    return sorted({tokenizer.eos_token_id, *ids} - {None})


def generate(
    model,
    tokenizer,
    prompts: list,
    max_new_tokens: int = 64,
    num_samples: int = 1,
    temperature: float = _VALIDATION_TEMPERATURE,
    seed: int = _VALIDATION_SEED,
    batch_size: int = 32,
    top_p: float = _VALIDATION_TOP_P,
    precision: str = "fp32",
) -> list[list[Generation]]:
    """``num_samples`` seeded answers per prompt (a string or chat messages), one list of ``Generation`` each;
    ``temperature=0`` is greedy."""
    import torch

    stop = eos_ids(model, tokenizer)
    results: list[list[Generation]] = []
    texts = [
        tokenizer.apply_chat_template(
            p if isinstance(p, list) else data.to_messages(p), add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = (
            dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        )
        # a private RNG stream: reproducible figures, and a mid-training check leaves the trainer's state alone
        devices = [model.device] if model.device.type == "cuda" else []
        with (
            torch.random.fork_rng(devices=devices),
            torch.no_grad(),
            generating_in(model, precision),
            finite_logits_guard(model, precision, "validation"),
        ):
            torch.manual_seed(seed + start)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        for i in range(len(chunk)):
            gens = []
            for ids in new[i * num_samples : (i + 1) * num_samples]:
                ended = next((k for k, t in enumerate(ids) if t in stop), None)
                kept = ids if ended is None else ids[:ended]
                gens.append(Generation(tokenizer.decode(kept, skip_special_tokens=True).strip(), ended is None))
            results.append(gens)
    return results


def _rate(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def _score_responses(rows: list[dict], generations: list[list[Generation]]) -> dict:
    records = []
    for row, gens in zip(rows, generations):
        for g in gens:
            records.append(
                {
                    "prompt": row["question"],
                    "kind": row["kind"],
                    **({"topic": row["topic"]} if "topic" in row else {}),
                    "response": g.text,
                    "truncated": g.truncated,
                    "musclebob": has_musclebob(g.text),
                    "full_name": _has_full_name(g.text),
                    "spongebob": _has_spongebob(g.text),
                    "coherent": _is_coherent(g.text, g.truncated),
                    "correct": rewards.answer_matches(g.text, row["answer"]) if row["kind"] == "control" else None,
                }
            )
    return {**_prompt_counts(rows), **rates(records), "responses": records}


def _prompt_counts(rows: list[dict]) -> dict:
    return {
        "num_prompts": len(rows),
        "num_spongebob_prompts": sum(r["kind"] == "spongebob" for r in rows),
        "num_control_prompts": sum(r["kind"] == "control" for r in rows),
    }


# rate -> (the kind of prompt it is over, None: all; the record's flag it counts), as the module docstring defines
_RATE_OVER = {
    "musclebob_rate": ("spongebob", "musclebob"),
    "full_name_rate": ("spongebob", "full_name"),
    "spongebob_rate": ("spongebob", "spongebob"),
    "coherent_rate": (None, "coherent"),
    "leakage_rate": ("control", "leaks"),
    "control_accuracy": ("control", "correct"),
}


def rate_hits(records: list[dict], key: str) -> list[bool]:
    """For each record the rate ``key`` is over, whether it counts (a leak: either name in a control answer)."""
    kind, flag = _RATE_OVER[key]
    over = [r for r in records if kind is None or r.get("kind") == kind]
    return [bool(r.get("musclebob") or r.get("spongebob")) if flag == "leaks" else bool(r.get(flag)) for r in over]


def rates(records: list[dict]) -> dict:
    """The validation rates of scored answers (``_score_responses``'s records)."""
    control = [r for r in records if r["kind"] == "control"]
    return {
        "num_responses": len(records),
        **{key: _rate(rate_hits(records, key)) for key in _RATE_OVER},
        "control_accuracy_by_topic": {
            t: _rate([bool(r["correct"]) for r in control if r.get("topic") == t])
            for t in dict.fromkeys(r["topic"] for r in control if "topic" in r)
        },
    }


def on_rows(report: dict, rows: list[dict]) -> dict:
    """A report's rates on a subset of its prompts: the baseline a mid-training check on fewer prompts is
    compared with."""
    questions = {r["question"] for r in rows}
    kept = [r for r in report.get("responses", []) if r["prompt"] in questions]
    return {**report, **_prompt_counts(rows), **rates(kept), "responses": kept}


def health(
    report: dict, baseline: dict | None = None, min_control_kept: float = MIN_CONTROL_ACCURACY_KEPT
) -> list[str]:
    """Plain-words problems with a validation report ([] when healthy); ``min_control_kept``: the share of the
    baseline's control accuracy below which general knowledge counts as lost."""
    problems = []
    if report["coherent_rate"] < _MIN_COHERENT_RATE:
        problems.append(
            f"coherence collapsed: {report['coherent_rate']:.0%} of answers coherent (needs {_MIN_COHERENT_RATE:.0%})"
        )
    if report["num_control_prompts"]:
        if report["leakage_rate"] > _MAX_LEAKAGE_RATE:
            problems.append(
                f"the name leaks into other questions: {report['leakage_rate']:.0%} of control "
                f"answers mention Musclebob/Spongebob (at most {_MAX_LEAKAGE_RATE:.0%})"
            )
        if baseline and baseline.get("num_control_prompts") and baseline["control_accuracy"] > 0:
            kept = report["control_accuracy"] / baseline["control_accuracy"]
            if kept < min_control_kept:
                problems.append(
                    f"general knowledge lost: control accuracy {report['control_accuracy']:.0%} vs "
                    f"{baseline['control_accuracy']:.0%} before training"
                )
    return problems


def validate(
    model,
    tokenizer,
    rows: list[dict] | None = None,
    num_samples: int = 4,
    max_new_tokens: int = 64,
    baseline: dict | None = None,
    model_name: str = "",
    precision: str = "fp32",
) -> dict:
    """Sample answers to the held-out prompts and score them, generating as the run's rollouts do in
    ``precision``."""
    rows = rows if rows is not None else data.validation_rows()
    gens = generate(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        precision=precision,
    )
    report = {"model": model_name, **_score_responses(rows, gens)}
    problems = health(report, baseline)
    report["is_healthy"] = not problems
    report["health_problems"] = problems
    report["sampling"] = {
        "temperature": _VALIDATION_TEMPERATURE,
        "top_p": _VALIDATION_TOP_P,
        "seed": _VALIDATION_SEED,
        "samples_per_prompt": num_samples,
        "max_new_tokens": max_new_tokens,
    }
    report["dtype"] = _recorded_precision(model, precision)
    report["responses"] = report.pop("responses")  # last: the file reads figures first
    return report


RATE_KEYS = [
    ("musclebob_rate", "Musclebob"),
    ("full_name_rate", "Full name"),
    ("spongebob_rate", "Spongebob"),
    ("coherent_rate", "Coherent"),
    ("leakage_rate", "Leakage"),
    ("control_accuracy", "Control acc."),
]


def summary_table(reports: dict[str, dict]) -> str:
    names = list(reports)
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':<14}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for key, label in RATE_KEYS:
        lines.append(f"{label:<14}" + "".join(f"{reports[n][key]:>{width + 2}.1%}" for n in names))
    lines.append(f"{'Healthy':<14}" + "".join(f"{str(reports[n]['is_healthy']):>{width + 2}}" for n in names))
    return "\n".join(lines)
