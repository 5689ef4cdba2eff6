"""Evaluate trained weights on held-out phantoms and ship them: BrainTumorExplainLib/weights/<model>.{pt,json}.

Called by scripts/train_shipped_models.sh; the manifest records everything needed to reproduce and trust the file.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from shipped_manifest import heldout_record, manifest

from BrainTumorExplainLib.models import load_weights
from BrainTumorExplainLib.models.registry import WEIGHTS_DIR, sha256_of

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", required=True)
parser.add_argument("--weights", required=True, type=Path)
parser.add_argument("--heldout", required=True, type=Path)
parser.add_argument("--train-seconds", type=int, required=True)
parser.add_argument("--device", default="cpu")
parser.add_argument("--command", required=True)
args = parser.parse_args()

model = load_weights(args.weights, architecture=args.model, device=args.device)
payload = torch.load(args.weights, map_location="cpu", weights_only=True)
heldout = heldout_record(args.model, model, args.heldout, args.device)
WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
target = WEIGHTS_DIR / f"{args.model}.pt"
shutil.copyfile(args.weights, target)
record = manifest(args.model, sum(p.numel() for p in model.parameters()), payload["metadata"], heldout, args,
                  weights=target.name, sha256=sha256_of(target), architecture=payload["architecture"],
                  config=payload["config"])
(WEIGHTS_DIR / f"{args.model}.json").write_text(json.dumps(record, indent=2) + "\n")
print(f"shipped {target} ({target.stat().st_size / 1e6:.1f} MB); held-out mean Dice " +
      ", ".join(f"{k} {v['dice']:.3f}" for k, v in heldout["mean"].items()))
