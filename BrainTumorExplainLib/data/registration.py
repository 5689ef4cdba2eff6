"""Co-registration of a case's sequences: each one moved rigidly onto the reference sequence (the FLAIR).

A clinician's four sequences are separate acquisitions; between them the head moves by a few millimetres and
degrees, and a network trained on co-registered BraTS data then sees a T1c that is not where the FLAIR is. Each
sequence is registered to the reference by SimpleITK's registration framework (the well-kept tool, not our own):
a rigid transform (``Euler3DTransform``, rotation about the reference's centre) that maximises Mattes mutual
information — the right metric between sequences whose intensities differ — from the scanner's own world
coordinates (identity), over three resolutions (shrink 4, 2, 1; smoothing 2, 1, 0 mm), sampled at seeded random
points so that the same inputs give the same transform.

The result is checked before it is used (:data:`MAX_MOTION_MM`): mutual information on every voxel must be better
than as acquired, and no point of the reference's box may move further than a head moves between series; otherwise
the sequence is kept as acquired and the registration says why. ``transform`` maps a point of the reference to the
same anatomy in the moving sequence (ITK's convention), so ``sitk.Resample(moving, reference, transform)`` brings the
sequence onto the reference grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError

if TYPE_CHECKING:
    import SimpleITK as sitk

    from .grid import ReferenceGrid

MAX_MOTION_MM = 30.0  # a registration that moves a corner of the reference's box further than this is not believed
_SHRINK, _SMOOTH_MM = (4, 2, 1), (2.0, 1.0, 0.0)
MIN_SIZE = 4 * _SHRINK[0]  # voxels along each axis: below, the coarsest level has too few to sample (ITK fails)


@dataclass(frozen=True)
class Registration:
    """One sequence's rigid co-registration to the reference: Euler angles (radians, about x, y, z of LPS) and
    translation (mm), about ``centre``; mutual information (SimpleITK's Mattes metric: lower is better) as acquired
    and after; ``applied`` False when the check refused it (``reason`` says why)."""

    sequence: str
    reference: str
    angles: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    centre: tuple[float, float, float]
    metric_before: float
    metric_after: float
    largest_motion_mm: float
    applied: bool
    reason: str = ""

    def transform(self) -> "sitk.Euler3DTransform":
        """The registration as an ITK transform (identity when it was not applied)."""
        import SimpleITK as sitk

        transform = sitk.Euler3DTransform()
        transform.SetCenter(self.centre)
        if self.applied:
            transform.SetRotation(*self.angles)
            transform.SetTranslation(self.translation_mm)
        return transform

    @property
    def rotation_degrees(self) -> tuple[float, float, float]:
        return tuple(float(np.degrees(angle)) for angle in self.angles)

    def to_dict(self) -> dict:
        return {**asdict(self), "rotation_degrees": [round(value, 3) for value in self.rotation_degrees]}


def _float(image: "sitk.Image") -> "sitk.Image":
    import SimpleITK as sitk

    return sitk.Cast(image, sitk.sitkFloat32)


def _box_corners(image: "sitk.Image") -> np.ndarray:
    size = np.asarray(image.GetSize()) - 1
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in np.array(bits) * size))
                     for bits in np.ndindex(2, 2, 2)])


def largest_motion_mm(transform: "sitk.Transform", image: "sitk.Image") -> float:
    """How far the transform moves the furthest corner of ``image``'s box (mm): a rigid motion's largest
    displacement of any point inside it."""
    corners = _box_corners(image)
    moved = np.array([transform.TransformPoint(tuple(corner)) for corner in corners])
    return float(np.linalg.norm(moved - corners, axis=1).max())


def mutual_information(fixed: "sitk.Image", moving: "sitk.Image", transform: "sitk.Transform",
                       fixed_mask: "sitk.Image | None" = None) -> float:
    """Mattes mutual information of ``moving`` through ``transform`` against ``fixed``, on every voxel of ``fixed``
    (or of ``fixed_mask``; lower is better: SimpleITK minimises its negative)."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(_float(fixed), _float(moving)))


def check_seed(seed: int) -> int:
    """``seed`` when it fixes the metric's sampling: SimpleITK reads seed 0 as "the wall clock", a different
    transform every run."""
    import SimpleITK as sitk

    if seed == sitk.sitkWallClock:
        raise ValueError("the registration's seed must not be 0 (SimpleITK's wall-clock seed)")
    return seed


def rigid_registration(fixed: "sitk.Image", moving: "sitk.Image", sequence: str, reference: str,
                       seed: int = 1, sampling: float = 0.05) -> Registration:
    """Register ``moving`` (``sequence``) rigidly onto ``fixed`` (``reference``); see the module notes."""
    import SimpleITK as sitk

    fixed, moving = _float(fixed), _float(moving)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)
    if min(fixed.GetSize() + moving.GetSize()) < MIN_SIZE:
        before = mutual_information(fixed, moving, initial)
        return Registration(sequence, reference, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), tuple(float(c) for c in centre),
                            before, before, 0.0, applied=False,
                            reason=f"too small to register (fewer than {MIN_SIZE} voxels along an axis)")
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    check_seed(seed)
    method.SetMetricSamplingPercentage(sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(_SHRINK))
    method.SetSmoothingSigmasPerLevel(list(_SMOOTH_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    found = sitk.Euler3DTransform(sitk.CompositeTransform(method.Execute(fixed, moving)).GetNthTransform(0))
    before = mutual_information(fixed, moving, initial)
    after = mutual_information(fixed, moving, found)
    motion = largest_motion_mm(found, fixed)
    reason = ("" if after < before and motion <= MAX_MOTION_MM else
              f"mutual information not improved ({after:.4f} vs {before:.4f} as acquired)" if after >= before else
              f"it would move the image's corners by {motion:.1f} mm (more than {MAX_MOTION_MM:g} mm)")
    angles = (found.GetAngleX(), found.GetAngleY(), found.GetAngleZ())
    return Registration(sequence, reference, tuple(float(a) for a in angles),
                        tuple(float(t) for t in found.GetTranslation()), tuple(float(c) for c in centre),
                        before, after, motion, applied=not reason, reason=reason)


def onto_reference(moving: "sitk.Image", fixed: "sitk.Image", registration: Registration) -> "sitk.Image":
    """``moving`` resampled onto ``fixed``'s grid through the registration (linear; 0 outside). A skull-stripped
    sequence stays stripped with a sharp edge: its own support (non-zero voxels) is carried along the same way, the
    values divided by it where it covers at least half a voxel and zero elsewhere — plain interpolation would blur
    the brain's edge into a dark rim, which networks read as tumour (docs/analyses.md, "Scans off the network's
    grid"). A scan without zeros has support 1 wherever it was imaged, so this changes nothing there."""
    import SimpleITK as sitk

    transform = registration.transform()
    values = sitk.GetArrayFromImage(sitk.Resample(_float(moving), fixed, transform, sitk.sitkLinear, 0.0))
    support = sitk.GetArrayFromImage(sitk.Resample(_float(moving != 0), fixed, transform, sitk.sitkLinear, 0.0))
    inside = support >= 0.5
    stripped = np.zeros(values.shape, dtype=np.float32)
    stripped[inside] = values[inside] / support[inside]
    image = sitk.GetImageFromArray(stripped)
    image.CopyInformation(fixed)
    return image


COREGISTER_MODES = ("auto", "always", "never")


def sequences_share_one_grid(grids: dict[str, "ReferenceGrid"]) -> bool:
    """Whether the four sequences lie on one grid, from the grids of a case's files by role
    (:func:`data.case.check_case_files`, which checks each file before reading its header; BraTS-preprocessed
    sequences do, separate acquisitions almost never do)."""
    from .case import MODALITIES

    first, *others = (grids[m] for m in MODALITIES)
    return all(first.matches(grid) for grid in others)


def wants_coregistration(mode: str, grids: dict[str, "ReferenceGrid"]) -> tuple[bool, str]:
    """Whether to co-register (``mode``: auto, always, never) a case whose files have ``grids``
    (:func:`data.case.check_case_files`) and why, for the summary."""
    if mode not in COREGISTER_MODES:
        raise UsageError(f"--coregister {mode}: expected one of {', '.join(COREGISTER_MODES)}")
    if mode != "auto":
        return mode == "always", f"--coregister {mode}"
    if sequences_share_one_grid(grids):
        return False, "the four sequences share one grid, as co-registered (BraTS-preprocessed) data do"
    return True, "the sequences lie on different grids, as separate acquisitions do"


def read_linear_transform(path: str | Path) -> np.ndarray:
    """A linear ITK transform file (``.tfm``, as explain writes them) as its 4×4 matrix: LPS, ITK's convention
    (a point of the fixed image → the same anatomy in the moving one)."""
    import SimpleITK as sitk

    transform = sitk.ReadTransform(str(path))
    offset = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis, unit in enumerate(np.eye(3)):
        matrix[:3, axis] = np.array(transform.TransformPoint(tuple(float(v) for v in unit))) - offset
    matrix[:3, 3] = offset
    return matrix
