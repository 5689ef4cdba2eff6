"""The parts of a shipped network's manifest that ship_weights.py and ship_bundle.py share: how it was trained and
how it scored on the held-out phantoms (imported by both; run neither)."""

import platform
import time

import torch

from BrainTumorExplainLib import __version__
from BrainTumorExplainLib.data.case import find_cases
from BrainTumorExplainLib.scoring.evaluation import evaluate_model, evaluation_as_dict

TRAINING_DATA = "phantoms, python -m BrainTumorExplainLib phantom --out train --cases 24 --seed 0"
HELDOUT_DATA = "phantoms, python -m BrainTumorExplainLib phantom --out heldout --cases 10 --seed 1000"
CAVEAT = "Demonstration weights trained on synthetic phantoms, not on BraTS; not for clinical use."


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()})"


def heldout_record(name: str, model, heldout, device: str) -> dict:
    """Evaluate ``model`` on the held-out cases: the manifest's ``heldout`` entry."""
    started = time.perf_counter()
    evaluation = evaluation_as_dict(name, evaluate_model(model, find_cases(heldout), device=device, progress=True))
    return {"data": HELDOUT_DATA, "mean": evaluation["mean"], "cases": evaluation["cases"],
            "seconds": round(time.perf_counter() - started, 1)}


def manifest(name: str, parameters: int, training: dict, heldout: dict, args, **specific) -> dict:
    """The whole manifest: ``specific`` (the weights file or bundle files, the architecture) and the shared parts."""
    return {
        "model": name, **specific, "library_version": __version__, "torch_version": torch.__version__,
        "parameters": parameters,
        "training": {"command": args.command, "config": training["training"], "data": TRAINING_DATA,
                     "training_cases": training["training_cases"], "validation_cases": training["validation_cases"],
                     "history": training["history"], "seconds": args.train_seconds, "device": device_name(args.device)},
        "heldout": heldout, "caveat": CAVEAT,
    }
