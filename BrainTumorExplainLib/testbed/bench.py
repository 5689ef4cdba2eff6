"""Benchmarks: each one times two ways of doing the same work in one run — same model, seed, input and device —
and reports the ratio, so numbers from different machines are never compared across runs.

1. ``ttd``: test-time dropout, our batched passes against the naive loop (one slice, one pass per forward,
   probabilities gathered on the host, as the authors' code does); quick mode against the fixed ``passes``.
2. ``gradcam``: every layer × 4 classes in one forward pass against Captum's ``LayerGradCam`` called per
   (layer, class), with the largest difference of the maps (Captum is the ``[bench]`` extra).
3. ``dissection``: peak memory and time of a dissection over 4, 16 and 48 volumes (each in a fresh process), and
   the streaming thresholds against exact quantiles on the smallest set.
4. ``segmentation``: a whole volume in batches against slice by slice; ``featviz``: filters optimised in one batch
   against one at a time.
5. ``slicer``: pushing every output of an ``explain`` run into a scene on slicer-core, and saving it as .mrb.
6. ``space``: the case seen through other acquisition grids (:data:`ACQUISITIONS`), segmented as acquired against
   resampled into the network's space — seconds, and WT/TC/ET Dice on the acquired grid for both, and for the labels
   carried back by nearest neighbour instead of through the probabilities.
7. ``gradcam3d``: Grad-CAM of every layer of the shipped 3D network against MONAI's ``GradCAM`` per layer, and
   its peak memory against the volume.
8. ``coregistration``: the case with its T1, T1ce and T2 acquired after a known head motion (:data:`MOTIONS`),
   co-registered onto the FLAIR against taken at the scanner's world coordinates — seconds, the registration's error
   at the tumour against the motion, and WT/TC/ET Dice of both.
9. ``clinical``: the case re-acquired as clinical scans, through BraTS-style preprocessing.
10. ``nnunet``: our inference of an nnU-Net folder against ``nnUNetPredictor`` on the same folder and case, and the
    cost of Grad-CAM on top (nnunetv2 is a test extra).

Timings are wall-clock seconds after a warm-up call, with the device synchronised. Where a flag restricts the work
(slices, passes, volumes), the output says so; no number is extrapolated.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

from ..analyses.dissection import DEFAULT_QUANTILE, dissect, dissection_values
from ..analyses.featviz import FeatvizConfig, Regularisers, load_template, shipped_template_path, visualise_filters
from ..analyses.gradcam import gradcam_maps, gradcam_volume
from ..analyses.uncertainty import QUICK, batching, brain_pearson, uncertainty_volume
from ..app.contract import read_summary
from ..app.explain import device_name, library_versions
from ..app.settings import option
from ..app.stages.scene import run_bundle, unavailable
from ..data.acquisition import Acquisition, reacquire
from ..data.atlas import align_to_atlas, rotation_angle_degrees
from ..data.case import SAMPLE_CASE, Case, as_case, find_case_files, load_case
from ..data.preprocess import preprocess
from ..data.resample import raw_sequences
from ..errors import UsageError
from ..models import build_model, load_pretrained, test_time_dropout
from ..models.activations import resolve_layers, upsample_to_input
from ..models.base import SegmentationNet, evaluating
from ..models.description import to_network_space
from ..models.inference import (
    case_probabilities,
    labels_from_probabilities,
    predict_probabilities,
    segment_input,
    slice_batches,
)
from ..models.nnunet import NnUNetSlidingWindow
from ..models.registry import load_model
from ..models.space import into_network_space, prepare_case, training_spacing
from ..scoring.metrics import score_segmentation
from .nnunet_example import NNUNET_TO_CLASS, write_model_folder

BENCHMARKS = ("ttd", "gradcam", "dissection", "segmentation", "featviz", "slicer", "space", "gradcam3d",
              "coregistration", "clinical", "nnunet")
DISSECTION_VOLUMES = (4, 16, 48)
Result = TypeVar("Result")


@dataclass(frozen=True)
class BenchConfig:
    """What ``bench`` can be asked (the fields with help are its command-line options; the case, the dissection's
    volumes and cases and the explain run are read by the verb itself)."""

    case: Path = SAMPLE_CASE  # a case folder or a saved case (.npz, see Case.save)
    model: str = option("resunet", "shipped model")
    width: float | None = option(None, "time an untrained network of this width instead of the shipped weights "
                                 "(1.0: paper width)", above=0)
    device: str = option("cpu", "cpu, cuda or cuda:N", type="device")
    seed: int = 0
    passes: int = option(100, "TTD passes", flags=("-T", "--passes"), minimum=2)
    slices: int | None = option(None, "evenly spaced brain slices for ttd and segmentation (default: every brain "
                                "slice)", minimum=1)
    slices_per_batch: int | None = None  # TTD batching, None: by device (the CLI's batching options, as uncertainty's)
    passes_per_forward: int | None = None
    precision: str = option("float32", "TTD convolutions (bfloat16: autocast, a GPU option; both: also compares "
                            "the two)", choices=("float32", "bfloat16", "both"))
    gradcam_slices: int = option(8, "slices of the Grad-CAM comparison with Captum", minimum=1)
    dissection_volumes: tuple[int, ...] = DISSECTION_VOLUMES
    dissection_step: int = option(8, "every Nth brain slice of the dissection", minimum=1)
    dissection_cases: tuple[Path, ...] = ()  # cycled to make up each count; default the bench case
    featviz_filters: int = option(4, "filters of the feature-visualisation comparison", minimum=1)
    featviz_steps: int = option(50, "steps of the feature-visualisation comparison", minimum=1)
    explain_run: Path | None = None  # an explain output folder, for the slicer benchmark


@dataclass
class Measurement:
    """One comparison: ``ours_s`` against ``baseline_s`` seconds, with what else was measured."""

    name: str
    ours: str
    baseline: str
    ours_s: float | None
    baseline_s: float | None
    work: str
    details: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return self.baseline_s / self.ours_s if self.ours_s and self.baseline_s else None


# -- helpers ---------------------------------------------------------------------------------------------------

def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function: Callable[[], Result], device: torch.device) -> tuple[Result, float]:
    _synchronise(device)
    start = time.perf_counter()
    result = function()
    _synchronise(device)
    return result, time.perf_counter() - start


def load_bench_model(config: BenchConfig) -> SegmentationNet:
    if config.width is None:
        return load_pretrained(config.model, device=config.device)
    torch.manual_seed(config.seed)
    return build_model(config.model, width=config.width).to(config.device)


def evenly_spaced_brain_slices(case: Case, count: int | None) -> np.ndarray:
    slices = case.brain_slices()
    if count is None or count >= len(slices):
        return slices
    return slices[np.linspace(0, len(slices) - 1, count).round().astype(int)]


def restricted_to_slices(case: Case, slices: np.ndarray) -> Case:
    """The same case with brain only on ``slices``, so every volume analysis visits exactly those."""
    mask = np.zeros_like(case.brain_mask)
    mask[slices] = case.brain_mask[slices]
    return dataclasses.replace(case, brain_mask=mask)


def environment(device: torch.device) -> dict:
    return {"device": device_name(str(device)), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "versions": library_versions(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": "python -m BrainTumorExplainLib " + " ".join(sys.argv[1:])}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- 1. test-time dropout --------------------------------------------------------------------------------------

def naive_ttd(model: SegmentationNet, case: Case, slices: np.ndarray, passes: int, device: torch.device,
              seed: int) -> np.ndarray:
    """The per-slice, per-pass loop: each pass a forward of one slice, its softmax copied to the host. Returns the
    variance map (the paper's uncertainty) on the chosen slices."""
    variance = np.zeros(case.brain_mask.shape, dtype=np.float32)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), test_time_dropout(model), torch.no_grad():
        torch.manual_seed(seed)
        for (z,), image in slice_batches(case, slices, 1, device):
            samples = np.stack([model.predict(image)[0].cpu().numpy() for _ in range(passes)])
            variance[z] = samples.var(axis=0).mean(axis=0)
    variance[~case.brain_mask] = 0.0
    return variance


def bench_ttd(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device) -> list[Measurement]:
    slices = evenly_spaced_brain_slices(case, config.slices)
    subset = restricted_to_slices(case, slices)
    work = f"{len(slices)} of {len(case.brain_slices())} brain slices × T={config.passes}, {_grid_text(case)}"
    slices_per_batch, passes_per_forward = batching(device, config.slices_per_batch, config.passes_per_forward)

    def ours(precision: str, quick: bool = False, on: Case = subset):
        return uncertainty_volume(model, on, passes=config.passes, quick=quick, seed=config.seed,
                                  slices_per_batch=slices_per_batch, passes_per_forward=passes_per_forward,
                                  device=device, precision=precision)

    # warm-up on one full batch: the timed runs then meet no first-time allocation or kernel choice
    warm = restricted_to_slices(case, slices[:slices_per_batch])
    precisions = ("float32", "bfloat16") if config.precision == "both" else (config.precision,)
    for precision in precisions:
        ours(precision, on=warm)
    naive_ttd(model, case, slices[:1], 2, device, config.seed)

    runs = {precision: _timed(lambda p=precision: ours(p), device) for precision in precisions}
    reference, ours_s = runs[precisions[0]]
    naive, naive_s = _timed(lambda: naive_ttd(model, case, slices, config.passes, device, config.seed), device)
    brain = subset.brain_mask
    images = len(slices) * config.passes
    flops = images * forward_flops(model, case, device)
    results = [Measurement(
        "TTD", f"batched ({slices_per_batch} slices × {passes_per_forward} passes per forward, "
               f"{precisions[0]})", "naive loop (1 slice, 1 pass per forward)", ours_s, naive_s, work,
        {"images": images, "tflop": flops / 1e12, "achieved_tflop_per_s": flops / ours_s / 1e12,
         "ours_vs_naive_pearson_variance": brain_pearson(reference.variance, naive, brain)})]
    if len(precisions) == 2:
        bf16, bf16_s = runs["bfloat16"]
        results.append(Measurement(
            "TTD bfloat16", "batched, bfloat16 autocast", "batched, float32", bf16_s, ours_s, work,
            {"achieved_tflop_per_s": flops / bf16_s / 1e12, "naive_over_bfloat16": naive_s / bf16_s,
             "pearson_variance_vs_float32": brain_pearson(bf16.variance, reference.variance, brain),
             "label_agreement_vs_float32": float((bf16.labels[brain] == reference.labels[brain]).mean())}))
    quick, quick_s = _timed(lambda: ours(precisions[0], quick=True), device)
    results.append(Measurement(
        "TTD quick", f"quick ({QUICK.min_passes}–{QUICK.max_passes} passes, stops at r ≥ {QUICK.settle_r})",
        f"T={config.passes}", quick_s, ours_s, work,
        {"mean_passes": float(quick.passes[slices].mean()),
         **{f"pearson_{name}": brain_pearson(quick_map, reference.maps()[name], brain)
            for name, quick_map in quick.maps().items()}}))
    return results


def forward_flops(model: SegmentationNet, case: Case, device: torch.device) -> int:
    """Floating-point operations of one forward pass of one slice (a multiply-add counts 2), as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.zeros((1,) + case.images.shape[:1] + case.images.shape[2:], device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return counter.get_total_flops()


def _grid_text(case: Case) -> str:
    return "×".join(str(s) for s in case.brain_mask.shape[::-1])


# -- 2. Grad-CAM -----------------------------------------------------------------------------------------------

def captum_gradcam(model: SegmentationNet, images: torch.Tensor, layers: Sequence[str], classes: Sequence[int]
                   ) -> dict[str, torch.Tensor]:
    """Captum's LayerGradCam per (layer, class) on the same target (mean softmax of the class, eq. 3), with the
    ReLU, brought onto the slice by the same upsampling as ours: layer → ``(N, len(classes), H, W)``."""
    from captum.attr import LayerGradCam


    modules = model.analysable_layers()
    height, width = images.shape[-2:]

    def pooled_softmax(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1).mean(dim=(2, 3))

    out = {}
    with evaluating(model):
        for name in layers:
            explainer = LayerGradCam(pooled_softmax, modules[name])
            maps = [explainer.attribute(images, target=c, relu_attributions=True).detach() for c in classes]
            out[name] = upsample_to_input(torch.cat(maps, dim=1), model, height, width)
    return out


def bench_gradcam(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device) -> list[Measurement]:
    layers = resolve_layers(model, "all")
    classes = list(range(4))
    slices = evenly_spaced_brain_slices(case, config.gradcam_slices)
    _, images = next(slice_batches(case, slices, len(slices), device))
    work = f"{len(layers)} layers × {len(classes)} classes on a batch of {len(slices)} slices"
    gradcam_maps(model, images, layers, classes)  # warm-up, same shapes as timed
    ours, ours_s = _timed(lambda: gradcam_maps(model, images, layers, classes), device)
    try:
        import captum
    except ImportError:
        return [Measurement("Grad-CAM", "all layers and classes, one forward", "Captum LayerGradCam per (layer, class)",
                            ours_s, None, work, {"skipped": "Captum is not installed: pip install captum "
                                                            "(the [bench] extra)"})]
    captum_gradcam(model, images, layers[:1], classes[:1])
    theirs, theirs_s = _timed(lambda: captum_gradcam(model, images, layers, classes), device)
    differences = {name: _relative_difference(ours[name], theirs[name]) for name in layers}
    return [Measurement("Grad-CAM", "all layers and classes, one forward", "Captum LayerGradCam per (layer, class)",
                        ours_s, theirs_s, work,
                        {"captum": captum.__version__, "max_relative_difference": max(differences.values()),
                         "relative_difference_by_layer": differences,
                         "definition": "max |ours − Captum| / max |Captum| per (layer, class) map"})]


def _relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest difference over the maps of one layer, each relative to its Captum map's peak (0 for both zero)."""
    worst = 0.0
    for c in range(ours.shape[1]):
        a, b = ours[:, c].double(), theirs[:, c].double()
        peak = float(b.abs().max())
        difference = float((a - b).abs().max())
        worst = max(worst, difference / peak if peak > 0 else difference)
    return worst


# -- 3. dissection memory ----------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Linux: VmHWM, which starts afresh at exec (``ru_maxrss`` keeps
    the parent's peak across fork and exec, so a spawned child would report the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # Unix only: imported here, so that the CLI, which reads BenchConfig, starts on Windows too

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def dissection_cases(config: BenchConfig, count: int) -> list[Path]:
    """``count`` case sources, cycling through the dissection cases (default: the bench case, repeated)."""
    sources = list(config.dissection_cases or (config.case,))
    return [sources[i % len(sources)] for i in range(count)]


def _dissection_child(config: BenchConfig, count: int, queue) -> None:
    """In a fresh process: dissect ``count`` volumes; report peak RSS (before and after) and the time."""
    model = load_bench_model(config)
    device = torch.device(config.device)
    cases = dissection_cases(config, count)
    baseline_mb = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result, seconds = _timed(lambda: dissect(model, cases, "all", slice_step=config.dissection_step, device=device,
                                             controls=False),  # the streamed statistics of one network
                             device)
    queue.put({"volumes": count, "seconds": seconds, "baseline_rss_mb": baseline_mb, "peak_rss_mb": peak_rss_mb(),
               "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
               "thresholds": {name: layer.thresholds.tolist() for name, layer in result.layers.items()},
               "threshold_error_bound": {name: layer.threshold_error.tolist() for name, layer in result.layers.items()}})


def exact_thresholds(model: SegmentationNet, cases: Sequence[Case | str | Path], quantile: float, slice_step: int,
                     device: torch.device) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: the exact ``quantile`` of each filter over every dissection value of ``cases`` (all held in
    memory — a small set only), and each filter's value range."""
    layers = resolve_layers(model, "all")
    values: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    model.eval()
    for source in cases:
        case = as_case(source)
        with torch.no_grad():
            for batch in dissection_values(model, case, layers, slice_step, device=device):
                for name, tensor in batch.items():
                    values[name].append(tensor.float().cpu().numpy())
    out = {}
    for name, parts in values.items():
        stacked = np.concatenate(parts, axis=1)
        parts.clear()
        exact = np.quantile(stacked.astype(np.float64), quantile, axis=1)  # torch.quantile's convention (linear)
        out[name] = (exact, stacked.max(axis=1) - stacked.min(axis=1))
    return out


def bench_dissection(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device
                     ) -> list[Measurement]:

    context = multiprocessing.get_context("spawn")
    runs = []
    for count in config.dissection_volumes:
        queue = context.Queue()
        process = context.Process(target=_dissection_child, args=(config, count, queue))
        process.start()
        runs.append(queue.get())
        process.join()
        if process.exitcode:
            raise RuntimeError(f"dissection benchmark child for {count} volumes failed (exit {process.exitcode})")
    smallest = runs[0]
    exact = exact_thresholds(model, dissection_cases(config, smallest["volumes"]), DEFAULT_QUANTILE,
                             config.dissection_step, device)
    errors, relative, within = [], [], True
    for name, (truth, spread) in exact.items():
        streamed = np.asarray(smallest["thresholds"][name])
        bound = np.asarray(smallest["threshold_error_bound"][name])
        error = np.abs(streamed - truth)
        errors.append(float(error.max()))
        relative.append(float((error / np.where(spread > 0, spread, 1)).max()))
        within &= bool(np.all(error <= bound + 1e-6 * np.maximum(spread, 1e-12)))
    peaks = [run["peak_rss_mb"] for run in runs]
    distinct = len(set(map(str, config.dissection_cases or (config.case,))))
    work = (f"{', '.join(str(r['volumes']) for r in runs)} volumes ({distinct} distinct case(s), cycled), slice step "
            f"{config.dissection_step}, all layers")
    rows = [{key: run[key] for key in ("volumes", "seconds", "baseline_rss_mb", "peak_rss_mb", "peak_gpu_mb")}
            for run in runs]
    return [Measurement(  # memory against memory: the times are in the runs, no speed ratio is claimed
        "Dissection memory", f"peak RSS {peaks[-1]:.0f} MB for {runs[-1]['volumes']} volumes",
        f"peak RSS {peaks[0]:.0f} MB for {runs[0]['volumes']} volumes", None, None, work,
        {"runs": rows, "peak_rss_growth": peaks[-1] / peaks[0] - 1,
         "threshold_max_abs_error": max(errors), "threshold_max_error_over_range": max(relative),
         "threshold_within_stated_bound": within})]


# -- 4. segmentation and feature visualisation -----------------------------------------------------------------

def bench_segmentation(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device
                       ) -> list[Measurement]:

    slices = evenly_spaced_brain_slices(case, config.slices)
    subset = restricted_to_slices(case, slices)
    model.eval()
    warm = restricted_to_slices(case, slices[:16])
    predict_probabilities(model, warm, batch_size=16, device=device)
    predict_probabilities(model, warm, batch_size=1, device=device)
    batched, batched_s = _timed(lambda: predict_probabilities(model, subset, batch_size=16, device=device), device)
    single, single_s = _timed(lambda: predict_probabilities(model, subset, batch_size=1, device=device), device)
    return [Measurement("Segmentation", "batches of 16 slices", "one slice per forward", batched_s, single_s,
                        f"{len(slices)} of {len(case.brain_slices())} brain slices, {_grid_text(case)}",
                        {"max_probability_difference": float(np.abs(batched - single).max())})]


def bench_featviz(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device
                  ) -> list[Measurement]:

    layers = resolve_layers(model, "all")
    picks = [layers[i] for i in np.linspace(0, len(layers) - 2, config.featviz_filters).round().astype(int)]
    targets = [(layer, 0) for layer in picks]
    featviz_config = FeatvizConfig(steps=config.featviz_steps, seed=config.seed)
    template = load_template(shipped_template_path(), featviz_config.size)

    def run(chosen):
        return visualise_filters(model, chosen, Regularisers(), featviz_config, template, device=device)

    run(targets)
    run(targets[:1])
    _, batched_s = _timed(lambda: run(targets), device)
    _, single_s = _timed(lambda: [run([target]) for target in targets], device)
    return [Measurement("Feature visualisation", f"{len(targets)} filters in one batch", "one filter at a time",
                        batched_s, single_s,
                        f"{len(targets)} filters ({', '.join(picks)}), {config.featviz_steps} steps, "
                        f"{featviz_config.size}×{featviz_config.size}, all regularisers",
                        {"seconds_per_filter_batched": batched_s / len(targets),
                         "seconds_per_filter_single": single_s / len(targets)})]


# -- 5. Slicer logic -------------------------------------------------------------------------------------------

def bench_slicer(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device
                 ) -> list[Measurement]:
    name, ours = "Slicer push", "push every output of one explain run into a scene (slicer-core)"
    if config.explain_run is None:
        return [Measurement(name, ours, "", None, None, "", {"skipped": "pass --explain-run OUT (an explain folder)"})]

    reason = unavailable()
    if reason:
        return [Measurement(name, ours, "", None, None, "", {"skipped": reason})]
    summary = read_summary(config.explain_run)
    with tempfile.TemporaryDirectory() as scratch:
        timings = Path(scratch) / "timings.json"
        done, total = _timed(lambda: run_bundle(config.explain_run, summary, "--out", str(Path(scratch) / "scene.mrb"),
                                                "--timings", str(timings)), device)
        if done.returncode:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return [Measurement(name, ours, "", None, None, "", {"skipped": f"bundle failed: {reason}"})]
        measured = json.loads(timings.read_text())
    return [Measurement(name, ours, "", measured["push_s"], None, str(config.explain_run),
                        {"save_mrb_s": measured["save_s"], "nodes": measured["nodes"],
                         "process_total_s": total})]


# -- 6. scans off the network's grid ---------------------------------------------------------------------------

def _acquisitions() -> dict:
    return {
        "1.2×0.9×2 mm": Acquisition(spacing_mm=(1.2, 0.9, 2.0)),
        "1.2×0.9×2 mm, edge not re-stripped": Acquisition(spacing_mm=(1.2, 0.9, 2.0), stripped=False),
        "20° in-plane": Acquisition(tilt_degrees=(0.0, 0.0, 20.0)),
        "2 mm": Acquisition(spacing_mm=(2.0, 2.0, 2.0)),
        "0.5×0.5×5 mm": Acquisition(spacing_mm=(0.5, 0.5, 5.0)),
        "20° + flipped + 1.2×0.9×2 mm": Acquisition(spacing_mm=(1.2, 0.9, 2.0), tilt_degrees=(0.0, 0.0, 20.0),
                                                    axes=(1, 0, 2), flips=(False, True, False)),
        "30° + 10° tilt, 0.9×0.9×3 mm": Acquisition(spacing_mm=(0.9, 0.9, 3.0), tilt_degrees=(30.0, 0.0, 10.0)),
    }


def bench_space(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device) -> list[Measurement]:
    if case.files is None or case.labels is None:
        return [Measurement("Off-grid scans", "", "", None, None, "", {"skipped": "needs a case folder with labels"})]

    def dice(labels: np.ndarray, on: Case) -> dict:
        return {region: round(score.values["dice"], 3)
                for region, score in score_segmentation(labels, on.labels, on.spacing, lesion_rule=None).items()}

    measurements = [Measurement("Off-grid scans", "as acquired (axis-aligned 1 mm: the reference)", "", None, None,
                                f"{case.case_id}, {config.model}",
                                {"dice": dice(labels_from_probabilities(model, case_probabilities(model, case,
                                                                                                   device=device)),
                                              case)})]
    with tempfile.TemporaryDirectory() as scratch:
        for name, acquisition in _acquisitions().items():
            acquired = load_case(reacquire(case.files, Path(scratch) / name, acquisition))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # off its grid: the control
                raw, raw_s = _timed(lambda: segment_input(model, acquired, device)[1], device)
            (labels, on_input), ours_s = _timed(
                lambda: segment_input(model, into_network_space(acquired, model), device), device)
            resampled = into_network_space(acquired, model)
            nearest = resampled.grid.to_reference(labels) if resampled.original is not None else labels
            measurements.append(Measurement(
                "Off-grid scans", f"{name}: resampled into the network's space", "as acquired", ours_s, raw_s,
                f"{acquired.grid.canonical_shape} voxels", {
                    "dice_resampled": dice(on_input, acquired), "dice_as_acquired": dice(raw, acquired),
                    "dice_labels_back_by_nearest": dice(nearest, acquired)}))
    return measurements


# -- 7. Grad-CAM of a 3D network ---------------------------------------------------------------------------------

GRADCAM3D_NETWORK = "segresnet3d"  # the shipped 3D network (a MONAI bundle)
GRADCAM3D_SCALES = (1, 2)  # the case tiled along each axis this many times: once and 8 times the volume


def _gradcam3d_child(scale: int, queue) -> None:
    """In a fresh process: Grad-CAM of every layer and region of the shipped 3D network over the sample case in its
    space, tiled ``scale`` times along each axis; the peak RSS and the time."""
    network = load_model(GRADCAM3D_NETWORK)
    case = into_network_space(load_case(SAMPLE_CASE), network)
    def tile(array):
        return None if array is None else np.tile(array, (1,) * (array.ndim - 3) + (scale,) * 3)

    tiled = dataclasses.replace(case, images=tile(case.images), brain_mask=tile(case.brain_mask),
                                nonzero=tile(case.nonzero), labels=None, tissue=None)
    baseline = peak_rss_mb()
    cams, seconds = _timed(lambda: gradcam_volume(network, tiled, "all"), torch.device("cpu"))
    queue.put({"scale": scale, "voxels": int(tiled.brain_mask.size), "maps": len(cams.maps), "seconds": seconds,
               "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(),
               "maps_mb": sum(m.nbytes for m in cams.maps.values()) / 2**20})


def _gradcam3d_memory() -> Measurement:
    """Peak memory of every map over the sample case in the 3D network's space, and over it tiled 8 times, each in
    a fresh process."""
    context = multiprocessing.get_context("spawn")
    runs = []
    for scale in GRADCAM3D_SCALES:
        queue = context.Queue()
        process = context.Process(target=_gradcam3d_child, args=(scale, queue))
        process.start()
        runs.append(queue.get())
        process.join()
    working = [run["peak_rss_mb"] - run["maps_mb"] for run in runs]  # what the windows take beside the outputs
    return Measurement(
        "Grad-CAM 3D memory", f"peak RSS {runs[-1]['peak_rss_mb']:.0f} MB for {runs[-1]['voxels']} voxels",
        f"peak RSS {runs[0]['peak_rss_mb']:.0f} MB for {runs[0]['voxels']} voxels", runs[-1]["seconds"],
        runs[0]["seconds"], f"the sample case in {GRADCAM3D_NETWORK}'s space tiled 1 and 8 times, all layers and "
        "regions", {"volume_runs": runs, "peak_minus_maps_mb": working,
                    "note": "the maps grow with the volume, and so does MONAI's stitching buffer (one float32 "
                            "volume per map); a window's activations and gradients do not"})


def bench_gradcam3d(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device
                    ) -> list[Measurement]:
    """On one window: all layers × regions from one forward and one backward per region, against MONAI's GradCAM
    called per (layer, region); then peak memory of the whole-volume maps against the volume's size."""
    network = load_model(GRADCAM3D_NETWORK, device=device)
    module, description = network.module, network.description
    layers = list(description.layers.values())
    targets = list(range(len(description.output_names)))
    torch.manual_seed(config.seed)
    window = torch.randn((1, len(description.channels)) + tuple(description.window), device=device)
    work = f"{len(layers)} layers × {len(targets)} regions on one {'×'.join(map(str, description.window))} window"

    def our_maps(described, x: torch.Tensor) -> torch.Tensor:  # (layers × regions, *window), layer-major
        maps = gradcam_maps(described, x, layers, target="logits")
        return torch.cat([maps[layer][0] for layer in layers])

    our_maps(network, window)  # warm-up
    ours, ours_s = _timed(lambda: our_maps(network, window), device)
    try:
        import monai
        from monai.visualize import GradCAM
    except ImportError:
        return [Measurement("Grad-CAM 3D", "all layers and regions, one forward", "MONAI GradCAM per (layer, region)",
                            ours_s, None, work, {"skipped": "MONAI is not installed"})]

    def monai_maps() -> list[torch.Tensor]:
        maps = []
        for layer in layers:
            cam = GradCAM(nn_module=module, target_layers=layer, postprocessing=lambda x: x)
            maps += [cam(window, class_idx=target)[0, 0] for target in targets]
        return maps

    theirs, theirs_s = _timed(monai_maps, device)
    voxels = window[0, 0].numel()  # MONAI pools the logits by their sum, eq. 3 by their mean
    ours = ours * voxels
    # Both are float32; the same maps in float64 say how far each is from exact. Maps whose exact peak is ~0 (the
    # ReLU of a sum that cancels) are noise in both and left out of the relative figures.
    exact = our_maps(dataclasses.replace(network, module=copy.deepcopy(module).double()), window.double()) * voxels
    largest = float(exact.abs().max())
    kept = [i for i in range(len(theirs)) if float(exact[i].abs().max()) > 1e-6 * largest]

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double() - b.double()).abs().max() / b.double().abs().max())

    measurements = [Measurement("Grad-CAM 3D", "all layers and regions, one forward", "MONAI GradCAM per (layer, "
                                "region)", ours_s, theirs_s, work,
                                {"monai": monai.__version__,
                                 "max_relative_difference": max(relative(ours[i], theirs[i]) for i in kept),
                                 "ours_vs_float64": max(relative(ours[i], exact[i]) for i in kept),
                                 "monai_vs_float64": max(relative(theirs[i], exact[i]) for i in kept),
                                 "maps_compared": len(kept), "maps_near_zero": len(theirs) - len(kept),
                                 "definition": "max |a − b| / max |b| per (layer, region) map, over maps whose "
                                               "float64 peak is above 1e-6 of the largest"})]
    return measurements + [_gradcam3d_memory()]


# -- 8. Co-registration of separately acquired sequences ---------------------------------------------------------

MOTIONS = ((2.0, 2.0), (5.0, 5.0))  # head motion between series (mm, degrees): the ends of a clinical range


def bench_coregistration(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device
                         ) -> list[Measurement]:


    if case.files is None or case.labels is None:
        return [Measurement("Co-registration", "", "", None, None, "", {"skipped": "needs a case folder with labels"})]

    def dice(on: Case) -> dict:
        labels = segment_input(model, into_network_space(on, model), device)[1]
        return {region: round(score.values["dice"], 3)
                for region, score in score_segmentation(labels, on.labels, on.spacing, lesion_rule=None).items()}

    tumour = case.grid.physical_points(case.labels > 0)
    measurements = []
    with tempfile.TemporaryDirectory() as scratch:
        for mm, degrees in MOTIONS:
            acquisition = Acquisition(motion_mm=mm, motion_degrees=degrees, seed=config.seed)
            files = reacquire(case.files, Path(scratch) / f"{mm}mm", acquisition)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the sequences' grids differ: resampled onto the FLAIR's, the control
                plain, plain_s = _timed(lambda: load_case(files), device)
            registered, ours_s = _timed(lambda: load_case(files, coregister=True), device)
            error, moved = {}, {}
            for sequence, motion in acquisition.motions(case.grid).items():
                found = registered.registrations[sequence].transform()
                truth = np.array([motion.TransformPoint(tuple(p)) for p in tumour])
                error[sequence] = round(float(np.linalg.norm(
                    np.array([found.TransformPoint(tuple(p)) for p in tumour]) - truth, axis=1).max()), 2)
                moved[sequence] = round(float(np.linalg.norm(truth - tumour, axis=1).max()), 2)
            measurements.append(Measurement(
                "Co-registration", f"{mm:g} mm, {degrees:g}° head motion: T1, T1ce, T2 co-registered to the FLAIR",
                "at the scanner's world coordinates", ours_s, plain_s, f"{case.case_id}, {config.model}", {
                    "max_error_at_tumour_mm": error, "motion_at_tumour_mm": moved,
                    "applied": {s: r.applied for s, r in registered.registrations.items()},
                    "dice_coregistered": dice(registered), "dice_as_acquired": dice(plain),
                    "dice_unmoved": dice(case)}))
    return measurements


# -- 9. clinical scans: BraTS-style preprocessing ----------------------------------------------------------------

def _clinical_scans() -> dict:
    """Clinical-mode reacquisitions of the case: the head turned in the scanner, its skull left on, the series
    moved between acquisitions, thick slices and oblique or flipped grids (data.acquisition) — the stripped,
    single-grid oblique case of the issue that opened this work, and controls: each slice thickness alone, stripped
    and upright on one grid (what no preprocessing can win back: the slices' own loss)."""
    return {
        "skull on (1 mm, upright, no motion)": Acquisition(skull=True, seed=1),
        "10° head, 1×1×3 mm, 2 mm/2° motion, skull on": Acquisition(
            spacing_mm=(1.0, 1.0, 3.0), head_tilt_degrees=(10.0, 0.0, 0.0), motion_mm=2.0, motion_degrees=2.0,
            skull=True, seed=1),
        "20° head, 15° oblique flipped grid, 0.9×0.9×5 mm, 3 mm/3°, skull on": Acquisition(
            spacing_mm=(0.9, 0.9, 5.0), tilt_degrees=(0.0, 0.0, 15.0), flips=(False, True, False),
            head_tilt_degrees=(15.0, 0.0, 13.0), motion_mm=3.0, motion_degrees=3.0, skull=True, seed=1),
        "30° head, 0.5×0.5×6 mm, 5 mm/5°, skull on": Acquisition(
            spacing_mm=(0.5, 0.5, 6.0), head_tilt_degrees=(-30.0, 0.0, 0.0), motion_mm=5.0, motion_degrees=5.0,
            skull=True, seed=1),
        "stripped, one grid: 20° oblique + flipped + 1.2×0.9×2 mm": Acquisition(
            spacing_mm=(1.2, 0.9, 2.0), tilt_degrees=(0.0, 0.0, 20.0), axes=(1, 0, 2), flips=(False, True, False)),
        **{f"control: stripped, one grid, upright, {label}": Acquisition(spacing_mm=spacing)
           for label, spacing in (("1×1×3 mm", (1.0, 1.0, 3.0)), ("0.9×0.9×5 mm", (0.9, 0.9, 5.0)),
                                  ("0.5×0.5×6 mm", (0.5, 0.5, 6.0)))},
    }


CLINICAL_NETWORKS = ("denseunet", "resunet", "simunet")  # the shipped networks, all trained in one space


def bench_clinical(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device
                   ) -> list[Measurement]:


    if case.files is None or case.labels is None:
        return [Measurement("Clinical scans", "", "", None, None, "", {"skipped": "needs a case folder with labels"})]
    networks = {name: load_pretrained(name, device=device) for name in CLINICAL_NETWORKS}

    def dice(on_input: Case, truth: Case, resample: bool = True) -> dict:
        scores = {}
        for name, network in networks.items():
            seen = into_network_space(on_input, network) if resample else on_input
            labels = segment_input(network, seen, device)[1]
            scored = score_segmentation(labels, truth.labels, truth.spacing, lesion_rule=None)
            scores[name] = {region: round(score.values["dice"], 3) for region, score in scored.items()}
        return scores

    upright = align_to_atlas(case.grid.to_image(raw_sequences(case)[1]))  # the pose the turned heads are measured from
    measurements = [Measurement("Clinical scans", "the case as shipped (1 mm, axis-aligned, stripped): the goal", "",
                                None, None, case.case_id, {"dice": dice(case, case, resample=False)})]
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, acquisition) in enumerate(_clinical_scans().items()):
            files = reacquire(case.files, Path(scratch) / str(index), acquisition)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the controls: off the networks' grid, the sequences' grids differ
                truth = load_case(files)
                prepared, steps = preprocess(files, training_spacing(model))
                details = {"dice_preprocessed": dice(prepared, truth),
                           "dice_without_the_atlas_pose": dice(dataclasses.replace(prepared, alignment=None), truth),
                           "dice_resampled_only": dice(truth, truth),
                           "dice_as_acquired": dice(truth, truth, resample=False),
                           "steps": steps.lines(), "seconds": steps.to_dict()["seconds"]}
            tumour = truth.grid.physical_points(truth.labels > 0)[::7]
            errors = {}
            for sequence, motion in acquisition.motions(case.grid).items():
                found = prepared.registrations[sequence].transform()
                errors[sequence] = round(float(max(np.linalg.norm(
                    np.subtract(found.TransformPoint(tuple(p)), motion.TransformPoint(tuple(p)))) for p in tumour)), 2)
            details["coregistration_error_at_tumour_mm"] = errors
            pose = acquisition.pose(case.grid)
            if steps.alignment is not None:
                turn = np.eye(3) if pose is None else np.asarray(pose.GetMatrix()).reshape(3, 3)
                expected = turn @ np.asarray(upright.rotation).reshape(3, 3)
                found = np.asarray(steps.alignment.rotation).reshape(3, 3)
                details["atlas_pose_error_degrees"] = round(rotation_angle_degrees(expected.T @ found), 2)
            measurements.append(Measurement("Clinical scans", name, "", sum(steps.seconds.values()), None,
                                            f"{truth.grid.canonical_shape} voxels", details))
    return measurements


# -- 10. nnU-Net: our inference against nnUNetPredictor on the same folder --------------------------------------

NNUNET_NETWORK = {"features": (8, 16, 32, 64), "patch": (64, 64, 64), "folds": (0, 1)}  # stride 8, as CPUs allow


def _nnunet_predictor(folder: Path, files: list[str], out: Path, device: torch.device) -> Callable[[], np.ndarray]:
    """nnU-Net's own predictor on ``folder``'s folds, from the case's files (in the network's channel order) to its
    labels (nnU-Net's label values, the files' array order)."""
    import SimpleITK as sitk
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=device,
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=NNUNET_NETWORK["folds"])
    out.mkdir()

    def labels() -> np.ndarray:
        predictor.predict_from_files_sequential([files], str(out), save_probabilities=False, overwrite=True)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(next(out.glob("*.nii.gz")))))
    return labels


def bench_nnunet(model: SegmentationNet, case: Case, config: BenchConfig, device: torch.device
                 ) -> list[Measurement]:
    """A PlainConvUNet nnU-Net folder (random weights, :data:`NNUNET_NETWORK`, written by nnU-Net's own trainer) on
    the bench case at its own voxel size: seconds per case of nnU-Net's predictor (two folds, mirroring) against
    ours, their agreement, then the cost of Grad-CAM of every stage and region on top (one fold)."""
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401 (the peer: a test extra)
    except ImportError:
        return [Measurement("nnU-Net", "ours", "nnUNetPredictor", None, None, "", {"skipped": "nnunetv2 missing"})]

    files = find_case_files(config.case)
    spacing = float(load_case(files).spacing[0])
    with tempfile.TemporaryDirectory() as temporary:
        folder = write_model_folder(Path(temporary), "PlainConvUNet", True, "3d_fullres", NNUNET_NETWORK["folds"],
                                    spacing, NNUNET_NETWORK["patch"], seed=config.seed,
                                    features=NNUNET_NETWORK["features"])
        network = load_model(str(folder), device=device)
        prepared, _ = prepare_case(files, network)
        theirs = _nnunet_predictor(folder, [str(files.modality_paths()[m]) for m in network.description.channels],
                                   Path(temporary) / "theirs", device)

        def ours() -> np.ndarray:  # read, normalised, segmented: what nnU-Net's predictor does from the files
            case, _ = prepare_case(files, network)
            return labels_from_probabilities(network, case_probabilities(network, case, device=device))

        theirs(), ours()  # warm-up
        their_labels, theirs_s = _timed(theirs, device)
        our_labels, ours_s = _timed(ours, device)
        agreement = float((our_labels == NNUNET_TO_CLASS[their_labels]).mean())
        brain = np.argwhere(to_network_space(prepared.brain_mask, network.description.axes))
        box = [max(int(n), w) for n, w in zip(brain.max(0) - brain.min(0) + 1, network.description.window)]
        windows = int(np.prod([len(s) for s in NnUNetSlidingWindow(network.description.window).steps(box)]))
        work = (f"{prepared.grid.canonical_shape} voxels, {windows} windows × 8 mirrorings × "
                f"{len(NNUNET_NETWORK['folds'])} folds, PlainConvUNet {NNUNET_NETWORK['features']}")
        one_fold = dataclasses.replace(network, members=[])
        _, gradcam_s = _timed(lambda: gradcam_volume(one_fold, prepared, device=device), device)
        _, segment_s = _timed(lambda: case_probabilities(one_fold, prepared, device=device), device)
    stages = len(network.description.layers)
    return [Measurement("nnU-Net inference", "ours (float32 sums)", "nnUNetPredictor", ours_s, theirs_s, work,
                        {"label_agreement": round(agreement, 6)}),
            Measurement("nnU-Net Grad-CAM", f"Grad-CAM, {stages} stages × 3 regions, one fold", "one fold's "
                        "segmentation (8 mirrorings)", gradcam_s, segment_s, work.split(" windows")[0] + " windows",
                        {"note": "ratio = segmentation seconds / Grad-CAM seconds: below 1, Grad-CAM costs more "
                                 "than one fold's mirrored inference"})]


RUNNERS = {"ttd": bench_ttd, "gradcam": bench_gradcam, "dissection": bench_dissection,
           "segmentation": bench_segmentation, "featviz": bench_featviz, "slicer": bench_slicer, "space": bench_space,
           "gradcam3d": bench_gradcam3d, "coregistration": bench_coregistration, "clinical": bench_clinical,
           "nnunet": bench_nnunet}


def run_benchmarks(config: BenchConfig, only: Sequence[str] = BENCHMARKS,
                   report: Callable[[Measurement], None] | None = None) -> dict:
    """Run the chosen benchmarks; returns ``{"environment", "config", "measurements"}`` (JSON-ready)."""
    unknown = [name for name in only if name not in RUNNERS]
    if unknown:
        raise UsageError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device")
    model = load_bench_model(config)
    case = load_case(config.case)
    measurements = []
    for name in only:
        for measurement in RUNNERS[name](model, case, config, device):
            measurements.append(measurement)
            if report:
                report(measurement)
    return {"environment": environment(device),
            "config": {key: str(value) if isinstance(value, Path) else value
                       for key, value in dataclasses.asdict(config).items()},
            "measurements": [{**dataclasses.asdict(m), "ratio": m.ratio} for m in measurements]}


def describe(measurement: Measurement) -> str:
    """One line for the terminal."""
    def seconds(value: float | None) -> str:
        return f"{value:.2f} s" if value is not None else "—"

    text = f"{measurement.name}: {measurement.ours} {seconds(measurement.ours_s)}"
    if measurement.baseline:
        text += f" vs {measurement.baseline} {seconds(measurement.baseline_s)}"
    if measurement.ratio:
        text += f" → {measurement.ratio:.1f}×"
    if "skipped" in measurement.details:
        text += f" (skipped: {measurement.details['skipped']})"
    return text + (f" [{measurement.work}]" if measurement.work else "")


def markdown(results: dict) -> str:
    """A BENCHMARKS.md section: the device, the command, the versions and one row per measurement."""
    env = results["environment"]
    lines = [f"### {env['device']} — {env['date']}", "", f"`{env['command']}`", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) +
             f"; CPU: {env['cpu']} ({env['cpu_count']} cores, torch threads {env['torch_threads']}).", "",
             "| benchmark | ours | s | baseline | s | ratio | work | checks |", "|---|---|---:|---|---:|---:|---|---|"]
    for m in results["measurements"]:
        def cell(value):
            return f"{value:.2f}" if isinstance(value, float) else "—"

        ratio = f"{m['ratio']:.1f}×" if m["ratio"] else "—"
        checks = "; ".join(_check_text(k, v) for k, v in m["details"].items()
                           if k not in ("relative_difference_by_layer", "definition"))
        lines.append(f"| {m['name']} | {m['ours']} | {cell(m['ours_s'])} | {m['baseline'] or '—'} | "
                     f"{cell(m['baseline_s'])} | {ratio} | {m['work']} | {checks} |")
    return "\n".join(lines) + "\n"


def _check_text(key: str, value) -> str:
    if key == "runs":
        return "runs: " + ", ".join(
            f"{r['volumes']} vol {r['seconds']:.0f} s peak RSS {r['peak_rss_mb']:.0f} MB"
            + (f" GPU {r['peak_gpu_mb']:.0f} MB" if r.get("peak_gpu_mb") else "") for r in value)
    if key == "volume_runs":
        return "runs: " + ", ".join(f"{r['voxels']} voxels {r['seconds']:.0f} s peak RSS {r['peak_rss_mb']:.0f} MB "
                                    f"(maps {r['maps_mb']:.0f} MB)" for r in value)
    if isinstance(value, float):
        return f"{key} {value:.3g}"
    return f"{key} {value}"
