#!/usr/bin/env bash
# Create or update the project-local virtual environment .venv (idempotent; fast when nothing changed).
# torch is pinned to the CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml scripts/setup-venv.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[phantom,test]"
    .venv/bin/python -m pip check
    rm -f .venv/.installed-*
    touch "$stamp"
fi
