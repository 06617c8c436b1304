#!/usr/bin/env bash
# Create the project's virtual environment and install aigc-ray with its test extras.
# Idempotent: `make` re-runs it only when pyproject.toml changes. Needs only python3 >= 3.10.
#
# torch goes in first so nothing else pulls a second copy: on a machine with an NVIDIA GPU the
# default (CUDA) build of torch==2.13.0; without one, the CPU build (from a local wheel folder
# when present, else PyTorch's CPU index) — plain `torch` would pull a multi-GB CUDA build.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# Hides a harmless pip warning about this machine's local index folders; keeps pip's exit status.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
    echo "torch $TORCH_VERSION already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "GPU found: installing torch==$TORCH_VERSION (CUDA build)"
    quiet "${PIP[@]}" "torch==$TORCH_VERSION"
elif ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
    echo "no GPU: installing torch==$TORCH_VERSION (CPU build, local wheel)"
    quiet "${PIP[@]}" --find-links /opt/wheels "torch==$TORCH_VERSION+cpu"
else
    echo "no GPU: installing torch==$TORCH_VERSION (CPU build)"
    quiet "${PIP[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==$TORCH_VERSION+cpu"
fi

echo "installing aigc-ray and its test extras"
quiet "${PIP[@]}" -e ".[test]"
# The tests check our PGD against torchattacks' (an independent implementation); its declared
# dependencies would pull other torch and numpy versions, so it goes in without them.
quiet "${PIP[@]}" --no-deps "torchattacks==3.5.1"
"$VENV/bin/python" -c "import aigc_ray, ray, torch, deepspeed, transformers" >/dev/null 2>&1 \
    || { echo "error: the installed environment does not import; see the pip output above" >&2; exit 1; }
echo "environment ready: $VENV"
