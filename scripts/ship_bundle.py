"""Evaluate a trained bundle on held-out phantoms and ship it: BrainTumorExplainLib/weights/<name>/ (its configs and
weights) and <name>.json (the manifest: the sha256 of every file, training and held-out scores).

Called by scripts/train_shipped_models.sh for segresnet3d.
"""

import argparse
import json
import shutil
from pathlib import Path

from shipped_manifest import heldout_record, manifest

from BrainTumorExplainLib.models.bundle import load_bundle
from BrainTumorExplainLib.models.registry import WEIGHTS_DIR, bundle_files
from BrainTumorExplainLib.models.volume import DescribedNetwork

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
heldout = heldout_record(args.name, network, args.heldout, args.device)
target = WEIGHTS_DIR / args.name
shutil.rmtree(target, ignore_errors=True)
for part in ("configs", "models"):  # the bundle itself, without the training run's result marker
    shutil.copytree(args.bundle / part, target / part)
record = manifest(args.name, sum(p.numel() for p in network.module.parameters()), training, heldout, args,
                  bundle=target.name, files=bundle_files(target), architecture="monai.networks.nets.SegResNet")
(WEIGHTS_DIR / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
size = sum((target / f).stat().st_size for f in record["files"]) / 1e6
print(f"shipped {target} ({size:.1f} MB); held-out mean Dice " +
      ", ".join(f"{k} {v['dice']:.3f}" for k, v in heldout["mean"].items()))
