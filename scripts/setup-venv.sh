#!/usr/bin/env bash
# Create or update the project-local virtual environment .venv (idempotent; fast when nothing changed).
# torch is pinned to the CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version > /dev/null 2>&1; then
    "$python" -m venv --clear .venv  # new, or left half made by an interrupted set-up (no pip): made again
fi
stamp=".venv/.installed-$(cat pyproject.toml scripts/setup-venv.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[phantom,test]"
    # nnU-Net's own predictor, the peer the nnU-Net tests compare with, and its networks' package: --no-deps, as
    # dynamic-network-architectures asks for timm (only its Primus/Eva networks use it), whose torchvision would
    # replace the CPU torch with a CUDA build; pip check then knows timm is missing, and nothing else may be
    .venv/bin/python -m pip install --quiet --no-deps "nnunetv2==2.8.1" "dynamic-network-architectures==0.4.4"
    problems="$(.venv/bin/python -m pip check | grep -v "^dynamic-network-architectures .* requires timm" || true)"
    if [ -n "$problems" ]; then
        echo "$problems" >&2
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
fi
