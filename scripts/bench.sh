#!/usr/bin/env bash
# The benchmarks behind BENCHMARKS.md, with the flags used there.
#   bash scripts/bench.sh cpu OUT [CASE]    restricted (8 slices, fewer volumes) so it ends in about 20 min on 2 cores
#   bash scripts/bench.sh cuda OUT [CASE]   full volume, T=100, shipped ResUnet and an untrained paper-width one
# CASE: a case folder or saved case (.npz, Case.save); default the shipped sample. PYTHON picks the interpreter.
# Each run writes OUT/<device>_<model>.json (every number) and .md (the BENCHMARKS.md section).
set -euo pipefail
device=${1:?cpu or cuda}
out=${2:?output folder}
python=${PYTHON:-python3}
case_args=()
if [ -n "${3:-}" ]; then case_args=(--case "$3"); fi
bench() { "$python" -m BrainTumorExplainLib bench "${case_args[@]}" --device "$device" --overwrite "$@"; }

if [ "$device" = cpu ]; then
  bench --slices 8 --precision both --gradcam-slices 8 --dissection-volumes 4,16,48 --dissection-step 32 \
        ${EXPLAIN_RUN:+--explain-run "$EXPLAIN_RUN"} --json "$out/cpu_resunet.json" --markdown "$out/cpu_resunet.md"
else
  bench --width 1.0 --only ttd,gradcam,segmentation --precision both --slices-per-batch 8 --passes-per-forward 25 \
        --gradcam-slices 16 --json "$out/cuda_resunet_paper_width.json" --markdown "$out/cuda_resunet_paper_width.md"
  bench --only ttd,gradcam,segmentation,featviz --precision both --slices-per-batch 8 --passes-per-forward 25 \
        --gradcam-slices 16 --json "$out/cuda_resunet.json" --markdown "$out/cuda_resunet.md"
fi
