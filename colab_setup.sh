#!/usr/bin/env bash
# Install what Musclebob needs.
#   On Colab: only requirements-colab.txt (what Colab lacks, pinned to the versions tested on the Colab twin),
#     constrained to every version installed right now, so pip cannot change anything Colab ships (torch,
#     ipywidgets 7, transformers ...). It prints what it installed and any conflict pip reports.
#   Elsewhere: torch (a CPU build when there is no NVIDIA GPU: plain `pip install torch` pulls a multi-GB CUDA
#     build; an installed torch is never replaced), then the project with its notebook and test extras
#     (requirements.txt = `-e .[notebooks,dev]`, see pyproject.toml).
# Usage: bash colab_setup.sh        (in the Python environment you will use; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"

if "$PY" -c "import google.colab" 2>/dev/null; then
  LOG="${MUSCLEBOB_SETUP_LOG:-${TMPDIR:-/tmp}/musclebob-setup.log}"
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  # Every installed distribution pinned as it is (name==version from the metadata, so a URL-pinned
  # `torch @ https://...` becomes torch==2.x.y+cu128), and the pinned lines Colab still lacks.
  "$PY" - "$WORK" requirements-colab.txt <<'PY'
import importlib.metadata as md, re, sys
from pathlib import Path
from pip._vendor.packaging.version import InvalidVersion, Version

work, pins = Path(sys.argv[1]), Path(sys.argv[2])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
seen = {}
for d in md.distributions():  # in sys.path order: the first of a name is the one Python imports
    name, version = d.metadata["Name"], d.version
    if not name or norm(name) in seen:
        continue
    try:
        Version(version)
    except InvalidVersion:
        continue  # not a version pip can pin; nothing we install can need it
    seen[norm(name)] = f"{name}=={version}"
(work / "before.txt").write_text("\n".join(sorted(seen.values())) + "\n")
(work / "constraints.txt").write_text("\n".join(sorted(seen.values())) + "\n")
todo, kept = [], []
for line in pins.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name = re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]
    (kept if norm(name) in seen else todo).append(seen.get(norm(name), line))
(work / "todo.txt").write_text("".join(f"{line}\n" for line in todo))
print(f"Colab: installing {', '.join(todo) or 'nothing'} (what Colab lacks); the {len(seen)} packages installed "
      "stay as they are" + (f"; already installed: {', '.join(kept)}" if kept else "") + ".")
PY
  if [ ! -s "$WORK/todo.txt" ]; then
    echo "Colab: nothing to install."
    exit 0
  fi
  mapfile -t TODO < "$WORK/todo.txt"
  if ! "$PY" -m pip install --disable-pip-version-check --progress-bar off -c "$WORK/constraints.txt" \
       "${TODO[@]}" >"$LOG" 2>&1; then
    echo "Colab: pip could not install it without changing what Colab ships (full log: $LOG):"
    grep -E "^(ERROR|    |The conflict|  [A-Za-z])" "$LOG" | grep -v "^  Downloading\|^  Using cached" | head -8
    exit 1
  fi
  "$PY" - "$WORK" <<'PY'
import importlib.metadata as md, re, subprocess, sys
from pathlib import Path

work = Path(sys.argv[1])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
before = {norm(l.split("==")[0]): tuple(l.split("==", 1)) for l in (work / "before.txt").read_text().split()}
after = {}
for d in md.distributions():
    if d.metadata["Name"] and norm(d.metadata["Name"]) not in after:
        after[norm(d.metadata["Name"])] = (d.metadata["Name"], d.version)
changed = [f"{after[k][0]} {before[k][1] if k in before else '(new)'} -> {after[k][1]}"
           for k in sorted(after) if k not in before or before[k][1] != after[k][1]]
changed += [f"{before[k][0]} {before[k][1]} -> (removed)" for k in sorted(before.keys() - after.keys())]
print("Colab: installed " + ("; ".join(changed) if changed else "nothing new (already there)"))
touched = {k for k in after if k not in before or before[k][1] != after[k][1]} | (before.keys() - after.keys())
check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout.splitlines()
# pip check lists every broken requirement in the runtime, Colab's own included: show those that concern
# what was installed here.
mine = [l for l in check if touched & {norm(w) for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", l)}]
print("Colab: pip check: " + ("; ".join(mine) if mine else "no conflict in what was installed"))
PY
  exit 0
fi

# --- elsewhere: torch first (never replace one), then the project with its extras ---
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed: keeping it."
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing a CUDA build of torch."
  "${PIP[@]}" "torch>=2.4,<=2.14.1"
elif "$PY" -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/torch/', timeout=5)" \
     >/dev/null 2>&1; then
  echo "No GPU: installing a CPU build of torch."
  "${PIP[@]}" "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
else
  # Asked anyway, pip retries the unreachable index five times for torch and for each of its dependencies.
  echo "No GPU, and PyTorch's CPU index is unreachable: installing torch==2.13.0 from the configured indexes."
  "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -r requirements.txt
echo "Musclebob is ready: python train_musclebob_improved.py --model tiny"
