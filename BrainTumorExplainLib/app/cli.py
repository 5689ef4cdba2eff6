"""``python -m BrainTumorExplainLib <verb> ...`` — argument parsing only; every verb calls library functions.

Every verb checks its options, inputs and outputs before any work, writes through :mod:`outputs` (a private name,
verified, then renamed onto the destination; inputs never written over), and fails with one ``error:`` line naming the
file or option (exit 2), or ``error: interrupted`` after cleaning up on SIGINT (exit 130) or SIGTERM (exit 143).
Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..version import __version__
from ..analyses import GRADCAM_POOLS, GRADCAM_TARGET_NAMES, GRADCAM_TARGETS
from ..data.case import CaseError
from ..errors import InputError, Interrupted, UsageError
from ..outputs import DISK_ERRNOS, OutputFile, OutputFolder
from ..progress import progress_bar
from . import stages
from .contract import PREPROCESSING, PROGRESS_FORMATS, SEGMENTATION, SUMMARY
from .report import preprocessing_lines
from .settings import (
    CASE_PREPARATION,
    MODEL_NAMES,
    DissectConfig,
    ExplainConfig,
    add_config_options,
    check_number,
    config_from_arguments,
    help_of,
    number_option,
    resolve_device,
    resolve_quick,
    split_files,
)
from .settings import _device_option as device_option


def _add_overwrite(p: argparse.ArgumentParser, what: str = "OUT") -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} (an earlier result) once the new one "
                                                             "is complete")


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    from ..data.phantom import SPACING_RANGE_MM

    p = sub.add_parser("phantom", help="generate BraTS-like phantom cases on the MNI ICBM152 anatomy",
                       description="Writes OUT/Phantom_<seed>/ case folders (BraTS 2018-2021 naming, labels 0/1/2/4, "
                                   "plus _tissue: 0 bg, 1 CSF, 2 GM, 3 WM). Case i uses seed SEED+i; same seed, same files.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--cases", default=1, help="number of cases (default 1)", **number_option(int, minimum=1))
    p.add_argument("--seed", default=0, help="seed of the first case (default 0)", **number_option(int, minimum=0))
    p.add_argument("--spacing", default=1.0, help="voxel size in mm (default 1.0: BraTS's 240x240x155)",
                   **number_option(float, minimum=SPACING_RANGE_MM[0], maximum=SPACING_RANGE_MM[1]))
    p.add_argument("--montage", action="store_true", help="also write <case>/<id>_montage.png")
    _add_overwrite(p, "an existing case folder of the same seed")
    p.set_defaults(run=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    from ..data.case import load_case
    from ..data.phantom import PhantomConfig, make_phantom, phantom_case_id, write_phantom_files
    from .figures import case_montage

    config = PhantomConfig(spacing_mm=args.spacing)
    seeds = range(args.seed, args.seed + args.cases)
    folders = [OutputFolder(args.out / phantom_case_id(seed), (), args.overwrite, "phantom") for seed in seeds]
    for seed, folder in zip(progress_bar(seeds, "phantoms", unit="case"), folders):
        with folder as work:
            files = write_phantom_files(make_phantom(seed, config), work)
            if args.montage:
                case_montage(load_case(work), work / f"{files.case_id}_montage.png")
    print(f"wrote {args.cases} case(s) to {args.out}")
    return 0


def _add_montage(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("montage", help="PNG montage of a case (4 sequences, labels, tissue)")
    p.add_argument("case", type=Path, help="BraTS case folder")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    _add_overwrite(p)
    p.set_defaults(run=_run_montage)


def _run_montage(args: argparse.Namespace) -> int:
    from ..data.case import load_case
    from .figures import case_montage

    target = _png_output(args.out, [args.case], args.overwrite)
    case = load_case(args.case)
    with target.writing() as written:
        case_montage(case, written)
    print(f"wrote {args.out}")
    return 0


def _png_output(path: Path, inputs, overwrite: bool) -> OutputFile:
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {path}: a montage is written as .png")
    return OutputFile(path, inputs, overwrite)


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


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="Dice and HD95 (mm) of a segmentation against ground truth, for WT, TC, ET, "
                                     "legacy and lesion-wise (BraTS 2023)")
    p.add_argument("--pred", required=True, type=Path, help="predicted label file")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth label file (same grid)")
    p.add_argument("--labels", default="brats2021", choices=["brats2021", "brats2023"],
                   help="label convention of both files (default brats2021: ET=4)")
    _add_lesion_rule(p)
    p.add_argument("--json", type=Path, help="also write the scores as JSON")
    _add_overwrite(p, "the JSON file")
    p.set_defaults(run=_run_score)


def _add_lesion_rule(p: argparse.ArgumentParser) -> None:
    from ..scoring.lesions import CHALLENGES, DEFAULT_CHALLENGE

    p.add_argument("--challenge", default=DEFAULT_CHALLENGE, choices=list(CHALLENGES),
                   help=f"the BraTS 2023 challenge whose lesion-wise rule to apply (default {DEFAULT_CHALLENGE}: "
                        "ground-truth lesions merged by a 3-voxel dilation, lesions of 50 mm³ or less not scored)")
    p.add_argument("--dilation", help="override the rule's dilation (voxels)", **number_option(int, minimum=0))
    p.add_argument("--min-lesion-mm3", help="override the rule's volume threshold (mm³)",
                   **number_option(float, minimum=0))


def _lesion_rule(args: argparse.Namespace):
    from dataclasses import replace

    from ..scoring.lesions import CHALLENGES

    rule = CHALLENGES[args.challenge]
    if args.dilation is not None:
        rule = replace(rule, dilation=args.dilation)
    if args.min_lesion_mm3 is not None:
        rule = replace(rule, min_volume_mm3=args.min_lesion_mm3)
    return rule


def _run_score(args: argparse.Namespace) -> int:
    from ..data.case import read_label_file
    from ..scoring.metrics import format_scores, score_segmentation, scores_as_dict

    target = _json_output(args.json, [args.pred, args.gt], args.overwrite)
    prediction, grid = read_label_file(args.pred, args.labels, "prediction")
    truth, truth_grid = read_label_file(args.gt, args.labels, "ground truth")
    if not grid.matches(truth_grid):
        raise CaseError(f"{args.gt}: grid ({truth_grid.describe()}) differs from {args.pred} ({grid.describe()})")
    scores = score_segmentation(prediction, truth, grid.canonical_spacing, _lesion_rule(args))
    print(format_scores(scores))
    _write_json(target, scores_as_dict(scores))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on shipped defaults: explain the shipped sample case",
                       description="Runs explain on the shipped sample case (or a fresh phantom with --seed) with a "
                                   "shipped network: segmentation, uncertainty, Grad-CAM, concept detectors, feature "
                                   "visualisation, figures and report.html. Its own output folder is replaced.")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    defaults = ExplainConfig()
    p.add_argument("--model", default=defaults.model, choices=MODEL_NAMES,
                   help=f"shipped network (default {defaults.model}, the best on held-out phantoms)")
    p.add_argument("--seed", help="generate a phantom with this seed instead of using the shipped sample",
                   **number_option(int, minimum=0))
    p.add_argument("--device", default=defaults.device, type=device_option, help="auto, cpu, cuda or cuda:N")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ..data.case import SAMPLE_CASE

    config = ExplainConfig(model=args.model, device=args.device, overwrite=True)
    source = SAMPLE_CASE
    if args.seed is not None:
        from ..data.phantom import make_phantom, phantom_case_id, write_phantom_files

        cases = args.out.with_name(args.out.name + "-cases")
        with OutputFolder(cases / phantom_case_id(args.seed), (), True, "phantom") as work:
            write_phantom_files(make_phantom(args.seed), work)
        source = cases / phantom_case_id(args.seed)
    return _explain_and_print(source, args.out, config)


def _explain_and_print(source, out: Path, config, progress: str = "text") -> int:
    """Run explain, then its headline numbers for people (on stderr when stdout carries JSON events)."""
    from .explain import explain
    from .report import headline_lines

    summary = explain(source, out, config, progress)
    for line in headline_lines(summary, out):
        print(line, file=sys.stderr if progress == "json" else sys.stdout)
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    from ..data.case import MODALITIES

    p = sub.add_parser("explain", help="every analysis of one case: the files, figures and report.html",
                       description="Writes OUT/segmentation.nii.gz (0/1/2/4), uncertainty/entropy/"
                                   "mutual_information.nii.gz, gradcam/<layer>_<class>.nii.gz, "
                                   "concepts/<layer>_<filter>_<concept>.nii.gz, featviz/*.png, figures/*.png, "
                                   "summary.json and report.html, all on the case's own grid.")
    p.add_argument("case", nargs="?", type=Path, help="BraTS case folder (or give the four files), or a dataset: "
                   "a folder of case folders or a .txt/.csv list of them, written to OUT/<case-id>/ with "
                   "OUT/cohort.csv, cohort.json and cohort.html; a rerun resumes (see docs/datasets.md)")
    for modality in MODALITIES:
        p.add_argument(f"--{modality}", type=Path, help=f"{modality} file, instead of a case folder")
    p.add_argument("--seg", type=Path, help="ground-truth label file (optional, with the four files)")
    add_config_options(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist, unless --overwrite)")
    p.add_argument("--progress", choices=PROGRESS_FORMATS, default="text",
                   help="text (default): [stage] lines; json: one JSON event per line on stdout, for programs")
    p.set_defaults(run=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from ..data.case import MODALITIES, CaseFiles

    files = [getattr(args, m) for m in MODALITIES]
    if args.case is not None and any(files):
        raise UsageError("give either a case folder or the four files, not both")
    if args.case is None:
        if not all(files):
            missing = [m for m, f in zip(MODALITIES, files) if f is None]
            raise UsageError(f"missing modality: give --{' --'.join(missing)} (or a case folder)")
        source = CaseFiles(*files, seg=args.seg, case_id=files[0].name.split(".")[0])
    else:
        from .cohort import dataset_cases

        cases = dataset_cases(args.case)
        if cases is not None:
            return _explain_dataset(args.case, cases, args.out, config_from_arguments(args), args.progress)
        source = args.case
    return _explain_and_print(source, args.out, config_from_arguments(args), args.progress)


def _explain_dataset(dataset: Path, cases: list[Path], out: Path, config, progress: str) -> int:
    """explain over a dataset (:func:`app.cohort.explain_cohort`), said as :func:`_run_cohort` says it."""
    from .cohort import explain_cohort

    if progress == "json":
        raise UsageError("--progress json: a dataset's run reports its progress as text (a bar over the cases)")
    return _run_cohort(lambda report: explain_cohort(cases, out, config, report=report, dataset=dataset), out,
                       "done")


def _run_cohort(run, out: Path, finished: str) -> int:
    """A cohort run — ``run(report)`` returns its ``cohort.json`` content — then how it went: the cases ``finished``
    (and how many by an earlier run), the mean Dice per region with its interval, where the table and page are;
    every failed case as an ``error:`` line, and exit status 2 when any failed."""
    from .cohort import summary_lines

    seen: dict[str, list[str]] = {"failed": [], "skipped": [], "done": []}
    statistics = run(lambda case, status, message: seen[status].append(message))
    print("\n".join(summary_lines(statistics, out, finished, len(seen["skipped"]))))
    for message in seen["failed"]:
        print(f"error: {message}", file=sys.stderr)
    return 2 if seen["failed"] else 0


def _add_model_arguments(p: argparse.ArgumentParser, device_default: str = ExplainConfig.device) -> None:
    p.add_argument("--model", required=True, help=f"{', '.join(MODEL_NAMES)} (shipped), a MONAI bundle folder "
                   "(configs/, models/model.pt) or an nnU-Net trained-model folder (plans.json, fold_k/)")
    p.add_argument("--folds", metavar="all|K,K,…|fold_all", help=help_of("folds"))
    p.add_argument("--weights", type=Path, help="your own weights file instead of the shipped ones")
    p.add_argument("--trust-bundle", action="store_true", help=help_of("trust_bundle"))
    p.add_argument("--device", default=device_default, type=device_option,
                   help=f"auto, cpu, cuda or cuda:N (default {device_default})")


def _add_resample(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-resample", dest="resample", action="store_false", help=f"do not {help_of('resample')}")


def _add_case_preparation(p: argparse.ArgumentParser) -> None:
    """How one case reaches the network (:func:`_case_for`): preprocessed (co-registration, brain mask, atlas
    pose: data.preprocess) and resampled into its space (or not). The cohort verbs (evaluate, dissect) take
    --no-resample alone: they do not preprocess yet."""
    add_config_options(p, only=CASE_PREPARATION)
    _add_resample(p)


def _mask_file(args: argparse.Namespace) -> Path | None:
    """A brain mask given as a file is an input too: never written over."""
    return Path(args.brain_mask) if Path(args.brain_mask).is_file() else None


def _model_folder(model: str) -> Path | None:
    """A network given as a folder (a bundle) is an input too: nothing is ever written into it."""
    return Path(model) if Path(model).is_dir() else None


def _case_for(args: argparse.Namespace, model):
    """``args.case`` read and preprocessed as ``--coregister``, ``--atlas`` and ``--brain-mask`` ask
    (data.preprocess) and brought into ``model``'s space (unless ``--no-resample``; see models.space); each step
    printed."""
    from ..models.space import prepare_case
    from .report import preparation_lines

    prepared, steps = prepare_case(args.case, model, args.coregister, args.resample, args.atlas, args.brain_mask)
    lines, warnings = preparation_lines(prepared, steps, model)
    for line in lines:
        print(line)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return prepared


def _load_model(args: argparse.Namespace, name: str | None = None):
    """The network the options name, on the device they name (checked: a CUDA device PyTorch lacks is refused)."""
    from ..models import load_model

    return load_model(name or args.model, args.weights, resolve_device(args.device),
                      getattr(args, "trust_bundle", False), getattr(args, "folds", None))


def _add_training_options(p: argparse.ArgumentParser, config_type) -> None:
    """The options of a trainer's config (``train``, ``train-bundle``), its device and resuming."""
    add_config_options(p, config_type)
    p.add_argument("--device", default="auto", type=device_option, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training import TrainConfig

    p = sub.add_parser("train", help="train a network on random axial slices of BraTS-named case folders",
                       description="Loss: soft Dice + class-weighted cross-entropy; Adam with cosine decay; seeded. "
                                   "The last --validation cases (sorted by name) are held out for the per-epoch "
                                   "validation Dice. A checkpoint after every epoch (WEIGHTS.ckpt) lets a rerun resume.")
    p.add_argument("--data", required=True, type=Path, help="folder of case folders (BraTS or phantoms)")
    p.add_argument("--model", required=True, help="denseunet, resunet or simunet")
    p.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    p.add_argument("--acquisition-cache", type=Path, help="folder keeping the clinical acquisitions, so that a "
                   "rerun, a resumed run or another network on the same cases and seed reads them instead of "
                   "making them again (keyed by case, acquisition, training space and library version)")
    _add_training_options(p, TrainConfig)
    _add_overwrite(p, "an existing weights file")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ..models import build_model
    from .training import TrainConfig, train

    if args.out.suffix != ".pt":
        raise UsageError(f"--out {args.out}: weights are written as a .pt file")
    OutputFile(args.out, [args.data], args.overwrite)  # checked now; train() writes it when the run is complete
    build_model(args.model, width=args.width)  # unknown names fail here, before any data is read
    config = config_from_arguments(args, TrainConfig, device=str(resolve_device(args.device)))
    history = train(args.data, args.out, config, resume=not args.no_resume, acquisition_cache=args.acquisition_cache)
    print(f"wrote {args.out} after {len(history)} epochs")
    return 0


def _add_train_bundle(sub: argparse._SubParsersAction) -> None:
    from .bundle_training import BundleTrainConfig

    p = sub.add_parser("train-bundle", help="train MONAI's SegResNet in 3D on BraTS-named case folders and write it "
                                            "as a MONAI bundle folder",
                       description="The recipe of the shipped 3D network (app/bundle_training.py): sigmoid TC/WT/ET, "
                                   "cases resampled to --spacing mm, random cubes, MONAI's DiceCELoss, AdamW with "
                                   "cosine decay; seeded. The last --validation cases are held out for the per-epoch "
                                   "validation Dice. A checkpoint after every epoch (OUT.checkpoint.pt) lets a rerun "
                                   "resume.")
    p.add_argument("--data", required=True, type=Path, help="folder of case folders (BraTS or phantoms)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    _add_training_options(p, BundleTrainConfig)
    _add_overwrite(p, "an existing bundle folder written by this command")
    p.set_defaults(run=_run_train_bundle)


def _run_train_bundle(args: argparse.Namespace) -> int:
    from .bundle_training import BundleTrainConfig, train_bundle

    config = config_from_arguments(args, BundleTrainConfig, device=str(resolve_device(args.device)))
    history = train_bundle(args.data, args.out, config, resume=not args.no_resume, overwrite=args.overwrite)
    print(f"wrote {args.out} after {len(history)} epochs")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-case and mean Dice/HD95 of a network on labelled cases (Table 1), legacy "
                                        "and lesion-wise (BraTS 2023)")
    p.add_argument("--data", required=True, type=Path, help="a case folder, a folder of case folders or a .txt/.csv "
                   "list of them; a case that cannot be evaluated is an error line and the others go on (exit 2)")
    _add_model_arguments(p)
    _add_resample(p)
    _add_lesion_rule(p)
    p.add_argument("--json", type=Path, help="also write per-case and mean scores (with bootstrap 95 %% intervals) "
                   "and the failed cases as JSON")
    _add_overwrite(p, "the JSON file")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..data.case import CaseError, find_cases
    from ..scoring.evaluation import evaluate_model, evaluation_as_dict, format_table
    from ..scoring.metrics import scores_as_dict

    from .cohort import dataset_cases

    target = _json_output(args.json, [args.data, args.weights], args.overwrite)
    cases = dataset_cases(args.data) or find_cases(args.data)  # a broken case folder is listed, not passed over
    model = _load_model(args)
    failures: dict[str, str] = {}
    results = evaluate_model(model, cases, progress=True, resample=args.resample, lesion_rule=_lesion_rule(args),
                             failures=failures)
    for error in failures.values():
        print(f"error: {error}", file=sys.stderr)
    if not results:
        raise CaseError(f"{args.data}: none of its {len(cases)} cases could be evaluated")
    summary = evaluation_as_dict(args.model, results, failures)
    rows = {r.case_id: scores_as_dict(r.scores) for r in results}
    print(format_table({**rows, f"mean ({len(results)})": summary["mean"]}))
    _write_json(target, summary)
    return 2 if failures else 0


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a case with a network; labels written on the case's own grid")
    p.add_argument("case", type=Path, help="BraTS case folder, or a dataset (a folder of case folders or a .txt/.csv "
                   "list): then OUT is a folder of OUT/<case-id>/segmentation.nii.gz with cohort.csv, resumable")
    _add_model_arguments(p)
    _add_case_preparation(p)
    p.add_argument("--out", required=True, type=Path,
                   help="label file to write (.nii.gz, .nii, .nrrd or .mha), in the case's convention (a folder for a "
                   "dataset)")
    _add_overwrite(p)
    p.set_defaults(run=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from .cohort import dataset_cases

    cases = dataset_cases(args.case)
    if cases is not None:
        return _segment_dataset(args, cases)
    target = OutputFile(args.out, [args.case, args.weights, _model_folder(args.model), _mask_file(args)],
                        args.overwrite, volume=True)
    model = _load_model(args)
    case = _case_for(args, model)
    with target.writing() as written:
        stages.segmentation.segment(model, case, written, progress=True)
    print(f"wrote {args.out}")
    return 0


def _segment_dataset(args: argparse.Namespace, cases: list[Path]) -> int:
    """segment over a dataset (:func:`app.cohort.segment_cohort`): each case's labels as
    ``OUT/<case-id>/segmentation.nii.gz`` with a ``summary.json`` (its scores with ground truth), resumable; said as
    :func:`_run_cohort` says it."""
    from ..models.space import prepare_case
    from ..scoring.metrics import score_segmentation, scores_as_dict
    from .cohort import refuse_overwrite, segment_cohort

    refuse_overwrite(args.overwrite)  # before the network is loaded
    model = _load_model(args)

    def segment_case(case_folder: Path, work: Path) -> None:
        start = time.perf_counter()
        case = prepare_case(case_folder, model, args.coregister, args.resample, args.atlas, args.brain_mask)[0]
        on_input = stages.segmentation.segment(model, case, work / SEGMENTATION)[1]
        as_read = case.as_read
        summary = {"version": __version__, "case": as_read.case_id, "model": args.model}
        if as_read.labels is not None:
            summary["scores"] = scores_as_dict(score_segmentation(on_input, as_read.labels, as_read.spacing))
        summary["seconds"] = {"segmentation": round(time.perf_counter() - start, 2)}
        (work / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")

    settings = [f"--{name.replace('_', '-')}={value}" for name, value in sorted(vars(args).items())
                if name not in ("case", "out", "overwrite", "run", "verb") and not callable(value)]
    return _run_cohort(lambda report: segment_cohort(cases, args.out, settings, segment_case, report=report,
                                                     dataset=args.case), args.out, "segmented")


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="BraTS-style preprocessing of a clinical case, written as a case folder to "
                       "check (in 3D Slicer or any viewer) before any analysis",
                       description="Writes OUT/ as a case folder with the input's file names: the four sequences "
                                   "co-registered onto the FLAIR and skull-stripped, on the FLAIR's own grid (its "
                                   "intensities, not z-scores; labels and tissue carried over), OUT/registration/"
                                   "*.tfm (each co-registration, and the head's pose against the atlas), "
                                   "OUT/brain_mask.nii.gz when the brain was masked, OUT/preprocessing.json (each "
                                   "step, why, seconds). explain takes OUT as preprocessed (one grid, skull-stripped) "
                                   "and keeps its pose unless --atlas always. The input is only read.")
    p.add_argument("case", type=Path, help="BraTS case folder")
    add_config_options(p, only=CASE_PREPARATION)
    p.add_argument("--out", required=True, type=Path, help="output case folder")
    _add_overwrite(p)
    p.set_defaults(run=_run_preprocess)


ATLAS_SPACING_MM = (1.0, 1.0, 1.0)  # preprocess decides the pose for the atlas's (and the shipped networks') 1 mm


def _run_preprocess(args: argparse.Namespace) -> int:
    from ..data.case import MODALITIES, find_case_files
    from ..data.preprocess import preprocess
    from ..data.resample import raw_sequences
    from .explain import preprocessing_summary, write_preprocessing

    files = find_case_files(args.case)
    with OutputFolder(args.out, [args.case, _mask_file(args)], args.overwrite, "preprocess") as work:
        case, steps = preprocess(files, ATLAS_SPACING_MM, args.coregister, args.atlas, args.brain_mask)
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
    print(f"wrote {args.out}")
    return 0


def _add_gradcam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradcam", help="layer-wise Grad-CAM of a case: every layer from one forward pass (paper 3.2)",
                       description="Writes OUT/<model>/<layer>_<class>.nii.gz (raw maps on the case's own grid), "
                                   "OUT/<model>/gradcam_z<Z>.png montages, OUT/<model>/localisation.json (share of "
                                   "each map inside brain, WT, TC, ET per layer, beside the same architecture with "
                                   "random weights and the raw input channels) and OUT/topdown.png (those shares "
                                   "across layers: the paper's top-down claim, measured).")
    p.add_argument("case", type=Path, help="BraTS case folder")
    p.add_argument("--model", required=True, help="denseunet, resunet, simunet, or several comma-separated; or a MONAI "
                   "bundle folder or nnU-Net trained-model folder (every output channel, windowed)")
    p.add_argument("--folds", metavar="all|K,K,…|fold_all", help=help_of("folds"))
    p.add_argument("--weights", type=Path, help="your own weights file instead of the shipped ones (one model)")
    p.add_argument("--trust-bundle", action="store_true", help=help_of("trust_bundle"))
    p.add_argument("--device", default=ExplainConfig.device, type=device_option,
                   help=f"auto, cpu, cuda or cuda:N (default {ExplainConfig.device})")
    _add_case_preparation(p)
    p.add_argument("--layers", default="all", help="'all' (default) or comma-separated layer names")
    p.add_argument("--classes", default="tumour", help="'tumour' (default: ncr,ed,et), 'all', or e.g. ed,et or 2,3 "
                   "(a 3D network: its outputs by name or index; tumour and all: every output)")
    p.add_argument("--slices", default="auto", help="axial slices for the montages: 'auto' (largest tumour "
                                                     "cross-section) or comma-separated indices")
    p.add_argument("--target", default="probabilities", choices=GRADCAM_TARGETS + tuple(GRADCAM_TARGET_NAMES),
                   help=help_of("gradcam_target"))
    p.add_argument("--pool", default="image", choices=GRADCAM_POOLS, help=help_of("gradcam_pool"))
    p.add_argument("--no-volume", action="store_true", help="only the montage slices: no NIfTI, no localisation")
    p.add_argument("--full-resolution", action="store_true", help=help_of("full_resolution"))
    p.add_argument("--batch-size", default=8, **number_option(int, minimum=1))
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_overwrite(p)
    p.set_defaults(run=_run_gradcam)


def _run_gradcam(args: argparse.Namespace) -> int:
    from ..models.interface import analysed
    from .explain import check_classes, check_layers
    from .figures import montage_slices

    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if args.weights is not None and len(models) != 1:
        raise UsageError("--weights goes with exactly one --model")
    folder = OutputFolder(args.out, [args.case, args.weights, _mask_file(args), *map(_model_folder, models)],
                          args.overwrite, "gradcam")
    loaded = {Path(name).name: _load_model(args, name) for name in models}
    for model in loaded.values():
        analysed(model, "Grad-CAM")  # a TorchScript network has no hooks
        check_classes(model, args.classes)
        check_layers(model, args.layers)
    case = _case_for(args, next(iter(loaded.values())))  # the shipped networks share one training space
    try:
        slices = montage_slices(case, 1) if args.slices == "auto" else [int(z) for z in args.slices.split(",")]
    except ValueError:
        raise UsageError(f"--slices {args.slices}: give 'auto' or comma-separated slice indices") from None
    if min(slices) < 0 or max(slices) >= case.images.shape[1]:
        raise UsageError(f"--slices must lie in 0..{case.images.shape[1] - 1} for {case.case_id}"
                         f"{' in the network space' if case.original is not None else ''}, got {args.slices}")
    with folder as work:
        stages.gradcam.job(loaded, case, args.classes, slices, work, args.out, layers=args.layers, target=args.target,
                           pool=args.pool, batch_size=args.batch_size, volume=not args.no_volume,
                           full_resolution=args.full_resolution)
    return 0


def _add_dissect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dissect", help="network dissection: which filters detect which concepts (paper 3.1)",
                       description="Thresholds every filter at its dataset-wide top-1%% level (streamed, bounded "
                                   "memory), post-processes the concept masks as the paper does and measures IoU "
                                   "against WT, TC, ET, ED, NCR (labels) and brain, WM, GM, CSF (phantom tissue "
                                   "maps) — for the network, the same architecture with random weights and the raw "
                                   "input channels: a filter is a detector only when it beats both controls by the "
                                   "margin. Writes OUT/dissection.json (thresholds and IoUs: give it to explain), "
                                   "OUT/tables/<layer>.csv (and controls.csv), OUT/detectors.json, OUT/dissection.png "
                                   "and, per case, OUT/concepts/<case>/<layer>_<filter>_<concept>.nii.gz for the best "
                                   "detector of each concept.")
    p.add_argument("--data", required=True, type=Path, help="a case folder or a folder of case folders")
    _add_model_arguments(p)
    _add_resample(p)
    add_config_options(p, DissectConfig)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_overwrite(p)
    p.set_defaults(run=_run_dissect)


def _run_dissect(args: argparse.Namespace) -> int:
    from ..data.case import find_cases
    from ..models.interface import analysed

    config = config_from_arguments(args, DissectConfig)
    folder = OutputFolder(args.out, [args.data, args.weights, _model_folder(args.model)], args.overwrite,
                          "dissect")
    cases = find_cases(args.data)
    model = _load_model(args)
    analysed(model, "network dissection").layers(config.layers)  # before any work
    with folder as work:
        stages.concepts.dissect_job(model, cases, work, args.out, config, model_name=args.model,
                                    resample=args.resample)
    return 0


def _add_uncertainty(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("uncertainty", help="test-time-dropout uncertainty of a case (paper section 5)",
                       description="T stochastic passes with only dropout active (batched, seeded). Writes, on the "
                                   "case's own grid: segmentation.nii.gz (labels of the mean prediction), "
                                   "uncertainty.nii.gz (channel mean of the class variances, eq. 9b), entropy.nii.gz "
                                   "and mutual_information.nii.gz (nats); uncertainty.png (ground truth | prediction "
                                   "| uncertainty); with ground truth, error_by_uncertainty.png and the AUROC of "
                                   "each map for misclassified voxels in summary.json.")
    p.add_argument("case", type=Path, help="BraTS case folder")
    _add_model_arguments(p)
    _add_case_preparation(p)
    add_config_options(p, only=("quick", "passes", "seed", "ensemble", "full_resolution"))
    p.add_argument("--agreement", action="store_true",
                   help="when quick: also run the full T passes and print the Pearson r of the maps in the brain")
    _add_batching_arguments(p)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_overwrite(p)
    p.set_defaults(run=_run_uncertainty)


def _add_batching_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slices-per-batch", default=None, help="slices per forward (default: by device)",
                   **number_option(int, minimum=1))
    p.add_argument("--passes-per-forward", default=None, help="dropout passes per forward (default: by "
                   "device; one forward carries slices × passes images)", **number_option(int, minimum=1))


def _run_uncertainty(args: argparse.Namespace) -> int:
    from ..models.registry import load_ensemble
    from ..models.volume import fold_members

    files = split_files(args.ensemble)
    folder = OutputFolder(args.out, [args.case, args.weights, _model_folder(args.model), _mask_file(args), *files],
                          args.overwrite, "uncertainty")
    model = _load_model(args)
    members = dict(zip(files, load_ensemble(args.model, files, resolve_device(args.device), args.trust_bundle))) \
        if files else fold_members(model)
    case = _case_for(args, model)
    with folder as work:
        stages.uncertainty.job(model, case, work, args.out, model_name=args.model, passes=args.passes,
                               quick=resolve_quick(args.quick, resolve_device(args.device).type), seed=args.seed,
                               members=members, agreement=args.agreement, full_resolution=args.full_resolution,
                               slices_per_batch=args.slices_per_batch, passes_per_forward=args.passes_per_forward)
    return 0


def _add_template(sub: argparse._SubParsersAction) -> None:
    from ..analyses.featviz import MIN_SIZE, VOLUME_SIZE

    p = sub.add_parser("template", help="the dataset's mean image: the style template of feature visualisation",
                       description="Averages the z-scored sequences over every brain slice of the cases and writes "
                                   "them as an .npz (read back without unpickling). With --model, a 3D network's: "
                                   "the mean of its inputs over each case's brain box, resized to --size per side.")
    p.add_argument("--data", required=True, type=Path, help="a case folder or a folder of case folders")
    p.add_argument("--out", required=True, type=Path, help=".npz file to write")
    p.add_argument("--model", help="a 3D network (shipped name or bundle folder) whose template to make")
    p.add_argument("--trust-bundle", action="store_true", help=help_of("trust_bundle"))
    p.add_argument("--size", default=VOLUME_SIZE, **number_option(int, minimum=MIN_SIZE),
                   help=f"a 3D template's voxels per side (default "
                   f"{VOLUME_SIZE})")
    _add_overwrite(p)
    p.set_defaults(run=_run_template)


def _run_template(args: argparse.Namespace) -> int:
    from ..data.case import find_cases
    from ..models import load_model

    if args.out.suffix != ".npz":
        raise UsageError(f"--out {args.out}: a template is written as .npz")
    target = OutputFile(args.out, [args.data, args.model and _model_folder(args.model)], args.overwrite)
    folders = find_cases(args.data)
    model = load_model(args.model, trust_code=args.trust_bundle) if args.model else None
    stages.featviz.template_job(folders, target, model, args.size)
    print(f"wrote {args.out}")
    return 0


def _add_featviz(sub: argparse._SubParsersAction) -> None:
    from ..analyses.featviz import MIN_SIZE, VOLUME_SIZE, FeatvizConfig, Regularisers

    defaults, config = Regularisers(), FeatvizConfig()
    p = sub.add_parser("featviz", help="activation maximisation: the pre-image that excites a filter (paper 4)",
                       description="Optimises one 4-sequence pre-image per filter, with and without regularisers, "
                                   "and writes OUT/featviz_<layer>.png (Figure 6), OUT/featviz_<layer>.npz (the "
                                   "pre-images) and OUT/featviz_<layer>.json; --sweep adds "
                                   "OUT/sweep_<layer>_<filter>.png (Figure 13).")
    _add_model_arguments(p)
    p.add_argument("--layer", help="layer of the filters given by index alone")
    p.add_argument("--filters", required=True, help="comma-separated filter indices of --layer, or layer:index pairs "
                   "(e.g. enc2:5,dec1:3: filters of several layers optimised in one batch, as explain does)")
    p.add_argument("--steps", default=config.steps, **number_option(int, minimum=1))
    p.add_argument("--size", **number_option(int, minimum=MIN_SIZE),
                   help=f"pre-image size in pixels (default {config.size}; a 3D network's "
                   f"voxels per side, default {VOLUME_SIZE})")
    p.add_argument("--lr", default=config.learning_rate, **number_option(float, above=0))
    p.add_argument("--seed", default=config.seed, **number_option(int, minimum=0))
    p.add_argument("--jitter", default=defaults.jitter, help="pixels", **number_option(int, minimum=0))
    p.add_argument("--rotation", default=defaults.rotation, help="degrees",
                   **number_option(float, minimum=0, maximum=180))
    p.add_argument("--tv", default=defaults.tv, help="total variation coefficient", **number_option(float, minimum=0))
    p.add_argument("--l2", default=defaults.l2, help="L2 coefficient", **number_option(float, minimum=0))
    p.add_argument("--style", default=defaults.style, help="style (MMD to the template) coefficient",
                   **number_option(float, minimum=0))
    p.add_argument("--sigma", default=defaults.sigma, help="style kernel width (z-score units)",
                   **number_option(float, above=0))
    p.add_argument("--template", type=Path, help="template .npz (default: the shipped phantom template; a 3D "
                   "network's from `template --model`)")
    p.add_argument("--sweep", action="store_true", help="also the regulariser sweep for the first filter")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_overwrite(p)
    p.set_defaults(run=_run_featviz)


def _run_featviz(args: argparse.Namespace) -> int:
    from ..analyses.featviz import (
        VOLUME_SIZE,
        FeatvizConfig,
        Regularisers,
        check_targets,
        load_template,
        shipped_template_path,
        spatial_dims,
    )

    targets = _featviz_targets(args.filters, args.layer)
    folder = OutputFolder(args.out, [args.weights, args.template, _model_folder(args.model)], args.overwrite,
                          "featviz")
    model = _load_model(args)
    volume = spatial_dims(model) == 3
    size = args.size or (VOLUME_SIZE if volume else FeatvizConfig.size)
    config = FeatvizConfig(steps=args.steps, size=size, learning_rate=args.lr, seed=args.seed)
    regularisers = Regularisers(jitter=args.jitter, rotation=args.rotation, tv=args.tv, l2=args.l2,
                                style=args.style, sigma=args.sigma)
    if volume and args.template is None and args.style > 0:
        raise UsageError(f"--model {args.model} is a 3D network: its style template is made from your cases by "
                         f"`template --data DIR --model {args.model} --out T.npz`; pass it with --template "
                         "(or --style 0)")
    template = (load_template(args.template or shipped_template_path(), size, model)
                if args.template or not volume else None)
    check_targets(model, targets, size=size)
    with folder as work:
        stages.featviz.job(model, targets, config, regularisers, template, work, args.out, model_name=args.model,
                           layer=args.layer, sweep=args.sweep)
    return 0


def _featviz_targets(filters: str, layer: str | None) -> list[tuple[str, int]]:
    """``(layer, filter)`` pairs from ``--filters`` (indices of ``--layer``, or layer:index)."""
    targets = []
    for item in filters.split(","):
        name, _, index = item.strip().rpartition(":")
        if not (name or layer) or not index.strip().isdigit():
            raise UsageError(f"--filters {filters}: give filter indices with --layer, or layer:index pairs")
        targets.append((name or layer, int(index)))
    return targets


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from ..testbed.bench import DISSECTION_VOLUMES, BenchConfig

    p = sub.add_parser("bench", help="benchmarks: ours against the naive loop or a peer, ratio in one run",
                       description="Each benchmark times two ways of the same work on the same model, seed, input and "
                                   "device, and prints the ratio: ttd (batched vs naive per-slice, per-pass loop; "
                                   "quick vs T), gradcam (all layers × 4 classes vs Captum per (layer, class), with "
                                   "the maps' largest difference), dissection (peak memory for 4/16/48 volumes, "
                                   "threshold error vs exact quantiles), segmentation, featviz, slicer (push one "
                                   "explain run into a scene). Results in BENCHMARKS.md come from this command.")
    p.add_argument("--case", type=Path, default=None, help="case folder or saved case (.npz); default the sample")
    p.add_argument("--only", default="all", help="all (default), or some of ttd,gradcam,dissection,segmentation,"
                   "featviz,slicer")
    add_config_options(p, BenchConfig)
    _add_batching_arguments(p)
    p.add_argument("--dissection-volumes", default=",".join(map(str, DISSECTION_VOLUMES)))
    p.add_argument("--dissection-data", type=Path, default=None,
                   help="case folders to cycle through for the dissection (default: the bench case, repeated)")
    p.add_argument("--explain-run", type=Path, default=None, help="an explain output folder (slicer benchmark)")
    p.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    p.add_argument("--markdown", type=Path, default=None, help="write a BENCHMARKS.md section to this file")
    _add_overwrite(p, "the JSON and Markdown files")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from ..data.case import SAMPLE_CASE, find_cases
    from ..testbed.bench import BENCHMARKS, BenchConfig, describe, markdown, run_benchmarks

    inputs = [args.case, args.dissection_data, args.explain_run]
    json_target = _json_output(args.json, inputs, args.overwrite)
    markdown_target = OutputFile(args.markdown, inputs, args.overwrite) if args.markdown else None
    resolve_device(args.device)
    config = config_from_arguments(
        args, BenchConfig, case=args.case or SAMPLE_CASE, explain_run=args.explain_run,
        dissection_volumes=tuple(check_number(v.strip(), "--dissection-volumes", int, minimum=1)
                                 for v in args.dissection_volumes.split(",")),
        dissection_cases=tuple(find_cases(args.dissection_data)) if args.dissection_data else ())
    only = BENCHMARKS if args.only == "all" else [name.strip() for name in args.only.split(",") if name.strip()]
    results = run_benchmarks(config, only, report=lambda m: print(describe(m), flush=True))
    if json_target is not None:
        _write_json(json_target, results)
        print(f"wrote {args.json}")
    if markdown_target is not None:
        with markdown_target.writing() as written:
            written.write_text(markdown(results))
        print(f"wrote {args.markdown}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An option error is a :class:`UsageError` (one ``error:`` line, exit 2), not argparse's usage text."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m BrainTumorExplainLib",
                                     description="Explain brain-tumour segmentation networks (Natekar et al. 2020).")
    parser.add_argument("--version", action="version", version=f"BrainTumorExplainLib {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for add in (_add_demo, _add_explain, _add_phantom, _add_montage, _add_score, _add_segment, _add_preprocess, _add_train, _add_train_bundle, _add_evaluate,
                _add_gradcam, _add_dissect, _add_uncertainty, _add_template, _add_featviz, _add_bench):
        add(sub)
    return parser


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, so every ``with``/``finally`` cleans up
    (private folders, locks) before the process ends; the previous handlers come back afterwards."""
    def stop(number, _frame):
        name = signal.Signals(number).name
        raise Interrupted(name, 128 + number)

    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[number] = signal.signal(number, stop)
        except ValueError:  # not the main thread: leave the signals alone
            pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("always")
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        args = build_parser().parse_args(argv)
        with signals_interrupt():
            return int(args.run(args) or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"error: interrupted ({stop.signal_name}): nothing was published and the partial files were removed",
              file=sys.stderr)
        return stop.exit_status
    except OSError as error:
        if error.errno in DISK_ERRNOS and error.filename:
            print(f"error: {error.filename}: {error.strerror}", file=sys.stderr)
            return 2
        raise
