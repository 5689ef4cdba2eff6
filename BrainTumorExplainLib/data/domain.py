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

The network's own space (voxel size, obliquity) is checked where it is handled (:func:`models.space.space_summary`).
"""

from __future__ import annotations

import numpy as np

MAX_BRAIN_FRACTION = 0.5
MAX_FACES_TOUCHED = 2  # a brain may reach the box's top and bottom slices (BraTS crops at 155 slices), not more
BRAIN_VOLUME_ML = (700.0, 2200.0)  # adult brains (with the tumour) lie well inside this range


def _fraction_and_faces(brain: np.ndarray) -> tuple[float, int]:
    fraction = float(brain.mean()) if brain.size else 0.0
    return fraction, sum(bool(np.take(brain, index, axis=axis).any()) for axis in range(3) for index in (0, -1))


def looks_skull_stripped(brain_mask: np.ndarray) -> bool:
    """Whether a canonical brain mask (voxels non-zero in any sequence) is a stripped brain's, not a head's."""
    fraction, faces = _fraction_and_faces(np.asarray(brain_mask, dtype=bool))
    return fraction <= MAX_BRAIN_FRACTION and faces <= MAX_FACES_TOUCHED


def domain_check(brain_mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> dict:
    """The measurements above for a canonical brain mask and its voxel size (mm, canonical order), with a
    ``warnings`` list (empty when the case looks like the training data)."""
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
    return {"brain_volume_ml": round(volume_ml, 1), "brain_fraction": round(fraction, 4), "faces_touched": faces,
            "warnings": warnings}
