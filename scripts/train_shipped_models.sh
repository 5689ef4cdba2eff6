#!/usr/bin/env bash
# Reproduce the shipped demo weights: phantoms from recorded seeds, then train, evaluate on held-out phantoms and write
# BrainTumorExplainLib/weights/<model>.{pt,json}. Usage: bash scripts/train_shipped_models.sh [WORKDIR] [DEVICE] [MODELS...]
# EPOCHS (default 10, 100 steps each) sets the training length. ACQUISITIONS (default 0) adds that many clinical
# acquisitions of each training case (train --acquisitions, issue 35; kept in WORKDIR/acquisitions for the next
# network), UPRIGHT_SHARE (default: none) the share of each batch drawn from the cases as read (train --upright-share).
# The shipped 2D weights: simunet with the defaults, resunet and denseunet with ACQUISITIONS=2 EPOCHS=20
# (each manifest's training.command says so). segresnet3d is
# the shipped 3D network, a MONAI bundle (train-bundle with its own defaults; EPOCHS does not apply to it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/shipped_args.sh" "$@"
# Seeds: training 0-23 (the last two, 22 and 23, are the per-epoch validation cases); held out 1000-1009.
[ -d "$work/train/Phantom_00023" ] || "$python" -m BrainTumorExplainLib phantom --out "$work/train" --cases 24 --seed 0
for model in "${models[@]}"; do
    if [ "$model" = segresnet3d ]; then
        command=(-m BrainTumorExplainLib train-bundle --data "$work/train" --out "$work/$model" --name "$model"
                 --validation 2 --seed 0 --device "$device" --overwrite)
        ship=(scripts/ship_bundle.py --name "$model" --bundle "$work/$model")
    else
        command=(-m BrainTumorExplainLib train --data "$work/train" --model "$model" --out "$work/$model.pt"
                 --width 0.25 --epochs "${EPOCHS:-10}" --acquisitions "${ACQUISITIONS:-0}" ${UPRIGHT_SHARE:+--upright-share "$UPRIGHT_SHARE"}
                 --acquisition-cache "$work/acquisitions" --steps 100 --batch-size 8 --lr 0.002 --validation 2 --seed 0 --device "$device" --overwrite)
        ship=(scripts/ship_weights.py --model "$model" --weights "$work/$model.pt")
    fi
    start=$(date +%s)
    "$python" "${command[@]}"
    seconds=$(( $(date +%s) - start ))
    "$python" "${ship[@]}" --heldout "$work/heldout" --train-seconds "$seconds" --device "$device" \
        --command "python ${command[*]}"
done
