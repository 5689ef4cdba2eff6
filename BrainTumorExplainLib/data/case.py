"""Reading a BraTS case: file discovery, validation, canonical orientation and per-modality normalisation.

Model channel order is fixed: ``MODALITIES = ("flair", "t1", "t1ce", "t2")``.

Accepted namings (the file stem ends with the suffix; ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` are read):

======== ========== ======== ======== ======== ======== ============
naming   FLAIR      T1       T1ce     T2       labels   labels file
======== ========== ======== ======== ======== ======== ============
brats2021 ``_flair`` ``_t1`` ``_t1ce`` ``_t2`` ``_seg`` 1/2/4 (2018–2021)
brats2023 ``-t2f``  ``-t1n`` ``-t1c`` ``-t2w`` ``-seg`` 1/2/3 (2023+)
======== ========== ======== ======== ======== ======== ============

A phantom case also carries ``_tissue`` (0 background, 1 CSF, 2 GM, 3 WM). Input files are only ever read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CaseError, itk_reason
from .grid import ReferenceGrid
from .imagefiles import VOLUME_SUFFIXES, check_image_file
from .labels import BRATS2021, BRATS2023, MODALITIES, TISSUE_NAMES, LabelConvention, label_convention

if TYPE_CHECKING:  # imported where files are read, so a saved case (.npz) loads where SimpleITK is absent
    import SimpleITK as sitk

    from .atlas import AtlasAlignment

IMAGE_EXTENSIONS: tuple[str, ...] = VOLUME_SUFFIXES  # the formats a case's files may have
NAMINGS: dict[str, dict[str, str]] = {
    "brats2021": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg", "tissue": "_tissue"},
    "brats2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg", "tissue": "-tissue"},
}
NAMING_CONVENTION: dict[str, LabelConvention] = {"brats2021": BRATS2021, "brats2023": BRATS2023}
SAMPLE_CASE = Path(__file__).resolve().parents[1] / "sample_data" / "Phantom_01003"  # shipped phantom, held-out seed


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case. ``seg`` and ``tissue`` are optional; ``naming`` is None for explicit files."""

    flair: Path
    t1: Path
    t1ce: Path
    t2: Path
    seg: Path | None = None
    tissue: Path | None = None
    case_id: str = "case"
    naming: str | None = None

    def modality_paths(self) -> dict[str, Path]:
        return {m: getattr(self, m) for m in MODALITIES}


@dataclass
class Case:
    """One case on the canonical axial grid, ready for the networks.

    Attributes:
        case_id: identifier taken from the file names.
        images: ``(4, Z, Y, X)`` float32 in ``MODALITIES`` order, z-scored inside ``brain_mask``, 0 outside.
        brain_mask: ``(Z, Y, X)`` bool, voxels non-zero in any modality.
        grid: the reference input's geometry; ``grid.write(array, path)`` puts any canonical array back on it.
        labels: ``(Z, Y, X)`` uint8 class indices (see :mod:`labels`), or None.
        tissue: ``(Z, Y, X)`` uint8 tissue classes (0 background, 1 CSF, 2 GM, 3 WM), or None.
        label_convention: the convention of the files, used again when writing labels.
        intensity_stats: ``(4, 2)`` mean and standard deviation of each raw sequence over ``brain_mask`` (what
            ``images`` were z-scored with; a network trained on another normalisation gets its inputs from them).
        nonzero: ``(4, Z, Y, X)`` bool, where each raw sequence is non-zero — kept only when it is not ``brain_mask``
            for every sequence (a zero inside another sequence's brain; MONAI's ``NormalizeIntensityd(nonzero=True)``
            leaves such voxels out of its statistics); see :meth:`sequence_support`.
        original: the case as read, when this one is its resampling into a network's space
            (:func:`data.resample.resample_case`; ``grid`` then writes every result back onto ``original.grid``).
        registrations: each sequence's co-registration onto the reference, when it ran (:mod:`data.registration`).
        alignment: the head's pose against the atlas, when the case is to be turned into it on the way into a
            network's space (:mod:`data.atlas`, :func:`data.preprocess.preprocess`).
    """

    case_id: str
    images: np.ndarray
    brain_mask: np.ndarray
    grid: ReferenceGrid
    labels: np.ndarray | None = None
    tissue: np.ndarray | None = None
    label_convention: LabelConvention = BRATS2021
    files: CaseFiles | None = field(default=None, repr=False)
    intensity_stats: np.ndarray | None = field(default=None, repr=False)
    nonzero: np.ndarray | None = field(default=None, repr=False)
    original: "Case | None" = field(default=None, repr=False)
    registrations: dict | None = field(default=None, repr=False)  # sequence → data.registration.Registration
    alignment: "AtlasAlignment | None" = field(default=None, repr=False)  # the pose into the network's space

    def brain_slices(self) -> np.ndarray:
        """Indices of the axial slices that contain brain (the only ones a network needs to see)."""
        return np.flatnonzero(self.brain_mask.any(axis=(1, 2)))

    def sequence_support(self, channel: int) -> np.ndarray:
        """Where sequence ``channel`` (of ``MODALITIES``) is non-zero as read."""
        return self.brain_mask if self.nonzero is None else self.nonzero[channel]

    @property
    def as_read(self) -> "Case":
        """The case on its input grid: ``original`` when this one was resampled into a network's space, else itself."""
        return self.original if self.original is not None else self

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(z, y, x)``."""
        return self.grid.canonical_spacing

    def write_labels(self, classes: np.ndarray, path: str | Path) -> Path:
        """Write class indices as a label file in this case's convention, on its original grid."""
        return self.grid.write(self.label_convention.from_classes(classes), path)

    def save(self, path: str | Path) -> Path:
        """Save the case as read and normalised (``.npz``, no pickles); :func:`load_case` reads it back as it was.

        A saved case loads without SimpleITK or the original files (a GPU server with only torch, say) and skips
        reading and resampling; the input files remain the record of what was measured.
        """
        path = Path(path)
        if path.suffix != ".npz":
            raise CaseError(f"{path}: a saved case is an .npz file")
        if self.original is not None:
            raise CaseError(f"{path}: this case is a resampling into a network's space; save the case as read")
        arrays = {"images": self.images, "brain_mask": self.brain_mask, "case_id": np.array(self.case_id),
                  "convention": np.array(self.label_convention.name), "format": np.array(SAVED_CASE_FORMAT),
                  **{f"grid_{name}": np.asarray(getattr(self.grid, name)) for name in GRID_FIELDS}}
        arrays.update({name: getattr(self, name) for name in ("labels", "tissue", "intensity_stats", "nonzero")
                       if getattr(self, name) is not None})
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return path


SAVED_CASE_FORMAT = 1
GRID_FIELDS = ("size", "spacing", "origin", "direction")


def load_saved_case(path: str | Path) -> Case:
    """A case written by :meth:`Case.save` (read without unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{path}: saved case file does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise CaseError(f"{path}: cannot read saved case ({error})") from None
    needed = ["format", "case_id", "images", "brain_mask", "convention"] + [f"grid_{n}" for n in GRID_FIELDS]
    missing = [name for name in needed if name not in arrays]
    if missing:
        raise CaseError(f"{path}: not a saved case (missing {', '.join(missing)})")
    if int(arrays["format"]) != SAVED_CASE_FORMAT:
        raise CaseError(f"{path}: saved case format {int(arrays['format'])}, expected {SAVED_CASE_FORMAT}")
    grid = ReferenceGrid(tuple(int(v) for v in arrays["grid_size"]),
                         *(tuple(float(v) for v in arrays[f"grid_{n}"]) for n in GRID_FIELDS[1:]))
    images, brain_mask = arrays["images"], arrays["brain_mask"]
    if images.shape != (len(MODALITIES),) + grid.canonical_shape or brain_mask.shape != grid.canonical_shape:
        raise CaseError(f"{path}: arrays {images.shape} / {brain_mask.shape} do not fit the saved grid "
                        f"{grid.canonical_shape}")
    return Case(str(arrays["case_id"]), images.astype(np.float32, copy=False), brain_mask.astype(bool, copy=False),
                grid, arrays.get("labels"), arrays.get("tissue"), label_convention(str(arrays["convention"])),
                intensity_stats=arrays.get("intensity_stats"), nonzero=arrays.get("nonzero"))


def _stem(path: Path) -> str:
    name = path.name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_EXTENSIONS)


def find_case_files(folder: str | Path) -> CaseFiles:
    """Find the four modalities (and labels, tissue) of a BraTS case folder in either naming.

    Raises:
        CaseError: the folder is missing or empty, mixes namings or cases, lacks a modality, or holds one twice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(f"{folder}: not a folder (expected a BraTS case folder with _flair/_t1/_t1ce/_t2 files)")
    images = sorted(p for p in folder.iterdir() if _is_image_file(p))
    if not images:
        raise CaseError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")

    found: dict[str, dict[str, list[Path]]] = {naming: {} for naming in NAMINGS}
    for path in images:
        stem = _stem(path).lower()
        for naming, suffixes in NAMINGS.items():
            for role, suffix in suffixes.items():
                if stem.endswith(suffix):
                    found[naming].setdefault(role, []).append(path)
    used = [naming for naming in NAMINGS if found[naming]]
    if not used:
        expected = "; ".join(f"{n}: " + " ".join(s[m] for m in MODALITIES) for n, s in NAMINGS.items())
        raise CaseError(f"{folder}: no file follows a BraTS naming ({expected})")
    if len(used) > 1:
        raise CaseError(f"{folder}: files follow both the 2018-2021 and the 2023 BraTS naming; keep one case per folder")
    naming = used[0]
    roles = found[naming]
    for role, paths in roles.items():
        if len(paths) > 1:
            raise CaseError(f"{folder}: duplicate {role} images: {', '.join(p.name for p in paths)}")
    missing = [m for m in MODALITIES if m not in roles]
    if missing:
        suffixes = ", ".join(f"{m} (*{NAMINGS[naming][m]})" for m in missing)
        raise CaseError(f"{folder}: missing modality {suffixes}")
    case_ids = {role: _stem(paths[0])[: -len(NAMINGS[naming][role])] for role, paths in roles.items()}
    if len(set(case_ids.values())) > 1:
        raise CaseError(f"{folder}: files of different cases in one folder: {sorted(set(case_ids.values()))}")
    first = {role: paths[0] for role, paths in roles.items()}
    return CaseFiles(
        **{m: first[m] for m in MODALITIES},
        seg=first.get("seg"),
        tissue=first.get("tissue"),
        case_id=case_ids["flair"],
        naming=naming,
    )


def find_cases(data_dir: str | Path) -> list[Path]:
    """Case folders under ``data_dir`` (or ``data_dir`` itself when it is one), sorted by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CaseError(f"{data_dir}: data folder does not exist")
    candidates = [data_dir] + sorted(p for p in data_dir.iterdir() if p.is_dir())
    cases = []
    for folder in candidates:
        try:
            find_case_files(folder)
        except CaseError:
            continue
        cases.append(folder)
    if not cases:
        raise CaseError(f"{data_dir}: no BraTS case folders found (expected sub-folders with _flair/_t1/_t1ce/_t2 files)")
    return cases


MIN_CASE_SIZE = 8  # voxels along each axis of a sequence: fewer and the brain touches every face of the box (so it
# never looks skull-stripped) and ITK's smoothing and registrations refuse the image (a BraTS scan has 155 or more)


def check_image(path: Path, what: str, min_size: int = 2) -> ReferenceGrid:
    """What :func:`read_image` checks before it reads any voxel — the file exists, its bytes and header can be
    trusted (:func:`imagefiles.check_image_file`: truncation, NaN in NIfTI, damaged geometry), ITK reads its header
    as a 3D single-component volume of at least ``min_size`` voxels along each axis — and the grid that header
    gives; :class:`CaseError` naming the file otherwise."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{path}: {what} file does not exist")
    check_image_file(path, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise CaseError(f"{path}: cannot read {what} image ({itk_reason(error)})") from None
    if reader.GetDimension() != 3:
        raise CaseError(f"{path}: {what} image is {reader.GetDimension()}D, expected a 3D volume")
    if reader.GetNumberOfComponents() != 1:
        raise CaseError(f"{path}: {what} image has {reader.GetNumberOfComponents()} components per voxel, expected 1")
    size = tuple(int(n) for n in reader.GetSize())
    if min(size) < 2:
        raise CaseError(f"{path}: {what} image has size {size}, expected a 3D volume")
    if min(size) < min_size:
        raise CaseError(f"{path}: {what} image has size {size}: too small to analyse (a case's sequences need at "
                        f"least {min_size} voxels along each axis)")
    return ReferenceGrid.from_image(reader)


def check_case_files(files: CaseFiles) -> dict[str, ReferenceGrid]:
    """Every file of the case checked as :func:`read_image` checks it (:func:`check_image`; the sequences at least
    :data:`MIN_CASE_SIZE` voxels along each axis), before anything reads one, and the grid of each by role."""
    paths = {**files.modality_paths(), "seg": files.seg, "tissue": files.tissue}
    return {role: check_image(Path(path), "segmentation" if role == "seg" else role,
                              MIN_CASE_SIZE if role in MODALITIES else 2)
            for role, path in paths.items() if path is not None}


def read_image(path: Path, what: str, checked: bool = False) -> sitk.Image:
    """Read a 3D single-component image, or raise :class:`CaseError` naming the file; the file is checked first
    (:func:`check_image`) unless ``checked`` says it just was."""
    import SimpleITK as sitk

    path = Path(path)
    if not checked:
        check_image(path, what)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CaseError(f"{path}: cannot read {what} image ({itk_reason(error)})") from None


def _on_reference(image: sitk.Image, path: Path, what: str, grid: ReferenceGrid, reference: sitk.Image,
                  reference_path: Path, on_grid_mismatch: str, interpolator: int) -> sitk.Image:
    import SimpleITK as sitk

    if grid.matches(image):
        return image
    detail = f"{what} grid ({ReferenceGrid.from_image(image).describe()}) differs from {reference_path.name} ({grid.describe()})"
    if on_grid_mismatch == "error":
        raise CaseError(f"{path}: {detail}; pass on_grid_mismatch='resample' to resample it onto the reference")
    warnings.warn(f"{path}: {detail}; resampled onto the reference grid", stacklevel=3)
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def zscore_in_mask(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-volume z-score over ``mask`` voxels; voxels outside ``mask`` become 0. Returns float32."""
    values = volume[mask].astype(np.float64)
    std = values.std()
    if not np.isfinite(std) or std == 0:
        raise ValueError("intensity is constant inside the brain mask; cannot normalise")
    out = np.zeros(volume.shape, dtype=np.float32)
    out[mask] = ((values - values.mean()) / std).astype(np.float32)
    return out


def zscored_sequences(raw: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw sequences ``(4, ...)`` z-scored over ``mask`` (:func:`zscore_in_mask`), and the ``(4, 2)`` mean and
    standard deviation they were z-scored with (:attr:`Case.intensity_stats`)."""
    stats = np.array([[sequence[mask].mean(dtype=np.float64), sequence[mask].std(dtype=np.float64)]
                      for sequence in raw])
    return np.stack([zscore_in_mask(sequence, mask) for sequence in raw]), stats


def load_case(
    source: str | Path | CaseFiles,
    *,
    convention: str | LabelConvention | None = None,
    reference: str = "flair",
    on_grid_mismatch: str = "resample",
    coregister: bool | str = False,
    checked: bool = False,
) -> Case:
    """Read, validate and normalise one case.

    Args:
        source: a BraTS case folder, :class:`CaseFiles` for explicit files, or an ``.npz`` from :meth:`Case.save`
            (returned as saved; the other arguments then do not apply).
        convention: ``brats2021`` or ``brats2023``. Default: from the naming; for explicit files
            BraTS 2018-2021 (1/2/4) — a label file with other values is refused, never reinterpreted.
        reference: modality whose grid every output is written on.
        on_grid_mismatch: ``resample`` (linear for images, nearest for labels, with a warning) or ``error``.
        coregister: register every other sequence rigidly onto the reference first (:mod:`data.registration`);
            ``"measure first"`` (:data:`data.registration.MEASURE_FIRST`): only those measured off it; the
            registrations, applied or not (and why), are in :attr:`Case.registrations`.
        checked: the files were just checked by :func:`check_case_files` (which otherwise runs first here).

    Raises:
        CaseError: naming the file and the problem (missing/duplicate modality, not 3D, unreadable, grid mismatch,
            NaN/Inf voxels, all-zero volume, labels outside the convention).
    """
    if not isinstance(source, CaseFiles) and str(source).endswith(".npz"):
        return load_saved_case(source)

    files = source if isinstance(source, CaseFiles) else find_case_files(source)
    _check_load_options(reference, on_grid_mismatch, coregister)
    if convention is not None:
        convention = label_convention(convention)
    else:
        convention = NAMING_CONVENTION[files.naming or "brats2021"]

    paths = files.modality_paths()
    seen: dict[Path, str] = {}
    for modality, path in paths.items():
        resolved = Path(path).resolve()
        if resolved in seen:
            raise CaseError(f"{path}: the same file is given as {seen[resolved]} and {modality}")
        seen[resolved] = modality
    if not checked:
        check_case_files(files)  # every file, before any is read
    reference_image = read_image(Path(paths[reference]), reference, checked=True)
    grid = ReferenceGrid.from_image(reference_image)
    onto = (grid, reference_image, Path(paths[reference]), on_grid_mismatch)
    registrations: dict = {}
    volumes = []
    for m in MODALITIES:
        image = reference_image if m == reference else read_image(Path(paths[m]), m, checked=True)
        if coregister and m != reference:
            from .registration import MEASURE_FIRST, coregistration, onto_reference

            registrations[m] = coregistration(reference_image, image, m, reference, coregister == MEASURE_FIRST)
            image = onto_reference(image, reference_image, registrations[m]) if registrations[m].applied else image
        volumes.append(_read_sequence(Path(paths[m]), m, image, *onto))
    nonzero = np.stack(volumes) != 0
    brain_mask = nonzero.any(axis=0)
    images = np.empty((len(MODALITIES),) + brain_mask.shape, dtype=np.float32)
    stats = np.array([[volume[brain_mask].mean(dtype=np.float64), volume[brain_mask].std(dtype=np.float64)]
                      for volume in volumes])
    for channel, (modality, volume) in enumerate(zip(MODALITIES, volumes)):
        try:
            images[channel] = zscore_in_mask(volume, brain_mask)
        except ValueError as error:
            raise CaseError(f"{paths[modality]}: {modality}: {error}") from None
    labels = None
    if files.seg is not None:
        labels = _read_labels(files.seg, "segmentation", *onto)
        try:
            labels = convention.to_classes(labels)
        except ValueError as error:
            raise CaseError(f"{files.seg}: {error}") from None
    tissue = None
    if files.tissue is not None:
        tissue = _read_labels(files.tissue, "tissue", *onto)
        if tissue.size and tissue.max() >= len(TISSUE_NAMES):
            raise CaseError(f"{files.tissue}: tissue values must lie in 0..{len(TISSUE_NAMES) - 1} {TISSUE_NAMES}")
        tissue = tissue.astype(np.uint8)
    return Case(files.case_id, images, brain_mask, grid, labels, tissue, convention, files, stats,
                sequence_nonzero(nonzero, brain_mask), registrations=registrations if coregister else None)


def _check_load_options(reference: str, on_grid_mismatch: str, coregister: bool | str) -> None:
    from .registration import MEASURE_FIRST

    if reference not in MODALITIES:
        raise CaseError(f"reference modality {reference!r} is not one of {MODALITIES}")
    if coregister not in (True, False, MEASURE_FIRST):
        raise ValueError(f"coregister={coregister!r}: True, False or {MEASURE_FIRST!r}")
    if on_grid_mismatch not in ("resample", "error"):
        raise CaseError(f"on_grid_mismatch must be 'resample' or 'error', got {on_grid_mismatch!r}")


def sequence_nonzero(nonzero: np.ndarray, brain_mask: np.ndarray) -> np.ndarray | None:
    """``nonzero`` when some sequence is zero somewhere inside ``brain_mask``, else None (:attr:`Case.nonzero`)."""
    return None if nonzero.all(axis=0)[brain_mask].all() else nonzero


def _read_sequence(path: Path, modality: str, image: sitk.Image | None, grid: ReferenceGrid, reference: sitk.Image,
                   reference_path: Path, on_grid_mismatch: str) -> np.ndarray:
    """One sequence as a canonical float32 array on the reference grid (resampled when its grid differs), refused
    when it holds NaN/Inf (NIfTI files are refused on disk, before ITK hides them) or nothing."""
    import SimpleITK as sitk

    image = image if image is not None else read_image(path, modality)
    image = _on_reference(image, path, modality, grid, reference, reference_path, on_grid_mismatch, sitk.sitkLinear)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    nonfinite = int(np.count_nonzero(~np.isfinite(array)))
    if nonfinite:
        raise CaseError(f"{path}: {modality} image has {nonfinite} NaN/Inf voxels")
    if not array.any():
        raise CaseError(f"{path}: {modality} image is all zero")
    return grid.to_canonical(array)


def _label_values(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if not np.isfinite(array).all() or np.any(array != np.round(array)) or array.min() < 0:
        raise CaseError(f"{path}: {what} must hold non-negative integer labels")
    return array.astype(np.int64)


def _read_labels(path: Path, what: str, grid: ReferenceGrid, reference: sitk.Image, reference_path: Path,
                 on_grid_mismatch: str) -> np.ndarray:
    """A label file of the case (checked with the others by :func:`check_case_files`) on the reference grid."""
    import SimpleITK as sitk

    image = read_image(Path(path), what, checked=True)
    image = _on_reference(image, Path(path), what, grid, reference, reference_path, on_grid_mismatch,
                          sitk.sitkNearestNeighbor)
    return grid.to_canonical(_label_values(sitk.GetArrayFromImage(image), path, what))


def read_canonical(path: str | Path, what: str = "image") -> tuple[np.ndarray, ReferenceGrid]:
    """Any 3D single-component image file as a canonical ``(z, y, x)`` array, with its own grid."""
    import SimpleITK as sitk

    image = read_image(Path(path), what)
    grid = ReferenceGrid.from_image(image)
    return grid.to_canonical(sitk.GetArrayFromImage(image)), grid


def read_label_file(path: str | Path, convention: str | LabelConvention, what: str = "labels"
                    ) -> tuple[np.ndarray, ReferenceGrid]:
    """A label file on its own grid, as canonical class indices, with that grid (for scoring files directly)."""
    array, grid = read_canonical(path, what)
    values = _label_values(array, Path(path), what)
    try:
        classes = label_convention(convention).to_classes(values)
    except ValueError as error:
        raise CaseError(f"{path}: {error}") from None
    return classes, grid


def as_case(source: Case | str | Path | CaseFiles) -> Case:
    """``source`` itself when it is a :class:`Case`, else :func:`load_case` of it."""
    return source if isinstance(source, Case) else load_case(source)
