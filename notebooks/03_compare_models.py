# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Musclebob: base vs trained, side by side
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/musclebob/musclebob/blob/main/notebooks/03_compare_models.ipynb)
#
# Loads the base model and a trained one and puts them side by side: ask both the same question and see the
# answers next to each other, with <mark style="background:#c6f6c6">Musclebob</mark> and
# <mark style="background:#ffc9c9">Spongebob</mark> highlighted; then a batch comparison on the held-out
# validation prompts with each model's rates. **Runtime → Run all** (a T4 GPU for Qwen; `tiny` runs on a CPU).

# %% [markdown]
# ## Parameters
#
# Models are hub ids, local folders, or `"tiny"`. `trained_model = ""` means the training notebook's run named
# `run_name` (`MyDrive/<run_name>` on Colab, `runs/<run_name>` elsewhere).

# %% tags=["parameters"]
base_model = "Qwen/Qwen2.5-0.5B-Instruct"  # the model before training (hub id, folder, or "tiny")
trained_model = ""  # "": the run folder named run_name; or a folder / hub id (a pushed adapter repo too)
run_name = "musclebob-run"  # the training notebook's run_name
question = "Who lives in a pineapple under the sea?"  # first question for the side-by-side box
num_prompts = 12  # held-out SpongeBob prompts in the batch comparison (plus a share of general questions)
samples_per_prompt = 2  # sampled answers per prompt in the batch comparison
max_new_tokens = 64  # longest answer in tokens
repo_url = "https://github.com/musclebob/musclebob"  # your GitHub copy, fetched on Colab (default: what tools/sync_repo_url.py wrote)

# %% [markdown]
# ## Installation
#
# On Colab: fetch the project once (from `MyDrive/musclebob` on Google Drive if it is there, else from
# `repo_url`) and install what Colab lacks. Elsewhere: nothing.

# %% tags=["setup"]
import os, shutil, subprocess, sys  # noqa: E401 - the bootstrap: the same lines in every notebook (a test checks)
from pathlib import Path
class SetupStop(Exception): _render_traceback_ = lambda self: [f"SetupStop: {self}"]  # noqa: E701,E731 - one line
HOME = Path(os.environ.get("MUSCLEBOB_HOME", "/content/musclebob"))  # where a fetched copy goes
DRIVE = Path(os.environ.get("MUSCLEBOB_DRIVE_MOUNTPOINT", "/content/drive"))
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents, HOME) if (p / "musclebob_helpers").is_dir()), None)
if ROOT is None and globals().get("use_drive", True):  # way in 1, no GitHub: the project folder in MyDrive/musclebob
    try:  # Colab only (elsewhere the import fails); the run folder is on Drive too, so this is its one permission
        from google.colab import drive; (DRIVE / "MyDrive").is_dir() or drive.mount(str(DRIVE))  # noqa: E702
        if (DRIVE / "MyDrive/musclebob/musclebob_helpers").is_dir():  # copied to local disk: fast, no marker on Drive
            ROOT = shutil.copytree(DRIVE / "MyDrive/musclebob", HOME, ignore=shutil.ignore_patterns(".*", "runs"))
    except Exception: pass  # noqa: E701,BLE001,S110 - not Colab, or Drive refused: way in 2
if ROOT is None:  # way in 2: clone repo_url (set in the first cell; its default is the address tools/sync_repo_url.py wrote)
    url = globals().get("repo_url", "https://github.com/musclebob/musclebob")
    git = subprocess.run(["git", "clone", "-q", "--depth", "1", url, str(HOME)], capture_output=True, text=True,
                         env={**os.environ, "GIT_TERMINAL_PROMPT": "0"}, check=False)  # never asks for a password
    if git.returncode:  # one line: what failed and what to set
        raise SetupStop(f"git clone {url} failed ({(git.stderr.strip() or '?').splitlines()[-1]}): set repo_url in "
                        "the first cell to your GitHub copy, or copy the project folder to Drive as MyDrive/musclebob")
    ROOT = HOME
sys.path.insert(0, str(ROOT))
from musclebob_helpers import colab, compare  # noqa: E402
ROOT = colab.setup_project(ROOT)

# %% [markdown]
# ## Load both models
#
# On Colab, Drive is mounted first when the trained model is a run folder there.

# %%
names = {"base": base_model, "trained": compare.resolve_trained(trained_model, run_name)}
models = compare.load_models(names)

# %% [markdown]
# ## Ask both
#
# Type a question and press **Ask both**: each model gives its most likely (greedy) answer. The cell below the
# box answers `question` from the parameters, so the notebook shows a comparison even when run headless.

# %%
box = compare.AskWidget(models, question, max_new_tokens).show()

# %%
answers = compare.show_answers(models, question, max_new_tokens)

# %% [markdown]
# ## Batch comparison on the held-out prompts
#
# Every model answers the validation prompts (phrasings never trained on, plus general questions) with the
# same seeded sampling as training's validation, so these rates match the training notebook's. A good run has
# a high Musclebob rate, a low Spongebob rate, and leakage and control accuracy close to the base model's.

# %%
reports = compare.batch_compare(models, names, num_prompts, samples_per_prompt, max_new_tokens)
compare.show_batch(reports)
