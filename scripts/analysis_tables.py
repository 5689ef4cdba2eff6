"""Markdown tables for docs/analyses.md from the shipped dissections and, when given, gradcam/uncertainty outputs.

    python scripts/analysis_tables.py [--gradcam OUT_OF_GRADCAM] [--uncertainty DIR_WITH_<model>/summary.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from BrainTumorExplainLib.analyses.dissection import Dissection, shipped_dissection_path

MODELS = ("denseunet", "resunet", "simunet")


def dissection_tables() -> str:
    lines = []
    for model in MODELS:
        dissection = Dissection.load(shipped_dissection_path(model))
        concepts = dissection.concepts
        lines += [f"**{model}** ({len(dissection.cases)} held-out phantoms, every {dissection.slice_step}th brain "
                  f"slice; filters detecting each concept, IoU ≥ {dissection.iou_cutoff}):", "",
                  "| layer | filters | " + " | ".join(concepts) + " |", "|---|---:|" + "---:|" * len(concepts)]
        for layer, counts in dissection.summary().items():
            lines.append(f"| {layer} | {len(dissection.layers[layer].thresholds)} | "
                         + " | ".join(str(counts[c]) for c in concepts) + " |")
        best = {}
        for row in dissection.detectors():
            best.setdefault(row["concept"], row)
        lines += ["", "Best detector per concept: " + "; ".join(
            f"{c} {r['layer']} #{r['filter']} (IoU {r['iou']:.2f})" for c, r in best.items()), ""]
    return "\n".join(lines)


def localisation_table(folder: Path) -> str:
    lines = []
    for model in MODELS:
        path = folder / model / "localisation.json"
        if not path.is_file():
            continue
        table = json.loads(path.read_text())["localisation"]
        lines += [f"**{model}**: share of the Grad-CAM mass inside the class's region (chance in brackets)", "",
                  "| layer | NCR/NET in TC | ED in WT | ET in ET |", "|---|---:|---:|---:|"]
        for layer, classes in table.items():
            cells = [f"{classes[c][r]['mass_inside']:.2f} ({classes[c][r]['chance']:.2f})"
                     for c, r in (("NCR/NET", "TC"), ("ED", "WT"), ("ET", "ET"))]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
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
