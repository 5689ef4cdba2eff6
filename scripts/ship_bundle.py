"""Evaluate a trained bundle on held-out phantoms and ship it: BrainTumorExplainLib/weights/<name>/ (its configs and
weights) and <name>.json (the manifest: the sha256 of every file, training and held-out scores).

Called by scripts/train_shipped_models.sh for segresnet3d.
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
from BrainTumorExplainLib.models.bundle import load_bundle
from BrainTumorExplainLib.models.registry import WEIGHTS_DIR, bundle_files
from BrainTumorExplainLib.models.volume import DescribedNetwork
from BrainTumorExplainLib.scoring.evaluation import evaluate_model, evaluation_as_dict

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--name", required=True)
parser.add_argument("--bundle", required=True, type=Path, help="the folder train-bundle wrote")
parser.add_argument("--heldout", required=True, type=Path)
parser.add_argument("--train-seconds", type=int, required=True)
parser.add_argument("--device", default="cpu")
parser.add_argument("--command", required=True)
args = parser.parse_args()

network = DescribedNetwork(*load_bundle(args.bundle, args.device))
training = json.loads((args.bundle / "configs" / "training.json").read_text())
started = time.perf_counter()
results = evaluate_model(network, find_cases(args.heldout), device=args.device, progress=True)
evaluation = evaluation_as_dict(args.name, results)
target = WEIGHTS_DIR / args.name
shutil.rmtree(target, ignore_errors=True)
for part in ("configs", "models"):  # the bundle itself, without the training run's result marker
    shutil.copytree(args.bundle / part, target / part)
device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
               else f"CPU ({platform.processor() or platform.machine()})")
manifest = {
    "model": args.name,
    "bundle": target.name,
    "files": bundle_files(target),
    "library_version": __version__,
    "torch_version": torch.__version__,
    "architecture": "monai.networks.nets.SegResNet",
    "parameters": sum(p.numel() for p in network.module.parameters()),
    "training": {
        "command": args.command,
        "config": training["training"],
        "data": "phantoms, python -m BrainTumorExplainLib phantom --out train --cases 24 --seed 0",
        "training_cases": training["training_cases"],
        "validation_cases": training["validation_cases"],
        "history": training["history"],
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
(WEIGHTS_DIR / f"{args.name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
size = sum((target / f).stat().st_size for f in manifest["files"]) / 1e6
print(f"shipped {target} ({size:.1f} MB); held-out mean Dice " +
      ", ".join(f"{k} {v['dice']:.3f}" for k, v in evaluation["mean"].items()))
