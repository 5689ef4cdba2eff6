"""Activation maximisation (paper §4, eqs. 6-8): the 4-sequence pre-image that most excites one filter.

For filter ``k`` of layer ``l`` we maximise, over a pre-image ``x`` of shape ``(4, size, size)`` — or, for a 3D
network (a :class:`models.volume.DescribedNetwork`), ``(4, size, size, size)`` in its own channel order and axes::

    mean_ij Φ_k,l(x)  −  ζ·TV(x)  −  γ·L(x, s)  −  λ·‖x‖²

* ``TV`` (eq. 7) with absolute differences, summed over every spatial axis and the four channels;
* ``‖x‖²`` summed over all voxels and channels (coefficients therefore assume the sums over a 4×size×size image,
  and weigh more on a 4×size³ volume);
* ``L(x, s)`` (eq. 8b-c) is the squared maximum mean discrepancy between the pixel values of ``x`` and of the
  template ``s`` (the dataset's mean image), per channel, with a Gaussian kernel of width ``σ``. Eq. 8b sums over
  all pixel pairs — quadratic in the pixels — so each step draws ``style_samples`` pixels of each and uses the
  unbiased U-statistic estimate of MMD² (normalised by pair counts, so it lies in [0, 2] per channel and does not
  grow with the image). Eq. 8a prints ``+γL``; since ``L`` is a *distance* to the template's style, moving towards
  that style means *subtracting* it, which is what we do (and what Li et al. 2017, the cited source, minimise).
* **jitter** as in the paper: the parameter image is padded by ``jitter`` pixels on each side and each step
  optimises a randomly placed size×size window (the result is the centre window); **rotation**: each step rotates
  the window by a random angle in ±``rotation`` degrees. In 3D the shift is along each of the three axes and the
  rotation turns about each axis by its own random angle in ±``rotation`` degrees.

The start is random noise (as in the paper) or, when a template is given, the template plus that noise
(``FeatvizConfig.start``): some filters are flat for inputs near zero and never move from pure noise. A 3D
network's template is a volume: the mean of cases' network inputs over their brain's bounding box, resized to the
pre-image (:func:`volume_template`).

Several filters — of one layer or of several — are optimised at once, one image each, in one batch; the forward
pass stops after the deepest layer asked for. Seeded:
the initial images, windows, angles and style subsamples come from one ``torch.Generator``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..data.case import MODALITIES, Case
from ..errors import InputError, UsageError
from ..models.base import SegmentationNet, evaluating, import_dynamo_privately, model_device
from ..models.description import network_inputs, to_network_space
from ..models.interface import analysed
from ..models.registry import WEIGHTS_DIR
from ..models.volume import DescribedNetwork
from ..progress import progress_bar

Network = SegmentationNet | DescribedNetwork
VOLUME_SIZE = 32  # a 3D pre-image's voxels per side by default (4×32³ takes ~0.15 s a filter a step on 2 CPU cores)
MIN_SIZE = 8  # the smallest pre-image (and template) side


@dataclass(frozen=True)
class Regularisers:
    jitter: int = 8  # pixels of padding / random shift
    rotation: float = 10.0  # degrees, ± per step
    tv: float = 1e-5  # ζ
    l2: float = 1e-4  # λ
    style: float = 1e-2  # γ
    sigma: float = 1.0  # Gaussian kernel width of the style distance, in z-score units
    style_samples: int = 512

    @classmethod
    def none(cls) -> "Regularisers":
        return cls(jitter=0, rotation=0.0, tv=0.0, l2=0.0, style=0.0)

    def __post_init__(self) -> None:
        if self.jitter < 0 or self.rotation < 0 or min(self.tv, self.l2, self.style) < 0 or self.sigma <= 0:
            raise UsageError(f"regularisers must be non-negative (sigma positive), got {self}")


@dataclass(frozen=True)
class FeatvizConfig:
    steps: int = 200
    size: int = 128
    learning_rate: float = 0.05
    init_scale: float = 0.1  # standard deviation of the random start image, in z-score units
    # With a template, the random start is added to it: filters that are flat for inputs near zero (a ReLU that
    # never fires on noise) get a gradient from a brain-like start. Without one (or "noise"), noise alone, as the paper.
    start: str = "template"

    def __post_init__(self) -> None:
        if self.start not in ("template", "noise"):
            raise UsageError(f"start must be 'template' or 'noise', got {self.start!r}")
        if self.steps < 1 or self.size < MIN_SIZE:
            raise UsageError(f"need steps ≥ 1 and size ≥ {MIN_SIZE}, got {self.steps}, {self.size}")
    seed: int = 0


def spatial_dims(model: Network) -> int:
    """2 for the paper's slice networks, the description's for a described network."""
    return analysed(model).spatial_dims


def input_sequences(model: Network) -> tuple[str, ...]:
    """The sequence of each pre-image channel: the network's own input order."""
    return tuple(analysed(model).channel_names)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Eq. 7 with absolute differences, per image: ``(N, C, *spatial)`` → ``(N,)``, over every spatial axis."""
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for axis in range(2, x.ndim):
        total = total + torch.diff(x, dim=axis).abs().flatten(1).sum(1)
    return total


def style_distance(x: torch.Tensor, template: torch.Tensor, sigma: float, samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased MMD² estimate between the voxel values of each image and of the template, summed over channels:
    ``x (N, C, *spatial)``, ``template (C, *spatial')`` → ``(N,)`` (eq. 8b-c on ``samples`` random voxels of each)."""
    n, channels = x.shape[:2]
    xs = x.flatten(2)
    ss = template.flatten(1).to(x)
    pick_x = torch.randint(xs.shape[-1], (samples,), generator=generator).to(x.device)
    pick_s = torch.randint(ss.shape[-1], (samples,), generator=generator).to(x.device)
    a = xs[..., pick_x]  # (N, C, m)
    b = ss[:, pick_s].expand(n, channels, samples)

    def kernel_mean(u: torch.Tensor, v: torch.Tensor, same: bool) -> torch.Tensor:
        k = torch.exp(-(u[..., :, None] - v[..., None, :]) ** 2 / (2 * sigma ** 2))
        if same:  # U-statistic: leave out the i = j pairs
            return (k.sum(dim=(-1, -2)) - samples) / (samples * (samples - 1))
        return k.mean(dim=(-1, -2))

    return (kernel_mean(a, a, True) + kernel_mean(b, b, True) - 2 * kernel_mean(a, b, False)).sum(1)


Target = tuple[str, int]  # (layer, filter)


def layer_outputs(model: Network, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The chosen layers' outputs on ``images``, the forward pass stopped after the last of them."""
    return analysed(model).forward_until(images, layers)


def filter_activation(model: Network, images: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Mean activation of ``targets[i]`` on ``images[i]`` → ``(N,)`` (what is maximised)."""
    activations = layer_outputs(model, images, sorted({layer for layer, _ in targets}))
    return torch.stack([activations[layer][i, k].mean() for i, (layer, k) in enumerate(targets)])


def _rotation_matrices(degrees: torch.Tensor) -> torch.Tensor:
    """``(N,)`` angles → ``(N, 2, 2)``; ``(N, 3)`` angles about each axis → ``(N, 3, 3)`` (their product)."""
    angle = degrees * math.pi / 180
    cos, sin, one, zero = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    if angle.ndim == 1:
        return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)
    c, s, o, z = cos.unbind(1), sin.unbind(1), one[:, 0], zero[:, 0]
    about = [torch.stack([torch.stack([o, z, z], -1), torch.stack([z, c[0], -s[0]], -1),
                          torch.stack([z, s[0], c[0]], -1)], 1),
             torch.stack([torch.stack([c[1], z, s[1]], -1), torch.stack([z, o, z], -1),
                          torch.stack([-s[1], z, c[1]], -1)], 1),
             torch.stack([torch.stack([c[2], -s[2], z], -1), torch.stack([s[2], c[2], z], -1),
                          torch.stack([z, z, o], -1)], 1)]
    return about[2] @ about[1] @ about[0]


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Each image of ``x (N, C, *spatial)`` turned about its centre (``degrees``: see :func:`_rotation_matrices`)."""
    rotation = _rotation_matrices(degrees)
    theta = torch.cat([rotation, torch.zeros(rotation.shape[0], rotation.shape[1], 1)], 2)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@dataclass
class FeatureVisualisation:
    targets: list[Target]  # (layer, filter) per image
    images: np.ndarray  # (F, 4, *spatial) float32, z-score units, channels as ``sequences``, in the network's axes
    start_activation: np.ndarray  # (F,) on the random start image
    final_activation: np.ndarray  # (F,) on the result
    regularisers: Regularisers
    config: FeatvizConfig
    sequences: tuple[str, ...] = MODALITIES
    axes: str | None = None  # a 3D network's axis codes (models.description), None for slices

    def to_dict(self) -> dict:
        return {"targets": [list(t) for t in self.targets], "start_activation": self.start_activation.tolist(),
                "final_activation": self.final_activation.tolist(), "regularisers": asdict(self.regularisers),
                "config": asdict(self.config), "sequences": list(self.sequences), "axes": self.axes}


def check_targets(model: Network, targets: Sequence[Target], device: str | torch.device | None = None,
                  size: int | None = None) -> list[Target]:
    """The ``(layer, filter)`` targets with checked names and filter indices (:class:`UsageError` otherwise); a 3D
    network is probed at the pre-image ``size`` (default :data:`VOLUME_SIZE`), which it must take."""
    network = analysed(model, "activation maximisation")
    targets = [(network.layers([layer])[0], int(k)) for layer, k in targets]
    if not targets:
        raise UsageError("no filters to visualise")
    device = model_device(network.module, device)
    channels = _layer_channels(model, sorted({layer for layer, _ in targets}), device, size)
    for layer, k in targets:
        if not 0 <= k < channels[layer]:
            raise UsageError(f"filter {k} out of range for layer {layer} (0..{channels[layer] - 1})")
    return targets


def _centre(dims: int, pad: int, size: int) -> tuple[slice, ...]:
    return (Ellipsis,) + (slice(pad, pad + size),) * dims


def visualise_filters(model: Network, targets: Sequence[Target],
                      regularisers: Regularisers = Regularisers(), config: FeatvizConfig = FeatvizConfig(),
                      template: np.ndarray | None = None, device: str | torch.device | None = None,
                      progress: bool = False) -> FeatureVisualisation:
    """Optimise one pre-image per ``(layer, filter)`` target, all in one batch (eq. 8a)."""
    network = analysed(model, "activation maximisation")
    module, dims, sequences = network.module, network.spatial_dims, tuple(network.channel_names)
    device = model_device(module, device)
    targets = check_targets(model, targets, device, config.size)
    if regularisers.style > 0 and template is None:
        raise UsageError("the style regulariser needs a template image (the dataset's mean image): pass "
                         "template=, or set style=0")
    template_tensor = None
    if template is not None:
        template = np.asarray(template, dtype=np.float32)
        if template.ndim != 1 + dims or template.shape[0] != len(sequences):
            raise UsageError(f"template must be ({len(sequences)}, {', '.join(['size'] * dims)}) in "
                             f"[{', '.join(sequences)}] order, got {template.shape}")
        template_tensor = torch.from_numpy(template).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    x = _start_images(len(targets), len(sequences), dims, regularisers.jitter, config, template_tensor,
                      generator).to(device)
    with evaluating(module):
        with torch.no_grad():
            start_activation = filter_activation(model, x[_centre(dims, regularisers.jitter, config.size)], targets)
        result = _optimise(model, x.requires_grad_(True), targets, regularisers, config, template_tensor, generator,
                           progress)
        with torch.no_grad():
            final_activation = filter_activation(model, result, targets)
    return FeatureVisualisation(targets, result.cpu().numpy().astype(np.float32), start_activation.cpu().numpy(),
                                final_activation.cpu().numpy(), regularisers, config, tuple(sequences), network.axes)


def _start_images(count: int, channels: int, dims: int, pad: int, config: FeatvizConfig,
                  template: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Seeded noise (plus the template when the config starts there), padded by the jitter on every side."""
    size = config.size
    start = torch.randn(count, channels, *(size + 2 * pad,) * dims, generator=generator) * config.init_scale
    if template is not None and config.start == "template":
        if tuple(template.shape[1:]) != (size,) * dims:
            raise UsageError(f"template is {'×'.join(map(str, template.shape[1:]))}, the pre-image "
                             f"{'×'.join([str(size)] * dims)}: load it with load_template(path, size)")
        start = start + F.pad(template.cpu()[None], (pad,) * (2 * dims), mode="reflect" if pad else "constant")
    return start


def _optimise(model: Network, x: torch.Tensor, targets: Sequence[Target], regularisers: Regularisers,
              config: FeatvizConfig, template: torch.Tensor | None, generator: torch.Generator,
              progress: bool) -> torch.Tensor:
    """Gradient ascent on the filters' mean activation minus the regularisers, from ``x``; the final crops."""
    size, pad, dims = config.size, regularisers.jitter, x.ndim - 2
    import_dynamo_privately()
    optimiser = torch.optim.Adam([x], lr=config.learning_rate)
    for _ in progress_bar(range(config.steps), "featviz" if progress else None, unit="step"):
        shifts = [int(v) for v in torch.randint(0, 2 * pad + 1, (dims,), generator=generator)] if pad else [0] * dims
        window = x[(Ellipsis,) + tuple(slice(shift, shift + size) for shift in shifts)]
        if regularisers.rotation > 0:
            shape = (len(targets),) if dims == 2 else (len(targets), 3)
            angles = (torch.rand(shape, generator=generator) * 2 - 1) * regularisers.rotation
            window = _rotate(window, angles.to(x.device))
        objective = filter_activation(model, window, targets)
        penalty = torch.zeros_like(objective)
        if regularisers.tv > 0:
            penalty = penalty + regularisers.tv * total_variation(x)
        if regularisers.l2 > 0:
            penalty = penalty + regularisers.l2 * x.pow(2).flatten(1).sum(1)
        if regularisers.style > 0:
            penalty = penalty + regularisers.style * style_distance(
                window, template, regularisers.sigma, regularisers.style_samples, generator)
        # images are independent, so the sum's gradient is each image's own gradient
        (gradient,) = torch.autograd.grad((penalty - objective).sum(), [x])
        x.grad = gradient
        optimiser.step()
    return x.detach()[_centre(dims, pad, size)]


def _layer_channels(model: Network, layers: Sequence[str], device: torch.device,
                    size: int | None = None) -> dict[str, int]:
    network = analysed(model)
    dims = network.spatial_dims
    side = network.min_side or size or VOLUME_SIZE
    probe = torch.zeros(1, len(network.channel_names), *(side,) * dims, device=device)
    with evaluating(network.module), torch.no_grad():
        try:
            outputs = network.forward_until(probe, layers)
        except RuntimeError as error:  # a pre-image the network's down- and up-sampling cannot take
            if network.min_side:  # a side the network asked for
                raise
            raise UsageError(f"{network.name} cannot take a {'×'.join([str(side)] * dims)} pre-image "
                             f"({str(error).splitlines()[0]}): give a size its down-sampling divides, e.g. "
                             f"{VOLUME_SIZE}") from None
    return {name: int(output.shape[1]) for name, output in outputs.items()}


SWEEPS: dict[str, tuple[float, ...]] = {  # Figure 13: one regulariser varied, the others at their defaults
    "jitter": (0, 1, 6, 12, 20),
    "style": (1e-2, 1e-1, 1, 10),
    "tv": (1e-7, 1e-6, 1e-5, 1e-4, 1e-3),
}


def regulariser_sweep(model: SegmentationNet, target: Target, template: np.ndarray,
                      config: FeatvizConfig = FeatvizConfig(), base: Regularisers = Regularisers(),
                      device: str | torch.device | None = None) -> dict[str, list[tuple[float, FeatureVisualisation]]]:
    """The pre-image of one ``(layer, filter)`` for each value in :data:`SWEEPS`, the others as in ``base``."""
    results: dict[str, list[tuple[float, FeatureVisualisation]]] = {}
    for name, values in SWEEPS.items():
        results[name] = []
        for value in values:
            value = int(value) if name == "jitter" else float(value)
            results[name].append((value, visualise_filters(model, [target], replace(base, **{name: value}), config,
                                                           template, device)))
    return results


# -- the style template: the dataset's mean image ---------------------------------------------------------------
def mean_template(cases: Iterable[Case]) -> np.ndarray:
    """Mean ``(4, H, W)`` z-scored image over every brain-containing axial slice of the cases (all on one in-plane
    size, as BraTS cases are). A generator of cases keeps one case in memory at a time."""
    total, count = None, 0
    for case in cases:
        slices = case.images[:, case.brain_slices()]
        total = slices.sum(axis=1, dtype=np.float64) if total is None else total + slices.sum(axis=1)
        count += slices.shape[1]
    if total is None or count == 0:
        raise InputError("no brain slices to average: the template needs at least one case with brain")
    return (total / count).astype(np.float32)


def volume_template(cases: Iterable[Case], network: DescribedNetwork, size: int = VOLUME_SIZE) -> np.ndarray:
    """A 3D network's template: the mean over the cases of its inputs (its channel order, normalisation and axes)
    over each case's brain bounding box, each box resized (trilinear) to ``size``³ — the 3D counterpart of
    :func:`mean_template` then :func:`resize_template`. Cases should be in the network's space
    (:func:`models.space.into_network_space`)."""
    total, count = None, 0
    for case in cases:
        inputs = network_inputs(case, network.description)
        brain = to_network_space(case.brain_mask, network.description.axes)
        if not brain.any():
            continue
        voxels = np.argwhere(brain)
        box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(voxels.min(0), voxels.max(0)))
        resized = resize_template(inputs[(slice(None),) + box], size)
        total = resized.astype(np.float64) if total is None else total + resized
        count += 1
    if total is None:
        raise InputError("no brain to average: the template needs at least one case with brain")
    return (total / count).astype(np.float32)


def resize_template(template: np.ndarray, size: int) -> np.ndarray:
    """The template ``(C, *spatial)`` at the pre-image's size (bilinear, or trilinear for a volume), so voxel
    statistics are comparable."""
    template = np.asarray(template, dtype=np.float32)
    dims = template.ndim - 1
    tensor = torch.from_numpy(np.ascontiguousarray(template))[None]
    return F.interpolate(tensor, size=(size,) * dims, mode="bilinear" if dims == 2 else "trilinear",
                         align_corners=False)[0].numpy()


def save_template(template: np.ndarray, path: str | Path, cases: Sequence[str],
                  sequences: Sequence[str] = MODALITIES, network: str | None = None) -> Path:
    """The template and what it is: its cases, the sequence of each channel and, for a 3D network's, which."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cases": list(cases), "channels": list(sequences), "network": network}
    with path.open("wb") as handle:
        np.savez_compressed(handle, template=template.astype(np.float32), meta=np.array(json.dumps(meta)))
    return path


def load_template(path: str | Path, size: int | None = None, model: Network | None = None) -> np.ndarray:
    """Read a template saved by :func:`save_template` (never unpickles), resized to ``size`` per side when given;
    with ``model``, refused unless its dimensions and channel order are the network's."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            template, meta = data["template"], json.loads(str(data["meta"])) if "meta" in data else {}
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{path}: not a template file ({error})") from None
    dims = spatial_dims(model) if model is not None else template.ndim - 1
    sequences = list(input_sequences(model)) if model is not None else meta.get("channels", list(MODALITIES))
    if template.ndim != 1 + dims or dims not in (2, 3) or template.shape[0] != len(sequences):
        raise InputError(f"{path}: template must be {len(sequences)} channels of {dims}D images for this network, "
                         f"got shape {template.shape}")
    if meta.get("channels", list(MODALITIES)) != sequences:
        raise InputError(f"{path}: template channels {meta.get('channels')}, the network takes {sequences}: make "
                         "one for it with `template --model …`")
    return resize_template(template, size) if size else template


def shipped_template_path() -> Path:
    return WEIGHTS_DIR / "template.npz"
