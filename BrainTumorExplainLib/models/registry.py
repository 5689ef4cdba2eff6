"""Building networks by name, and saving/loading weights safely.

A weights file is ``torch.save`` of a plain dict — ``format``, ``library_version``, ``architecture``, ``config``,
``metadata``, ``state_dict`` and ``checksum`` — read back with ``torch.load(weights_only=True)``, so loading never
runs code from the file. ``checksum`` is the sha256 of everything else in the dict (:func:`payload_checksum`): torch
does not check its zip, so a flipped byte would otherwise load as a different network. Files without one (written
before it existed) load with a warning; parameters that are NaN or infinite are refused. Shipped
weights sit in ``BrainTumorExplainLib/weights/<name>.pt`` beside ``<name>.json``, a manifest whose ``sha256`` is
checked before the file is even unpickled — wherever a weights file lies, when such a manifest lies beside it. A
shipped file re-shipped since issue 35 (ResUnet) is stored in half precision (:func:`save_weights`) with its own
checksum; DenseUnet's and SimUnet's predate both, and are verified only with their manifests.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.bundle_metadata import is_bundle, is_nnunet_folder
from ..errors import UsageError, WeightsError
from ..version import __version__
from .base import SegmentationNet, check_finite
from .bundle import load_bundle, load_bundle_weights, read_bundle
from .denseunet import DenseUnet
from .nnunet import CHECKPOINT, Mirrored, SliceNetwork, build_network, read_checkpoint, read_nnunet_folder, stage_layers
from .unet import ResUnet, SimUnet
from .volume import DescribedNetwork

ARCHITECTURES: dict[str, type[SegmentationNet]] = {"denseunet": DenseUnet, "resunet": ResUnet, "simunet": SimUnet}
SHIPPED_BUNDLES = ("segresnet3d",)  # MONAI bundle folders in WEIGHTS_DIR (app/bundle_training.py)
SHIPPED_NETWORKS = tuple(ARCHITECTURES) + SHIPPED_BUNDLES
WEIGHTS_FORMAT = 1
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def build_model(name: str, **config: Any) -> SegmentationNet:
    """A freshly initialised network. ``name`` is ``denseunet``, ``resunet`` or ``simunet``.

    Weights are kept channels-last, the layout ``SegmentationNet.forward`` gives its inputs, so no forward pass
    converts between layouts.
    """
    try:
        architecture = ARCHITECTURES[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; valid models: {', '.join(ARCHITECTURES)}") from None
    return architecture(**config).to(memory_format=torch.channels_last)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(model: SegmentationNet, path: str | Path, *, half: bool = False, **metadata: Any) -> str:
    """Write ``model``'s weights (CPU tensors) with what rebuilds it; returns the file's sha256.

    ``half`` stores the floating-point tensors in float16, half the bytes (how the shipped weights are kept: every
    re-shipped file stays in the repository's history); loading casts them back into the network's float32
    parameters. Whether that rounding changes a network's labels is measured when it is shipped
    (scripts/ship_weights.py), not assumed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = torch.float16 if half else None
    payload = {
        "format": WEIGHTS_FORMAT,
        "library_version": __version__,
        "architecture": model.architecture,
        "config": dict(model.config),
        "metadata": metadata,
        "state_dict": {k: v.detach().cpu().to(stored) if stored and v.is_floating_point() else v.detach().cpu()
                       for k, v in model.state_dict().items()},
    }
    check_finite(payload["state_dict"], path)
    payload["checksum"] = payload_checksum(payload)
    torch.save(payload, path)
    return sha256_of(path)


def payload_checksum(payload: dict[str, Any]) -> str:
    """sha256 of a weights payload without its ``checksum``: the metadata as canonical JSON, then every tensor's
    name, dtype, shape and bytes in name order."""
    digest = hashlib.sha256()
    header = {key: value for key, value in payload.items() if key not in ("checksum", "state_dict")}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name in sorted(payload["state_dict"]):
        tensor = payload["state_dict"][name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_weights(path: str | Path, *, expected_sha256: str | None = None, architecture: str | None = None,
                 device: str | torch.device = "cpu") -> SegmentationNet:
    """Rebuild a network from a weights file, in eval mode on ``device``.

    Raises:
        WeightsError: missing file, checksum mismatch, not a weights file of this format, or (with ``architecture``)
            weights of another network.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file does not exist")
    expected_sha256 = expected_sha256 or _manifest_sha256(path)
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise WeightsError(f"{path}: checksum mismatch (sha256 {actual[:12]}…, manifest says "
                               f"{expected_sha256[:12]}…); the file was changed or damaged — refusing to load it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure means: not our weights file
        raise WeightsError(f"{path}: not a readable weights file ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT or "state_dict" not in payload:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise WeightsError(f"{path}: weights format {found!r} is not the supported format {WEIGHTS_FORMAT}")
    _check_integrity(payload, path, verified=expected_sha256 is not None)
    stored = payload.get("architecture")
    if stored not in ARCHITECTURES:
        raise WeightsError(f"{path}: unknown architecture {stored!r} in the file")
    if architecture is not None and stored != architecture:
        raise WeightsError(f"{path}: holds {stored} weights, not {architecture}")
    model = build_model(stored, **payload.get("config", {}))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        raise WeightsError(f"{path}: weights do not fit {stored} with config {payload.get('config')}: "
                           f"{first[0].strip()[:160]}") from None
    metadata = payload.get("metadata") or {}
    if metadata.get("training_spacing_mm") is not None:  # written by `train`; older files were trained at the default
        model.training_spacing_mm = tuple(float(s) for s in metadata["training_spacing_mm"])
    model.intensity_reference = metadata.get("intensity_reference")  # written by `train` since issue 35
    return model.to(device).eval()


def _check_integrity(payload: dict[str, Any], path: Path, verified: bool) -> None:
    """The payload's own checksum, then its values. ``verified``: the whole file was checked against a manifest."""
    if not isinstance(payload.get("state_dict"), dict) or not all(
            isinstance(value, torch.Tensor) for value in payload["state_dict"].values()):
        raise WeightsError(f"{path}: its state_dict is not a mapping of tensors")
    if "checksum" in payload:
        if payload["checksum"] != payload_checksum(payload):
            raise WeightsError(f"{path}: the weights do not match the checksum stored in the file: it was changed or "
                               "damaged after it was written — refusing to load it")
    elif not verified:
        warnings.warn(f"{path}: UNVERIFIED weights: this file has no checksum (written before they were stored) and "
                      f"no manifest beside it ({path.with_suffix('.json').name}) gives one, so damage to it cannot be "
                      "detected and would load as another network; put its manifest beside it (a shipped file's "
                      "<name>.json) or save it again with this version to add a checksum", stacklevel=3)
    check_finite(payload["state_dict"], path)


def _manifest_sha256(path: Path) -> str | None:
    """The sha256 that a manifest beside ``path`` gives it: ``<stem>.json`` naming the file as its ``weights``, as
    each shipped file has; None where there is none."""
    try:
        manifest = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("weights") != path.name:
        return None  # another JSON file, not this file's manifest
    if not isinstance(manifest.get("sha256"), str):
        raise WeightsError(f"{path.with_suffix('.json')}: the manifest of {path.name} has no sha256 to check it with")
    return manifest["sha256"]


def pretrained_manifest(name: str) -> dict[str, Any]:
    """The manifest of a shipped network (training, held-out scores, and the sha256 of its weights file — or, for a
    bundle, of every file of its folder)."""
    if name not in SHIPPED_NETWORKS:
        raise UsageError(f"unknown model {name!r}; valid models: {', '.join(SHIPPED_NETWORKS)}")
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        raise WeightsError(f"no shipped weights for {name} ({path} missing)")
    try:
        manifest = json.loads(path.read_text())
        if name in SHIPPED_BUNDLES:
            manifest["bundle"], dict(manifest["files"])
        else:
            manifest["weights"], manifest["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{path}: the manifest of the shipped {name} weights is damaged ({type(error).__name__}: "
                           f"{str(error)[:120]}); reinstall the package") from None
    return manifest


def bundle_files(folder: Path) -> dict[str, str]:
    """sha256 of every file of a bundle folder, by its path inside it (what a shipped bundle's manifest holds)."""
    return {path.relative_to(folder).as_posix(): sha256_of(path)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def load_shipped_bundle(name: str, device: str | torch.device = "cpu"):
    """A shipped bundle as a :class:`models.volume.DescribedNetwork`, every file checked against its manifest first."""
    return DescribedNetwork(*load_bundle(verified_bundle_folder(name), device))


def verified_bundle_folder(name: str) -> Path:
    """The folder of a shipped bundle, every file checked against its manifest's sha256 first."""
    manifest = pretrained_manifest(name)
    folder = WEIGHTS_DIR / manifest["bundle"]
    found = bundle_files(folder) if folder.is_dir() else {}
    for relative, expected in manifest["files"].items():
        if found.get(relative) != expected:
            problem = "is missing" if relative not in found else "does not match its manifest's sha256"
            raise WeightsError(f"{folder / relative}: {problem}: the shipped {name} bundle was changed or damaged; "
                               "reinstall the package")
    return folder


def load_ensemble(name: str, files: Sequence[str | Path], device: str | torch.device = "cpu",
                  trust_code: bool = False) -> list:
    """The members of an ensemble: one network per weights file, each of ``name``'s architecture — our weights
    files for a 2D network, or the state dicts of a bundle's network (its ``network_def``, as ``models/model.pt``
    holds them) for a bundle folder or the shipped 3D network. Each file loads with ``weights_only=True``."""
    if len(files) < 2:
        raise UsageError(f"--ensemble {','.join(map(str, files))}: an ensemble needs at least two weights files")
    folder = verified_bundle_folder(name) if name in SHIPPED_BUNDLES else Path(name) if is_bundle(name) else None
    if folder is None:
        return [load_weights(path, architecture=name, device=device) for path in files]
    members = []
    for path in files:
        module, description = read_bundle(folder, trust_code)
        load_bundle_weights(module, folder, Path(path))
        members.append(DescribedNetwork(module.to(device).eval(), description))
    return members


def load_pretrained(name: str, device: str | torch.device = "cpu") -> SegmentationNet:
    """A shipped 2D model in eval mode, its checksum verified against its manifest (the shipped 3D bundle:
    :func:`load_model`)."""
    if name in SHIPPED_BUNDLES:
        raise UsageError(f"{name} is the shipped 3D network (a MONAI bundle), not one of {', '.join(ARCHITECTURES)}: "
                         "load it with load_model (on the command line, a verb's --model takes it)")
    manifest = pretrained_manifest(name)
    return load_weights(WEIGHTS_DIR / manifest["weights"], expected_sha256=manifest["sha256"], architecture=name,
                        device=device)


def load_model(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu",
               trust_code: bool = False, folds: str | None = None):
    """The network every command means by ``--model NAME [--weights FILE]``: the shipped weights of ``name``, your
    own file of that architecture, or — when ``name`` is a MONAI bundle folder or an nnU-Net trained-model folder
    (``folds``: which of its folds, :func:`models.nnunet.choose_folds`) — that network with its description
    (:class:`models.volume.DescribedNetwork`); in eval mode on ``device``."""
    if is_nnunet_folder(name):
        if weights:
            raise UsageError("--weights goes with a shipped network; an nnU-Net folder brings its own "
                             "(fold_k/checkpoint_final.pth; --folds chooses them)")
        return load_nnunet(name, folds, device)
    if folds is not None:
        raise UsageError(f"--folds goes with an nnU-Net trained-model folder; {name} is not one (no plans.json and "
                         "dataset.json)")

    if name in SHIPPED_BUNDLES:
        if weights:
            raise UsageError(f"--weights goes with denseunet, resunet or simunet; {name} is a bundle and brings its "
                             "own")
        return load_shipped_bundle(name, device)
    if is_bundle(name):
        if weights:
            raise UsageError("--weights goes with a shipped network; a bundle brings its own (models/model.pt)")
        return DescribedNetwork(*load_bundle(name, device, trust_code))
    if weights:
        return load_weights(weights, architecture=name, device=device)
    return load_pretrained(name, device=device)


def load_nnunet(folder: str | Path, folds: str | Sequence[str] | None = None, device: str | torch.device = "cpu"):
    """The folder's network as a :class:`models.volume.DescribedNetwork`: the first chosen fold's network for the
    layer analyses (``module``), and one member per fold, each mirrored as nnU-Net predicts (``segmenter``), whose
    logits are averaged to segment and whose disagreement is the ensemble's uncertainty (``members``)."""

    read = read_nnunet_folder(folder, folds)
    description = read.description
    heads = len(description.output_names)
    networks, mirror_axes = [], None
    for fold in read.folds:
        path = read.folder / fold / CHECKPOINT
        checkpoint = read_checkpoint(path)
        network = build_network(read.configuration, len(description.channels), heads, read.folder / "plans.json")
        try:
            network.load_state_dict(checkpoint["network_weights"], strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[1:2] or [str(error)]
            raise WeightsError(f"{path}: the weights do not fit the plans' network: {first[0].strip()[:160]}") from None
        if mirror_axes is None:  # nnU-Net takes them from the first fold's checkpoint
            mirror_axes = tuple(checkpoint.get("inference_allowed_mirroring_axes") or ())
            if not all(isinstance(a, int) and 0 <= a < description.spatial_dims for a in mirror_axes):
                raise WeightsError(f"{path}: inference_allowed_mirroring_axes {mirror_axes} are not axes of a "
                                   f"{description.spatial_dims}D network")
        networks.append((SliceNetwork(network) if description.spatial_dims == 2 else network).to(device).eval())
    # the checkpoint's axes count the network's spatial axes; a 2D network's windows carry the slice axis first
    offset = 3 if description.spatial_dims == 2 else 2
    window_axes = tuple(a + offset for a in mirror_axes)
    description = replace(description, layers=stage_layers(networks[0]),
                          mirror_axes=tuple(a + offset - 2 for a in mirror_axes))
    members = [DescribedNetwork(net, description, Mirrored(net, window_axes).eval()) for net in networks]
    return DescribedNetwork(networks[0], description, members[0].segmenter, members=members, folds=read.folds)
