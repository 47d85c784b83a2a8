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
# # Musclebob: reward plots
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/musclebob/musclebob/blob/main/notebooks/02_reward_plots.ipynb)
#
# Plots the mean reward per training step of one or more runs from their `reward_history.json`, with a
# smoothing slider, epoch boundaries, the reward's spread (± std) as a band and a marker where a health warning
# fired; lets you read what the model wrote at each step; and shows the baseline vs final validation rates as a
# bar chart. The files are reread on every redraw, so it works on a run that is still training (press
# **Reload**, or use the follow cell). **Runtime → Run all**; no GPU needed.

# %% [markdown]
# ## Parameters
#
# `runs_root` is a folder of runs (or one run folder). `""` means the training notebook's default place:
# `MyDrive` on Colab (Drive is mounted), `runs/` in the repository elsewhere.

# %% tags=["parameters"]
runs_root = ""  # "": MyDrive on Colab, runs/ elsewhere; or a folder of runs, or one run folder
window = 5  # moving-average window in steps (1: raw)
show_epochs = True  # dotted lines where an epoch ends
show_std = True  # shaded band: mean reward ± the reward's std within a step
show_warnings = True  # a marker on the curve where a health warning fired (health_warnings.json)
follow_seconds = 0  # > 0: redraw the newest run every 10 s for this long (a run still training)
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
from musclebob_helpers import colab, plots  # noqa: E402
ROOT = colab.setup_project(ROOT)

# %% [markdown]
# ## Find the runs
#
# Every folder with a `reward_history.json` under `runs_root` (on Colab, Drive is mounted first). A run still
# training says so (its curves grow: rerun the cells, or follow it below); a damaged file (cut short by a copy or
# a sync) is drawn as far as it is whole, with a note.

# %%
root = colab.runs_root(runs_root)
run_dirs = plots.find_runs(root)
print("\n".join(plots.run_line(p) for p in run_dirs) or "No runs found: check runs_root.")

# %% [markdown]
# ## Mean reward over steps
#
# A static plot of every run with the parameters above (saved as `reward_plots.png` in `runs_root`), then the interactive version: pick runs, move the smoothing slider, toggle the epoch lines and the std
# band; **Reload** rereads the files.
#
# A marker on the curve is a step where a health warning fired: no learning signal (every answer in a group
# scored the same), answers cut off at the length limit, the reward collapsing, or a mid-training check finding
# incoherent answers, the name leaking into other questions or general knowledge lost. The run's
# `health_warnings.json` holds each warning's full message.

# %%
runs = {p.name: plots.load_history(p) for p in run_dirs}
health = {p.name: plots.load_warnings(p) for p in run_dirs} if show_warnings else None
figure = plots.plot_rewards(runs, window, show_epochs, show_std, warnings=health)
png = plots.show_figure(figure, save_to=root / "reward_plots.png")

# %%
explorer = plots.RewardExplorer(run_dirs, window, show_epochs, show_std, show_warnings).show()

# %% [markdown]
# ## What the model said while training
#
# A few completions of each training step, kept in the run's `completions.jsonl`: move the **step** slider, pick
# the prompt kind (SpongeBob questions, few-shot ones that start with a worked example, control questions) and a
# reward range. Each answer shows Musclebob/Buffpants in green and Spongebob/Squarepants in red, the score of each
# reward function that judged it, and the total. A rising reward with "Musclebob" in the answers to control
# questions is the model gaming the reward, not learning the name. **Reload**, or moving the slider to the newest
# step, rereads the file of a run still training.

# %%
browser = plots.CompletionBrowser(run_dirs).show()

# %% [markdown]
# ## Before vs after: validation rates
#
# The held-out validation of each run before training (baseline) and after (final): how often the answers
# name Musclebob, the full name, Spongebob, and how many are coherent. A run still training has only its
# baseline.

# %%
bars = plots.show_figure(plots.plot_validation_bars({p.name: plots.load_validations(p) for p in run_dirs}))

# %% [markdown]
# ## Follow a run that is still training (optional)
#
# With `follow_seconds > 0`, redraws the newest run's curve every 10 s until it finishes or the time is up.

# %%
frames = plots.follow(run_dirs, follow_seconds, show_warnings=show_warnings)
