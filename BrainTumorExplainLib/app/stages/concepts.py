"""Concept masks of the model's best detectors (network dissection, §3.1) on this case, and their IoU here; beside
them, each concept's best filter against the dissection's controls (random weights, raw input)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...analyses.dissection import CONCEPTS as CONCEPT_SOURCES
from ...analyses.dissection import concept_masks, dissect, filter_concept_masks, ground_truth_of
from ...data.case import load_case
from ...models.space import into_network_space
from ...progress import shared_progress
from ...ranks import Ranks
from ..contract import CONCEPTS, concept_file, figure_file
from ..figures import concept_montage, montage_slices

NAME = "concepts"
FIGURES = ((figure_file("concepts"), "Concept detectors (network dissection)", "The filter that best detects each "
            "concept over the dissection dataset, its mask on this case (cyan) and the ground truth (yellow)."),)


def write_masks(masks: dict, best: dict[str, dict], case, folder: Path) -> list[Path]:
    """The mask of each concept's best detector as ``<layer>_<filter>_<concept>.nii.gz`` in ``folder``
    (``dissect`` writes them too)."""
    return [case.grid.write(masks[(row["layer"], row["filter"])].astype(np.uint8),
                            Path(folder) / concept_file(row["layer"], row["filter"], concept))
            for concept, row in best.items()]


def _detectors(best: dict, masks: dict, truth: dict) -> list[dict]:
    """Each best detector's row, with its IoU over the dissection set and — with ground truth — on this case."""
    detectors = []
    for concept, row in best.items():
        mask = masks[(row["layer"], row["filter"])]
        entry = {key: value for key, value in row.items() if key not in ("iou", "control_iou")}
        entry["dataset_iou"] = round(row["iou"], 4)
        if "control_iou" in row:  # what it beat: the best control filter's IoU for its concept
            entry["control_iou"] = round(row["control_iou"], 4)
        if concept in truth:
            union = int((mask | truth[concept]).sum())
            entry["case_iou"] = round(int((mask & truth[concept]).sum()) / union, 4) if union else 0.0
        detectors.append(entry)
    return detectors


def controls_summary(dissection) -> dict:
    """The controls the detectors were held against: the margin and each concept's best filter beside each
    control's, or why there are none."""
    if not dissection.controls:
        return {"controls": "not measured: this dissection was made without controls, so its detectors are every "
                            "filter over the IoU cutoff, which a random network or the raw input may reach too"}
    return {"margin": dissection.margin, "control_seed": dissection.control_seed,
            "controls": dissection.control_table()}


def run(run) -> None:
    case, dissection = run.case, run.dissection
    if dissection is None:
        run.summary["concepts"] = {"detectors": [], "not_computed": "no dissection of this network: make one with "
                                   "`dissect --data DIR --model …` and pass it with --dissection"}
        return
    best = dissection.best_detectors()
    picks = [(row["layer"], row["filter"]) for row in best.values()]
    masks = filter_concept_masks(run.model, case, dissection, picks) if picks else {}
    carried = ground_truth_of(case)[1]
    have = [concept for concept in best if CONCEPT_SOURCES[concept][1] in carried]
    truth = dict(zip(have, concept_masks(case, have))) if have else {}
    write_masks(masks, best, case, run.work / CONCEPTS)
    detectors = _detectors(best, masks, truth)
    run.summary["concepts"] = {"dissection_cases": len(dissection.cases), "quantile": dissection.quantile,
                               "iou_cutoff": dissection.iou_cutoff, "detectors": detectors,
                               **controls_summary(dissection)}
    run.handed_on["detectors"] = picks
    run.handed_on["concept_masks"] = {f"{layer} #{index}: {concept}": masks[(layer, index)]  # for the review
                                      for concept, (layer, index) in zip(best, picks)}
    if detectors:
        z = run.z
        panels = [(f"{d['layer']} #{d['filter']}: {d['concept']}", masks[(d["layer"], d["filter"])][z],
                   truth[d["concept"]][z] if d["concept"] in truth else None) for d in detectors]
        concept_montage(case, z, panels, run.figure("concepts"),
                        title=f"{case.case_id} z={z} · {run.config.model}: best detector per concept")


def dissect_job(model, cases: list[Path], work: Path, shown_as: Path, config, model_name: str,
                resample: bool = True, ranks: Ranks = Ranks()) -> None:
    """The ``dissect`` verb (``config``: :class:`app.settings.DissectConfig`): the dissection of ``cases`` into
    ``work`` (published as ``shown_as``) — ``dissection.json``, ``tables/``, ``detectors.json``, each concept's best
    detector's mask per case and ``dissection.png`` on the first — and its table printed. Under torchrun
    (``ranks``) every rank dissects its share of the cases and writes the masks of its share into rank 0's ``work``
    (the others get none: a shared file system, as for every dataset run); rank 0 writes the rest."""

    def prepare(case):
        return into_network_space(case, model, resample)

    result = dissect(model, cases, config.layers, config.concept_names(), config.quantile, config.iou,
                     config.slice_step, batch_size=config.batch_size, progress=True, prepare=prepare,
                     controls=config.controls, control_seed=config.control_seed, margin=config.margin,
                     per_case=config.per_case, threshold_region=config.threshold_region, ranks=ranks)
    work = Path(ranks.from_leader(str(work) if ranks.leader else None))
    if ranks.leader:
        result.save(work / "dissection.json")
        result.write_tables(work / "tables")
        (work / "detectors.json").write_text(json.dumps({"summary": result.summary(),
                                                         "controls": result.control_table(),
                                                         "detectors": result.detectors()}, indent=2) + "\n")
    best = result.best_detectors()
    picks = [(row["layer"], row["filter"]) for row in best.values()]
    for folder in shared_progress(cases[:config.mask_cases], ranks, "concept masks", unit="case"):
        case = prepare(load_case(folder))
        masks = filter_concept_masks(model, case, result, picks)
        write_masks(masks, best, case, work / "concepts" / case.case_id)
        if folder == cases[0] and best:  # rank 0's first case
            z = montage_slices(case, 1)[0]
            truth = dict(zip(best, concept_masks(case, list(best))[:, z]))
            panels = [(f"{row['layer']} #{row['filter']}: {concept} IoU {row['iou']:.2f}",
                       masks[(row["layer"], row["filter"])][z], truth[concept]) for concept, row in best.items()]
            title = (f"{case.case_id} z={z} · {model_name}: best detector per concept (dataset-wide IoU), "
                     f"mask cyan, ground truth yellow")
            concept_montage(case, z, panels, work / "dissection.png", title=title)
            print(f"wrote {shown_as / 'dissection.png'}")
    ranks.gathered(None)  # every rank's masks are written before rank 0 publishes the folder
    if not ranks.leader:
        return
    print(dissection_table(result, len(cases)))
    print(f"wrote {shown_as / 'dissection.json'}")


def dissection_table(result, cases: int) -> str:
    """Detector counts per concept per layer, and each concept's best filter beside its controls, as text."""
    rule = (f"IoU ≥ {result.iou_cutoff} and ≥ the best control + {result.margin}" if result.controls
            else f"IoU ≥ {result.iou_cutoff}; no controls measured")
    lines = [f"detectors ({rule}) per concept per layer, {cases} case(s):",
             f"{'layer':<11}" + "".join(f"{c:>6}" for c in result.concepts) + "  filters"]
    for layer, counts in result.summary().items():
        lines.append(f"{layer:<11}" + "".join(f"{counts[c]:>6}" for c in result.concepts)
                     + f"  {len(result.layers[layer].thresholds):>7}")
    if result.controls:
        names = list(result.controls)
        lines.append(f"best IoU per concept: {'trained':>8}" + "".join(f"{name:>16}" for name in names) + "  learned")
        for row in result.control_table():
            lines.append(f"{row['concept']:<21} {row['trained']['iou']:>8.3f}"
                         + "".join(f"{row[name]['iou']:>16.3f}" for name in names)
                         + f"  {'yes' if row['learned'] else 'no'}")
    return "\n".join(lines)
