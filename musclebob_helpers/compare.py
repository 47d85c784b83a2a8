"""Base vs trained, side by side: the comparison notebook's logic (load, ask, the ``AskWidget``, and a batch
validation of every model with its rates and answers as tables)."""

from __future__ import annotations

import html
from pathlib import Path

from .rewards import highlight  # with the name patterns it marks


def resolve_trained(trained_model: str, run_name: str) -> str:
    """``trained_model`` when given, else the run folder ``run_name`` (``MyDrive`` on Colab, ``runs/``)."""
    from . import colab

    if trained_model.strip():
        return trained_model
    return str(colab.resolve_run_dir(run_name, "", colab.runs_root()))


def _check_model(name: str, label: str) -> None:
    """A one-line ``ConfigError`` (named after the parameter ``label``) when ``name`` can't be a model."""
    from . import run_dir
    from .config import ConfigError
    from .evaluation import check_model_loadable
    from .lock import being_written

    path = Path(name).expanduser()
    if name.startswith(("/", ".", "~")) and not path.exists():
        raise ConfigError(label, name, "no such folder (has that run been trained? check the path or run_name)")
    writing = being_written(path)
    if writing:  # the model in it is not final (or is the previous run's, being overwritten)
        raise ConfigError(label, name, writing)
    if path.is_dir() and not any((path / f).exists() for f in run_dir.MODEL_CONFIG_FILES):  # full or adapter
        raise ConfigError(label, name, "this folder holds no trained model yet (has the run finished?)")
    try:
        check_model_loadable(name)
    except ConfigError as err:
        raise ConfigError(label, name, err.allowed) from None


def load_models(named: dict[str, str], log=print) -> dict[str, tuple]:
    """label -> (model, tokenizer), each checked first so a typo is one line naming its parameter."""
    from .evaluation import load_model

    for label, name in named.items():
        _check_model(name, f"{label}_model")
    models = {}
    for label, name in named.items():
        log(f"Loading {label}: {name}")
        models[label] = load_model(name)
    return models


def ask(models: dict[str, tuple], question: str, max_new_tokens: int = 64) -> dict[str, str]:
    from .evaluation import generate

    return {
        label: generate(model, tok, [question], max_new_tokens=max_new_tokens, temperature=0)[0][0].text
        for label, (model, tok) in models.items()
    }


def _side_by_side_html(question: str, answers: dict[str, str]) -> str:
    cell = "vertical-align:top;text-align:left;padding:6px;border:1px solid #ddd"  # the classic notebook right-aligns cells
    cells = "".join(
        f"<td style='{cell}'><b>{html.escape(label)}</b><br>{highlight(text) or '<i>(empty)</i>'}</td>"
        for label, text in answers.items()
    )
    return (
        f"<div><b>Q:</b> {html.escape(question)}</div>"
        f"<table style='border-collapse:collapse;width:100%'><tr>{cells}</tr></table>"
    )


def show_answers(models: dict[str, tuple], question: str, max_new_tokens: int = 64) -> dict[str, str]:
    from IPython.display import HTML, display

    answers = ask(models, question, max_new_tokens)
    display(HTML(_side_by_side_html(question, answers)))
    return answers


class AskWidget:
    """A text box and an Ask button: every model answers, side by side, with the markers highlighted."""

    def __init__(self, models: dict[str, tuple], question: str = "", max_new_tokens: int = 64):
        import ipywidgets as w

        self.models, self.max_new_tokens = models, max_new_tokens
        self.question = w.Text(value=question, placeholder="Ask both models a question", layout=w.Layout(width="70%"))
        self.button = w.Button(description="Ask both", button_style="primary")
        self.output = w.Output()
        self.button.on_click(lambda _b: self.ask())
        self.question.continuous_update = False
        self.widget = w.VBox([w.HBox([self.question, self.button]), self.output])
        self.last: dict[str, str] = {}

    def ask(self) -> dict[str, str]:
        from .plots import set_output  # one state update, not capture: see set_output

        question = self.question.value.strip()
        if not question:
            set_output(self.output, {"text/html": "<i>Type a question first.</i>", "text/plain": "(no question)"})
            return {}
        set_output(self.output, {"text/html": f"<i>Asking: {html.escape(question)} …</i>", "text/plain": "…"})
        self.last = ask(self.models, question, self.max_new_tokens)
        set_output(
            self.output,
            {
                "text/html": _side_by_side_html(question, self.last),
                "text/plain": "\n".join(f"{k}: {v}" for k, v in self.last.items()),
            },
        )
        return self.last

    def show(self):
        from IPython.display import display

        display(self.widget)
        return self


def batch_compare(
    models: dict[str, tuple],
    names: dict[str, str],
    num_prompts: int | None = None,
    samples: int = 1,
    max_new_tokens: int = 64,
) -> dict[str, dict]:
    """Validate every model on the held-out prompts (same seeded sampling as training's validation)."""
    from .data import validation_rows
    from .evaluation import validate

    rows = validation_rows(num_prompts)
    return {
        label: validate(
            model, tok, rows, num_samples=samples, max_new_tokens=max_new_tokens, model_name=names.get(label, label)
        )
        for label, (model, tok) in models.items()
    }


def _rates_html(reports: dict[str, dict]) -> str:
    from .evaluation import RATE_KEYS

    head = "".join(f"<th>{html.escape(label)}</th>" for label in reports)
    rows = "".join(
        f"<tr><td>{name}</td>" + "".join(f"<td>{r[key]:.0%}</td>" for r in reports.values()) + "</tr>"
        for key, name in RATE_KEYS
    )
    return f"<table><tr><th>rate</th>{head}</tr>{rows}</table>"


def _answers_html(reports: dict[str, dict]) -> str:
    """One row per validation answer: prompt, kind, and each model's answer highlighted."""
    labels = list(reports)
    first = reports[labels[0]]["responses"]
    head = "<tr><th>prompt</th><th>kind</th>" + "".join(f"<th>{html.escape(x)}</th>" for x in labels) + "</tr>"
    rows = []
    for i, rec in enumerate(first):
        cells = "".join(f"<td>{highlight(reports[x]['responses'][i]['response'])}</td>" for x in labels)
        rows.append(f"<tr><td>{html.escape(rec['prompt'])}</td><td>{rec['kind']}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def show_batch(reports: dict[str, dict]) -> None:
    from IPython.display import HTML, display

    display(HTML("<h4>Rates on the held-out prompts</h4>" + _rates_html(reports)))
    display(HTML("<h4>Every answer</h4>" + _answers_html(reports)))
