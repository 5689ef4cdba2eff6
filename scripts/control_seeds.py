"""The random-weights control as a distribution (issue 41): the dissection of the trained network, of its raw input
and of the architecture re-initialised from each of many seeds, over held-out cases split into two halves, so that

* a concept counts as learned only when the trained network's best filter beats a stated percentile of the seeds'
  best filters (not one seed's, with a fixed margin);
* filters are **selected on one half of the cases and reported on the other** (the best of ~750 filters on the
  cases it was chosen on is biased upwards, for the trained network and for each control alike);
* output layers (a network's last layer, trained on exactly these labels) are reported apart.

Run (resumable: one result file per network, written when it is done; a rerun skips the files that exist)::

    python -m BrainTumorExplainLib phantom --out HELDOUT --cases 20 --seed 1000
    python scripts/control_seeds.py run resunet --data HELDOUT --seeds 0-19 --slice-step 8 \\
        --out benchmarks/results/control_seeds            # ~8 minutes a network on 2 CPU cores
    python scripts/control_seeds.py table resunet --out benchmarks/results/control_seeds [--markdown FILE]

The halves: the cases in name order, the first half A (the selection half), the second B. Each file keeps, per layer
and concept, the best filter on all cases and the best on each half with its IoU on the other half and that half's
per-case intersections and unions (the trained network's and the raw input's: for a bootstrap interval); theirs also
keep every filter's IoU on each half (to count detectors). Kept small: the repository's clone must stay under the
Slicer ExtensionsIndex's limit (scripts/clone_size.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import study

from BrainTumorExplainLib.analyses.controls import random_weights, raw_input
from BrainTumorExplainLib.analyses.dissection import Dissection, dissect
from BrainTumorExplainLib.data.case import find_cases
from BrainTumorExplainLib.models import load_pretrained
from BrainTumorExplainLib.scoring.statistics import ratio_interval

TRAINED, RAW = "trained", "raw_input"
PERCENTILE = 95  # a concept is learned when the trained network beats this percentile of the seeds' best filters


def halves(cases: list[str]) -> dict[str, list[str]]:
    ordered = sorted(cases)
    return {"A": ordered[:len(ordered) // 2], "B": ordered[len(ordered) // 2:]}


def _seeds(text: str) -> list[int]:
    found: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        found += list(range(int(low), int(high or low) + 1))
    return found


def summary(result: Dissection, network: str, seconds: float, every_filter: bool) -> dict:
    """The compact record of one network's per-case dissection (see the module notes): per half, for every layer
    and concept (``[layer][concept]`` grids, layers in ``layers`` order), the filter chosen there, its IoU there,
    and its dataset-wide and per-image IoU on the other half."""
    split = halves(result.cases)
    parts = {name: result.subset(cases) for name, cases in split.items()}
    other = {"A": "B", "B": "A"}
    layers, concepts = list(result.layers), range(len(result.concepts))
    whole = [result.layers[layer].iou for layer in layers]
    record = {"network": network, "architecture": result.architecture, "cases": result.cases, "halves": split,
              "concepts": result.concepts, "layers": layers, "slice_step": result.slice_step,
              "quantile": result.quantile, "iou_cutoff": result.iou_cutoff, "seconds": round(seconds, 1),
              "best": {"filter": [[int(iou[:, j].argmax()) for j in concepts] for iou in whole],
                       "iou": [[float(iou[:, j].max()) for j in concepts] for iou in whole]}}
    for half, part in parts.items():
        chosen = [[int(part.layers[layer].iou[:, j].argmax()) for j in concepts] for layer in layers]
        report = [parts[other[half]].layers[layer] for layer in layers]
        record[half] = {
            "filter": chosen,
            "iou": [[float(part.layers[layer].iou[k, j]) for j, k in enumerate(row)] for layer, row in
                    zip(layers, chosen)],
            "iou_other_half": [[float(r.iou[k, j]) for j, k in enumerate(row)] for r, row in zip(report, chosen)],
            "image_iou_other_half": [[float(r.image_iou[k, j]) for j, k in enumerate(row)]  # eq. 2, per image
                                     for r, row in zip(report, chosen)]}
        if every_filter and half == "A":  # the reported filters' cases, for their interval
            for key, name in (("intersection_other_half", "intersection"), ("union_other_half", "union")):
                record[half][key] = [[r.per_case[name][:, k, j].tolist() for j, k in enumerate(row)]
                                     for r, row in zip(report, chosen)]
    if every_filter:  # each filter's best concept on A, and its IoU for it on each half
        record["filters"] = {}
        for layer in layers:
            iou = {half: part.layers[layer].iou for half, part in parts.items()}
            best = iou["A"].argmax(1)
            record["filters"][layer] = {"concept": best.tolist(),
                                        **{f"iou_{half}": np.round(values[np.arange(len(best)), best], 4).tolist()
                                           for half, values in iou.items()}}
    return record


def run(args: argparse.Namespace) -> None:
    model = load_pretrained(args.model)
    cases = find_cases(args.data)
    folder = args.out / args.model
    folder.mkdir(parents=True, exist_ok=True)
    networks = [(TRAINED, lambda: model), (RAW, lambda: raw_input(model))]
    networks += [(f"seed_{seed:02d}", lambda seed=seed: random_weights(model, seed)) for seed in _seeds(args.seeds)]
    for name, build in networks:
        path = folder / f"{name}.json"
        if path.exists():
            continue
        start = time.perf_counter()
        result = dissect(build(), cases, concepts=args.concepts.split(",") if args.concepts else None,
                         slice_step=args.slice_step, controls=False, per_case=True, device=args.device,
                         progress=args.progress)
        record = summary(result, name, time.perf_counter() - start, every_filter=name in (TRAINED, RAW))
        study.write_whole(path, record)
        print(f"wrote {path} ({record['seconds']:.0f} s)", flush=True)


def _best(record: dict, concept: str, half: str, layers: list[str]) -> dict:
    """The network's filter for ``concept`` with the highest IoU on ``half`` over ``layers`` (each layer's filter
    chosen there), with what the record keeps of it: ``layer``, ``filter``, ``iou``, ``iou_other_half`` …"""
    j = record["concepts"].index(concept)
    chosen = record[half]
    i = max((record["layers"].index(layer) for layer in layers), key=lambda i: chosen["iou"][i][j])
    return {"layer": record["layers"][i], **{key: grid[i][j] for key, grid in chosen.items()}}


def _bars(raw: dict, seeds: list[dict], concepts: list[str], layers: list[str], key: str) -> dict[str, float]:
    """Concept → what a trained filter chosen on A must beat: the :data:`PERCENTILE` th percentile over the seeds of
    their filter chosen on A (over ``layers``) and the raw input's best channel chosen on A, each by ``key`` —
    ``iou`` (on A, where all were chosen) or ``iou_other_half`` (on B, where none was)."""
    bars = {}
    for concept in concepts:
        random = [_best(seed, concept, "A", layers)[key] for seed in seeds]
        bars[concept] = max(float(np.percentile(random, PERCENTILE)), _best(raw, concept, "A", raw["layers"])[key])
    return bars


def table(args: argparse.Namespace) -> str:
    folder = args.out / args.model
    trained, raw = study.load(folder / f"{TRAINED}.json"), study.load(folder / f"{RAW}.json")
    seeds = study.records(folder, "seed_*.json", least=1)
    layers = trained["layers"]
    inner, output = layers[:-1], layers[-1:]
    split = trained["halves"]
    lines = [f"{args.model}: {len(trained['cases'])} held-out phantoms ({split['A'][0]} … {split['A'][-1]} select, "
             f"{split['B'][0]} … {split['B'][-1]} report), every {trained['slice_step']}th brain slice, "
             f"{len(seeds)} random-weights seeds. Best filter per concept over the layers before the output layer, "
             f"chosen on half A, and its dataset-wide IoU on half B (95 % interval: B's cases resampled, 1000 draws, "
             f"seed 0) and its mean per-image IoU there (eq. 2, over the slices showing the concept); "
             f"random weights: each seed's filter chosen on A, on B — median, {PERCENTILE}th percentile, maximum "
             f"over the seeds, and p, the trained filter's rank among them ((1 + seeds at or above it) / (1 + "
             f"seeds)); learned: the interval's lower end above the {PERCENTILE}th percentile and above the raw "
             f"input. Output layer ({', '.join(output)}) apart."
             + (f" With {len(seeds)} seeds no filter can reach p below {1 / (len(seeds) + 1):.2f}, and the "
                f"{PERCENTILE}th percentile is near their maximum: at least {100 // (100 - PERCENTILE) - 1} seeds "
                "are needed for it to mean what it says." if len(seeds) < 100 // (100 - PERCENTILE) - 1 else ""),
             "",
             "| concept | trained, on B [95 % CI] | per image (eq. 2) | raw input, on B | random: median | "
             f"random: {PERCENTILE}th pct | random: max | p | learned | output layer, on B |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|"]
    for concept in trained["concepts"]:
        best = _best(trained, concept, "A", inner)
        interval = ratio_interval(best["intersection_other_half"], best["union_other_half"])
        control = _best(raw, concept, "A", raw["layers"])["iou_other_half"]
        random = np.array([_best(seed, concept, "A", inner)["iou_other_half"] for seed in seeds])
        bar = float(np.percentile(random, PERCENTILE))
        learned = interval["low"] is not None and interval["low"] > max(bar, control)
        head = _best(trained, concept, "A", output)
        spread = f"[{interval['low']:.2f}, {interval['high']:.2f}]" if interval["low"] is not None else "(no interval)"
        lines.append(f"| {concept} | {best['iou_other_half']:.2f} {spread} "
                     f"({best['layer']} #{best['filter']}) | {best['image_iou_other_half']:.2f} | {control:.2f} | "
                     f"{np.median(random):.2f} | {bar:.2f} | "
                     f"{random.max():.2f} | {(1 + np.sum(random >= best['iou_other_half'])) / (1 + random.size):.2f} | "
                     f"{'yes' if learned else 'no'} | {head['iou_other_half']:.2f} |")
    # detectors: chosen on A (IoU ≥ cutoff and above A's bar for their best concept), replicated on B
    concepts = trained["concepts"]
    bars = {part: {half: _bars(raw, seeds, concepts, part_layers, key) for half, key in (("A", "iou"),
                                                                                    ("B", "iou_other_half"))}
            for part, part_layers in (("inner", inner), ("output", output))}
    lines += ["", f"Detectors per layer, chosen on A (best concept's IoU ≥ {trained['iou_cutoff']} and above the "
              f"{PERCENTILE}th percentile of the seeds' best filter on A and the raw input's), and how many of them "
              "still beat, on B, the same controls' filters chosen on A (the output layer against the seeds' output "
              "layers):", "",
              "| layer | " + " | ".join(concepts) + " |", "|---|" + "---:|" * len(concepts)]
    for layer in layers:
        filters = trained["filters"][layer]
        bar = bars["output" if layer in output else "inner"]
        chosen, kept = dict.fromkeys(concepts, 0), dict.fromkeys(concepts, 0)
        for j, iou_a, iou_b in zip(filters["concept"], filters["iou_A"], filters["iou_B"]):
            concept = concepts[j]
            if iou_a >= trained["iou_cutoff"] and iou_a > bar["A"][concept]:
                chosen[concept] += 1
                kept[concept] += int(iou_b > bar["B"][concept])
        lines.append(f"| {layer}{' (output)' if layer in output else ''} | "
                     + " | ".join(f"{kept[c]}/{chosen[c]}" if chosen[c] else "–" for c in concepts) + " |")
    return "\n".join(lines) + "\n"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path)
    parser.add_argument("--seeds", default="0-19", help="e.g. 0-19 or 1,2,5")
    parser.add_argument("--slice-step", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concepts", help="comma-separated (default: every one the cases have)")
    parser.add_argument("--progress", action="store_true")


if __name__ == "__main__":
    study.main(__doc__, "benchmarks/results/control_seeds", run, table, arguments)
