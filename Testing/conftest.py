"""Shared fixtures: small phantoms (3 mm grid) and helpers that write synthetic images with chosen geometry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorExplainLib.data.phantom import PhantomConfig, make_phantom, write_phantom

SMALL = PhantomConfig(spacing_mm=3.0)  # 52 x 80 x 80: the real generator, 27x fewer voxels
# explain's cheapest run with every analysis on, the settings every explain test starts from. The 3 mm phantom stays
# at 3 mm (the networks were trained at 1 mm): runs, not accuracy, are under test.
FAST_EXPLAIN = ("--model", "resunet", "--no-resample", "--layers", "enc2,dec1", "--full", "-T", "2", "--featviz-steps",
                "3", "--featviz-size", "32", "--device", "cpu")


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory):
    """A 3 mm phantom case folder (seed 5), written once per session."""
    return write_phantom(make_phantom(5, SMALL), tmp_path_factory.mktemp("phantoms"))


@pytest.fixture(scope="session")
def explained_phantom(small_phantom, tmp_path_factory):
    """One explain of the small phantom with FAST_EXPLAIN (and the scene when slicer-core is installed), for every
    test that only reads its outputs: copy it before changing anything in it."""
    from BrainTumorExplainLib.app.cli import main

    out = tmp_path_factory.mktemp("explain") / "run"
    assert main(["explain", str(small_phantom.flair.parent), *FAST_EXPLAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def training_phantoms(tmp_path_factory):
    """Three 3 mm phantom case folders (seeds 60-62): the last is the validation case of the training tests."""
    folder = tmp_path_factory.mktemp("train")
    for seed in (60, 61, 62):
        write_phantom(make_phantom(seed, SMALL), folder)
    return folder


@pytest.fixture
def scene():
    """A fresh MRML scene from slicer-core (real MRML without the application), cleared afterwards."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(True)


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """Write an ITK-ordered (k, j, i) array with the given geometry."""
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def oblique_direction(degrees: float = 20.0, flip: tuple[int, int, int] = (1, -1, 1),
                      permutation: tuple[int, int, int] = (1, 0, 2)) -> tuple[float, ...]:
    """An oblique, flipped, axis-permuted direction matrix (columns: image axes), row-major as ITK wants."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    permuted = np.eye(3)[:, permutation] * np.array(flip)
    return tuple((rotation @ permuted).ravel())


def synthetic_case(folder: Path, case_id: str = "BraTS_X", naming: str = "brats2021", shape=(12, 14, 16),
                   seg_values=(0, 1, 2, 4), **geometry) -> dict[str, Path]:
    """Four brain-like volumes (non-zero block in the middle) and a label volume, in either BraTS naming."""
    from BrainTumorExplainLib.data.case import NAMINGS

    rng = np.random.default_rng(0)
    suffixes = NAMINGS[naming]
    paths = {}
    brain = np.zeros(shape, dtype=bool)
    brain[2:-2, 2:-2, 2:-2] = True
    for channel, modality in enumerate(("flair", "t1", "t1ce", "t2")):
        volume = np.where(brain, rng.uniform(100, 200, shape) + 50 * channel, 0).astype(np.float32)
        paths[modality] = write_image(folder / f"{case_id}{suffixes[modality]}.nii.gz", volume, **geometry)
    labels = np.zeros(shape, dtype=np.uint8)
    for i, value in enumerate(seg_values):
        labels[4 + i % 3, 4:6, 4 + 2 * i:6 + 2 * i] = value
    paths["seg"] = write_image(folder / f"{case_id}{suffixes['seg']}.nii.gz", labels, **geometry)
    return paths


def explain_cheaply(case_folder, out) -> bool:
    """explain on a case folder with the cheapest settings (SimUNet, one layer, quick dropout, two pre-image steps,
    no resampling), writing the scene when slicer-core is installed; returns whether it did."""
    import importlib.util

    from BrainTumorExplainLib.app.cli import main

    scene = importlib.util.find_spec("slicer") is not None
    assert main(["explain", str(case_folder), "--model", "simunet", "--layers", "dec1", "--quick",
                 "--featviz-steps", "2", "--featviz-size", "32", "--no-resample", "--scene" if scene else "--no-scene",
                 "--device", "cpu", "--out", str(out)]) == 0
    return scene


def top_level_imports(path: Path) -> set[str]:
    """What a Python file imports when it loads (its top-level imports; relative ones with their dots)."""
    import ast

    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.add("." * node.level + (node.module or ""))
    return names


def loaded_with_the_module(root: Path) -> dict[Path, set[str]]:
    """Every file of the repository that loading the Slicer module imports — the module file, its logic package and
    the library modules they import at their top, in turn — with the other packages each imports at its top."""
    module = root / "BrainTumorExplain"
    found: dict[Path, set[str]] = {}
    queue = [module / "BrainTumorExplain.py"]
    while queue:
        path = queue.pop()
        if path in found:
            continue
        found[path] = set()
        for name in top_level_imports(path):
            if name.startswith("."):
                rest = name.lstrip(".")
                base = path.parent
                for _ in range(len(name) - len(rest) - 1):
                    base = base.parent
                target = base.joinpath(*rest.split(".")) if rest else base
                queue += [p for p in (target.with_suffix(".py"), target / "__init__.py") if p.is_file()]
            elif name.split(".")[0] in ("BrainTumorExplainLogic", "BrainTumorExplainLib"):
                top = name.split(".")[0]
                base = (module if top == "BrainTumorExplainLogic" else root) / Path(*name.split("."))
                queue += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
                if top == "BrainTumorExplainLogic" and base.with_suffix(".py").is_file():
                    queue.append(module / "BrainTumorExplainLogic" / "__init__.py")
            else:
                found[path].add(name)
    return found


def torchrun(*arguments: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=RANKS -m BrainTumorExplainLib ARGUMENTS`` (gloo on the CPU)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                           "-m", "BrainTumorExplainLib", *arguments], capture_output=True, text=True, timeout=600)
