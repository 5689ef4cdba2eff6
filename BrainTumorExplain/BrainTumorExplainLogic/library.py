"""Finding the BrainTumorExplainLib package, telling which of its Python dependencies are missing or too old, and how
they would be installed.

PyTorch comes from Slicer's PyTorch extension (``EXTENSION_DEPENDS PyTorch``): its ``installTorch`` uses
light-the-torch, which picks the build that fits this computer's NVIDIA driver. A plain ``pip install torch`` gives a
CPU-only build on Windows even with a GPU, so that fallback (a source checkout without the extension) is offered only
after saying so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping

# Import name → pip requirement of what the analysis process imports, with the project's minimum versions. They are
# pyproject.toml's (dependencies; the nnunet extra below), which does not ship with the extension:
# Testing/test_slicer_desktop.py keeps the two equal. torch is installed only with consent.
LIBRARY_REQUIREMENTS: dict[str, str] = {
    "numpy": "numpy>=1.24",
    "scipy": "scipy>=1.10",
    "SimpleITK": "SimpleITK>=2.2",
    "matplotlib": "matplotlib>=3.7",
    "tqdm": "tqdm>=4.60",
    "monai": "monai>=1.4",
    "yaml": "PyYAML>=5.4",
    "torch": "torch>=2.6",
}
# What an nnU-Net model folder needs besides (BrainTumorExplainLib.models.nnunet): its networks' package and nnU-Net's
# resizing (scikit-image).
NNUNET_REQUIREMENTS: dict[str, str] = {"dynamic_network_architectures": "dynamic-network-architectures>=0.4",
                                       "einops": "einops", "skimage": "scikit-image>=0.19.3"}
# Installed with --no-deps: it asks for timm (for its Primus and Eva networks only), whose torchvision would replace
# Slicer's PyTorch.
WITHOUT_DEPENDENCIES = ("dynamic-network-architectures", "einops")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:>=([0-9][0-9.]*))?$")


def requirement_parts(requirement: str) -> tuple[str, str]:
    """(project, minimum version or "") of a requirement of the tables above ("name" or "name>=X.Y")."""
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise ValueError(f"{requirement!r}: expected 'name' or 'name>=version'")
    return match.group(1), match.group(2) or ""


def release(version: str) -> tuple[int, ...]:
    """The release numbers a version starts with ("2.6.0+cu124" → (2, 6, 0)), without trailing zeros."""
    match = re.match(r"\d+(\.\d+)*", version)
    numbers = [int(part) for part in match.group(0).split(".")] if match else []
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def installed_version(module: str, project: str) -> str | None:
    """The installed version of ``project``; "" when ``module`` imports but pip knows no version of it (a package
    Slicer builds itself, such as its SimpleITK); None when it does not import."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(project)
    except importlib.metadata.PackageNotFoundError:
        return ""


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


def missing_dependencies(names: list[str] | None = None, network: str = "",
                         installed: Callable[[str, str], str | None] | None = None) -> dict[str, str | None]:
    """The pip requirements, for the given import names (default: all the library's, and an nnU-Net folder's when
    ``network`` is one), that are not met now → the version found (None: not installed; older than the minimum
    otherwise). ``installed``: (import name, project) → version, as :func:`installed_version`."""
    from BrainTumorExplainLib.data.bundle_metadata import is_nnunet_folder

    installed = installed or installed_version
    requirements = {**LIBRARY_REQUIREMENTS, **(NNUNET_REQUIREMENTS if network and is_nnunet_folder(network) else {})}
    unmet = {}
    for name in (list(requirements) if names is None else names):
        project, minimum = requirement_parts(requirements[name])
        found = installed(name, project)
        # a version pip does not know ("") is Slicer's own build of the package: taken as it is
        if found is None or (found and minimum and release(found) < release(minimum)):
            unmet[requirements[name]] = found
    return unmet


@dataclass(frozen=True)
class InstallPlan:
    """What would be installed, how, and the question that asks the user first."""

    packages: tuple[str, ...]  # pip requirements other than torch
    torch: str  # "" (present), "extension" (PyTorchUtils.installTorch) or "pip" (plain PyPI wheel)
    question: str
    without_dependencies: tuple[str, ...] = ()  # installed with --no-deps (WITHOUT_DEPENDENCIES)
    torch_requirement: str = ""  # torch's pip requirement ("torch>=2.6")

    @property
    def torch_version(self) -> str:
        """The version specifier alone (">=2.6"), as PyTorchUtils' installTorch takes it."""
        return self.torch_requirement[len(requirement_parts(self.torch_requirement)[0]):]


def has_pytorch_extension() -> bool:
    """Slicer's PyTorch extension (its PyTorchUtils module) is installed."""
    return importlib.util.find_spec("PyTorchUtils") is not None


def _listed(requirements: Iterable[str], found: Mapping[str, str | None]) -> str:
    return ", ".join(f"{name} (this Slicer has {found[name]})" if found.get(name) else name for name in requirements)


def install_plan(missing: Mapping[str, str | None] | Iterable[str], pytorch_extension: bool,
                 system: str | None = None) -> InstallPlan | None:
    """How to install ``missing`` (from :func:`missing_dependencies`: requirement → the older version found, or
    None; or the requirements alone); None when nothing is."""
    found = dict(missing) if isinstance(missing, Mapping) else dict.fromkeys(missing)
    if not found:
        return None
    system = system or platform.system()
    projects = {requirement: requirement_parts(requirement)[0] for requirement in found}
    torch = next((requirement for requirement, project in projects.items() if project == "torch"), "")
    alone = tuple(r for r, project in projects.items() if project in WITHOUT_DEPENDENCIES)
    others = tuple(r for r in found if r != torch and r not in alone)
    listed = _listed(others + alone, found)
    if not torch:
        return InstallPlan(others, "", f"BrainTumorExplain needs these Python packages, not installed in Slicer "
                                       f"(or too old) yet: {listed}. Install them now?", alone)
    minimum = requirement_parts(torch)[1]
    pytorch = f"PyTorch {minimum} or newer" if minimum else "PyTorch"
    if found[torch]:
        pytorch += (f" (this Slicer has {found[torch]}: it is upgraded, for every extension that uses it; restart "
                    "Slicer afterwards)")
    needs = f"BrainTumorExplain needs {pytorch}{' and ' + listed if listed else ''}."
    if pytorch_extension:
        how = ("PyTorch is installed by the PyTorch extension, which picks the build for this computer's GPU (a "
               "download of up to a few GB).")
        return InstallPlan(others, "extension", f"{needs} {how} Install now?", alone, torch)
    gpu_note = {"Windows": "On Windows this is a CPU-only build: an NVIDIA GPU will NOT be used.",
                "Darwin": "On macOS PyTorch runs on the CPU."}.get(
        system, "On Linux this is a CUDA build of several GB that uses an NVIDIA GPU when there is one.")
    return InstallPlan(others, "pip", f"{needs} The PyTorch extension is not installed. Recommended: install it from "
                                      "the Extensions Manager (it picks the PyTorch build for your GPU), restart "
                                      "Slicer and Apply again. Or install PyTorch from PyPI now with pip. " + gpu_note +
                                      " Install with pip now?", alone, torch)
