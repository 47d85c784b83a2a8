#!/usr/bin/env bash
# Install what Musclebob needs.
#   On Colab: only what Colab lacks; Colab's own torch (built for its GPU) is never replaced.
#   Elsewhere: requirements.txt, with a CPU build of torch when there is no NVIDIA GPU
#   (plain `pip install torch` would pull a multi-GB CUDA build).
# Usage: bash colab_setup.sh        (from the repository root, in the Python environment you will use)
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

if "$PY" -c "import google.colab" 2>/dev/null; then
  echo "Colab detected: installing what Colab lacks (keeping its torch $("$PY" -c 'import torch; print(torch.__version__)'))."
  grep -v '^torch' requirements.txt > /tmp/musclebob-requirements-colab.txt
  "${PIP[@]}" -r /tmp/musclebob-requirements-colab.txt
  exit 0
fi

if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed: keeping it."
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing a CUDA build of torch."
  "${PIP[@]}" "torch>=2.4,<=2.14.1"
else
  echo "No GPU: installing a CPU build of torch."
  "${PIP[@]}" "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" -r requirements.txt
echo "Musclebob is ready: python train_musclebob_improved.py --model tiny"
