"""Alignment to the atlas the networks were trained in, and an atlas brain mask for a scan that was not skull-stripped.

The shipped networks were trained on phantoms built on the MNI ICBM152 2009a template (:mod:`data.anatomy`): their
heads lie as the template's does, within the phantoms' own few degrees (:mod:`data.phantom`). BraTS-trained networks
were trained in SRI24, which no package here ships; its pose is the same AC-PC-aligned upright head, so aligning
rigidly to ICBM152 gives such a network the pose it knows (the position and size it does not need: convolutions do not
care where the head is, and the alignment never scales it).

One registration, in three stages, serves both (SimpleITK's framework, as co-registration): the template T1 (fixed,
its brain the metric's mask) against the case's T1 (moving), Mattes mutual information, from the images' centres of
mass — first a search over head turns of up to ±30° about each axis (10° steps, on a 4 mm copy: a gradient descent
alone stops short of a 15° tilt), then a similarity (rotation, one scale) and an affine refinement at 4 and 2 mm (the
pose and the mask need no finer).

* **Pose**: the similarity's rotation about its centre — rigid, so the case's anatomy keeps its size and shape when it
  is brought into the network's space (:func:`data.resample.resample_case`).
* **Brain mask** (:func:`atlas_brain_mask`): the template's brain through the affine onto the case's grid, its outer
  2 mm left out. It is the template's shape, scaled and sheared to the head: far coarser than a learned
  skull-stripper (HD-BET, SynthStrip), which follows this brain's own edge — on the phantoms, built on this very
  template, it is better than it will be on a patient. A user's own mask (``--brain-mask FILE``) is always preferred.

Every transform here maps a point of the template to the same anatomy in the case (ITK's convention), except
:meth:`AtlasAlignment.rigid_to_atlas`, its inverse.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from .grid import ReferenceGrid

if TYPE_CHECKING:
    import SimpleITK as sitk

ATLAS_NAME = "MNI ICBM152 2009a"
ATLAS_MODES = ("auto", "always", "never")
SEARCH_DEGREES, SEARCH_STEP_DEGREES = 30.0, 10.0  # the head turns searched about each axis, and the step
_TEMPLATE_SPACING_MM = 2.0
MASK_EROSION_MM = 2.0  # the template's brain shrunk by this much: see atlas_brain_mask
MAX_SCALE_CHANGE = 0.35  # an affine that scales any axis by more than ±35 % did not find a head


@dataclass(frozen=True)
class AtlasAlignment:
    """Template (``q``) → case (``p``), LPS mm, about ``centre``: the pose ``p = R (q - c) + c + t`` (a rotation; the
    similarity's scale is left out) and the affine ``p = A (q - c) + c + u`` the mask is drawn through; how well the
    affine fits (Mattes mutual information: lower is better) from the centres of mass alone and after; ``applied``
    False when the check refused it."""

    rotation: tuple[float, ...]  # R, 3×3 row-major
    translation_mm: tuple[float, float, float]
    affine_matrix: tuple[float, ...]  # A, 3×3 row-major
    affine_translation_mm: tuple[float, float, float]
    centre: tuple[float, float, float]
    metric_before: float
    metric_after: float
    applied: bool
    reason: str = ""

    def affine(self) -> "sitk.AffineTransform":
        return _affine(self.affine_matrix, self.affine_translation_mm, self.centre)

    def rigid(self) -> "sitk.AffineTransform":
        """The pose, template → case."""
        return _affine(self.rotation, self.translation_mm, self.centre)

    @property
    def rotation_degrees(self) -> float:
        """The pose's angle away from the template's."""
        return rotation_angle_degrees(np.asarray(self.rotation).reshape(3, 3))

    @property
    def scales(self) -> tuple[float, float, float]:
        """The affine's stretches (singular values): the head's size against the template's."""
        return tuple(float(s) for s in np.linalg.svd(np.asarray(self.affine_matrix, dtype=float).reshape(3, 3))[1])

    def rigid_to_atlas(self) -> "sitk.AffineTransform":
        """The pose's inverse, case → template (``q = R^T (p - c - t) + c``): moving a case's grid by it
        (:func:`data.grid.moved_grid`) puts the case in the template's frame at its own size."""
        rotation = np.asarray(self.rotation, dtype=float).reshape(3, 3)
        return _affine(tuple(rotation.T.ravel()), tuple(-rotation.T @ np.asarray(self.translation_mm)), self.centre)

    def to_dict(self) -> dict:
        return {"atlas": ATLAS_NAME, "applied": self.applied, "reason": self.reason,
                "rotation_degrees": round(self.rotation_degrees, 2),
                "scales": [round(s, 3) for s in self.scales],
                "metric_before": round(self.metric_before, 4), "metric_after": round(self.metric_after, 4)}


def rotation_angle_degrees(rotation: np.ndarray) -> float:
    """The angle (degrees) of a 3×3 rotation matrix."""
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))


def _affine(matrix, translation, centre) -> "sitk.AffineTransform":
    import SimpleITK as sitk

    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(float(v) for v in centre))
    transform.SetMatrix(tuple(float(v) for v in matrix))
    transform.SetTranslation(tuple(float(v) for v in translation))
    return transform


@functools.lru_cache(maxsize=1)
def template_images() -> tuple["sitk.Image", "sitk.Image"]:
    """The ICBM152 T1 template and its brain mask at 2 mm (cached for the process)."""
    import SimpleITK as sitk

    from .anatomy import load_icbm152

    anatomy = load_icbm152()
    image = sitk.GetImageFromArray(anatomy.t1)
    image.SetOrigin(tuple(anatomy.origin))
    image.SetSpacing(tuple(anatomy.spacing))
    image.SetDirection(tuple(anatomy.direction.ravel()))
    size = [int(round(n * s / _TEMPLATE_SPACING_MM)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    smoothed = sitk.SmoothingRecursiveGaussian(image, _TEMPLATE_SPACING_MM / 2)
    coarse = sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                           (_TEMPLATE_SPACING_MM,) * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)
    brain = sitk.Resample(sitk.Cast(image > 0, sitk.sitkFloat32), coarse, sitk.Transform(), sitk.sitkLinear) >= 0.5
    return coarse, brain


def _method(mask: "sitk.Image", initial: "sitk.Transform", seed: int, sampling: float
            ) -> "sitk.ImageRegistrationMethod":
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(initial, inPlace=False)
    return method


def _refine(method: "sitk.ImageRegistrationMethod", shrink: tuple[int, ...]) -> None:
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([2.0 * factor for factor in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()


def _found(method: "sitk.ImageRegistrationMethod", fixed: "sitk.Image", moving: "sitk.Image") -> "sitk.Transform":
    import SimpleITK as sitk

    result = method.Execute(fixed, moving)
    return sitk.CompositeTransform(result).GetNthTransform(0) if isinstance(result, sitk.CompositeTransform) else result


def align_to_atlas(t1: "sitk.Image", seed: int = 1, sampling: float = 0.1) -> AtlasAlignment:
    """Register the case's T1 (skull-stripped or not) to the template; see the module notes. The result is checked:
    mutual information must improve on the images' centres of mass alone, and no axis may be scaled by more than
    :data:`MAX_SCALE_CHANGE` (a misregistration, not a head)."""
    import SimpleITK as sitk

    from ..errors import itk_reason
    from .registration import check_seed

    check_seed(seed)
    template, brain = template_images()
    moving = sitk.Cast(t1, sitk.sitkFloat32)
    centred = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        template, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS))
    try:
        return _registered(template, brain, moving, centred, seed, sampling)
    except RuntimeError as error:  # ITK gives up (e.g. a volume far smaller than a head overlaps no template sample)
        centre = tuple(float(v) for v in centred.GetCenter())
        identity = tuple(float(v) for v in np.eye(3).ravel())
        return AtlasAlignment(identity, (0.0, 0.0, 0.0), identity, (0.0, 0.0, 0.0), centre, 0.0, 0.0, applied=False,
                              reason=f"ITK could not register the T1 to the template ({itk_reason(error)})")


def _registered(template: "sitk.Image", brain: "sitk.Image", moving: "sitk.Image", centred: "sitk.Transform",
                seed: int, sampling: float) -> AtlasAlignment:
    """:func:`align_to_atlas`'s registration from the centred start: a rotation search, then similarity and
    affine refinements, checked."""
    import SimpleITK as sitk

    from .registration import mutual_information

    search = _method(sitk.Shrink(brain, [2] * 3), centred, seed, sampling)
    steps = round(SEARCH_DEGREES / SEARCH_STEP_DEGREES)
    search.SetOptimizerAsExhaustive([steps] * 3 + [0] * 3, stepLength=float(np.deg2rad(SEARCH_STEP_DEGREES)))
    search.SetOptimizerScales([1.0] * 6)
    turned = sitk.Euler3DTransform(_found(search, sitk.Shrink(template, [2] * 3),
                                          sitk.SmoothingRecursiveGaussian(moving, 2 * _TEMPLATE_SPACING_MM)))
    similarity = sitk.Similarity3DTransform()
    similarity.SetCenter(turned.GetCenter())
    similarity.SetMatrix(turned.GetMatrix())
    similarity.SetTranslation(turned.GetTranslation())
    method = _method(brain, similarity, seed, sampling)
    _refine(method, (2, 1))
    similarity = sitk.Similarity3DTransform(_found(method, template, moving))
    affine = _affine(similarity.GetMatrix(), similarity.GetTranslation(), similarity.GetCenter())
    method = _method(brain, affine, seed, sampling)
    _refine(method, (1,))
    affine = sitk.AffineTransform(_found(method, template, moving))
    before = mutual_information(template, moving, centred, brain)
    after = mutual_information(template, moving, affine, brain)
    rotation = np.asarray(similarity.GetMatrix()).reshape(3, 3) / similarity.GetScale()
    alignment = AtlasAlignment(tuple(float(v) for v in rotation.ravel()),
                               tuple(float(v) for v in similarity.GetTranslation()),
                               tuple(float(v) for v in affine.GetMatrix()),
                               tuple(float(v) for v in affine.GetTranslation()),
                               tuple(float(v) for v in affine.GetCenter()), before, after, applied=True)
    stretch = max(abs(s - 1.0) for s in alignment.scales)
    reason = ("" if after < before and stretch <= MAX_SCALE_CHANGE else
              f"mutual information not improved ({after:.4f} vs {before:.4f})" if after >= before else
              f"it would scale the head by {1 + stretch:.2f}× (more than ±{MAX_SCALE_CHANGE:.0%})")
    return replace(alignment, applied=not reason, reason=reason)


def atlas_brain_mask(alignment: AtlasAlignment, grid: ReferenceGrid) -> np.ndarray:
    """The template's brain through ``alignment`` onto ``grid``, less its outer :data:`MASK_EROSION_MM`: a canonical
    bool mask (see the module notes). The erosion because the two ways to be wrong are not alike: brain left outside
    the mask costs the networks little, skull and fluid left inside it look like oedema at the brain's edge. On the
    sample case with its skull on, the shipped DenseUnet's and ResUnet's WT Dice are 0.930 and 0.834 with this mask
    (0.934 and 0.856 on the stripped case; 0.922 and 0.774 unshrunk) — ``bench --only clinical``, docs/analyses.md,
    "Your own scans: clinical preprocessing", where the choice's limits are said."""
    import SimpleITK as sitk
    from scipy import ndimage

    from .anatomy import load_icbm152

    anatomy = load_icbm152()
    brain = sitk.GetImageFromArray(anatomy.brain.astype(np.float32))
    brain.SetOrigin(tuple(anatomy.origin))
    brain.SetSpacing(tuple(anatomy.spacing))
    brain.SetDirection(tuple(anatomy.direction.ravel()))
    reference = grid.to_image(np.zeros(grid.canonical_shape, dtype=np.float32))
    inverse = alignment.affine().GetInverse()  # the case's points → the template's
    weight = sitk.Resample(brain, reference, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = grid.to_canonical(sitk.GetArrayFromImage(weight)) >= 0.5
    return ndimage.distance_transform_edt(mask, sampling=grid.canonical_spacing) > MASK_EROSION_MM


def wants_alignment(mode: str, not_preprocessed: list[str]) -> tuple[bool, str]:
    """Whether to align to the atlas (``mode``: auto, always, never) and why, for the summary: auto aligns a raw
    acquisition (``not_preprocessed``: why the case is one; empty for a preprocessed case)."""
    if mode not in ATLAS_MODES:
        raise UsageError(f"--atlas {mode}: expected one of {', '.join(ATLAS_MODES)}")
    if mode != "auto":
        return mode == "always", f"--atlas {mode}"
    if not not_preprocessed:
        return False, "the case looks preprocessed (one grid, skull-stripped): its pose is kept"
    return True, "a raw acquisition: " + "; ".join(not_preprocessed)
