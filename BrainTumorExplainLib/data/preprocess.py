"""BraTS-style preprocessing of a clinical case: each step decided from the input itself, and reported.

Every BraTS-trained network expects BraTS preprocessing: the sequences co-registered, skull-stripped, aligned to an
atlas, at 1 mm, z-scored in the brain. A clinical scan is none of that, and a network fed it answers wrongly without a
sign (docs/analyses.md, "Your own scans"). The steps, in order, each skipped when the input shows it is not needed:

1. **co-registration** of T1, T1ce and T2 onto the FLAIR (:mod:`data.registration`) — when the four files are not
   on one grid, as separate acquisitions are, or, on one grid, when a quick measurement finds a sequence off;
2. **brain mask** — a skull-stripped scan keeps its own (the voxels non-zero in any sequence), less the
   partial-volume rim an interpolation after stripping leaves at its edge (:mod:`data.brain_edge`); one that is not
   (:func:`data.domain.looks_skull_stripped`) gets the user's mask, or else the atlas's (:mod:`data.atlas`);
3. **atlas alignment** — the head turned into the atlas's pose (:mod:`data.atlas`) when the case is a raw
   acquisition (its sequences on different grids, or not skull-stripped); a case on one grid and skull-stripped has
   been preprocessed by someone, and keeps its pose (its voxel size and axes are step 4's);
4. **resampling** into the network's space and 5. **z-scoring** in the brain: :func:`models.space.into_network_space`
   (the alignment travels with the case, :attr:`data.case.Case.alignment`, and every result goes back onto the
   case's own grid through its inverse).

:class:`Preprocessing` records what ran and why, for ``summary.json``, the report, the command line and the panel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import CaseError, UsageError
from .atlas import ATLAS_NAME, AtlasAlignment, align_to_atlas, atlas_brain_mask, wants_alignment
from .brain_edge import BrainEdge, check_brain_edge
from .case import (
    MODALITIES,
    Case,
    CaseFiles,
    check_case_files,
    find_case_files,
    load_case,
    read_canonical,
    sequence_nonzero,
    zscored_sequences,
)
from .domain import looks_skull_stripped
from .registration import wants_coregistration
from .resample import raw_sequences, resample_array

BRAIN_MASK_MODES = ("auto", "atlas", "as-read")  # or a mask file


@dataclass(frozen=True)
class Preprocessing:
    """What :func:`preprocess` did: each step's decision and why; ``alignment`` when the atlas registration ran
    (for the pose, the mask or both)."""

    coregistration: str
    brain_mask: str  # "as read", "file" or "atlas"
    brain_mask_why: str
    atlas_aligned: bool
    atlas_why: str
    alignment: AtlasAlignment | None = None
    brain_mask_file: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # reading (with co-registration), atlas, mask
    brain_edge: BrainEdge | None = None  # checked when the scan's own mask is used under --brain-mask auto

    def to_dict(self) -> dict:
        return {"brain_mask": {"source": self.brain_mask, "why": self.brain_mask_why, "file": self.brain_mask_file},
                "atlas": {"aligned": self.atlas_aligned, "why": self.atlas_why,
                          "registration": None if self.alignment is None else self.alignment.to_dict()},
                "brain_edge": None if self.brain_edge is None else self.brain_edge.to_dict(),
                "seconds": {step: round(value, 2) for step, value in self.seconds.items()}}

    def lines(self) -> list[str]:
        """The steps in words, one a line (the command line prints them, the panel shows them)."""
        mask = {"as read": "brain mask: as read", "file": f"brain mask: {self.brain_mask_file}",
                "atlas": f"brain mask: the atlas's ({ATLAS_NAME}, coarser than a learned skull-stripper)"}
        atlas = "atlas alignment: " + (
            f"head turned {self.alignment.rotation_degrees:.1f}° onto {ATLAS_NAME}" if self.atlas_aligned
            else "skipped") + f" ({self.atlas_why})"
        edge = [] if self.brain_edge is None else [self.brain_edge.line()]
        return [f"{mask[self.brain_mask]} ({self.brain_mask_why})", *edge, atlas]


def preprocess(files: CaseFiles | str | Path, training_spacing: tuple[float, float, float] | None, coregister: str = "auto",
               atlas: str = "auto", brain_mask: str = "auto", resample: bool = True) -> tuple[Case, Preprocessing]:
    """``files`` (or a case folder) read and prepared (steps 1–3 of the module notes) for a network trained at ``training_spacing``
    (mm, canonical ``z, y, x``; None: it resamples nothing, so no alignment). ``coregister``, ``atlas``: auto,
    always or never; ``brain_mask``: auto, atlas, as-read or a mask file (non-zero = brain, on any grid)."""
    files = files if isinstance(files, CaseFiles) else find_case_files(files)
    check_brain_mask(brain_mask)
    grids = check_case_files(files)  # every file checked once, before any step reads its header
    wanted, coregistration_why = wants_coregistration(coregister, grids)
    clock = time.perf_counter()
    seconds = {}

    def lap(step: str) -> None:
        nonlocal clock
        seconds[step], clock = time.perf_counter() - clock, time.perf_counter()

    case = load_case(files, coregister=wanted, checked=True)
    lap("read and co-register" if wanted is True else "read and measure the alignment" if wanted else "read")
    stripped = looks_skull_stripped(case.brain_mask)
    not_preprocessed = (["its sequences lay on different grids"] if wanted is True else []) + (
        [] if stripped else ["it is not skull-stripped"])
    if not resample or training_spacing is None:
        align, atlas_why = False, ("--no-resample" if not resample else "the network resamples nothing")
        wants_alignment(atlas, not_preprocessed)  # the mode is checked all the same
    else:
        align, atlas_why = wants_alignment(atlas, not_preprocessed)
    mask_source, mask_why = _mask_decision(brain_mask, stripped)
    alignment = None
    if align or mask_source == "atlas":
        alignment = align_to_atlas(case.grid.to_image(raw_sequences(case)[MODALITIES.index("t1")]))
        lap("atlas registration")
        if not alignment.applied:
            if mask_source == "atlas":
                mask_source, mask_why = "as read", f"the atlas registration was refused: {alignment.reason}"
            align, atlas_why = False, f"the atlas registration was refused: {alignment.reason}"
    edge = None
    if brain_mask == "auto" and mask_source == "as read" and stripped:  # as-read: the files' non-zero voxels
        edge, kept = check_brain_edge(raw_sequences(case), case.brain_mask, case.spacing)
        if edge.cut:
            case = with_brain_mask(case, kept, "the brain mask less its partial-volume rim")
        lap("brain edge")
    if mask_source == "atlas":
        case = with_brain_mask(case, atlas_brain_mask(alignment, case.grid))
    elif mask_source == "file":
        case = with_brain_mask(case, read_brain_mask(brain_mask, case), brain_mask)
    if mask_source != "as read":
        lap("brain mask")
    steps = Preprocessing(coregistration_why, mask_source, mask_why, align, atlas_why, alignment,
                          brain_mask if mask_source == "file" else None, seconds, edge)
    return replace(case, alignment=alignment if align else None), steps


def check_brain_mask(value: str) -> str:
    """``value`` when ``--brain-mask`` can take it (one of :data:`BRAIN_MASK_MODES` or an existing file)."""
    if value not in BRAIN_MASK_MODES and not Path(value).is_file():
        raise UsageError(f"--brain-mask {value}: neither one of {', '.join(BRAIN_MASK_MODES)} nor a file")
    return value


def _mask_decision(brain_mask: str, stripped: bool) -> tuple[str, str]:
    if brain_mask not in BRAIN_MASK_MODES:
        return "file", "--brain-mask FILE"
    if brain_mask == "atlas":
        return "atlas", "--brain-mask atlas"
    if brain_mask == "as-read":
        return "as read", "--brain-mask as-read"
    if stripped:
        return "as read", "the scan is skull-stripped"
    return "atlas", "the scan is not skull-stripped and no mask was given"


def read_brain_mask(path: str | Path, case: Case) -> np.ndarray:
    """A user's brain mask file (non-zero = brain) on the case's grid (nearest neighbour when its own differs)."""
    values, grid = read_canonical(path, "brain mask")
    mask = np.asarray(values) != 0
    if not case.grid.matches(grid):
        mask = resample_array(mask, grid, case.grid)
    if not mask.any():
        raise CaseError(f"{path}: the brain mask is empty on the case's grid")
    return mask


def with_brain_mask(case: Case, mask: np.ndarray, source: str = "atlas") -> Case:
    """``case`` skull-stripped by ``mask`` (canonical bool on its grid): every sequence zero outside it and
    z-scored anew inside it; the labels are left as they are."""
    raw = raw_sequences(case) * mask
    nonzero = raw != 0
    try:
        images, stats = zscored_sequences(raw, mask)
    except ValueError as error:
        raise CaseError(f"{source}: the brain mask leaves a sequence constant ({error})") from None
    return replace(case, images=images, brain_mask=np.asarray(mask, dtype=bool), intensity_stats=stats,
                   nonzero=sequence_nonzero(nonzero, mask))
