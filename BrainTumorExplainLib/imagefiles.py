"""Checks of an image file's bytes and header that ITK does not make, before anything trusts what ITK reads.

ITK refuses a truncated NRRD or MetaImage, but reads a truncated ``.nii``/``.nii.gz`` as a volume whose missing part
is zeros, replaces NaN/Inf in float NIfTI with 0, and accepts a NIfTI header with a zero voxel size
(or with a qform and an sform that disagree, from which it builds an affine that matches neither); a header
with no orientation at all is read, with a warning. nibabel reads the
header as stored, so these checks use it; the voxel data are streamed, never held twice.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np

from .errors import CaseError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
QFORM_SFORM_TOLERANCE_MM = 1e-3  # beyond this, the two affines describe different grids
_CHUNK = 1 << 22


def is_nifti(path: Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def check_image_file(path: str | Path, what: str, values: bool = True) -> None:
    """Raise :class:`CaseError` naming the file when its bytes or header cannot be trusted (see the module notes);
    ``values``: also refuse NaN/Inf voxels (a writer that checked its array before writing skips this pass).

    Formats other than NIfTI are left to ITK, which refuses their truncated files itself."""
    path = Path(path)
    if not is_nifti(path):
        return
    import nibabel

    try:
        image = nibabel.load(str(path))
    except Exception as error:  # nibabel's header errors have many types; each means the header is unusable
        detail = str(error).replace(f"File {path} ", "").replace(str(path), "the file")[:160]
        raise CaseError(f"{path}: cannot read {what} image (no valid NIfTI header: {detail})") from None
    header = image.header
    if len(header.get_data_shape()) < 3:
        return  # not a volume: read_image says so in its words
    _check_nifti_geometry(path, what, image, header)
    shape = header.get_data_shape()
    dtype = header.get_data_dtype()
    expected = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = _payload_bytes(path, what)
    if actual < expected:
        raise CaseError(f"{path}: the {what} file is truncated ({actual} of the {expected} bytes its header "
                        "announces): it was not copied or written completely")
    if values and np.issubdtype(dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(np.asanyarray(image.dataobj))))
        if bad:
            raise CaseError(f"{path}: {what} image has {bad} NaN/Inf voxels")


def _check_nifti_geometry(path: Path, what: str, image, header) -> None:
    zooms = header.get_zooms()[:3]
    if len(zooms) < 3 or min(zooms) <= 0 or not np.all(np.isfinite(zooms)):
        raise CaseError(f"{path}: the {what}'s NIfTI header gives voxel size {tuple(float(z) for z in zooms)} mm; "
                        "every voxel size must be positive — the header is damaged or was written by a broken tool")
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    if qform_code == 0 and sform_code == 0:  # legal NIfTI (Analyze-style): results keep the same header meaning
        warnings.warn(f"{path}: the {what}'s NIfTI header has no orientation (qform_code and sform_code are 0); "
                      "it is read with ITK's default orientation, so left/right and its position in the patient are "
                      "not known — check the result's orientation before trusting it", stacklevel=3)
    if qform_code > 0 and sform_code > 0:
        difference = float(np.abs(image.get_qform() - image.get_sform()).max())
        if difference > QFORM_SFORM_TOLERANCE_MM:
            raise CaseError(f"{path}: the {what}'s NIfTI qform and sform disagree (by up to {difference:.3g} mm), "
                            "so its grid is ambiguous; rewrite the header with one orientation (e.g. copy the sform "
                            "into the qform)")


def _payload_bytes(path: Path, what: str) -> int:
    """Bytes of the (uncompressed) file, counted by streaming."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
    except EOFError:
        return total  # the compressed stream ends early: reported as truncated by the caller
    except (gzip.BadGzipFile, zlib.error, OSError) as error:
        raise CaseError(f"{path}: the {what} file is damaged ({error})") from None
    return total
