"""Filter ablation: does what a filter detects matter to the segmentation? (the causal check beside the dissection's
correlational one; BioExp, the paper authors' library, has it.)

Each chosen filter's output channel is set to zero (a forward hook on its layer, for every kind of network through
:mod:`models.interface`), the case is segmented again, and each region's Dice is compared with the intact network's:
against the ground truth when the case has it (``dice_change``: ablated − intact, negative when the filter helped),
and against the intact prediction always (``agreement``: 1 when the filter changes nothing). A detector of ET whose
ablation leaves ET's Dice where it was detects something the network does not use — or uses redundantly; ablation
cannot tell which. Zeroing is the channel set to 0, not removed: a BatchNorm after it (in eval mode) still adds its
shift, as BioExp's zeroing does.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from ..data.case import Case
from ..data.labels import REGIONS
from ..errors import UsageError
from ..models.inference import case_probabilities, labels_from_probabilities
from ..models.interface import analysed
from ..scoring.metrics import region_dice


@contextlib.contextmanager
def zeroed_filters(model, filters: Sequence[tuple[str, int]]) -> Iterator[None]:
    """Within the block, each ``(layer, filter)`` of ``model`` outputs zeros in that channel (hooks removed on exit;
    the weights are not touched)."""
    network = analysed(model, "filter ablation")
    chosen: dict[str, list[int]] = {}
    for layer, k in filters:
        if int(k) < 0:
            raise UsageError(f"filter {k} of {layer}: filters are numbered from 0")
        chosen.setdefault(layer, []).append(int(k))
    handles = []

    def zeroing(channels: list[int]):
        def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
            if max(channels) >= output.shape[1]:
                raise UsageError(f"filter {max(channels)} out of range: the layer has {output.shape[1]} filters")
            output = output.clone()
            output[:, channels] = 0
            return output
        return hook

    try:
        for layer in network.layers(list(chosen)):
            handles.append(network.layer_module(layer).register_forward_hook(zeroing(chosen[layer])))
        yield
    finally:
        for handle in handles:
            handle.remove()


def filter_ablation(model, case: Case, filters: Sequence[tuple[str, int]], together: bool = False,
                    device: str | torch.device | None = None) -> dict:
    """Each filter of ``filters`` ablated alone (``together``: all at once, one row), the case segmented again:
    ``{"intact": {region: Dice against the truth} or None, "rows": [{"filters", "agreement", "dice",
    "dice_change", "changed_voxels"}]}`` — ``agreement``: each region's Dice against the intact prediction;
    ``changed_voxels``: the share of brain voxels whose label changed."""
    if not filters:
        raise UsageError("filter ablation needs at least one (layer, filter)")
    intact = labels_from_probabilities(model, case_probabilities(model, case, device=device))
    truth = case.labels
    result = {"intact": region_dice(intact, truth) if truth is not None else None, "rows": []}
    groups = [list(filters)] if together else [[pair] for pair in filters]
    brain = case.brain_mask
    for group in groups:
        with zeroed_filters(model, group):
            labels = labels_from_probabilities(model, case_probabilities(model, case, device=device))
        row = {"filters": [[layer, int(k)] for layer, k in group], "agreement": region_dice(labels, intact),
               "changed_voxels": float((labels != intact)[brain].mean())}
        if truth is not None:
            row["dice"] = region_dice(labels, truth)
            row["dice_change"] = {region: row["dice"][region] - result["intact"][region] for region in REGIONS}
        result["rows"].append(row)
    return result
