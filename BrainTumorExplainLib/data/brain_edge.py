"""The brain's edge of a skull-stripped scan that was interpolated after stripping: found and cut back.

A skull-stripped volume resampled onto another grid (by a PACS, a reformat, any image tool) keeps zeros outside the
brain, so the voxels straddling the old edge are mixtures of brain and zero: a rim of low intensities in every
sequence, inside the new "brain" (the voxels non-zero in any sequence). Z-scored over it, the rim reads to a network
trained on sharp edges as tumour border: the shipped DenseUnet painted edema along the whole brain's edge (WT Dice
0.62 instead of 0.94 on a held-out phantom merely rotated by 15°; issue 35, docs/analyses.md "Clinical
acquisitions").

Each voxel of the edge band (the outer :data:`BAND_LAYERS` layers of the mask) gets an estimate of the share of
brain it holds: the mean over sequences of its intensity relative to that sequence's median in the brain, divided by
the same mean smoothed over the brain's interior nearby (Gaussian, :data:`REFERENCE_SIGMA_MM`, normalised by the
interior's own weight so that the zeros outside do not pull it down). A voxel below one half is mostly outside the
brain; this is the cut the project's own resampling makes (:func:`data.resample.resample_sequences` keeps a voxel
where the resampled mask is at least one half). A sharply stripped scan has almost none of them on its outermost
layer (none on the held-out phantoms; its darkest edge, cerebrospinal fluid, is dark in three sequences but bright in
T2), an interpolated one a third to two thirds (measured on the held-out phantoms re-acquired through
:mod:`data.acquisition`); so the mask is cut only when more than :data:`RIM_FRACTION` of the outermost layer is, and
a sharply stripped scan is left exactly as it was read. Cutting beat the two alternatives measured (eroding one
layer everywhere; cutting and dividing the kept edge by its share, as a re-sharpening): see the docs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BAND_LAYERS = 2  # voxel layers at the mask's edge where a partial-volume voxel may lie (one old voxel either side)
REFERENCE_SIGMA_MM = 3.0
RIM_FRACTION = 0.1  # share of the outermost layer below half the brain's signal beyond which the edge is a rim
HALF = 0.5
MAX_PASSES = 3


@dataclass(frozen=True)
class BrainEdge:
    """What the check found: ``rim_fraction`` of the outermost layer below half the brain's signal (None when it
    could not be measured, ``why`` says why), ``cut`` whether the rim was taken out of the mask, ``removed_voxels``
    and ``removed_ml`` how much of it."""

    rim_fraction: float | None
    cut: bool
    removed_voxels: int = 0
    removed_ml: float = 0.0
    why: str = ""

    def to_dict(self) -> dict:
        return {"rim_fraction": None if self.rim_fraction is None else round(self.rim_fraction, 3), "cut": self.cut,
                "removed_voxels": self.removed_voxels, "removed_ml": round(self.removed_ml, 2), "why": self.why}

    def line(self) -> str:
        """The step in words (the command line, the panel and the report show it)."""
        if self.rim_fraction is None:
            return f"brain edge: not measured ({self.why})"
        share = f"{self.rim_fraction:.0%} of its outermost voxels below half the brain's signal"
        if not self.cut:
            return f"brain edge: sharp ({share})"
        return (f"brain edge: a partial-volume rim, as a skull-stripped scan interpolated after stripping has "
                f"({share}): {self.removed_voxels} voxels ({self.removed_ml:.1f} mL) taken out of the brain mask")


def brain_share(raw: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float]
                ) -> tuple[np.ndarray | None, str]:
    """The estimated share of brain in each voxel of the mask's edge band (1 elsewhere; see the module notes) for
    the sequences as read ``(C, Z, Y, X)`` and the brain mask (canonical, voxel size in the same order); None and
    the reason when the intensities allow no estimate (no sequence positive over the brain, as a z-scored input)."""
    from scipy import ndimage

    usable = []
    for sequence in raw:
        inside = sequence[mask]
        median = float(np.median(inside)) if inside.size else 0.0
        if median > 0 and float(np.quantile(inside, 0.01)) >= -1e-3 * median:  # zeros rebuilt from z-scores
            usable.append(sequence / median)
    if not usable:
        return None, "no sequence is positive over the brain (a z-scored or signed input)"
    signal = np.mean(usable, axis=0, dtype=np.float32)
    interior = ndimage.binary_erosion(mask, iterations=BAND_LAYERS)
    if not interior.any():
        return None, "the brain is too thin to have an interior"
    sigma = [REFERENCE_SIGMA_MM / s for s in spacing_mm]
    weight = ndimage.gaussian_filter(interior.astype(np.float32), sigma)
    reference = ndimage.gaussian_filter(np.where(interior, signal, 0).astype(np.float32), sigma)
    band = mask & ~interior
    share = np.ones(mask.shape, dtype=np.float32)
    reached = band & (weight > 1e-3)
    share[reached] = signal[reached] * weight[reached] / np.maximum(reference[reached], 1e-6)
    return share, ""


def check_brain_edge(raw: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float]
                     ) -> tuple[BrainEdge, np.ndarray]:
    """The brain edge found (:class:`BrainEdge`) and the mask to use: ``mask`` itself unless a rim was found, then
    ``mask`` without the band's voxels holding less than half brain — again on the new edge, up to
    :data:`MAX_PASSES` times, while its outermost layer is still a rim (a scan interpolated more than once, as a
    series moved, reformatted and registered is, has a rim deeper than the band)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    kept, first = mask, None
    for _ in range(MAX_PASSES):
        share, why = brain_share(raw, kept, spacing_mm)
        if share is None:
            if first is None:
                return BrainEdge(None, False, why=why), mask
            break  # what is left has no interior to measure against: the cut so far stands
        outermost = kept & ~ndimage.binary_erosion(kept)
        fraction = float((share[outermost] < HALF).mean()) if outermost.any() else 0.0
        first = first or BrainEdge(fraction, False)
        if fraction <= RIM_FRACTION:
            break
        kept = kept & (share >= HALF)
    if kept is mask:
        return first, mask
    removed = int(mask.sum() - kept.sum())
    return BrainEdge(first.rim_fraction, True, removed, removed * float(np.prod(spacing_mm)) / 1000.0), kept
