"""BraTS-like multi-modal phantoms on the real MNI ICBM152 anatomy, with ground truth for tumour *and* tissue.

Why our own generator: no BraTS data can be shipped or fetched, and network dissection needs ground truth for the
implicit concepts (CSF, GM, WM) that real BraTS lacks. Each case, from one integer seed:

1. **Anatomy** — the ICBM152 T1 and GM/WM/CSF probability maps, resampled onto a 240×240×155 1 mm grid (BraTS's
   geometry: LPS, identity direction) through a random similarity transform (rotation ≤ 4°, brain scale 0.88–0.97,
   shift ≤ 3 mm), a smooth random deformation (≈ 2 mm, 24 mm correlation) and the tumours' mass effect (tissue pushed
   radially out of the lesion).
2. **Tumours** — one lesion (sometimes two: multifocal), placed in supratentorial white matter, 12 mm or more below
   the brain surface. Irregular ellipsoids (log-normal radial noise) give the necrotic core, the enhancing rim (absent
   in low-grade cases, where the core is non-enhancing) and an edema halo 6–20 mm wide, contiguous with the core, that
   spreads through white matter but not into CSF; edema fades towards its edge. Unlabelled mimics make the task honest: 3–10 small white-matter
   hyperintensities (FLAIR/T2 bright) and 2–6 enhancing vessels (T1ce bright), as real scans have.
3. **Contrasts** — FLAIR, T1, T1ce, T2 mixed from tissue probabilities with relative intensities that follow
   clinical appearance (edema bright on FLAIR/T2, rim bright on T1ce, necrosis dark on T1ce, CSF dark on FLAIR and
   bright on T2); T1 and T1ce keep half of the real template's T1 detail; smooth tumour texture, per-case gains,
   a multiplicative bias field per sequence and Rician noise; skull-stripped (0 outside the brain).

Outputs follow the BraTS 2018–2021 naming with labels 0/1/2/4, plus ``<id>_tissue.nii.gz`` (0 background, 1 CSF,
2 GM, 3 WM: the dominant tissue class of the deformed anatomy; tumour voxels keep the tissue they replaced, the
segmentation says where tumour is). The same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import interpolate, ndimage

from ..errors import UsageError
from .anatomy import ICBM152_NOTICE, Anatomy, load_icbm152
from .case import MODALITIES, CaseFiles
from .grid import ReferenceGrid
from .labels import BRATS2021

BRATS_EXTENT_MM = (155.0, 240.0, 240.0)  # (z, y, x)

# Relative intensities (white matter ≈ 1) per modality for
# CSF, GM, WM, necrosis, edema, enhancing tumour, non-enhancing (low-grade) core, and two unlabelled mimics:
# white-matter hyperintensities (small-vessel disease: FLAIR/T2 bright) and enhancing vessels (T1ce bright).
_INTENSITY = {
    #        CSF   GM    WM    NCR   ED    ET    NET   WMH   VESSEL
    "flair": (0.25, 1.15, 0.90, 0.95, 1.75, 1.35, 1.55, 1.55, 0.90),
    "t1":    (0.30, 0.72, 1.00, 0.45, 0.70, 0.62, 0.58, 0.85, 0.80),
    "t1ce":  (0.32, 0.75, 1.00, 0.40, 0.72, 1.75, 0.60, 0.85, 1.70),
    "t2":    (2.20, 1.25, 0.85, 2.00, 1.80, 1.35, 1.90, 1.55, 0.60),
}
_CSF, _GM, _WM, _NCR, _ED, _ET, _NET, _WMH, _VESSEL = range(9)
_BASE_LEVEL = {"flair": 400.0, "t1": 500.0, "t1ce": 550.0, "t2": 450.0}


SPACING_RANGE_MM = (0.25, 12.0)  # a phantom's voxel size: below, gigabytes per case; above, a handful of voxels


@dataclass(frozen=True)
class PhantomConfig:
    """Grid and noise settings; the defaults give BraTS's 240×240×155 grid at 1 mm."""

    spacing_mm: float = 1.0
    noise_fraction: float = 0.03  # Rician noise σ as a fraction of the white-matter level
    bias_amplitude: float = 0.08  # std of the log bias field
    deformation_mm: float = 2.0  # std of the smooth random displacement

    def __post_init__(self) -> None:
        low, high = SPACING_RANGE_MM
        if not low <= self.spacing_mm <= high:
            raise UsageError(f"--spacing {self.spacing_mm}: the phantom's voxel size must lie in {low:g}..{high:g} mm")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical ``(z, y, x)`` shape."""
        return tuple(int(round(e / self.spacing_mm)) for e in BRATS_EXTENT_MM)

    @property
    def grid(self) -> ReferenceGrid:
        z, y, x = self.shape
        s = float(self.spacing_mm)
        # BraTS files read through ITK: identity direction (LPS), origin (0, -239, 0) at 1 mm.
        return ReferenceGrid((x, y, z), (s, s, s), (0.0, -(y - 1) * s, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


@dataclass(frozen=True)
class Lesion:
    """One tumour, in the phantom's physical space (LPS mm)."""

    centre_mm: tuple[float, float, float]
    core_radius_mm: float
    necrosis_fraction: float  # necrotic radius / core radius (high grade)
    edema_extent: float  # edema radius / core radius (a 6-20 mm margin around the core)
    high_grade: bool  # False: non-enhancing core, no ET
    axes: tuple[float, float, float]  # relative ellipsoid semi-axes
    rotation: tuple[float, ...]  # 3x3 row-major
    mass_effect: float  # fraction of the radius tissue is pushed out by


@dataclass
class PhantomCase:
    """A generated case on the canonical ``(z, y, x)`` grid."""

    case_id: str
    seed: int
    grid: ReferenceGrid
    images: dict[str, np.ndarray]  # modality → int16
    labels: np.ndarray  # class indices 0..3
    tissue: np.ndarray  # 0 background, 1 CSF, 2 GM, 3 WM
    lesions: list[Lesion] = field(default_factory=list)


def phantom_case_id(seed: int) -> str:
    return f"Phantom_{seed:05d}"


def _upsampling_matrix(n_fine: int, step: float) -> np.ndarray:
    """Cubic-spline interpolation weights ``(n_fine, n_coarse)`` from a coarse lattice with ``step`` fine voxels."""
    n_coarse = int(np.ceil(n_fine / step)) + 3
    fine_positions = 1.0 + (np.arange(n_fine) + 0.5) / step
    basis = interpolate.make_interp_spline(np.arange(n_coarse), np.eye(n_coarse), k=3)
    return basis(fine_positions).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], step_vox: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ≈ ``step_vox`` voxels.

    White noise on a coarse lattice, upsampled by separable cubic splines: three small matrix products instead of
    a 3D spline evaluation at every voxel (``ndimage.zoom`` took 30 s for one 240×240×155 bias field).
    """
    matrices = [_upsampling_matrix(n, max(float(step_vox), 1.0)) for n in shape]
    field = rng.standard_normal(tuple(m.shape[1] for m in matrices), dtype=np.float32)
    field = np.tensordot(matrices[0], field, axes=(1, 0))  # (Z, b, c)
    field = np.tensordot(field, matrices[1], axes=(1, 1))  # (Z, c, Y)
    field = np.tensordot(field, matrices[2], axes=(1, 1))  # (Z, Y, X)
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def _random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@dataclass(frozen=True)
class _Placement:
    """Similarity map target (phantom) physical space → anatomy (MNI) physical space: q = c_m + M (p - c_t)."""

    matrix: np.ndarray
    anatomy_centre: np.ndarray
    target_centre: np.ndarray

    def to_anatomy(self, points: np.ndarray) -> np.ndarray:
        return self.anatomy_centre + (points - self.target_centre) @ self.matrix.T

    def to_target(self, points: np.ndarray) -> np.ndarray:
        return self.target_centre + (points - self.anatomy_centre) @ np.linalg.inv(self.matrix).T


def _physical_axes(grid: ReferenceGrid, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """1D LPS coordinates along canonical z, y, x (identity direction grid)."""
    s = grid.spacing
    return [grid.origin[2 - c] + s[2 - c] * np.arange(shape[c], dtype=np.float32) for c in range(3)]


@functools.lru_cache(maxsize=1)
def _lesion_sites() -> tuple[np.ndarray, np.ndarray]:
    """Candidate tumour centres in the anatomy (LPS mm): supratentorial white matter ≥ 12 mm deep, and their depth."""
    anatomy = load_icbm152()
    depth = ndimage.distance_transform_edt(anatomy.brain, sampling=anatomy.spacing[::-1])
    candidates = np.argwhere((anatomy.wm > 0.6) & (depth >= 12.0))
    physical = anatomy.index_to_physical(candidates)
    keep = (physical[:, 2] > -10.0) & (physical[:, 2] < 58.0)
    return physical[keep], depth[tuple(candidates[keep].T)]


def _draw_lesions(rng: np.random.Generator, placement: _Placement) -> list[Lesion]:
    sites, depths = _lesion_sites()
    count = 2 if rng.random() < 0.2 else 1
    high_grade = bool(rng.random() < 0.75)
    lesions: list[Lesion] = []
    while len(lesions) < count:
        pick = rng.integers(len(sites))
        centre = placement.to_target(sites[pick][None])[0]
        if any(np.linalg.norm(centre - np.array(other.centre_mm)) < 35.0 for other in lesions):
            continue
        radius = rng.uniform(12.0, 26.0) if not lesions else rng.uniform(6.0, 12.0)
        lesions.append(
            Lesion(
                centre_mm=tuple(float(c) for c in centre),
                core_radius_mm=float(max(min(radius, 0.9 * depths[pick]), 5.0)),
                necrosis_fraction=float(rng.uniform(0.35, 0.75)),
                edema_extent=float(1.0 + rng.uniform(6.0, 20.0) / max(radius, 5.0)),  # a 6-20 mm margin
                high_grade=high_grade,
                axes=tuple(float(a) for a in np.clip(1.0 + 0.15 * rng.standard_normal(3), 0.7, 1.3)),
                rotation=tuple(float(v) for v in _random_rotation(rng, 180.0).ravel()),
                mass_effect=float(rng.uniform(0.15, 0.35)),
            )
        )
    return lesions


def _placement(rng: np.random.Generator, anatomy: Anatomy, grid: ReferenceGrid) -> _Placement:
    brain_voxels = np.argwhere(anatomy.brain)
    anatomy_centre = anatomy.index_to_physical((brain_voxels.min(0) + brain_voxels.max(0)) / 2.0)
    size = np.array(grid.size, dtype=float)
    target_centre = np.array(grid.origin) + np.array(grid.spacing) * (size - 1) / 2.0 + rng.uniform(-3, 3, 3)
    brain_scale = rng.uniform(0.88, 0.97) * np.clip(1.0 + 0.02 * rng.standard_normal(3), 0.95, 1.05)
    matrix = _random_rotation(rng, 4.0) @ np.diag(1.0 / brain_scale)
    return _Placement(matrix, anatomy_centre, target_centre)


def _index_box(axes_mm: list[np.ndarray], low_lps: np.ndarray, high_lps: np.ndarray) -> tuple[slice, slice, slice]:
    """Canonical index ranges whose LPS coordinates (``axes_mm``: z, y, x) lie within ``[low_lps, high_lps]``."""
    return tuple(
        slice(int(np.searchsorted(coordinates, low_lps[physical])), int(np.searchsorted(coordinates, high_lps[physical])))
        for coordinates, physical in zip(axes_mm, (2, 1, 0))
    )


def _paint_lesion(rng: np.random.Generator, lesion: Lesion, axes_mm: list[np.ndarray], prob: dict[str, np.ndarray],
                  brain: np.ndarray, tumour_class: np.ndarray, edema_strength: np.ndarray, spacing: float) -> None:
    """Write one lesion's classes (_NCR, _ED, _ET, _NET) into ``tumour_class`` within its bounding box, and how
    strongly each edema voxel deviates from healthy tissue (1 at the core, fading towards the edge)."""
    centre = np.array(lesion.centre_mm)
    reach = lesion.core_radius_mm * lesion.edema_extent * 1.5 * max(lesion.axes) + 4.0
    box = _index_box(axes_mm, centre - reach, centre + reach)
    box_shape = tuple(b.stop - b.start for b in box)
    if min(box_shape) == 0:
        return
    zz, yy, xx = np.meshgrid(*(a[b] for a, b in zip(axes_mm, box)), indexing="ij")
    offset = np.stack([xx, yy, zz], axis=-1) - centre  # LPS
    local = offset @ np.array(lesion.rotation).reshape(3, 3) / (np.array(lesion.axes) * lesion.core_radius_mm)
    rho = np.linalg.norm(local, axis=-1)
    rho_core = rho * np.exp(0.18 * _smooth_noise(rng, box_shape, 7.0 / spacing))
    rho_edema = rho * np.exp(0.2 * _smooth_noise(rng, box_shape, 11.0 / spacing))
    rho_necrosis = rho * np.exp(0.15 * _smooth_noise(rng, box_shape, 5.0 / spacing))
    inside = brain[box]
    core = (rho_core < 1.0) & inside
    edema_friendly = (prob["csf"][box] < 0.5) & ((prob["wm"][box] + 0.35 * prob["gm"][box] > 0.3) | (rho_core < 1.25))
    edema = (rho_edema < lesion.edema_extent) & inside & edema_friendly & ~core
    # Peritumoral edema is contiguous with its tumour: drop islands the noise made away from the core.
    pieces, _ = ndimage.label(edema | core)
    edema &= np.isin(pieces, np.unique(pieces[core])) if core.any() else edema
    region = tumour_class[box]
    new_edema = edema & (region == 0)
    region[new_edema] = _ED
    fade = 1.0 - 0.6 * np.clip((rho_edema - 1.0) / max(lesion.edema_extent - 1.0, 1e-3), 0.0, 1.0)
    edema_strength[box][new_edema] = fade[new_edema]
    if lesion.high_grade:
        necrosis = core & (rho_necrosis < lesion.necrosis_fraction)
        region[core & ~necrosis] = _ET
        region[necrosis] = _NCR
    else:
        region[core] = _NET


def _paint_mimics(rng: np.random.Generator, prob: dict[str, np.ndarray], brain: np.ndarray,
                  tumour_class: np.ndarray, spacing: float) -> None:
    """Unlabelled look-alikes: small white-matter hyperintensities and enhancing vessels, away from the tumour."""
    free = brain & (tumour_class == 0)
    for klass, count, radius_mm, where in (
        (_WMH, rng.integers(3, 11), (1.5, 4.5), (prob["wm"] > 0.8) & free),
        (_VESSEL, rng.integers(2, 7), (1.0, 2.0), (prob["csf"] > 0.3) & (prob["gm"] > 0.2) & free),
    ):
        sites = np.argwhere(where)
        for _ in range(int(count)):
            if not len(sites):
                break
            centre = sites[rng.integers(len(sites))]
            semi_axes = rng.uniform(*radius_mm, size=3) / spacing
            if klass == _VESSEL:  # vessels run as short tubes
                semi_axes[rng.integers(3)] *= rng.uniform(3.0, 6.0)
            reach = np.ceil(semi_axes).astype(int) + 1
            lo = np.maximum(centre - reach, 0)
            hi = np.minimum(centre + reach + 1, tumour_class.shape)
            grid = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            inside = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi_axes)) <= 1.0
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            tumour_class[box][inside & free[box]] = klass


def make_phantom(seed: int, config: PhantomConfig = PhantomConfig()) -> PhantomCase:
    """Generate one phantom case, fully determined by ``seed`` and ``config`` (every random draw comes from one
    generator, in a fixed order: placement, lesions, deformation, lesion painting, mimics, textures, contrasts)."""
    rng = np.random.default_rng(seed)
    anatomy = load_icbm152()
    grid, spacing = config.grid, config.spacing_mm
    placement = _placement(rng, anatomy, grid)
    lesions = _draw_lesions(rng, placement)
    full_axes_mm = _physical_axes(grid, config.shape)  # z (S), y (P), x (L)
    box = _brain_box(anatomy, placement, full_axes_mm)
    axes_mm = [a[b] for a, b in zip(full_axes_mm, box)]
    coordinates = _anatomy_coordinates(rng, anatomy, placement, lesions, axes_mm, config)
    brain, prob, t1_template, tissue = _warped_tissues(anatomy, coordinates)
    del coordinates
    shape = brain.shape
    tumour_class = np.zeros(shape, dtype=np.uint8)
    edema_strength = np.zeros(shape, dtype=np.float32)
    for lesion in lesions:
        _paint_lesion(rng, lesion, axes_mm, prob, brain, tumour_class, edema_strength, spacing)
    labels = np.zeros(shape, dtype=np.uint8)
    for klass, label in ((_NCR, 1), (_NET, 1), (_ED, 2), (_ET, 3)):
        labels[tumour_class == klass] = label
    _paint_mimics(rng, prob, brain, tumour_class, spacing)
    images = _contrasts(rng, anatomy, prob, t1_template, brain, tumour_class, edema_strength, config)
    return PhantomCase(phantom_case_id(seed), seed, grid, {m: _embed(image, box, config.shape)
                                                           for m, image in images.items()},
                       _embed(labels, box, config.shape), _embed(tissue, box, config.shape), lesions)


def _anatomy_coordinates(rng: np.random.Generator, anatomy: Anatomy, placement, lesions: list[Lesion],
                         axes_mm: list[np.ndarray], config: PhantomConfig) -> np.ndarray:
    """For every voxel of the case's box, where in the template it samples: the placement, a smooth random
    deformation, and each lesion's mass effect (tissue pushed outwards). ``(3, Z, Y, X)`` template indices."""
    shape = tuple(len(a) for a in axes_mm)
    points = np.empty(shape + (3,), dtype=np.float32)  # LPS (x, y, z) per voxel
    points[..., 0] = axes_mm[2][None, None, :]
    points[..., 1] = axes_mm[1][None, :, None]
    points[..., 2] = axes_mm[0][:, None, None]
    displacement = np.stack(
        [config.deformation_mm * _smooth_noise(rng, shape, 24.0 / config.spacing_mm) for _ in range(3)], axis=-1
    )
    for lesion in lesions:  # mass effect: sample the anatomy closer to the centre, i.e. push tissue outwards
        offset = points - np.array(lesion.centre_mm, dtype=np.float32)
        sigma = lesion.core_radius_mm * lesion.edema_extent * 0.8
        falloff = np.exp(-np.einsum("...i,...i->...", offset, offset) / (2.0 * sigma * sigma))
        displacement += offset * (lesion.mass_effect * falloff)[..., None]
    source = anatomy.physical_to_index(placement.to_anatomy(points - displacement)).astype(np.float32)
    return np.moveaxis(source, -1, 0)


def _warped_tissues(anatomy: Anatomy, coordinates: np.ndarray):
    """The template warped onto the case: brain mask, CSF/GM/WM probabilities (summing to 1 in the brain), the
    T1 template, and the tissue classes (0 background, 1 CSF, 2 GM, 3 WM)."""
    brain = _warp(anatomy.brain.astype(np.float32), coordinates) > 0.5
    prob = {name: _warp(getattr(anatomy, name), coordinates) * brain for name in ("csf", "gm", "wm")}
    t1_template = _warp(anatomy.t1, coordinates) * brain
    total = prob["csf"] + prob["gm"] + prob["wm"]
    total[total == 0] = 1.0
    for name in prob:
        prob[name] /= total
    tissue = np.where(brain, 1 + np.argmax(np.stack([prob["csf"], prob["gm"], prob["wm"]]), axis=0), 0).astype(np.uint8)
    return brain, prob, t1_template, tissue


def _contrasts(rng: np.random.Generator, anatomy: Anatomy, prob: dict, t1_template: np.ndarray, brain: np.ndarray,
               tumour_class: np.ndarray, edema_strength: np.ndarray, config: PhantomConfig) -> dict[str, np.ndarray]:
    """The four sequences: tissue and tumour intensities with partial volume and texture, then each sequence's
    gain, bias field and Rician noise; int16, 0 outside the brain."""
    shape, spacing = brain.shape, config.spacing_mm
    sigma_vox = 0.7 / spacing  # partial-volume memberships of the tumour classes and a shared tumour texture
    membership = {k: ndimage.gaussian_filter((tumour_class == k).astype(np.float32), sigma_vox)
                  for k in (_NCR, _ED, _ET, _NET, _WMH, _VESSEL)}
    edema_strength = ndimage.gaussian_filter(edema_strength, sigma_vox)
    tumour_weight = sum(membership.values())
    texture = 1.0 + 0.08 * _smooth_noise(rng, shape, 3.0 / spacing)
    fine_texture = 1.0 + 0.03 * _smooth_noise(rng, shape, 2.0 / spacing)
    wm_level = float(np.median(anatomy.t1[anatomy.wm > 0.9]))
    images: dict[str, np.ndarray] = {}
    for modality in MODALITIES:
        mu = _INTENSITY[modality]
        healthy = prob["csf"] * mu[_CSF] + prob["gm"] * mu[_GM] + prob["wm"] * mu[_WM]
        if modality in ("t1", "t1ce"):  # keep the real template's T1 detail (deep nuclei, sulci)
            healthy = 0.5 * healthy + 0.5 * t1_template / wm_level
        image = healthy * (1.0 - tumour_weight)
        edema_weight = 0.7 * edema_strength
        image += membership[_ED] * ((1.0 - edema_weight) * healthy + edema_weight * mu[_ED])
        for klass in (_NCR, _ET, _NET, _WMH, _VESSEL):
            image += membership[klass] * mu[klass] * texture
        image *= fine_texture
        gain = _BASE_LEVEL[modality] * rng.uniform(0.85, 1.2)
        bias = np.exp(config.bias_amplitude * _smooth_noise(rng, shape, 80.0 / spacing))
        sigma = config.noise_fraction * gain
        real = image * gain * bias + sigma * rng.standard_normal(shape, dtype=np.float32)
        imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
        magnitude = np.sqrt(real * real + imaginary * imaginary)  # Rician
        images[modality] = np.where(brain, np.clip(np.round(magnitude), 1, 32767), 0).astype(np.int16)
    return images


def _warp(volume: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """Trilinear samples of an anatomy map at continuous ``(k, j, i)`` indices (0 outside)."""
    return ndimage.map_coordinates(volume, coordinates, order=1, mode="constant", cval=0.0, output=np.float32)


def _brain_box(anatomy: Anatomy, placement: _Placement, axes_mm: list[np.ndarray]) -> tuple[slice, slice, slice]:
    """Canonical index box of the phantom grid that holds the placed brain (with room for the deformations)."""
    brain_voxels = np.argwhere(anatomy.brain)
    lo, hi = brain_voxels.min(0), brain_voxels.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    target = placement.to_target(anatomy.index_to_physical(corners))  # LPS
    margin = 12.0
    return _index_box(axes_mm, target.min(0) - margin, target.max(0) + margin)


def _embed(array: np.ndarray, box: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> np.ndarray:
    full = np.zeros(shape, dtype=array.dtype)
    full[box] = array
    return full


def write_phantom(case: PhantomCase, out_dir: str | Path) -> CaseFiles:
    """Write a phantom as a BraTS 2018–2021 case folder ``out_dir/<id>/`` and return its files."""
    return write_phantom_files(case, Path(out_dir) / case.case_id)


def write_phantom_files(case: PhantomCase, folder: str | Path) -> CaseFiles:
    """Write a phantom's files (BraTS 2018–2021 naming) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {m: case.grid.write(case.images[m], folder / f"{case.case_id}_{m}.nii.gz") for m in MODALITIES}
    seg = case.grid.write(BRATS2021.from_classes(case.labels), folder / f"{case.case_id}_seg.nii.gz")
    tissue = case.grid.write(case.tissue, folder / f"{case.case_id}_tissue.nii.gz")
    description = {
        "case_id": case.case_id,
        "seed": case.seed,
        "generator": "BrainTumorExplainLib.data.phantom",
        "label_convention": BRATS2021.name,
        "tissue_labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
        "lesions": [asdict(lesion) for lesion in case.lesions],
    }
    (folder / f"{case.case_id}_phantom.json").write_text(json.dumps(description, indent=2) + "\n")
    (folder / "ICBM152_NOTICE.txt").write_text(ICBM152_NOTICE)
    return CaseFiles(**paths, seg=seg, tissue=tissue, case_id=case.case_id, naming="brats2021")
