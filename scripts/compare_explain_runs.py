"""Compare two explain output folders file by file: the before/after check of a rewrite that must not change results.

    python scripts/compare_explain_runs.py BEFORE AFTER [--json OUT.json]

For every volume both runs wrote: a label or mask volume (integer voxels) — how many voxels differ; a map — the
largest difference relative to the larger of the two maps' peaks, and for Grad-CAM maps also relative to the run's
largest Grad-CAM peak (as Testing/test_interface.py compares them: a deep layer's map of an untrained or saturated
output can peak a million times lower than the others, where its values are the rounding of a sum that cancels). Files only one run wrote are listed, and the
summaries' detector lists (the concepts section) compared. Run explain with --full-resolution for float maps
(the default 8-bit levels hide differences below half a level).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def volumes(folder: Path) -> dict[str, Path]:
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*"))
            if path.name.endswith(VOLUME_SUFFIXES)}


def compare_volume(before: Path, after: Path) -> dict:
    a, b = (sitk.ReadImage(str(path)) for path in (before, after))
    row = {"same_grid": a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin())
           and np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetDirection(), b.GetDirection())}
    x, y = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
    if x.shape != y.shape:
        return {**row, "shape": [list(x.shape), list(y.shape)]}
    if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
        return {**row, "kind": "labels", "voxels": int(x.size), "differing": int(np.count_nonzero(x != y))}
    x, y = x.astype(np.float64), y.astype(np.float64)
    scale = max(float(np.abs(x).max()), float(np.abs(y).max()), 1e-30)
    return {**row, "kind": "map", "peak": scale, "relative_difference": float(np.abs(x - y).max() / scale)}


def detectors(folder: Path):
    summary = json.loads((folder / "summary.json").read_text())
    concepts = summary.get("concepts", {})
    return concepts.get("detectors", concepts)


def compare(before: Path, after: Path) -> dict:
    a, b = volumes(before), volumes(after)
    rows = {name: compare_volume(a[name], b[name]) for name in sorted(set(a) & set(b))}
    cams = {name: row for name, row in rows.items() if name.startswith("gradcam/") and row.get("kind") == "map"}
    scale = max((row["peak"] for row in cams.values()), default=0.0)
    for row in cams.values():
        row["difference_of_largest_gradcam_peak"] = row["relative_difference"] * row["peak"] / scale
    return {"volumes": rows, "only_before": sorted(set(a) - set(b)), "only_after": sorted(set(b) - set(a)),
            "same_detectors": detectors(before) == detectors(after)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--json", type=Path, help="also write every row as JSON")
    args = parser.parse_args(argv)
    result = compare(args.before, args.after)
    labels = [r for r in result["volumes"].values() if r.get("kind") == "labels"]
    maps = [r for r in result["volumes"].values() if r.get("kind") == "map"]
    print(f"{len(result['volumes'])} volumes in both runs: {len(labels)} label/mask volumes, {len(maps)} maps")
    print(f"  label voxels differing: {sum(r['differing'] for r in labels)} of {sum(r['voxels'] for r in labels)}")
    worst = max(maps, key=lambda r: r["relative_difference"], default=None)
    if worst is not None:
        name = next(n for n, r in result["volumes"].items() if r is worst)
        print(f"  largest map difference: {worst['relative_difference']:.3g} of its peak ({name})")
    cams = [r for r in maps if "difference_of_largest_gradcam_peak" in r]
    if cams:
        print(f"  largest Grad-CAM difference of the run's largest Grad-CAM peak: "
              f"{max(r['difference_of_largest_gradcam_peak'] for r in cams):.3g}")
    print(f"  every grid equal: {all(r['same_grid'] for r in result['volumes'].values())}")
    print(f"  only before: {result['only_before'] or 'none'}; only after: {result['only_after'] or 'none'}")
    print(f"  detector lists equal: {result['same_detectors']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
