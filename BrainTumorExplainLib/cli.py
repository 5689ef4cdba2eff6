"""``python -m BrainTumorExplainLib <verb> ...`` — argument parsing only; every verb calls library functions."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .case import CaseError


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="generate BraTS-like phantom cases on the MNI ICBM152 anatomy",
                       description="Writes OUT/Phantom_<seed>/ case folders (BraTS 2018-2021 naming, labels 0/1/2/4, "
                                   "plus _tissue: 0 bg, 1 CSF, 2 GM, 3 WM). Case i uses seed SEED+i; same seed, same files.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    p.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm (default 1.0: BraTS's 240x240x155)")
    p.add_argument("--montage", action="store_true", help="also write <case>/<id>_montage.png")
    p.set_defaults(run=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .phantom import PhantomConfig, make_phantom, write_phantom

    if args.cases < 1:
        raise ValueError(f"--cases must be at least 1, got {args.cases}")
    config = PhantomConfig(spacing_mm=args.spacing)
    for seed in tqdm(range(args.seed, args.seed + args.cases), desc="phantoms", unit="case"):
        files = write_phantom(make_phantom(seed, config), args.out)
        if args.montage:
            _montage(files.flair.parent, files.flair.parent / f"{files.case_id}_montage.png")
    print(f"wrote {args.cases} case(s) to {args.out}")
    return 0


def _montage(case_folder: Path, png: Path) -> Path:
    from .case import load_case
    from .figures import case_montage

    return case_montage(load_case(case_folder), png)


def _add_montage(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("montage", help="PNG montage of a case (4 sequences, labels, tissue)")
    p.add_argument("case", type=Path, help="BraTS case folder")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.set_defaults(run=lambda args: print(f"wrote {_montage(args.case, args.out)}") or 0)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="Dice and HD95 (mm) of a segmentation against ground truth, for WT, TC, ET")
    p.add_argument("--pred", required=True, type=Path, help="predicted label file")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth label file (same grid)")
    p.add_argument("--labels", default="brats2021", choices=["brats2021", "brats2023"],
                   help="label convention of both files (default brats2021: ET=4)")
    p.add_argument("--json", type=Path, help="also write the scores as JSON")
    p.set_defaults(run=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from .case import read_label_file
    from .metrics import format_scores, score_segmentation, scores_as_dict

    prediction, grid = read_label_file(args.pred, args.labels, "prediction")
    truth, truth_grid = read_label_file(args.gt, args.labels, "ground truth")
    if not grid.matches(truth_grid):
        raise CaseError(f"{args.gt}: grid ({truth_grid.describe()}) differs from {args.pred} ({grid.describe()})")
    scores = score_segmentation(prediction, truth, grid.canonical_spacing)
    print(format_scores(scores))
    if args.json:
        args.json.write_text(json.dumps(scores_as_dict(scores), indent=2) + "\n")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on shipped defaults: segment the sample case, score, draw",
                       description="Segments the shipped sample case (or a fresh phantom with --seed) with a shipped "
                                   "network, writes the labels on the case's own grid, scores them and the "
                                   "non-learned threshold baseline against the ground truth, and draws a montage.")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    p.add_argument("--model", default="denseunet", help="shipped network (default denseunet, the best on held-out phantoms)")
    p.add_argument("--seed", type=int, help="generate a phantom with this seed instead of using the shipped sample")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .baseline import threshold_segmentation
    from .case import SAMPLE_CASE, load_case
    from .evaluation import format_table
    from .figures import case_montage
    from .inference import segment_case
    from .metrics import score_segmentation, scores_as_dict
    from .models import load_pretrained

    timings: dict[str, float] = {}
    start = time.perf_counter()
    source = SAMPLE_CASE
    if args.seed is not None:
        from .phantom import make_phantom, write_phantom

        source = write_phantom(make_phantom(args.seed), args.out / "cases")
        timings["phantom"] = time.perf_counter() - start
        start = time.perf_counter()
    case = load_case(source)
    if case.labels is None:
        raise CaseError(f"{source}: the demo scores against ground truth, but the case has no label file")
    model = load_pretrained(args.model, device=args.device)
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    prediction = segment_case(model, case, device=args.device)
    segmentation = case.write_labels(prediction, args.out / "segmentation.nii.gz")
    timings["segmentation"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = {
        args.model: scores_as_dict(score_segmentation(prediction, case.labels, case.spacing)),
        "threshold": scores_as_dict(score_segmentation(threshold_segmentation(case), case.labels, case.spacing)),
    }
    montage = case_montage(case, args.out / "montage.png", predicted=prediction)
    timings["score+montage"] = time.perf_counter() - start
    summary = {
        "version": __version__,
        "case": case.case_id,
        "model": args.model,
        "segmentation": str(segmentation),
        "scores": scores,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"case {case.case_id} against its ground truth ({args.model}: shipped weights; threshold: non-learned baseline)")
    print(format_table(scores))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"montage: {montage}")
    print(f"summary: {args.out / 'summary.json'}")
    return 0


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="denseunet, resunet or simunet (shipped weights)")
    p.add_argument("--weights", type=Path, help="your own weights file instead of the shipped ones")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def _load_model(args: argparse.Namespace):
    from .models import load_pretrained, load_weights

    if args.weights is not None:
        return load_weights(args.weights, architecture=args.model, device=args.device)
    return load_pretrained(args.model, device=args.device)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training import TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser("train", help="train a network on random axial slices of BraTS-named case folders",
                       description="Loss: soft Dice + class-weighted cross-entropy; Adam with cosine decay; seeded. "
                                   "The last --validation cases (sorted by name) are held out for the per-epoch "
                                   "validation Dice. A checkpoint after every epoch (WEIGHTS.ckpt) lets a rerun resume.")
    p.add_argument("--data", required=True, type=Path, help="folder of case folders (BraTS or phantoms)")
    p.add_argument("--model", required=True, help="denseunet, resunet or simunet")
    p.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    p.add_argument("--width", type=float, default=defaults.width, help=f"channel multiplier (default {defaults.width}; 1.0 = paper width)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--steps", type=int, default=defaults.steps_per_epoch, help="steps per epoch")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.learning_rate)
    p.add_argument("--validation", type=int, default=defaults.validation_cases, help="cases held out for validation")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .models import build_model
    from .training import TrainConfig, train

    build_model(args.model, width=args.width)  # unknown names fail here, before any data is read
    config = TrainConfig(model=args.model, width=args.width, epochs=args.epochs, steps_per_epoch=args.steps,
                         batch_size=args.batch_size, learning_rate=args.lr, validation_cases=args.validation,
                         seed=args.seed, device=args.device)
    history = train(args.data, args.out, config, resume=not args.no_resume)
    print(f"wrote {args.out} after {len(history)} epochs")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-case and mean Dice/HD95 of a network on labelled cases (Table 1)")
    p.add_argument("--data", required=True, type=Path, help="a case folder or a folder of case folders")
    _add_model_arguments(p)
    p.add_argument("--json", type=Path, help="also write per-case and mean scores as JSON")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_model, evaluation_as_dict, format_table
    from .metrics import scores_as_dict
    from .training import find_cases

    cases = find_cases(args.data)
    model = _load_model(args)
    results = evaluate_model(model, cases, device=args.device, progress=True)
    summary = evaluation_as_dict(args.model, results)
    rows = {r.case_id: scores_as_dict(r.scores) for r in results}
    print(format_table({**rows, f"mean ({len(results)})": summary["mean"]}))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a case with a network; labels written on the case's own grid")
    p.add_argument("case", type=Path, help="BraTS case folder")
    _add_model_arguments(p)
    p.add_argument("--out", required=True, type=Path, help="label file to write (.nii.gz), in the case's convention")
    p.set_defaults(run=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from .case import load_case
    from .inference import segment_case

    case = load_case(args.case)
    model = _load_model(args)
    labels = segment_case(model, case, device=args.device, progress=True)
    print(f"wrote {case.write_labels(labels, args.out)}")
    return 0


def _add_gradcam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradcam", help="layer-wise Grad-CAM of a case: every layer from one forward pass (paper 3.2)",
                       description="Writes OUT/<model>/<layer>_<class>.nii.gz (raw maps on the case's own grid), "
                                   "OUT/<model>/gradcam_z<Z>.png montages, OUT/<model>/localisation.json (share of "
                                   "each map inside brain, WT, TC, ET per layer) and OUT/topdown.png (those shares "
                                   "across layers: the paper's top-down claim, measured).")
    p.add_argument("case", type=Path, help="BraTS case folder")
    p.add_argument("--model", required=True, help="denseunet, resunet, simunet, or several comma-separated")
    p.add_argument("--weights", type=Path, help="your own weights file instead of the shipped ones (one model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--layers", default="all", help="'all' (default) or comma-separated layer names")
    p.add_argument("--classes", default="tumour", help="'tumour' (default: ncr,ed,et), 'all', or e.g. ed,et or 2,3")
    p.add_argument("--slices", default="auto", help="axial slices for the montages: 'auto' (largest tumour "
                                                     "cross-section) or comma-separated indices")
    p.add_argument("--target", default="softmax", choices=["softmax", "logits"],
                   help="output map pooled for y(c) (default softmax, as in the paper)")
    p.add_argument("--no-volume", action="store_true", help="only the montage slices: no NIfTI, no localisation")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(run=_run_gradcam)


def _run_gradcam(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from .case import load_case
    from .figures import gradcam_montage, localisation_curves, montage_slices
    from .gradcam import gradcam_volume, layer_gradcam, localisation, localisation_as_dict
    from .labels import CLASS_KEYS, resolve_classes

    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if args.weights is not None and len(models) != 1:
        raise ValueError("--weights goes with exactly one --model")
    classes = resolve_classes(args.classes)
    case = load_case(args.case)
    slices = montage_slices(case, 1) if args.slices == "auto" else [int(z) for z in args.slices.split(",")]
    if min(slices) < 0 or max(slices) >= case.images.shape[1]:
        raise ValueError(f"--slices must lie in 0..{case.images.shape[1] - 1} for {case.case_id}, got {args.slices}")
    tables = {}
    for name in models:
        model = _load_model(argparse.Namespace(model=name, weights=args.weights, device=args.device))
        out = args.out / name
        images = torch.from_numpy(np.ascontiguousarray(case.images[:, slices].transpose(1, 0, 2, 3))).to(args.device)
        slice_maps = {layer: cams.cpu().numpy()
                      for layer, cams in layer_gradcam(model, images, args.layers, classes, args.target).items()}
        for position, z in enumerate(slices):
            png = gradcam_montage(case, z, {layer: cams[position] for layer, cams in slice_maps.items()}, classes,
                                  out / f"gradcam_z{z}.png", title=f"{case.case_id} · {name} · Grad-CAM "
                                                                    f"({args.target}) per layer, rows: class")
            print(f"wrote {png}")
        if args.no_volume:
            continue
        volume = gradcam_volume(model, case, args.layers, classes, args.target, batch_size=args.batch_size,
                                device=args.device, progress=True)
        for (layer, class_index), cam in tqdm(volume.maps.items(), desc="write NIfTI", unit="map"):
            case.grid.write(cam, out / f"{layer}_{CLASS_KEYS[class_index]}.nii.gz")
        tables[name] = localisation(volume, case)
        (out / "localisation.json").write_text(json.dumps(
            {"case": case.case_id, "model": name, "target": args.target,
             "table": localisation_as_dict(tables[name])}, indent=2) + "\n")
        print(f"wrote {len(volume.maps)} maps and localisation.json to {out}")
    if tables:
        print(f"wrote {localisation_curves(tables, args.out / 'topdown.png')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m BrainTumorExplainLib",
                                     description="Explain brain-tumour segmentation networks (Natekar et al. 2020).")
    parser.add_argument("--version", action="version", version=f"BrainTumorExplainLib {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for add in (_add_demo, _add_phantom, _add_montage, _add_score, _add_segment, _add_train, _add_evaluate,
                _add_gradcam):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("always")
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        return int(args.run(args) or 0)
    except (CaseError, ValueError, FileNotFoundError, PermissionError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
