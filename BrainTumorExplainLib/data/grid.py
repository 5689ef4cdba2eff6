"""The reference grid of a case, and the exact map between its voxel order and the canonical axial order.

Every analysis works on arrays in one *canonical* voxel order, so that "axial slice z" means the same thing for every
input: array axes ``(z, y, x)`` run towards patient Superior, Posterior and Left (ITK's LPS; the orientation BraTS files
have). An input stored in any other axis order or with flipped axes is brought there by transposing and flipping the
voxel array only — no interpolation — so the map is exact and exactly invertible. An oblique input keeps its obliquity
in the direction matrix; its axes are matched to the nearest anatomical ones.

Results computed on the canonical array are written back by the inverse permutation onto an image whose size,
spacing, origin and direction are *copied* from the reference input, so an output's IJK→RAS equals the input's bit for bit.
"""

from __future__ import annotations

import gzip
import itertools
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OutputError, itk_reason
from .imagefiles import check_volume_path

if TYPE_CHECKING:  # imported where images are made, so arrays and grids work without SimpleITK
    import SimpleITK as sitk

# Canonical array axis c (0, 1, 2) points along physical LPS axis 2 - c: z → S, y → P, x → L.
_CANONICAL_PHYSICAL_AXIS = (2, 1, 0)


@dataclass(frozen=True)
class Reorientation:
    """Transpose + flips taking an ITK-ordered array ``(k, j, i)`` to the canonical order ``(z, y, x)``."""

    axes: tuple[int, int, int]  # canonical axis c takes ITK-array axis axes[c]
    flips: tuple[bool, bool, bool]  # canonical axis c is reversed after the transpose

    @classmethod
    def from_direction(cls, direction: tuple[float, ...]) -> "Reorientation":
        """Match each image axis to the physical axis it is closest to (ties and obliques resolved jointly)."""
        matrix = np.asarray(direction, dtype=float).reshape(3, 3)  # column m: direction of image axis m (i, j, k)
        best = max(
            itertools.permutations(range(3)),
            key=lambda physical_of: sum(abs(matrix[physical_of[m], m]) for m in range(3)),
        )
        axes, flips = [0, 0, 0], [False, False, False]
        for image_axis, physical_axis in enumerate(best):
            canonical_axis = _CANONICAL_PHYSICAL_AXIS.index(physical_axis)
            axes[canonical_axis] = 2 - image_axis  # ITK array axis order is (k, j, i)
            flips[canonical_axis] = bool(matrix[physical_axis, image_axis] < 0)
        return cls(tuple(axes), tuple(flips))

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """ITK-ordered ``(..., k, j, i)`` array → canonical ``(..., z, y, x)`` (a view where possible)."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in self.axes))
        flip_axes = tuple(lead + c for c in range(3) if self.flips[c])
        return np.flip(out, flip_axes) if flip_axes else out

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`to_canonical`."""
        lead = array.ndim - 3
        flip_axes = tuple(lead + c for c in range(3) if self.flips[c])
        out = np.flip(array, flip_axes) if flip_axes else array
        inverse = np.argsort(self.axes)
        return np.transpose(out, tuple(range(lead)) + tuple(lead + int(a) for a in inverse))


@dataclass(frozen=True)
class ReferenceGrid:
    """Geometry of the reference input (ITK/LPS conventions), kept so that results go back onto it exactly."""

    size: tuple[int, int, int]  # (i, j, k)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, as SimpleITK gives them

    @classmethod
    def from_image(cls, image: sitk.Image) -> "ReferenceGrid":
        return cls(
            tuple(int(s) for s in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def reorientation(self) -> Reorientation:
        return Reorientation.from_direction(self.direction)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of a canonical ``(z, y, x)`` array on this grid."""
        itk_shape = self.size[::-1]
        return tuple(itk_shape[a] for a in self.reorientation.axes)

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the canonical ``(z, y, x)`` axes."""
        itk_spacing = self.spacing[::-1]
        return tuple(itk_spacing[a] for a in self.reorientation.axes)

    def matches(self, other: "ReferenceGrid | sitk.Image", tolerance: float = 1e-4) -> bool:
        """True when ``other`` lies on this grid (size exact; spacing, origin in mm and direction within tolerance)."""
        if not isinstance(other, ReferenceGrid):
            other = ReferenceGrid.from_image(other)
        return (
            other.size == self.size
            and np.allclose(other.spacing, self.spacing, rtol=0, atol=tolerance)
            and np.allclose(other.origin, self.origin, rtol=0, atol=tolerance)
            and np.allclose(other.direction, self.direction, rtol=0, atol=tolerance)
        )

    def describe(self) -> str:
        return (
            f"size {self.size}, spacing {tuple(round(s, 4) for s in self.spacing)}, "
            f"origin {tuple(round(o, 4) for o in self.origin)}, direction {tuple(round(d, 4) for d in self.direction)}"
        )

    def to_canonical(self, itk_array: np.ndarray) -> np.ndarray:
        """Array read from an image on this grid → canonical order (contiguous copy)."""
        return np.ascontiguousarray(self.reorientation.to_canonical(itk_array))

    def physical_points(self, canonical_mask: np.ndarray) -> np.ndarray:
        """The world (LPS, mm) positions ``(n, 3)`` of the voxels where a canonical mask is true."""
        kji = np.argwhere(self.reorientation.from_canonical(np.asarray(canonical_mask, dtype=bool)))
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin) + (kji[:, ::-1] * np.asarray(self.spacing)) @ direction.T

    def ijk_of(self, canonical_indices: np.ndarray) -> np.ndarray:
        """Canonical voxel indices ``(n, 3)`` as ``(z, y, x)`` → the image file's ``(i, j, k)`` (ITK's index and
        Slicer's IJK)."""
        canonical_indices = np.atleast_2d(np.asarray(canonical_indices, dtype=np.int64))
        shape = np.asarray(self.canonical_shape)
        flips = np.asarray(self.reorientation.flips)
        unflipped = np.where(flips, shape - 1 - canonical_indices, canonical_indices)
        kji = np.empty_like(unflipped)
        kji[:, list(self.reorientation.axes)] = unflipped
        return kji[:, ::-1]

    def world_of(self, canonical_indices: np.ndarray) -> np.ndarray:
        """Canonical voxel indices ``(n, 3)`` → their world (LPS, mm) positions."""
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin) + (self.ijk_of(canonical_indices) * np.asarray(self.spacing)) @ direction.T

    def to_image(self, canonical_array: np.ndarray) -> sitk.Image:
        """Canonical ``(z, y, x)`` array → image on this grid, geometry copied exactly."""
        import SimpleITK as sitk

        canonical_array = np.asarray(canonical_array)
        if canonical_array.shape != self.canonical_shape:
            raise ValueError(
                f"array of shape {canonical_array.shape} does not fit this grid: expected canonical shape "
                f"{self.canonical_shape}"
            )
        if canonical_array.dtype == np.bool_:
            canonical_array = canonical_array.astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.reorientation.from_canonical(canonical_array)))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def write(self, canonical_array: np.ndarray, path: str | Path, quantised: bool = False) -> Path:
        """Write a canonical array as an image file on this grid (a 3D format, from the suffix). NaN/Inf values
        are refused: they would not survive NIfTI. ``quantised``: a float map stored as NIfTI 8-bit levels with its
        own scale (:func:`write_quantised`), which every NIfTI reader turns back into floats; other formats keep
        float32. Failures raise :class:`OutputError` naming the file."""
        import SimpleITK as sitk


        path = Path(path)
        check_volume_path(path)
        canonical_array = np.asarray(canonical_array)
        if canonical_array.dtype.kind == "f" and not np.isfinite(canonical_array).all():
            raise OutputError(f"{path}: the volume to write holds NaN or infinite values")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if quantised and path.name.lower().endswith(NIFTI_SUFFIXES):
                write_quantised(self.to_image(canonical_array), path)
            else:
                sitk.WriteImage(self.to_image(canonical_array), str(path), useCompression=True)
        except RuntimeError as error:
            raise OutputError(f"{path}: could not be written ({itk_reason(error)})") from None
        return path


NIFTI_SUFFIXES = (".nii", ".nii.gz")
LEVELS = 255  # a quantised map's steps between its lowest value (or 0) and its highest
_NIFTI1_HEADER = 348  # sizeof_hdr of a NIfTI-1 header; scl_slope and scl_inter are the float32s at bytes 112 and 116


def quantise(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A float map as uint8 levels and the (slope, intercept) that give it back (value = level × slope +
    intercept): the range from min(0, lowest) to max(0, highest) in :data:`LEVELS` steps, so zero stays exactly
    zero for a map that is never negative (Grad-CAM, uncertainty); the error is at most half a step."""
    array = np.asarray(array, dtype=np.float64)
    low, high = min(0.0, float(array.min(initial=0.0))), max(0.0, float(array.max(initial=0.0)))
    if high == low:  # all zero: any slope but 1 makes readers rescale (to float)
        return np.zeros(array.shape, dtype=np.uint8), 0.5, 0.0
    slope = (high - low) / LEVELS
    return np.clip(np.rint((array - low) / slope), 0, LEVELS).astype(np.uint8), slope, low


def write_quantised(image: "sitk.Image", path: Path) -> Path:
    """A float image as NIfTI of uint8 levels with the scale in the header's ``scl_slope``/``scl_inter``
    (:func:`quantise`): a quarter of float32's bytes, and smooth maps compress several times better still. ITK
    (SimpleITK, and Slicer's reader: ``NiftiImageIO`` rescales to float when the slope is not 1, read at ITK v5.3.0
    and v5.4.0, the ITKs of Slicer 5.6-5.10), nibabel and every NIfTI reader apply it. ITK writes no scale, so the
    two header fields are set in the uncompressed file before it is gzipped."""
    import SimpleITK as sitk

    levels, slope, intercept = quantise(sitk.GetArrayViewFromImage(image))
    stored = sitk.GetImageFromArray(levels)
    stored.CopyInformation(image)
    plain = path.with_name(f".{path.name}.plain.nii")  # beside the output: inside the run's private folder
    try:
        sitk.WriteImage(stored, str(plain), useCompression=False)
        with open(plain, "r+b") as handle:
            header = handle.read(_NIFTI1_HEADER)
            order = next((o for o in "<>" if struct.unpack(o + "i", header[:4])[0] == _NIFTI1_HEADER), None)
            if order is None:
                raise RuntimeError(f"ITK wrote no NIfTI-1 header to {plain.name}")
            handle.seek(112)
            handle.write(struct.pack(order + "ff", slope, intercept))
        if path.name.lower().endswith(".gz"):
            with open(plain, "rb") as source, open(path, "wb") as raw, \
                    gzip.GzipFile("", "wb", compresslevel=6, fileobj=raw, mtime=0) as target:  # same map, same bytes
                shutil.copyfileobj(source, target)
        else:
            plain.replace(path)
    finally:
        plain.unlink(missing_ok=True)
    return path


def divided_by_support(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Linearly resampled values over their support (the brain mask as 0/1, resampled the same way): divided by it
    where it covers at least half a voxel, zero elsewhere — a sharp edge that keeps its intensities, as stripping at
    the new grid gives, instead of a rim fading into the zeros outside."""
    inside = support >= 0.5
    out = np.zeros(values.shape, dtype=np.float32)
    out[inside] = values[inside] / support[inside]
    return out


def moved_grid(grid: ReferenceGrid, motion: "sitk.Transform") -> ReferenceGrid:
    """``grid`` carried along by a rigid ``motion``: the same voxels over the moved head, at moved world positions."""
    matrix = np.asarray(motion.GetMatrix(), dtype=float).reshape(3, 3)
    direction = matrix @ np.asarray(grid.direction, dtype=float).reshape(3, 3)
    origin = motion.TransformPoint(tuple(float(o) for o in grid.origin))
    return ReferenceGrid(grid.size, grid.spacing, tuple(float(o) for o in origin),
                         tuple(float(d) for d in direction.ravel()))
