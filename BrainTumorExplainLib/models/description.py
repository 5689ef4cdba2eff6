"""A network, described once: what every analysis reads instead of assuming the paper's 2D networks.

A :class:`NetworkDescription` says how many spatial dimensions the network works in, which sequence each input
channel is, how the intensities were normalised, what each output channel means (softmax classes or sigmoid regions)
and how that becomes labels, which layers can be analysed, whether it has dropout, its inference window, and the
space it was trained in — the array orientation and, when known, the voxel spacing. :func:`to_network_space` and
:func:`from_network_space` take a case's canonical ``(z, y, x)`` arrays there and back exactly (transposes and flips
only), so a user's network sees its inputs as it was trained, and its results land on the case's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.case import MODALITIES, Case
from ..data.labels import REGIONS, region_mask
from ..data.nnunet_resampling import NnUNetGrid, nnunet_zscore
from ..data.resample import SEQUENCE_RESAMPLING
from ..errors import UsageError

# Canonical array axes point towards Superior, Posterior, Left (data/grid.py): as axis codes, "SPL".
CANONICAL_AXES = "SPL"
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
CLASS_OUTPUTS = ("background", "NCR", "ED", "ET")  # softmax channel meanings, class index order of the library
# zscore-brain: the library's (each sequence over the union of the non-zero voxels); zscore-nonzero-channelwise:
# MONAI's NormalizeIntensity(nonzero, channel_wise); nnunet-zscore-mask / nnunet-zscore: nnU-Net's
# ZScoreNormalization with / without use_mask_for_norm (models.nnunet)
NORMALISATIONS = ("zscore-brain", "zscore-nonzero-channelwise", "nnunet-zscore-mask", "nnunet-zscore")


@dataclass(frozen=True)
class NetworkDescription:
    """Everything an analysis needs to know about a network beyond its weights.

    ``channels``: the input sequences in the network's order (names of :data:`data.case.MODALITIES`).
    ``outputs``: ``softmax`` — channel i is class ``output_names[i]`` of :data:`CLASS_OUTPUTS`; or ``sigmoid`` —
    channel i is region ``output_names[i]`` of ``WT``/``TC``/``ET``, thresholded at 0.5.
    ``axes``: axis codes of the network's array axes (``SPL`` is the library's canonical order; a BraTS file as
    nibabel or MONAI's LoadImage reads it is ``LPS``; after MONAI's ``Orientation(axcodes="RAS")`` it is ``RAS``).
    ``layers``: stable name → module path (``dict(model.named_modules())`` keys).
    """

    name: str
    spatial_dims: int
    channels: tuple[str, ...]
    normalisation: str
    outputs: str
    output_names: tuple[str, ...]
    axes: str = CANONICAL_AXES
    layers: dict[str, str] = field(default_factory=dict)
    dropout: bool = False
    window: tuple[int, ...] | None = None  # the inference window, in the network's axis order
    overlap: float = 0.25
    # how windows are placed and blended: MONAI's "constant" or "gaussian"; nnU-Net's "nnunet" (sums in float32) or
    # "nnunet-float16" (its predictor's own float16 sums, to compare with it)
    blend: str = "constant"
    mirror_axes: tuple[int, ...] | None = None  # network axes its test-time mirroring flips (None: all three)
    spacing_mm: tuple[float, ...] | None = None  # the training space's voxel size, in the network's axis order
    # how sequences reach that voxel size: data.resample.SEQUENCE_RESAMPLING, or "nnunet" (nnU-Net's own resizing,
    # data.nnunet_resampling, with the plans' settings for the data and for the outputs in nnunet_resizing)
    resampling: str = "skull-stripped"
    nnunet_resizing: tuple | None = None
    torchscript: bool = False  # a ScriptModule: no forward hooks, so no layer analyses (require_hooks)

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise UsageError(f"{self.name}: {self.spatial_dims} spatial dimensions; 2 (slices) or 3 are supported")
        unknown = [c for c in self.channels if c not in MODALITIES]
        if unknown or len(set(self.channels)) != len(self.channels):
            raise UsageError(f"{self.name}: input channels {list(self.channels)}; each must be one of "
                             f"{', '.join(MODALITIES)}, once")
        if self.normalisation not in NORMALISATIONS:
            raise UsageError(f"{self.name}: normalisation {self.normalisation!r} is not one of "
                             f"{', '.join(NORMALISATIONS)}")
        allowed = CLASS_OUTPUTS if self.outputs == "softmax" else tuple(REGIONS) if self.outputs == "sigmoid" else ()
        if not allowed or any(name not in allowed for name in self.output_names):
            raise UsageError(f"{self.name}: outputs {self.outputs!r} {list(self.output_names)}; expected softmax "
                             f"over {', '.join(CLASS_OUTPUTS)} or sigmoid over {', '.join(REGIONS)}")
        axis_permutation(CANONICAL_AXES, self.axes)  # refuses impossible axis codes
        if self.resampling not in SEQUENCE_RESAMPLING + ("nnunet",):
            raise UsageError(f"{self.name}: resampling {self.resampling!r} is not one of "
                             f"{', '.join(SEQUENCE_RESAMPLING)}")


def require_hooks(description: NetworkDescription, analysis: str) -> None:
    """Refuse ``analysis`` (one that reads layers through forward hooks) for a TorchScript network, saying what runs."""
    if description.torchscript:
        raise UsageError(f"{description.name} is a TorchScript network: forward hooks do not run inside a "
                         f"ScriptModule, so {analysis} is not available for it; segmentation and uncertainty by test-"
                         "time augmentation (flips) are")


def axis_permutation(source: str, target: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """For each target axis: the source axis it is, and whether it runs the other way."""
    if len(source) != 3 or len(target) != 3:
        raise UsageError(f"axis codes {target!r}: three letters of R/L, A/P, S/I")
    order, flips = [], []
    for code in target.upper():
        if code in source:
            order.append(source.index(code))
            flips.append(False)
        elif _OPPOSITE.get(code) in source:
            order.append(source.index(_OPPOSITE[code]))
            flips.append(True)
        else:
            raise UsageError(f"axis codes {target!r}: {code!r} is not a direction of R/L, A/P, S/I")
    if sorted(order) != [0, 1, 2]:
        raise UsageError(f"axis codes {target!r} name one direction twice")
    return tuple(order), tuple(flips)


def to_network_space(array: np.ndarray, axes: str) -> np.ndarray:
    """A canonical ``(..., z, y, x)`` array in the network's axis order ``axes`` (a view where possible)."""
    order, flips = axis_permutation(CANONICAL_AXES, axes)
    lead = array.ndim - 3
    out = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in order))
    flipped = tuple(lead + i for i, flip in enumerate(flips) if flip)
    return np.flip(out, flipped) if flipped else out


def from_network_space(array: np.ndarray, axes: str) -> np.ndarray:
    """Exact inverse of :func:`to_network_space`."""
    order, flips = axis_permutation(CANONICAL_AXES, axes)
    lead = array.ndim - 3
    flipped = tuple(lead + i for i, flip in enumerate(flips) if flip)
    array = np.flip(array, flipped) if flipped else array
    inverse = np.argsort(order)
    return np.transpose(array, tuple(range(lead)) + tuple(lead + int(a) for a in inverse))


def network_inputs(case: Case, description: NetworkDescription) -> np.ndarray:
    """The case's four sequences as the network takes them: its channel order, its normalisation, its axes;
    ``(channels, ...)`` float32, contiguous."""
    order = [MODALITIES.index(name) for name in description.channels]
    images = case.images[order]  # z-scored over the brain mask (the union of the sequences' non-zero voxels)
    if description.normalisation == "zscore-nonzero-channelwise":
        images = _zscore_nonzero_channelwise(case, order)
    elif description.normalisation.startswith("nnunet-"):

        if not isinstance(case.grid, NnUNetGrid):  # resized by nnU-Net's rules, it was z-scored before (theirs too)
            images = nnunet_zscore(case, order, description.normalisation == "nnunet-zscore-mask")[0][order]
    return np.ascontiguousarray(to_network_space(images, description.axes), dtype=np.float32)


def _zscore_nonzero_channelwise(case: Case, order: list[int]) -> np.ndarray:
    """MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)`` of the raw sequences: each channel z-scored
    over its own non-zero voxels, zero elsewhere. Rebuilt from the case's brain-mask z-scores, which are an affine
    function of the raw values (the case keeps each sequence's raw mean and spread over the brain mask)."""
    out = np.zeros((len(order),) + case.brain_mask.shape, dtype=np.float32)
    for channel, modality in enumerate(order):
        mean, std = case.intensity_stats[modality]
        raw = np.where(case.brain_mask, case.images[modality].astype(np.float64) * std + mean, 0.0)
        nonzero = case.sequence_support(modality)  # as read: float32 z-scores do not give exact zeros back
        values = raw[nonzero]
        spread = values.std() if values.size else 0.0
        out[channel][nonzero] = (values - values.mean()) / (spread if spread > 0 else 1.0)
    return out


def labels_from_outputs(outputs: np.ndarray, description: NetworkDescription) -> np.ndarray:
    """Class indices (0 background, 1 NCR, 2 ED, 3 ET) from the network's outputs ``(channels, ...)`` —
    probabilities after the softmax, or after the sigmoid. Sigmoid regions become labels as nnU-Net and MONAI's
    BraTS bundle do: ED where WT, then NCR where TC, then ET where ET."""
    if description.outputs == "softmax":
        classes = np.asarray([CLASS_OUTPUTS.index(name) for name in description.output_names], dtype=np.uint8)
        return classes[np.argmax(outputs, axis=0)]
    present = {name: outputs[i] > 0.5 for i, name in enumerate(description.output_names)}
    labels = np.zeros(outputs.shape[1:], dtype=np.uint8)
    for region, class_index in (("WT", 2), ("TC", 1), ("ET", 3)):
        if region in present:
            labels[present[region]] = class_index
    return labels


def truth_of_outputs(labels: np.ndarray, description: NetworkDescription) -> np.ndarray:
    """What each output channel should say for class indices ``labels``: ``(channels, ...)`` bool — a softmax
    channel its class's voxels, a sigmoid channel its region's (the inverse of :func:`labels_from_outputs`; what
    the outputs' calibration is scored against)."""
    if description.outputs == "softmax":
        return np.stack([labels == CLASS_OUTPUTS.index(name) for name in description.output_names])
    return np.stack([region_mask(labels, name) for name in description.output_names])
