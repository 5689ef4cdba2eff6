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
import json
import os
import sys
import time
from pathlib import Path

import torch

from BrainTumorExplainLib.analyses import CONTROL_SEED
from BrainTumorExplainLib.analyses.controls import random_weights
from BrainTumorExplainLib.analyses.gradcam import gradcam_volume, localisation, localisation_controls, raw_input_volume
from BrainTumorExplainLib.analyses.sanity import cascading_randomisation
from BrainTumorExplainLib.data.case import as_case, find_cases
from BrainTumorExplainLib.models import load_pretrained
from BrainTumorExplainLib.models.interface import analysed
from BrainTumorExplainLib.scoring.statistics import mean_interval

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
    torch.set_num_threads(args.threads)
    model = load_pretrained(args.model)
    folder = args.out / args.model
    folder.mkdir(parents=True, exist_ok=True)
    for source in find_cases(args.data)[:args.cases]:
        path = folder / f"{Path(source).name}.json"
        if path.exists():
            continue
        record = one_case(model, as_case(source))
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(record) + "\n")
        os.replace(partial, path)  # a file that exists is complete
        print(f"wrote {path} ({record['seconds']:.0f} s)", flush=True)


def _interval(values) -> str:
    found = mean_interval([v for v in values if v is not None])
    if found["mean"] is None:
        return "–"
    if found["low"] is None:
        return f"{found['mean']:.2f}"
    return f"{found['mean']:.2f} [{found['low']:.2f}, {found['high']:.2f}]"


def table(args: argparse.Namespace) -> str:
    folder = args.out / args.model
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("Phantom_*.json"))]
    if len(records) < 2:
        raise SystemExit(f"error: {folder}: need at least two finished cases, found {len(records)}")
    first = records[0]
    targets = first["controls"]["targets"]
    layers = first["cascade"]["randomised"][::-1]  # input to output
    lines = [f"{args.model}: {len(records)} held-out phantoms, every {SLICE_STEP}th brain slice; mean over the "
             "cases [95 % interval: cases resampled, 1000 draws, seed 0].", ""]
    for name, target in targets.items():
        region = target["region"]
        lines += [f"**{name}** — share of the map's mass inside {region} (chance: "
                  f"{_interval([r['controls']['targets'][name]['chance'] for r in records])}; best raw input "
                  f"channel: {_interval([r['controls']['targets'][name]['raw input']['mass_inside'] for r in records])})",
                  "", "| layer | trained | random weights | cases where trained > random |", "|---|---:|---:|---:|"]
        for layer in target["layers"]:
            pairs = [r["controls"]["targets"][name]["layers"][layer] for r in records]
            better = sum(p["trained"] > p["random weights"] for p in pairs)
            lines.append(f"| {layer} | {_interval([p['trained'] for p in pairs])} | "
                         f"{_interval([p['random weights'] for p in pairs])} | {better} of {len(pairs)} |")
        lines.append("")
    lines += ["Cascading randomisation (output layer first): Spearman ρ of each layer's map with the trained map over "
              "the brain, the classes pooled (a map that does not move is not explaining the network):", "",
              "| layer | ρ, output layer random | ρ, random down to this layer | ρ, all random |",
              "|---|---:|---:|---:|"]
    for layer in layers:
        own = first["cascade"]["randomised"].index(layer)

        def rho(step: int) -> list:
            return [values[step] for r in records for values in r["cascade"]["spearman"][layer].values()]

        lines.append(f"| {layer} | {_interval(rho(0))} | {_interval(rho(own))} | {_interval(rho(len(layers) - 1))} |")
    text = "\n".join(lines) + "\n"
    if args.markdown:
        args.markdown.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "table"))
    parser.add_argument("model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gradcam_heldout"))
    parser.add_argument("--data", type=Path)
    parser.add_argument("--cases", type=int, default=None, help="the first N held-out cases (default: all)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.action == "run":
        if args.data is None:
            parser.error("run needs --data")
        run(args)
    else:
        sys.stdout.write(table(args))


if __name__ == "__main__":
    main()
