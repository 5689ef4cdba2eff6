"""Evaluate trained weights on held-out phantoms and ship them: BrainTumorExplainLib/weights/<model>.{pt,json}.

Called by scripts/train_shipped_models.sh; the manifest records everything needed to reproduce and trust the file.
"""

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from BrainTumorExplainLib import __version__
from BrainTumorExplainLib.data.case import find_cases
from BrainTumorExplainLib.models import load_weights
from BrainTumorExplainLib.models.registry import WEIGHTS_DIR, sha256_of
from BrainTumorExplainLib.scoring.evaluation import evaluate_model, evaluation_as_dict

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
started = time.perf_counter()
results = evaluate_model(model, find_cases(args.heldout), device=args.device, progress=True)
evaluation = evaluation_as_dict(args.model, results)
WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
target = WEIGHTS_DIR / f"{args.model}.pt"
shutil.copyfile(args.weights, target)
device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()})"
manifest = {
    "model": args.model,
    "weights": target.name,
    "sha256": sha256_of(target),
    "library_version": __version__,
    "torch_version": torch.__version__,
    "architecture": payload["architecture"],
    "config": payload["config"],
    "parameters": sum(p.numel() for p in model.parameters()),
    "training": {
        "command": args.command,
        "config": payload["metadata"]["training"],
        "data": "phantoms, python -m BrainTumorExplainLib phantom --out train --cases 24 --seed 0",
        "training_cases": payload["metadata"]["training_cases"],
        "validation_cases": payload["metadata"]["validation_cases"],
        "history": payload["metadata"]["history"],
        "seconds": args.train_seconds,
        "device": device_name,
    },
    "heldout": {
        "data": "phantoms, python -m BrainTumorExplainLib phantom --out heldout --cases 10 --seed 1000",
        "mean": evaluation["mean"],
        "cases": evaluation["cases"],
        "seconds": round(time.perf_counter() - started, 1),
    },
    "caveat": "Demonstration weights trained on synthetic phantoms, not on BraTS; not for clinical use.",
}
(WEIGHTS_DIR / f"{args.model}.json").write_text(json.dumps(manifest, indent=2) + "\n")
print(f"shipped {target} ({target.stat().st_size / 1e6:.1f} MB); held-out mean Dice " +
      ", ".join(f"{k} {v['dice']:.3f}" for k, v in evaluation["mean"].items()))
