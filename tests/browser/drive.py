"""Drive one notebook in a Jupyter frontend with headless Chromium (playwright), as a person would: Run all,
then use its widgets; screenshots before and after, and what changed, as one JSON line on stdout.

    python drive.py --frontend classic|lab --url http://127.0.0.1:PORT --token T --path REL.ipynb
                    --scenario plots|compare|plain --shots DIR --name PREFIX

Run by the ``driver`` environment of tools/browser_frontends.py (playwright), against Debian's chromium.
"""

from __future__ import annotations

import argparse
import json
import re
import time

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach Google's services from a closed
# network (and floods it); --no-sandbox because CI runs as root.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_ALL_SECONDS = 600
OUT = ".jupyter-widgets-output-area, .widget-output"  # an Output widget: ipywidgets 7 / 8 class names
OUT_IMG = ".jupyter-widgets-output-area img, .widget-output img"
WIDGET_ERROR = re.compile(r"widget|_deserialize_state|comm|jupyter-js|model", re.IGNORECASE)


class Frontend:
    """What differs between the classic notebook (ipywidgets 7 manager) and JupyterLab 4 (ipywidgets 8)."""

    def __init__(self, kind: str, page):
        self.kind, self.page = kind, page

    def url(self, base: str, path: str, token: str) -> str:
        return (
            f"{base}/notebooks/{path}?token={token}"
            if self.kind == "classic"
            else f"{base}/lab/tree/{path}?token={token}&reset"
        )

    def wait_ready(self):
        if self.kind == "classic":
            self.page.wait_for_function(
                "() => window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel"
                " && Jupyter.notebook.kernel.is_connected()"
                " && Jupyter.notebook.kernel.widget_manager",
                timeout=120_000,
            )
            # The widget manager first asks the kernel for existing widgets; a display arriving before that
            # is done is hidden for good by widgetsnbextension on this notebook (it misreads nbclassic's
            # version "1.x" as a notebook older than 6.4.5). A person never clicks Run all that fast.
            time.sleep(3)
        else:
            self.page.wait_for_function(
                "() => window.jupyterapp && document.querySelector('.jp-Notebook')"
                " && document.querySelector('.jp-Notebook-ExecutionIndicator')"
                " && !/Connecting|Starting|Unknown/.test(document.querySelector("
                "'.jp-Notebook-ExecutionIndicator').getAttribute('data-status') || '')",
                timeout=120_000,
            )
            time.sleep(2)
            no_news = self.page.get_by_role("button", name="No", exact=True)
            if no_news.count():  # the "official Jupyter news?" toast would cover part of the screenshots
                no_news.first.click()

    def run_all(self):
        if self.kind == "classic":
            self.page.evaluate("() => Jupyter.notebook.execute_all_cells()")
            done = (
                "() => Jupyter.notebook.get_cells().filter(c => c.cell_type === 'code').every("
                "c => typeof c.input_prompt_number === 'number') && !Jupyter.notebook.kernel_busy"
            )
        else:
            # Lab runs the command on the notebook it counts as current; on a loaded machine that can still be unset
            # a moment after the page looks ready, and the command then does nothing (CI saw every cell left
            # unrun). So it is repeated until some cell has started, as a person would click again.
            started = (
                "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))"
            )
            for _attempt in range(5):
                self.page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
                try:
                    self.page.wait_for_function(started, timeout=30_000, polling=500)
                    break
                except PlaywrightTimeout:  # nothing started: click again
                    self.page.locator(".jp-Notebook").first.click()  # make it the current notebook
            done = (
                "() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];"
                " return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }"
            )
        self.page.wait_for_function(done, timeout=RUN_ALL_SECONDS * 1000, polling=1000)
        time.sleep(2)  # let the last widget views render

    def errors_in_outputs(self) -> list[str]:
        sel = (
            ".output_error, .output_area pre:has-text('Traceback')"
            if self.kind == "classic"
            else ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']:has-text('Traceback')"
        )
        return [e.inner_text()[:300] for e in self.page.locator(sel).all()]


def slider_to(page, value: int, label: str = "smoothing"):
    """Set a slider (the smoothing one unless named) through its readout (editable in ipywidgets 7 and 8), as a
    person can."""
    slider = page.locator(".widget-slider", has_text=label).first
    readout = slider.locator(".widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def image_src(page) -> str:
    imgs = page.locator(OUT_IMG)
    return imgs.first.get_attribute("src") if imgs.count() else ""


def wait_change(page, before: str, seconds: float = 60) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        now = image_src(page)
        if now and now != before:
            return now
        time.sleep(0.5)
    return image_src(page)


def scenario_plots(fe: Frontend, shot) -> dict:
    page = fe.page
    page.locator(OUT_IMG).first.wait_for(timeout=60_000)
    first = image_src(page)
    page.locator(OUT_IMG).first.scroll_into_view_if_needed()
    shot("before")
    slider_to(page, 3)
    after_slider = wait_change(page, first)
    shot("after-slider")
    page.locator(".widget-checkbox", has_text="std band").locator("input[type=checkbox]").first.click()
    after_std = wait_change(page, after_slider)
    page.locator(".widget-checkbox", has_text="epoch boundaries").locator("input[type=checkbox]").first.click()
    after_epochs = wait_change(page, after_std)
    shot("after-toggles")
    readout = page.locator(".widget-slider", has_text="smoothing").locator(".widget-readout").first.inner_text()
    return {
        "src": [first[:40] + f"...({len(first)} chars)" for first in (first, after_slider, after_std, after_epochs)],
        "changed": {
            "slider": bool(first) and after_slider != first,
            "std_band": bool(after_slider) and after_std != after_slider,
            "epoch_boundaries": bool(after_std) and after_epochs != after_std,
        },
        "slider_readout": readout.strip(),
        **completion_browser(page, shot),
    }


def wait_text(locator, changed, seconds: float = 60) -> str:
    """The locator's text once ``changed(text)`` holds (or as it is after ``seconds``)."""
    deadline = time.time() + seconds
    text = locator.inner_text()
    while not changed(text) and time.time() < deadline:
        time.sleep(0.5)
        text = locator.inner_text()
    return text


def completion_browser(page, shot) -> dict:
    """The completion browser below the explorer: the step slider back to step 1, then only control prompts."""
    shown = page.locator(OUT, has_text="completions shown").first
    shown.wait_for(timeout=60_000)
    shown.scroll_into_view_if_needed()
    first = shown.inner_text()
    shot("completions")
    slider_to(page, 1, "step")
    at_step_1 = wait_text(shown, lambda t: "step 1 ·" in t)
    marks = shown.locator("mark").count()  # the names highlighted, as notebook 03 does
    page.locator(".widget-toggle-buttons button", has_text="control").first.click()
    control = wait_text(shown, lambda t: t != at_step_1)
    shot("completions-control")
    return {
        "completions": {
            "newest_first": first.split("·")[1].strip() if "·" in first else first[:80],
            "step": "step 1 ·" in at_step_1 and at_step_1 != first,
            "kind": control != at_step_1 and "SpongeBob" not in control,
        },
        "completion_marks": marks,
    }


def scenario_compare(fe: Frontend, shot) -> dict:
    page = fe.page
    box = page.locator(".widget-text input[type=text]").first
    box.wait_for(timeout=60_000)
    box.scroll_into_view_if_needed()
    before = page.locator(OUT).first.inner_text()
    shot("before")
    question = "Who is the strongest creature in Bikini Bottom?"
    box.fill(question)
    box.press("Enter")
    page.locator("button", has_text="Ask both").first.click()
    answers = page.locator(OUT, has_text=question).first
    answers.wait_for(timeout=120_000)
    page.locator(".jupyter-widgets-output-area table, .widget-output table").first.wait_for(timeout=120_000)
    time.sleep(1)
    shot("after-ask")
    text = answers.inner_text()
    return {
        "before": before,
        "answers": text[:600],
        "changed": {"answers": question in text and text != before},
        "columns": page.locator(".jupyter-widgets-output-area table td, .widget-output table td").count(),
    }


def scenario_plain(fe: Frontend, shot) -> dict:
    """Plain ipywidgets (no project code): a slider, a checkbox and an Output holding text and an HTML table."""
    page = fe.page
    deadline = time.time() + 60
    while not page.locator(OUT).count():
        if any(WIDGET_ERROR.search(m["text"]) for m in fe.console if m["type"] in ("error", "pageerror")):
            break  # its model could not be created (widgetsnbextension 3.6.10): no Output will come, don't wait
        if time.time() > deadline:
            raise TimeoutError("no Output widget within 60 s")
        time.sleep(0.5)
    time.sleep(1)
    shot("plain")
    return {
        "output_text": page.locator(OUT).first.inner_text()[:200] if page.locator(OUT).count() else "",
        "sliders": page.locator(".widget-slider").count(),
        "checkboxes": page.locator(".widget-checkbox").count(),
    }


SCENARIOS = {"plots": scenario_plots, "compare": scenario_compare, "plain": scenario_plain}


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("frontend", "url", "token", "path", "scenario", "shots", "name"):
        parser.add_argument("--" + name, required=True)
    args = parser.parse_args()
    console: list[dict] = []
    result: dict = {"frontend": args.frontend, "notebook": args.path, "screenshots": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: console.append({"type": m.type, "text": m.text[:500]}))
        page.on("pageerror", lambda e: console.append({"type": "pageerror", "text": str(e)[:500]}))
        fe = Frontend(args.frontend, page)
        fe.console = console

        def shot(label: str):
            no_news = page.get_by_role("button", name="No", exact=True)
            if args.frontend == "lab" and no_news.count():  # the "Jupyter news?" toast covers the plots
                no_news.first.click()
            path = f"{args.shots}/{args.name}-{label}.png"
            page.screenshot(path=path, full_page=args.frontend == "classic")
            result["screenshots"].append(path)

        try:
            page.goto(fe.url(args.url, args.path, args.token), timeout=120_000)
            fe.wait_ready()
            fe.run_all()
            result["output_errors"] = fe.errors_in_outputs()
            result.update(SCENARIOS[args.scenario](fe, shot))
        except Exception as err:  # noqa: BLE001 - report what failed with a screenshot, let the test assert
            result["failure"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            shot("failure")
        finally:
            browser.close()
    result["console_errors"] = [m["text"] for m in console if m["type"] in ("error", "pageerror")]
    result["widget_errors"] = [t for t in result["console_errors"] if WIDGET_ERROR.search(t)]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
