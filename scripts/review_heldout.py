"""Where to look, measured on held-out phantoms: explain's own segmentation, uncertainty and review stages per case
(no Grad-CAM, dissection or feature visualisation: the review does not use them to rank), then

* lesion level: does a predicted lesion's mean uncertainty tell false positives from true positives? AUROC of each
  map over the lesions of every case pooled, beside the deterministic entropy of one pass without dropout (the
  control), with a 95 % interval from resampling the cases (bootstrap, seeded);
* review list: the share of the misclassified voxels inside the top-k regions and of the false-positive and missed
  lesions they touch, per case, beside the same regions' shapes placed at random in the brain and beside the band of
  as much volume along the predicted tumour's surface (where one looks without an uncertainty map).

    python scripts/review_heldout.py --data HELDOUT --model segresnet3d --out DIR [--json OUT.json]

Resumable: each case's review summary is written to DIR/<case>.json as soon as it is made, and a rerun skips the
cases already there; the tables are made from every case in DIR (so a partial run gives partial tables, and says how
many cases they rest on).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from BrainTumorExplainLib.analyses.review import LesionRow, Place, lesion_auroc
from BrainTumorExplainLib.app.explain import Network, _load, load_network
from BrainTumorExplainLib.app.settings import ExplainConfig
from BrainTumorExplainLib.app.stages import review, segmentation, uncertainty
from BrainTumorExplainLib.data.case import find_cases
from BrainTumorExplainLib.scoring.statistics import mean_interval

BOOTSTRAP = 1000


def review_of(case_folder: Path, config: ExplainConfig, network: Network) -> dict:
    """The review summary of one case, from explain's own stages (run in a folder that is deleted afterwards)."""
    with tempfile.TemporaryDirectory(prefix="bte_review_") as scratch:
        run, folder = _load(case_folder, Path(scratch) / "run", config, False, network)
        with folder as work:
            run.work = work
            for stage in (segmentation, uncertainty, review):
                stage.run(run)
    return run.summary["review"]


def rows_of(summary: dict) -> list[LesionRow]:
    return [LesionRow(**{**row, "place": Place(**row["place"])}) for row in summary["lesions"]]


def pooled_auroc(summaries: list[dict], seed: int = 0) -> dict:
    """Lesion AUROC per map over every case's lesions, with the cases resampled for a 95 % interval."""
    per_case = [rows_of(summary) for summary in summaries]
    found = lesion_auroc([row for rows in per_case for row in rows])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP):
        chosen = rng.integers(len(per_case), size=len(per_case))
        draws.append(lesion_auroc([row for index in chosen for row in per_case[index]])["auroc"])
    interval = {name: [round(float(np.nanpercentile([d[name] if d[name] is not None else np.nan for d in draws],
                                                    q)), 3) for q in (2.5, 97.5)] for name in found["auroc"]}
    return {**found, "interval": interval, "bootstrap": BOOTSTRAP, "seed": seed}


def _interval(values: np.ndarray) -> list[float]:
    """A 95 % interval of the mean over cases (:func:`scoring.statistics.mean_interval`: cases resampled, seeded)."""
    found = mean_interval(values, BOOTSTRAP)
    return [round(found["low"], 3), round(found["high"], 3)]


def coverage_table(summaries: list[dict]) -> dict:
    """Per k: the mean, SD and a bootstrap 95 % interval over cases of the top-k's shares, the random placements'
    mean, and in how many cases the top k beat the random placements' 97.5th percentile (and the surface band)."""
    table = {}
    for k in sorted({k for s in summaries for k in s["coverage"]["top"]}, key=int):
        entries = [s["coverage"]["top"][k] for s in summaries if k in s["coverage"]["top"]]
        row = {"cases": len(entries)}
        for name in ("errors_inside", "error_lesions_hit"):
            usable = [e for e in entries if e[name] is not None and e["random"][name] is not None]
            found = np.array([e[name] for e in usable])
            band = np.array([e["boundary"][name] if e.get("boundary") else 0.0 for e in usable])
            row[name] = {"mean": round(float(found.mean()), 3), "sd": round(float(found.std(ddof=1)), 3)
                         if len(found) > 1 else None, "interval": _interval(found),
                         "random_mean": round(float(np.mean(
                             [e["random"][name]["mean"] for e in usable])), 3),
                         "beats_random": sum(e[name] > e["random"][name]["high"] for e in usable),
                         "boundary_mean": round(float(band.mean()), 3),
                         "boundary_sd": round(float(band.std(ddof=1)), 3) if len(band) > 1 else None,
                         "beats_boundary": int((found > band).sum()), "of": len(usable)}
        table[k] = row
    return table


def markdown(model: str, cases: int, auroc: dict, coverage: dict) -> str:
    lines = [f"**{model}**, {cases} held-out phantoms: {auroc['tp']} true-positive and {auroc['fp']} false-positive "
             f"predicted lesions (all regions).", "", "| map | lesion AUROC (FP vs TP) | 95 % interval (cases "
             "resampled) |", "|---|---:|---|"]
    for name, value in auroc["auroc"].items():
        low, high = auroc["interval"][name]
        lines.append(f"| {name} | {value:.3f} | {low:.3f}–{high:.3f} |" if value is not None
                     else f"| {name} | – | |")
    for name, what in (("errors_inside", "misclassified voxels inside"),
                       ("error_lesions_hit", "FP/FN lesions touched")):
        lines += ["", f"| top k | {what} (mean ± SD [95 % interval]) | random, same shapes | cases beating random "
                  "| surface band, same volume | cases beating the band |", "|---:|---:|---:|---:|---:|---:|"]
        for k, row in coverage.items():
            e = row[name]
            lines.append(f"| {k} | {e['mean']:.3f} ± {e['sd']:.3f} [{e['interval'][0]:.3f}–{e['interval'][1]:.3f}] "
                         f"| {e['random_mean']:.3f} | {e['beats_random']}/{e['of']} | {e['boundary_mean']:.3f} ± "
                         f"{e['boundary_sd']:.3f} | {e['beats_boundary']}/{e['of']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--model", default="denseunet")
    parser.add_argument("--out", required=True, type=Path, help="one <case>.json per case (kept: reruns resume)")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()
    config = ExplainConfig(model=args.model, scene=False)
    args.out.mkdir(parents=True, exist_ok=True)
    folders = find_cases(args.data)
    network = load_network(config)  # once for every case
    for folder in folders:
        done = args.out / f"{folder.name}.json"
        if done.is_file():
            continue
        summary = review_of(folder, config, network)
        partial = done.with_suffix(".partial")
        partial.write_text(json.dumps(summary) + "\n")
        partial.replace(done)  # a case's file is whole or absent
        print(f"{folder.name}: {len(summary['regions'])} regions, {len(summary['lesions'])} lesions", flush=True)
    cases = [folder.name for folder in folders if (args.out / f"{folder.name}.json").is_file()]
    summaries = [json.loads((args.out / f"{name}.json").read_text()) for name in cases]
    auroc, coverage = pooled_auroc(summaries), coverage_table(summaries)
    print(markdown(args.model, len(summaries), auroc, coverage))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "cases": cases, "auroc": auroc,
                                         "coverage": coverage}, indent=1) + "\n")


if __name__ == "__main__":
    main()
