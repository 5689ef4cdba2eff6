"""Is this case like the data the network was trained on? Checks made after the case is read and prepared, whose
warnings go into the summary and the report, so that a wrong answer on an unlike input is never silent.

Every BraTS-trained network, ours included, was trained on skull-stripped whole adult brains. The brain here is
where any sequence is non-zero (:func:`data.case.load_case`), so a scan that was not skull-stripped — its head, and
the noise of the air around it, non-zero — would be taken as one large "brain" and z-scored over it: the network
then sees intensities it never saw. Two measurements catch that and other unlike inputs:

* ``brain_fraction``: the share of the image the brain mask fills (a BraTS brain fills about 15 % of its
  240×240×155 box; a head with its air fills nearly all of it) — above :data:`MAX_BRAIN_FRACTION`, or touching
  more than :data:`MAX_FACES_TOUCHED` faces of the image box, the scan does not look skull-stripped;
* ``brain_volume_ml``: outside :data:`BRAIN_VOLUME_ML` the mask is not one whole adult brain (a crop, a child, a
  scan of something else).

Given what the preprocessing found, three more (issue 35: each of these once gave a wrong answer without a word):

* voxels far coarser than the network's (:data:`COARSE_FACTOR`): resampling puts the case on the network's grid, but
  the detail thick slices never recorded is not won back;
* a brain edge interpolated after skull-stripping (:mod:`data.brain_edge`): the rim is cut, but the whole image was
  interpolated, its intensities smoothed as the network never saw them;
* a sequence measured off the FLAIR and left so (:mod:`data.registration`: a registration refused, or one that
  leaves it measured off by more than the tolerance);
* intensities unlike the training cases': each sequence is z-scored over the brain, so what is left to compare is
  the shape of its distribution — its quantiles (:data:`INTENSITY_QUANTILES`) against their mean and spread over the
  network's training cases (:func:`intensity_reference_from`, stored with weights ``train`` writes), beyond
  :data:`INTENSITY_LIMIT` spreads. It catches a sequence given in the place of another and a scan of another contrast
  or scanner (a 30 % bias field or 5 % noise stays within it: scripts/intensity_check.py); a network with no stored
  reference (a bundle, an nnU-Net folder, weights written before it was kept) gets no such check.

The network's own space (voxel size, obliquity) is handled where it is (:func:`models.space.space_summary`).
"""

from __future__ import annotations

import numpy as np

from .labels import MODALITIES
from .registration import ALIGNMENT_TOLERANCE_MM

MAX_BRAIN_FRACTION = 0.5
MAX_FACES_TOUCHED = 2  # a brain may reach the box's top and bottom slices (BraTS crops at 155 slices), not more
BRAIN_VOLUME_ML = (700.0, 2200.0)  # adult brains (with the tumour) lie well inside this range
COARSE_FACTOR = 2.5  # a voxel at least this many times the network's along an axis loses what the network looks for
INTENSITY_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
INTENSITY_LIMIT = 4.0  # training spreads (standard deviations over the training cases) a quantile may lie off
MIN_INTENSITY_SPREAD = 0.05  # z-score units: the floor under a spread the training cases happen to share closely
_AXES = ("inferior–superior", "posterior–anterior", "right–left")  # canonical z, y, x


def _fraction_and_faces(brain: np.ndarray) -> tuple[float, int]:
    fraction = float(brain.mean()) if brain.size else 0.0
    return fraction, sum(bool(np.take(brain, index, axis=axis).any()) for axis in range(3) for index in (0, -1))


def looks_skull_stripped(brain_mask: np.ndarray) -> bool:
    """Whether a canonical brain mask (voxels non-zero in any sequence) is a stripped brain's, not a head's."""
    fraction, faces = _fraction_and_faces(np.asarray(brain_mask, dtype=bool))
    return fraction <= MAX_BRAIN_FRACTION and faces <= MAX_FACES_TOUCHED


def domain_check(brain_mask: np.ndarray, spacing_mm: tuple[float, float, float], *,
                 training_spacing: tuple[float, float, float] | None = None, brain_edge=None,
                 registrations: dict | None = None, intensities: dict | None = None,
                 intensity_reference: dict | None = None) -> dict:
    """The measurements above for a canonical brain mask and its voxel size (mm, canonical order), with a
    ``warnings`` list (empty when the case looks like the training data); with the network's ``training_spacing``
    (canonical), the preprocessing's ``brain_edge`` (:class:`data.brain_edge.BrainEdge`), the case's
    ``registrations`` (:attr:`data.case.Case.registrations`), and its ``intensities`` (:func:`intensity_profile`)
    with the network's ``intensity_reference``, the checks that need them."""
    brain = np.asarray(brain_mask, dtype=bool)
    volume_ml = float(brain.sum() * np.prod(spacing_mm) / 1000.0)
    fraction, faces = _fraction_and_faces(brain)
    warnings = []
    if not looks_skull_stripped(brain):
        warnings.append(f"the brain mask (voxels non-zero in any sequence) fills {fraction:.0%} of the image and "
                        f"touches {faces} of its 6 faces: the scan does not look skull-stripped, and the networks "
                        "were trained on skull-stripped brains — strip it first (e.g. HD-BET or SynthStrip), give "
                        "its mask (--brain-mask FILE) or let the atlas mask it (--brain-mask auto)")
    low, high = BRAIN_VOLUME_ML
    if not low <= volume_ml <= high:
        warnings.append(f"the brain mask holds {volume_ml:.0f} mL, outside the {low:.0f}–{high:.0f} mL of a whole "
                        "adult brain: the results may not mean what they would on one")
    warnings += _coarse_voxels(spacing_mm, training_spacing)
    if brain_edge is not None and brain_edge.cut:
        warnings.append(f"the scan was interpolated after skull-stripping ({brain_edge.rim_fraction:.0%} of the "
                        "brain's outermost voxels were partial, a rim now cut from the mask): its intensities are "
                        "smoothed as well, which the networks never saw in training")
    warnings += _misalignment_left(registrations or {})
    if intensities is not None and intensity_reference is not None:
        warnings += _intensities_far(intensities, intensity_reference)
    return {"brain_volume_ml": round(volume_ml, 1), "brain_fraction": round(fraction, 4), "faces_touched": faces,
            "warnings": warnings}


def _coarse_voxels(spacing_mm, training_spacing) -> list[str]:
    if training_spacing is None:
        return []
    factors = np.asarray(spacing_mm, dtype=float) / np.asarray(training_spacing, dtype=float)
    coarse = [axis for axis in range(3) if factors[axis] >= COARSE_FACTOR]
    if not coarse:
        return []
    along = " and ".join(_AXES[axis] for axis in coarse)
    return [f"voxels of {_mm(spacing_mm)} mm (z, y, x) against the {_mm(training_spacing)} mm the network was "
            f"trained at: up to {factors.max():.1f}× coarser, along the {along} ax{'es' if len(coarse) > 1 else 'is'}; "
            "resampled or not, detail the scan never recorded is not won back"]


def _mm(spacing) -> str:
    return " × ".join(f"{float(s):g}" for s in spacing)


def _misalignment_left(registrations: dict) -> list[str]:
    warnings = []
    for sequence, found in registrations.items():
        left = found.residual_mm if found.applied else found.misaligned_mm
        if left is not None and left > ALIGNMENT_TOLERANCE_MM:
            how = "after co-registration" if found.applied else f"and not registered ({found.reason})"
            warnings.append(f"{sequence} is measured off the {found.reference} by {left:.1f} mm {how}: the network "
                            "sees its sequences misaligned")
    return warnings


def intensity_profile(case, quantiles=INTENSITY_QUANTILES) -> dict[str, list[float]]:
    """Each sequence's ``quantiles`` over the brain, as the network sees it (z-scored)."""
    return {name: [round(float(q), 4) for q in np.quantile(case.images[c][case.brain_mask], list(quantiles))]
            for c, name in enumerate(MODALITIES)}


def intensity_reference_from(cases) -> dict:
    """The training cases' :func:`intensity_profile` summarised: per sequence, each quantile's mean and standard
    deviation over the cases, as read (what weights ``train`` writes keep as ``intensity_reference``)."""
    profiles = [intensity_profile(case) for case in cases]
    if len(profiles) < 2:
        raise ValueError("an intensity reference needs at least two training cases")
    return {"quantiles": list(INTENSITY_QUANTILES), "cases": len(profiles),
            "sequences": {name: {"mean": [round(float(v), 4) for v in np.mean(values, axis=0)],
                                 "std": [round(float(v), 4) for v in np.std(values, axis=0, ddof=1)]}
                          for name in profiles[0] for values in [[profile[name] for profile in profiles]]}}


def farthest_quantiles(intensities: dict, reference: dict) -> dict[str, tuple[int, float, float, float]]:
    """Per sequence in both, its quantile farthest from the training mean: (its index, the training mean there, the
    spread floored at :data:`MIN_INTENSITY_SPREAD`, the distance in those spreads, signed)."""
    farthest = {}
    for name, stored in reference["sequences"].items():
        if name in intensities:
            mean, spread = np.asarray(stored["mean"]), np.maximum(np.asarray(stored["std"]), MIN_INTENSITY_SPREAD)
            offs = (np.asarray(intensities[name]) - mean) / spread
            worst = int(np.argmax(np.abs(offs)))
            farthest[name] = (worst, float(mean[worst]), float(spread[worst]), float(offs[worst]))
    return farthest


def _intensities_far(intensities: dict, reference: dict) -> list[str]:
    warnings = []
    for name, (worst, mean, spread, off) in farthest_quantiles(intensities, reference).items():
        if abs(off) > INTENSITY_LIMIT:
            warnings.append(
                f"{name}'s intensities are unlike the training cases': its {reference['quantiles'][worst]:.0%} "
                f"quantile (z-scored over the brain) is {intensities[name][worst]:.2f} against {mean:.2f} ± "
                f"{spread:.2f} over the network's {reference['cases']} training cases ({off:+.1f} "
                "spreads): another contrast or scanner, or a sequence given in another's place — the network was not "
                "trained on what it sees")
    return warnings


def case_domain_check(case, steps=None, training_spacing: tuple[float, float, float] | None = None,
                      intensity_reference: dict | None = None) -> dict:
    """:func:`domain_check` of a case as read and preprocessed (:func:`data.preprocess.preprocess`'s ``steps``, None
    for a saved case), for a network trained at ``training_spacing`` on cases whose intensities
    ``intensity_reference`` summarises (:func:`intensity_reference_from`)."""
    return domain_check(case.brain_mask, case.spacing, training_spacing=training_spacing,
                        brain_edge=None if steps is None else steps.brain_edge, registrations=case.registrations,
                        intensities=None if intensity_reference is None else  # at the quantiles it stored
                        intensity_profile(case, intensity_reference["quantiles"]),
                        intensity_reference=intensity_reference)
