"""A MONAI bundle folder (``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``) as a network
and its :class:`~models.description.NetworkDescription`, without running any code from the bundle.

* The network is ``network_def``: its ``_target_`` must name a class of ``monai.networks.nets`` and its arguments
  must be plain values — a ``$`` expression or an ``@`` reference could run anything, so it is refused by name unless
  the caller passes ``trust_code=True`` (then MONAI's own ``ConfigParser`` builds it).
* The weights are read with ``torch.load(weights_only=True)``: a state dict, or a checkpoint holding one under
  ``model`` (what MONAI's CheckpointSaver writes). A bundle with only ``models/model.ts`` (TorchScript, what MONAI's
  ``ckpt_export`` writes) holds its network as a program that runs from the file, so it loads only with
  ``trust_code=True``; forward hooks do not run inside a ScriptModule, so its description says so
  (``torchscript``) and the layer analyses refuse it, while segmentation and uncertainty by flips work.
* The channels come from ``network_data_format.inputs.image.channel_def``, the outputs from
  ``network_data_format.outputs.pred.channel_def`` and the postprocessing's activation, the window from the
  inferer, the normalisation, orientation and spacing from the preprocessing transforms. A transform this project
  does not reproduce is refused by name, never skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.bundle_metadata import (
    CLASS_ALIASES,
    REGION_ALIASES,
    bundle_configs,
    channel_names,
    input_channels,
    mapping,
    section,
)
from ..errors import InputError, WeightsError
from .description import CLASS_OUTPUTS, NetworkDescription

# Transforms whose effect the library reproduces (or that change nothing it reads); anything else is refused.
IGNORED_TRANSFORMS = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "EnsureTyped",
                      "EnsureType", "ToTensord", "ToTensor", "CastToTyped", "CastToType", "SaveImaged", "SaveImage",
                      "Invertd", "Invert", "CopyItemsd", "ToDeviced", "EnsureTyped"}
def _plain(value: Any, where: str, path: Path) -> Any:
    """``value`` when it holds no expression or reference, else :class:`InputError` naming it."""
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        raise InputError(f"{path}: {where} is {value!r}, an expression the bundle would run; pass --trust-bundle "
                         "to let MONAI evaluate the bundle's code")
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}", path) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{where}[{i}]", path) for i, v in enumerate(value)]
    return value


def build_network(definition: dict, path: Path, trust_code: bool = False) -> nn.Module:
    """The ``network_def`` of a bundle config as a module (see the module notes)."""
    if trust_code:
        from monai.bundle import ConfigParser

        parser = ConfigParser({"network_def": definition})
        return parser.get_parsed_content("network_def")
    import monai.networks.nets as nets

    definition = dict(mapping(_plain(definition, "network_def", path), "network_def", path))
    target = str(definition.pop("_target_", ""))
    name = target.removeprefix("monai.networks.nets.")
    network = getattr(nets, name, None) if "." not in name else None
    if not (isinstance(network, type) and issubclass(network, nn.Module)):
        raise InputError(f"{path}: network_def _target_ {target!r} is not a network class of monai.networks.nets; "
                         "pass --trust-bundle to let MONAI build it")
    try:
        return network(**{k: v for k, v in definition.items() if not k.startswith("_")})
    except (TypeError, ValueError) as error:  # wrong or inconsistent arguments
        raise InputError(f"{path}: network_def does not build {name}: {error}") from None


def load_bundle_weights(model: nn.Module, folder: Path, path: Path | None = None) -> None:
    """The bundle's ``models/model.pt`` — or another weights file of its network, ``path`` — into ``model``."""
    given, path = path is not None, path or folder / "models" / "model.pt"
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file" if given else
                           f"{path}: the bundle has no weights (models/model.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure: not a plain weights file
        raise WeightsError(f"{path}: not a readable weights file ({type(error).__name__}: {str(error)[:120]})") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: neither a state dict nor a checkpoint holding one under 'model'")
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise WeightsError(f"{path}: the weights hold NaN or infinite values")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        raise WeightsError(f"{path}: the weights do not fit the bundle's network: {first[0].strip()[:160]}") from None


def _preprocessing(config: dict, path: Path) -> dict:
    """Normalisation, axes and spacing from the preprocessing transforms; unknown transforms refused."""
    found = {"normalisation": None, "axes": "LPS", "spacing_mm": None}  # LoadImage keeps a BraTS file's LPS order
    for transform in _transforms(config, "preprocessing", path):
        name = str(transform.get("_target_", "")).split(".")[-1]
        if name in IGNORED_TRANSFORMS:
            continue
        if name in ("NormalizeIntensityd", "NormalizeIntensity"):
            if not (transform.get("nonzero") and transform.get("channel_wise")):
                raise InputError(f"{path}: NormalizeIntensityd without nonzero=True and channel_wise=True is not "
                                 "reproduced here")
            found["normalisation"] = "zscore-nonzero-channelwise"
        elif name in ("Orientationd", "Orientation"):
            found["axes"] = str(_plain(transform.get("axcodes", "RAS"), "Orientationd.axcodes", path))
        elif name in ("Spacingd", "Spacing"):
            found["spacing_mm"] = tuple(float(v) for v in _plain(transform.get("pixdim"), "Spacingd.pixdim", path))
        else:
            raise InputError(f"{path}: the preprocessing uses {name}, which this project does not reproduce; "
                             "explaining the network without it would feed it other inputs than it was trained on")
    if found["normalisation"] is None:
        raise InputError(f"{path}: no NormalizeIntensityd in the preprocessing: the intensities the network expects "
                         "are unknown")
    return found


def _transforms(config: dict, where: str, path: Path) -> list[dict]:
    """The transforms of the config's ``where`` (preprocessing, postprocessing), each a mapping."""
    transforms = section(config, where, path).get("transforms") or []
    if not isinstance(transforms, list):
        raise InputError(f"{path}: {where}.transforms is a {type(transforms).__name__}, not a list")
    return [mapping(transform, f"{where}.transforms[{i}]", path) for i, transform in enumerate(transforms)]


def _outputs(config: dict, metadata: dict, path: Path, metadata_path: Path) -> tuple[str, tuple[str, ...]]:
    post = _transforms(config, "postprocessing", path)
    activations = [t for t in post if str(t.get("_target_", "")).split(".")[-1] in ("Activationsd", "Activations")]
    kind = "sigmoid" if activations and activations[0].get("sigmoid") else "softmax"
    names = section(metadata, "network_data_format.outputs.pred.channel_def", metadata_path)
    if not names:
        raise InputError(f"{metadata_path}: network_data_format.outputs.pred.channel_def is missing: what the "
                         "outputs mean is unknown")
    aliases = REGION_ALIASES if kind == "sigmoid" else {name: CLASS_ALIASES[name] for name in CLASS_OUTPUTS}
    return kind, channel_names(names, aliases, "output", metadata_path)


def _describe(folder: Path, metadata: dict, config: dict, config_path: Path, model: nn.Module | None
              ) -> NetworkDescription:
    """The description of a bundle from its configs; ``model``: its network as built (None: TorchScript, whose
    layers cannot be analysed and whose dropout cannot be switched on alone)."""
    channels = input_channels(folder)
    inferer = _plain(section(config, "inferer", config_path), "inferer", config_path)
    window = tuple(int(v) for v in inferer["roi_size"]) if "roi_size" in inferer else None
    kind, output_names = _outputs(config, metadata, config_path, folder / "configs" / "metadata.json")
    prepared = _preprocessing(config, config_path)
    return NetworkDescription(
        name=str(metadata.get("name") or folder.name), spatial_dims=3,
        channels=channels,
        normalisation=prepared["normalisation"], outputs=kind, output_names=output_names, axes=prepared["axes"],
        layers=discover_layers(model) if model is not None else {},
        dropout=model is not None and any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                                          for m in model.modules()),
        window=window, overlap=float(inferer.get("overlap", 0.25)), blend=str(inferer.get("mode", "constant")),
        spacing_mm=prepared["spacing_mm"], resampling="linear",  # as MONAI's Spacingd
        torchscript=model is None)


def read_bundle(folder: str | Path, trust_code: bool = False) -> tuple[nn.Module, NetworkDescription]:
    """A MONAI bundle's network, built but without its weights, and its description — what loading and training a
    bundle both read from its configs."""
    folder = Path(folder)
    metadata, config, config_path = bundle_configs(folder)
    if "network_def" not in config:
        raise InputError(f"{config_path}: no network_def")
    model = build_network(config["network_def"], config_path, trust_code)
    return model, _describe(folder, metadata, config, config_path, model)


def load_bundle(folder: str | Path, device: str | torch.device = "cpu", trust_code: bool = False
                ) -> tuple[nn.Module, NetworkDescription]:
    """A MONAI bundle's network (weights loaded, eval mode, on ``device``) and its description; a bundle whose only
    weights are ``models/model.ts`` as its TorchScript module (see the module notes)."""
    folder = Path(folder)
    scripted = folder / "models" / "model.ts"
    if not (folder / "models" / "model.pt").is_file() and scripted.is_file():
        return _load_torchscript(folder, scripted, device, trust_code)
    model, description = read_bundle(folder, trust_code)
    load_bundle_weights(model, folder)
    return model.to(device).eval(), description


def _load_torchscript(folder: Path, path: Path, device: str | torch.device, trust_code: bool
                      ) -> tuple[nn.Module, NetworkDescription]:
    if not trust_code:
        raise InputError(f"{path}: a TorchScript network is a program stored in the file, run when the network runs; "
                         "pass --trust-bundle to run it (or give the bundle its weights as models/model.pt)")
    metadata, config, config_path = bundle_configs(folder)
    description = _describe(folder, metadata, config, config_path, None)
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # any failure to read the archive: not a usable TorchScript file
        raise WeightsError(f"{path}: not a readable TorchScript file ({type(error).__name__}: "
                           f"{str(error).splitlines()[0][:120]})") from None
    return module.eval(), description


def discover_layers(model: nn.Module) -> dict[str, str]:
    """Stable names of the layers worth analysing, for any network: the module tree's top two levels that hold a
    convolution (named by their module path, which is what ``--layers`` selects), in forward-definition order.
    The last module of a listed ``nn.Sequential`` is left out: its output is the block's (MONAI's ``Convolution``
    and ``conv_final`` are such blocks), and one map twice is twice the work for nothing."""
    layers = {}
    modules = dict(model.named_modules())
    for path, module in modules.items():
        parent, _, child = path.rpartition(".")
        if parent in layers and isinstance(modules[parent], nn.Sequential) and child == list(
                modules[parent]._modules)[-1]:
            continue
        if path and path.count(".") <= 1 and not isinstance(module, (nn.ModuleList, nn.ModuleDict)) and any(
                isinstance(m, nn.modules.conv._ConvNd) for m in module.modules()):
            layers[path] = path
    return layers
