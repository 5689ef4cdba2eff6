#!/usr/bin/env bash
# README command 1: set up .venv and run the main job on shipped defaults.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup-venv.sh"
cd "$root"
exec .venv/bin/python -m BrainTumorExplainLib demo --out "${1:-demo-output}"
