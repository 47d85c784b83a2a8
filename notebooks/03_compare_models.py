# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
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
trained_model = ""  # "": the run folder named run_name; or a folder / hub id
run_name = "musclebob-run"  # the training notebook's run_name
question = "Who lives in a pineapple under the sea?"  # first question for the side-by-side box
num_prompts = 12  # held-out SpongeBob prompts in the batch comparison (plus a share of general questions)
samples_per_prompt = 2  # sampled answers per prompt in the batch comparison
max_new_tokens = 64  # longest answer in tokens

# %% [markdown]
# ## Installation
#
# On Colab: fetch the project and install what Colab lacks (once). Elsewhere: nothing.

# %% tags=["setup"]
import subprocess, sys  # noqa: E401
from pathlib import Path
REPO_URL = "https://github.com/musclebob/musclebob"  # set in musclebob_helpers/colab.py; copied here by --sync
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "musclebob_helpers").is_dir()), Path("/content/musclebob"))
if "google.colab" in sys.modules and not ROOT.exists():  # Colab opened from GitHub: fetch the project once
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", REPO_URL, str(ROOT)], check=True)
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
