"""Uncertainty, calibration and failure detection on held-out phantoms, each number with its control and a bootstrap
interval over the cases (issue 41):

* voxel level: each map's AUROC and AUPRC for the mean prediction's misclassified brain voxels, over the brain and
  within 10 mm of the predicted tumour, beside the deterministic control (the entropy of one pass without
  sampling) scored on the **same** errors — and on its own;
* calibration: the expected calibration error (top-label, 20 bins) of the sampled mean prediction, of one
  deterministic pass, and of that pass after temperature scaling (the baseline a user tries first) fitted on
  validation phantoms the network never saw; a pooled reliability diagram;
* case level: the cases ranked by each map's mean over the sampled prediction's tumour (and by the one-pass
  entropy's over the same region) against 1 − WT Dice of the sampled prediction, as AURC beside the optimum, the
  mean risk and the spread of shuffled rankings.

    python -m BrainTumorExplainLib phantom --out VALIDATION --cases 4 --seed 2000   # phantoms no network saw
    python scripts/uncertainty_heldout.py run resunet --data HELDOUT --validation VALIDATION [--cases 10] \\
        --out benchmarks/results/uncertainty_heldout                            # ~4 minutes a case on 2 cores
        [--passes 100 --out benchmarks/results/uncertainty_heldout_t100]        # T = 100 instead of quick
    python scripts/uncertainty_heldout.py table resunet --out benchmarks/results/uncertainty_heldout \\
        [--markdown FILE] [--figure PNG]

Resumable: the temperature (temperature.json) and each case (<case>.json) are written as soon as they are made, and
a rerun skips what exists; the tables use every case written (and say how many).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import study

from BrainTumorExplainLib.analyses.uncertainty import (
    calibration,
    deterministic_control,
    deterministic_entropy,
    near_tumour,
    uncertainty_error_analysis,
    uncertainty_volume,
)
from BrainTumorExplainLib.data.case import as_case, find_cases
from BrainTumorExplainLib.models import load_pretrained
from BrainTumorExplainLib.models.inference import case_probabilities, labels_from_probabilities
from BrainTumorExplainLib.models.interface import analysed
from BrainTumorExplainLib.scoring.calibration import fit_temperature, scaled
from BrainTumorExplainLib.scoring.metrics import region_dice
from BrainTumorExplainLib.scoring.risk_coverage import aurc, aurc_against_chance

VOXELS_PER_CASE = 50_000  # brain voxels drawn from each validation case to fit the temperature (seeded)
SEED = 0


def temperature(model, validation: Path, folder: Path) -> float:
    """The temperature fitted on brain voxels of the validation cases (seeded draw), saved once."""
    path = folder / "temperature.json"
    if path.exists():
        return json.loads(path.read_text())["temperature"]
    network, rng = analysed(model), np.random.default_rng(SEED)
    probabilities, truth, cases = [], [], []
    for source in find_cases(validation):
        case = as_case(source)
        p = case_probabilities(model, case)
        brain = np.flatnonzero(case.brain_mask)
        chosen = rng.choice(brain, size=min(VOXELS_PER_CASE, brain.size), replace=False)
        probabilities.append(p.reshape(p.shape[0], -1)[:, chosen])
        truth.append(network.output_truth(case.labels).reshape(p.shape[0], -1)[:, chosen])
        cases.append(case.case_id)
    found = fit_temperature(np.concatenate(probabilities, 1), np.concatenate(truth, 1), network.outputs)
    study.write_whole(path, {"temperature": found, "cases": cases, "voxels_per_case": VOXELS_PER_CASE, "seed": SEED})
    return found


def one_case(model, case, fitted: float, passes: int | None = None) -> dict:
    """One case's record: quick test-time dropout, or ``passes`` fixed passes."""
    start = time.perf_counter()
    volume = uncertainty_volume(model, case, passes=passes or 100, quick=passes is None, seed=SEED)
    analysis = uncertainty_error_analysis(volume, case, model=model)
    probabilities = case_probabilities(model, case)
    control = deterministic_control(model, case, probabilities=probabilities, sampled_labels=volume.labels)
    brain = case.brain_mask
    one_pass = labels_from_probabilities(model, probabilities)
    tumour = (volume.labels > 0) & brain  # the region the maps' case values average over
    entropy = deterministic_entropy(model, probabilities)
    for entry in analysis["maps"].values():
        entry.pop("bins")
    return {"case": case.case_id, "seconds": round(time.perf_counter() - start, 1),
            "mode": "quick" if passes is None else f"T={passes}",
            "passes_mean": float(volume.passes[volume.passes > 0].mean()),
            "dice": region_dice(volume.labels, case.labels),
            "dice_one_pass": region_dice(one_pass, case.labels),
            "analysis": analysis, "control": control,
            "control_case_uncertainty": float(entropy[tumour].mean()) if tumour.any() else None,
            "temperature": fitted,
            "scaled_calibration": calibration(model, scaled(probabilities, fitted, analysed(model).outputs),
                                              case.labels, brain, near_tumour(volume.labels, brain, case.spacing))}


def run(args: argparse.Namespace) -> None:
    model = load_pretrained(args.model)
    folder = args.out / args.model
    folder.mkdir(parents=True, exist_ok=True)
    fitted = temperature(model, args.validation, folder)
    print(f"temperature {fitted:.3f}", flush=True)
    for source in find_cases(args.data)[:args.cases]:
        path = folder / f"{Path(source).name}.json"
        if path.exists():
            continue
        record = one_case(model, as_case(source), fitted, args.passes)
        study.write_whole(path, record)
        print(f"wrote {path} ({record['seconds']:.0f} s)", flush=True)


def _interval(values) -> str:
    return study.interval(values, digits=3)


def table(args: argparse.Namespace) -> str:
    folder = args.out / args.model
    records = study.records(folder)
    fitted = study.load(folder / "temperature.json")
    maps = list(records[0]["analysis"]["maps"])
    modes = sorted({r.get("mode", "quick") for r in records})
    lines = [f"{args.model}: {len(records)} held-out phantoms, test-time dropout {', '.join(modes)} (seed {SEED}, "
             f"{np.mean([r['passes_mean'] for r in records]):.1f} passes per slice on average); mean over the cases "
             "[95 % interval: cases resampled, 1000 draws, seed 0]. Control: the entropy of one deterministic pass. "
             "Errors: the sampled mean prediction's, unless said.", "",
             "| map | AUROC, brain | AUROC, ≤ 10 mm of the tumour | AUPRC, brain |", "|---|---:|---:|---:|"]
    for name in maps:
        entries = [r["analysis"]["maps"][name] for r in records]
        lines.append(f"| {name} | {_interval([e['auroc'] for e in entries])} | "
                     f"{_interval([e['auroc_near_tumour'] for e in entries])} | "
                     f"{_interval([e['auprc'] for e in entries])} |")
    same = [r["control"]["same_errors"] for r in records]
    lines.append(f"| control, same errors | {_interval([e['auroc'] for e in same])} | "
                 f"{_interval([e['auroc_near_tumour'] for e in same])} | {_interval([e['auprc'] for e in same])} |")
    lines.append(f"| control, its own errors | {_interval([r['control']['auroc'] for r in records])} | – | "
                 f"{_interval([r['control']['auprc'] for r in records])} |")
    beats = {name: sum(r["analysis"]["maps"][name]["auroc"] > r["control"]["same_errors"]["auroc"] for r in records)
             for name in maps}
    lines += ["", "Cases where the map's AUROC beats the control's on the same errors: "
              + ", ".join(f"{name} {count} of {len(records)}" for name, count in beats.items()) + ".", "",
              f"Calibration (top-label ECE, 20 bins, brain voxels; temperature {fitted['temperature']:.2f} fitted on "
              f"{len(fitted['cases'])} validation phantoms ({', '.join(fitted['cases'])}; the network never saw "
              f"them), {fitted['voxels_per_case']} voxels each):", "",
              "| prediction | ECE, brain | class-mean ECE (MONAI's), brain | ECE, ≤ 10 mm of the tumour |",
              "|---|---:|---:|---:|"]
    for label, key in ((f"sampled mean (TTD, {', '.join(modes)})", lambda r: r["analysis"]["calibration"]),
                       ("one deterministic pass", lambda r: r["control"]["calibration"]),
                       ("one pass, temperature-scaled", lambda r: r["scaled_calibration"])):
        lines.append(f"| {label} | {_interval([key(r)['ece'] for r in records])} | "
                     f"{_interval([key(r)['ece_classes'] for r in records])} | "
                     f"{_interval([key(r)['near_tumour']['ece'] for r in records])} |")
    risk = [1 - r["dice"]["WT"] for r in records]
    lines += ["", "Which cases failed? Cases ranked by each map's mean over the sampled prediction's tumour against "
              f"its 1 − WT Dice (AURC, lower is better; {len(records)} cases; one ranking, so its spread is that of "
              "the same cases shuffled 1000 times, seed 0: their 95 % range and the share at or below it, p):", "",
              "| ranking | AURC | optimal | shuffled: 95 % range | p |", "|---|---:|---:|---:|---:|"]
    rankings = {name: [r["analysis"]["case_uncertainty"][name] for r in records] for name in maps}
    rankings["control (one-pass entropy)"] = [r["control_case_uncertainty"] for r in records]
    for name, values in rankings.items():
        found, chance = aurc(values, risk), aurc_against_chance(values, risk)
        lines.append(f"| {name} | {found['aurc']:.4f} | {found['optimal']:.4f} | "
                     f"{chance['low']:.4f}–{chance['high']:.4f} | {chance['p']:.3f} |")
    if args.figure:
        _reliability_figure(records, args.figure, args.model)
    return "\n".join(lines) + "\n"


def _reliability_figure(records: list[dict], path: Path, model: str) -> None:
    """The pooled reliability diagram of the three predictions (bins summed over the cases)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="calibrated")
    for label, key in (("sampled mean", lambda r: r["analysis"]["calibration"]),
                       ("one pass", lambda r: r["control"]["calibration"]),
                       ("one pass, T-scaled", lambda r: r["scaled_calibration"])):
        rows = [key(r)["reliability"] for r in records]
        count = np.array([[row["count"] for row in case] for case in rows], dtype=float).sum(0)
        confidence = np.array([[(row["confidence"] or 0) * row["count"] for row in case] for case in rows]).sum(0)
        accuracy = np.array([[(row["accuracy"] or 0) * row["count"] for row in case] for case in rows]).sum(0)
        filled = count > 0
        axis.plot(confidence[filled] / count[filled], accuracy[filled] / count[filled], marker="o", markersize=3,
                  label=label)
    axis.set(xlabel="confidence (top-label probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
             title=f"{model}: {len(records)} held-out phantoms, brain voxels")
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path)
    parser.add_argument("--validation", type=Path, help="phantoms the network never saw, for the temperature")
    parser.add_argument("--cases", type=int, default=None, help="the first N held-out cases (default: all)")
    parser.add_argument("--figure", type=Path, help="the pooled reliability diagram (table)")
    parser.add_argument("--passes", type=int, help="T fixed passes (e.g. 100, on a GPU or as a long job; give it its "
                        "own --out) instead of quick mode")


if __name__ == "__main__":
    study.main(__doc__, "benchmarks/results/uncertainty_heldout", run, table, arguments, needs=("data", "validation"))
