"""The MNI ICBM152 2009a (nonlinear, symmetric) anatomy shipped inside the ``nilearn`` wheel.

We read the packaged 1 mm T1 template and GM/WM probability maps directly from nilearn's data folder (no download,
no nilearn import cost). Anything derived from them carries :data:`ICBM152_NOTICE`.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

ICBM152_NOTICE = """\
Derived from the MNI ICBM152 2009a nonlinear symmetric template (as shipped in the nilearn package).

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University.
Permission to use, copy, modify, and distribute this software and its
documentation for any purpose and without fee is hereby granted,
provided that the above copyright notice appear in all copies.  The
authors and McGill University make no representations about the
suitability of this software for any purpose.  It is provided "as is"
without express or implied warranty.  The authors are not responsible
for any data loss, equipment damage, property loss, or injury to
subjects or patients resulting from the use or misuse of this software
package.

References: Fonov et al., NeuroImage 54(1) 2011 and NeuroImage 47 S102 2009;
Collins et al., NeuroImage 1999.
"""

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class Anatomy:
    """ICBM152 maps as ITK-ordered ``(k, j, i)`` float32 arrays with their geometry.

    ``t1`` is the skull-stripped template intensity (0 outside the brain); ``gm``, ``wm``, ``csf`` are probabilities
    in [0, 1], CSF taken as the brain's remainder ``1 - GM - WM``.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray  # 3x3, column m = direction of image axis m

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS points ``(..., 3)`` in mm → continuous ``(..., 3)`` indices in ``(k, j, i)`` array order."""
        ijk = (points - self.origin) @ self.direction / self.spacing  # direction is orthonormal
        return ijk[..., ::-1]

    def index_to_physical(self, kji: np.ndarray) -> np.ndarray:
        ijk = np.asarray(kji, dtype=float)[..., ::-1]
        return self.origin + (ijk * self.spacing) @ self.direction.T


def nilearn_data_folder() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the phantom needs the nilearn package: pip install 'BrainTumorExplain[phantom]'")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def load_icbm152() -> Anatomy:
    """Load the packaged ICBM152 T1/GM/WM maps (cached for the process)."""
    folder = nilearn_data_folder()
    images = {}
    for key, name in _FILES.items():
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path}: ICBM152 map missing from the installed nilearn package")
        images[key] = sitk.ReadImage(str(path))
    t1 = sitk.GetArrayFromImage(images["t1"]).astype(np.float32)
    gm = sitk.GetArrayFromImage(images["gm"]).astype(np.float32) / 255.0
    wm = sitk.GetArrayFromImage(images["wm"]).astype(np.float32) / 255.0
    brain = t1 > 0
    gm *= brain
    wm *= brain
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    reference = images["t1"]
    return Anatomy(
        t1=t1, gm=gm, wm=wm, csf=csf.astype(np.float32), brain=brain,
        origin=np.array(reference.GetOrigin()),
        spacing=np.array(reference.GetSpacing()),
        direction=np.array(reference.GetDirection()).reshape(3, 3),
    )
