"""Co-registration of a case's sequences: each one moved rigidly onto the reference sequence (the FLAIR).

A clinician's four sequences are separate acquisitions; between them the head moves by a few millimetres and
degrees, and a network trained on co-registered BraTS data then sees a T1c that is not where the FLAIR is. Each
sequence is registered to the reference by SimpleITK's registration framework (the well-kept tool, not our own):
a rigid transform (``Euler3DTransform``, rotation about the reference's centre) that maximises Mattes mutual
information — the right metric between sequences whose intensities differ — from the scanner's own world
coordinates (identity), over three resolutions (shrink 4, 2, 1; smoothing 2, 1, 0 mm), sampled at seeded random
points so that the same inputs give the same transform.

Sharing one grid is no evidence of alignment: a PACS or a scanner's reformat puts separately acquired series onto one
grid without registering them. So sequences on one grid are measured first (:func:`misalignment_mm`: one coarse level
of the same registration, about half a second a sequence) and registered only when the measurement finds them off
by more than :data:`ALIGNMENT_TOLERANCE_MM` anywhere in the brain; every registration is measured again after, with
the same instrument, so the summary gives the misalignment before and after (:func:`coregistration`).

The result is checked before it is used (:data:`MAX_MOTION_MM`): mutual information on every voxel must be better
than as acquired, and no point of the reference's box may move further than a head moves between series; otherwise
the sequence is kept as acquired and the registration says why. ``transform`` maps a point of the reference to the
same anatomy in the moving sequence (ITK's convention), so ``sitk.Resample(moving, reference, transform)`` brings the
sequence onto the reference grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError, itk_reason
from .grid import divided_by_support
from .labels import MODALITIES

if TYPE_CHECKING:
    import SimpleITK as sitk

    from .grid import ReferenceGrid

MAX_MOTION_MM = 30.0  # a registration that moves a corner of the reference's box further than this is not believed
_SHRINK, _SMOOTH_MM = (4, 2, 1), (2.0, 1.0, 0.0)
MIN_SIZE = 4 * _SHRINK[0]  # voxels along each axis: below, the coarsest level has too few to sample (ITK fails)
ALIGNMENT_TOLERANCE_MM = 1.5  # above the quick measurement's reading on aligned phantoms (tests), well below a 3 mm/3° motion's
_CHECK_ITERATIONS = 50
_CHECK_VOXEL_MM = 4.0  # the quick measurement's resolution: coarser reads more than a millimetre on aligned images


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
    misaligned_mm: float | None = None  # measured (misalignment_mm) as acquired
    residual_mm: float | None = None  # measured the same way after the registration was applied
    measured_only: bool = False  # only measured (MEASURE_FIRST) and found aligned, or not measurable: not registered

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


def coregistration_state(registrations: dict | None) -> str:
    """The co-registration step in a few words for a case's :attr:`~data.case.Case.registrations`: skipped; measured,
    none registered (every sequence only measured); ran (some sequence registered); ran, none applied (every
    registration refused by its check)."""
    if registrations is None:
        return "skipped"
    if any(found.applied for found in registrations.values()):
        return "ran"
    return ("measured, none registered" if all(found.measured_only for found in registrations.values())
            else "ran, none applied")


def registration_words(found: dict) -> str:
    """One registration (:meth:`Registration.to_dict`, as ``summary.json`` keeps it) in words: how far it moved the
    sequence and the misalignment measured before and after, or why the sequence was kept as acquired."""
    if not found["applied"]:
        return f"kept as acquired ({found['reason']})"
    words = (f"moved onto the {found['reference']} by up to {found['largest_motion_mm']:.1f} mm "
             f"(rotation {max(map(abs, found['rotation_degrees'])):.1f}°)")
    if found.get("misaligned_mm") is not None and found.get("residual_mm") is not None:
        words += f"; measured off by {found['misaligned_mm']:.1f} mm before, {found['residual_mm']:.1f} mm after"
    return words


def _float(image: "sitk.Image") -> "sitk.Image":
    import SimpleITK as sitk

    return sitk.Cast(image, sitk.sitkFloat32)


def _box_corners(image: "sitk.Image") -> np.ndarray:
    size = np.asarray(image.GetSize()) - 1
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in np.array(bits) * size))
                     for bits in np.ndindex(2, 2, 2)])


def _brain_corners(image: "sitk.Image") -> np.ndarray:
    """The corners of the bounding box of ``image``'s non-zero voxels (its whole box when it has no zeros)."""
    import SimpleITK as sitk

    voxels = np.argwhere(sitk.GetArrayViewFromImage(image) != 0)
    if not len(voxels):
        return _box_corners(image)
    low, high = voxels.min(axis=0)[::-1], voxels.max(axis=0)[::-1]  # x, y, z indices
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(h if bit else l) for bit, l, h in
                                                                         zip(bits, low, high)))
                     for bits in np.ndindex(2, 2, 2)])


def largest_motion_mm(transform: "sitk.Transform", image: "sitk.Image", brain: bool = False) -> float:
    """How far the transform moves the furthest corner of ``image``'s box (mm) — with ``brain``, of the box of its
    non-zero voxels: a rigid motion's largest displacement of any point inside it."""
    corners = _brain_corners(image) if brain else _box_corners(image)
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


def _centred_identity(fixed: "sitk.Image") -> "sitk.Euler3DTransform":
    import SimpleITK as sitk

    initial = sitk.Euler3DTransform()
    initial.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    return initial


def _rigid(fixed: "sitk.Image", moving: "sitk.Image", shrink: tuple[int, ...], smooth_mm: tuple[float, ...],
           iterations: int, seed: int, sampling: float) -> "sitk.Euler3DTransform":
    """The rigid Mattes-MI registration of the module notes at the resolutions ``shrink`` / ``smooth_mm``."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    check_seed(seed)
    method.SetMetricSamplingPercentage(sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(smooth_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(_centred_identity(fixed), inPlace=False)
    return sitk.Euler3DTransform(sitk.CompositeTransform(method.Execute(fixed, moving)).GetNthTransform(0))


def _too_small(*images: "sitk.Image") -> bool:
    return min(size for image in images for size in image.GetSize()) < MIN_SIZE


def misalignment_mm(fixed: "sitk.Image", moving: "sitk.Image", seed: int = 1) -> float | None:
    """How far ``moving`` lies off ``fixed`` (mm): the largest displacement over the box of ``fixed``'s non-zero
    voxels (the brain, when stripped) that one coarse level of the registration finds (shrunk to voxels of about
    :data:`_CHECK_VOXEL_MM`, 2 mm smoothing, :data:`_CHECK_ITERATIONS` steps; seeded). A quick measurement, not a
    registration: its reading on aligned sequences stays under :data:`ALIGNMENT_TOLERANCE_MM`. None when the images
    are too small to register or ITK finds too little overlap to measure with."""
    fixed, moving = _float(fixed), _float(moving)
    if _too_small(fixed, moving):
        return None
    shrink = max(1, min(round(_CHECK_VOXEL_MM / max(fixed.GetSpacing())), min(fixed.GetSize()) // _SHRINK[0]))
    try:
        found = _rigid(fixed, moving, (shrink,), (_SMOOTH_MM[0],), _CHECK_ITERATIONS, seed, 0.1)
    except RuntimeError:  # ITK finds too few samples where the images overlap: nothing to measure with
        return None
    return largest_motion_mm(found, fixed, brain=True)


def coregistration(fixed: "sitk.Image", moving: "sitk.Image", sequence: str, reference: str,
                   measure_first: bool = False) -> Registration:
    """``moving`` co-registered onto ``fixed`` (:func:`rigid_registration`), its misalignment measured before and
    after (:func:`misalignment_mm`); with ``measure_first``, registered only when the measurement finds it off by
    more than :data:`ALIGNMENT_TOLERANCE_MM` (otherwise a registration not applied, saying so)."""
    before = misalignment_mm(fixed, moving)
    if measure_first and (before is None or before <= ALIGNMENT_TOLERANCE_MM):
        reason = ("its alignment could not be measured (too small, or too little overlap for ITK)" if before is None
                  else f"aligned already: measured off by {before:.1f} mm at most in the brain (tolerance "
                       f"{ALIGNMENT_TOLERANCE_MM:g} mm)")
        return _kept(_float(fixed), _float(moving), sequence, reference, reason, misaligned_mm=before,
                     measured_only=True)
    found = rigid_registration(fixed, moving, sequence, reference)
    after = misalignment_mm(fixed, onto_reference(moving, fixed, found)) if found.applied else before
    return replace(found, misaligned_mm=before, residual_mm=after)


def _kept(fixed: "sitk.Image", moving: "sitk.Image", sequence: str, reference: str, reason: str,
          **measured) -> Registration:
    """A sequence kept as acquired, and why: the identity, its mutual information as acquired."""
    initial = _centred_identity(fixed)
    metric = mutual_information(fixed, moving, initial)
    return Registration(sequence, reference, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0),
                        tuple(float(c) for c in initial.GetCenter()), metric, metric, 0.0, applied=False,
                        reason=reason, **measured)


def rigid_registration(fixed: "sitk.Image", moving: "sitk.Image", sequence: str, reference: str,
                       seed: int = 1, sampling: float = 0.05) -> Registration:
    """Register ``moving`` (``sequence``) rigidly onto ``fixed`` (``reference``); see the module notes."""
    fixed, moving = _float(fixed), _float(moving)
    initial = _centred_identity(fixed)
    centre = initial.GetCenter()
    refused = f"too small to register (fewer than {MIN_SIZE} voxels along an axis)" if _too_small(fixed, moving) else ""
    if not refused:
        try:
            found = _rigid(fixed, moving, _SHRINK, _SMOOTH_MM, 200, seed, sampling)
        except RuntimeError as error:  # e.g. too little overlap left for the metric's samples: kept, with ITK's reason
            refused = f"ITK could not register it ({itk_reason(error)})"
    if refused:
        return _kept(fixed, moving, sequence, reference, refused)
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
    image = sitk.GetImageFromArray(divided_by_support(values, support))
    image.CopyInformation(fixed)
    return image


COREGISTER_MODES = ("auto", "always", "never")


def sequences_share_one_grid(grids: dict[str, "ReferenceGrid"]) -> bool:
    """Whether the four sequences lie on one grid, from the grids of a case's files by role
    (:func:`data.case.check_case_files`, which checks each file before reading its header; BraTS-preprocessed
    sequences do, separate acquisitions almost never do)."""
    first, *others = (grids[m] for m in MODALITIES)
    return all(first.matches(grid) for grid in others)


MEASURE_FIRST = "measure first"  # wants_coregistration's third answer: measure the alignment, register if off


def wants_coregistration(mode: str, grids: dict[str, "ReferenceGrid"]) -> tuple[bool | str, str]:
    """Whether to co-register (``mode``: auto, always, never) a case whose files have ``grids``
    (:func:`data.case.check_case_files`) — True, False or :data:`MEASURE_FIRST` (sequences on one grid under
    ``auto``) — and why, for the summary."""
    if mode not in COREGISTER_MODES:
        raise UsageError(f"--coregister {mode}: expected one of {', '.join(COREGISTER_MODES)}")
    if mode != "auto":
        return mode == "always", f"--coregister {mode}"
    if sequences_share_one_grid(grids):
        return MEASURE_FIRST, ("the four sequences share one grid, which does not make them aligned: their alignment "
                               f"was measured, and a sequence off by more than {ALIGNMENT_TOLERANCE_MM:g} mm registered")
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
