#!/usr/bin/env bash
# Reproduce the analysis files shipped beside the weights, from the held-out phantoms (seeds 1000-1009):
# the style template of feature visualisation (BrainTumorExplainLib/weights/template.npz) and, per model, the
# dissection (thresholds + concept IoUs, with its random-weights and raw-input controls; every 4th brain slice; whole
# volumes for the 3D segresnet3d, which takes no slice step) in BrainTumorExplainLib/weights/<model>.dissection.json,
# where explain and the Slicer module find them.
# Usage: bash scripts/ship_analysis_files.sh [WORKDIR] [DEVICE] [MODELS...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/shipped_args.sh" "$@"
"$python" -m BrainTumorExplainLib template --data "$work/heldout" --out BrainTumorExplainLib/weights/template.npz --overwrite
for model in "${models[@]}"; do
    "$python" -m BrainTumorExplainLib dissect --data "$work/heldout" --model "$model" --slice-step 4 --mask-cases 1 \
        --device "$device" --out "$work/dissection/$model" --overwrite
    cp "$work/dissection/$model/dissection.json" "BrainTumorExplainLib/weights/$model.dissection.json"
done
