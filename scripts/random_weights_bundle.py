"""The control of a dissection: a copy of a bundle folder whose network has seeded random weights (its own
initialisation) instead of the trained ones, named ``<name>_random``.

    python scripts/random_weights_bundle.py BrainTumorExplainLib/weights/segresnet3d OUT [--seed 0]
"""

import argparse
import json
import shutil
from pathlib import Path

import torch

from BrainTumorExplainLib.models.bundle import read_bundle

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("bundle", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

shutil.copytree(args.bundle, args.out)
metadata_path = args.out / "configs" / "metadata.json"
metadata = json.loads(metadata_path.read_text())
metadata["name"] = f"{metadata.get('name') or args.bundle.name}_random"
metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
torch.manual_seed(args.seed)
module, _ = read_bundle(args.out)
torch.save(module.state_dict(), args.out / "models" / "model.pt")
print(f"wrote {args.out}: {metadata['name']}, random weights (seed {args.seed})")
