"""Network dissection (paper §3.1; Bau et al. 2017): which filters detect which concepts.

For filter ``k`` of layer ``l``:

* ``T_k,l``: the level exceeded by only the top ``1 − quantile`` (default 1 %) of the filter's activations over
  the whole dataset — every pixel of every brain-containing axial slice (at ``slice_step``) of every case, at
  the layer's own resolution. Computed in fixed memory by :class:`quantiles.StreamingQuantiles` (two passes:
  adaptive histogram, then refinement; the stated error bound is kept per filter).
* concept mask ``M_k,l(x) = upsample(Φ_k,l(x)) > T_k,l`` (bilinear onto the slice; eq. 1 writes ≥, the same for
  continuous activations — but a dead filter, constant at its top-1 % level, would "detect" the whole brain with ≥;
  with > it detects nothing, as netdissect does), then the paper's
  post-processing: a 3×3 opening removes salt-and-pepper noise, the mask is cut to the brain, and only its
  largest 8-connected component in the slice is kept.
* IoU against every concept with ground truth (eq. 2): *explicit* — WT, TC, ET, ED, NCR (from the labels);
  *implicit* — brain (the brain mask), WM, GM, CSF (from a phantom's tissue map). Dataset-wide IoU is
  Σ|M ∩ G| / Σ|M ∪ G| over all slices; the per-image statistic is the mean IoU over the slices where the concept
  is present. A filter's IoU reaches the concept when its dataset-wide IoU ≥ ``iou_cutoff`` (0.04, as in Network
  Dissection).
* **Controls** (:mod:`controls`): the same dissection of the architecture with random weights and of the raw input
  channels. A filter *detects* a concept — is reported as a learned detector — only when its IoU also beats the best
  control for that concept (the highest IoU any control filter of any layer reaches) by ``margin`` (0.05 IoU): over
  the ten held-out phantoms a random ResUnet has an ET filter of IoU 0.69 and the T1ce channel alone reaches 0.40
  (docs/analyses.md), so IoU ≥ 0.04 alone says nothing about learning. A dissection made without controls
  (``controls=False``, or a file of format 1) reports every filter over the cutoff and says that no control was
  measured.

Our own code rather than netdissect's: the concepts, post-processing and 2D-slice dataset are the paper's, and
the streaming statistics are a few dozen lines (:mod:`quantiles`). Three passes over the data (histogram,
refinement, IoU); memory does not grow with the number of cases.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..data.case import Case, CaseError, as_case, find_case_files
from ..errors import InputError, UsageError
from ..models.activations import LayerRecorder, resolve_layers, upsample_to_input
from ..models.base import SegmentationNet, evaluating, model_device
from ..models.inference import slice_batches
from ..models.interface import analysed
from ..progress import progress_bar
from ..version import __version__
from . import CONTROL_SEED, DEFAULT_IOU_CUTOFF, DEFAULT_MARGIN, DEFAULT_QUANTILE, volume_dissection
from .concepts import CONCEPTS, LayerDissection, concept_masks
from .controls import RAW_INPUT, control_networks
from .quantiles import StreamingQuantiles

FORMAT = "BrainTumorExplain dissection 2"
_FORMATS = ("BrainTumorExplain dissection 1", FORMAT)  # 1: no controls


def ground_truth_of(source: Case | str | Path) -> tuple[str, set[str]]:
    """A case's name and which ground truths it carries, without reading its images when it is a folder."""
    if isinstance(source, Case):
        case_id, labels, tissue = source.case_id, source.labels is not None, source.tissue is not None
    elif str(source).endswith(".npz"):  # a saved case: its array names say what it carries
        with np.load(source, allow_pickle=False) as data:
            case_id, labels, tissue = str(data["case_id"]), "labels" in data.files, "tissue" in data.files
    else:
        files = find_case_files(source)
        case_id, labels, tissue = files.case_id, files.seg is not None, files.tissue is not None
    return case_id, {"brain mask"} | ({"labels"} if labels else set()) | ({"tissue"} if tissue else set())


def check_concepts(cases: Sequence[Case | str | Path], concepts: Sequence[str] | None) -> list[str]:
    """The concepts to measure: by default every one all cases have ground truth for; a named concept that some
    case lacks is an error naming the case and the missing ground truth."""
    if not cases:
        raise UsageError("the dissection dataset is empty: give at least one case")
    present = [ground_truth_of(source) for source in cases]
    if concepts is None:
        return [name for name, (_, needs) in CONCEPTS.items() if all(needs in have for _, have in present)]
    for name in concepts:
        if name not in CONCEPTS:
            raise UsageError(f"unknown concept {name!r}; expected some of {', '.join(CONCEPTS)}")
        needs = CONCEPTS[name][1]
        lacking = [case_id for case_id, have in present if needs not in have]
        if lacking:
            raise CaseError(f"concept {name} needs {needs}, which {len(lacking)} case(s) lack: "
                            f"{', '.join(lacking[:5])}{' …' if len(lacking) > 5 else ''}")
    return list(dict.fromkeys(concepts))


def model_fingerprint(model) -> str:
    """sha256 over every parameter and buffer: ties saved thresholds to the exact weights they came from (a paper
    network, or a described network's module)."""
    digest = hashlib.sha256(model.architecture.encode())
    for name, tensor in getattr(model, "module", model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _dissection_slices(case: Case, slice_step: int) -> np.ndarray:
    return case.brain_slices()[::slice_step]


def _layer_batches(model: SegmentationNet, case: Case, layers: Sequence[str], slices: np.ndarray, batch_size: int,
                   device: torch.device) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Per batch of axial slices: the chosen layers' activations ``(N, K, h, w)`` of one forward pass."""
    with LayerRecorder(model, layers) as recorder, torch.no_grad():
        for chosen, images in slice_batches(case, slices, batch_size, device):
            model(images)
            yield chosen, {name: recorder.outputs[name] for name in layers}


def _unpadded(activation: torch.Tensor, model: SegmentationNet, height: int, width: int) -> torch.Tensor:
    """Drop the rows/columns that lie entirely in ``forward``'s zero padding (at the layer's resolution)."""
    top, bottom, left, right = model.input_padding(height, width)
    stride_h = (height + top + bottom) / activation.shape[-2]
    stride_w = (width + left + right) / activation.shape[-1]
    rows = slice(int(top // stride_h), activation.shape[-2] - int(bottom // stride_h))
    columns = slice(int(left // stride_w), activation.shape[-1] - int(right // stride_w))
    return activation[..., rows, columns]


def _open3x3(masks: torch.Tensor) -> torch.Tensor:
    """Binary opening with a 3×3 square, in plane, on a bool ``(..., H, W)`` tensor (separable shifts: far faster
    than a float max-pool; the image border counts as unchanged)."""
    def combine_3x3(x: torch.Tensor, op) -> torch.Tensor:  # op: logical_and erodes, logical_or dilates
        y = x.clone()
        y[..., 1:, :] = op(y[..., 1:, :], x[..., :-1, :])
        y[..., :-1, :] = op(y[..., :-1, :], x[..., 1:, :])
        z = y.clone()
        z[..., :, 1:] = op(z[..., :, 1:], y[..., :, :-1])
        z[..., :, :-1] = op(z[..., :, :-1], y[..., :, 1:])
        return z

    return combine_3x3(combine_3x3(masks, torch.logical_and), torch.logical_or)


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = True  # 8-connected within a slice, never across slices


def largest_component_per_slice(masks: np.ndarray) -> np.ndarray:
    """Keep, in every 2D plane of ``(P, H, W)`` bool masks, only its largest 8-connected component (ties: all)."""
    result = np.zeros_like(masks)
    occupied = np.flatnonzero(masks.reshape(masks.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        return result
    labels, count = ndimage.label(masks[occupied], structure=_IN_PLANE)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    # labels run in raster order and never cross planes, so each plane owns a contiguous, non-empty label range
    starts = np.concatenate([[0], labels.reshape(len(occupied), -1).max(axis=1)[:-1]])
    per_plane = np.diff(np.concatenate([starts, [count]]))
    biggest = np.repeat(np.maximum.reduceat(sizes, starts), per_plane)
    keep = np.concatenate([[False], sizes == biggest])
    result[occupied] = keep[labels]
    return result


def threshold_masks(activation: torch.Tensor, thresholds: torch.Tensor, brain: torch.Tensor,
                    model: SegmentationNet) -> np.ndarray:
    """Concept masks of one layer for a batch: ``(N, K, h, w)`` activations, ``(K,)`` thresholds, ``(N, H, W)``
    bool brain → ``(N, K, H, W)`` bool after upsampling, eq. 1 and the post-processing."""
    height, width = brain.shape[-2:]
    result = np.zeros(activation.shape[:2] + (height, width), dtype=bool)
    footprint = brain.any(0).cpu().numpy()
    rows, columns = np.flatnonzero(footprint.any(1)), np.flatnonzero(footprint.any(0))
    if rows.size == 0:
        return result
    # Work only on the brain's bounding box (+2 px so the opening sees the same neighbourhood): masks end inside it.
    box = (slice(max(rows[0] - 2, 0), rows[-1] + 3), slice(max(columns[0] - 2, 0), columns[-1] + 3))
    maps = upsample_to_input(activation, model, height, width)[..., box[0], box[1]]
    masks = _open3x3(maps > thresholds.to(maps)[None, :, None, None]) & brain[:, None, box[0], box[1]]
    cropped = masks.cpu().numpy()
    result[..., box[0], box[1]] = largest_component_per_slice(
        cropped.reshape((-1,) + cropped.shape[-2:])).reshape(cropped.shape)
    return result


@dataclass
class Dissection:
    """The result of :func:`dissect`, saved as JSON (:meth:`save`) beside a model so a single new case can be
    dissected later without the dataset (:func:`filter_concept_masks`). ``controls``: the same dissection of each
    control network (:mod:`controls`), by name; empty when none was measured."""

    architecture: str
    fingerprint: str
    quantile: float
    iou_cutoff: float
    concepts: list[str]
    cases: list[str]
    slice_step: int
    layers: dict[str, LayerDissection] = field(repr=False)
    controls: dict[str, "Dissection"] = field(default_factory=dict, repr=False)
    margin: float = DEFAULT_MARGIN
    control_seed: int | None = None  # the random-weights control's seed

    def best_filters(self) -> dict[str, dict]:
        """Concept → the filter of any layer with the highest IoU for it (whatever the cutoff)."""
        best: dict[str, dict] = {}
        for layer, result in self.layers.items():
            iou = result.iou
            for j, concept in enumerate(self.concepts):
                k = int(iou[:, j].argmax())
                if concept not in best or iou[k, j] > best[concept]["iou"]:
                    best[concept] = {"layer": layer, "filter": k, "iou": float(iou[k, j])}
        return best

    def control_bars(self) -> dict[str, dict]:
        """Concept → the best control filter for it (``control``, ``layer``, ``filter``, ``iou``): what a learned
        detector must beat by ``margin``. Empty without controls."""
        bars: dict[str, dict] = {}
        for name, control in self.controls.items():
            for concept, row in control.best_filters().items():
                if concept not in bars or row["iou"] > bars[concept]["iou"]:
                    bars[concept] = {"control": name, **row}
        return bars

    def detectors(self, cutoff: float | None = None, controlled: bool = True) -> list[dict]:
        """Every (layer, filter) whose best concept reaches the IoU cutoff and — when controls were measured and
        ``controlled`` — beats that concept's best control by ``margin``; best first. Each row names the control
        it was held against (``control``, ``control_iou``)."""
        cutoff = self.iou_cutoff if cutoff is None else cutoff
        bars = self.control_bars() if controlled else {}
        rows = []
        for layer, result in self.layers.items():
            iou = result.iou
            for k in range(iou.shape[0]):
                best = int(iou[k].argmax())
                concept, value = self.concepts[best], float(iou[k, best])
                bar = bars.get(concept)
                if value >= cutoff and (bar is None or value >= bar["iou"] + self.margin):
                    rows.append({"layer": layer, "filter": k, "concept": concept, "iou": value,
                                 "image_iou": float(result.image_iou[k, best]),
                                 **({"control": bar["control"], "control_iou": bar["iou"]} if bar else {})})
        return sorted(rows, key=lambda row: -row["iou"])

    def best_detectors(self) -> dict[str, dict]:
        """Concept → its best detector (the :meth:`detectors` row with the highest IoU), for concepts that have one."""
        best: dict[str, dict] = {}
        for row in self.detectors():  # best first
            best.setdefault(row["concept"], row)
        return best

    def summary(self, controlled: bool = True) -> dict[str, dict[str, int]]:
        """Detectors per concept per layer: ``{layer: {concept: count}}`` (each filter counted for its best
        concept only; ``controlled=False``: every filter over the cutoff, controls or not)."""
        table = {layer: {concept: 0 for concept in self.concepts} for layer in self.layers}
        for row in self.detectors(controlled=controlled):
            table[row["layer"]][row["concept"]] += 1
        return table

    def control_table(self) -> list[dict]:
        """Per concept: the trained network's best filter for it beside each control's best, the margin, whether
        the concept is learned (some filter whose best concept it is beats every control by the margin: a
        detector) and how many filters are detectors against how many only reach the cutoff. Empty without
        controls."""
        if not self.controls:
            return []
        trained = self.best_filters()
        controls = {name: control.best_filters() for name, control in self.controls.items()}
        detected = Counter(row["concept"] for row in self.detectors())
        over_cutoff = Counter(row["concept"] for row in self.detectors(controlled=False))
        rows = []
        for concept in self.concepts:
            rows.append({"concept": concept, "trained": _rounded(trained[concept]),
                         **{name: _rounded(found[concept]) for name, found in controls.items()},
                         "margin": self.margin,
                         "learned": detected[concept] > 0,
                         "detectors": detected[concept], "over_cutoff": over_cutoff[concept]})
        return rows

    def table(self, layer: str) -> list[dict]:
        """One row per filter of ``layer``: best concept, its IoU, the best control's IoU for it, whether it is a
        detector, the threshold, and the IoU with every concept."""
        result = self.layers[layer]
        iou = result.iou
        bars = self.control_bars()
        detected = {row["filter"] for row in self.detectors() if row["layer"] == layer}
        rows = []
        for k in range(iou.shape[0]):
            best = int(iou[k].argmax())
            bar = bars.get(self.concepts[best])
            rows.append({"filter": k, "best_concept": self.concepts[best], "iou": round(float(iou[k, best]), 5),
                         "control_iou": round(bar["iou"], 5) if bar else "", "detector": k in detected,
                         "threshold": float(result.thresholds[k]),
                         **{f"iou_{c}": round(float(iou[k, j]), 5) for j, c in enumerate(self.concepts)}})
        return rows

    def write_tables(self, folder: str | Path) -> list[Path]:
        """``<layer>.csv`` per layer (the same rows as :meth:`table`), and ``controls.csv`` with controls."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tables = {layer: self.table(layer) for layer in self.layers}
        if self.controls:
            tables["controls"] = [{"concept": row["concept"],
                                   **{f"{name}_{key}": row[name][key] for name in ("trained", *self.controls)
                                      for key in ("layer", "filter", "iou")},
                                   **{key: row[key] for key in ("margin", "learned", "detectors", "over_cutoff")}}
                                  for row in self.control_table()]
        paths = []
        for name, rows in tables.items():
            path = folder / f"{name}.csv"
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            paths.append(path)
        return paths

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "library_version": __version__,
            "architecture": self.architecture, "fingerprint": self.fingerprint, "quantile": self.quantile,
            "iou_cutoff": self.iou_cutoff, "concepts": self.concepts, "cases": self.cases,
            "slice_step": self.slice_step, "margin": self.margin, "control_seed": self.control_seed,
            "layers": {name: {"thresholds": r.thresholds.tolist(), "threshold_error": r.threshold_error.tolist(),
                              "intersection": r.intersection.tolist(), "union": r.union.tolist(),
                              "image_iou_sum": r.image_iou_sum.tolist(), "image_count": r.image_count.tolist()}
                       for name, r in self.layers.items()},
            "controls": {name: control.to_dict() for name, control in self.controls.items()},
            "control_table": self.control_table(),
            "summary": self.summary(),
            "detectors": [{**row, "iou": round(row["iou"], 5), "image_iou": round(row["image_iou"], 5)}
                          for row in self.detectors()],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Dissection":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: not a readable dissection file ({error})") from None
        if data.get("format") not in _FORMATS:
            raise InputError(f"{path}: not a BrainTumorExplain dissection file")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "Dissection":
        counts = ("intersection", "union", "image_count")
        layers = {name: LayerDissection(*(np.asarray(r[key], dtype=np.int64 if key in counts else float)
                                          for key in ("thresholds", "threshold_error", "intersection", "union",
                                                      "image_iou_sum", "image_count")))
                  for name, r in data["layers"].items()}
        return cls(data["architecture"], data["fingerprint"], data["quantile"], data["iou_cutoff"],
                   data["concepts"], data["cases"], data["slice_step"], layers,
                   {name: cls.from_dict(control) for name, control in data.get("controls", {}).items()},
                   data.get("margin", DEFAULT_MARGIN), data.get("control_seed"))

    def check_model(self, model: SegmentationNet) -> None:
        """Refuse thresholds computed on other weights: they would make meaningless masks."""
        if model.architecture != self.architecture or model_fingerprint(model) != self.fingerprint:
            raise InputError(f"this dissection was computed for other weights ({self.architecture}, fingerprint "
                             f"{self.fingerprint[:12]}…), not for this {model.architecture}")


def _rounded(row: dict) -> dict:
    return {**row, "iou": round(row["iou"], 5)}


def dissect(model: SegmentationNet, cases: Sequence[Case | str | Path], layers: str | Iterable[str] = "all",
            concepts: Sequence[str] | None = None, quantile: float = DEFAULT_QUANTILE,
            iou_cutoff: float = DEFAULT_IOU_CUTOFF, slice_step: int = 1, bins: int = 2048, batch_size: int = 16,
            device: str | torch.device | None = None, progress: bool = False,
            prepare: Callable[[Case], Case] | None = None, controls: bool = True,
            control_seed: int = CONTROL_SEED, margin: float = DEFAULT_MARGIN) -> Dissection:
    """Thresholds and concept IoUs of every filter of ``layers`` over a dataset of cases, and — with ``controls`` —
    the same for the architecture with random weights (from ``control_seed``) and for the raw input channels, so
    that only filters beating both by ``margin`` count as detectors (module notes).

    ``cases`` may be :class:`Case` objects or case folders (folders are read one at a time, in each pass, so
    memory stays bounded by one case; the controls ride on the same reads). ``concepts`` defaults to every concept
    all cases have ground truth for; naming one a case lacks is an error that says which. ``prepare``: what each
    case goes through once read (into the network's space: :func:`models.space.into_network_space`). A described 3D
    network (a bundle) is dissected over whole volumes (:mod:`analyses.volume_dissection`; ``slice_step`` and
    ``batch_size`` do not apply).
    """

    concepts = check_concepts(cases, concepts)
    if slice_step < 1:
        raise UsageError(f"slice_step must be at least 1, got {slice_step}")
    if not 0 <= iou_cutoff <= 1:
        raise UsageError(f"iou_cutoff must lie in [0, 1], got {iou_cutoff}")
    if not 0 <= margin <= 1:
        raise UsageError(f"the control margin must lie in [0, 1], got {margin}")
    trained = analysed(model, "network dissection")
    described = trained.whole_case  # a 3D network: whole volumes (volume_dissection)
    networks = {"trained": (model, trained.layers(layers))}
    if controls:
        networks.update({name: (control, analysed(control).layers("all" if name == RAW_INPUT else layers))
                         for name, control in control_networks(model, control_seed).items()})
    slice_step = 1 if described else slice_step
    device = model_device(trained.module, device)
    statistics: dict[str, dict[str, StreamingQuantiles]] = {name: {} for name in networks}
    sums: dict[str, dict[str, LayerDissection]] = {name: {} for name in networks}
    case_ids: list[str] = []
    with contextlib.ExitStack() as stack:
        for network, _ in networks.values():
            stack.enter_context(evaluating(analysed(network).module))
        for stage in ("thresholds", "refine thresholds", "concept IoU"):
            label = f"dissect {model.architecture}{' and controls' if controls else ''}: {stage}" if progress else None
            for source in progress_bar(cases, label, unit="case"):  # one case in memory at a time
                case = as_case(source) if prepare is None else prepare(as_case(source))
                for name, (network, layer_names) in networks.items():
                    if stage == "concept IoU" and described:
                        volume_dissection.tally_iou(network, case, layer_names, concepts, sums[name], device)
                    elif stage == "concept IoU":
                        _tally_iou(network, case, layer_names, concepts, sums[name], slice_step, batch_size, device)
                    elif described:
                        volume_dissection.tally_thresholds(network, case, layer_names, statistics[name], quantile,
                                                           bins, device)
                    else:
                        _tally_activations(network, case, layer_names, statistics[name], quantile, bins, slice_step,
                                           batch_size, device)
                if stage == "concept IoU":
                    case_ids.append(case.case_id)
            for name in networks:
                if stage == "thresholds":
                    for statistic in statistics[name].values():
                        statistic.start_refinement()
                elif stage == "refine thresholds":
                    sums[name] = {layer: _empty_sums(statistic, len(concepts))
                                  for layer, statistic in statistics[name].items()}
    results = {name: Dissection(network.architecture, model_fingerprint(network), quantile, iou_cutoff, concepts,
                                case_ids, slice_step, sums[name])
               for name, (network, _) in networks.items()}
    result = results.pop("trained")
    result.controls, result.margin = results, margin
    result.control_seed = control_seed if controls else None
    return result


def _empty_sums(statistic: StreamingQuantiles, concepts: int) -> LayerDissection:
    """A layer's thresholds from its finished statistic, and zero IoU sums for the IoU pass."""
    filters = statistic.channels
    return LayerDissection(statistic.quantile().float().double().numpy(), statistic.error_bound().numpy(),
                           np.zeros((filters, concepts), np.int64), np.zeros((filters, concepts), np.int64),
                           np.zeros((filters, concepts)), np.zeros(concepts, np.int64))


def _tally_activations(model: SegmentationNet, case: Case, layers: Sequence[str],
                       statistics: dict[str, StreamingQuantiles], quantile: float, bins: int, slice_step: int,
                       batch_size: int, device: torch.device) -> None:
    """Threshold passes: every activation value of the case's dissection slices into each filter's histogram."""
    for layer_values in dissection_values(model, case, layers, slice_step, batch_size, device):
        for name, values in layer_values.items():
            if name not in statistics:
                statistics[name] = StreamingQuantiles(values.shape[0], quantile, bins)
            statistics[name].add(values)


def dissection_values(model: SegmentationNet, case: Case, layers: Sequence[str], slice_step: int = 1,
                      batch_size: int = 16, device: str | torch.device | None = None
                      ) -> Iterator[dict[str, torch.Tensor]]:
    """Per batch of the case's dissection slices: layer → ``(K, values)``, the activations whose quantile is each
    filter's threshold (padding-only rows and columns dropped). Call with the model in eval mode."""
    device = model_device(model, device)
    height, width = case.images.shape[-2:]
    slices = _dissection_slices(case, slice_step)
    for _, activations in _layer_batches(model, case, layers, slices, batch_size, device):
        yield {name: _unpadded(activation, model, height, width).transpose(0, 1).flatten(1)
               for name, activation in activations.items()}


def _tally_iou(model: SegmentationNet, case: Case, layers: Sequence[str], concepts: Sequence[str],
               sums: dict[str, LayerDissection], slice_step: int, batch_size: int, device: torch.device) -> None:
    """IoU pass: each filter's post-processed masks against each concept, summed slice by slice."""
    truth = concept_masks(case, concepts)
    slices = _dissection_slices(case, slice_step)
    for chosen, activations in _layer_batches(model, case, layers, slices, batch_size, device):
        brain = torch.from_numpy(case.brain_mask[chosen]).to(device)
        gt = truth[:, chosen].transpose(1, 0, 2, 3).reshape(len(chosen), len(concepts), -1)  # (N, C, pixels)
        gt_area = gt.sum(-1)  # (N, C)
        present = gt_area > 0
        gt_flat = torch.from_numpy(gt).float()
        for name, activation in activations.items():
            thresholds = torch.from_numpy(sums[name].thresholds).float().to(device)
            masks = threshold_masks(activation, thresholds, brain, model)  # (N, K, H, W)
            masks = masks.reshape(masks.shape[0], masks.shape[1], -1)
            inter = torch.bmm(torch.from_numpy(masks).float(), gt_flat.transpose(1, 2)).round().long().numpy()
            union = masks.sum(-1)[:, :, None] + gt_area[:, None, :] - inter  # (N, K, C)
            per_image = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
            result = sums[name]
            result.intersection += inter.sum(0)
            result.union += union.sum(0)
            result.image_iou_sum += (per_image * present[:, None, :]).sum(0)
            result.image_count += present.sum(0)


def filter_concept_masks(model: SegmentationNet, case: Case, dissection: Dissection,
                         filters: Sequence[tuple[str, int]], batch_size: int = 16,
                         device: str | torch.device | None = None) -> dict[tuple[str, int], np.ndarray]:
    """Concept masks of chosen ``(layer, filter)`` pairs on one case, from saved thresholds: ``(Z, Y, X)`` bool on
    the case's canonical grid (empty on slices without brain). Write them with ``case.grid.write``. A described 3D
    network's masks come from whole volumes (:func:`analyses.volume_dissection.volume_filter_masks`)."""
    dissection.check_model(model)
    for layer, k in filters:
        if layer not in dissection.layers:
            raise UsageError(f"layer {layer!r} was not dissected; dissected layers: {', '.join(dissection.layers)}")
        if not 0 <= k < len(dissection.layers[layer].thresholds):
            raise UsageError(f"filter {k} out of range for layer {layer} "
                             f"(0..{len(dissection.layers[layer].thresholds) - 1})")
    if analysed(model).whole_case:
        thresholds = {name: result.thresholds for name, result in dissection.layers.items()}
        return volume_dissection.volume_filter_masks(model, case, thresholds, filters, device)
    device = model_device(model, device)
    layers = resolve_layers(model, sorted({layer for layer, _ in filters}))
    masks = {pick: np.zeros(case.brain_mask.shape, dtype=bool) for pick in filters}
    with evaluating(model):
        for chosen, activations in _layer_batches(model, case, layers, case.brain_slices(), batch_size, device):
            brain = torch.from_numpy(case.brain_mask[chosen]).to(device)
            for layer in layers:
                ks = [k for name, k in filters if name == layer]
                thresholds = torch.as_tensor(dissection.layers[layer].thresholds[ks], dtype=torch.float32)
                layer_masks = threshold_masks(activations[layer][:, ks], thresholds.to(device), brain, model)
                for position, k in enumerate(ks):
                    masks[(layer, k)][chosen] = layer_masks[:, position]
    return masks


def shipped_dissection_path(architecture: str) -> Path:
    from ..models.registry import WEIGHTS_DIR

    return WEIGHTS_DIR / f"{architecture}.dissection.json"


def load_shipped_dissection(model: SegmentationNet) -> Dissection:
    """The dissection shipped beside a shipped model's weights (``scripts/ship_analysis_files.sh``), checked to
    belong to exactly these weights."""
    path = shipped_dissection_path(model.architecture)
    if not path.is_file():
        raise InputError(f"{path}: no shipped dissection for {model.architecture}; run `python -m "
                                f"BrainTumorExplainLib dissect` on a dataset to make one")
    dissection = Dissection.load(path)
    dissection.check_model(model)
    return dissection
