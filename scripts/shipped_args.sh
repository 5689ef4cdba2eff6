# Sourced by the scripts that reproduce shipped files (`source scripts/shipped_args.sh "$@"`): parses
# [WORKDIR] [DEVICE] [MODELS...], goes to the repository root, and writes the held-out phantoms (seeds 1000-1009)
# into WORKDIR/heldout when they are missing.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$root/out/training}"
device="${2:-cpu}"
shift $(( $# > 2 ? 2 : $# )) || true
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(denseunet resunet simunet)
python="$root/.venv/bin/python"
cd "$root"
[ -d "$work/heldout/Phantom_01009" ] || "$python" -m BrainTumorExplainLib phantom --out "$work/heldout" --cases 10 --seed 1000
