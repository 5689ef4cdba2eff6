"""Checks of an image file's bytes and header that ITK does not make, before anything trusts what ITK reads.

ITK refuses a truncated NRRD or MetaImage, but reads a truncated ``.nii``/``.nii.gz`` as a volume whose missing part
is zeros, replaces NaN/Inf in float NIfTI with 0, and accepts a NIfTI header with a zero voxel size (repairing it to
1 mm) or with a qform and an sform that disagree (building an affine that matches neither). A header with no
orientation at all is legal NIfTI and is read, with a warning.

The header is read here as stored, from the NIfTI-1/NIfTI-2 layout: ITK and nibabel both repair it while loading,
and this runs in Slicer's own Python too (loading a case into the scene), where nibabel is not installed. The voxel
data are streamed in chunks, never held in memory.
"""

from __future__ import annotations

import gzip
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CaseError, OutputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # the 3D formats read and written


def check_volume_path(path: str | Path) -> None:
    """Volumes are written only in 3D formats (a ``.png`` would silently keep one slice)."""
    if not str(path).lower().endswith(VOLUME_SUFFIXES):
        raise OutputError(f"{path}: a volume is written as {', '.join(VOLUME_SUFFIXES)}; choose one of these "
                          "suffixes")

NIFTI_SUFFIXES = (".nii", ".nii.gz")
QFORM_SFORM_TOLERANCE_MM = 1e-3  # origins further apart than this describe different grids
QFORM_SFORM_AXIS_TOLERANCE = 2e-3  # per mm of voxel axis (about 0.1°): beyond the quaternion's float32 rounding
_CHUNK = 1 << 22
# NIfTI datatype codes (nifti1.h) → numpy type, for the types a volume can have
_DATATYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
              1280: "u8"}
# (sizeof_hdr, field → (offset, struct format)) of the two header layouts
_LAYOUTS = {
    348: {"dim": (40, "8h"), "datatype": (70, "h"), "pixdim": (76, "8f"), "vox_offset": (108, "f"),
          "qform_code": (252, "h"), "sform_code": (254, "h"), "quatern": (256, "3f"), "qoffset": (268, "3f"),
          "srow": (280, "12f")},
    540: {"datatype": (12, "h"), "dim": (16, "8q"), "pixdim": (104, "8d"), "vox_offset": (168, "q"),
          "qform_code": (344, "i"), "sform_code": (348, "i"), "quatern": (352, "3d"), "qoffset": (376, "3d"),
          "srow": (400, "12d")},
}


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI header these checks need, exactly as stored."""

    byte_order: str
    shape: tuple[int, ...]
    dtype: np.dtype | None  # None: a type no volume of ours has (complex, RGB)
    pixdim: tuple[float, ...]
    vox_offset: int
    qform_code: int
    sform_code: int
    quatern: tuple[float, float, float]
    qoffset: tuple[float, float, float]
    srow: tuple[float, ...]

    def qform(self) -> np.ndarray:
        """The qform affine (NIfTI-1 standard: quaternion b, c, d, voxel sizes, qfac = pixdim[0])."""
        b, c, d = self.quatern
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                             [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                             [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
        qfac = -1.0 if self.pixdim[0] < 0 else 1.0
        affine = np.eye(4)
        affine[:3, :3] = rotation @ np.diag([self.pixdim[1], self.pixdim[2], qfac * self.pixdim[3]])
        affine[:3, 3] = self.qoffset
        return affine

    def sform(self) -> np.ndarray:
        return np.vstack([np.reshape(self.srow, (3, 4)), [0.0, 0.0, 0.0, 1.0]])


def is_nifti(path: Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_nifti_header(path: str | Path, what: str = "image") -> NiftiHeader:
    """The header of a ``.nii``/``.nii.gz`` file as stored (no repairs), or :class:`CaseError` naming the file."""
    path = Path(path)
    try:
        with _open(path) as stream:
            raw = stream.read(540)
    except (OSError, EOFError, zlib.error) as error:  # not gzip, unreadable
        raise CaseError(f"{path}: cannot read {what} image (no valid NIfTI header: {error})") from None
    for order in "<>":
        size = struct.unpack_from(order + "i", raw, 0)[0] if len(raw) >= 4 else 0
        if size in _LAYOUTS and len(raw) >= size:
            break
    else:
        raise CaseError(f"{path}: cannot read {what} image (no valid NIfTI header: it does not start with one)")
    fields = {name: struct.unpack_from(order + fmt, raw, offset) for name, (offset, fmt) in _LAYOUTS[size].items()}
    dim = fields["dim"]
    rank = dim[0] if 0 < dim[0] <= 7 else 0
    code = _DATATYPES.get(fields["datatype"][0])
    return NiftiHeader(order, tuple(int(n) for n in dim[1:rank + 1]), np.dtype(order + code) if code else None,
                       tuple(float(p) for p in fields["pixdim"]), int(fields["vox_offset"][0]),
                       int(fields["qform_code"][0]), int(fields["sform_code"][0]), fields["quatern"],
                       fields["qoffset"], fields["srow"])


def check_image_file(path: str | Path, what: str, values: bool = True) -> None:
    """Raise :class:`CaseError` naming the file when its bytes or header cannot be trusted (see the module notes);
    ``values``: also refuse NaN/Inf voxels (a writer that checked its array before writing skips this pass).

    Formats other than NIfTI are left to ITK, which refuses their truncated files itself."""
    path = Path(path)
    if not is_nifti(path):
        return
    header = read_nifti_header(path, what)
    if len(header.shape) < 3 or header.dtype is None:
        return  # not a scalar volume: read_image says so in its words
    _check_geometry(path, what, header)
    voxels = int(np.prod(header.shape, dtype=np.int64))
    expected = header.vox_offset + voxels * header.dtype.itemsize
    counted, nonfinite = _stream_payload(path, what, header, values and header.dtype.kind == "f")
    if counted < expected:
        raise CaseError(f"{path}: the {what} file is truncated ({counted} of the {expected} bytes its header "
                        "announces): it was not copied or written completely")
    if nonfinite:
        raise CaseError(f"{path}: {what} image has {nonfinite} NaN/Inf voxels")


def _check_geometry(path: Path, what: str, header: NiftiHeader) -> None:
    spacing = header.pixdim[1:4]
    if min(spacing) <= 0 or not np.all(np.isfinite(spacing)):
        raise CaseError(f"{path}: the {what}'s NIfTI header gives voxel size {spacing} mm; every voxel size must be "
                        "positive — the header is damaged or was written by a broken tool")
    if header.qform_code == 0 and header.sform_code == 0:
        warnings.warn(f"{path}: the {what}'s NIfTI header has no orientation (qform_code and sform_code are 0); "
                      "it is read with ITK's default orientation, so left/right and its position in the patient are "
                      "not known — check the result's orientation before trusting it", stacklevel=3)
    if header.qform_code > 0 and header.sform_code > 0:
        qform, sform = header.qform(), header.sform()
        # The quaternion's first component is derived (a = sqrt(1 - b² - c² - d²)): for turns near 180° (flipped
        # and tilted grids, as SimpleITK itself writes them) its float32 rounding reaches ~1e-3 per voxel axis, so
        # the axes are compared per unit length and only the origin in millimetres.
        axes = float(np.abs((qform[:3, :3] - sform[:3, :3]) / np.asarray(spacing, dtype=float)).max())
        difference = float(np.abs(qform - sform).max())
        if axes > QFORM_SFORM_AXIS_TOLERANCE or float(np.abs(qform[:3, 3] - sform[:3, 3]).max()) > \
                QFORM_SFORM_TOLERANCE_MM:
            raise CaseError(f"{path}: the {what}'s NIfTI qform and sform disagree (by up to {difference:.3g} mm), "
                            "so its grid is ambiguous; rewrite the header with one orientation (e.g. copy the sform "
                            "into the qform)")


def _stream_payload(path: Path, what: str, header: NiftiHeader, count_nonfinite: bool) -> tuple[int, int]:
    """(bytes in the uncompressed file, NaN/Inf voxels when asked), in one streamed pass."""
    total, nonfinite, carry = 0, 0, b""
    itemsize = header.dtype.itemsize
    try:
        with _open(path) as stream:
            while chunk := stream.read(_CHUNK):
                start = max(0, header.vox_offset - total)  # where the voxels begin in this chunk
                total += len(chunk)
                if count_nonfinite and start < len(chunk):
                    data = carry + chunk[start:]
                    usable = len(data) - len(data) % itemsize
                    values = np.frombuffer(data[:usable], dtype=header.dtype)
                    nonfinite += int(np.count_nonzero(~np.isfinite(values)))
                    carry = data[usable:]
    except EOFError:
        pass  # the compressed stream ends early: reported as truncated by the caller
    except (gzip.BadGzipFile, zlib.error, OSError) as error:
        raise CaseError(f"{path}: the {what} file is damaged ({error})") from None
    return total, nonfinite
