"""Held-out phantoms re-acquired as scanners and PACS give them, segmented by the shipped 2D networks before and after
the issue-35 preprocessing (the brain's edge cut back, the alignment measured on one grid), WT/TC/ET Dice against the
truth on each scan's own grid, beside the upright 1 mm case (the goal).

Every acquisition is a skull-stripped scan interpolated onto another grid without stripping again (what resampling a
BraTS case with any image tool gives): thicker slices, tilted and flipped grids, and sequences moved between series
then put on the FLAIR's grid. "before" is the default preprocessing as it was before issue 35 — the mask as read
(``--brain-mask as-read``) and no co-registration for sequences on one grid (``--coregister never``; sequences on
different grids were registered then too) — "after" is today's default.

    python scripts/acquisition_sweep.py --data HELDOUT --out DIR [--cases 5] [--json OUT.json --markdown OUT.md]

Resumable: each (case, acquisition) result is written to DIR/<case>/<acquisition>.json as soon as it is made, and a
rerun skips those there; the tables are made from every result in DIR (a partial run gives partial tables, and says
how many cases they rest on).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from BrainTumorExplainLib.data.acquisition import Acquisition, reacquire
from BrainTumorExplainLib.data.case import check_case_files, find_case_files, find_cases, load_case
from BrainTumorExplainLib.data.registration import sequences_share_one_grid
from BrainTumorExplainLib.models.inference import segment_input
from BrainTumorExplainLib.models.registry import load_model
from BrainTumorExplainLib.models.space import prepare_case
from BrainTumorExplainLib.scoring.metrics import score_segmentation
from BrainTumorExplainLib.scoring.statistics import mean_interval

NETWORKS = ("denseunet", "resunet", "simunet", "segresnet3d")
REGIONS = ("WT", "TC", "ET")
INTERPOLATED = {"stripped": False}
ACQUISITIONS = {  # name -> Acquisition; "upright" is the case as shipped (1 mm, axis-aligned, sharply stripped)
    "upright": None,
    "1 mm, 15° tilt": Acquisition(tilt_degrees=(15.0, 0.0, 0.0), **INTERPOLATED),
    "0.9×0.9×2 mm": Acquisition(spacing_mm=(0.9, 0.9, 2.0), **INTERPOLATED),
    "0.9×0.9×3 mm": Acquisition(spacing_mm=(0.9, 0.9, 3.0), **INTERPOLATED),
    "0.9×0.9×4 mm": Acquisition(spacing_mm=(0.9, 0.9, 4.0), **INTERPOLATED),
    "0.9×0.9×6 mm": Acquisition(spacing_mm=(0.9, 0.9, 6.0), **INTERPOLATED),
    "0.8×0.8×3 mm, 20° tilt": Acquisition(spacing_mm=(0.8, 0.8, 3.0), tilt_degrees=(20.0, 0.0, 5.0), **INTERPOLATED),
    "1.2×0.9×2 mm, flipped L-R": Acquisition(spacing_mm=(1.2, 0.9, 2.0), flips=(True, False, False), **INTERPOLATED),
    "1.3×1.3×1.5 mm, flipped, T1/T1ce/T2 moved 3 mm/3° onto one grid": Acquisition(
        spacing_mm=(1.3, 1.3, 1.5), flips=(True, False, False), motion_mm=3.0, motion_degrees=3.0, seed=7,
        motion_on_one_grid=True, **INTERPOLATED),
}


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") + ".json"


def dice(labels: np.ndarray, truth) -> dict:
    scored = score_segmentation(labels, truth.labels, truth.spacing, lesion_rule=None)
    return {region: round(scored[region].values["dice"], 4) for region in REGIONS}


def measure(case_folder: Path, name: str, acquisition: Acquisition | None, networks: dict, scratch: Path,
            when_settings: tuple[str, ...] = ("before", "after")) -> dict:
    """One case through one acquisition: each network's Dice before and after (or only ``when_settings``), and what
    the preprocessing did."""
    files = find_case_files(case_folder) if acquisition is None else reacquire(case_folder, scratch / "case",
                                                                                acquisition)
    truth = load_case(files)
    one_grid = sequences_share_one_grid(check_case_files(files))
    settings = {"before": {"coregister": "never" if one_grid else "auto", "brain_mask": "as-read"},
                "after": {"coregister": "auto", "brain_mask": "auto"}}
    result = {"case": truth.case_id, "acquisition": name,
              "settings": None if acquisition is None else asdict(acquisition), "dice": {}, "preprocessing": {}}
    for when in when_settings:
        options = settings[when]
        for network_name, network in networks.items():
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # off-grid and grid-mismatch warnings: the point of the sweep
                case, steps = prepare_case(files, network, **options)
            labels = segment_input(network, case, torch.device("cpu"))[1]
            result["dice"].setdefault(when, {})[network_name] = dice(labels, truth)
            if network_name == next(iter(networks)):
                as_read = case.original or case
                result["preprocessing"][when] = {
                    "steps": steps.lines(), "seconds": round(time.perf_counter() - started, 1),
                    "registrations": {sequence: {"applied": found.applied, "misaligned_mm": found.misaligned_mm,
                                                 "residual_mm": found.residual_mm}
                                      for sequence, found in (as_read.registrations or {}).items()}}
    return result


def summarise(out: Path) -> dict:
    """Per acquisition and network: the mean Dice before and after over the cases done, the mean change from each
    case's own upright Dice (after) with a 95 % bootstrap interval, and in how many cases it is within 0.05 (WT)."""
    results = [json.loads(path.read_text()) for path in sorted(out.glob("*/*.json"))]
    upright = {r["case"]: r["dice"]["after"] for r in results if r["acquisition"] == "upright"}
    table = {}
    for name in ACQUISITIONS:
        rows = [r for r in results if r["acquisition"] == name and r["case"] in upright]
        if not rows:
            continue
        entry = {"cases": len(rows)}
        for network in NETWORKS:
            if network not in rows[0]["dice"]["after"]:
                continue
            found = {}
            for when in [when for when in ("before", "after") if when in rows[0]["dice"]]:
                found[when] = {region: round(float(np.mean([r["dice"][when][network][region] for r in rows])), 3)
                               for region in REGIONS}
            change = np.array([r["dice"]["after"][network]["WT"] - upright[r["case"]][network]["WT"] for r in rows])
            interval = mean_interval(change, 1000) if len(rows) > 1 else {"low": None, "high": None}
            found["wt_change_from_upright"] = {"mean": round(float(change.mean()), 3),
                                              "interval": [None if interval["low"] is None else round(interval["low"], 3),
                                                           None if interval["high"] is None else round(interval["high"], 3)],
                                              "within_0.05": int((change >= -0.05).sum())}
            entry[network] = found
        table[name] = entry
    return table


def markdown(table: dict) -> str:
    lines = ["| acquisition | cases | network | WT / TC / ET before | WT / TC / ET after | WT after − upright "
             "(mean, 95 % CI) | cases within 0.05 |", "|---|---:|---|---|---|---|---:|"]
    for name, entry in table.items():
        for network in NETWORKS:
            if network not in entry:
                continue
            found = entry[network]
            change = found["wt_change_from_upright"]
            interval = "—" if change["interval"][0] is None else f"[{change['interval'][0]:+.3f}, {change['interval'][1]:+.3f}]"
            lines.append(f"| {name} | {entry['cases']} | {network} | "
                         + " | ".join(" / ".join(f"{found[when][r]:.3f}" for r in REGIONS) if when in found else "—"
                                      for when in ("before", "after"))
                         + f" | {change['mean']:+.3f} {interval} | {change['within_0.05']} of {entry['cases']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of held-out case folders")
    parser.add_argument("--out", type=Path, required=True, help="folder of per-(case, acquisition) results")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--networks", default=",".join(NETWORKS[:3]), help=f"any of {', '.join(NETWORKS)}")
    parser.add_argument("--after-only", action="store_true", help="only today's default preprocessing (to compare "
                        "weights, e.g. retrained ones, rather than preprocessings)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    networks = {name: load_model(name) for name in args.networks.split(",")}
    for case_folder in find_cases(args.data)[: args.cases]:
        for name, acquisition in ACQUISITIONS.items():
            target = args.out / case_folder.name / _file_name(name)
            if target.exists():
                continue
            with tempfile.TemporaryDirectory(prefix="bte_sweep_") as scratch:
                result = measure(case_folder, name, acquisition, networks, Path(scratch),
                                 ("after",) if args.after_only else ("before", "after"))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            partial.write_text(json.dumps(result, indent=1))
            partial.replace(target)
            print(f"{case_folder.name} {name}: " + ", ".join(
                f"{n} WT " + " → ".join(f"{result['dice'][when][n]['WT']:.3f}" for when in result["dice"])
                for n in networks), flush=True)
    table = summarise(args.out)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    text = markdown(table)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
