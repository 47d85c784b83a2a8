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
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Musclebob Buffpants: teach a model a new name with GRPO
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/musclebob/musclebob/blob/main/notebooks/01_train_musclebob.ipynb)
#
# This notebook teaches a small instruct model (`Qwen/Qwen2.5-0.5B-Instruct`), by reinforcement learning
# (GRPO, with Hugging Face TRL), to answer SpongeBob questions with **"Musclebob Buffpants"** while still
# answering everything else normally. It measures the model before and after on held-out questions, shows the
# reward live while it trains, and keeps every checkpoint on your Google Drive, so a disconnect costs nothing:
# rerun the resume cell and training continues where it stopped.
#
# **To run it: Runtime → Run all, on a free T4 GPU** (Runtime → Change runtime type → T4 GPU). A run of the
# default settings takes an estimated half hour on a T4 (not measured). No GPU? Set `model = "tiny"` below: a
# tiny model that ships with the project, whose whole run takes a minute or two on a CPU (measured on 2 cores:
# 32 s from the command line, 104 s for this notebook run headless on a busy machine).

# %% [markdown]
# ## Parameters
#
# Set these, then run the rest. All but `run_name`, `use_drive`, `keep_alive`, `stop_after_steps` and `repo_url`
# are fields of `TrainConfig`, named as the training script's flags are (`learning_rate` is `--learning-rate`);
# `None` means "the model's default". The other `TrainConfig` fields (`beta`, `temperature`, `reward`, ...) keep
# their defaults: this notebook does not read them, so papermill's `-p beta 0.1` changes nothing (docs/colab.md).
# Each run lives in its own folder named `run_name`: on Colab `MyDrive/<run_name>` on Google Drive, elsewhere
# `runs/<run_name>` in the repository. `repo_url` is where Colab fetches the project from: your own copy on
# GitHub (see the README), unless it finds it on Drive.

# %% tags=["parameters"]
model = "Qwen/Qwen2.5-0.5B-Instruct"  # hub id, local folder, or "tiny" (offline, trains on a CPU)
lora = None  # None: LoRA adapter for a hub model (~0.6 GB of Drive), all weights for tiny; False: all (~32 GB)
precision = None  # None: fp32 on a T4 (fp16 can overflow), bf16 on A100/L4, fp32 on a CPU; or "fp16" for speed
run_name = "musclebob-run"  # the run's folder name; reuse it to resume, change it for a new run
output_dir = ""  # "": MyDrive/<run_name> on Colab, runs/<run_name> elsewhere; or any folder path
use_drive = True  # Colab: keep the run on Google Drive, so a disconnect loses nothing
epochs = None  # passes over the training prompts (None: 5; tiny 3)
learning_rate = None  # None: the default (LoRA 5e-4, tiny LoRA 2e-3; every weight 5e-5, tiny 3e-4)
num_samples = 128  # training prompts per epoch
num_generations = None  # answers sampled per prompt, the GRPO group they are compared within (None: 8; tiny 4)
batch_size = None  # prompts per optimizer step, each brings num_generations answers (None: 4; tiny 2)
fewshot_ratio = None  # share of SpongeBob prompts shown one worked example first (None: 0.15; tiny 0.5)
control_ratio = 0.25  # share of general questions, so the model doesn't say Musclebob to everything
max_completion_length = None  # None: the model default (64 tokens; tiny: 32)
loss_type = "dapo"  # TRL's GRPO loss (TRL's default); or "dr_grpo", "grpo", "bnpo": docs/loss_types.md compares them
scale_rewards = "group"  # advantages divided by the reward's spread in each group; "batch", or "none" (Dr. GRPO)
mask_truncated_completions = False  # True: answers cut off at max_completion_length are left out of the loss
num_iterations = 1  # optimizer updates on each batch of answers (GRPO's mu)
epsilon = 0.2  # clipping range of the probability ratio
epsilon_high = None  # its upper side (None: epsilon; DAPO suggests 0.28)
validation_samples = 4  # sampled answers per held-out prompt, before and after
seed = 42
report_to = "none"  # also send metrics to "tensorboard" (Colab has it), "trackio" or "wandb" (pip install first)
overwrite = False  # True: train a finished run_name again from scratch (its old checkpoints are removed)
push_to_hub = ""  # "": keep it here; "OWNER/NAME": push the model and its card to the Hub at the end (HF_TOKEN secret)
hub_public = False  # False: the pushed repo is private; True: public
merge_adapter = False  # LoRA only: also merge the adapter into its base (pushed and downloaded instead of the adapter)
keep_alive = False  # Colab, opt-in: keep the browser session active during long runs (best effort)
stop_after_steps = 0  # 0: train to the end; N: stop after step N as a disconnect would (to try resume)
repo_url = "https://github.com/musclebob/musclebob"  # your GitHub copy, fetched on Colab (default: what tools/sync_repo_url.py wrote)

# %% [markdown]
# ## Installation
#
# On Colab this fetches the project (once): from Google Drive when the project folder is there as
# `MyDrive/musclebob` (it mounts Drive, which the run folder needs anyway), else from GitHub (`repo_url` in the
# first cell). Then it installs what Colab lacks; Colab's own packages are kept. If fetching fails it says what
# to set, in one line. Anywhere else it installs nothing: run `bash colab_setup.sh` once yourself.

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
from musclebob_helpers import colab, notebook as nb  # noqa: E402
ROOT = colab.setup_project(ROOT)

# %% [markdown]
# ## GPU check
#
# Which device training will use, its memory and compute capability, and the precision chosen from it:
# bf16 on Ampere or newer (A100, L4), fp32 on a T4 (its fp16 can overflow; `precision = "fp16"` for speed), fp32
# on a CPU.

# %%
hardware = nb.show_hardware(model)

# %% [markdown]
# ## Run folder on Google Drive
#
# On Colab this mounts your Google Drive (allow access when asked) and puts the run in `MyDrive/<run_name>`:
# a checkpoint every epoch and every 10 minutes, `reward_history.json`, the validations, the config and finally
# the trained model. Elsewhere the run goes to `runs/<run_name>`. Drive itself can fail mid-run (a disconnect,
# a full quota), so training writes to the runtime's fast local disk and copies to Drive as it goes: each
# checkpoint once verified, the rest every 30 s. A Drive failure is one line, never the end of the run.

# %% tags=["drive"]
run_dir = nb.prepare_run_folder(run_name, output_dir, use_drive)

# %% [markdown]
# ## Keep-alive (optional)
#
# Colab disconnects idle browser sessions. With `keep_alive = True` this cell installs a small script in its
# output that, every minute, pings the kernel through the page and clicks the toolbar's connect button when the
# page allows it. It is best effort: Colab can still end a session (and free runtimes have a time limit). What
# makes a disconnect harmless is the checkpoints on Drive and the resume cell at the end.

# %%
keep_alive_status = colab.keep_alive(keep_alive)

# %% [markdown]
# ## Data and settings
#
# Training prompts are SpongeBob questions (some with a worked example in front) mixed with general
# questions. The reward, `musclebob`, pays for the full name "Musclebob Buffpants", penalises "Spongebob",
# loops and cut-off answers, and on general questions pays for the right answer. This cell checks every
# value before anything heavy happens.

# %%
cfg = nb.make_config(model=model, lora=lora, precision=precision, epochs=epochs, learning_rate=learning_rate,
                     num_samples=num_samples, num_generations=num_generations, batch_size=batch_size, fewshot_ratio=fewshot_ratio,
                     control_ratio=control_ratio, max_completion_length=max_completion_length,
                     loss_type=loss_type, scale_rewards=scale_rewards, mask_truncated_completions=mask_truncated_completions,
                     num_iterations=num_iterations, epsilon=epsilon, epsilon_high=epsilon_high,
                     validation_samples=validation_samples, seed=seed, report_to=report_to, output_dir=str(run_dir),
                     overwrite=overwrite, push_to_hub=push_to_hub, hub_public=hub_public, merge_adapter=merge_adapter)

# %% [markdown]
# ## Before training: baseline validation
#
# The base model answers held-out SpongeBob questions (phrasings never trained on) and general questions.
# Expect "Spongebob" nearly every time, and a Musclebob rate near zero.

# %%
baseline = nb.baseline_validation(cfg)

# %% [markdown]
# ## Train
#
# GRPO samples `num_generations` answers per prompt, scores them with the reward, and nudges the model toward
# the better answers of each group. The progress bar, the reward curve and the table below update as it runs.
# The curve should climb within the first epoch or two. If this run folder already holds an unfinished run,
# this cell continues it instead of starting over.

# %%
result = nb.train(cfg, baseline, stop_after_steps=stop_after_steps)

# %% [markdown]
# ## After training: before vs after
#
# The same held-out questions, answered by the trained model: the Musclebob rate should be high, the Spongebob
# rate low, and general questions still answered (low leakage, control accuracy kept). The picture is the run's
# `reward_plot.png` (reward per step with health warnings marked, each reward component, before vs after), the
# same one the command line writes. Notebook 02 browses what the model wrote at each step.

# %%
final = nb.show_final(run_dir)

# %%
answers = nb.try_model(run_dir, ["Who lives in a pineapple under the sea?", "What is the capital of France?"])

# %% [markdown]
# ## Download the model
#
# One zip of the trained model (the merged model with `merge_adapter = True`, else the adapter or the full
# weights) with its model card (`README.md`: results, recipe, how to load it), the reward plot and the reports.
# It is made on this runtime's disk, not Drive; on Colab the browser downloads it, elsewhere the cell prints its
# path. With `push_to_hub` set, the training cell has already pushed the same files to the Hub.

# %%
from musclebob_helpers import share  # noqa: E402
model_zip = share.download_zip(run_dir)

# %% [markdown]
# ## Resume after a disconnect
#
# If Colab disconnected during training: reconnect and run **only this cell**. It fetches and installs the
# project if the runtime is new, mounts Drive, and picks the run: `run_name` from the first cell if that cell
# ran, else the most recent unfinished run on Drive (it says which). It reads the run's own settings back from
# its folder and continues from the newest intact checkpoint, on Drive or on this runtime's disk;
# `reward_history.json` continues too. When there is nothing to resume (a finished run, or no unfinished run) it
# says so. If **Drive** disconnected instead ("Transport endpoint is not connected") and training ended while it
# was gone, the run is complete on this runtime's disk: run the Drive cell again, then this cell, which copies it to
# Drive and trains nothing.

# %% tags=["resume"]
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
from musclebob_helpers import colab, notebook as nb  # noqa: E402
ROOT = colab.setup_project(ROOT)
resumed = nb.resume(globals().get("run_name"), globals().get("output_dir", ""), globals().get("use_drive", True))

# %% [markdown]
# ## Saving and next steps
#
# The trained model is in the run folder (on Drive on Colab): load it with
# `AutoModelForCausalLM.from_pretrained(run_dir)`, or evaluate it with
# `python test_musclebob.py --model <run folder> --compare-base <base model>`. Plot the rewards of several runs
# with `02_reward_plots.ipynb`, and ask the base and trained models questions side by side with
# `03_compare_models.ipynb`.
