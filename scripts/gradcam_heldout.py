"""Grad-CAM on held-out phantoms, per case, with its controls and its sanity check (issue 41):

* localisation: the share of each class map's mass inside its region, layer by layer, for the trained network, the
  same architecture with random weights (seed 0) and the best raw input channel, beside chance (the region's share
  of the brain) — a mean over the cases with a bootstrap interval;
* cascading randomisation (Adebayo et al. 2018; :func:`analyses.sanity.cascading_randomisation`): each layer's map's
  Spearman ρ with the trained map once the output layer is random, and once every layer down to its own is.

    python scripts/gradcam_heldout.py run resunet --data HELDOUT [--cases 5] --out benchmarks/results/gradcam_heldout
    python scripts/gradcam_heldout.py table resunet --out benchmarks/results/gradcam_heldout [--markdown FILE]

Every 4th brain slice of each case, the classes of ``tumour``. Resumable: each case's record (<case>.json) is written
when it is done, and a rerun skips those that exist.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import study

from BrainTumorExplainLib.analyses import CONTROL_SEED
from BrainTumorExplainLib.analyses.controls import random_weights
from BrainTumorExplainLib.analyses.gradcam import gradcam_volume, localisation, localisation_controls, raw_input_volume
from BrainTumorExplainLib.analyses.sanity import cascading_randomisation
from BrainTumorExplainLib.data.case import as_case, find_cases
from BrainTumorExplainLib.models import load_pretrained
from BrainTumorExplainLib.models.interface import analysed

SLICE_STEP = 4


def one_case(model, case) -> dict:
    start = time.perf_counter()
    network = analysed(model)
    slices = case.brain_slices()[::SLICE_STEP]
    trained = gradcam_volume(model, case, "all", "tumour", slices=slices)
    random = gradcam_volume(random_weights(model, CONTROL_SEED), case, "all", "tumour", slices=slices)
    raw = raw_input_volume(network.input_channels(case), network.channel_names, slices)
    regions = {trained.name(c): trained.region(c) for c in trained.classes}
    controls = localisation_controls(localisation(trained, case), localisation(random, case), localisation(raw, case),
                                     regions, CONTROL_SEED, len(slices))
    cascade = cascading_randomisation(model, case, "all", "tumour", slices)
    return {"case": case.case_id, "controls": controls, "cascade": cascade,
            "seconds": round(time.perf_counter() - start, 1)}


def run(args: argparse.Namespace) -> None:
    model = load_pretrained(args.model)
    folder = args.out / args.model
    folder.mkdir(parents=True, exist_ok=True)
    for source in find_cases(args.data)[:args.cases]:
        path = folder / f"{Path(source).name}.json"
        if path.exists():
            continue
        record = one_case(model, as_case(source))
        study.write_whole(path, record)
        print(f"wrote {path} ({record['seconds']:.0f} s)", flush=True)


def table(args: argparse.Namespace) -> str:
    folder = args.out / args.model
    records = study.records(folder)
    first = records[0]
    targets = first["controls"]["targets"]
    layers = first["cascade"]["randomised"][::-1]  # input to output
    lines = [f"{args.model}: {len(records)} held-out phantoms, every {SLICE_STEP}th brain slice; mean over the "
             "cases [95 % interval: cases resampled, 1000 draws, seed 0].", ""]
    for name, target in targets.items():
        region = target["region"]
        lines += [f"**{name}** — share of the map's mass inside {region} (chance: "
                  f"{study.interval([r['controls']['targets'][name]['chance'] for r in records])}; best raw input "
                  f"channel: {study.interval([r['controls']['targets'][name]['raw input']['mass_inside'] for r in records])})",
                  "", "| layer | trained | random weights | cases where trained > random |", "|---|---:|---:|---:|"]
        for layer in target["layers"]:
            pairs = [r["controls"]["targets"][name]["layers"][layer] for r in records]
            better = sum(p["trained"] > p["random weights"] for p in pairs)
            lines.append(f"| {layer} | {study.interval([p['trained'] for p in pairs])} | "
                         f"{study.interval([p['random weights'] for p in pairs])} | {better} of {len(pairs)} |")
        lines.append("")
    share = np.mean([r["cascade"]["parameter_share"][-1] for r in records])
    lines += ["Cascading randomisation (output layer first): Spearman ρ of each layer's map with the trained map over "
              "the brain — per case the mean over the classes, then the mean over the cases with its interval; in "
              "brackets, the maps that became all zero (no ranking, left out of ρ: the largest change there is). "
              + ("The last step has every parameter random. " if share >= 1 else
                 f"The last step leaves {1 - share:.2%} of the parameters trained (modules outside the named layers, "
                 "such as a stem convolution). ")
              + "A map that does not move is not explaining the network.", "",
              "| layer | ρ, output layer random | ρ, random down to this layer | ρ, last step |",
              "|---|---:|---:|---:|"]
    for layer in layers:
        own = first["cascade"]["randomised"].index(layer)
        cells = [_rho_cell(records, layer, step) for step in (0, own, len(layers) - 1)]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rho_cell(records: list[dict], layer: str, step: int) -> str:
    """Mean over cases of each case's class-mean ρ at ``step`` with its interval, and how many maps were all zero."""
    per_case, zero, total = [], 0, 0
    for record in records:
        values = [per_class[step] for per_class in record["cascade"]["spearman"][layer].values()]
        known = [v for v in values if v is not None]
        zero, total = zero + len(values) - len(known), total + len(values)
        if known:
            per_case.append(float(np.mean(known)))
    return study.interval(per_case) + (f" ({zero} of {total} all zero)" if zero else "")


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path)
    parser.add_argument("--cases", type=int, default=None, help="the first N held-out cases (default: all)")


if __name__ == "__main__":
    study.main(__doc__, "benchmarks/results/gradcam_heldout", run, table, arguments)
