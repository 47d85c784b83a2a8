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
# smoothing slider, epoch boundaries and the reward's spread (± std) as a band; and the baseline vs final
# validation rates as a bar chart. The files are reread on every redraw, so it works on a run that is still
# training (press **Reload**, or use the follow cell). **Runtime → Run all**; no GPU needed.

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
follow_seconds = 0  # > 0: redraw the newest run every 10 s for this long (a run still training)

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
from musclebob_helpers import colab, plots  # noqa: E402
ROOT = colab.setup_project(ROOT)

# %% [markdown]
# ## Find the runs
#
# Every folder with a `reward_history.json` under `runs_root` (on Colab, Drive is mounted first).

# %%
root = colab.runs_root(runs_root)
run_dirs = plots.find_runs(root)
print("\n".join(f"{p}  ({len(plots.load_history(p))} steps)" for p in run_dirs) or "No runs found: check runs_root.")

# %% [markdown]
# ## Mean reward over steps
#
# A static plot of every run with the parameters above (saved as `reward_plots.png` in `runs_root`), then the interactive version: pick runs, move the smoothing slider, toggle the epoch lines and the std
# band; **Reload** rereads the files.

# %%
figure = plots.plot_rewards({p.name: plots.load_history(p) for p in run_dirs}, window, show_epochs, show_std)
png = plots.show_figure(figure, save_to=root / "reward_plots.png")

# %%
explorer = plots.RewardExplorer(run_dirs, window, show_epochs, show_std).show()

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
frames = plots.follow(run_dirs, follow_seconds)
