"""A case in a network's space, and every result back on the case's own grid.

A network sees voxels, not millimetres: trained on 1 mm axis-aligned volumes, it reads a 2 mm scan as a head half
its size and an oblique acquisition as a tilted one (the shipped DenseUnet on a held-out phantom at 2 mm: WT Dice
0.86 as acquired, 0.92 resampled; docs/analyses.md, "Scans off the network's grid"). :func:`resample_case` brings a case whose voxel size differs from the
network's, or whose axes are oblique, onto an axis-aligned grid at the network's voxel size covering the same
physical box; the case it returns has a :class:`ResampledGrid`, whose ``write`` maps every result back onto the
reference input's grid and writes it with that grid's exact geometry — so the analyses run unchanged in the network's
space and every output still lies on the input's own IJK→RAS.

Interpolation (SimpleITK, the well-kept resampler): sequences linearly, in one of two ways (:data:`SEQUENCE_RESAMPLING`)
— ``skull-stripped``, the project's: the brain mask resampled linearly and cut at one half, the intensities divided
by it inside, zero outside, so the new brain has a sharp edge that keeps its intensities instead of fading into the
zeros outside (as a scan skull-stripped at the new grid); or ``linear``, as MONAI's ``Spacingd``: each sequence
resampled as it is, the zeros outside included (what a bundle with ``Spacingd`` was trained on; on an axis-aligned
case the grid is MONAI's too, see :func:`network_grid`, and the values are MONAI's to float precision) — then
z-scored over the new brain; labels by nearest neighbour. Results go back linearly (maps, probabilities) or by nearest
neighbour (labels, masks) — by the array's type.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .case import Case, sequence_nonzero, zscored_sequences
from .grid import ReferenceGrid, divided_by_support, moved_grid

if TYPE_CHECKING:
    import SimpleITK as sitk

SPACING_TOLERANCE = 0.01  # relative: a 1.005 mm BraTS case is at 1 mm
OBLIQUE_TOLERANCE_DEGREES = 1.0  # under 1°, matching each axis to its nearest anatomical one moves a voxel < 1.8 mm
#                                   at 10 cm from the centre: closer than resampling's own blur is worth undoing
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SEQUENCE_RESAMPLING = ("skull-stripped", "linear")
BRAIN_MARGIN_MM = 40.0  # background kept around the brain: about what a BraTS 240 mm field of view leaves


def obliquity_degrees(grid: ReferenceGrid) -> float:
    """The largest angle between an image axis and the anatomical axis it is matched to."""
    columns = np.abs(np.asarray(grid.direction, dtype=float).reshape(3, 3))
    return float(np.degrees(np.arccos(np.clip(columns.max(axis=0), -1.0, 1.0))).max())


def same_spacing(own, spacing) -> bool:
    """Whether two voxel sizes (mm, same axis order) are one, to :data:`SPACING_TOLERANCE`."""
    return bool(np.allclose(own, spacing, rtol=SPACING_TOLERANCE, atol=0))


def space_mismatch(grid: ReferenceGrid, spacing: tuple[float, float, float]) -> str | None:
    """Why a case on ``grid`` is not in the space of a network trained at ``spacing`` (mm along canonical
    ``z, y, x``) on axis-aligned volumes — or None when it is."""
    reasons = []
    own = grid.canonical_spacing
    if not same_spacing(own, spacing):
        reasons.append(f"voxel size {_mm(own)} mm, not {_mm(spacing)} mm")
    tilt = obliquity_degrees(grid)
    if tilt > OBLIQUE_TOLERANCE_DEGREES:
        reasons.append(f"axes {tilt:.1f}° oblique")
    return "; ".join(reasons) or None


def network_grid(grid: ReferenceGrid, spacing: tuple[float, float, float], brain: np.ndarray | None = None,
                 margin_mm: float = BRAIN_MARGIN_MM, axes: str = "LPS") -> ReferenceGrid:
    """The axis-aligned grid at ``spacing`` (canonical ``z, y, x``, mm) spanning ``grid``'s voxel centres: as many
    voxels as fit in the span and one, the lattice anchored on the corner voxel centre where the network's array
    (axis codes ``axes``) starts — MONAI's ``Spacing`` convention, so that an axis-aligned case lands on the very grid
    a MONAI bundle resamples it to (after ``Orientationd`` to ``axes``; a file read as it is stored is ``LPS``).
    With ``brain`` (a canonical mask on ``grid``), only the part of that grid within ``margin_mm`` of the brain's
    bounding box: an oblique scan's box holds far more background than the head, and the network needs none of it
    beyond its usual surround."""
    low, high = _physical_box(grid, np.array([[bit * (n - 1) for bit, n in zip(bits, grid.canonical_shape)]
                                              for bits in np.ndindex(2, 2, 2)]))
    itk_spacing = np.asarray(spacing[::-1], dtype=float)  # identity direction: i, j, k run along L, P, S
    count = np.maximum(1, np.round((high - low) / itk_spacing + 1)).astype(int)
    from_high = np.array([code in axes.upper() for code in "RAI"])  # the array starts at the high L, P or S end
    low = np.where(from_high, high - (count - 1) * itk_spacing, low)
    first = np.zeros(3, dtype=int)
    if brain is not None and brain.any():
        voxels = np.argwhere(brain)
        corners = np.array([[voxels[:, a].max() if bit else voxels[:, a].min() for a, bit in enumerate(bits)]
                            for bits in np.ndindex(2, 2, 2)])
        brain_low, brain_high = _physical_box(grid, corners)
        first = np.maximum(0, np.floor((brain_low - margin_mm - low) / itk_spacing)).astype(int)
        last = np.minimum(count - 1, np.ceil((brain_high + margin_mm - low) / itk_spacing)).astype(int)
        count = last - first + 1
    return ReferenceGrid(tuple(int(c) for c in count), tuple(float(s) for s in itk_spacing),
                         tuple(float(o) for o in low + first * itk_spacing), _IDENTITY)


def _physical_box(grid: ReferenceGrid, canonical_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LPS bounding box of canonical voxel indices ``(N, 3)`` of ``grid``."""
    reorientation, shape = grid.reorientation, grid.canonical_shape
    itk = np.zeros_like(canonical_indices)  # (k, j, i) array indices
    for canonical_axis, array_axis in enumerate(reorientation.axes):
        index = canonical_indices[:, canonical_axis]
        itk[:, array_axis] = shape[canonical_axis] - 1 - index if reorientation.flips[canonical_axis] else index
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    points = np.asarray(grid.origin) + (itk[:, ::-1] * np.asarray(grid.spacing)) @ direction.T
    return points.min(axis=0), points.max(axis=0)


def resample_array(array: np.ndarray, source: ReferenceGrid, target: ReferenceGrid) -> np.ndarray:
    """A canonical array on ``source`` as a canonical array on ``target``: linear for floating-point values,
    nearest neighbour for integers and booleans (labels, masks); 0 outside ``source``."""
    import SimpleITK as sitk

    array = np.asarray(array)
    discrete = array.dtype.kind in "biu"
    image = source.to_image(array if discrete else array.astype(np.float32, copy=False))
    resampled = _resample(image, target, sitk.sitkNearestNeighbor if discrete else sitk.sitkLinear)
    out = target.to_canonical(sitk.GetArrayFromImage(resampled))
    return out.astype(bool) if array.dtype == np.bool_ else out


def _resample(image: "sitk.Image", target: ReferenceGrid, interpolator: int) -> "sitk.Image":
    import SimpleITK as sitk

    return sitk.Resample(image, target.size, sitk.Transform(), interpolator, target.origin, target.spacing,
                         target.direction, 0.0, image.GetPixelID())


@dataclass(frozen=True)
class ResampledGrid:
    """The grid of a case resampled into a network's space; its writes land on the reference input's grid.

    It stands where a :class:`ReferenceGrid` does in a :class:`Case` (shape, spacing, ``write``), so every writer
    works unchanged; ``reason`` says why the case was resampled.
    """

    grid: ReferenceGrid  # the network's space: axis-aligned, at its voxel size
    reference: ReferenceGrid  # the case's own grid, where every result is written
    reason: str
    aligned: ReferenceGrid | None = None  # ``reference``'s voxels turned into the atlas's pose, when it was aligned

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return self.grid.canonical_shape

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        return self.grid.canonical_spacing

    def to_reference(self, canonical_array: np.ndarray) -> np.ndarray:
        """A canonical array in the network's space, on the case's own grid (canonical order): sampled on the
        aligned grid when the case was turned into the atlas's pose — the same voxels as ``reference``."""
        return resample_array(canonical_array, self.grid, self.aligned or self.reference)

    def to_image(self, canonical_array: np.ndarray) -> "sitk.Image":
        return self.reference.to_image(self.to_reference(canonical_array))

    def write(self, canonical_array: np.ndarray, path: str | Path, quantised: bool = False) -> Path:
        """Write a result computed in the network's space as an image on the reference input's grid
        (:meth:`ReferenceGrid.write`)."""
        return self.reference.write(self.to_reference(canonical_array), path, quantised)

    def describe(self) -> str:
        return f"{self.grid.describe()}, resampled from {self.reference.describe()} ({self.reason})"

    def as_dict(self) -> dict:
        """What ``summary.json`` says about it."""
        return {"resampled": True, "reason": self.reason,
                "from": {"spacing_mm": _mm(self.reference.canonical_spacing),
                         "oblique_degrees": round(obliquity_degrees(self.reference), 2)},
                "to": {"spacing_mm": _mm(self.grid.canonical_spacing), "oblique_degrees": 0.0},
                "atlas_aligned": self.aligned is not None,
                "interpolation": "sequences linear, labels nearest; results back: maps linear, labels nearest"}


def resample_case(case: Case, spacing: tuple[float, float, float], sequences: str = "skull-stripped",
                  axes: str = "LPS") -> Case:
    """``case`` in the space of a network trained at ``spacing`` (mm, canonical ``z, y, x``) on axis-aligned
    volumes: ``case`` itself when it is already there, else a new case (see the module notes; ``sequences``: one of
    :data:`SEQUENCE_RESAMPLING`; ``axes``: the network's array axes, see :func:`network_grid`) whose ``original`` is
    ``case``. A case with an :attr:`~data.case.Case.alignment` is turned into the atlas's pose on the way (its grid
    moved by the pose's inverse: the same voxels, in the atlas's frame). The input case is not changed."""
    if isinstance(case.grid, ResampledGrid):
        case = case.original
    aligned = None if case.alignment is None else moved_grid(case.grid, case.alignment.rigid_to_atlas())
    source = aligned or case.grid
    reason = space_mismatch(source, tuple(float(s) for s in spacing))
    if reason is None:
        return case
    if aligned is not None:
        reason = f"turned {case.alignment.rotation_degrees:.1f}° into the atlas's pose; {reason}"
    # A bundle (linear, as MONAI's Spacingd) gets MONAI's whole grid; ours the part around the brain.
    target = network_grid(source, spacing, case.brain_mask if sequences == "skull-stripped" else None, axes=axes)
    if sequences == "linear":
        raw = np.stack([resample_array(sequence, source, target) for sequence in raw_sequences(case)])
        nonzero = raw != 0
        brain = nonzero.any(axis=0)
    elif sequences == "skull-stripped":
        raw, brain = resample_sequences(replace(case, grid=source), target)
        nonzero = None
    else:
        raise ValueError(f"sequences={sequences!r}: one of {SEQUENCE_RESAMPLING}")
    images, stats = zscored_sequences(raw, brain)
    discrete = {name: None if getattr(case, name) is None else resample_array(getattr(case, name), source, target)
                for name in ("labels", "tissue")}
    return replace(case, images=images, brain_mask=brain, grid=ResampledGrid(target, case.grid, reason, aligned),
                   intensity_stats=stats, nonzero=None if nonzero is None else sequence_nonzero(nonzero, brain),
                   original=case, **discrete)


def resample_sequences(case: Case, target: ReferenceGrid) -> tuple[np.ndarray, np.ndarray]:
    """The case's sequences as read, ``(4, ...)`` float32, and its brain mask, on ``target`` (canonical order): the
    mask resampled linearly and cut at one half, the sequences linearly and divided by the resampled mask inside it
    (so the brain's edge keeps its intensities instead of fading into the zeros outside), zero outside it — a
    skull-stripped scan of the same head at the new grid."""
    weight = resample_array(case.brain_mask.astype(np.float32), case.grid, target)
    raw = np.stack([divided_by_support(resample_array(sequence, case.grid, target), weight)
                    for sequence in raw_sequences(case)])
    return raw, weight >= 0.5


def raw_sequences(case: Case) -> np.ndarray:
    """The sequences as read (0 outside the brain), from the z-scores and the statistics they were made with;
    the z-scores themselves when a saved case carries no statistics (resampling is linear, so either works)."""
    if case.intensity_stats is None:
        return case.images
    mean, std = case.intensity_stats[:, 0], case.intensity_stats[:, 1]
    raw = case.images.astype(np.float64) * std[:, None, None, None] + mean[:, None, None, None]
    return np.where(case.brain_mask, raw, 0.0).astype(np.float32)


def warn_if_off_space(case: Case, spacing: tuple[float, float, float] | None, network: str) -> None:
    """Say so when a case reaches a network outside the space it was trained in (``resample_case`` was skipped)."""
    reason = None if spacing is None else space_mismatch(case.grid, spacing) if isinstance(
        case.grid, ReferenceGrid) else None
    if reason:
        warnings.warn(f"{case.case_id}: {reason}; {network} was trained at {_mm(spacing)} mm on axis-aligned volumes "
                      "and sees this case distorted (models.space.into_network_space resamples it; on the command "
                      "line, leave out --no-resample)", stacklevel=3)


def _mm(values) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)
