"""Markdown tables for docs/analyses.md from the shipped dissections and, when given, gradcam/uncertainty outputs.

    python scripts/analysis_tables.py [--gradcam OUT_OF_GRADCAM] [--uncertainty DIR_WITH_<model>/summary.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from BrainTumorExplainLib.analyses.controls import INPUT_LAYER
from BrainTumorExplainLib.analyses.dissection import Dissection, shipped_dissection_path
from BrainTumorExplainLib.data.case import MODALITIES

MODELS = ("denseunet", "resunet", "simunet")


def dissection_tables() -> str:
    lines = []
    for model in MODELS:
        dissection = Dissection.load(shipped_dissection_path(model))
        concepts = dissection.concepts
        over = dissection.summary(controlled=False)
        lines += [f"**{model}** ({len(dissection.cases)} held-out phantoms, every {dissection.slice_step}th brain "
                  f"slice): detectors per concept — filters with IoU ≥ {dissection.iou_cutoff} that also beat the "
                  f"best control by {dissection.margin} — and, in brackets, all filters with IoU ≥ "
                  f"{dissection.iou_cutoff}:", "",
                  "| layer | filters | " + " | ".join(concepts) + " |", "|---|---:|" + "---:|" * len(concepts)]
        for layer, counts in dissection.summary().items():
            lines.append(f"| {layer} | {len(dissection.layers[layer].thresholds)} | "
                         + " | ".join(f"{counts[c]} ({over[layer][c]})" for c in concepts) + " |")
        names = list(dissection.controls)
        lines += ["", f"Best filter per concept against the controls (random weights: seed {dissection.control_seed}):",
                  "", "| concept | trained | " + " | ".join(names) + " | learned | detectors (of those over the cutoff) |",
                  "|---|---|" + "---|" * len(names) + "---|---:|"]
        for row in dissection.control_table():
            cells = [f"{_filter_name(row[name])}: {row[name]['iou']:.2f}" for name in ("trained", *names)]
            lines.append(f"| {row['concept']} | " + " | ".join(cells) + f" | {'yes' if row['learned'] else 'no'} | "
                         f"{row['detectors']} ({row['over_cutoff']}) |")
        lines.append("")
    return "\n".join(lines)


def _filter_name(row: dict) -> str:
    """``layer #k``, or the sequence for the raw-input control (the paper networks' channel order)."""
    return MODALITIES[row["filter"]].upper() if row["layer"] == INPUT_LAYER else f"{row['layer']} #{row['filter']}"


def localisation_table(folder: Path) -> str:
    lines = []
    for model in MODELS:
        path = folder / model / "localisation.json"
        if not path.is_file():
            continue
        controls = json.loads(path.read_text())["controls"]
        targets = {name: controls["targets"][name] for name in ("NCR/NET", "ED", "ET")}
        lines += [f"**{model}**: share of the Grad-CAM mass inside the class's region, trained / random weights "
                  f"(seed {controls['seed']}), over {controls['slices']} slices (every 4th brain slice)", "",
                  "| layer | " + " | ".join(f"{name} in {t['region']}" for name, t in targets.items()) + " |",
                  "|---|" + "---:|" * len(targets)]
        for layer in next(iter(targets.values()))["layers"]:
            lines.append(f"| {layer} | " + " | ".join(f"{t['layers'][layer]['trained']:.2f} / "
                                                      f"{t['layers'][layer]['random weights']:.2f}"
                                                      for t in targets.values()) + " |")
        lines.append("| raw input, best channel | " + " | ".join(
            f"{t['raw input']['mass_inside']:.2f} ({t['raw input']['channel']})" for t in targets.values()) + " |")
        lines.append("| chance (a flat map) | " + " | ".join(f"{t['chance']:.2f}" for t in targets.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def uncertainty_table(folder: Path) -> str:
    lines = ["| model | mode | passes/slice | seconds | AUROC variance | AUROC entropy | AUROC MI | error rate | "
             "agreement with T=100 (r, variance) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model in MODELS:
        path = folder / model / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        maps = s["error_analysis"]["maps"]
        agreement = s.get("agreement_with_full", {})
        r = agreement.get("pearson_r", {}).get("uncertainty")
        lines.append(f"| {model} | {s['mode']} | {s['passes']['mean']} | {s['seconds']} | "
                     f"{maps['uncertainty']['auroc']:.3f} | {maps['entropy']['auroc']:.3f} | "
                     f"{maps['mutual_information']['auroc']:.3f} | {s['error_analysis']['error_rate']:.4f} | "
                     + (f"{r:.3f} (T=100: {agreement['seconds']} s)" if r is not None else "–") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gradcam", type=Path)
    parser.add_argument("--uncertainty", type=Path)
    args = parser.parse_args()
    print(dissection_tables())
    if args.gradcam:
        print(localisation_table(args.gradcam))
    if args.uncertainty:
        print(uncertainty_table(args.uncertainty))
