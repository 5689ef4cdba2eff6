"""What a MONAI bundle folder (or an nnU-Net model folder) says about its network, read from its JSON/YAML without
PyTorch: whether a folder is one, its configs, and the meaning of its channels by name — so that the Slicer panel
can show which of the four sequences each input channel is before any analysis process starts (:mod:`models.bundle`
and :mod:`models.nnunet` build the networks themselves)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError

SEQUENCE_ALIASES = {"flair": ("flair", "t2flair", "t2f"), "t1": ("t1", "t1n", "t1w", "t1native"),
                     "t1ce": ("t1c", "t1ce", "t1gd", "t1contrast", "t1postcontrast"), "t2": ("t2", "t2w")}
REGION_ALIASES = {"TC": ("tc", "tumorcore", "tumourcore", "core"), "WT": ("wt", "wholetumor", "wholetumour",
                                                                           "whole"),
                   "ET": ("et", "enhancingtumor", "enhancingtumour", "enhancing")}
CLASS_ALIASES = {"background": ("background", "bg", "0"), "NCR": ("ncr", "necrosis", "necrotic", "ncrnet",
                                                                  "necroticcore", "nonenhancingcore"),
                  "ED": ("ed", "edema", "oedema", "peritumoraledema"), "ET": ("et", "enhancingtumor", "enhancing")}


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / "configs" / "metadata.json").is_file()


def is_nnunet_folder(path: str | Path) -> bool:
    """Whether ``path`` is an nnU-Net trained-model folder (``plans.json`` and ``dataset.json``; models.nnunet)."""
    return (Path(path) / "plans.json").is_file() and (Path(path) / "dataset.json").is_file()


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def mapping(value, where: str, path: Path) -> dict:
    """``value``, an entry of the config ``path`` named ``where``, when it is a mapping (missing: an empty one),
    else :class:`InputError` saying so by name."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{path}: {where} is a {type(value).__name__} ({str(value)[:60]!r}), not a mapping")
    return value


def section(config: dict, where: str, path: Path) -> dict:
    """The mapping at the dotted ``where`` (``network_data_format.inputs.image.channel_def``) of a config read from
    ``path``, empty where it is missing; each level must be a mapping (:func:`mapping`)."""
    keys = where.split(".")
    for depth, key in enumerate(keys):
        config = mapping(config.get(key), ".".join(keys[:depth + 1]), path)
    return config


def channel_names(names: dict[str, str], aliases: dict[str, tuple[str, ...]], what: str, path: Path) -> tuple[str, ...]:
    """Channel index → our name, by the bundle's own channel names."""
    if not all(str(index).isdigit() for index in names):
        raise InputError(f"{path}: the {what} channels are numbered {', '.join(map(str, names))}; expected 0, 1, ...")
    out = []
    for index in sorted(names, key=int):
        found = [ours for ours, spelled in aliases.items() if _key(names[index]) in spelled]
        if len(found) != 1:
            raise InputError(f"{path}: {what} channel {index} is {names[index]!r}, which this project cannot map to "
                             f"one of {', '.join(aliases)}")
        out.append(found[0])
    return tuple(out)


def read_config(path: Path) -> dict:
    """A JSON or YAML file of a model folder (a bundle's configs, an nnU-Net folder's plans and dataset): a mapping,
    read without constructing anything but plain values (YAML's ``!!python/...`` tags are refused)."""
    if not path.is_file():
        raise InputError(f"{path}: missing from the model folder")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                config = yaml.safe_load(path.read_text())
            except yaml.MarkedYAMLError as error:  # its text shows the line with a caret: one line here
                raise InputError(f"{path}: {_yaml_problem(error)}") from None
        else:
            config = json.loads(path.read_text())
    except InputError:
        raise
    except Exception as error:  # json, yaml, decoding: each error means the file cannot be used
        raise InputError(f"{path}: not a readable config ({type(error).__name__}: {error})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: holds a {type(config).__name__}, not a mapping of settings")
    return config


def _yaml_problem(error) -> str:
    """A YAML error in one line: the line of the file, and the problem (a tag that builds a Python object named)."""
    line = f"line {error.problem_mark.line + 1}: " if error.problem_mark is not None else ""
    tag = re.search(r"tag 'tag:yaml\.org,2002:(python/[^']*)'", str(error.problem))
    if tag:
        return (f"{line}the YAML tag !!{tag.group(1)} would build a Python object (run code), and nothing loaded "
                "from a config does")
    return f"not a readable config ({line}{error.context + ', ' if error.context else ''}{error.problem})"


def bundle_configs(folder: str | Path) -> tuple[dict, dict, Path]:
    """``(metadata, inference config, the inference config's path)`` of a bundle folder."""
    folder = Path(folder)
    metadata = read_config(folder / "configs" / "metadata.json")
    config_path = next((folder / "configs" / f"inference.{ext}" for ext in ("json", "yaml", "yml")
                        if (folder / "configs" / f"inference.{ext}").is_file()), folder / "configs" / "inference.json")
    return metadata, read_config(config_path), config_path


def input_channels(folder: str | Path) -> tuple[str, ...]:
    """The library's sequence name (flair, t1, t1ce, t2) of each input channel of the bundle, in its order."""
    path = Path(folder) / "configs" / "metadata.json"
    names = section(read_config(path), "network_data_format.inputs.image.channel_def", path)
    if not names:
        raise InputError(f"{path}: network_data_format.inputs.image.channel_def is missing: which sequence each input "
                         "channel is is unknown")
    return channel_names(names, SEQUENCE_ALIASES, "input", path)


def nnunet_input_channels(folder: str | Path) -> tuple[str, ...]:
    """The library's sequence name of each input channel of an nnU-Net model folder, in its order (``dataset.json``
    ``channel_names``; nnU-Net v1's ``modality``)."""
    path = Path(folder) / "dataset.json"
    return dataset_channels(read_config(path), path)


def dataset_channels(dataset: dict, path: Path) -> tuple[str, ...]:
    """:func:`nnunet_input_channels` of a ``dataset.json`` already read from ``path``."""
    names = mapping(dataset.get("channel_names") or dataset.get("modality"), "channel_names", path)
    if not names:
        raise InputError(f"{path}: channel_names is missing: which sequence each input channel is is unknown")
    return channel_names(names, SEQUENCE_ALIASES, "input", path)
