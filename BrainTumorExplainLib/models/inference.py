"""Running a 2D network over a case volume, axial slice by slice, in batches."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ..data.case import Case
from ..data.nnunet_resampling import NnUNetGrid
from ..data.resample import warn_if_off_space
from ..progress import progress_bar
from .base import NUM_CLASSES, SegmentationNet, evaluating, model_device
from .description import labels_from_outputs
from .nnunet import background_logits
from .space import training_spacing
from .volume import DescribedNetwork, activate, predict_logits, predict_outputs


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


def case_probabilities(model, case: Case, batch_size: int = 16, device: str | torch.device | None = None,
                       progress: bool = False) -> np.ndarray:
    """What the network says per voxel, ``(channels, Z, Y, X)`` float32 on the case's canonical grid: softmax class
    probabilities of the paper's 2D networks; a described network's own outputs (classes or regions)."""
    if isinstance(model, DescribedNetwork):
        return predict_outputs(model, case, device, progress)
    with evaluating(model):
        return predict_probabilities(model, case, batch_size, device, progress)


def labels_from_probabilities(model, probabilities: np.ndarray) -> np.ndarray:
    """Class indices ``(Z, Y, X)`` uint8 from :func:`case_probabilities` (regions become labels as nnU-Net does)."""
    if isinstance(model, DescribedNetwork):
        return labels_from_outputs(probabilities, model.description)
    return probabilities.argmax(axis=0).astype(np.uint8)


def segment_case(model, case: Case, batch_size: int = 16, device: str | torch.device | None = None,
                 progress: bool = False) -> np.ndarray:
    """Class indices ``(Z, Y, X)`` uint8 (0 background, 1 NCR/NET, 2 ED, 3 ET) on the case's canonical grid.

    Write them onto the case's own grid with ``case.write_labels(labels, path)``. A described 3D network (a bundle)
    runs over the volume in its own windows (:func:`models.volume.predict_outputs`). A case outside the network's
    training space is segmented as it is, with a warning: :func:`models.space.into_network_space` brings it there,
    and :func:`segment_input` gives the labels on the input's own grid.
    """
    warn_if_off_space(case, training_spacing(model), model.architecture)
    return labels_from_probabilities(model, case_probabilities(model, case, batch_size, device, progress))


def network_outputs(model, case: Case, device: str | torch.device | None = None, progress: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """What the network says on the grid it saw: its probabilities (:func:`case_probabilities`), and, for a case
    resized by nnU-Net's rules, the logits nnU-Net's export resizes back before the activation (else None)."""
    if isinstance(case.grid, NnUNetGrid):
        logits = predict_logits(model, case, device, progress)
        return activate(torch.from_numpy(logits)[None], model.description)[0].numpy(), logits
    return case_probabilities(model, case, device=device, progress=progress), None


def segment_input(model, case: Case, device: str | torch.device | None = None, progress: bool = False,
                  outputs: tuple[np.ndarray, np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels on the grid the network saw, and on the case's input grid (canonical order; the same array when the
    case was not resampled), from ``outputs`` (:func:`network_outputs`, computed when not given). A case resampled
    into the network's space is labelled on its input grid from the network's probabilities mapped back linearly —
    a little closer to the truth than carrying the labels back by nearest neighbour (docs/analyses.md, "Scans off
    the network's grid"); one resized by nnU-Net's rules from its logits, as nnU-Net's export does."""
    probabilities, logits = outputs or network_outputs(model, case, device, progress)
    labels = labels_from_probabilities(model, probabilities)
    if case.original is None:
        return labels, labels
    if logits is not None:

        back = np.stack([case.grid.to_reference(channel, float(outside)) for channel, outside in
                         zip(logits, background_logits(model.description))])
        return labels, labels_from_probabilities(model, activate(torch.from_numpy(back)[None], model.description)[0]
                                                 .numpy())
    back = np.stack([case.grid.to_reference(channel) for channel in probabilities])
    return labels, labels_from_probabilities(model, back)
