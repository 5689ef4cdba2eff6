"""The space a network was trained in, and bringing a case into it (:mod:`data.resample` does the resampling).

The shipped networks were trained on 1 mm axis-aligned volumes (the phantoms, as BraTS), a weights file from ``train``
on the voxel size of its training cases (stored in the file); a described network (a bundle) on the voxel size its
preprocessing resamples to, or — when it does not resample — on whatever it was given, which is then left as it is
(as MONAI runs such a bundle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.case import MODALITIES, Case, CaseFiles, find_case_files, load_case
from ..data.nnunet_resampling import nnunet_resampled_case
from ..data.preprocess import preprocess
from ..data.resample import resample_case, same_spacing, space_mismatch, warn_if_off_space
from .description import CANONICAL_AXES, axis_permutation
from .volume import DescribedNetwork

if TYPE_CHECKING:
    from ..data.preprocess import Preprocessing


def training_intensities(network) -> dict | None:
    """The intensities of ``network``'s training cases (:func:`data.domain.intensity_reference_from`); None when its
    weights file keeps none (a bundle, an nnU-Net folder, weights written before they were kept)."""
    return getattr(network, "intensity_reference", None)


def training_spacing(network) -> tuple[float, float, float] | None:
    """The voxel size (mm, canonical ``z, y, x``) ``network`` was trained at; None when its description has none."""
    if not isinstance(network, DescribedNetwork):
        return tuple(float(s) for s in network.training_spacing_mm)
    description = network.description
    if description.spacing_mm is None or description.spatial_dims != 3:
        return None
    order, _ = axis_permutation(CANONICAL_AXES, description.axes)  # network axis a is canonical axis order[a]
    spacing = [0.0, 0.0, 0.0]
    for network_axis, canonical_axis in enumerate(order):
        spacing[canonical_axis] = float(description.spacing_mm[network_axis])
    return tuple(spacing)


def into_network_space(case: Case, network, resample: bool = True) -> Case:
    """``case`` as ``network`` sees it: resampled into its space when it is not there (results written through the
    returned case's grid land on ``case``'s own grid); with ``resample=False``, ``case`` itself, with a warning when
    it is off that space."""
    spacing = training_spacing(network)
    if spacing is None:
        return case
    if not resample:
        warn_if_off_space(case, spacing, network.architecture)
        return case

    if isinstance(network, DescribedNetwork) and network.description.resampling == "nnunet":
        return _into_nnunet_space(case, network.description, spacing)
    if isinstance(network, DescribedNetwork):
        return resample_case(case, spacing, network.description.resampling, network.description.axes)
    return resample_case(case, spacing)


def _into_nnunet_space(case: Case, description, spacing: tuple[float, float, float]) -> Case:
    """An nnU-Net network's case: as it is at the plans' voxel size (the sliding window crops it; an oblique scan is
    taken as stored, as nnU-Net takes it), else resized by nnU-Net's rules (data.nnunet_resampling); a case turned
    into the atlas's pose goes the library's way (data.resample), since nnU-Net has no pose to keep."""
    if case.original is not None:
        case = case.original
    if case.alignment is not None:
        return resample_case(case, spacing, "linear", description.axes)
    own = case.grid.canonical_spacing
    if same_spacing(own, spacing):
        return case
    data, back = description.nnunet_resizing
    reason = f"voxel size {tuple(round(s, 3) for s in own)} mm, not {tuple(round(s, 3) for s in spacing)} mm"
    return nnunet_resampled_case(case, spacing, [MODALITIES.index(c) for c in description.channels],
                                 description.normalisation == "nnunet-zscore-mask", data, back, reason)


def prepare_case(source, network, coregister: str = "auto", resample: bool = True, atlas: str = "auto",
                 brain_mask: str = "auto") -> tuple[Case, "Preprocessing | None"]:
    """A case (folder, :class:`data.case.CaseFiles` or saved ``.npz``) read as ``network`` needs it: BraTS-style
    preprocessing as its input asks (:func:`data.preprocess.preprocess`: co-registration, brain mask, atlas
    alignment; ``coregister``, ``atlas``, ``brain_mask`` as there), then brought into the network's space
    (:func:`into_network_space`). Returns the case and what the preprocessing did (None for a saved case, which is
    taken as it was saved)."""
    if not isinstance(source, CaseFiles) and str(source).endswith(".npz"):
        return into_network_space(load_case(source), network, resample), None
    files = source if isinstance(source, CaseFiles) else find_case_files(source)
    case, steps = preprocess(files, training_spacing(network), coregister, atlas, brain_mask, resample)
    return into_network_space(case, network, resample), steps


def space_summary(case: Case, network) -> dict:
    """What ``summary.json`` says about the space ``network`` saw ``case`` in (see :func:`into_network_space`)."""
    if case.original is not None:  # a ResampledGrid or an NnUNetGrid
        return case.grid.as_dict()
    spacing = training_spacing(network)
    return {"resampled": False, "training_spacing_mm": spacing,
            "off_space": None if spacing is None else space_mismatch(case.grid, spacing)}
