"""Whole datasets: ``explain`` over every case of a dataset, resumable, with a cohort summary.

A dataset is a folder of case folders (BraTS 2018–2021 or 2023 naming; every sub-folder holding an image file counts
as a case, so a broken one is reported, not skipped) or a text/CSV file listing case folders, one per line (the first
field of a line; relative to the list's folder; ``#`` starts a comment). Each case is written to ``OUT/<case-id>/``
exactly as a single-case run writes it — into a private folder published only when complete — so a case is finished
exactly when its folder exists. A rerun with the same settings skips the finished cases (status ``skipped``) and does
the others again, an interrupted one included; a run with other settings into the same ``OUT`` is refused by name
(the settings are recorded in ``OUT/cohort_settings.json``). A case that cannot be read or run is listed with its
one-line error and the others go on.

After the cases, ``OUT/cohort.csv`` (a row per case: status, error, scores, the uncertainty–error AUROC and its
deterministic control, seconds per stage, megabytes) and ``OUT/cohort.json`` (every numeric column's mean with its
bootstrap 95 % interval, the worst cases per region, the failed cases) are written from every case folder in ``OUT``
— the ones of earlier runs too —, and ``OUT/cohort.html`` shows the per-case scores (``cohort.png``) and links every
case's report. The network is loaded once; one case is in memory at a time.
"""

from __future__ import annotations

import csv
import functools
import html
import io
import json
from pathlib import Path

from ..data.case import CaseError, find_case_files
from ..errors import InputError, OutputError, UsageError
from ..outputs import OutputFolder, check_not_an_input, is_result_folder
from ..progress import shared_progress
from ..ranks import joined
from ..scoring.risk_coverage import aurc
from ..scoring.statistics import mean_interval
from ..version import __version__
from .contract import REPORT, SUMMARY
from .explain import explain, load_network
from .figures import cohort_scores
from .settings import ExplainConfig

SETTINGS = "cohort_settings.json"
TABLE = "cohort.csv"
STATISTICS = "cohort.json"
PAGE = "cohort.html"
FIGURE = "cohort.png"
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
WORST = 3  # cases listed per region as the worst
REGIONS = ("WT", "TC", "ET")
SCORES = ("dice", "hd95_mm", "lesion_dice", "lesion_hd95_mm", "lesion_tp", "lesion_fp", "lesion_fn")


def dataset_cases(source: str | Path) -> list[Path] | None:
    """The case folders of a dataset (see the module notes), or None when ``source`` is not a dataset (one case,
    or something the single-case reader will refuse by name)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() in (".txt", ".csv"):
        listed = []
        for line in source.read_text().splitlines():
            entry = line.split("#", 1)[0].split(",", 1)[0].strip()
            if entry and not (not listed and entry.lower() in ("case", "folder", "path")):  # a CSV header
                listed.append(Path(entry) if Path(entry).is_absolute() else source.parent / entry)
        if not listed:
            raise CaseError(f"{source}: lists no case folders")
        return listed
    if not source.is_dir():
        return None
    try:
        find_case_files(source)
        return None  # the folder is a case
    except CaseError:
        pass
    folders = [folder for folder in sorted(source.iterdir()) if folder.is_dir() and not folder.name.startswith(".")
               and any(path.name.lower().endswith(IMAGE_SUFFIXES) for path in folder.iterdir())]
    return folders or None


def explain_cohort(cases: list[Path], out: str | Path, config: ExplainConfig, progress: bool = True,
                   report=lambda case, status, message: None, dataset: str | Path | None = None) -> dict:
    """Explain every case into ``out`` (see the module notes); returns ``cohort.json``'s content. ``report(case,
    status, message)`` is called after each case (``done``, ``skipped`` or ``failed`` with its error);
    ``dataset``: the folder or list the cases came from (never written in)."""
    refuse_overwrite(config.overwrite)
    network = functools.cache(lambda: load_network(config))  # once, and only when a case needs it

    def explain_case(case: Path, destination: Path) -> None:
        explain(case, destination, config, progress=None, network=network())

    failures = run_cohort(cases, out, "explain", config.arguments(), explain_case, progress, report, dataset)
    return write_cohort(Path(out), cases, failures)


def refuse_overwrite(overwrite: bool) -> None:
    """A dataset's run resumes and never redoes a finished case: ``--overwrite`` is refused, before any work."""
    if overwrite:
        raise UsageError("--overwrite: a dataset's run resumes where it stopped and never redoes a finished case; "
                         "rerun without --overwrite, or choose another --out")


def segment_cohort(cases: list[Path], out: str | Path, arguments: list[str], segment_case, progress: bool = True,
                   report=lambda case, status, message: None, dataset: str | Path | None = None) -> dict:
    """``segment`` over a dataset: ``segment_case(case, work)`` writes a case's labels and ``summary.json`` (its
    scores, with ground truth) into its private folder, published as ``OUT/<case-id>/``; ``arguments``: the
    settings, recorded as explain's are. Returns ``cohort.json``'s content."""
    def segment_into(case: Path, destination: Path) -> None:
        with OutputFolder(destination, [case], False, "segment") as work:
            segment_case(case, work)

    failures = run_cohort(cases, out, "segment", arguments, segment_into, progress, report, dataset)
    return write_cohort(Path(out), cases, failures)


def run_cohort(cases: list[Path], out: str | Path, producer: str, arguments: list[str], run_case, progress: bool,
               report, dataset: str | Path | None) -> dict[str, str]:
    """Every case not finished yet through ``run_case(case, OUT/<case-id>)``, which publishes that folder whole
    or not at all (see the module notes); returns case → error of those that failed. Under torchrun each rank runs
    its share of the unfinished cases (:class:`ranks.Ranks`); rank 0 records the settings, reports the skipped
    cases and draws the progress, and every rank returns the failures of all."""
    names = [case.name for case in cases]
    if len(set(names)) < len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise UsageError(f"{dataset or 'the dataset'}: case folders named alike ({', '.join(twice)}) would write to "
                         "the same OUT/<case-id>/: list each case once")
    out = Path(out)
    check_not_an_input(out, [dataset, *cases])
    ranks = joined()
    refused = None
    if ranks.leader:
        try:
            _record_settings(out, producer, arguments)
        except InputError as error:
            refused = error
    refused = ranks.from_leader(refused)
    if refused is not None:
        raise refused
    finished = [_finished(out / case.name) for case in cases]
    ranks.gathered(None)  # every rank has listed the finished cases before any publishes one
    if ranks.leader:
        for case in (case for case, done in zip(cases, finished) if done):
            report(case, "skipped", "finished by an earlier run")
    pending = [case for case, done in zip(cases, finished) if not done]
    failures = {}
    for case in shared_progress(pending, ranks, "cases" if progress else None, unit="case"):
        try:
            run_case(case, out / case.name)
        except InputError as error:  # the case's own problem (unreadable, missing, refused): the others go on
            failures[case.name] = str(error)
            report(case, "failed", str(error))
            continue
        report(case, "done", "")
    return {name: error for found in ranks.gathered(failures) for name, error in found.items()}


def _record_settings(out: Path, producer: str, arguments: list[str]) -> None:
    """The settings of the cohort in ``out``: recorded by the first run; a run with others, or of another verb, is
    refused."""
    settings = {"producer": producer, "version": __version__, "arguments": arguments}
    record = out / SETTINGS
    if record.is_file():
        earlier = json.loads(record.read_text())
        if earlier.get("producer", "explain") != producer:
            raise UsageError(f"{out}: a cohort of {earlier.get('producer')}, not of {producer}; choose another --out")
        if earlier.get("arguments") != settings["arguments"]:
            raise UsageError(f"{out}: a cohort made with other settings ({' '.join(earlier.get('arguments', []))}"
                             f"); rerun with those to finish it, or choose another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: exists and is not a cohort of {producer} (no {SETTINGS}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_atomically(record, json.dumps(settings, indent=1) + "\n")


def _finished(folder: Path) -> bool:
    return folder.is_dir() and is_result_folder(folder) and (folder / SUMMARY).is_file()


def summary_lines(statistics: dict, out: Path, finished: str, earlier: int) -> list[str]:
    """A cohort run said in two lines: the cases ``finished`` (``earlier`` of them by an earlier run) and the mean
    Dice per region with its interval, then where the table and the page are."""
    means = statistics["means"]
    dice = [f"{region} Dice {found['mean']:.3f} [{found['low']:.3f}–{found['high']:.3f}]" if found["low"] is not None
            else f"{region} Dice {found['mean']:.3f}" for region in ("WT", "TC", "ET")
            if (found := means.get(f"{region}_dice")) and found["mean"] is not None]
    return [f"cohort {out}: {statistics['done']} of {statistics['cases']} cases {finished} ({earlier} by an earlier "
            "run); " + ", ".join(dice), f"table: {out / TABLE}; page: {out / PAGE}"]


def case_row(case: Path, out: Path, error: str | None = None) -> dict:
    """One row of ``cohort.csv`` for ``case``: from its published ``summary.json``, or its status alone (``error``:
    why it failed in this run)."""
    folder = out / case.name
    if not _finished(folder):
        return {"case": case.name, "status": "failed" if error else "not run", "error": error or ""}
    summary = json.loads((folder / SUMMARY).read_text())
    row = {"case": case.name, "status": "done", "error": ""}
    for region in REGIONS:
        scores = summary.get("scores", {}).get(region, {})
        row.update({f"{region}_{name}": scores.get(name) for name in SCORES})
    analysis = summary.get("uncertainty", {}).get("error_analysis") or {}
    row.update({f"auroc_{name}": entry.get("auroc") for name, entry in analysis.get("maps", {}).items()})
    control = analysis.get("control", {})
    row["auroc_control"] = control.get("auroc")
    row["auroc_control_same_errors"] = control.get("same_errors", {}).get("auroc")  # the errors the maps are scored on
    for name, found in (("ece", analysis.get("calibration", {})), ("ece_control", control.get("calibration", {}))):
        row[name] = found.get("ece")
        row[f"{name}_near_tumour"] = found.get("near_tumour", {}).get("ece")
    row.update({f"case_{name}": value for name, value in analysis.get("case_uncertainty", {}).items()
                if name != "over"})
    row.update({f"seconds_{stage}": seconds for stage, seconds in summary.get("seconds", {}).items()})
    row["megabytes"] = round(sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6, 2)
    return row


def write_cohort(out: Path, cases: list[Path], failures: dict[str, str]) -> dict:
    """``cohort.csv``, ``cohort.json`` and ``cohort.html`` of the cases in ``out`` (``failures``: case → error of
    those that failed in this run), written by rank 0 once every rank is done; returns ``cohort.json``'s content (on
    every rank)."""
    ranks = joined()
    return ranks.from_leader(_write_cohort(out, cases, failures) if ranks.leader else None)


def _write_cohort(out: Path, cases: list[Path], failures: dict[str, str]) -> dict:
    rows = [case_row(case, out, failures.get(case.name)) for case in cases]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = io.StringIO()
    writer = csv.DictWriter(table, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomically(out / TABLE, table.getvalue())
    done = [row for row in rows if row["status"] == "done"]
    numeric = [c for c in columns if any(isinstance(row.get(c), (int, float)) for row in done)]
    statistics = {
        "cases": len(rows), "done": len(done),
        "failed": [{"case": row["case"], "error": row["error"]} for row in rows if row["status"] == "failed"],
        "not_run": [row["case"] for row in rows if row["status"] == "not run"],
        "means": {c: mean_interval([row.get(c) for row in done if row.get(c) is not None]) for c in numeric},
        "worst": {region: [{"case": row["case"], "dice": row[f"{region}_dice"]} for row in sorted(
            (row for row in done if row.get(f"{region}_dice") is not None), key=lambda row: row[f"{region}_dice"])
            [:WORST]] for region in REGIONS},
        "failure_detection": failure_detection(done),
    }
    _write_atomically(out / STATISTICS, json.dumps(statistics, indent=1) + "\n")
    _draw(done, out / FIGURE)
    _write_atomically(out / PAGE, _page(rows, statistics, out))
    return statistics


def failure_detection(done: list[dict]) -> dict:
    """Case-level failure detection over the cases done: each uncertainty map's per-case value (its mean over the
    predicted tumour, ``case_<map>``) ranking the cases against their risk, 1 − WT Dice, as AURC
    (:func:`scoring.risk_coverage.aurc`: lower is better; ``optimal`` ranks by the risk itself, ``random`` is the
    mean risk). A case with no predicted tumour (no value) ranks as the most uncertain: a missed tumour is the
    failure a review must not skip. Empty under two scored cases."""
    scored = [row for row in done if row.get("WT_dice") is not None]
    found = {}
    for column in sorted({key for row in done for key in row if key.startswith("case_")}):
        values = [row.get(column) for row in scored]
        if len(scored) >= 2 and any(v is not None for v in values):
            found[column[len("case_"):]] = aurc(values, [1 - row["WT_dice"] for row in scored])
    return found


def _draw(done: list[dict], path: Path) -> None:
    """The per-case Dice of every region (and the uncertainty AUROC), a dot per case, as ``cohort.png``."""
    columns = [f"{region}_dice" for region in REGIONS] + ["auroc_entropy", "auroc_control"]
    scores = {name: [(row["case"], row[name]) for row in done if row.get(name) is not None] for name in columns}
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    cohort_scores({name: pairs for name, pairs in scores.items() if pairs}, partial,
                  f"{len(done)} cases: a dot per case, the bar the mean")
    partial.replace(path)


def _failure_table(found: dict) -> str:
    if not found:
        return ""
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_number(entry['aurc'])}</td><td>"
                   f"{_number(entry['optimal'])}</td><td>{_number(entry['random'])}</td><td>{entry['n']}</td></tr>"
                   for name, entry in found.items())
    return ("<h2>Which cases failed?</h2><p>Cases ranked by each map's mean over their predicted tumour against "
            "1 − WT Dice: area under the risk–coverage curve (lower is better), beside the best possible ranking "
            "and the mean risk (a ranking that knows nothing).</p><table><tr><th>map</th><th>AURC</th>"
            f"<th>optimal</th><th>random</th><th>cases</th></tr>{rows}</table>")


def _page(rows: list[dict], statistics: dict, out: Path) -> str:
    """One page: the means with their intervals, then a row per case linking its report (explain's cases)."""
    means = "".join(f"<tr><td>{html.escape(name)}</td><td>{_number(found['mean'])}</td><td>"
                    f"{_number(found['low'])}–{_number(found['high'])}</td><td>{found['n']}</td></tr>"
                    for name, found in statistics["means"].items() if not name.startswith("seconds_"))
    shown = ["case", "status", "WT_dice", "TC_dice", "ET_dice", "auroc_entropy", "auroc_control", "megabytes"]
    body = "".join("<tr>" + "".join(
        f"<td><a href='{html.escape(row['case'])}/{REPORT}'>{html.escape(row['case'])}</a></td>"
        if key == "case" and (out / row["case"] / REPORT).is_file() else
        f"<td>{html.escape(row['error'] or row['status'])}</td>" if key == "status" else
        f"<td>{_number(row.get(key)) if key != 'case' else html.escape(row['case'])}</td>" for key in shown)
        + "</tr>" for row in rows)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>cohort</title><style>td,th{padding:2px 8px;"
            "text-align:right}td:first-child{text-align:left}</style></head><body>"
            f"<h1>Cohort: {statistics['done']} of {statistics['cases']} cases done</h1>"
            "<p>Means over the cases done, with 95 % intervals from resampling the cases (bootstrap, "
            f"{next(iter(statistics['means'].values()), {}).get('resamples', 0)} resamples, seeded).</p>"
            f"<p><img src='{FIGURE}' alt='per-case scores'></p>"
            f"<table><tr><th>column</th><th>mean</th><th>95 % interval</th><th>cases</th></tr>{means}</table>"
            f"{_failure_table(statistics.get('failure_detection', {}))}"
            f"<h2>Cases</h2><table><tr>{''.join(f'<th>{key}</th>' for key in shown)}</tr>{body}</table>"
            "</body></html>\n")


def _number(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _write_atomically(path: Path, text: str) -> None:
    """A cohort file replaced whole: written beside it, then renamed over it."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
