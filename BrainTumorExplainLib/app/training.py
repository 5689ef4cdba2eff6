"""Training the networks on random axial slices of BraTS case folders (real or phantom).

Loss = soft Dice over the three tumour classes + class-weighted cross-entropy (weights ∝ frequency^-1/2 over the
training crops). Adam with a cosine learning-rate decay. Slices are cropped to a fixed window around the brain
(fully convolutional networks then run on whole 240×240 slices); a share of every batch is drawn from slices that
contain tumour. Augmentation: left–right flips, per-sequence intensity scale and shift, crop jitter; and, with
``acquisitions``, clinical acquisitions of every training case (:func:`data.acquisition.random_acquisition`: voxel
size, tilt, flips, interpolation after stripping, motion between series, bias field, noise), each brought back into
the training space exactly as inference brings a scan (:func:`data.preprocess.preprocess`, then
:func:`data.resample.resample_case`), so the network learns what those steps leave of a clinical scan.

Everything random flows from ``TrainConfig.seed``. A checkpoint (model, optimiser, schedule, history, RNG states)
is written after every epoch beside the output, so an interrupted run resumes where it stopped and ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from ..data.acquisition import random_acquisition, reacquire
from ..data.case import Case, CaseError, find_cases, load_case
from ..data.domain import intensity_reference_from
from ..data.labels import REGIONS, region_mask
from ..data.preprocess import preprocess
from ..data.resample import resample_case
from ..errors import InputError, UsageError
from ..models import build_model, save_weights
from ..models.base import NUM_CLASSES, import_dynamo_privately
from ..outputs import OutputFile
from ..progress import progress_bar
from ..ranks import Ranks
from ..scoring.metrics import dice
from ..version import __version__
from .settings import option

# The training schedule both trainers share (train, train-bundle): each setting's help and command-line spelling once.
_SCHEDULE = {"epochs": ("epochs", {"minimum": 1}),
             "steps_per_epoch": ("steps per epoch", {"flags": ("--steps",), "minimum": 1}),
             "batch_size": ("cases' slices or crops per step", {"minimum": 1}),
             "learning_rate": ("the optimiser's learning rate, decayed on a cosine", {"flags": ("--lr",), "above": 0}),
             "validation_cases": ("cases held out for the per-epoch validation Dice (the last by name)",
                                  {"flags": ("--validation",), "minimum": 1}),
             "seed": ("seed of the initialisation, the sampling and the augmentation", {"minimum": 0})}


def schedule_option(name: str, default):
    """A field of the shared training schedule (:data:`_SCHEDULE`) with this trainer's default."""
    help, cli = _SCHEDULE[name]
    return option(default, help, **cli)


@dataclass
class TrainConfig:
    """What ``train`` can be asked (the fields with help are its command-line options)."""

    model: str = "resunet"
    width: float = option(0.25, "channel multiplier (1.0: the paper's width)", above=0)
    epochs: int = schedule_option("epochs", 8)
    steps_per_epoch: int = schedule_option("steps_per_epoch", 100)
    batch_size: int = schedule_option("batch_size", 8)
    learning_rate: float = schedule_option("learning_rate", 2e-3)
    crop: tuple[int, int] = (192, 160)
    tumour_slice_fraction: float = 0.7
    validation_cases: int = schedule_option("validation_cases", 2)
    seed: int = schedule_option("seed", 0)
    device: str = "cpu"
    acquisitions: int = option(0, "per training case, this many seeded random clinical acquisitions of it (voxel "
                               "size, tilt, flips, interpolation, motion, bias field, noise), brought back into the "
                               "training space as inference does, added to the training data (see the module "
                               "notes)", minimum=0)
    upright_share: float | None = option(None, "with --acquisitions, the share of each batch drawn from the cases "
                                         "as read (default: every case, read or acquired, alike)",
                                         minimum=0, maximum=1)


def _crop_window(size: int, centre: float, jitter: int, rng: np.random.Generator | None) -> slice:
    start = int(round(centre - size / 2)) + (int(rng.integers(-jitter, jitter + 1)) if rng is not None and jitter else 0)
    return slice(start, start + size)


def _take(volume: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """Crop the last two axes, zero-padding where the window leaves the array."""
    out = np.zeros(volume.shape[:-2] + (rows.stop - rows.start, cols.stop - cols.start), dtype=volume.dtype)
    r0, r1 = max(rows.start, 0), min(rows.stop, volume.shape[-2])
    c0, c1 = max(cols.start, 0), min(cols.stop, volume.shape[-1])
    if r1 > r0 and c1 > c0:
        out[..., r0 - rows.start:r1 - rows.start, c0 - cols.start:c1 - cols.start] = volume[..., r0:r1, c0:c1]
    return out


@dataclass
class SliceData:
    """Brain slices of several cases, kept as float16 in memory, with their labels."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    centres: list[tuple[float, float]]
    case_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_cases(cls, cases: list[Case]) -> "SliceData":
        images, labels, centres = [], [], []
        for case in cases:
            if case.labels is None:
                raise CaseError(f"{case.case_id}: training needs a label file (_seg)")
            slices = case.brain_slices()
            images.append(case.images[:, slices].astype(np.float16))
            labels.append(case.labels[slices])
            rows, cols = np.nonzero(case.brain_mask.any(axis=0))
            centres.append(((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2))
        return cls(images, labels, centres, [c.case_id for c in cases])

    def extend(self, other: "SliceData") -> None:
        self.images += other.images
        self.labels += other.labels
        self.centres += other.centres
        self.case_ids += other.case_ids

    def class_weights(self) -> torch.Tensor:
        counts = sum(np.bincount(l.ravel(), minlength=NUM_CLASSES) for l in self.labels).astype(np.float64)
        weights = (counts / counts.sum() + 1e-6) ** -0.5
        return torch.tensor(weights / weights.mean(), dtype=torch.float32)

    def sample(self, rng: np.random.Generator, batch_size: int, crop: tuple[int, int], tumour_fraction: float,
               augment: bool = True, upright_share: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of cropped slices. ``upright_share``: the chance a slice comes from a case as read rather than from
        a clinical acquisition of one (case id ``…~acq<k>``); None draws every case alike."""
        xs, ys = [], []
        acquired = np.array(["~acq" in case_id for case_id in self.case_ids])
        pools = None if upright_share is None or acquired.all() or not acquired.any() else \
            (np.flatnonzero(~acquired), np.flatnonzero(acquired))
        for _ in range(batch_size):
            if pools is None:
                index = int(rng.integers(len(self.images)))
            else:
                pool = pools[0] if rng.random() < upright_share else pools[1]
                index = int(pool[rng.integers(len(pool))])
            labels = self.labels[index]
            tumour = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
            pool = tumour if len(tumour) and rng.random() < tumour_fraction else np.arange(len(labels))
            z = int(pool[rng.integers(len(pool))])
            rows = _crop_window(crop[0], self.centres[index][0], 12 if augment else 0, rng)
            cols = _crop_window(crop[1], self.centres[index][1], 12 if augment else 0, rng)
            x = _take(self.images[index][:, z], rows, cols).astype(np.float32)
            y = _take(labels[z], rows, cols)
            if augment:
                if rng.random() < 0.5:
                    x, y = x[..., ::-1], y[..., ::-1]
                brain = x.any(axis=0)
                x = x * rng.uniform(0.9, 1.1, (4, 1, 1)).astype(np.float32) + \
                    rng.uniform(-0.1, 0.1, (4, 1, 1)).astype(np.float32) * brain
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))

    def validation_batches(self, crop: tuple[int, int], stride: int = 3):
        """Every ``stride``-th brain slice of every case, centre-cropped: (case index, images, labels)."""
        for index, (images, labels) in enumerate(zip(self.images, self.labels)):
            rows = _crop_window(crop[0], self.centres[index][0], 0, None)
            cols = _crop_window(crop[1], self.centres[index][1], 0, None)
            chosen = np.arange(0, len(labels), stride)
            x = _take(images[:, chosen], rows, cols).astype(np.float32).transpose(1, 0, 2, 3)
            yield index, torch.from_numpy(np.ascontiguousarray(x)), _take(labels[chosen], rows, cols)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy + (1 − soft Dice of the tumour classes present in the batch).

    Tumour classes absent from a batch are left out of the Dice mean: a smoothed Dice of an absent class,
    1 / (Σp + 1), would push that class's probability to zero everywhere — with small necrotic cores and few
    low-grade cases, most batches lack NCR/NET, and a network trained that way never predicts it. Cross-entropy still
    penalises false positives of absent classes.
    """
    cross_entropy = F.cross_entropy(logits, target, weight=class_weights)
    probabilities = torch.softmax(logits, dim=1)[:, 1:]
    one_hot = F.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2)[:, 1:].to(probabilities.dtype)
    truth = one_hot.sum(dim=(0, 2, 3))
    present = truth > 0
    if not present.any():
        return cross_entropy
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    soft_dice = (2 * intersection + 1.0) / (probabilities.sum(dim=(0, 2, 3)) + truth + 1.0)
    return cross_entropy + (1.0 - soft_dice[present].mean())


@torch.no_grad()
def validate(model: torch.nn.Module, data: SliceData, crop: tuple[int, int], device: torch.device) -> dict[str, float]:
    """Mean Dice per region over the validation cases (every 3rd brain slice, centre crop)."""
    model.eval()
    per_region: dict[str, list[float]] = {region: [] for region in REGIONS}
    for _, images, labels in data.validation_batches(crop):
        predicted = torch.cat([model(images[i:i + 16].to(device)).argmax(1).cpu() for i in range(0, len(images), 16)])
        for region in REGIONS:
            per_region[region].append(dice(region_mask(predicted.numpy(), region), region_mask(labels, region)))
    model.train()
    return {region: float(np.mean(values)) for region, values in per_region.items()}


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def train(data_dir: str | Path, out: str | Path, config: TrainConfig = TrainConfig(), resume: bool = True,
          progress: bool = True, log: Callable[[str], None] = print,
          acquisition_cache: str | Path | None = None, ranks: Ranks = Ranks()) -> list[dict]:
    """Train ``config.model`` on the cases in ``data_dir`` and write the weights to ``out``; returns the history.

    The caller's global torch RNG state is left as it was (the run seeds and uses a forked one).
    ``acquisition_cache``: a folder keeping the clinical acquisitions for later runs (:func:`acquired_cases`).
    ``ranks``: under torchrun, data-parallel training (:func:`data_parallel`); rank 0 logs and writes.
    """
    cuda = torch.device(config.device).type == "cuda"
    cache = None if acquisition_cache is None else Path(acquisition_cache)
    with torch.random.fork_rng(devices=[torch.device(config.device).index or 0] if cuda else []):
        return _train(data_dir, out, config, resume, progress, log, cache, ranks)


def data_parallel(module: torch.nn.Module, batch_size: int, seed: int, ranks: Ranks
                  ) -> tuple[torch.nn.Module, int, np.random.Generator]:
    """What one rank of a data-parallel run trains with, under torchrun: the module wrapped in PyTorch's
    ``DistributedDataParallel`` (its gradients averaged over the ranks at every step; the ranks start from rank 0's
    weights), this rank's share of each step's ``batch_size`` (the recipe's batch is the sum over the ranks) and its
    own random stream, from ``(seed, rank)`` (what :class:`torch.utils.data.DistributedSampler` does for a dataset
    that is iterated; here batches are drawn). Alone: the module, the whole batch and the stream of ``seed``."""
    if ranks.size == 1:
        return module, batch_size, np.random.default_rng(seed)
    if batch_size % ranks.size:
        raise UsageError(f"--batch-size {batch_size}: each of the {ranks.size} ranks takes an equal share of a "
                         f"step's batch; give a multiple of {ranks.size}")
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    wrapped = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
    return wrapped, batch_size // ranks.size, np.random.default_rng((seed, ranks.rank))


def rank_mean(value: float, ranks: Ranks) -> float:
    """The mean of every rank's ``value`` (an epoch's loss over the whole recipe's batches)."""
    return value if ranks.size == 1 else float(ranks.sum(torch.tensor([value], dtype=torch.float64))[0]) / ranks.size


def _resume(checkpoint: Path, config: TrainConfig, model, optimiser, schedule, rng: np.random.Generator,
            device: torch.device, log: Callable[[str], None], ranks: Ranks = Ranks()) -> list[dict]:
    """Load the checkpoint's state into the training objects (when there is one); its history, or []. Under
    torchrun each rank takes back its own random streams, so a checkpoint resumes on as many ranks as wrote it."""
    if not checkpoint.is_file():
        return []
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    defaults = json.loads(json.dumps(asdict(type(config)())))  # for settings added since the checkpoint was written
    if {**defaults, **json.loads(state["config"])} != json.loads(json.dumps(asdict(config))):
        raise InputError(f"{checkpoint}: checkpoint of a different training configuration; delete it or use "
                         "the same options")
    if state.get("ranks", 1) != ranks.size:
        raise InputError(f"{checkpoint}: checkpoint of a run on {state.get('ranks', 1)} process(es), each with its "
                         f"own random stream; resume it on as many (this run has {ranks.size}), or delete it")
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    streams = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"] if ranks.size == 1 else state["torch_rng"][ranks.rank])
    rng.bit_generator.state = streams if ranks.size == 1 else streams[ranks.rank]
    history = json.loads(state["history"])
    log(f"resuming from {checkpoint} after epoch {len(history)}")
    return history


def _save_checkpoint(checkpoint: Path, config: TrainConfig, model, optimiser, schedule, rng: np.random.Generator,
                     history: list[dict], ranks: Ranks = Ranks()) -> None:
    """Everything a rerun needs to continue exactly, written under a temporary name and renamed; under torchrun by
    rank 0, with every rank's random streams (the weights and the optimiser are alike on every rank)."""
    streams = ranks.gathered((torch.get_rng_state(), rng.bit_generator.state))
    if not ranks.leader:
        return
    state = {
        "config": json.dumps(asdict(config)), "model": model.state_dict(), "optimiser": optimiser.state_dict(),
        "schedule": schedule.state_dict(), "history": json.dumps(history),
        **({"torch_rng": streams[0][0], "numpy_rng": json.dumps(streams[0][1])} if ranks.size == 1 else
           {"torch_rng": [torch_rng for torch_rng, _ in streams],
            "numpy_rng": json.dumps([numpy_rng for _, numpy_rng in streams]), "ranks": ranks.size}),
    }
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoint.with_name(checkpoint.name + ".tmp"))
    checkpoint.with_name(checkpoint.name + ".tmp").replace(checkpoint)


def acquired_cases(paths: list[Path], config: TrainConfig, spacing: tuple[float, float, float], progress: bool,
                   log: Callable[[str], None] = print, cache: Path | None = None):
    """``config.acquisitions`` clinical acquisitions of each case folder in ``paths``, each drawn from the seed
    ``(config.seed, case index, k)``, written to a scratch folder, then read as inference reads a scan and brought
    into the training space (``spacing``), its labels with it; yielded one at a time, case id ``<case>~acq<k>``.

    ``cache``: a folder where each is kept as a saved case (:meth:`data.case.Case.save`), named by the case, the
    acquisition, the training space and the library version, and read back by a later run instead of made again
    (about 15 s each at 1 mm; another network trained on the same cases with the same seed reuses them)."""

    jobs = [(index, path, k) for index, path in enumerate(paths) for k in range(config.acquisitions)]
    for index, path, k in progress_bar(jobs, "clinical acquisitions" if progress and jobs else None, unit="case"):
        acquisition = random_acquisition(np.random.default_rng((config.seed, index, k)), min(spacing))
        kept = None if cache is None else cache / _cached_name(path, k, acquisition, spacing)
        if kept is not None and kept.is_file():
            try:
                cached = load_case(kept)
            except CaseError as error:  # a damaged file: made again below
                log(f"{kept}: unreadable ({error}); making the acquisition again")
            else:
                yield cached
                continue
        with tempfile.TemporaryDirectory(prefix="bte_acquired_") as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # grids that differ, off the training space: the point
            try:
                case, _ = preprocess(reacquire(path, Path(scratch) / "case", acquisition), spacing)
            except CaseError as error:  # e.g. a tilt that leaves a sequence empty: this draw is left out, said
                log(f"{path.name}: clinical acquisition {k} left out ({error})")
                continue
            case = replace(resample_case(case, spacing), case_id=f"{case.case_id}~acq{k}")
        if kept is not None:
            in_space = replace(case, original=None, grid=getattr(case.grid, "grid", case.grid))  # as trained on
            partial = in_space.save(kept.with_name(f"{kept.stem}.{os.getpid()}.partial.npz"))
            partial.replace(kept)
        yield case


def _cached_name(path: Path, k: int, acquisition, spacing: tuple[float, float, float]) -> str:
    """What an acquired case depends on, in its cache file's name: the case folder and its files (names, sizes,
    modification times), k, the acquisition drawn, the training space and the library version (a change to the
    acquisition code within one version is not seen: delete the folder then)."""
    files = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(Path(path).iterdir()) if f.is_file()]
    key = json.dumps([str(Path(path).resolve()), files, asdict(acquisition), [float(v) for v in spacing],
                      __version__])
    return f"{Path(path).name}~acq{k}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _train(data_dir: str | Path, out: str | Path, config: TrainConfig, resume: bool, progress: bool,
           log: Callable[[str], None], cache: Path | None = None, ranks: Ranks = Ranks()) -> list[dict]:
    out = Path(out)
    progress, log = progress and ranks.leader, log if ranks.leader else lambda message: None
    device = torch.device(config.device)
    case_paths = find_cases(data_dir)
    if len(case_paths) <= config.validation_cases:
        raise CaseError(f"{data_dir}: {len(case_paths)} case(s) found; need more than the {config.validation_cases} "
                        "held for validation")
    split = len(case_paths) - config.validation_cases
    cases = [load_case(path) for path in progress_bar(case_paths, "load cases" if progress else None, unit="case")]
    spacing = np.median([case.spacing for case in cases[:split]], axis=0)  # median voxel size, as nnU-Net's target
    training, validation = SliceData.from_cases(cases[:split]), SliceData.from_cases(cases[split:])
    # for the domain check of the cases it will be given (a spread needs two cases at least)
    intensities = intensity_reference_from(cases[:split]) if split >= 2 else None
    del cases
    for case in acquired_cases(case_paths[:split], config, tuple(float(v) for v in spacing), progress, log, cache):
        training.extend(SliceData.from_cases([case]))

    torch.manual_seed(config.seed)
    model = build_model(config.model, width=config.width).to(device)
    trained, batch_size, rng = data_parallel(model, config.batch_size, config.seed, ranks)
    import_dynamo_privately()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs * config.steps_per_epoch)
    weights = training.class_weights().to(device)
    checkpoint = _checkpoint_path(out)
    history = _resume(checkpoint, config, model, optimiser, schedule, rng, device, log, ranks) if resume else []
    start_epoch = len(history)

    model.train()
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        label = f"epoch {epoch + 1}/{config.epochs}" if progress else None
        losses = []
        for _ in progress_bar(range(config.steps_per_epoch), label, unit="step"):
            x, y = training.sample(rng, batch_size, config.crop, config.tumour_slice_fraction,
                                   upright_share=config.upright_share)
            loss = segmentation_loss(trained(x.to(device)), y.to(device), weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        scores = validate(model, validation, config.crop, device)
        history.append({"epoch": epoch + 1, "loss": rank_mean(float(np.mean(losses)), ranks),
                        "validation_dice": scores, "seconds": round(time.perf_counter() - started, 1)})
        _save_checkpoint(checkpoint, config, model, optimiser, schedule, rng, history, ranks)
        log(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f}, validation Dice "
            + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    if not ranks.leader:
        return history
    with OutputFile(out, overwrite=True).writing() as written:  # the checkpoint stays until the weights are whole
        save_weights(model.cpu(), written, training=asdict(config), history=history,
                     training_cases=training.case_ids, validation_cases=validation.case_ids,
                     training_spacing_mm=[round(float(s), 4) for s in spacing], intensity_reference=intensities)
    return history
