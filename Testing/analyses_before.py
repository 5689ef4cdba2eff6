"""What the analyses gave before issue 38's rewrite (one network interface), kept as digests the rewrite must match.

``python Testing/analyses_before.py`` records ``Testing/data/analyses_before.npz`` with the code of the day; the
test (test_interface.py) recomputes every digest with today's code. Inputs are small: the 3 mm phantom of seed 5,
each shipped network, and the test bundle and nnU-Net folder the other tests build. For each network: the labels
(stored whole, compressed), and for each Grad-CAM and uncertainty map its sum, norm, maximum and the values at
16 seeded voxels among its upper half (a digest: the maps themselves would weigh megabytes in the history).
Dissection (recorded later, ``python Testing/analyses_before.py dissection``, before the two dissections became
one): each network's detector list on that case (controls on, every 8th brain slice of a 2D network), every
layer's threshold and IoU counts for the trained network and each control, and the voxels of its best detectors'
concept masks on the case (as ``explain --dissection`` writes them).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "analyses_before.npz"
SAMPLES = 16
SHIPPED_2D = ("denseunet", "resunet", "simunet")


def phantom_case(folder: Path):
    from BrainTumorExplainLib.data.case import load_case
    from BrainTumorExplainLib.data.phantom import PhantomConfig, make_phantom, write_phantom

    return load_case(write_phantom(make_phantom(5, PhantomConfig(spacing_mm=3.0)), folder))


def networks(folder: Path) -> dict:
    """Every kind of network the analyses serve, by name (the 3D ones seeded, untrained except segresnet3d)."""
    from BrainTumorExplainLib.models import load_model
    from BrainTumorExplainLib.testbed.nnunet_example import write_model_folder

    sys.path.insert(0, str(HERE))
    from test_bundle import make_bundle

    found = {name: load_model(name) for name in SHIPPED_2D + ("segresnet3d",)}
    found["bundle"] = load_model(str(make_bundle(folder / "tiny_bundle")))
    found["nnunet"] = load_model(str(write_model_folder(folder / "nnunet", folds=(0,))))
    return found


def tumour_slices(case) -> list[int]:
    """Two axial slices through the tumour: its largest and one 3 slices above."""
    areas = (case.labels > 0).sum(axis=(1, 2))
    z = int(areas.argmax())
    return [z, min(z + 3, len(areas) - 1)]


def digest(array: np.ndarray, seed: int) -> np.ndarray:
    """``[sum, norm, max, *positions, *values]`` of a map (positions: flat indices of SAMPLES seeded voxels among
    those above half its maximum; NaN-padded when fewer)."""
    flat = np.asarray(array, dtype=np.float64).ravel()
    peak = float(flat.max()) if flat.size else 0.0
    candidates = np.flatnonzero(flat > 0.5 * peak) if peak > 0 else np.arange(0)
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, min(SAMPLES, candidates.size), replace=False))
    positions = np.full(SAMPLES, np.nan)
    values = np.full(SAMPLES, np.nan)
    positions[:chosen.size], values[:chosen.size] = chosen, flat[chosen]
    return np.concatenate([[flat.sum(), np.sqrt((flat * flat).sum()), peak], positions, values])


def analyses(name: str, network, case) -> dict[str, np.ndarray]:
    """Everything recorded for one network: ``<name>/labels`` and its maps (``<name>/gradcam/…``,
    ``<name>/uncertainty/…``; Grad-CAM on :func:`tumour_slices` only)."""
    from BrainTumorExplainLib.app.stages import gradcam, uncertainty
    from BrainTumorExplainLib.models.inference import segment_case

    results = {f"{name}/labels": segment_case(network, case)}
    slices = tumour_slices(case)
    for target, pool in (("softmax", "image"), ("logits", "predicted")):  # the config's names (3D: probabilities)
        cams = gradcam.compute(network, case, "all", "tumour", target, pool, slices=slices)
        for (layer, channel), cam in cams.maps.items():  # a 3D network's maps cover the volume: the same slices
            results[f"{name}/gradcam/{target}/{pool}/{layer}/{channel}"] = cam[slices]
    volume = uncertainty.compute(network, case, passes=3, quick=False, seed=7)
    for map_name, values in volume.maps().items():
        results[f"{name}/uncertainty/{volume.method}/{map_name}"] = values
    return results


DISSECTION_SLICE_STEP = 8
MASKED_DETECTORS = 3


def dissection_records(name: str, network, case) -> dict[str, np.ndarray]:
    """``<name>/dissection/…``: the detectors (``layer/filter/concept`` and IoU), per network (``trained`` and each
    control) and layer its thresholds and ``[Σ intersection, Σ union]`` per concept, and the voxel count of each of
    the best detectors' concept masks."""
    from BrainTumorExplainLib.analyses.dissection import dissect, filter_concept_masks

    result = dissect(network, [case], slice_step=DISSECTION_SLICE_STEP)
    rows = result.detectors()
    records = {f"{name}/dissection/detectors": np.array([f"{r['layer']}/{r['filter']}/{r['concept']}" for r in rows]),
               f"{name}/dissection/detector_iou": np.array([r["iou"] for r in rows], dtype=np.float64)}
    for which, dissection in {"trained": result, **result.controls}.items():
        for layer, sums in dissection.layers.items():
            key = f"{name}/dissection/{which}/{layer}"
            records[f"{key}/thresholds"] = sums.thresholds.astype(np.float64)
            records[f"{key}/counts"] = np.stack([sums.intersection.sum(0), sums.union.sum(0)])
    chosen = [(r["layer"], r["filter"]) for r in rows[:MASKED_DETECTORS]]
    masks = filter_concept_masks(network, case, result, chosen) if chosen else {}
    records[f"{name}/dissection/mask_voxels"] = np.array([int(masks[pick].sum()) for pick in chosen], dtype=np.int64)
    return records


def stored_whole(key: str) -> bool:
    """Labels and dissection records are kept as they are; maps as digests."""
    return key.endswith("/labels") or "/dissection/" in key


def matches(key: str, today: np.ndarray, before: np.ndarray, scale: float, tolerance: float = 1e-5) -> str | None:
    """Why ``today``'s result differs from the ``before`` record, or None: labels equal but for a few voxels (2 in
    10^5: float sums ordered differently on another CPU may flip a tie); a map within ``tolerance × scale`` of the
    record voxel by voxel — its maximum and its values at the recorded voxels, its sum within that bound times its
    voxels, its norm times their square root."""
    if "/dissection/" in key:
        return dissection_matches(key, today, before)
    if key.endswith("/labels"):
        changed = int(np.count_nonzero(today != before)) if today.shape == before.shape else today.size
        return f"{changed} labels changed" if changed > 2e-5 * before.size else None
    flat = np.asarray(today, dtype=np.float64).ravel()
    positions, values = before[3:3 + SAMPLES], before[3 + SAMPLES:]
    kept = ~np.isnan(positions)
    bound = tolerance * scale
    now = np.array([flat.sum(), np.sqrt((flat * flat).sum()), flat.max()])
    if np.any(np.abs(now - before[:3]) > bound * np.array([flat.size, np.sqrt(flat.size), 1.0])):
        return f"sum, norm, max {now.tolist()} were {before[:3].tolist()} (bound {bound:.3g} per voxel)"
    off = np.abs(flat[positions[kept].astype(int)] - values[kept]).max(initial=0.0)
    return f"values off by {off:.3g} (bound {bound:.3g})" if off > bound else None


def dissection_matches(key: str, today: np.ndarray, before: np.ndarray) -> str | None:
    """Detector lists identical; thresholds within 1e-5 of the largest; IoU counts and mask voxels within 1e-4 of
    the largest count (a voxel whose upsampled activation sits on its threshold may fall either way)."""
    if today.shape != before.shape:
        return f"shape {today.shape} was {before.shape}: {today.tolist()[:8]} were {before.tolist()[:8]}"
    if key.endswith("/detectors"):
        return None if today.tolist() == before.tolist() else f"{today.tolist()} were {before.tolist()}"
    tolerance = 1e-4 if key.endswith(("/counts", "/mask_voxels")) else 1e-5
    bound = tolerance * max(float(np.abs(before).max(initial=0.0)), 1.0)
    off = float(np.abs(today.astype(np.float64) - before).max(initial=0.0))
    return f"off by {off:.3g} (bound {bound:.3g})" if off > bound else None


def scales(before: dict[str, np.ndarray]) -> dict[str, float]:
    """The scale each map is compared on: a Grad-CAM map's, the largest maximum among its network's maps of the same
    target and pooling (a map far below it — a deep layer of an untrained network, at 1e-11 where the others reach
    1e-6 — is the rounding left by the ReLU of a sum that cancels, which any reordering of the arithmetic changes);
    an uncertainty map's, its own maximum."""
    peaks: dict[str, float] = {}
    for key, value in before.items():
        if "/gradcam/" in key:
            group = key.rsplit("/", 2)[0]
            peaks[group] = max(peaks.get(group, 0.0), float(value[2]))
    scale = {}
    for key, value in before.items():
        if "/gradcam/" in key:
            scale[key] = peaks[key.rsplit("/", 2)[0]]
        elif not stored_whole(key):
            scale[key] = float(value[2])
    return scale


def load_before(path: Path = GOLDEN) -> dict[str, np.ndarray]:
    """The record: key → labels, or a map's digest."""
    stored = np.load(path)
    before = {key: stored[key] for key in stored.files if stored_whole(key)}
    before.update(zip(stored["digest_keys"].tolist(), stored["digests"]))
    return before


if __name__ == "__main__":
    only_dissection = sys.argv[1:] == ["dissection"]  # add the dissection records to the existing file
    recorded: dict[str, np.ndarray] = {}
    if only_dissection:
        recorded = {key: value for key, value in load_before().items() if "/dissection/" not in key}
    with tempfile.TemporaryDirectory() as scratch:
        case = phantom_case(Path(scratch))
        for name, network in networks(Path(scratch)).items():
            found = {} if only_dissection else analyses(name, network, case)
            found |= dissection_records(name, network, case)
            for key, value in found.items():
                recorded[key] = value if stored_whole(key) else digest(value, len(recorded))
    maps = [key for key in recorded if not stored_whole(key)]
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, digest_keys=np.array(maps), digests=np.stack([recorded[key] for key in maps]),
                        **{key: value for key, value in recorded.items() if stored_whole(key)})
    print(f"wrote {len(recorded)} records to {GOLDEN} ({GOLDEN.stat().st_size / 1e3:.0f} kB)")
