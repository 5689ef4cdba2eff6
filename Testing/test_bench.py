"""The benchmark's comparisons are themselves checks: our Grad-CAM against Captum's, the streaming dissection
thresholds against exact quantiles. No timing is asserted here (timings live in BENCHMARKS.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from BrainTumorExplainLib.analyses.dissection import dissect
from BrainTumorExplainLib.analyses.gradcam import gradcam_maps
from BrainTumorExplainLib.testbed.bench import BenchConfig, captum_gradcam, exact_thresholds, markdown, run_benchmarks
from BrainTumorExplainLib.data.case import load_case
from BrainTumorExplainLib.models import build_model, load_pretrained


@pytest.mark.parametrize("architecture", ["resunet", "denseunet"])
def test_gradcam_matches_captum_gradcam_maps_on_every_layer_and_class(small_phantom, architecture):
    pytest.importorskip("captum")
    torch.manual_seed(0)
    model = build_model(architecture, width=0.125)
    case = load_case(small_phantom.flair.parent)
    slices = case.brain_slices()[::8][:3]
    images = torch.from_numpy(np.ascontiguousarray(case.images[:, slices].transpose(1, 0, 2, 3)))
    ours = gradcam_maps(model, images, "all", "all")
    theirs = captum_gradcam(model, images, list(ours), range(4))
    for name in ours:
        for c in range(4):
            reference = theirs[name][:, c]
            difference = (ours[name][:, c] - reference).abs().max()
            assert difference <= 1e-3 * max(float(reference.abs().max()), 1e-12), (name, c)


def test_streamed_thresholds_are_within_their_bound_of_the_exact_quantiles(small_phantom):
    model = load_pretrained("resunet")
    result = dissect(model, [small_phantom.flair.parent], "all", slice_step=4, controls=False)
    exact = exact_thresholds(model, [small_phantom.flair.parent], result.quantile, 4, torch.device("cpu"))
    assert set(exact) == set(result.layers)
    for name, (truth, spread) in exact.items():
        error = np.abs(result.layers[name].thresholds - truth)
        assert (error <= result.layers[name].threshold_error + 1e-9 * spread).all(), name


def test_run_benchmarks_reports_both_ways_and_a_markdown_row(small_phantom):
    config = BenchConfig(case=small_phantom.flair.parent, slices=3)
    results = run_benchmarks(config, ["segmentation"])
    (measurement,) = results["measurements"]
    assert measurement["ours_s"] > 0 and measurement["baseline_s"] > 0
    assert measurement["ratio"] == pytest.approx(measurement["baseline_s"] / measurement["ours_s"])
    assert measurement["details"]["max_probability_difference"] < 1e-4  # batching must not change the answer
    assert "3 of" in measurement["work"]
    table = markdown(results)
    assert "| Segmentation | batches of 16 slices |" in table and results["environment"]["command"] in table


def test_unknown_benchmark_is_refused_by_name(small_phantom):
    with pytest.raises(ValueError, match="unknown benchmark.*nonsense"):
        run_benchmarks(BenchConfig(case=small_phantom.flair.parent), ["nonsense"])


def test_the_bench_verb_runs_with_its_options_as_the_configs_fields(small_phantom, tmp_path, capsys):
    """bench's options come from BenchConfig's fields: a run through the command line with several of them set
    writes the config they describe into its JSON, and a bad value is one error line."""
    import json

    from BrainTumorExplainLib.app.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--case", str(small_phantom.flair.parent), "--only", "segmentation", "--slices", "3",
                 "-T", "7", "--precision", "both", "--dissection-volumes", "2,3", "--slices-per-batch", "2",
                 "--json", str(out)]) == 0
    config = json.loads(out.read_text())["config"]
    assert (config["slices"], config["passes"], config["precision"], config["dissection_volumes"],
            config["slices_per_batch"]) == (3, 7, "both", [2, 3], 2)
    assert main(["bench", "--only", "segmentation", "--passes", "1"]) == 2
    assert "--passes 1: expected an integer ≥ 2" in capsys.readouterr().err
