"""A non-learned reference segmentation: thresholds on the normalised FLAIR and T1ce.

It exists so that the whole path (read → canonical grid → segment → write back → score) runs before any network is
trained, and it gives the floor the networks must beat. Rules, on z-scored intensities inside the brain:

* whole tumour: FLAIR > ``flair_z`` (edema and core are FLAIR-bright), opened, components ≥ ``min_voxels``;
* enhancing tumour: T1ce > ``t1ce_z`` inside the whole tumour;
* necrosis: voxels enclosed by enhancing tumour (hole filling per axial slice) that are not enhancing;
* the rest of the whole tumour: edema.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..data.case import MODALITIES, Case


def threshold_segmentation(case: Case, flair_z: float = 1.8, t1ce_z: float = 2.5, min_voxels: int = 200) -> np.ndarray:
    """Class indices (0..3) on the case's canonical grid."""
    flair = case.images[MODALITIES.index("flair")]
    t1ce = case.images[MODALITIES.index("t1ce")]
    whole = ndimage.binary_opening((flair > flair_z) & case.brain_mask, iterations=1)
    components, count = ndimage.label(whole)
    if count:
        sizes = ndimage.sum_labels(whole, components, index=np.arange(1, count + 1))
        whole = np.isin(components, 1 + np.flatnonzero(sizes >= min_voxels))
    enhancing = whole & (t1ce > t1ce_z)
    enclosed = np.stack([ndimage.binary_fill_holes(s) for s in enhancing])
    necrosis = enclosed & ~enhancing
    labels = np.zeros(flair.shape, dtype=np.uint8)
    labels[whole] = 2
    labels[necrosis & case.brain_mask] = 1
    labels[enhancing] = 3
    return labels
