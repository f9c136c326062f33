#!/usr/bin/env bash
# Install everything lightning_tricks needs on a fresh machine: the Fashion-MNIST files (Debian's
# dataset-fashion-mnist, when we can use apt) and a virtual environment in .venv with the package and its dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz ] && [ -z "${LIGHTNING_TRICKS_DATA:-}" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
    else
        echo "Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist', or set" \
             "LIGHTNING_TRICKS_DATA to a folder with the four IDX files; online, torchvision downloads them." >&2
    fi
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch / torchvision come from the ranges in pyproject.toml: pip picks the newest build it may use for the platform.
.venv/bin/python -m pip install -q -e ".[dev]"
