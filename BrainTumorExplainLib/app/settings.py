"""The settings of a run, stated once: names, defaults, allowed values and help.

``explain``'s command-line options are built from :class:`ExplainConfig`'s fields (:func:`add_config_options`; every
other verb's from its settings in :mod:`app.verbs` the same way), the Slicer panel passes a config back as arguments
(:meth:`ExplainConfig.arguments`), and the panel's choices are the tuples below — so adding an option is one field
here. torch is not imported here (the Slicer module reads this).
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from ..analyses import (
    CONTROL_SEED,
    DEFAULT_IOU_CUTOFF,
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    GRADCAM_POOLS,
    GRADCAM_TARGET_NAMES,
    GRADCAM_TARGETS,
    THRESHOLD_REGIONS,
)
from ..data.atlas import ATLAS_MODES
from ..data.bundle_metadata import is_nnunet_folder
from ..data.preprocess import check_brain_mask
from ..data.registration import ALIGNMENT_TOLERANCE_MM
from ..errors import UsageError

MODEL_NAMES: tuple[str, ...] = ("denseunet", "resunet", "simunet", "segresnet3d")  # models.SHIPPED_NETWORKS
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")  # the command line also takes cuda:N
GRADCAM_CLASS_CHOICES: tuple[str, ...] = ("tumour", "all", "ncr", "ed", "et")  # also comma-separated lists
# How test-time dropout samples, by name (the panel's choices) → ExplainConfig.quick (see resolve_quick).
UNCERTAINTY_MODES: dict[str, bool | None] = {"auto": None, "quick": True, "full": False}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_quick(quick: bool | None, device_type: str) -> bool:
    """Whether test-time dropout runs quick (adaptive) on a device of ``device_type``: as asked, else quick on a CPU
    and the full passes on a GPU (``ExplainConfig.quick`` None, the default)."""
    return quick if quick is not None else device_type == "cpu"


def uncertainty_mode(quick: bool | None) -> str:
    """The name (:data:`UNCERTAINTY_MODES`) of an ``ExplainConfig.quick`` value."""
    return next(name for name, value in UNCERTAINTY_MODES.items() if value is quick)


def check_device_name(name: str) -> str:
    """``name`` when it is a device the project runs on (auto, cpu, cuda, cuda:N), else :class:`UsageError`."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise UsageError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return name


def resolve_device(name: str):
    """The torch device for ``name``; ``auto`` is the first CUDA GPU when PyTorch sees one (under torchrun, the
    rank's own: :func:`ranks.own_gpu`), else the CPU. A CUDA device PyTorch cannot use is a :class:`UsageError`
    naming what PyTorch sees."""
    import torch

    from ..ranks import own_gpu

    check_device_name(name)
    if name == "auto":
        return torch.device(own_gpu() if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise UsageError(f"--device {name}: PyTorch {torch.__version__} ({build}) sees no CUDA GPU; use --device "
                             "cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def check_number(value, flag: str, kind: type = float, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None, below: float | None = None):
    """``value`` (the text given, or a number) as a finite ``kind`` within the bounds, else one :class:`UsageError`
    naming ``flag`` and the value — a range check alone lets NaN through (it compares false with everything)."""
    bounds = [f"{sign} {bound:g}" for sign, bound in (("≥", minimum), (">", above), ("≤", maximum), ("<", below))
              if bound is not None]
    wanted = f"{'an integer' if kind is int else 'a finite number'}{' ' if bounds else ''}{' and '.join(bounds)}"
    try:
        number = kind(value) if isinstance(value, str) else value
    except ValueError:
        raise UsageError(f"{flag} {value}: expected {wanted}") from None
    if not (math.isfinite(number) and (minimum is None or number >= minimum) and (above is None or number > above)
            and (maximum is None or number <= maximum) and (below is None or number < below)):
        raise UsageError(f"{flag} {value}: expected {wanted}")
    return number


class _Number(argparse.Action):
    """A numeric option checked when given (:func:`check_number`); the error names the option as typed."""

    def __init__(self, option_strings, dest, kind: type = float, minimum=None, above=None, maximum=None, below=None,
                 **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.bounds = {"kind": kind, "minimum": minimum, "above": above, "maximum": maximum, "below": below}

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        setattr(namespace, self.dest, check_number(value, option_string, **self.bounds))


def number_option(kind: type = float, **bounds) -> dict:
    """``add_argument``'s keywords for a numeric option: a finite ``kind`` within ``bounds`` (minimum, above,
    maximum, below: :func:`check_number`), refused as one ``error:`` line otherwise."""
    return {"action": _Number, "kind": kind, **bounds}


def split_files(text: str | None) -> list[str]:
    """File names given comma-separated (``--ensemble A.pt,B.pt``), in order, blanks dropped."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def option(default, help: str, **cli):
    """A setting: its default, its help text and how the command line spells it (``flags``, ``choices``, ...)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class ExplainConfig:
    """Everything ``explain`` can be asked; the defaults are the command line's and the panel's."""

    model: str = option("denseunet", f"network: {', '.join(MODEL_NAMES)} (shipped weights), a MONAI bundle "
                        "folder or an nnU-Net trained-model folder", metavar="NAME|FOLDER")
    folds: str | None = option(None, "an nnU-Net folder's folds: all (default: every numbered fold, their ensemble "
                               "as nnU-Net predicts; the uncertainty is their disagreement), numbers like 0,1,2, or "
                               "fold_all (nnU-Net's -f all)", metavar="all|K,K,…|fold_all")
    weights: str | None = option(None, "your own weights file instead of the shipped ones", metavar="FILE")
    trust_bundle: bool = option(False, "run a bundle's own code: the expressions of its configs (MONAI builds its "
                                "network) or its TorchScript network (models/model.ts)")
    ensemble: str | None = option(None, "two or more weights files of the network, comma-separated: the "
                                  "uncertainty is their disagreement (an ensemble) instead of test-time dropout",
                                  metavar="FILE,FILE,…")
    dissection: str | None = option(None, "dissection.json from `dissect` (default: the model's shipped one)",
                                    metavar="FILE")
    device: str = option("auto", "auto (a CUDA GPU when PyTorch sees one), cpu, cuda or cuda:N",
                         type="device")
    quick: bool | None = option(None, "adaptive test-time dropout; default: quick on a CPU, -T passes on a GPU",
                                flags=("--quick", "--full"))
    passes: int = option(100, "test-time dropout passes when not quick (the paper's 100)", flags=("-T", "--passes"),
                         minimum=2)
    layers: str = option("all", "Grad-CAM layers: 'all' or comma-separated names")
    classes: str = option("tumour", "Grad-CAM classes: 'tumour', 'all' or e.g. ed,et")
    gradcam_target: str = option("probabilities", "Grad-CAM's y(c): the network's probabilities (the paper's "
                                 "softmax; softmax is accepted as their name) or its logits",
                                 choices=GRADCAM_TARGETS + tuple(GRADCAM_TARGET_NAMES))
    gradcam_pool: str = option("image", "where Grad-CAM's y(c) averages the output: the whole image (the paper's "
                               "eq. 3), or the voxels the network labels c (predicted: pytorch-grad-cam's masked "
                               "segmentation target)",
                               choices=GRADCAM_POOLS)
    featviz_steps: int = option(100, "activation maximisation steps", minimum=1)
    featviz_size: int = option(96, "pre-image size in pixels", minimum=16)
    featviz_size_3d: int = option(32, "a 3D network's pre-image size in voxels per side", minimum=16)
    seed: int = option(0, "seed of the dropout masks and the feature visualisation", minimum=0)
    coregister: str = option("auto", "co-register T1, T1ce and T2 rigidly onto the FLAIR (mutual information): auto "
                             "— when the four files are not on one grid, as separate acquisitions are, or when a "
                             f"quick measurement finds a sequence off by more than {ALIGNMENT_TOLERANCE_MM:g} mm —, "
                             "always or never",
                             choices=("auto", "always", "never"))
    atlas: str = option("auto", "turn the head rigidly into the pose of the atlas (MNI ICBM152) on the way into the "
                        "network's space: auto — for a raw acquisition (sequences on different grids, or not "
                        "skull-stripped) —, always or never",
                        choices=ATLAS_MODES)
    brain_mask: str = option("auto", "the brain the analyses see: auto — a skull-stripped scan's own, less the "
                             "partial-volume rim of a scan interpolated after stripping, else the atlas's (coarser "
                             "than a learned skull-stripper) —, atlas, as-read (the voxels non-zero in any file), or "
                             "your mask file (non-zero = brain, on any grid)", metavar="auto|atlas|as-read|FILE")
    resample: bool = option(True, "resample a case that is off the network's training grid (voxel size, oblique "
                            "axes) into it; the results go back onto the case's own grid")
    overwrite: bool = option(False, "replace OUT (an earlier result) once the new run is complete")
    full_resolution: bool = option(False, "write the Grad-CAM and uncertainty maps as float32, as computed "
                                   "(default: 8-bit levels with each map's own scale in the NIfTI header: a tenth of "
                                   "the size or less, within half a level of the float map)")
    scene: bool | None = option(None, "write scene.mrb for 3D Slicer (refused before any work if slicer-core is "
                                "missing); default: when slicer-core is installed", flags=("--scene", "--no-scene"))

    def __post_init__(self) -> None:
        """Refuse what cannot run, before any work (layer names are checked against the model when it is loaded)."""
        from ..data.labels import resolve_classes

        check_device_name(self.device)
        if self.model not in MODEL_NAMES and not Path(self.model).is_dir():
            raise UsageError(f"--model {self.model}: not a shipped network ({', '.join(MODEL_NAMES)}) nor a folder")
        if self.folds is not None and not is_nnunet_folder(self.model):
            raise UsageError(f"--folds goes with an nnU-Net trained-model folder; {self.model} is not one")
        if self.ensemble is not None and len(self.ensemble_files()) < 2:
            raise UsageError(f"--ensemble {self.ensemble}: an ensemble needs at least two weights files, "
                             "comma-separated")
        _check_numbers(self)
        try:
            resolve_classes(self.classes)
        except ValueError as error:
            raise UsageError(f"--classes {self.classes}: {error}") from None
        _require_layers(self.layers)
        check_brain_mask(self.brain_mask)

    def ensemble_files(self) -> list[str]:
        """The weights files of ``--ensemble``, in the order given (empty without one)."""
        return split_files(self.ensemble)

    def arguments(self) -> list[str]:
        """The command-line options that give this config back (:func:`config_from_arguments`)."""
        arguments: list[str] = []
        for setting in fields(self):
            value, flags = getattr(self, setting.name), _flags(setting)
            if value is None:
                continue
            if setting.type == "bool | None":  # --quick / --full
                arguments.append(flags[0] if value else flags[1])
            elif setting.type == "bool":  # one switch that flips the default
                arguments += [flags[0]] if value != setting.default else []
            else:
                arguments += [flags[-1], str(value)]
        return arguments


@dataclass(frozen=True)
class DissectConfig:
    """What ``dissect`` can be asked beyond its data, network and output folder (paper §3.1, with our controls)."""

    layers: str = option("all", "'all' or comma-separated layer names")
    concepts: str | None = option(None, "comma-separated concepts (default: every concept all cases have ground "
                                  "truth for)")
    quantile: float = option(DEFAULT_QUANTILE, "each filter's threshold quantile over the dataset (the paper's: its "
                             "top hundredth of activations)", above=0, below=1)
    iou: float = option(DEFAULT_IOU_CUTOFF, "IoU a detector must reach", minimum=0, maximum=1)
    margin: float = option(DEFAULT_MARGIN, "IoU by which a detector must beat the best control of its concept",
                           minimum=0, maximum=1)
    control_seed: int = option(CONTROL_SEED, "seed of the random-weights control", minimum=0)
    controls: bool = option(True, "measure the controls, the same architecture with random weights and the raw "
                            "input (up to as long again as the network itself; without them every filter over the "
                            "cutoff is reported, and the results say that no control was measured)")
    slice_step: int = option(1, "use every N-th brain slice (1: all)", minimum=1)
    threshold_region: str = option("image", "where each filter's threshold quantile is taken: 'image', a 2D "
                                   "network's whole slices (the paper's; a 3D network's brain box), or 'brain-box', "
                                   "the brain's bounding box in either", choices=THRESHOLD_REGIONS)
    per_case: bool = option(False, "keep each case's IoU sums in dissection.json, for held-out halves and bootstrap "
                            "intervals over the cases (the file grows about as many times as there are cases)")
    mask_cases: int | None = option(None, "write concept-mask volumes for the first N cases only (default: all)",
                                    minimum=0)
    batch_size: int = option(16, "slices per forward pass", minimum=1)

    def __post_init__(self) -> None:
        _check_numbers(self)
        _require_layers(self.layers)

    def concept_names(self) -> list[str] | None:
        """The concepts asked for, or None for every one the cases have ground truth for."""
        return split_files(self.concepts) or None


_BOUNDS = ("minimum", "above", "maximum", "below")
# a setting's annotation → the number it holds
_NUMBERS = {"int": int, "int | None": int, "float": float, "float | None": float}


def _require_layers(layers: str) -> None:
    if not layers.strip():
        raise UsageError("--layers: give 'all' or layer names")


def _check_numbers(config) -> None:
    """A config's numbers checked as the command line checks them (one error naming the flag)."""
    for setting in fields(config):
        value = getattr(config, setting.name)
        if setting.type in _NUMBERS and value is not None:
            check_number(value, _flags(setting)[-1], _NUMBERS[setting.type],
                         **{bound: setting.metadata[bound] for bound in _BOUNDS if bound in setting.metadata})


CASE_PREPARATION = ("coregister", "atlas", "brain_mask")  # the settings every single-case verb takes from explain


def help_of(name: str, config_type=ExplainConfig) -> str:
    """The help text of a setting (for a verb that takes one setting of ``explain`` as its own option)."""
    return next(setting.metadata["help"] for setting in fields(config_type) if setting.name == name)


def option_flags(name: str, config_type=ExplainConfig) -> tuple[str, ...]:
    """The command-line flags of a setting (``trust_bundle`` → ``("--trust-bundle",)``; ``quick`` → ``--quick`` and
    ``--full``): what the Slicer panel replaces with its own controls' names in the run's messages."""
    return _flags(next(setting for setting in fields(config_type) if setting.name == name))


def _flags(setting) -> tuple[str, ...]:
    if "flags" in setting.metadata:
        return setting.metadata["flags"]
    flag = "--" + setting.name.replace("_", "-")
    if setting.type == "bool" and setting.default is True:
        return ("--no-" + setting.name.replace("_", "-"),)
    return (flag,)


def add_config_options(parser: argparse.ArgumentParser, config_type=ExplainConfig, exclude: tuple[str, ...] = (),
                       only: tuple[str, ...] | None = None) -> None:
    """One option per field of ``config_type`` (its help, default and choices; ``required``, or ``positional`` with
    its ``nargs``), in field order; ``only`` these fields when given."""
    for setting in fields(config_type):
        if setting.name in exclude or (only is not None and setting.name not in only) or "help" not in setting.metadata:
            continue  # (a field without help is no option: the verb asks for it its own way, or not at all)
        meta, flags = setting.metadata, _flags(setting)
        default = None if setting.default is MISSING else setting.default
        if meta.get("positional"):
            parser.add_argument(setting.name, nargs=meta.get("nargs"), help=meta["help"], **_value_type(setting))
        elif setting.type == "bool | None":
            group = parser.add_mutually_exclusive_group()
            group.add_argument(flags[0], dest=setting.name, action="store_true", default=None, help=meta["help"])
            group.add_argument(flags[1], dest=setting.name, action="store_false", help=f"not {flags[0]}")
        elif setting.type == "bool":
            parser.add_argument(*flags, dest=setting.name, action="store_false" if default else "store_true",
                                help=f"do not {meta['help']}" if default else meta["help"])
        else:
            parser.add_argument(*flags, dest=setting.name, default=default, choices=meta.get("choices"),
                                metavar=meta.get("metavar"), required=meta.get("required", False),
                                help=meta["help"] + (f" (default {default})" if default is not None else ""),
                                **_value_type(setting))


def _value_type(setting) -> dict:
    """How the command line reads a setting's value: a checked number, a device name, a path or text."""
    meta = setting.metadata
    if setting.type in _NUMBERS:
        return number_option(_NUMBERS[setting.type], **{bound: meta[bound] for bound in _BOUNDS if bound in meta})
    if meta.get("type") == "device":
        return {"type": _device_option}
    return {"type": Path if setting.type in ("Path", "Path | None") else str}


def _device_option(text: str) -> str:
    try:
        return check_device_name(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error).split(": ", 1)[1]) from None


def config_from_arguments(args: argparse.Namespace, config_type=ExplainConfig, **overrides):
    """The config the parsed options describe (fields not on the command line keep their defaults)."""
    given = {setting.name: getattr(args, setting.name) for setting in fields(config_type)
             if hasattr(args, setting.name)}
    return config_type(**{**given, **overrides})
