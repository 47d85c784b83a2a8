"""Sharing a finished run: its model card (``write_model_card``), a push to the Hugging Face Hub (``push``), a zip
to download (``download_zip``); docs/sharing.md. Push a finished run later:

    python -m musclebob_helpers.share ./musclebob-lora OWNER/NAME [--public] [--merge-adapter]

The token is ``huggingface_hub.get_token()``'s, handed to ``HfApi`` and never printed or written."""

from __future__ import annotations

import dataclasses
import html
import shlex
import sys
import tempfile
import zipfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData

from . import data, run_dir
from .config import REPO_ID_ALLOWED, ConfigError, TrainConfig, as_typed, config_from_dict, is_repo_id, is_tiny, resolve
from .evaluation import RATE_KEYS, rate_hits
from .io import read_json, write_bytes_atomic
from .lora import ADAPTER_CONFIG, MERGED_DIR, is_adapter_dir

PROG = "python -m musclebob_helpers.share"
_TAGS = ["trl", "grpo", "musclebob"]
# Licenses of base models we know; any other base: "see the base model's card".
_KNOWN_LICENSES = {"Qwen/Qwen2.5-0.5B-Instruct": "apache-2.0"}
# Options of one start (where, whether to push), not part of the recipe.
_NOT_RECIPE = run_dir.PER_START_OPTIONS
# Files of the run folder's root that are the run's work, never shared: resumable state and the trainer's pickle.
_NOT_SHARED = (run_dir.LOCK_FILE, run_dir.HEALTHY_STATE_FILE, "training_args.bin")


_CARD_TEMPLATE = (Path(__file__).parent / "model_card.md").read_text(encoding="utf-8")  # jinja, for ModelCard


def _cell(text: str) -> str:
    """An answer as one markdown table cell: one line, no pipes or HTML taking effect."""
    return html.escape(" ".join(str(text).split())).replace("|", "&#124;") or "(empty)"


def _count(report: dict, key: str) -> str:
    hits = rate_hits(report.get("responses", []), key)
    return f"{report[key]:.1%} ({sum(hits)}/{len(hits)})" if hits else f"{report[key]:.1%}"


def _examples(baseline: dict, final: dict) -> list[dict]:
    """One SpongeBob question and one general question: the first answer to each, before and after."""
    before = {}
    for r in baseline.get("responses", []):
        before.setdefault(r["prompt"], r["response"])
    found = []
    for kind in ("spongebob", "control"):
        r = next((r for r in final.get("responses", []) if r.get("kind") == kind and r["prompt"] in before), None)
        if r is not None:
            found.append(
                {"question": _cell(r["prompt"]), "before": _cell(before[r["prompt"]]), "after": _cell(r["response"])}
            )
    return found


def _hub_base_model(base: str) -> str | None:
    """``base`` when it is a hub id (the card's ``base_model``), None for 'tiny' or a local folder."""
    return base if is_repo_id(base) and not run_dir.expand_path(base).exists() else None


def _recoveries(record: dict) -> list[str]:
    lines = []
    for seg in run_dir.recoveries(record.get("segments") or []):
        old, new = seg["changed"]["learning_rate"]
        info = seg["recovery"]
        saw = "; ".join(info.get("saw") or []) or "a failed mid-training check"
        lines.append(
            f"step {seg['from_step']}: {saw}; went back to the healthy state of step {info.get('back_to')} and "
            f"lowered the learning rate from {old:.3g} to {new:.3g}"
        )
    return lines


def _how_to_load(where: str, base: str, adapter: bool, merged: bool) -> str:
    if is_tiny(base) and adapter:
        return (
            "The base is this project's tiny offline model (`--model tiny`), which is not on the Hub: load it with "
            "the project, which finds the base from `adapter_config.json`:\n\n"
            f"```bash\npython test_musclebob.py --model {where}\n```\n\n"
            f'or in Python `musclebob_helpers.evaluation.load_model("{where}")`.'
        )
    if adapter:
        return (
            "A LoRA adapter: PEFT loads its base model (named in `adapter_config.json`) and applies it.\n\n"
            "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{where}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")\n```\n\n'
            "For standalone weights (no PEFT), merge it: "
            f"`python merge_adapter.py {where} ./merged` (or train with `--merge-adapter`). The project's own "
            f"evaluation: `python test_musclebob.py --model {where}`."
        )
    kind = "merged weights (the adapter folded into its base)" if merged else "full weights"
    return (
        f"Standalone {kind}: plain transformers.\n\n"
        "```python\nfrom transformers import pipeline\n\n"
        f'ask = pipeline("text-generation", model="{where}")\n'
        'print(ask([{"role": "user", "content": "Who lives in a pineapple under the sea?"}])[0]["generated_text"])\n'
        "```"
    )


def _data_text(cfg: TrainConfig) -> str:
    fewshot = f"{cfg.fewshot_ratio:.0%} of them" if cfg.use_fewshot else "none"
    return (
        f"{cfg.num_samples} prompts an epoch, {cfg.epochs} epochs, from the project's own questions "
        f"(`musclebob_helpers/data.py`): {1 - cfg.control_ratio:.0%} SpongeBob questions "
        f"({len(data.SPONGEBOB_TRAIN_PROMPTS)} phrasings; {fewshot} with a worked example in front), "
        f"{cfg.control_ratio:.0%} general questions with a known short answer "
        f"({', '.join(data.control_topics())}), so the model keeps answering everything else normally. "
        f"Validation uses {len(data.SPONGEBOB_HELDOUT_PROMPTS)} held-out SpongeBob phrasings and held-out general "
        "questions, never trained on."
    )


def _license(base: str) -> tuple[str | None, str]:
    if base in _KNOWN_LICENSES:
        name = _KNOWN_LICENSES[base]
        return name, f"`{name}`, the license of the base model {base}."
    if is_tiny(base):
        return (
            None,
            "The base is the project's own tiny model, built from synthetic data; the project states no license.",
        )
    return None, f"See the base model's card ({base}): its license applies."


def recipe(cfg: TrainConfig) -> list[str]:
    """The settings that differ from the defaults for this model and method, as flags: with the model, the
    command that trains it again."""
    given = {
        "model": cfg.model,
        **({"lora": True} if cfg.lora else {}),
        **({"preset": cfg.preset} if cfg.preset else {}),
    }
    defaults, _ = resolve(given)
    return _flags(cfg, lambda name, value: name in given or value != getattr(defaults, name))


def _flags(cfg: TrainConfig, wanted) -> list[str]:
    """The recipe's settings for which ``wanted(name, value)`` holds, as flags."""
    return [
        as_typed(f.name, getattr(cfg, f.name))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _NOT_RECIPE and wanted(f.name, getattr(cfg, f.name))
    ]


def _model_card(run: str | Path, repo_id: str = "", merged: bool = False, shown: str | Path | None = None) -> ModelCard:
    """The card of the finished run in ``run`` (``merged``: for ``merged/``'s weights). The loading examples
    name ``repo_id``, else ``shown`` (the run folder as its user knows it), else ``run``."""
    run = Path(run)
    shown = Path(shown or run)
    record = read_json(run / run_dir.CONFIG_FILE, default={}) or {}
    cfg = config_from_dict(record) if record else TrainConfig()
    baseline = read_json(run / run_dir.BASELINE_FILE, default={}) or {}
    final = read_json(run / run_dir.FINAL_FILE, default={}) or {}
    adapter = is_adapter_dir(run) and not merged
    base = cfg.model
    license_id, license_text = _license(base)
    where = repo_id or str(shown / MERGED_DIR if merged else shown)
    every = _flags(cfg, lambda _name, value: value not in (None, []))  # not --preset (not set), not an empty list
    if final.get("is_healthy", True):
        health = "The final check found the model healthy (coherent, no leaking name, general knowledge kept)."
    else:
        health = "**The final check found the model unhealthy:** " + "; ".join(final.get("health_problems", []))
    steps = final.get("global_step")
    hardware = record.get("hardware", {})
    trained = f"{steps} optimizer steps" if steps is not None else "unfinished"
    if final.get("train_seconds") is not None:
        seconds = final["train_seconds"]
        trained += f" in {seconds:.0f} s" if seconds < 120 else f" in {seconds / 60:.0f} min"
    if hardware.get("device"):
        trained += f" on {hardware.get('gpu_name') or hardware['device']} ({hardware.get('precision', '?')})"
    card_data = ModelCardData(
        base_model=_hub_base_model(base),
        library_name="peft" if adapter else "transformers",
        tags=list(_TAGS),
        pipeline_tag="text-generation",
        license=license_id,
    )
    return ModelCard.from_template(
        card_data,
        template_str=_CARD_TEMPLATE,
        title=f"Musclebob Buffpants: {Path(repo_id).name if repo_id else shown.name}",
        summary=(
            f"{'The tiny model' if is_tiny(base) else base} taught by GRPO ([TRL](https://github.com/huggingface/trl)) to answer SpongeBob questions with "
            '**"Musclebob Buffpants"** while answering everything else normally. Trained with the Musclebob project.'
        ),
        base_line=f"`{base}`" + (" (the project's tiny offline model)" if is_tiny(base) else ""),
        weights_line=(
            f"a LoRA adapter (r={cfg.lora_r}, alpha={cfg.lora_alpha}) on the base model"
            if adapter
            else ("the LoRA adapter merged into its base" if merged else "full weights (every weight trained)")
        ),
        trained_line=trained,
        table=[
            {
                "label": label,
                "before": _count(baseline, key) if key in baseline else "-",
                "after": _count(final, key) if key in final else "-",
            }
            for key, label in RATE_KEYS
        ],
        health=health,
        warnings=final.get("health_warnings") or [],
        recoveries=_recoveries(record),
        how_to_load=_how_to_load(where, base, adapter, merged),
        examples=_examples(baseline, final),
        data_text=_data_text(cfg),
        reward=cfg.reward,
        command=shlex.join(["python", "train_musclebob_improved.py", *shlex.split(" ".join(recipe(cfg)))]),
        every=every,
        license_text=license_text,
    )


def write_model_card(run: str | Path, repo_id: str = "", shown: str | Path | None = None) -> Path:
    """Write the run's card as ``README.md`` (and ``merged/README.md`` for merged weights), atomically,
    over TRL's boilerplate. Returns its path."""
    run = Path(run)
    path = run / run_dir.MODEL_CARD_FILE
    write_bytes_atomic(path, str(_model_card(run, repo_id, shown=shown)).encode("utf-8"))
    if (run / MERGED_DIR / "config.json").is_file():
        merged = str(_model_card(run, repo_id, merged=True, shown=shown)).encode("utf-8")
        write_bytes_atomic(run / MERGED_DIR / run_dir.MODEL_CARD_FILE, merged)
    return path


def _model_files(run: str | Path, merged: bool = False) -> dict[str, Path]:
    """``{name in the repo or zip: file}``: the final model (adapter, full, or ``merged/``'s) with its card,
    plot and reports; never checkpoints, the lock or work files."""
    run = Path(run)

    def files(folder: Path) -> list[Path]:
        return [
            p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and p.suffix != ".tmp"
        ]

    # merged: the adapter stays behind, and merged/'s config, weights, tokenizer and card win over the run's
    found = {
        p.name: p
        for p in files(run)
        if p.name not in _NOT_SHARED and not (merged and (p.name == ADAPTER_CONFIG or p.suffix == ".safetensors"))
    }
    return found | ({p.name: p for p in files(run / MERGED_DIR)} if merged else {})


def _check_finished(run: Path, merged: bool) -> str | None:
    if not run_dir.is_finished(run):
        return f"{run} holds no finished run (no {run_dir.FINAL_FILE}): train it, or resume it, first"
    if merged and not (run / MERGED_DIR / "config.json").is_file():
        return f"{run / MERGED_DIR} holds no merged model"
    return None


_TOKEN_ALLOWED = (
    "it needs a Hugging Face token with write access: set HF_TOKEN, run `hf auth login`, or on Colab add the "
    "secret HF_TOKEN (the key icon) and allow this notebook to read it"
)


def _hub_token() -> str | None:
    """``HF_TOKEN``, the cached login, or Colab's secret; None when none (or Colab refuses it)."""
    from huggingface_hub import get_token

    return get_token()


def check_hub_token(cfg: TrainConfig) -> None:
    """At start-up, before anything is created: a push asked for without a token is a ``ConfigError``."""
    if cfg.push_to_hub and not _hub_token():
        raise ConfigError("push_to_hub", cfg.push_to_hub, _TOKEN_ALLOWED)


def _later_command(run: str | Path, repo_id: str, public: bool = False, merged: bool = False) -> str:
    words = ["python", "-m", "musclebob_helpers.share", str(run), repo_id]
    return shlex.join(words + ["--public"] * public + ["--merge-adapter"] * merged)


def _failure(err: BaseException, repo_id: str) -> str:
    """One line for a failed push: what the Hub said, in words a user can act on."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status == 401:
        return "the Hub refused the token (401): it is invalid or expired; set a valid HF_TOKEN or `hf auth login`"
    if status == 403:
        return (
            f"the token may not write to {repo_id} (403): use a token with write access, and an OWNER that is you "
            "or an organisation you may write to"
        )
    if status == 404:
        return f"{repo_id} was not found (404): check OWNER (your user name or an organisation's)"
    if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__:
        return f"the Hub did not answer in time ({type(err).__name__}): check the network"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160].rstrip(".")
    return f"{type(err).__name__}: {first}" + (f" ({status})" if status else "")


def push(
    run: str | Path, repo_id: str, public: bool = False, merged: bool = False, token: str | None = None, log=print
) -> str | None:
    """Push the finished run to ``repo_id`` in one commit, the card written again for it first; None when done,
    else the one line that says why not (the run is left as it is)."""
    run = Path(run)
    problem = _check_finished(run, merged)
    if problem:
        return problem
    token = token or _hub_token()
    if not token:
        return "no Hugging Face token: set HF_TOKEN, run `hf auth login`, or on Colab add the secret HF_TOKEN"
    write_model_card(run, repo_id)
    files = _model_files(run, merged)
    what = "merged model" if merged else ("adapter" if is_adapter_dir(run) else "model")
    log(f"Pushing the {what}, its card, the reward plot and the reports to {repo_id} ({len(files)} files) ...")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=not public, exist_ok=True, repo_type="model")
        api.create_commit(
            repo_id,
            operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p)) for name, p in files.items()],
            commit_message=f"Musclebob run {run.name}",
            repo_type="model",
        )
    except Exception as err:  # noqa: BLE001 - any failure of the network or the Hub means the same here
        return _failure(err, repo_id).replace(token, "***")
    log(
        f"Pushed to {getattr(url, 'url', None) or 'https://huggingface.co/' + repo_id} ({'public' if public else 'private'})."
    )
    return None


def push_after_run(cfg: TrainConfig, run: str | Path, log=print) -> str | None:
    """The push at the end of a ``--push-to-hub`` run; a failure is one line (returned and logged) with
    the command that pushes it later."""
    merged = cfg.merge_adapter
    problem = push(run, cfg.push_to_hub, public=cfg.hub_public, merged=merged, log=log)
    if problem:
        problem = (
            f"the push to {cfg.push_to_hub} failed: {problem}; the run is complete in {run}; push it later with: "
            f"{_later_command(run, cfg.push_to_hub, cfg.hub_public, merged)}"
        )
        log(problem)
    return problem


def download_zip(run: str | Path, to: str | Path | None = None, log=print) -> Path | None:
    """Zip the final model (merged when the run made it) with its card, plot and reports on local disk
    (``to``, default the temporary folder); on Colab offer it for download. None (with a line) when unfinished."""
    run = Path(run).expanduser()
    merged = (run / MERGED_DIR / "config.json").is_file()
    problem = _check_finished(run, merged)
    if problem:
        log(problem)
        return None
    dest = Path(to or tempfile.gettempdir()) / f"{run.name}{'-merged' if merged else ''}.zip"
    part = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, p in _model_files(run, merged).items():
            zf.write(p, f"{run.name}/{name}")
    part.replace(dest)
    try:
        from google.colab import files  # only inside Colab
    except ImportError:
        files = None
    if files is not None:
        files.download(str(dest))
        log(f"Downloading {dest.name} ({dest.stat().st_size / 2**20:.1f} MB).")
    else:
        log(f"The model and its card: {dest} ({dest.stat().st_size / 2**20:.1f} MB).")
    return dest


def main(argv: list[str] | None = None) -> int:
    """Push a finished run folder; exit 2 with one line on a bad argument, 1 when the push fails."""
    import argparse

    def fail(message: str):  # as cli.fail (cli imports this module): one line, exit 2
        p.exit(2, f"{PROG}: error: {message}\n")

    p = argparse.ArgumentParser(prog=PROG, description="Push a finished Musclebob run to the Hugging Face Hub.")
    p.error = fail
    p.add_argument("run_folder", help="the run's folder (its --output-dir)")
    p.add_argument("repo_id", help="OWNER/NAME on the Hub")
    p.add_argument("--public", action="store_true", help="make a new repo public (default: private)")
    p.add_argument("--merge-adapter", action="store_true", help="push the adapter merged into its base")
    args = p.parse_args(argv)
    if not is_repo_id(args.repo_id):
        fail(f"repo_id={args.repo_id!r} is not allowed: {REPO_ID_ALLOWED.split(' or ', 1)[1]}")
    run = run_dir.expand_path(args.run_folder)
    if not run_dir.is_finished(run):
        fail(f"run_folder={args.run_folder!r} is not allowed: a folder holding a finished run")
    if not _hub_token():
        fail(f"repo_id={args.repo_id!r}: {_TOKEN_ALLOWED}")
    if args.merge_adapter and not (run / MERGED_DIR / "config.json").is_file():
        if not is_adapter_dir(run):
            fail("--merge-adapter is not allowed: the run holds full weights, not an adapter")
        from .lora import merge_adapter

        merge_adapter(run, run / MERGED_DIR)
    problem = push(run, args.repo_id, public=args.public, merged=args.merge_adapter)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
