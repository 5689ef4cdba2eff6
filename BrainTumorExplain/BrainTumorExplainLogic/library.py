"""Finding the BrainTumorExplainLib package and telling which of its Python dependencies are missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Import name → pip requirement, for what Slicer's own Python may lack. torch is installed only with consent.
LIBRARY_REQUIREMENTS: dict[str, str] = {
    "numpy": "numpy",
    "scipy": "scipy",
    "SimpleITK": "SimpleITK",
    "nibabel": "nibabel",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "torch": "torch",
}


def ensure_library_importable() -> None:
    """Make ``import BrainTumorExplainLib`` work.

    An installed extension has the library beside the module (the CMake install puts it in the scripted-modules
    folder, which Slicer puts on ``sys.path``); a source checkout added to Slicer's module paths has it one level up.
    """
    if importlib.util.find_spec("BrainTumorExplainLib") is not None:
        return
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "BrainTumorExplainLib" / "__init__.py").is_file():
        sys.path.insert(0, str(checkout))
        return
    raise ImportError(f"BrainTumorExplainLib not found beside the module or in {checkout}; reinstall the extension")


def library_folder() -> Path:
    """The folder that holds the ``BrainTumorExplainLib`` package (for a child process's PYTHONPATH)."""
    ensure_library_importable()
    return Path(importlib.util.find_spec("BrainTumorExplainLib").origin).parents[1]


def missing_dependencies(names: list[str] | None = None) -> list[str]:
    """pip requirements for the given import names (default: all) that cannot be imported now."""
    names = list(LIBRARY_REQUIREMENTS) if names is None else names
    return [LIBRARY_REQUIREMENTS[n] for n in names if importlib.util.find_spec(n) is None]
