"""Evaluate trained weights on held-out phantoms and ship them: BrainTumorExplainLib/weights/<model>.{pt,json}.

Called by scripts/train_shipped_models.sh; the manifest records everything needed to reproduce and trust the file.
The file is stored in half precision (save_weights(half=True)); the labels of the float32 and the shipped network
are compared on every held-out voxel, the count is recorded in the manifest (``storage``), and the weights are not
shipped when more than MAX_CHANGED_FRACTION of the brain's voxels change.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from shipped_manifest import heldout_record, manifest

from BrainTumorExplainLib.data.case import find_cases, load_case
from BrainTumorExplainLib.data.domain import intensity_reference_from
from BrainTumorExplainLib.models import load_weights, save_weights
from BrainTumorExplainLib.models.inference import segment_case
from BrainTumorExplainLib.models.registry import WEIGHTS_DIR, sha256_of

MAX_CHANGED_FRACTION = 1e-4

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", required=True)
parser.add_argument("--weights", required=True, type=Path)
parser.add_argument("--heldout", required=True, type=Path)
parser.add_argument("--train-seconds", type=int, required=True)
parser.add_argument("--device", default="cpu")
parser.add_argument("--command", required=True)
parser.add_argument("--train-data", type=Path, help="the training cases (default: train/ beside --weights); read only "
                    "when the weights file predates the intensity reference train now keeps")
args = parser.parse_args()


def labels_changed(full, half, heldout: Path, device: str) -> dict:
    """Voxels whose label differs between the float32 network and its half-precision copy over the held-out cases,
    beside their brain voxels (the share is of the brain: the background, labelled 0 by both, would dilute it)."""
    changed = total = 0
    for path in find_cases(heldout):
        case = load_case(path)
        changed += int(np.count_nonzero(segment_case(full, case, device=device) != segment_case(half, case,
                                                                                              device=device)))
        total += int(case.brain_mask.sum())
    return {"precision": "float16", "heldout_brain_voxels": total, "labels_changed": changed}


full = load_weights(args.weights, architecture=args.model, device=args.device)
payload = torch.load(args.weights, map_location="cpu", weights_only=True)
if "intensity_reference" not in payload["metadata"]:
    train_data = args.train_data or args.weights.parent / "train"
    payload["metadata"]["intensity_reference"] = intensity_reference_from(
        load_case(train_data / case_id) for case_id in payload["metadata"]["training_cases"] if "~" not in case_id)
target = WEIGHTS_DIR / f"{args.model}.pt"
with tempfile.TemporaryDirectory() as scratch:
    candidate = Path(scratch) / target.name
    save_weights(full, candidate, half=True, **payload["metadata"])
    shipped = load_weights(candidate, architecture=args.model, device=args.device)
    storage = labels_changed(full, shipped, args.heldout, args.device)
    if storage["labels_changed"] > MAX_CHANGED_FRACTION * storage["heldout_brain_voxels"]:
        print(f"error: {args.weights}: half precision changes {storage['labels_changed']} of "
              f"{storage['heldout_brain_voxels']} held-out brain voxels (more than {MAX_CHANGED_FRACTION:g}); not shipped",
              file=sys.stderr)
        sys.exit(2)
    heldout = heldout_record(args.model, shipped, args.heldout, args.device)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.move(candidate, target)  # /tmp may be another file system
record = manifest(args.model, sum(p.numel() for p in shipped.parameters()), payload["metadata"], heldout, args,
                  weights=target.name, sha256=sha256_of(target), architecture=payload["architecture"],
                  config=payload["config"], storage=storage)
(WEIGHTS_DIR / f"{args.model}.json").write_text(json.dumps(record, indent=2) + "\n")
print(f"shipped {target} ({target.stat().st_size / 1e6:.1f} MB, float16: {storage['labels_changed']} of "
      f"{storage['heldout_brain_voxels']} held-out brain voxels changed); held-out mean Dice " +
      ", ".join(f"{k} {v['dice']:.3f}" for k, v in heldout["mean"].items()))
