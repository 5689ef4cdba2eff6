"""The self-contained HTML report of an ``explain`` run: every figure inline, the numbers of ``summary.json`` as
tables. One file a clinician can open, mail or archive; it loads nothing from anywhere."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _controls_section(concepts: dict) -> str:
    """Every concept's best filter beside the controls' best: what the dissection can and cannot claim."""
    controls = concepts.get("controls")
    if isinstance(controls, str):
        return f"<h2>Concepts against controls</h2><p>{html.escape(controls)}.</p>"
    if not controls:
        return ""
    names = [key for key, value in controls[0].items() if isinstance(value, dict) and key != "trained"]
    rows = [[row["concept"], f"{row['trained']['layer']} #{row['trained']['filter']}: {_fmt(row['trained']['iou'])}",
             *[_fmt(row[name]["iou"]) for name in names], "yes" if row["learned"] else "no",
             f"{row['detectors']} of {row['over_cutoff']}"] for row in controls]
    return (f"<h2>Concepts against controls</h2><p>Best IoU per concept over the dissection set: the trained "
            f"network's best filter, the same architecture with random weights (seed {concepts['control_seed']}) and "
            f"the raw input channels. A concept is learned when a filter whose best concept it is beats every "
            f"control by {concepts['margin']} IoU (the trained column's filter may count for another concept); "
            f"detectors: filters that do, of those over the {concepts['iou_cutoff']} cutoff.</p>" + _table(rows, ["concept", "trained", *names, "learned", "detectors"]))


def _scores_section(summary: dict) -> str:
    """Legacy and lesion-wise scores against the ground truth, beside a threshold baseline's Dice."""
    from ..scoring.metrics import LESION_COUNTS

    baseline = summary.get("baseline_scores", {})
    rows = [[region, _fmt(v["dice"]), _fmt(v["hd95_mm"], 1), _fmt(v.get("lesion_dice", "–")),
             _fmt(v.get("lesion_hd95_mm", "–"), 1),
             "/".join(str(v[key]) for key in LESION_COUNTS) if all(key in v for key in LESION_COUNTS) else "–",
             _fmt(baseline[region]["dice"]) if region in baseline else "–"]
            for region, v in summary["scores"].items()]
    return ("<h2>Scores against the ground truth</h2><p>Legacy Dice and HD95 over the whole region, and the BraTS "
            "2023 lesion-wise scores (every missed or false-positive lesion scores Dice 0 and HD95 374 mm; lesions "
            "of 50 mm³ or less are not scored).</p>"
            + _table(rows, ["region", "Dice", "HD95 (mm)", "lesion Dice", "lesion HD95 (mm)", "lesions TP/FP/FN",
                            "Dice of a threshold baseline"]))


def _gradcam_controls_section(controls: dict | None) -> str:
    """Each target's Grad-CAM share inside its region at the first and last layer, beside random weights and the
    raw input: the early layers' localisation is mostly the input's."""
    if not controls or not controls.get("targets"):
        return ""
    rows = []
    for name, entry in controls["targets"].items():
        layers = list(entry["layers"])
        row = [f"{name} in {entry['region']}", _fmt(entry["chance"]),
               f"{entry['raw input']['channel']}: {_fmt(entry['raw input']['mass_inside'])}"]
        for layer in (layers[0], layers[-1]):
            shares = entry["layers"][layer]
            row += [f"{layer}: {_fmt(shares['trained'])}", _fmt(shares["random weights"])]
        rows.append(row)
    return (f"<h2>Grad-CAM against controls</h2><p>Share of each target's Grad-CAM mass inside its region over "
            f"{controls['slices']} slices: a flat map (chance), the best raw input channel's positive part, and the "
            f"first and last layer of the trained network beside the same architecture with random weights (seed "
            f"{controls['seed']}).</p>"
            + _table(rows, ["target", "chance", "raw input", "first layer", "random", "last layer", "random"]))


def _uncertainty_section(uncertainty: dict) -> str:
    """Each map's AUROC and AUPRC for the mean prediction's misclassified voxels (over the brain and near the
    tumour), the one-pass control on the same errors and on its own, and both predictions' calibration."""
    analysis = uncertainty.get("error_analysis")
    if not analysis:
        return ""
    rows = [[name, _fmt(entry["auroc"]), _fmt(entry.get("auroc_near_tumour", "–")), _fmt(entry.get("auprc", "–"))]
            for name, entry in analysis["maps"].items()]
    control = analysis.get("control")
    if control:  # what the maps must beat to show that sampling adds anything
        same = control.get("same_errors", {})
        rows.append([f"control: {control['map']}, on the same errors", _fmt(same.get("auroc", "–")),
                     _fmt(same.get("auroc_near_tumour", "–")), _fmt(same.get("auprc", "–"))])
        rows.append(["control, on its own errors", _fmt(control["auroc"]), "–", _fmt(control.get("auprc", "–"))])
    text = (f"<h2>Uncertainty ({html.escape(uncertainty['mode'])}, {uncertainty['passes']['mean']} passes per "
            f"slice on average)</h2><p>How well each map ranks the misclassified brain voxels above the right ones "
            f"(error rate {analysis['error_rate']:.4f}; AUPRC's chance level is the error rate):</p>"
            + _table(rows, ["map", "AUROC", "AUROC, ≤ 10 mm of the tumour", "AUPRC"]))
    calibrations = [(name, found) for name, found in (("sampled mean", analysis.get("calibration")),
                                                      ("one pass", (control or {}).get("calibration"))) if found]
    if calibrations:
        rows = [[name, _fmt(found["ece"], 4), _fmt(found.get("near_tumour", {}).get("ece", "–"), 4)]
                for name, found in calibrations]
        text += ("<p>Calibration: expected calibration error of the top-label probability (0 is calibrated).</p>"
                 + _table(rows, ["prediction", "ECE, brain", "ECE, ≤ 10 mm of the tumour"]))
    return text


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _network_space(space: dict) -> str:
    """One line on the grid the network saw the case on (the figures are drawn on that grid)."""
    if space.get("resampled"):
        return (f"<p>The case was resampled into the network's space ({html.escape(space['reason'])}): from "
                f"{space['from']['spacing_mm']} mm to {space['to']['spacing_mm']} mm, axis-aligned; the figures show "
                "that grid, every volume beside this report lies on the case's own grid.</p>")
    if space.get("off_space"):
        return (f"<p class=note>The network saw this case off its training grid ({html.escape(space['off_space'])}; "
                f"trained at {space['training_spacing_mm']} mm, axis-aligned) and was not resampled: its results "
                "may be wrong for that reason alone.</p>")
    return ""


def _coregistration(entry: dict) -> str:
    """One line per sequence: how far it moved onto the FLAIR and how far off it was measured before and after, or
    why it was kept as acquired."""
    if not entry.get("ran"):
        return ""
    from ..data.registration import registration_words

    lines = [html.escape(f"{sequence}: {registration_words(found)}") for sequence, found in entry["sequences"].items()]
    return f"<p>Co-registration ({html.escape(entry['why'])}): " + "; ".join(lines) + ".</p>"


def _preprocessing(entry: dict) -> str:
    """The brain mask and the atlas pose, as the preprocessing decided them (data.preprocess)."""
    lines = entry.get("steps", [])
    return f"<p>Preprocessing — {'; '.join(html.escape(line) for line in lines)}.</p>" if lines else ""


def preprocessing_lines(summary: dict) -> list[str]:
    """What the preprocessing did, in words, a step a line, then every warning that the case is unlike the
    training data: what the Slicer panel shows after a run (the report says the same in its own paragraphs)."""
    coregistration = summary.get("coregistration", {})
    state = coregistration.get("state", "ran" if coregistration.get("ran") else "skipped")
    lines = [f"co-registration: {state} ({coregistration.get('why', '')})"
             ] if coregistration else []
    lines += summary.get("preprocessing", {}).get("steps", [])
    return lines + [f"warning: {warning}" for warning in summary.get("domain", {}).get("warnings", [])]


REVIEW_HEADER = ["#", "score (Σ entropy × mm³)", "volume (mm³)", "mean entropy (nats)", "centre (RAS, mm)",
                 "slice (k)", "why"]
LESION_HEADER = ["region", "#", "match", "volume (mm³)", "Dice", "mean entropy (nats)", "Grad-CAM share (last layer)",
                 "Grad-CAM concentrates at", "detectors inside"]


def preparation_lines(prepared, steps, model) -> tuple[list[str], list[str]]:
    """How a case was made ready for ``model`` (``prepared`` and ``steps`` from :func:`models.space.prepare_case`):
    the co-registration of each sequence and each preprocessing step, as lines for a person, and the domain check's
    warnings (each naming the case)."""
    from ..data.domain import case_domain_check
    from ..data.registration import coregistration_state, registration_words
    from ..models.space import training_intensities, training_spacing

    case = prepared.original or prepared  # as read and preprocessed, before any resampling
    lines = []
    if steps is not None:
        lines.append(f"co-registration: {coregistration_state(case.registrations)} ({steps.coregistration})")
        lines += [f"  {sequence} → {found.reference}: {registration_words(found.to_dict())}"
                  for sequence, found in (case.registrations or {}).items()]
        lines += steps.lines()
    checked = case_domain_check(case, steps, training_spacing(model), training_intensities(model))
    return lines, [f"{case.case_id}: {warning}" for warning in checked["warnings"]]


def headline_lines(summary: dict, out: Path) -> list[str]:
    """What a finished explain run says to a person: the scores against the ground truth, the uncertainty's AUROCs
    beside their control, the concepts learned beyond the controls, where to look, the seconds per stage, and where
    the scene and the report are (``out``: the run folder)."""
    from ..scoring.evaluation import format_table
    from .contract import REPORT, SCENE
    from .stages.uncertainty import auroc_text, control_text

    lines = []
    if "scores" in summary:
        lines += [f"case {summary['case']} against its ground truth ({summary['model']}):",
                  format_table({summary["model"]: summary["scores"]})]
    analysis = summary.get("uncertainty", {}).get("error_analysis")
    if analysis:
        lines.append(f"uncertainty AUROC for misclassified voxels: {auroc_text(analysis)}; {control_text(analysis)}")
    controls = summary.get("concepts", {}).get("controls")
    if isinstance(controls, list) and controls:
        lines.append(f"concepts the network detects beyond its controls (random weights, raw input): "
                     f"{', '.join(row['concept'] for row in controls if row['learned']) or 'none'}; not beyond them: "
                     f"{', '.join(row['concept'] for row in controls if not row['learned']) or 'none'}")
    if summary.get("review"):
        lines.append(review_line(summary["review"]))
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()))
    if summary.get("scene") == SCENE:
        lines.append(f"Slicer scene: {out / SCENE}")
    return lines + [f"report: {out / REPORT}"]


def review_line(review: dict) -> str:
    """Where to look, in one line: the regions to review and, with ground truth, what the first of them hold."""
    regions = review["regions"]
    text = (f"where to look: {len(regions)} regions to review" + (
        f", the first {regions[0]['volume_mm3']:.0f} mm³ at RAS "
        f"({', '.join(f'{v:.0f}' for v in regions[0]['place']['ras'])})" if regions else ""))
    top = review.get("coverage", {}).get("top", {})
    if top and list(top.values())[-1]["errors_inside"] is not None:
        k, found = list(top.items())[-1]
        band = found.get("boundary")
        text += (f"; the top {k} hold {found['errors_inside']:.0%} of the misclassified voxels (as much volume at "
                 f"random: {found['random']['errors_inside']['mean']:.0%}"
                 + (f", along the tumour's surface: {band['errors_inside']:.0%}" if band else "") + ")")
    return text


def review_rows(review: dict) -> list[list[str]]:
    """The review list of a run's ``summary["review"]`` as table rows (:data:`REVIEW_HEADER`), ranked: the report's
    and the Slicer panel's."""
    return [[str(r["rank"]), f"{r['uncertainty_mass']:.0f}", f"{r['volume_mm3']:.0f}", f"{r['mean_entropy']:.2f}",
             ", ".join(f"{v:.1f}" for v in r["place"]["ras"]), str(r["place"]["ijk"][2]), r["why"]]
            for r in review.get("regions", [])]


def lesion_rows(review: dict) -> list[list[str]]:
    """Every lesion of a run's ``summary["review"]`` as table rows (:data:`LESION_HEADER`): Grad-CAM per target
    (``target: share``), the detectors that fire inside (``layer #filter: concept share``)."""
    rows = []
    for row in review.get("lesions", []):
        entropy = row["uncertainty"].get("entropy", {}).get("mean")
        rows.append([row["region"], str(row["number"]), row["match"] or "–", f"{row['volume_mm3']:.0f}",
                     _fmt(row["dice"]) if row["dice"] is not None else "–",
                     f"{entropy:.3f}" if entropy is not None else "–",
                     "; ".join(f"{t}: {v['last_layer']:.2f}" for t, v in row["gradcam"].items()) or "–",
                     "; ".join(f"{t}: {v['first_concentrated'] or 'none'}" for t, v in row["gradcam"].items()) or "–",
                     "; ".join(f"{name} {share:.2f}" for name, share in row["detectors"].items()) or "–"])
    return rows


def _review_section(review: dict | None) -> str:
    """The lesion table and the review list; with ground truth, how well they point at the errors."""
    if not review:
        return ""
    parts = ["<h2>Where to look</h2>",
             f"<p>Regions to review, ranked by their uncertainty mass (Σ entropy × volume; "
             f"{html.escape(review['ranked_by'])}): connected uncertain voxels (≥ {review['uncertain_nats']} nats) "
             f"and predicted lesions the network is unsure of (mean ≥ {review['low_confidence_nats']} nats). No "
             f"ground truth is used. In Slicer: the <i>Review regions</i> segmentation and the <i>Review points</i> "
             f"list.</p>",
             _table(review_rows(review), REVIEW_HEADER) if review.get("regions") else "<p>Nothing to review.</p>"]
    coverage = review.get("coverage")
    if coverage and coverage["top"]:
        rows = [[k] + [cell for name in ("errors_inside", "error_lesions_hit") for cell in (
                    _fmt(v[name]), _spread_text(v["random"][name]),
                    _fmt(v["boundary"][name]) if v.get("boundary") else "–")]
                for k, v in coverage["top"].items()]
        parts.append(f"<p>Against the ground truth: the share of the {coverage['errors']} misclassified voxels inside "
                     f"the top-k regions and of the {coverage['error_lesions']} false-positive or missed lesions they "
                     f"touch, beside two controls of the same volume: the same shapes placed at random in the brain "
                     f"({coverage['draws']} draws, seed {coverage['seed']}; mean [2.5–97.5 %]) and the band along "
                     f"the predicted tumour's surface.</p>"
                     + _table(rows, ["top k", "errors inside", "random", "surface band", "FP/FN lesions touched",
                                     "random", "surface band"]))
    parts.append(f"<p>Every lesion per region: predicted components and, with ground truth, the missed lesions "
                 f"(BraTS 2023 matching). Grad-CAM: the share of each target's mass in the brain inside the lesion "
                 f"at the last layer before the head, and the first layer where it reaches {review['concentrated']}× "
                 f"a flat map's; detectors: those whose concept mask covers ≥ {review['fires']} of it.</p>"
                 + _table(lesion_rows(review), LESION_HEADER))
    auroc = review.get("lesion_auroc")
    if auroc:
        rows = [[name, _fmt(value) if value is not None else "–"] for name, value in auroc["auroc"].items()]
        parts.append(f"<p>Does a lesion's mean uncertainty tell false positives ({auroc['fp']}) from true positives "
                     f"({auroc['tp']})? AUROC per map, the deterministic entropy its control (one case: not a "
                     f"measurement, see docs/analyses.md for the held-out set).</p>" + _table(rows, ["map", "AUROC"]))
    return "".join(parts)


def _spread_text(spread: dict | None) -> str:
    return "–" if spread is None else f"{spread['mean']:.3f} [{spread['low']:.3f}–{spread['high']:.3f}]"


def write_report(summary: dict, run_folder: Path, path: Path, figures: list[tuple[str, str, str]]) -> Path:
    """Write ``report.html`` for a run folder: the summary's numbers, then each of ``figures`` (file under the run
    folder, heading, what to look at) that the run made."""
    parts = [f"<h1>{html.escape(summary['case'])} · {html.escape(summary['model'])}</h1>",
             "<p class=note>Demonstration networks trained on phantoms; not for clinical use.</p>"]
    parts += [f"<p class=note>Unlike the training data: {html.escape(warning)}.</p>"
              for warning in summary.get("domain", {}).get("warnings", [])]
    parts.append(_coregistration(summary.get("coregistration", {})))
    parts.append(_preprocessing(summary.get("preprocessing", {})))
    parts.append(_network_space(summary.get("network_space", {})))
    if "scores" in summary:
        parts.append(_scores_section(summary))
    parts.append(_uncertainty_section(summary.get("uncertainty", {})))
    concepts = summary.get("concepts", {})
    detectors = concepts.get("detectors", [])
    if detectors:
        rows = [[d["concept"], d["layer"], d["filter"], _fmt(d["dataset_iou"]), _fmt(d.get("control_iou", "–")),
                 _fmt(d.get("case_iou", "–"))] for d in detectors]
        parts.append(f"<h2>Best detector per concept</h2><p>IoU over the {concepts['dissection_cases']} "
                     f"dissection cases, the best control's IoU it beat, and on this case.</p>"
                     + _table(rows, ["concept", "layer", "filter", "dataset IoU", "control IoU", "IoU here"]))
    parts.append(_controls_section(concepts))
    parts.append(_gradcam_controls_section(summary.get("gradcam", {}).get("controls")))
    parts.append(_review_section(summary.get("review")))
    for relative, heading, caption in figures:
        figure = run_folder / relative
        if figure.is_file():
            parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(caption)}</p>{_image(figure)}")
    scene = summary.get("scene", "")
    if scene == "scene.mrb":
        parts.append("<h2>In 3D Slicer</h2><p><code>scene.mrb</code> beside this report opens in 3D Slicer (drag it "
                     "onto the window): the sequences, the segmentation, the uncertainty over the FLAIR, the last "
                     "layer's Grad-CAM per class and the concept masks, in one folder of the Data module.</p>")
    elif scene:
        parts.append(f"<p>Slicer scene {html.escape(scene)}.</p>")
    seconds = summary.get("seconds", {})
    parts.append("<h2>Run</h2>" + _table([[k, f"{v:.1f}"] for k, v in seconds.items()], ["stage", "seconds"]))
    parts.append("<p>Device: " + html.escape(summary.get("device", "")) + "</p>"
                 + _table([[k, v] for k, v in summary.get("versions", {}).items()], ["package", "version"]))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "img{max-width:100%;border:1px solid #ccc}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #bbb;padding:.2em .6em;text-align:left}.note{color:#a40}")
    document = (f"<!doctype html><html><head><meta charset=utf-8><title>BrainTumorExplain · "
                f"{html.escape(summary['case'])}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path.write_text(document, encoding="utf-8")
    return path
