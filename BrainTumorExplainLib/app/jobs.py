"""The command line's jobs: one function per verb, taking that verb's settings (:mod:`app.verbs`, and the config of
the analysis it runs) and returning its exit status.

Each checks its options, inputs and outputs before any work, writes through :mod:`outputs` (a private name,
verified, then renamed onto the destination; inputs never written over), says what it did on stdout and raises
:class:`errors.InputError` for what cannot be done (the command line prints it as one ``error:`` line, exit 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..analyses.ablation import filter_ablation
from ..analyses.featviz import (
    VOLUME_SIZE,
    FeatvizConfig,
    Regularisers,
    check_targets,
    load_template,
    shipped_template_path,
    spatial_dims,
)
from ..data.case import (
    MODALITIES,
    SAMPLE_CASE,
    CaseError,
    CaseFiles,
    find_case_files,
    find_cases,
    load_case,
    read_label_file,
)
from ..data.phantom import PhantomConfig, make_phantom, phantom_case_id, write_phantom_files
from ..data.preprocess import preprocess as preprocess_case
from ..data.resample import raw_sequences
from ..errors import UsageError
from ..models import build_model, load_model
from ..models.interface import analysed
from ..models.registry import load_ensemble
from ..models.space import prepare_case
from ..models.volume import fold_members
from ..outputs import OutputFile, OutputFolder
from ..progress import progress_bar
from ..ranks import joined
from ..scoring.evaluation import evaluate_model, evaluation_as_dict, format_table
from ..scoring.lesions import CHALLENGES
from ..scoring.metrics import format_scores, score_segmentation, scores_as_dict
from ..testbed.bench import BENCHMARKS, describe, markdown, run_benchmarks
from ..version import __version__
from . import stages
from .bundle_training import train_bundle as train_bundle_folder
from .cohort import dataset_cases, explain_cohort, refuse_overwrite, segment_cohort, summary_lines
from .contract import PREPROCESSING, SEGMENTATION, SUMMARY
from .explain import check_choices
from .explain import explain as explain_case
from .explain import preprocessing_summary, write_preprocessing
from .figures import case_montage, montage_slices
from .report import headline_lines, preparation_lines, preprocessing_lines
from .settings import DissectConfig, ExplainConfig, check_number, resolve_device, resolve_quick, split_files
from .training import train as train_network
from .verbs import (
    AblateOptions,
    CasePreparation,
    DemoOptions,
    DissectOptions,
    EvaluateOptions,
    ExplainInputs,
    FeatvizOptions,
    GradcamOptions,
    LesionRule,
    ModelChoice,
    MontageOptions,
    PhantomOptions,
    Preprocessing,
    PreprocessOptions,
    ScoreOptions,
    SegmentOptions,
    TemplateOptions,
    TrainBundleOptions,
    TrainOptions,
    UncertaintyOptions,
)

ATLAS_SPACING_MM = (1.0, 1.0, 1.0)  # preprocess decides the pose for the atlas's (and the shipped networks') 1 mm


def phantom(options: PhantomOptions) -> int:
    config = PhantomConfig(spacing_mm=options.spacing)
    seeds = range(options.seed, options.seed + options.cases)
    folders = [OutputFolder(options.out / phantom_case_id(seed), (), options.overwrite, "phantom") for seed in seeds]
    for seed, folder in zip(progress_bar(seeds, "phantoms", unit="case"), folders):
        with folder as work:
            files = write_phantom_files(make_phantom(seed, config), work)
            if options.montage:
                case_montage(load_case(work), work / f"{files.case_id}_montage.png")
    print(f"wrote {options.cases} case(s) to {options.out}")
    return 0


def montage(options: MontageOptions) -> int:
    if options.out.suffix.lower() != ".png":
        raise UsageError(f"--out {options.out}: a montage is written as .png")
    target = OutputFile(options.out, [options.case], options.overwrite)
    case = load_case(options.case)
    with target.writing() as written:
        case_montage(case, written)
    print(f"wrote {options.out}")
    return 0


def _json_output(path: Path | None, inputs, overwrite: bool) -> OutputFile | None:
    if path is None:
        return None
    if path.suffix.lower() != ".json":
        raise UsageError(f"--json {path}: give a .json file name")
    return OutputFile(path, inputs, overwrite)


def _write_json(target: OutputFile | None, data) -> None:
    if target is not None:
        with target.writing() as written:
            written.write_text(json.dumps(data, indent=2) + "\n")


def _lesion_rule(options: LesionRule):
    rule = CHALLENGES[options.challenge]
    if options.dilation is not None:
        rule = dataclasses.replace(rule, dilation=options.dilation)
    if options.min_lesion_mm3 is not None:
        rule = dataclasses.replace(rule, min_volume_mm3=options.min_lesion_mm3)
    return rule


def score(options: ScoreOptions) -> int:
    target = _json_output(options.json, [options.pred, options.gt], options.overwrite)
    prediction, grid = read_label_file(options.pred, options.labels, "prediction")
    truth, truth_grid = read_label_file(options.gt, options.labels, "ground truth")
    if not grid.matches(truth_grid):
        raise CaseError(f"{options.gt}: grid ({truth_grid.describe()}) differs from {options.pred} ({grid.describe()})")
    scores = score_segmentation(prediction, truth, grid.canonical_spacing, _lesion_rule(options))
    print(format_scores(scores))
    _write_json(target, scores_as_dict(scores))
    return 0


def demo(options: DemoOptions) -> int:
    config = ExplainConfig(model=options.model, device=options.device, overwrite=True)
    source = SAMPLE_CASE
    if options.seed is not None:

        cases = options.out.with_name(options.out.name + "-cases")
        with OutputFolder(cases / phantom_case_id(options.seed), (), True, "phantom") as work:
            write_phantom_files(make_phantom(options.seed), work)
        source = cases / phantom_case_id(options.seed)
    return _explain_and_print(source, options.out, config)


def _explain_and_print(source, out: Path, config: ExplainConfig, progress: str = "text") -> int:
    """Run explain, then its headline numbers for people (on stderr when stdout carries JSON events)."""
    summary = explain_case(source, out, config, progress)
    for line in headline_lines(summary, out):
        print(line, file=sys.stderr if progress == "json" else sys.stdout)
    return 0


def explain(inputs: ExplainInputs, config: ExplainConfig) -> int:
    """One case (a folder or the four files), or a dataset (:func:`app.cohort.explain_cohort`)."""
    files = inputs.modality_files()
    if inputs.case is not None and any(files):
        raise UsageError("give either a case folder or the four files, not both")
    if inputs.case is None:
        if not all(files):
            missing = [m for m, f in zip(MODALITIES, files) if f is None]
            raise UsageError(f"missing modality: give --{' --'.join(missing)} (or a case folder)")
        source = CaseFiles(*files, seg=inputs.seg, case_id=files[0].name.split(".")[0])
        return _explain_and_print(source, inputs.out, config, inputs.progress)
    cases = dataset_cases(inputs.case)
    if cases is None:
        return _explain_and_print(inputs.case, inputs.out, config, inputs.progress)
    if inputs.progress == "json":
        raise UsageError("--progress json: a dataset's run reports its progress as text (a bar over the cases)")
    return _cohort(lambda report: explain_cohort(cases, inputs.out, config, report=report, dataset=inputs.case),
                   inputs.out, "done")


def _cohort(run, out: Path, finished: str) -> int:
    """A cohort run — ``run(report)`` returns its ``cohort.json`` content — then how it went: the cases ``finished``
    (and how many by an earlier run), the mean Dice per region with its interval, where the table and page are;
    every failed case as an ``error:`` line, and exit status 2 when any failed. Under torchrun rank 0 says it for
    every rank, and every rank exits with that status."""
    skipped: list[Path] = []
    statistics = run(lambda case, status, message: skipped.append(case) if status == "skipped" else None)
    if joined().leader:
        print("\n".join(summary_lines(statistics, out, finished, len(skipped))))
        for failed in statistics["failed"]:
            print(f"error: {failed['error']}", file=sys.stderr)
    return 2 if statistics["failed"] else 0


def _mask_file(options: Preprocessing) -> Path | None:
    """A brain mask given as a file is an input too: never written over."""
    return Path(options.brain_mask) if Path(options.brain_mask).is_file() else None


def _model_folder(model: str | None) -> Path | None:
    """A network given as a folder (a bundle) is an input too: nothing is ever written into it."""
    return Path(model) if model and Path(model).is_dir() else None


def _case_for(options: CasePreparation, case: Path, model):
    """``case`` read, preprocessed as the options ask (data.preprocess) and brought into ``model``'s space (unless
    ``--no-resample``; see models.space); each step printed."""

    prepared, steps = prepare_case(case, model, options.coregister, options.resample, options.atlas,
                                   options.brain_mask)
    lines, warnings = preparation_lines(prepared, steps, model)
    for line in lines:
        print(line)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return prepared


def _load_model(options: ModelChoice, name: str | None = None):
    """The network the options name, on the device they name (checked: a CUDA device PyTorch lacks is refused)."""
    return load_model(name or options.model, options.weights, resolve_device(options.device), options.trust_bundle,
                      options.folds)


def train(options: TrainOptions, config) -> int:
    if options.out.suffix != ".pt":
        raise UsageError(f"--out {options.out}: weights are written as a .pt file")
    OutputFile(options.out, [options.data], options.overwrite)  # checked now; train() writes it when complete
    build_model(options.model, width=config.width)  # unknown names fail here, before any data is read
    config = dataclasses.replace(config, device=str(resolve_device(options.device)))
    ranks = joined()  # under torchrun: data-parallel, rank 0 writes
    history = train_network(options.data, options.out, config, resume=not options.no_resume,
                            acquisition_cache=options.acquisition_cache, ranks=ranks)
    if ranks.leader:
        print(f"wrote {options.out} after {len(history)} epochs")
    return 0


def train_bundle(options: TrainBundleOptions, config) -> int:
    config = dataclasses.replace(config, device=str(resolve_device(options.device)))
    ranks = joined()  # under torchrun: data-parallel, rank 0 publishes
    history = train_bundle_folder(options.data, options.out, config, resume=not options.no_resume,
                                  overwrite=options.overwrite, ranks=ranks)
    if ranks.leader:
        print(f"wrote {options.out} after {len(history)} epochs")
    return 0


def evaluate(options: EvaluateOptions) -> int:
    target = _json_output(options.json, [options.data, options.weights], options.overwrite)
    cases = dataset_cases(options.data) or find_cases(options.data)  # a broken case folder is listed, not passed over
    model = _load_model(options)
    failures: dict[str, str] = {}
    ranks = joined()  # under torchrun each rank scores its share; rank 0 prints and writes all of them
    results = evaluate_model(model, cases, progress=True, resample=options.resample,
                             lesion_rule=_lesion_rule(options), failures=failures, ranks=ranks)
    for error in failures.values() if ranks.leader else ():
        print(f"error: {error}", file=sys.stderr)
    if not results:
        raise CaseError(f"{options.data}: none of its {len(cases)} cases could be evaluated")
    if ranks.leader:
        summary = evaluation_as_dict(options.model, results, failures)
        rows = {r.case_id: scores_as_dict(r.scores) for r in results}
        print(format_table({**rows, f"mean ({len(results)})": summary["mean"]}))
        _write_json(target, summary)
    return 2 if failures else 0


def segment(options: SegmentOptions) -> int:
    cases = dataset_cases(options.case)
    if cases is not None:
        return _segment_dataset(options, cases)
    target = OutputFile(options.out, [options.case, options.weights, _model_folder(options.model),
                                      _mask_file(options)], options.overwrite, volume=True)
    model = _load_model(options)
    case = _case_for(options, options.case, model)
    with target.writing() as written:
        stages.segmentation.segment(model, case, written, progress=True)
    print(f"wrote {options.out}")
    return 0


def _segment_dataset(options: SegmentOptions, cases: list[Path]) -> int:
    """segment over a dataset (:func:`app.cohort.segment_cohort`): each case's labels as
    ``OUT/<case-id>/segmentation.nii.gz`` with a ``summary.json`` (its scores with ground truth), resumable."""

    refuse_overwrite(options.overwrite)  # before the network is loaded
    model = _load_model(options)

    def segment_case(case_folder: Path, work: Path) -> None:
        start = time.perf_counter()
        case = prepare_case(case_folder, model, options.coregister, options.resample, options.atlas,
                            options.brain_mask)[0]
        on_input = stages.segmentation.segment(model, case, work / SEGMENTATION)[1]
        as_read = case.as_read
        summary = {"version": __version__, "case": as_read.case_id, "model": options.model}
        if as_read.labels is not None:
            summary["scores"] = scores_as_dict(score_segmentation(on_input, as_read.labels, as_read.spacing))
        summary["seconds"] = {"segmentation": round(time.perf_counter() - start, 2)}
        (work / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")

    settings = [f"--{name.replace('_', '-')}={value}" for name, value in sorted(dataclasses.asdict(options).items())
                if name not in ("case", "out", "overwrite")]
    return _cohort(lambda report: segment_cohort(cases, options.out, settings, segment_case, report=report,
                                                 dataset=options.case), options.out, "segmented")


def preprocess(options: PreprocessOptions) -> int:
    files = find_case_files(options.case)
    with OutputFolder(options.out, [options.case, _mask_file(options)], options.overwrite, "preprocess") as work:
        case, steps = preprocess_case(files, ATLAS_SPACING_MM, options.coregister, options.atlas, options.brain_mask)
        for channel, sequence in enumerate(raw_sequences(case)):
            case.grid.write(sequence, work / Path(getattr(files, MODALITIES[channel])).name)
        if case.labels is not None:
            case.write_labels(case.labels, work / Path(files.seg).name)
        if case.tissue is not None:
            case.grid.write(case.tissue, work / Path(files.tissue).name)
        write_preprocessing(case, steps, work)
        record = {"case": case.case_id, **preprocessing_summary(case, steps, ATLAS_SPACING_MM)}
        (work / PREPROCESSING).write_text(json.dumps(record, indent=2) + "\n")
    for line in preprocessing_lines(record):
        print(line)
    print(f"wrote {options.out}")
    return 0


def gradcam(options: GradcamOptions) -> int:
    models = [m.strip() for m in options.model.split(",") if m.strip()]
    if options.weights is not None and len(models) != 1:
        raise UsageError("--weights goes with exactly one --model")
    folder = OutputFolder(options.out, [options.case, options.weights, _mask_file(options),
                                        *map(_model_folder, models)], options.overwrite, "gradcam")
    loaded = {Path(name).name: _load_model(options, name) for name in models}
    for model in loaded.values():
        analysed(model, "Grad-CAM")  # a TorchScript network has no hooks
        check_choices(model, options.layers, options.classes)
    case = _case_for(options, options.case, next(iter(loaded.values())))  # the shipped networks share one space
    try:
        slices = montage_slices(case, 1) if options.slices == "auto" else [int(z) for z in options.slices.split(",")]
    except ValueError:
        raise UsageError(f"--slices {options.slices}: give 'auto' or comma-separated slice indices") from None
    if min(slices) < 0 or max(slices) >= case.images.shape[1]:
        raise UsageError(f"--slices must lie in 0..{case.images.shape[1] - 1} for {case.case_id}"
                         f"{' in the network space' if case.original is not None else ''}, got {options.slices}")
    with folder as work:
        stages.gradcam.job(loaded, case, options.classes, slices, work, options.out, layers=options.layers,
                           target=options.target, pool=options.pool, batch_size=options.batch_size,
                           volume=not options.no_volume, full_resolution=options.full_resolution,
                           sanity=options.sanity)
    return 0


def dissect(options: DissectOptions, config: DissectConfig) -> int:
    folder = OutputFolder(options.out, [options.data, options.weights, _model_folder(options.model)],
                          options.overwrite, "dissect")
    cases = find_cases(options.data)
    model = _load_model(options)
    analysed(model, "network dissection").layers(config.layers)  # before any work
    ranks = joined()  # under torchrun each rank dissects its share of the cases; rank 0 writes the result
    with folder if ranks.leader else contextlib.nullcontext() as work:
        stages.concepts.dissect_job(model, cases, work, options.out, config, model_name=options.model,
                                    resample=options.resample, ranks=ranks)
    return 0


def uncertainty(options: UncertaintyOptions) -> int:
    files = split_files(options.ensemble)
    folder = OutputFolder(options.out, [options.case, options.weights, _model_folder(options.model),
                                        _mask_file(options), *files], options.overwrite, "uncertainty")
    model = _load_model(options)
    device = resolve_device(options.device)
    members = dict(zip(files, load_ensemble(options.model, files, device, options.trust_bundle))) if files \
        else fold_members(model)
    case = _case_for(options, options.case, model)
    with folder as work:
        stages.uncertainty.job(model, case, work, options.out, model_name=options.model, passes=options.passes,
                               quick=resolve_quick(options.quick, device.type), seed=options.seed, members=members,
                               agreement=options.agreement, full_resolution=options.full_resolution,
                               slices_per_batch=options.slices_per_batch,
                               passes_per_forward=options.passes_per_forward)
    return 0


def template(options: TemplateOptions) -> int:
    if options.out.suffix != ".npz":
        raise UsageError(f"--out {options.out}: a template is written as .npz")
    target = OutputFile(options.out, [options.data, _model_folder(options.model)], options.overwrite)
    folders = find_cases(options.data)
    model = load_model(options.model, trust_code=options.trust_bundle) if options.model else None
    stages.featviz.template_job(folders, target, model, options.size)
    print(f"wrote {options.out}")
    return 0


def featviz(options: FeatvizOptions) -> int:
    targets = filter_targets(options.filters, options.layer)
    folder = OutputFolder(options.out, [options.weights, options.template, _model_folder(options.model)],
                          options.overwrite, "featviz")
    model = _load_model(options)
    volume = spatial_dims(model) == 3
    size = options.size or (VOLUME_SIZE if volume else FeatvizConfig.size)
    config = FeatvizConfig(steps=options.steps, size=size, learning_rate=options.lr, seed=options.seed)
    regularisers = Regularisers(jitter=options.jitter, rotation=options.rotation, tv=options.tv, l2=options.l2,
                                style=options.style, sigma=options.sigma)
    if volume and options.template is None and options.style > 0:
        raise UsageError(f"--model {options.model} is a 3D network: its style template is made from your cases by "
                         f"`template --data DIR --model {options.model} --out T.npz`; pass it with --template "
                         "(or --style 0)")
    template = (load_template(options.template or shipped_template_path(), size, model)
                if options.template or not volume else None)
    check_targets(model, targets, size=size)
    with folder as work:
        stages.featviz.job(model, targets, config, regularisers, template, work, options.out,
                           model_name=options.model, layer=options.layer, sweep=options.sweep)
    return 0


def ablate(options: AblateOptions) -> int:
    targets = filter_targets(options.filters, options.layer)
    folder = OutputFolder(options.out, [options.case, options.weights, _model_folder(options.model),
                                        _mask_file(options)], options.overwrite, "ablate")
    model = _load_model(options)
    case = _case_for(options, options.case, model)
    found = filter_ablation(model, case, targets, together=options.together, device=resolve_device(options.device))
    with folder as work:
        (work / "ablation.json").write_text(json.dumps({"case": case.case_id, "model": options.model, **found},
                                                       indent=1) + "\n")
    for row in found["rows"]:
        named = ", ".join(f"{layer} #{k}" for layer, k in row["filters"])
        change = (", Dice change " + ", ".join(f"{r} {v:+.3f}" for r, v in row["dice_change"].items())
                  if "dice_change" in row else "")
        print(f"{named}: {row['changed_voxels']:.2%} of brain voxels change label{change}")
    print(f"wrote {options.out}")
    return 0


def filter_targets(filters: str, layer: str | None) -> list[tuple[str, int]]:
    """``(layer, filter)`` pairs from ``--filters`` (indices of ``--layer``, or layer:index)."""
    targets = []
    for item in filters.split(","):
        name, _, index = item.strip().rpartition(":")
        if not (name or layer) or not index.strip().isdigit():
            raise UsageError(f"--filters {filters}: give filter indices with --layer, or layer:index pairs")
        targets.append((name or layer, int(index)))
    return targets


def bench(options, config) -> int:
    inputs = [options.case, options.dissection_data, options.explain_run]
    json_target = _json_output(options.json, inputs, options.overwrite)
    markdown_target = OutputFile(options.markdown, inputs, options.overwrite) if options.markdown else None
    resolve_device(config.device)
    config = dataclasses.replace(
        config, case=options.case or SAMPLE_CASE, explain_run=options.explain_run,
        slices_per_batch=options.slices_per_batch, passes_per_forward=options.passes_per_forward,
        dissection_volumes=tuple(check_number(v.strip(), "--dissection-volumes", int, minimum=1)
                                 for v in options.dissection_volumes.split(",")),
        dissection_cases=tuple(find_cases(options.dissection_data)) if options.dissection_data else ())
    only = BENCHMARKS if options.only == "all" else [name.strip() for name in options.only.split(",") if name.strip()]
    results = run_benchmarks(config, only, report=lambda m: print(describe(m), flush=True))
    if json_target is not None:
        _write_json(json_target, results)
        print(f"wrote {options.json}")
    if markdown_target is not None:
        with markdown_target.writing() as written:
            written.write_text(markdown(results))
        print(f"wrote {options.markdown}")
    return 0
