"""A case off an nnU-Net network's voxel size, brought to it as nnU-Net's preprocessor does, and every result back as
its export does — so that an nnU-Net folder sees what ``nnUNetPredictor`` would give it (models/nnunet.py).

nnU-Net crops to the non-zero region, z-scores there, then resizes the crop to ``round(shape · spacing / target)``
voxels with a third-order spline (``skimage.transform.resize``, ``mode="edge"``, no anti-aliasing) — or, when either
spacing is anisotropic beyond 3:1, in-plane with the spline and along the coarse axis by nearest neighbour
(``resample_data_or_seg_to_shape``, its ``order``/``order_z``/``force_separate_z`` from the plans) — and its outputs
go back to the crop's shape with the plans' (first-order) settings *before* the softmax or sigmoid. Written here,
not called from nnunetv2, because nnunetv2 is not a runtime dependency; the arithmetic is skimage's and scipy's.

The case it gives has an :class:`NnUNetGrid`, whose ``write`` puts every result back on the input's own grid
(zero outside the crop), as :class:`data.resample.ResampledGrid` does for the library's own resampling. nnU-Net
resizes arrays and ignores the direction cosines; so does this (an oblique scan stays as stored).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from .case import Case, sequence_nonzero
from .grid import ReferenceGrid
from .resample import raw_sequences

if TYPE_CHECKING:
    import SimpleITK as sitk

ANISOTROPY = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD
RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"


@dataclass(frozen=True)
class Resize:
    """One of the plans' ``resampling_fn_*_kwargs``: spline order, order along a coarse axis, separate-z rule."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None

    @classmethod
    def from_plans(cls, configuration: dict, which: str, path: Path) -> "Resize":
        name = configuration.get(f"resampling_fn_{which}", RESAMPLING_FUNCTION)
        if name != RESAMPLING_FUNCTION:
            raise InputError(f"{path}: resampling_fn_{which} {name!r} is not nnU-Net's {RESAMPLING_FUNCTION}, the "
                             "one this project reproduces")
        kwargs = configuration.get(f"resampling_fn_{which}_kwargs") or {}
        return cls(int(kwargs.get("order", 3)), int(kwargs.get("order_z", 0)), kwargs.get("force_separate_z"))

    def separate_axis(self, current: np.ndarray, target: np.ndarray) -> int | None:
        """The coarse axis resized on its own (nnU-Net's ``determine_do_sep_z_and_axis``), or None."""
        def coarse(spacing: np.ndarray) -> np.ndarray:
            return np.flatnonzero(spacing.max() / spacing == 1)

        if self.force_separate_z is not None:
            axes = coarse(current) if self.force_separate_z else np.array([])
        elif current.max() / current.min() > ANISOTROPY:
            axes = coarse(current)
        elif target.max() / target.min() > ANISOTROPY:
            axes = coarse(target)
        else:
            axes = np.array([])
        return int(axes[0]) if len(axes) == 1 else None

    def __call__(self, volume: np.ndarray, shape: tuple[int, ...], current: np.ndarray, target: np.ndarray
                 ) -> np.ndarray:
        """``volume`` resized to ``shape`` (float32), as nnU-Net resizes data and outputs."""
        from scipy.ndimage import map_coordinates
        from skimage.transform import resize

        if tuple(volume.shape) == tuple(shape):
            return volume.astype(np.float32)
        volume = volume.astype(float)
        axis = self.separate_axis(current, target)
        if axis is None:
            return resize(volume, shape, self.order, mode="edge", anti_aliasing=False).astype(np.float32)
        plane = tuple(n for a, n in enumerate(shape) if a != axis)
        slices = np.stack([resize(np.take(volume, k, axis), plane, self.order, mode="edge", anti_aliasing=False)
                           for k in range(volume.shape[axis])], axis=axis)
        if slices.shape[axis] == shape[axis]:
            return slices.astype(np.float32)
        grid = np.mgrid[tuple(slice(0, n) for n in shape)].astype(float)  # skimage's convention: half-voxel centred
        grid = [(have / want) * (g + 0.5) - 0.5 for g, have, want in zip(grid, slices.shape, shape)]
        return map_coordinates(slices, np.array(grid), order=self.order_z, mode="nearest").astype(np.float32)


def resize_labels(array: np.ndarray, shape: tuple[int, ...], current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Labels or a mask resized by nearest neighbour, in their own type."""
    return np.rint(Resize(0, 0, False)(array.astype(np.float32), shape, current, target)).astype(array.dtype)


@dataclass(frozen=True)
class NnUNetGrid:
    """The grid of a case resized as nnU-Net resizes it; its writes land on the reference input's grid."""

    reference: ReferenceGrid  # the case's own grid
    box: tuple[slice, slice, slice]  # the crop to the non-zero region, canonical
    shape: tuple[int, int, int]  # the resized crop, canonical
    spacing: tuple[float, float, float]  # the network's voxel size, canonical
    back: Resize  # the plans' resampling of outputs
    reason: str

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return self.shape

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        return self.spacing

    def to_reference(self, canonical_array: np.ndarray, outside: float = 0.0) -> np.ndarray:
        """A canonical array on this grid on the case's own grid: maps resized back with the plans' output
        resampling, labels and masks by nearest neighbour; ``outside`` (0) outside the crop."""
        array = np.asarray(canonical_array)
        crop = tuple(s.stop - s.start for s in self.box)
        current = np.asarray(self.spacing)
        target = np.asarray(self.reference.canonical_spacing)
        resize = resize_labels if array.dtype.kind in "biu" else self.back
        back = resize(array, crop, current, target)
        out = np.full(self.reference.canonical_shape, outside, dtype=back.dtype)
        out[self.box] = back
        return out

    def to_image(self, canonical_array: np.ndarray) -> "sitk.Image":
        return self.reference.to_image(self.to_reference(canonical_array))

    def write(self, canonical_array: np.ndarray, path: str | Path) -> Path:
        return self.reference.write(self.to_reference(canonical_array), path)

    def describe(self) -> str:
        return f"{self.shape} voxels at {self.spacing} mm, nnU-Net's resizing of {self.reference.describe()}"

    def as_dict(self) -> dict:
        """What ``summary.json`` says about it."""
        return {"resampled": True, "reason": self.reason, "method": "nnU-Net's (crop, z-score, spline resize)",
                "from": {"spacing_mm": [round(s, 3) for s in self.reference.canonical_spacing]},
                "to": {"spacing_mm": [round(s, 3) for s in self.spacing], "shape": list(self.shape)},
                "interpolation": "sequences as nnU-Net's plans say (spline, nearest along a coarse axis); results "
                                 "back with the plans' output resampling, labels nearest"}


def nnunet_zscore(case: Case, channels: list[int], masked: bool) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's ``ZScoreNormalization`` of the four raw sequences after its ``crop_to_nonzero``, and that non-zero
    mask: the union of ``channels``' (the network's) non-zero voxels with its holes filled; each sequence z-scored
    over the mask (``use_mask_for_norm``), zero outside, or over the mask's whole bounding box, zero outside the box
    (what nnU-Net's crop cuts away)."""
    from scipy.ndimage import binary_fill_holes


    raw = raw_sequences(case).astype(np.float64)
    mask = binary_fill_holes(np.any([case.sequence_support(m) for m in channels], axis=0))
    region = mask
    if not masked:
        region = np.zeros_like(mask)
        region[tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(mask))] = True
    out = np.zeros(raw.shape, dtype=np.float32)
    for channel, values in enumerate(raw):
        inside = values[region]
        out[channel][region] = (inside - inside.mean()) / max(inside.std(), 1e-8)
    return out, mask


def nnunet_resampled_case(case: Case, spacing: tuple[float, float, float], channels: list[int], masked: bool,
                          data: Resize, back: Resize, reason: str) -> Case:
    """``case`` (on its own grid) as nnU-Net's preprocessor gives a network reading ``channels`` (indices of
    :data:`data.case.MODALITIES`) at ``spacing`` (canonical mm): z-scored (:func:`nnunet_zscore`), cropped to the
    non-zero region and resized by ``data``; labels and tissue by nearest neighbour."""
    normalised, mask = nnunet_zscore(case, channels, masked)
    nonzero = np.argwhere(mask)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(nonzero.min(0), nonzero.max(0)))
    current, target = np.asarray(case.grid.canonical_spacing), np.asarray(spacing, dtype=float)
    crop = np.array([s.stop - s.start for s in box])
    shape = tuple(int(round(n * c / t)) for n, c, t in zip(crop, current, target))
    images = np.stack([data(channel[box], shape, current, target) for channel in normalised])

    def discrete(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else resize_labels(array[box], shape, current, target)

    grid = NnUNetGrid(case.grid, box, shape, tuple(float(t) for t in target), back, reason)
    brain = discrete(case.brain_mask)
    return replace(case, images=images, brain_mask=brain, grid=grid, labels=discrete(case.labels),
                   tissue=discrete(case.tissue), intensity_stats=None,
                   nonzero=sequence_nonzero(images != 0, brain), original=case)
