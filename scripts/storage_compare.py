"""What the default storage of explain's maps costs, measured (issue 36): two explain runs of one case with the same
seed — the default (8-bit levels with each map's own scale) and ``--full-resolution`` (float32, as computed) — compared
map for map on the case's grid: megabytes per kind, the largest error as a share of the map's peak, and the Pearson r
inside the brain (maps drawn "≈ 0" in the report's montage — peak under NEGLIGIBLE_PEAK of the largest of their
class — listed apart); then the size of every output kind and of the whole folder. The option not taken is measured
beside: each Grad-CAM map on a coarser grid over the same box (the coarsest of ×8, ×4, ×2 in-plane, and ×2, ×4 across
slices, whose trilinear resampling back keeps r ≥ 0.99 in the brain), 8-bit, its gzip-compressed bytes.

    python -m BrainTumorExplainLib explain CASE --out DEFAULT
    python -m BrainTumorExplainLib explain CASE --out FULL --full-resolution
    python scripts/storage_compare.py --case CASE --default DEFAULT --full FULL [--json OUT.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from BrainTumorExplainLib.analyses.uncertainty import brain_pearson
from BrainTumorExplainLib.app.contract import GRADCAM, read_summary
from BrainTumorExplainLib.app.figures import NEGLIGIBLE_PEAK
from BrainTumorExplainLib.data.case import load_case, read_canonical

MB = 1e6
COARSER = ((4, 8), (2, 8), (1, 8), (2, 4), (1, 4), (1, 2), (1, 1))  # (across slices, in-plane), coarsest first


def folder_sizes(folder: Path) -> dict[str, float]:
    """Megabytes per top-level entry of a run folder (a folder's files summed), and the total."""
    sizes: dict[str, float] = defaultdict(float)
    for path in folder.rglob("*"):
        if path.is_file():
            sizes[path.relative_to(folder).parts[0]] += path.stat().st_size / MB
    sizes["total"] = sum(sizes.values())
    return {name: round(value, 2) for name, value in sorted(sizes.items())}


def coarser_bytes(exact: np.ndarray, brain: np.ndarray) -> tuple[int, float]:
    """The gzip-compressed 8-bit size of ``exact`` on the coarsest grid of :data:`COARSER` that gives r ≥ 0.99 in
    the brain once resampled back (area averages down, trilinear up: a viewer's interpolation), and that r."""
    import torch
    from torch.nn import functional as F

    from BrainTumorExplainLib.data.grid import quantise

    volume = torch.from_numpy(exact)[None, None]
    for factors in COARSER:
        size = [max(1, -(-n // f)) for n, f in zip(exact.shape, (factors[0], factors[1], factors[1]))]
        coarse = F.interpolate(volume, size=size, mode="area")
        back = F.interpolate(coarse, size=exact.shape, mode="trilinear", align_corners=False)[0, 0].numpy()
        r = float(brain_pearson(exact, back, brain))
        if r >= 0.99 or factors == (1, 1):
            return len(gzip.compress(quantise(coarse[0, 0].numpy())[0].tobytes(), 6)), r
    raise AssertionError("unreachable")


def compare_maps(default: Path, full: Path, brain: np.ndarray) -> dict[str, dict]:
    """Per map kind (gradcam, uncertainty): how many maps, their megabytes both ways, and per map the error."""
    kinds = {"gradcam": sorted((full / GRADCAM).glob("*.nii.gz")),
             "uncertainty": [full / f"{name}.nii.gz" for name in ("uncertainty", "entropy", "mutual_information")]}
    result = {}
    for kind, paths in kinds.items():
        maps = []
        for path in paths:
            exact = read_canonical(path, "map")[0].astype(np.float32)
            stored_path = default / path.relative_to(full)
            stored = read_canonical(stored_path, "map")[0].astype(np.float32)
            peak = float(exact.max())
            maps.append({"map": str(path.relative_to(full)), "peak": peak,
                         "class": path.name[:-len(".nii.gz")].rsplit("_", 1)[-1],
                         "max_error_of_peak": float(np.abs(stored - exact).max() / peak) if peak > 0 else 0.0,
                         "r_brain": float(brain_pearson(exact, stored, brain)) if peak > 0 else None,
                         "mb_full": path.stat().st_size / MB, "mb_default": stored_path.stat().st_size / MB})
            if kind == "gradcam" and peak > 0:
                maps[-1]["mb_coarser"] = coarser_bytes(exact, brain)[0] / MB
        largest = defaultdict(float)
        for entry in maps:
            largest[entry["class"]] = max(largest[entry["class"]], entry["peak"])
        shown = [m for m in maps if kind != "gradcam" or m["peak"] >= NEGLIGIBLE_PEAK * largest[m["class"]]]
        result[kind] = {"maps": len(maps), "negligible": len(maps) - len(shown),
                        "mb_full": round(sum(m["mb_full"] for m in maps), 2),
                        "mb_default": round(sum(m["mb_default"] for m in maps), 2),
                        "min_r_brain": round(min(m["r_brain"] for m in shown if m["r_brain"] is not None), 5),
                        "max_error_of_peak": round(max(m["max_error_of_peak"] for m in maps), 5),
                        "mb_coarser": round(sum(m.get("mb_coarser", 0.0) for m in maps), 2) if kind == "gradcam"
                        else None,
                        "per_map": maps}
    return result


def markdown(sizes: dict, maps: dict, seconds: dict) -> str:
    lines = ["| maps | count | MB float32 | MB default (8-bit) | smallest r in the brain | largest error / peak | "
             "MB coarser grid, 8-bit (not taken) |", "|---|---|---:|---:|---:|---:|---:|"]
    for kind, row in maps.items():
        coarser = f"{row['mb_coarser']:.1f}" if row["mb_coarser"] is not None else "–"
        lines.append(f"| {kind} | {row['maps']} ({row['negligible']} ≈ 0) | {row['mb_full']:.1f} | "
                     f"{row['mb_default']:.1f} | {row['min_r_brain']:.4f} | {row['max_error_of_peak']:.4f} | "
                     f"{coarser} |")
    names = sorted(set(sizes["full"]) | set(sizes["default"]), key=lambda n: (n == "total", n))
    lines += ["", "| output | MB with --full-resolution | MB default |", "|---|---:|---:|"]
    lines += [f"| {name} | {sizes['full'].get(name, 0):.1f} | {sizes['default'].get(name, 0):.1f} |"
              for name in names]
    lines += ["", "| stage | seconds with --full-resolution | seconds default |", "|---|---:|---:|"]
    lines += [f"| {stage} | {seconds['full'][stage]:.1f} | {seconds['default'].get(stage, 0):.1f} |"
              for stage in seconds["full"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", required=True, type=Path, help="the case both runs explained")
    parser.add_argument("--default", required=True, type=Path, help="explain's output with the default storage")
    parser.add_argument("--full", required=True, type=Path, help="explain's output with --full-resolution")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    brain = load_case(args.case).brain_mask  # on the case's own grid, where explain writes every map
    sizes = {"default": folder_sizes(args.default), "full": folder_sizes(args.full)}
    maps = compare_maps(args.default, args.full, brain)
    seconds = {name: read_summary(folder)["seconds"] for name, folder in (("default", args.default),
                                                                           ("full", args.full))}
    print(markdown(sizes, maps, seconds))
    if args.json:
        args.json.write_text(json.dumps({"case": str(args.case), "sizes": sizes, "seconds": seconds, "maps": maps},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
