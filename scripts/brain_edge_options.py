"""The brain's edge of a skull-stripped scan interpolated after stripping: three ways of handling its partial-volume
rim, measured by the shipped DenseUnet's Dice on held-out phantoms re-gridded without stripping again (docs/analyses.md
"Clinical acquisitions"): none (the mask as read), cut (data.brain_edge: the voxels holding less than half brain
taken out of the mask — what preprocessing does), erode (one voxel layer taken off the whole mask), re-sharpen (cut,
and the kept edge voxels divided by their estimated share, as data.resample.resample_sequences divides by the
resampled mask).

    python scripts/brain_edge_options.py HELDOUT/Phantom_01000 HELDOUT/Phantom_01002
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from BrainTumorExplainLib.data.acquisition import Acquisition, reacquire
from BrainTumorExplainLib.data.brain_edge import BAND_LAYERS, HALF, brain_share, check_brain_edge
from BrainTumorExplainLib.data.case import load_case, zscored_sequences
from BrainTumorExplainLib.data.preprocess import with_brain_mask
from BrainTumorExplainLib.data.resample import raw_sequences
from BrainTumorExplainLib.models.inference import segment_input
from BrainTumorExplainLib.models.registry import load_pretrained
from BrainTumorExplainLib.models.space import into_network_space
from BrainTumorExplainLib.scoring.metrics import score_segmentation

ACQUISITIONS = {
    "upright (as shipped)": None,
    "1.2×0.9×2 mm, flipped L-R": Acquisition(spacing_mm=(1.2, 0.9, 2.0), flips=(True, False, False), stripped=False),
    "1 mm, 15° in-plane": Acquisition(tilt_degrees=(0.0, 0.0, 15.0), stripped=False),
    "0.9×0.9×5 mm, 10° tilt": Acquisition(spacing_mm=(0.9, 0.9, 5.0), tilt_degrees=(10.0, 0.0, 0.0), stripped=False),
}
OPTIONS = ("none", "cut", "erode", "re-sharpen")


def handled(case, option: str):
    if option == "none":
        return case
    if option == "erode":
        return with_brain_mask(case, ndimage.binary_erosion(case.brain_mask))
    raw = raw_sequences(case)
    _, kept = check_brain_edge(raw, case.brain_mask, case.spacing)
    if option == "cut":
        return with_brain_mask(case, kept)
    share, _ = brain_share(raw, case.brain_mask, case.spacing)
    band = case.brain_mask & ~ndimage.binary_erosion(case.brain_mask, iterations=BAND_LAYERS)
    divisor = np.where(band & kept, np.clip(share, HALF, 1.0), 1.0)
    images, stats = zscored_sequences(np.where(kept, raw / divisor, 0).astype(np.float32), kept)
    return dataclasses.replace(case, images=images, brain_mask=kept, intensity_stats=stats, nonzero=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", type=Path)
    args = parser.parse_args()
    network = load_pretrained("denseunet")
    print("| case | acquisition | " + " | ".join(OPTIONS) + " |\n|---|---|" + "---:|" * len(OPTIONS))
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for folder in args.cases:
            for index, (name, acquisition) in enumerate(ACQUISITIONS.items()):
                source = folder if acquisition is None else reacquire(folder, Path(scratch) / f"{folder.name}{index}",
                                                                      acquisition)
                truth = load_case(source)
                scores = []
                for option in OPTIONS:
                    labels = segment_input(network, into_network_space(handled(truth, option), network),
                                           torch.device("cpu"))[1]
                    scored = score_segmentation(labels, truth.labels, truth.spacing, lesion_rule=None)
                    scores.append(f"{scored['WT'].values['dice']:.3f}")
                print(f"| {folder.name} | {name} | " + " | ".join(scores) + " |", flush=True)


if __name__ == "__main__":
    main()
