"""The same head through another acquisition grid: another voxel size, axes tilted, flipped or permuted.

A case folder is resampled, every file of it, onto a new grid about the same physical centre that covers the same
physical box — the anatomy stays where it is in the world, only the voxels change, as when the same patient is
scanned with other settings. With its ground truth carried along (nearest neighbour), such a case measures how a
network copes with a scan that is not on its training grid, against the axis-aligned original.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from .case import MODALITIES, CaseFiles, find_case_files, load_case
from .grid import ReferenceGrid, divided_by_support, moved_grid
from .resample import raw_sequences, resample_array, resample_sequences

if TYPE_CHECKING:
    import SimpleITK as sitk


@dataclass(frozen=True)
class Acquisition:
    """A grid to see a case through: voxel size (mm, along the image axes i, j, k), a tilt about each LPS axis
    (degrees, applied x then y then z), and the image axes' order and signs (``axes``: for each image axis, the
    anatomical axis 0 L, 1 P, 2 S it runs along; ``flips``: which of them run backwards). ``stripped``: the
    sequences skull-stripped at the new grid (a sharp brain edge, :func:`data.resample.resample_sequences`), or — False
    — the skull-stripped volumes merely interpolated, their edge blurred into a dark rim (what resampling a BraTS case
    with any image tool gives). ``motion_mm`` / ``motion_degrees``: the head moved between series — T1, T1ce and T2
    are each their own series, written on their own grid, after a seeded rigid motion of the head (a translation of
    that length and a rotation of that angle, about the case's centre, in directions drawn from ``seed``), so
    that their world coordinates are off the FLAIR's by that motion, as separate acquisitions are; the FLAIR, the
    labels and the tissue map stay as they were (:meth:`motions` gives each motion); with ``motion_on_one_grid`` the moved
series are then resampled onto the FLAIR's grid (linearly; a stripped one re-stripped there), as a PACS or a
scanner's reformat does — one grid, but not aligned. ``head_tilt_degrees``: the
    patient's head itself turned in the scanner (about each LPS axis, as ``tilt_degrees``, about the case's centre),
    every file with it — the ground truth too (:meth:`pose`). ``skull``: the head around the brain left on, as a scan
    that was not skull-stripped — no head image ships with the template, so a synthetic one (:func:`add_head`): a
    cerebrospinal-fluid rim, a dark skull and a bright scalp following the brain's outline, and noise in the air
    (drawn from ``seed``). ``bias_field``: a smooth multiplicative intensity field across the head, each sequence its
own, of up to that relative strength; ``noise``: Rician noise in the brain, its standard deviation that share of the
sequence's median there (both drawn from ``seed``; the zeros outside a stripped brain stay zero)."""

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tilt_degrees: tuple[float, float, float] = (0.0, 0.0, 0.0)
    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)
    stripped: bool = True
    motion_mm: float = 0.0
    motion_degrees: float = 0.0
    seed: int = 0
    head_tilt_degrees: tuple[float, float, float] = (0.0, 0.0, 0.0)
    skull: bool = False
    motion_on_one_grid: bool = False
    bias_field: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        if sorted(self.axes) != [0, 1, 2]:
            raise UsageError(f"acquisition axes {self.axes}: a permutation of 0, 1, 2")
        if min(self.spacing_mm) <= 0:
            raise UsageError(f"acquisition voxel size {self.spacing_mm}: must be positive")
        if self.motion_mm < 0 or self.motion_degrees < 0:
            raise UsageError(f"head motion {self.motion_mm} mm / {self.motion_degrees}°: must not be negative")

    def motions(self, grid: ReferenceGrid) -> dict[str, "sitk.Euler3DTransform"]:
        """Sequence → the rigid motion ``M`` of the head before it was acquired (about ``grid``'s centre): the
        sequence shows at ``M(p)`` what the FLAIR shows at ``p``, so ``M`` is what co-registering it to the FLAIR
        should find (ITK's convention). Empty without motion."""
        import SimpleITK as sitk

        if not (self.motion_mm or self.motion_degrees):
            return {}
        centre = _centre(grid)
        moved = {}
        for channel, sequence in enumerate(MODALITIES):
            if sequence == "flair":
                continue
            rng = np.random.default_rng((self.seed, channel))
            axis, shift = rng.normal(size=3), rng.normal(size=3)
            rotation = sitk.VersorRigid3DTransform()
            rotation.SetCenter(tuple(float(c) for c in centre))
            rotation.SetRotation(tuple(float(a) for a in axis / np.linalg.norm(axis)),
                                 float(np.deg2rad(self.motion_degrees)))
            rotation.SetTranslation(tuple(float(t) for t in shift / np.linalg.norm(shift) * self.motion_mm))
            motion = sitk.Euler3DTransform()
            motion.SetCenter(rotation.GetCenter())
            motion.SetMatrix(rotation.GetMatrix())
            motion.SetTranslation(rotation.GetTranslation())
            moved[sequence] = motion
        return moved

    def pose(self, grid: ReferenceGrid) -> "sitk.AffineTransform | None":
        """The head's turn in the scanner (about ``grid``'s centre), None when it lies as the case does."""
        import SimpleITK as sitk

        if not any(self.head_tilt_degrees):
            return None
        turn = sitk.AffineTransform(3)
        turn.SetCenter(tuple(float(c) for c in _centre(grid)))
        turn.SetMatrix(tuple(float(v) for v in _rotation(self.head_tilt_degrees).ravel()))
        return turn

    @property
    def direction(self) -> np.ndarray:
        """3×3: column m is the direction of image axis m in LPS."""
        signs = np.where(self.flips, -1.0, 1.0)
        return _rotation(self.tilt_degrees) @ (np.eye(3)[:, list(self.axes)] * signs)

    def grid_for(self, grid: ReferenceGrid) -> ReferenceGrid:
        """The grid of this acquisition about ``grid``'s centre, covering ``grid``'s physical box."""
        old_direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
        old_size, old_spacing = np.asarray(grid.size, dtype=float), np.asarray(grid.spacing)
        centre = np.asarray(grid.origin) + old_direction @ ((old_size - 1) * old_spacing / 2)
        corners = np.array([(np.array(bits) - 0.5) * old_size * old_spacing for bits in np.ndindex(2, 2, 2)])
        direction = self.direction
        spacing = np.asarray(self.spacing_mm, dtype=float)
        reach = 2 * np.abs(corners @ old_direction.T @ direction).max(axis=0)  # the box along each new image axis
        size = np.maximum(2, np.ceil(reach / spacing)).astype(int)
        origin = centre - direction @ ((size - 1) * spacing) / 2
        return ReferenceGrid(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                             tuple(float(o) for o in origin), tuple(float(d) for d in direction.ravel()))


def _rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """Turns about the LPS x, then y, then z axis."""
    rotation = np.eye(3)
    for axis, value in enumerate(degrees):
        angle = np.deg2rad(value)
        turn = np.eye(3)
        a, b = [i for i in range(3) if i != axis]
        turn[a, a] = turn[b, b] = np.cos(angle)
        turn[a, b], turn[b, a] = -np.sin(angle), np.sin(angle)
        rotation = turn @ rotation
    return rotation


def _centre(grid: ReferenceGrid) -> np.ndarray:
    size, spacing = np.asarray(grid.size, dtype=float), np.asarray(grid.spacing)
    return np.asarray(grid.origin) + np.asarray(grid.direction, dtype=float).reshape(3, 3) @ ((size - 1) * spacing / 2)


def reacquire(source: str | Path | CaseFiles, out: str | Path, acquisition: Acquisition) -> CaseFiles:
    """Write ``source``'s files, seen through ``acquisition``, into the folder ``out`` (same names): the sequences
    linearly (skull-stripped at the new grid unless ``acquisition.stripped`` is False; the head added around the
    brain when ``acquisition.skull``), labels and tissue by nearest neighbour. The source files are only read."""
    files = source if isinstance(source, CaseFiles) else find_case_files(source)
    case = load_case(files)
    grid = acquisition.grid_for(case.grid)
    pose = acquisition.pose(case.grid)
    posed = case if pose is None else replace(case, grid=moved_grid(case.grid, pose))  # the same voxels, turned
    if acquisition.stripped:
        raw, _ = resample_sequences(posed, grid)
    else:
        raw = np.stack([resample_array(sequence, posed.grid, grid) for sequence in raw_sequences(posed)])
    if acquisition.bias_field or acquisition.noise:
        raw = scanner_intensities(raw, acquisition.bias_field, acquisition.noise, acquisition.seed)
    if acquisition.skull:
        raw = add_head(raw, grid.canonical_spacing, acquisition.seed)
    out = Path(out)
    motions = acquisition.motions(case.grid)
    written = {}
    for channel, role in enumerate(MODALITIES):
        sequence, sequence_grid = raw[channel], grid
        if role in motions:
            sequence_grid = moved_grid(grid, motions[role])
            if acquisition.motion_on_one_grid:
                sequence = _onto(sequence, sequence_grid, grid, acquisition.stripped)
                sequence_grid = grid
        written[role] = sequence_grid.write(sequence, out / Path(getattr(files, role)).name)
    if case.labels is not None:
        labels = case.label_convention.from_classes(resample_array(case.labels, posed.grid, grid))
        written["seg"] = grid.write(labels, out / Path(files.seg).name)
    if case.tissue is not None:
        written["tissue"] = grid.write(resample_array(case.tissue, posed.grid, grid), out / Path(files.tissue).name)
    return CaseFiles(**written, case_id=files.case_id, naming=files.naming)


def _onto(sequence: np.ndarray, source: ReferenceGrid, target: ReferenceGrid, stripped: bool) -> np.ndarray:
    """A sequence resampled linearly from ``source`` onto ``target``; ``stripped``: its support carried along and
    cut at one half, the values divided by it (a sharp edge, as :func:`data.resample.resample_sequences`)."""

    values = resample_array(sequence, source, target)
    if not stripped:
        return values
    return divided_by_support(values, resample_array((sequence != 0).astype(np.float32), source, target))


def scanner_intensities(raw: np.ndarray, bias_field: float, noise: float, seed: int) -> np.ndarray:
    """Sequences ``(4, ...)`` (0 outside the brain) under a smooth bias field (per sequence, a random quadratic in
    the image's normalised coordinates, scaled so that it varies by up to ``bias_field`` relative) and Rician noise
    of ``noise`` × the sequence's median in the brain; the zeros stay zero."""
    rng = np.random.default_rng((seed, 1 << 17))
    brain = (raw != 0).any(axis=0)
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in brain.shape], indexing="ij")
    terms = [*axes, *(a * b for i, a in enumerate(axes) for b in axes[i:])]  # linear and quadratic
    out = raw.astype(np.float32, copy=True)
    for channel in range(len(raw)):
        if bias_field:
            field = sum(float(c) * term for c, term in zip(rng.normal(size=len(terms)), terms))
            field = field / max(float(np.abs(field).max()), 1e-6) * bias_field
            out[channel] *= np.exp(field)
        if noise:
            sigma = noise * float(np.median(raw[channel][brain])) if brain.any() else 0.0
            real = out[channel] + rng.normal(0.0, sigma, brain.shape).astype(np.float32)
            imaginary = rng.normal(0.0, sigma, brain.shape).astype(np.float32)
            out[channel] = np.where(brain, np.hypot(real, imaginary), 0.0)
    return out


def random_acquisition(rng: np.random.Generator, voxel_mm: float = 1.0) -> Acquisition:
    """A clinical acquisition drawn at random (training augmentation, issue 35) of a case whose voxels are
    ``voxel_mm``: in-plane voxels of 0.8–2 and slices of 1–6 times that (BraTS's 1 mm: 0.8–2 mm and 1–6 mm), mostly
    axial, else sagittal or coronal; the grid tilted by up to 20° and maybe flipped; half interpolated after
    skull-stripping (the rim), half stripped at the new grid; the head moved by up to 3 mm and 3° between series, half
    of them then put on one grid; a bias field of up to 30 % and noise of up to 5 %."""
    in_plane, thickness = voxel_mm * rng.uniform(0.8, 2.0), voxel_mm * rng.uniform(1.0, 6.0)
    spacing = [in_plane * rng.uniform(0.9, 1.1) for _ in range(3)]
    spacing[int(rng.choice(3, p=[0.2, 0.2, 0.6]))] = thickness  # the slice axis: L-R, P-A or I-S (axial)
    tilt = np.zeros(3)
    tilt[int(rng.integers(3))] = rng.uniform(-20.0, 20.0)
    return Acquisition(spacing_mm=tuple(float(s) for s in spacing), tilt_degrees=tuple(float(t) for t in tilt),
                       flips=tuple(bool(f) for f in rng.random(3) < 0.3), stripped=bool(rng.random() < 0.5),
                       motion_mm=float(rng.uniform(0.0, 3.0)), motion_degrees=float(rng.uniform(0.0, 3.0)),
                       motion_on_one_grid=bool(rng.random() < 0.5), seed=int(rng.integers(1 << 31)),
                       bias_field=float(rng.uniform(0.0, 0.3)), noise=float(rng.uniform(0.0, 0.05)))


# Around the brain, outwards (mm from its edge): cerebrospinal fluid, skull (dark in every sequence), scalp (fat:
# bright in T1); each sequence's intensity there relative to its median in the brain (in MODALITIES order).
HEAD_LAYERS_MM = {"csf": (0.0, 3.0), "skull": (3.0, 8.0), "scalp": (8.0, 14.0)}
HEAD_INTENSITY = {"csf": (0.25, 0.3, 0.35, 1.8), "skull": (0.05, 0.05, 0.05, 0.05), "scalp": (0.9, 1.5, 1.4, 0.8)}
AIR_NOISE = 0.02  # Rayleigh noise in the air, relative to the brain's median


def add_head(raw: np.ndarray, spacing_mm: tuple[float, float, float], seed: int) -> np.ndarray:
    """Skull-stripped sequences ``(4, ...)`` (canonical, 0 outside the brain) with a synthetic head around the brain
    (:data:`HEAD_LAYERS_MM`, :data:`HEAD_INTENSITY`, a 10 % texture) and noise in the air: a scan as the scanner
    gives it, before any skull-stripping. The brain's voxels are not changed."""
    from scipy import ndimage

    brain = (raw != 0).any(axis=0)
    outside_mm = ndimage.distance_transform_edt(~brain, sampling=spacing_mm)
    rng = np.random.default_rng((seed, 1 << 16))
    head = raw.copy()
    for channel in range(len(raw)):
        median = float(np.median(raw[channel][brain]))
        values = AIR_NOISE * median * rng.rayleigh(1.0, size=brain.shape)
        for layer, (inner, outer) in HEAD_LAYERS_MM.items():
            shell = (outside_mm > inner) & (outside_mm <= outer)
            texture = 1.0 + 0.1 * rng.standard_normal(int(shell.sum()))
            values[shell] = HEAD_INTENSITY[layer][channel] * median * texture
        head[channel] = np.where(brain, raw[channel], values)
    return head.astype(np.float32)


