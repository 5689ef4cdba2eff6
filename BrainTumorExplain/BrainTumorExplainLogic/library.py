"""Finding the BrainTumorExplainLib package, telling which of its Python dependencies are missing, and how they
would be installed.

PyTorch comes from Slicer's PyTorch extension (``EXTENSION_DEPENDS PyTorch``): its ``installTorch`` uses
light-the-torch, which picks the build that fits this computer's NVIDIA driver. A plain ``pip install torch`` gives a
CPU-only build on Windows even with a GPU, so that fallback (a source checkout without the extension) is offered only
after saying so.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# Import name → pip requirement, for what Slicer's own Python may lack. torch is installed only with consent.
LIBRARY_REQUIREMENTS: dict[str, str] = {
    "numpy": "numpy",
    "scipy": "scipy",
    "SimpleITK": "SimpleITK",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "monai": "monai>=1.4",
    "torch": "torch",
}
# What an nnU-Net model folder needs besides (BrainTumorExplainLib.models.nnunet): its networks' package, installed with
# --no-deps — it asks for timm (for its Primus and Eva networks only), whose torchvision would replace Slicer's PyTorch.
NNUNET_REQUIREMENTS: dict[str, str] = {"dynamic_network_architectures": "dynamic-network-architectures",
                                       "einops": "einops"}


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


def missing_dependencies(names: list[str] | None = None, network: str = "") -> list[str]:
    """pip requirements for the given import names (default: all the library's, and an nnU-Net folder's when
    ``network`` is one) that cannot be imported now."""
    from BrainTumorExplainLib.data.bundle_metadata import is_nnunet_folder

    requirements = {**LIBRARY_REQUIREMENTS, **(NNUNET_REQUIREMENTS if network and is_nnunet_folder(network) else {})}
    names = list(requirements) if names is None else names
    return [requirements[n] for n in names if importlib.util.find_spec(n) is None]


@dataclass(frozen=True)
class InstallPlan:
    """What would be installed, how, and the question that asks the user first."""

    packages: tuple[str, ...]  # pip requirements other than torch
    torch: str  # "" (present), "extension" (PyTorchUtils.installTorch) or "pip" (plain PyPI wheel)
    question: str
    without_dependencies: tuple[str, ...] = ()  # installed with --no-deps (NNUNET_REQUIREMENTS)


def has_pytorch_extension() -> bool:
    """Slicer's PyTorch extension (its PyTorchUtils module) is installed."""
    return importlib.util.find_spec("PyTorchUtils") is not None


def install_plan(missing: list[str], pytorch_extension: bool, system: str | None = None) -> InstallPlan | None:
    """How to install ``missing`` (pip requirements from :func:`missing_dependencies`); None when nothing is."""
    if not missing:
        return None
    system = system or platform.system()
    alone = tuple(name for name in missing if name in NNUNET_REQUIREMENTS.values())
    others = tuple(name for name in missing if name != "torch" and name not in alone)
    listed = ", ".join(others + alone)
    if "torch" not in missing:
        return InstallPlan(others, "", f"BrainTumorExplain needs these Python packages, not installed in Slicer yet: "
                                       f"{listed}. Install them now?", alone)
    if pytorch_extension:
        how = ("PyTorch is installed by the PyTorch extension, which picks the build for this computer's GPU (a "
               "download of up to a few GB).")
        return InstallPlan(others, "extension", f"BrainTumorExplain needs PyTorch{' and ' + listed if listed else ''}. "
                                                f"{how} Install now?", alone)
    gpu_note = {"Windows": "On Windows this is a CPU-only build: an NVIDIA GPU will NOT be used.",
                "Darwin": "On macOS PyTorch runs on the CPU."}.get(
        system, "On Linux this is a CUDA build of several GB that uses an NVIDIA GPU when there is one.")
    return InstallPlan(others, "pip", "The PyTorch extension is not installed. Recommended: install it from the "
                                      "Extensions Manager (it picks the PyTorch build for your GPU), restart Slicer and "
                                      "Apply again. Or install PyTorch from PyPI now with pip. " + gpu_note +
                                      f" Install PyTorch{' and ' + listed if listed else ''} with pip now?", alone)
