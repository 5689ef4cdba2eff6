"""Activation maximisation (paper §4, eqs. 6-8): the 4-sequence pre-image that most excites one filter.

For filter ``k`` of layer ``l`` we maximise, over a pre-image ``x`` of shape ``(4, size, size)``::

    mean_ij Φ_k,l(x)  −  ζ·TV(x)  −  γ·L(x, s)  −  λ·‖x‖²

* ``TV`` (eq. 7) with absolute differences, summed over rows, columns and the four channels;
* ``‖x‖²`` summed over all pixels and channels (coefficients therefore assume the sums over a 4×size×size image);
* ``L(x, s)`` (eq. 8b-c) is the squared maximum mean discrepancy between the pixel values of ``x`` and of the
  template ``s`` (the dataset's mean image), per channel, with a Gaussian kernel of width ``σ``. Eq. 8b sums over
  all pixel pairs — quadratic in the pixels — so each step draws ``style_samples`` pixels of each and uses the
  unbiased U-statistic estimate of MMD² (normalised by pair counts, so it lies in [0, 2] per channel and does not
  grow with the image). Eq. 8a prints ``+γL``; since ``L`` is a *distance* to the template's style, moving towards
  that style means *subtracting* it, which is what we do (and what Li et al. 2017, the cited source, minimise).
* **jitter** as in the paper: the parameter image is padded by ``jitter`` pixels on each side and each step
  optimises a randomly placed size×size window (the result is the centre window); **rotation**: each step rotates
  the window by a random angle in ±``rotation`` degrees.

The start is random noise (as in the paper) or, when a template is given, the template plus that noise
(``FeatvizConfig.start``): some filters are flat for inputs near zero and never move from pure noise.

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

from ..data.case import Case
from ..errors import InputError, UsageError
from ..models.activations import forward_until, resolve_layers
from ..models.base import IN_CHANNELS, SegmentationNet, evaluating, model_device
from ..progress import progress_bar

NOT_FOR_3D = "activation maximisation of 3D networks is not available yet"  # said by the verb and by explain


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
        if self.steps < 1 or self.size < 8:
            raise UsageError(f"need steps ≥ 1 and size ≥ 8, got {self.steps}, {self.size}")
    seed: int = 0


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Eq. 7 with absolute differences, per image: ``(N, C, H, W)`` → ``(N,)``."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().sum(dim=(1, 2, 3))
            + (x[..., :, 1:] - x[..., :, :-1]).abs().sum(dim=(1, 2, 3)))


def style_distance(x: torch.Tensor, template: torch.Tensor, sigma: float, samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased MMD² estimate between the pixel values of each image and of the template, summed over channels:
    ``x (N, C, H, W)``, ``template (C, H', W')`` → ``(N,)`` (eq. 8b-c on ``samples`` random pixels of each)."""
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


def filter_activation(model: SegmentationNet, images: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Mean activation of ``targets[i]`` on ``images[i]`` → ``(N,)`` (what is maximised)."""
    activations = forward_until(model, images, sorted({layer for layer, _ in targets}))
    return torch.stack([activations[layer][i, k].mean() for i, (layer, k) in enumerate(targets)])


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    angle = degrees * math.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@dataclass
class FeatureVisualisation:
    targets: list[Target]  # (layer, filter) per image
    images: np.ndarray  # (F, 4, size, size) float32, z-score units, [FLAIR, T1, T1ce, T2]
    start_activation: np.ndarray  # (F,) on the random start image
    final_activation: np.ndarray  # (F,) on the result
    regularisers: Regularisers
    config: FeatvizConfig

    def to_dict(self) -> dict:
        return {"targets": [list(t) for t in self.targets], "start_activation": self.start_activation.tolist(),
                "final_activation": self.final_activation.tolist(), "regularisers": asdict(self.regularisers),
                "config": asdict(self.config)}


def check_targets(model: SegmentationNet, targets: Sequence[Target], device: str | torch.device | None = None
                  ) -> list[Target]:
    """The ``(layer, filter)`` targets with checked names and filter indices (:class:`UsageError` otherwise)."""
    targets = [(resolve_layers(model, [layer])[0], int(k)) for layer, k in targets]
    if not targets:
        raise UsageError("no filters to visualise")
    device = model_device(model, device)
    channels = _layer_channels(model, sorted({layer for layer, _ in targets}), device)
    for layer, k in targets:
        if not 0 <= k < channels[layer]:
            raise UsageError(f"filter {k} out of range for layer {layer} (0..{channels[layer] - 1})")
    return targets


def visualise_filters(model: SegmentationNet, targets: Sequence[Target],
                      regularisers: Regularisers = Regularisers(), config: FeatvizConfig = FeatvizConfig(),
                      template: np.ndarray | None = None, device: str | torch.device | None = None,
                      progress: bool = False) -> FeatureVisualisation:
    """Optimise one pre-image per ``(layer, filter)`` target, all in one batch (eq. 8a)."""
    device = model_device(model, device)
    targets = check_targets(model, targets, device)
    if regularisers.style > 0 and template is None:
        raise UsageError("the style regulariser needs a template image (the dataset's mean image): pass "
                         "template=, or set style=0")
    template_tensor = None
    if template is not None:
        template = np.asarray(template, dtype=np.float32)
        if template.ndim != 3 or template.shape[0] != IN_CHANNELS:
            raise UsageError(f"template must be (4, H, W) in [FLAIR, T1, T1ce, T2] order, got {template.shape}")
        template_tensor = torch.from_numpy(template).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    x = _start_images(len(targets), regularisers.jitter, config, template_tensor, generator).to(device)
    size, pad = config.size, regularisers.jitter
    with evaluating(model):
        with torch.no_grad():
            start_activation = filter_activation(model, x[..., pad:pad + size, pad:pad + size], targets)
        result = _optimise(model, x.requires_grad_(True), targets, regularisers, config, template_tensor, generator,
                           progress)
        with torch.no_grad():
            final_activation = filter_activation(model, result, targets)
    return FeatureVisualisation(targets, result.cpu().numpy().astype(np.float32),
                                start_activation.cpu().numpy(), final_activation.cpu().numpy(), regularisers, config)


def _start_images(count: int, pad: int, config: FeatvizConfig, template: torch.Tensor | None,
                  generator: torch.Generator) -> torch.Tensor:
    """Seeded noise (plus the template when the config starts there), padded by the jitter on every side."""
    size = config.size
    start = torch.randn(count, IN_CHANNELS, size + 2 * pad, size + 2 * pad, generator=generator) * config.init_scale
    if template is not None and config.start == "template":
        if template.shape[-2:] != (size, size):
            raise UsageError(f"template is {tuple(template.shape[-2:])}, the pre-image {size}×{size}: "
                             f"load it with load_template(path, size)")
        start = start + F.pad(template.cpu()[None], (pad,) * 4, mode="reflect" if pad else "constant")
    return start


def _optimise(model: SegmentationNet, x: torch.Tensor, targets: Sequence[Target], regularisers: Regularisers,
              config: FeatvizConfig, template: torch.Tensor | None, generator: torch.Generator,
              progress: bool) -> torch.Tensor:
    """Gradient ascent on the filters' mean activation minus the regularisers, from ``x``; the final crops."""
    size, pad = config.size, regularisers.jitter
    optimiser = torch.optim.Adam([x], lr=config.learning_rate)
    for _ in progress_bar(range(config.steps), "featviz" if progress else None, unit="step"):
        dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator)) if pad else (0, 0)
        window = x[..., dy:dy + size, dx:dx + size]
        if regularisers.rotation > 0:
            angles = (torch.rand(len(targets), generator=generator) * 2 - 1) * regularisers.rotation
            window = _rotate(window, angles.to(x.device))
        objective = filter_activation(model, window, targets)
        penalty = torch.zeros_like(objective)
        if regularisers.tv > 0:
            penalty = penalty + regularisers.tv * total_variation(x)
        if regularisers.l2 > 0:
            penalty = penalty + regularisers.l2 * x.pow(2).sum(dim=(1, 2, 3))
        if regularisers.style > 0:
            penalty = penalty + regularisers.style * style_distance(
                window, template, regularisers.sigma, regularisers.style_samples, generator)
        # images are independent, so the sum's gradient is each image's own gradient
        (gradient,) = torch.autograd.grad((penalty - objective).sum(), [x])
        x.grad = gradient
        optimiser.step()
    return x.detach()[..., pad:pad + size, pad:pad + size]


def _layer_channels(model: SegmentationNet, layers: Sequence[str], device: torch.device) -> dict[str, int]:
    with evaluating(model), torch.no_grad():
        probe = torch.zeros(1, IN_CHANNELS, model.divisor, model.divisor, device=device)
        return {name: int(output.shape[1]) for name, output in forward_until(model, probe, layers).items()}


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


def resize_template(template: np.ndarray, size: int) -> np.ndarray:
    """The template at the pre-image's size (bilinear), so pixel statistics are comparable."""
    tensor = torch.from_numpy(np.asarray(template, dtype=np.float32))[None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


def save_template(template: np.ndarray, path: str | Path, cases: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(handle, template=template.astype(np.float32),
                            meta=np.array(json.dumps({"cases": list(cases), "channels": ["flair", "t1", "t1ce", "t2"]})))
    return path


def load_template(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read a template saved by :func:`save_template` (never unpickles), resized to ``size``² when given."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            template = data["template"]
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{path}: not a template file ({error})") from None
    if template.ndim != 3 or template.shape[0] != IN_CHANNELS:
        raise InputError(f"{path}: template must be (4, H, W), got {template.shape}")
    return resize_template(template, size) if size else template


def shipped_template_path() -> Path:
    from ..models.registry import WEIGHTS_DIR

    return WEIGHTS_DIR / "template.npz"
