"""explain over a dataset (app/cohort.py): a case per folder, resumable after a kill, bad cases listed with their
error, settings recorded, the cohort table equal to each case's summary, and the bootstrap interval of the means."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import torchrun

from BrainTumorExplainLib.app.cli import main
from BrainTumorExplainLib.app.cohort import FIGURE, PAGE, SETTINGS, STATISTICS, TABLE, dataset_cases
from BrainTumorExplainLib.app.contract import SUMMARY
from BrainTumorExplainLib.scoring.risk_coverage import aurc
from BrainTumorExplainLib.scoring.statistics import mean_interval, ratio_interval

# the cheapest explain: one Grad-CAM layer, quick dropout, two pre-image steps, no scene
CHEAP = ["--model", "simunet", "--layers", "dec1", "--quick", "--featviz-steps", "2", "--featviz-size", "32",
         "--no-resample", "--no-scene", "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset(training_phantoms, tmp_path_factory):
    """Two 3 mm phantom cases, as a folder of case folders."""
    folder = tmp_path_factory.mktemp("cohort") / "data"
    for case in sorted(p for p in training_phantoms.iterdir() if p.is_dir())[:2]:
        shutil.copytree(case, folder / case.name)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    """The dataset explained in one process at one torch and one ITK thread, as each of two ranks runs on this machine
    (float sums in the same order, so the runs under torchrun compare byte for byte)."""
    out = tmp_path_factory.mktemp("cohort_run") / "out"
    threads, itk_threads = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        assert main(["explain", str(dataset), *CHEAP, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)
    return out


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def test_a_dataset_is_a_folder_of_cases_or_a_list(dataset, tmp_path):
    cases = sorted(p for p in dataset.iterdir() if p.is_dir())
    assert dataset_cases(dataset) == cases
    assert dataset_cases(cases[0]) is None  # one case
    listing = tmp_path / "cases.csv"
    listing.write_text("case,site\n" + "".join(f"{case},A\n" for case in cases[:2]) + "# a comment\n")
    assert dataset_cases(listing) == cases[:2]


def test_every_case_written_as_a_single_run_writes_it_with_the_cohort_table(uninterrupted, dataset):
    cases = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    assert {p.name for p in uninterrupted.iterdir() if p.is_dir()} == set(cases)
    assert {SETTINGS, TABLE, STATISTICS, PAGE, FIGURE} <= {p.name for p in uninterrupted.iterdir() if p.is_file()}
    assert (uninterrupted / FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(uninterrupted / TABLE) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == cases and {row["status"] for row in rows} == {"done"}
    for row in rows:  # the table is each case's own summary
        summary = json.loads((uninterrupted / row["case"] / "summary.json").read_text())
        for region in ("WT", "TC", "ET"):
            assert float(row[f"{region}_dice"]) == pytest.approx(summary["scores"][region]["dice"], abs=1e-12)
            assert int(row[f"{region}_lesion_fp"]) == summary["scores"][region]["lesion_fp"]
        analysis = summary["uncertainty"]["error_analysis"]
        assert float(row["auroc_entropy"]) == pytest.approx(analysis["maps"]["entropy"]["auroc"], abs=1e-12)
        assert float(row["auroc_control"]) == pytest.approx(analysis["control"]["auroc"], abs=1e-12)
        assert float(row["auroc_control_same_errors"]) == pytest.approx(analysis["control"]["same_errors"]["auroc"])
        assert float(row["ece"]) == pytest.approx(analysis["calibration"]["ece"], abs=1e-12)
        assert float(row["case_entropy"]) == pytest.approx(analysis["case_uncertainty"]["entropy"], abs=1e-12)
        assert float(row["seconds_gradcam"]) == pytest.approx(summary["seconds"]["gradcam"])
    statistics = json.loads((uninterrupted / STATISTICS).read_text())
    dice = [float(row["WT_dice"]) for row in rows]
    assert statistics["means"]["WT_dice"]["mean"] == pytest.approx(np.mean(dice))
    assert statistics["means"]["WT_dice"]["low"] <= np.mean(dice) <= statistics["means"]["WT_dice"]["high"]
    assert [entry["case"] for entry in statistics["worst"]["WT"]] == [rows[i]["case"] for i in np.argsort(dice)]
    found = statistics["failure_detection"]["entropy"]  # cases ranked by their mean entropy against 1 − WT Dice
    expected = aurc([float(row["case_entropy"]) for row in rows], 1 - np.array(dice))
    assert found == pytest.approx(expected) and found["optimal"] <= found["aurc"]
    page = (uninterrupted / PAGE).read_text()
    assert all(f"{case}/report.html" in page for case in cases) and "Which cases failed?" in page


def test_a_killed_cohort_resumes_to_the_files_of_an_uninterrupted_run(dataset, uninterrupted, tmp_path):
    out = tmp_path / "out"
    first = out / sorted(p.name for p in dataset.iterdir() if p.is_dir())[0]
    command = [sys.executable, "-m", "BrainTumorExplainLib", "explain", str(dataset), *CHEAP, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (first / "summary.json").is_file():  # the first case is published
            assert process.poll() is None and time.monotonic() < deadline, "the cohort ended before its first case"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    finished = {path: path.stat().st_mtime_ns for path in first.rglob("*") if path.is_file()}
    assert main(["explain", str(dataset), *CHEAP, "--out", str(out)]) == 0
    assert {path: path.stat().st_mtime_ns for path in first.rglob("*") if path.is_file()} == finished  # not redone
    assert _files(out) == _files(uninterrupted)  # no partial folder or lock left, nothing missing
    for path in sorted(out.rglob("segmentation.nii.gz")):
        expected = uninterrupted / path.relative_to(out)
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(expected))))
    with open(out / TABLE) as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["done"] * 2


def test_a_broken_case_is_listed_with_its_error_and_the_others_go_on(dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    broken = sorted(p for p in data.iterdir() if p.is_dir())[1]
    next(broken.glob("*_t2.nii.gz")).write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["explain", str(data), *CHEAP, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"error: {broken}" in error and "cannot read t2 image" in error
    with open(out / TABLE) as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert rows[broken.name]["status"] == "failed" and "cannot read t2 image" in rows[broken.name]["error"]
    assert sorted(row["status"] for row in rows.values()) == ["done", "failed"]
    assert not (out / broken.name).exists()
    failed = json.loads((out / STATISTICS).read_text())["failed"]
    assert [entry["case"] for entry in failed] == [broken.name]


def test_other_settings_into_the_same_cohort_are_refused(uninterrupted, dataset, capsys):
    before = _files(uninterrupted)
    assert main(["explain", str(dataset), *CHEAP, "--layers", "enc1", "--out", str(uninterrupted)]) == 2
    assert "a cohort made with other settings" in capsys.readouterr().err
    assert main(["explain", str(dataset), *CHEAP, "--overwrite", "--out", str(uninterrupted)]) == 2
    assert _files(uninterrupted) == before
    inside = dataset / "results"  # the dataset is an input: nothing is written in it
    assert main(["explain", str(dataset), *CHEAP, "--out", str(inside)]) == 2
    assert "inside the input folder" in capsys.readouterr().err and not inside.exists()
    listing = dataset.parent / "twice.txt"
    listing.write_text(f"{dataset / 'Phantom_00060'}\n{dataset / 'Phantom_00060'}\n")
    assert main(["explain", str(listing), *CHEAP, "--out", str(dataset.parent / "twice")]) == 2
    assert "named alike (Phantom_00060)" in capsys.readouterr().err


def test_the_bootstrap_interval_of_a_mean_matches_the_normal_one():
    """For a large sample the percentile bootstrap interval of the mean is mean ± 1.96 s/√n."""
    values = np.random.default_rng(3).normal(0.8, 0.1, 400)
    found = mean_interval(values, resamples=4000, seed=1)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert found["mean"] == pytest.approx(values.mean())
    assert found["low"] == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert found["high"] == pytest.approx(values.mean() + half, abs=0.15 * half)
    assert mean_interval(values, resamples=4000, seed=1) == found  # seeded
    assert mean_interval([0.5])["low"] is None and mean_interval([])["mean"] is None


def test_the_bootstrap_interval_of_a_ratio_of_sums_matches_the_delta_method():
    """Issue 41: a dataset-wide IoU is Σ intersections / Σ unions; resampling cases with both together gives, for a
    large sample, R ± 1.96 · sd(x − R·y) / (ȳ √n) (the ratio estimator's standard error)."""
    rng = np.random.default_rng(4)
    unions = rng.uniform(500, 1500, 400)
    intersections = unions * np.clip(rng.normal(0.6, 0.1, 400), 0, 1)
    found = ratio_interval(intersections, unions, resamples=4000, seed=1)
    ratio = intersections.sum() / unions.sum()
    half = 1.96 * (intersections - ratio * unions).std(ddof=1) / (unions.mean() * np.sqrt(len(unions)))
    assert found["value"] == pytest.approx(ratio) and found["n"] == 400
    assert found["low"] == pytest.approx(ratio - half, abs=0.15 * half)
    assert found["high"] == pytest.approx(ratio + half, abs=0.15 * half)
    assert ratio_interval([1, 2], [2, 4])["low"] == 0.5  # every case the same ratio
    absent = ratio_interval([1, 0], [2, 0], resamples=4000)  # a resample of the second case alone has no ratio
    assert absent["low"] == absent["high"] == 0.5 and absent["undefined"] == pytest.approx(0.25, abs=0.02)
    assert ratio_interval([0, 0], [0, 0])["value"] is None
    with pytest.raises(ValueError, match="3 numerators against 2 denominators"):
        ratio_interval([1, 2, 3], [1, 2])


def test_segment_over_a_dataset_writes_each_case_and_resumes(dataset, tmp_path, capsys):
    """segment DATASET: OUT/<case-id>/segmentation.nii.gz equal to the single-case verb's, the scores in the cohort
    table; a rerun redoes nothing; a bad case is an error line; other settings are refused."""
    out = tmp_path / "seg"
    arguments = ["segment", str(dataset), "--model", "simunet", "--no-resample", "--device", "cpu"]
    assert main([*arguments, "--out", str(out)]) == 0
    cases = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    single = tmp_path / "single.nii.gz"
    assert main(["segment", str(dataset / cases[0]), *arguments[2:], "--out", str(single)]) == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / cases[0] / "segmentation.nii.gz"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(single))))
    with open(out / TABLE) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == cases and {row["status"] for row in rows} == {"done"}
    summary = json.loads((out / cases[1] / "summary.json").read_text())
    assert float(rows[1]["WT_dice"]) == pytest.approx(summary["scores"]["WT"]["dice"], abs=1e-12)
    times = {path: path.stat().st_mtime_ns for path in out.rglob("segmentation.nii.gz")}
    capsys.readouterr()
    assert main([*arguments, "--out", str(out)]) == 0
    assert "(2 by an earlier run)" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in out.rglob("segmentation.nii.gz")} == times
    assert main([*arguments[:3], "resunet", *arguments[4:], "--out", str(out)]) == 2  # another network
    assert "a cohort made with other settings" in capsys.readouterr().err
    assert main(["explain", str(dataset), *CHEAP, "--out", str(out)]) == 2  # another verb
    assert "a cohort of segment, not of explain" in capsys.readouterr().err


def _same_summaries(ours, theirs) -> bool:
    """Two summaries equal but for their ``seconds`` entries, at any depth, and the last digits of a float (within
    1e-9 of it: ITK's registration metric sums over its own threads in whatever order they finish, so the last
    digits of a misalignment vary run to run); NaN equals NaN."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = set(ours) - {"seconds"}
        return keys == set(theirs) - {"seconds"} and all(_same_summaries(ours[key], theirs[key]) for key in keys)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(_same_summaries, ours, theirs))
    if isinstance(ours, float) and isinstance(theirs, float):
        return (math.isnan(ours) and math.isnan(theirs)) or math.isclose(ours, theirs, rel_tol=1e-9)
    return ours == theirs


def _comparable_rows(out: Path) -> list[dict]:
    """cohort.csv without what a rerun changes anyway (times, and the sizes that carry them)."""
    with (out / TABLE).open() as table:
        return [{key: value for key, value in row.items() if not key.startswith("seconds_") and key != "megabytes"}
                for row in csv.DictReader(table)]


def _rank_process(launcher: int, rank: int) -> int | None:
    """The process id of torchrun's worker of ``rank`` (launched by the process ``launcher``), if it runs."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parent = int(next(line for line in status.read_text().splitlines() if line.startswith("PPid:")).split()[1])
            if parent == launcher and f"RANK={rank}".encode() in (status.parent / "environ").read_bytes().split(b"\0"):
                return int(status.parent.name)
        except (OSError, StopIteration):  # a process that ended meanwhile
            continue
    return None


def test_a_killed_rank_fails_the_job_by_name_and_a_rerun_resumes_to_one_process_files(dataset, uninterrupted,
                                                                                        tmp_path):
    """Issue 39: each of 2 ranks explains its share; rank 1 is held (SIGSTOP) inside its case until rank 0 has
    published its own, then killed: torchrun exits non-zero naming rank 1. A rerun under 2 ranks keeps rank 0's case
    and does the other, and the whole equals one process's run (at the ranks' one thread) file for file — every
    volume byte for byte, each summary and the table but for the times."""
    out = tmp_path / "out"
    first, second = sorted(p.name for p in dataset.iterdir() if p.is_dir())  # rank 0's case, rank 1's
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "BrainTumorExplainLib", "explain", str(dataset), *CHEAP, "--out", str(out)]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600

    def wait_for(condition, what: str):
        while not condition():
            assert launcher.poll() is None and time.monotonic() < deadline, f"the run ended before {what}"
            time.sleep(0.05)

    try:
        wait_for(lambda: any(out.glob(f".{second}.partial-*")), "rank 1 started its case")
        worker = _rank_process(launcher.pid, 1)
        os.kill(worker, signal.SIGSTOP)
        wait_for(lambda: (out / first / SUMMARY).is_file(), "rank 0 published its case")
        os.kill(worker, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
        launcher.wait()
    assert launcher.returncode != 0
    assert "rank: 1" in stderr and "SIGKILL" in stderr, stderr[-3000:]  # torchrun names the rank that died
    done = torchrun("explain", str(dataset), *CHEAP, "--out", str(out))
    assert done.returncode == 0 and "(1 by an earlier run)" in done.stdout, done.stderr[-3000:]
    assert _files(out) == _files(uninterrupted)  # no partial folder or lock left, nothing missing
    for volume in uninterrupted.rglob("*.nii.gz"):
        assert volume.read_bytes() == (out / volume.relative_to(uninterrupted)).read_bytes(), volume
    for summary in uninterrupted.glob(f"*/{SUMMARY}"):
        ours, theirs = (json.loads(path.read_text()) for path in (out / summary.relative_to(uninterrupted), summary))
        assert _same_summaries(ours, theirs), summary
    assert _comparable_rows(out) == _comparable_rows(uninterrupted)
    assert done.stdout.count("cohort ") == 1  # rank 0 says how it went, once


def test_a_broken_case_under_two_ranks_is_listed_once_and_fails_the_job(dataset, tmp_path):
    """segment over a dataset (the cheapest cohort; explain's runs through the same run_cohort)."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    broken = sorted(p for p in data.iterdir() if p.is_dir())[1]
    next(broken.glob("*_t2.nii.gz")).write_bytes(b"not an image")
    out = tmp_path / "out"
    done = torchrun("segment", str(data), "--model", "simunet", "--no-resample", "--device", "cpu", "--out", str(out))
    assert done.returncode != 0
    assert done.stderr.count(f"error: {broken}") == 1 and "cannot read t2 image" in done.stderr
    statistics = json.loads((out / STATISTICS).read_text())
    assert statistics["done"] == 1 and [failed["case"] for failed in statistics["failed"]] == [broken.name]


def test_each_rank_takes_its_share_of_the_unfinished_cases():
    from BrainTumorExplainLib.ranks import Ranks

    cases = [f"case{i}" for i in range(7)]
    shares = [Ranks(rank, 3).share(cases) for rank in range(3)]
    assert sorted(sum(shares, [])) == cases and max(map(len, shares)) - min(map(len, shares)) <= 1
    assert Ranks().share(cases) == cases and Ranks().leader and not Ranks(1, 2).leader


def test_dissection_under_two_ranks_equals_one_process(training_phantoms, tmp_path):
    """Issue 39: each rank streams its share of the cases (2 and 1 of 3); the ranks combine their histograms and IoU
    counts, so the thresholds lie within the stated bounds of one process's, the IoUs agree and the detectors are the
    same; each rank writes the concept masks of its share of the cases, rank 0 the rest; each case's own sums
    (--per-case, issue 41) come back in the dataset's order."""
    arguments = ["dissect", "--data", str(training_phantoms), "--model", "resunet", "--layers", "enc2,dec1",
                 "--slice-step", "4", "--no-resample", "--device", "cpu", "--per-case"]
    assert main([*arguments, "--out", str(tmp_path / "alone")]) == 0
    done = torchrun(*arguments, "--out", str(tmp_path / "ranks"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 2  # rank 0 alone: the figure and the dissection
    assert _files(tmp_path / "ranks") == _files(tmp_path / "alone")
    alone, ranks = (json.loads((tmp_path / name / "dissection.json").read_text()) for name in ("alone", "ranks"))
    assert ranks["cases"] == alone["cases"]  # in the dataset's order
    pairs = [(ranks, alone)] + [(ranks["controls"][name], alone["controls"][name]) for name in alone["controls"]]
    for ours, theirs in pairs:  # the trained network and each control
        for layer, found in theirs["layers"].items():
            mine = ours["layers"][layer]
            gap = np.abs(np.subtract(mine["thresholds"], found["thresholds"]))
            assert (gap <= np.add(mine["threshold_error"], found["threshold_error"])).all(), layer
            # thresholds a bound apart flip a few voxels (raw intensities crowd near some): IoUs agree to 0.005
            iou = [np.divide(one["intersection"], np.maximum(one["union"], 1)) for one in (mine, found)]
            assert np.abs(iou[0] - iou[1]).max() <= 0.005 and mine["image_count"] == found["image_count"], layer
            cases = [{key: np.asarray(one["per_case"][key]) for key in ("intersection", "union", "image_count")}
                     for one in (mine, found)]
            np.testing.assert_array_equal(cases[0]["intersection"].sum(0), mine["intersection"])
            np.testing.assert_array_equal(cases[0]["image_count"], cases[1]["image_count"])  # slices per case
            iou = [np.divide(one["intersection"], np.maximum(one["union"], 1)) for one in cases]
            assert np.abs(iou[0] - iou[1]).max() <= 0.01, layer

    def detectors(name):
        found = json.loads((tmp_path / name / "detectors.json").read_text())["detectors"]
        return [(row["layer"], row["filter"], row["concept"]) for row in found]

    assert detectors("ranks") == detectors("alone") and detectors("alone")


def test_evaluation_under_two_ranks_equals_one_process(training_phantoms, tmp_path):
    """Issue 39: evaluate DATASET under torchrun: each rank scores its share; rank 0 prints the table and writes the
    JSON, equal to one process's (at one thread per process), the cases in the dataset's order."""
    arguments = ["evaluate", "--data", str(training_phantoms), "--model", "simunet", "--no-resample", "--device", "cpu"]
    single = subprocess.run([sys.executable, "-m", "BrainTumorExplainLib", *arguments, "--json",
                             str(tmp_path / "alone.json")], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    done = torchrun(*arguments, "--json", str(tmp_path / "ranks.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == single.stdout  # the table, once
    assert "[rank 1] warning: Phantom_00061: voxel size" in done.stderr  # a rank's warnings say whose they are
    alone, ranks = (json.loads((tmp_path / name).read_text()) for name in ("alone.json", "ranks.json"))
    assert ranks == alone and list(ranks["cases"]) == sorted(p.name for p in training_phantoms.iterdir())
