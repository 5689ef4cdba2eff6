"""How much the random-weights control moves with its seed: each concept's best IoU over every layer of the
architecture re-initialised from each seed (the dissection's own streamed passes, no trained network), beside the
shipped dissection's seed 0.

    python scripts/control_seeds.py resunet --data HELDOUT [--seeds 1,2] [--slice-step 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from BrainTumorExplainLib.analyses.controls import RANDOM_WEIGHTS, random_weights
from BrainTumorExplainLib.analyses.dissection import dissect, load_shipped_dissection
from BrainTumorExplainLib.data.case import find_cases
from BrainTumorExplainLib.models import load_pretrained

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model")
parser.add_argument("--data", required=True, type=Path)
parser.add_argument("--seeds", default="1,2")
parser.add_argument("--slice-step", type=int, default=4)
args = parser.parse_args()

model = load_pretrained(args.model)
shipped = load_shipped_dissection(model)
best = {0: {c: row["iou"] for c, row in shipped.controls[RANDOM_WEIGHTS].best_filters().items()}}
for seed in (int(s) for s in args.seeds.split(",")):
    control = dissect(random_weights(model, seed), find_cases(args.data), concepts=shipped.concepts,
                      slice_step=args.slice_step, controls=False, progress=True)
    best[seed] = {c: row["iou"] for c, row in control.best_filters().items()}
trained = {c: row["iou"] for c, row in shipped.best_filters().items()}
print("| concept | trained | " + " | ".join(f"random, seed {s}" for s in best) + " | spread (max − min) |")
print("|---|---:|" + "---:|" * len(best) + "---:|")
for concept in shipped.concepts:
    values = [best[s][concept] for s in best]
    print(f"| {concept} | {trained[concept]:.2f} | " + " | ".join(f"{v:.2f}" for v in values)
          + f" | {np.ptp(values):.2f} |")
