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


def read_label_file(path: Path, convention_name: str, what: str):
    """A label file as class indices on canonical axes, with its grid."""
    import numpy as np
    import SimpleITK as sitk

    from .case import read_image
    from .grid import ReferenceGrid
    from .labels import label_convention

    image = read_image(path, what)
    grid = ReferenceGrid.from_image(image)
    array = sitk.GetArrayFromImage(image)
    if np.any(array != np.round(array)):
        raise CaseError(f"{path}: {what} holds non-integer values; expected labels")
    try:
        classes = label_convention(convention_name).to_classes(array.astype(np.int64))
    except ValueError as error:
        raise CaseError(f"{path}: {error}") from None
    return grid.to_canonical(classes), grid


def _run_score(args: argparse.Namespace) -> int:
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
    p = sub.add_parser("demo", help="the main job on shipped defaults: phantom case → segmentation → scores, montage",
                       description="Generates one phantom case, segments it with the non-learned threshold baseline "
                                   "(the networks arrive with the models issue), writes the segmentation on the "
                                   "case's grid, scores it against the ground truth, and draws a montage.")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    p.add_argument("--seed", type=int, default=1003, help="phantom seed (default 1003, the shipped sample's)")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .baseline import threshold_segmentation
    from .case import load_case
    from .figures import case_montage
    from .metrics import format_scores, score_segmentation, scores_as_dict
    from .phantom import make_phantom, write_phantom

    timings: dict[str, float] = {}
    start = time.perf_counter()
    files = write_phantom(make_phantom(args.seed), args.out / "cases")
    timings["phantom"] = time.perf_counter() - start
    start = time.perf_counter()
    case = load_case(files)
    prediction = threshold_segmentation(case)
    segmentation = case.write_labels(prediction, args.out / "segmentation.nii.gz")
    timings["segmentation"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_segmentation(prediction, case.labels, case.spacing)
    montage = case_montage(case, args.out / "montage.png")
    timings["score+montage"] = time.perf_counter() - start
    summary = {
        "version": __version__,
        "case": case.case_id,
        "method": "threshold baseline (not a network)",
        "segmentation": str(segmentation),
        "scores": scores_as_dict(scores),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"case {case.case_id}: threshold baseline against ground truth")
    print(format_scores(scores))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"montage: {montage}")
    print(f"summary: {args.out / 'summary.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m BrainTumorExplainLib",
                                     description="Explain brain-tumour segmentation networks (Natekar et al. 2020).")
    parser.add_argument("--version", action="version", version=f"BrainTumorExplainLib {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for add in (_add_demo, _add_phantom, _add_montage, _add_score):
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
