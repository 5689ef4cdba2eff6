"""Running a 2D network over a case volume, axial slice by slice, in batches."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ..data.case import Case
from ..progress import progress_bar
from .base import NUM_CLASSES, SegmentationNet, evaluating, model_device


def slice_batches(case: Case, slices: Sequence[int] | np.ndarray, batch_size: int, device: torch.device,
                  progress: str | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Consecutive batches of the given axial slices: ``(slice indices, images (N, 4, H, W) on device)``, the way
    every analysis feeds a volume to a 2D network. ``progress``: a tqdm label, or None for no bar."""
    slices = np.asarray(slices, dtype=int)
    for start in progress_bar(range(0, len(slices), batch_size), progress, unit="batch"):
        chosen = slices[start:start + batch_size]
        yield chosen, torch.from_numpy(np.ascontiguousarray(case.images[:, chosen].transpose(1, 0, 2, 3))).to(device)


@torch.no_grad()
def predict_probabilities(model: SegmentationNet, case: Case, batch_size: int = 16,
                          device: str | torch.device | None = None, progress: bool = False) -> np.ndarray:
    """Softmax probabilities ``(4, Z, Y, X)`` float32 on the case's canonical grid.

    Slices without brain are background with probability 1; so is every voxel outside the brain mask (the
    inputs are skull-stripped, and the network was never asked about the outside).
    """
    device = model_device(model, device)
    probabilities = np.zeros((NUM_CLASSES,) + case.brain_mask.shape, dtype=np.float32)
    probabilities[0] = 1.0
    label = f"segment {case.case_id}" if progress else None
    for chosen, batch in slice_batches(case, case.brain_slices(), batch_size, device, label):
        probabilities[:, chosen] = model.predict(batch).float().cpu().numpy().transpose(1, 0, 2, 3)
    probabilities[:, ~case.brain_mask] = 0.0
    probabilities[0, ~case.brain_mask] = 1.0
    return probabilities


def segment_case(model: SegmentationNet, case: Case, batch_size: int = 16, device: str | torch.device | None = None,
                 progress: bool = False) -> np.ndarray:
    """Class indices ``(Z, Y, X)`` uint8 (0 background, 1 NCR/NET, 2 ED, 3 ET) on the case's canonical grid.

    Write them onto the case's own grid with ``case.write_labels(labels, path)``. A described 3D network (a bundle)
    runs over the volume in its own windows (:func:`models.volume.segment_volume`).
    """
    from .volume import DescribedNetwork, segment_volume

    if isinstance(model, DescribedNetwork):
        return segment_volume(model, case, device, progress)
    with evaluating(model):
        probabilities = predict_probabilities(model, case, batch_size, device, progress)
    return probabilities.argmax(axis=0).astype(np.uint8)
