"""Network dissection (paper §3.1; Bau et al. 2017): which filters detect which concepts.

For filter ``k`` of layer ``l``:

* ``T_k,l``: the level exceeded by only the top ``1 − quantile`` (default 1 %) of the filter's activations over
  the whole dataset — every pixel of every brain-containing axial slice (at ``slice_step``) of every case, at
  the layer's own resolution. Computed in fixed memory by :class:`quantiles.StreamingQuantiles` (two passes:
  adaptive histogram, then refinement; the stated error bound is kept per filter). ``threshold_region="brain-box"``
  takes it over each slice's brain bounding box instead, the region a 3D network's thresholds always come from
  (so 2D and 3D IoUs rest on the same kind of threshold).
* concept mask ``M_k,l(x) = upsample(Φ_k,l(x)) > T_k,l`` (bilinear onto the slice; eq. 1 writes ≥, the same for
  continuous activations — but a dead filter, constant at its top-1 % level, would "detect" the whole brain with ≥;
  with > it detects nothing, as netdissect does), then the paper's
  post-processing: a 3×3 opening removes salt-and-pepper noise, the mask is cut to the brain, and only its
  largest 8-connected component in the slice is kept.
* A described 3D network (a bundle, an nnU-Net folder) is dissected the same way over whole volumes: its images
  are the cases, each layer's activations stitched over the windows at the layer's own resolution; thresholds
  over the brain's bounding box (the counterpart of brain-containing slices); masks upsampled trilinearly, opened
  with a 3×3×3 cube, their largest 26-connected component in the volume kept (``slice_step`` is then 1). The
  network interface (:mod:`models.interface`) supplies the images and activations; everything else here is
  written once for both.
* IoU against every concept with ground truth (eq. 2): *explicit* — WT, TC, ET, ED, NCR (from the labels);
  *implicit* — brain (the brain mask), WM, GM, CSF (from a phantom's tissue map). Dataset-wide IoU is
  Σ|M ∩ G| / Σ|M ∪ G| over all images (slices); the per-image statistic is the mean IoU over the images where the
  concept is present. A filter's IoU reaches the concept when its dataset-wide IoU ≥ ``iou_cutoff`` (0.04, as in
  Network Dissection).
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
from ..models.base import SegmentationNet, evaluating, model_device
from ..models.interface import AnalysedNetwork, analysed
from ..models.registry import WEIGHTS_DIR
from ..progress import shared_progress
from ..ranks import Ranks
from ..scoring.statistics import ratio_interval
from ..version import __version__
from . import CONTROL_SEED, DEFAULT_IOU_CUTOFF, DEFAULT_MARGIN, DEFAULT_QUANTILE, THRESHOLD_REGIONS
from .concepts import CONCEPTS, SUMS, LayerDissection, concept_masks
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


_FILTER_CHUNK = 16  # filters thresholded at once: bounds a 3D network's masks to 16 input-sized volumes per image


def _dissection_batches(network: AnalysedNetwork, case: Case, layers: Sequence[str], slice_step: int,
                        batch_size: int, device: torch.device):
    """The case's images a dissection reads (every ``slice_step``-th brain slice of a 2D network; a 3D network's
    whole volume) in batches: ``(slices, layer → activations (N, K, *layer grid))``."""
    slices = network.computed_slices(case, None)[::slice_step]
    return network.activation_batches(case, layers, slices, batch_size, device)


def _open(masks: torch.Tensor, rank: int) -> torch.Tensor:
    """Binary opening with a cube of side 3 over the last ``rank`` axes of a bool tensor (separable shifts: far
    faster than a float max-pool; outside the image counts as absent from the neighbourhood)."""
    def combine(x: torch.Tensor, op) -> torch.Tensor:  # op: logical_and erodes, logical_or dilates
        for axis in range(x.ndim - rank, x.ndim):
            y, n = x.clone(), x.shape[axis]
            y.narrow(axis, 1, n - 1).copy_(op(y.narrow(axis, 1, n - 1), x.narrow(axis, 0, n - 1)))
            y.narrow(axis, 0, n - 1).copy_(op(y.narrow(axis, 0, n - 1), x.narrow(axis, 1, n - 1)))
            x = y
        return x

    return combine(combine(masks, torch.logical_and), torch.logical_or)


def largest_component_per_image(masks: np.ndarray) -> np.ndarray:
    """Keep, in every image of ``(P, *image)`` bool masks, only its largest component, fully connected within the
    image (8-connected in a slice, 26 in a volume; ties: all of the largest)."""
    result = np.zeros_like(masks)
    occupied = np.flatnonzero(masks.reshape(masks.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        return result
    within_image = np.zeros((3,) * masks.ndim, dtype=bool)
    within_image[1] = True  # never across images
    labels, count = ndimage.label(masks[occupied], structure=within_image)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    # labels run in raster order and never cross images, so each image owns a contiguous, non-empty label range
    starts = np.concatenate([[0], labels.reshape(len(occupied), -1).max(axis=1)[:-1]])
    per_image = np.diff(np.concatenate([starts, [count]]))
    biggest = np.repeat(np.maximum.reduceat(sizes, starts), per_image)
    keep = np.concatenate([[False], sizes == biggest])
    result[occupied] = keep[labels]
    return result


def threshold_masks(network: AnalysedNetwork, activation: torch.Tensor, thresholds: torch.Tensor,
                    brain: torch.Tensor) -> np.ndarray:
    """Concept masks of one layer for a batch: ``(N, K, *layer grid)`` activations, ``(K,)`` thresholds,
    ``(N, *input grid)`` bool brain → ``(N, K, *input grid)`` bool after upsampling, eq. 1 and the
    post-processing."""
    brain = brain.to(activation.device)
    size, rank = tuple(brain.shape[1:]), brain.ndim - 1
    result = np.zeros(tuple(activation.shape[:2]) + size, dtype=bool)
    footprint = brain.any(0).cpu().numpy()
    if not footprint.any():
        return result
    # Work only on the brain's bounding box (+2 voxels so the opening sees the same neighbourhood): masks end in it.
    box = tuple(slice(max(int(axis.min()) - 2, 0), int(axis.max()) + 3) for axis in np.nonzero(footprint))
    inside = brain[(slice(None), None) + box]
    for start in range(0, activation.shape[1], _FILTER_CHUNK):
        chunk = slice(start, start + _FILTER_CHUNK)
        maps = network.upsample(activation[:, chunk], size)[(slice(None), slice(None)) + box]
        level = thresholds[chunk].to(maps).view((1, -1) + (1,) * rank)
        masks = (_open(maps > level, rank) & inside).cpu().numpy()
        result[(slice(None), chunk) + box] = largest_component_per_image(
            masks.reshape((-1,) + masks.shape[2:])).reshape(masks.shape)
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
    threshold_region: str = "image"  # where the threshold quantiles were taken (THRESHOLD_REGIONS)

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
            "threshold_region": self.threshold_region,
            "layers": {name: {"thresholds": r.thresholds.tolist(), "threshold_error": r.threshold_error.tolist(),
                              **{key: getattr(r, key).tolist() for key in SUMS},
                              **({"per_case": {key: r.per_case[key].tolist() for key in SUMS}} if r.per_case else {})}
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

        def array(values, key: str) -> np.ndarray:
            return np.asarray(values, dtype=np.int64 if key in counts else float)

        layers = {name: LayerDissection(*(array(r[key], key) for key in ("thresholds", "threshold_error", *SUMS)),
                                        per_case={key: array(r["per_case"][key], key) for key in SUMS}
                                        if "per_case" in r else None)
                  for name, r in data["layers"].items()}
        return cls(data["architecture"], data["fingerprint"], data["quantile"], data["iou_cutoff"],
                   data["concepts"], data["cases"], data["slice_step"], layers,
                   {name: cls.from_dict(control) for name, control in data.get("controls", {}).items()},
                   data.get("margin", DEFAULT_MARGIN), data.get("control_seed"), data.get("threshold_region", "image"))

    def subset(self, cases: Sequence[str]) -> "Dissection":
        """The same dissection — thresholds, controls — with its IoUs over ``cases`` only (names from
        :attr:`cases`; a name given twice counts twice, as in a bootstrap resample): a held-out half, one case.
        Needs the per-case sums (``dissect(per_case=True)``)."""
        unknown = [case for case in cases if case not in self.cases]
        if unknown:
            raise UsageError(f"not among the dissected cases: {', '.join(unknown[:5])}")
        indices = [self.cases.index(case) for case in cases]
        return Dissection(self.architecture, self.fingerprint, self.quantile, self.iou_cutoff, self.concepts,
                          list(cases), self.slice_step, {name: r.subset(indices) for name, r in self.layers.items()},
                          {name: control.subset(cases) for name, control in self.controls.items()}, self.margin,
                          self.control_seed, self.threshold_region)

    def iou_interval(self, layer: str, k: int, concept: str, per_image: bool = False, **bootstrap) -> dict:
        """Filter ``k`` of ``layer``'s IoU for ``concept`` with a bootstrap interval over the cases
        (:func:`scoring.statistics.ratio_interval`: the dataset-wide IoU is a ratio of sums, so cases are resampled
        with their intersection and union together); ``per_image``: the mean per-image IoU (eq. 2) instead.
        Needs the per-case sums."""
        sums = self.layers[layer].per_case
        if sums is None:
            raise UsageError("this dissection kept no per-case sums (dissect with per_case=True)")
        j = self.concepts.index(concept)
        if per_image:
            return ratio_interval(sums["image_iou_sum"][:, k, j], sums["image_count"][:, j], **bootstrap)
        return ratio_interval(sums["intersection"][:, k, j], sums["union"][:, k, j], **bootstrap)

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
            control_seed: int = CONTROL_SEED, margin: float = DEFAULT_MARGIN, per_case: bool = False,
            threshold_region: str = "image", ranks: Ranks = Ranks()) -> Dissection:
    """Thresholds and concept IoUs of every filter of ``layers`` over a dataset of cases, and — with ``controls`` —
    the same for the architecture with random weights (from ``control_seed``) and for the raw input channels, so
    that only filters beating both by ``margin`` count as detectors (module notes).

    ``cases`` may be :class:`Case` objects or case folders (folders are read one at a time, in each pass, so
    memory stays bounded by one case; the controls ride on the same reads). ``concepts`` defaults to every concept
    all cases have ground truth for; naming one a case lacks is an error that says which. ``prepare``: what each
    case goes through once read (into the network's space: :func:`models.space.into_network_space`). A described 3D
    network (a bundle) is dissected over whole volumes (``slice_step`` and ``batch_size`` do not apply).
    ``ranks``: under torchrun (:func:`ranks.joined`), each rank reads its share of the cases and the ranks combine
    their statistics after each pass (thresholds within the histograms' stated bound of one process's; IoU counts
    exactly equal); every rank returns the whole dissection. ``per_case``: keep every case's IoU sums as well
    (:attr:`LayerDissection.per_case`), for held-out halves and bootstrap intervals (:meth:`Dissection.subset`,
    :meth:`Dissection.iou_interval`); the saved file grows by about the number of cases times.
    ``threshold_region``: where each filter's quantile is taken (:data:`analyses.THRESHOLD_REGIONS`: a 2D network's
    whole slices, the paper's, or the brain's box in each, as a 3D network's always is).
    """
    concepts = check_concepts(cases, concepts)
    _check_settings(slice_step, iou_cutoff, margin, threshold_region)
    trained = analysed(model, "network dissection")
    networks = {"trained": (model, trained.layers(layers))}
    if controls:
        networks.update({name: (control, analysed(control).layers("all" if name == RAW_INPUT else layers))
                         for name, control in control_networks(model, control_seed).items()})
    slice_step = 1 if trained.whole_case else slice_step  # a 3D network: whole volumes
    device = model_device(trained.module, device)
    statistics: dict[str, dict[str, StreamingQuantiles]] = {name: {} for name in networks}
    sums: dict[str, dict[str, LayerDissection]] = {name: {} for name in networks}
    case_sums: dict[str, list[dict[str, LayerDissection]]] = {name: [] for name in networks}  # this rank's cases
    case_ids: list[str] = []
    with contextlib.ExitStack() as stack:
        for network, _ in networks.values():
            stack.enter_context(evaluating(analysed(network).module))
        for stage in ("thresholds", "refine thresholds", "concept IoU"):
            label = f"dissect {model.architecture}{' and controls' if controls else ''}: {stage}" if progress else None
            for source in shared_progress(cases, ranks, label, unit="case"):  # one case in memory at a time
                case = as_case(source) if prepare is None else prepare(as_case(source))
                for name, (network, layer_names) in networks.items():
                    if stage == "concept IoU":
                        tally = _case_iou(network, case, layer_names, concepts, sums[name], slice_step, batch_size,
                                          device)
                        if per_case:
                            case_sums[name].append(tally)
                    else:
                        _tally_activations(network, case, layer_names, statistics[name], quantile, bins, slice_step,
                                           batch_size, device, threshold_region)
                if stage == "concept IoU":
                    case_ids.append(case.case_id)
            for name in networks:
                if stage == "thresholds":
                    statistics[name] = _every_ranks_layers(statistics[name], ranks, quantile, bins)
                    for statistic in statistics[name].values():
                        statistic.start_refinement(ranks)
                elif stage == "refine thresholds":
                    for statistic in statistics[name].values():
                        statistic.combine(ranks)
                    sums[name] = {layer: _empty_sums(statistic, len(concepts))
                                  for layer, statistic in statistics[name].items()}
                else:
                    _combine_sums(sums[name], ranks)
                    if per_case:
                        _keep_per_case(sums[name], ranks.unshared(case_sums[name]))
    case_ids = ranks.unshared(case_ids)  # in the dataset's order
    results = {name: Dissection(network.architecture, model_fingerprint(network), quantile, iou_cutoff, concepts,
                                case_ids, slice_step, sums[name])
               for name, (network, _) in networks.items()}
    result = results.pop("trained")
    result.controls, result.margin = results, margin
    result.control_seed = control_seed if controls else None
    for found in (result, *result.controls.values()):
        found.threshold_region = threshold_region
    return result


def _check_settings(slice_step: int, iou_cutoff: float, margin: float, threshold_region: str) -> None:
    if slice_step < 1:
        raise UsageError(f"slice_step must be at least 1, got {slice_step}")
    if not 0 <= iou_cutoff <= 1:
        raise UsageError(f"iou_cutoff must lie in [0, 1], got {iou_cutoff}")
    if not 0 <= margin <= 1:
        raise UsageError(f"the control margin must lie in [0, 1], got {margin}")
    if threshold_region not in THRESHOLD_REGIONS:
        raise UsageError(f"unknown threshold region {threshold_region!r}; expected one of "
                         f"{', '.join(THRESHOLD_REGIONS)}")


def _case_iou(network, case: Case, layers: Sequence[str], concepts: Sequence[str], sums: dict[str, LayerDissection],
              slice_step: int, batch_size: int, device: torch.device) -> dict[str, LayerDissection]:
    """One case's IoU sums per layer, added into ``sums`` and returned (the per-case record)."""
    tally = {layer: result.zeroed() for layer, result in sums.items()}
    _tally_iou(network, case, layers, concepts, tally, slice_step, batch_size, device)
    for layer, result in tally.items():
        sums[layer].add(result)
    return tally


def _every_ranks_layers(statistics: dict[str, StreamingQuantiles], ranks: Ranks, quantile: float, bins: int
                        ) -> dict[str, StreamingQuantiles]:
    """The layers' statistics in one order on every rank, with an empty one for a layer a rank saw no values of
    (a rank without cases), so that the ranks combine them pairwise."""
    if ranks.size == 1:
        return statistics
    channels = {name: count for found in ranks.gathered({name: s.channels for name, s in statistics.items()})
                for name, count in found.items()}
    return {name: statistics.get(name) or StreamingQuantiles(count, quantile, bins) for name, count in channels.items()}


def _combine_sums(sums: dict[str, LayerDissection], ranks: Ranks) -> None:
    """Every rank's IoU sums of each layer added up (counts exactly; the per-image IoU sums in float64)."""
    if ranks.size == 1:
        return
    for result in sums.values():
        for name in ("intersection", "union", "image_iou_sum", "image_count"):
            setattr(result, name, ranks.sum(torch.from_numpy(getattr(result, name))).numpy())


def _keep_per_case(sums: dict[str, LayerDissection], cases: list[dict[str, LayerDissection]]) -> None:
    """Each layer's per-case sums, stacked in the dataset's order (``cases``: one tally per case)."""
    for layer, result in sums.items():
        result.per_case = {name: np.stack([getattr(tally[layer], name) for tally in cases]) for name in SUMS}


def _empty_sums(statistic: StreamingQuantiles, concepts: int) -> LayerDissection:
    """A layer's thresholds from its finished statistic, and zero IoU sums for the IoU pass."""
    filters = statistic.channels
    return LayerDissection(statistic.quantile().float().double().numpy(), statistic.error_bound().numpy(),
                           np.zeros((filters, concepts), np.int64), np.zeros((filters, concepts), np.int64),
                           np.zeros((filters, concepts)), np.zeros(concepts, np.int64))


def _tally_activations(network, case: Case, layers: Sequence[str], statistics: dict[str, StreamingQuantiles],
                       quantile: float, bins: int, slice_step: int, batch_size: int, device: torch.device,
                       region: str = "image") -> None:
    """Threshold passes: every activation value of the case's dissection images (in ``region``) into each
    filter's histogram."""
    for layer_values in dissection_values(network, case, layers, slice_step, batch_size, device, region):
        for name, values in layer_values.items():
            if name not in statistics:
                statistics[name] = StreamingQuantiles(values.shape[0], quantile, bins)
            statistics[name].add(values)


def dissection_values(network, case: Case, layers: Sequence[str], slice_step: int = 1, batch_size: int = 16,
                      device: str | torch.device | None = None, region: str = "image"
                      ) -> Iterator[dict[str, torch.Tensor]]:
    """Per batch of the case's dissection images: layer → ``(K, values)``, the activations whose quantile is each
    filter's threshold (:meth:`AnalysedNetwork.activation_values`). Call with the network in eval mode."""
    network = analysed(network)
    device = model_device(network.module, device)
    for slices, activations in _dissection_batches(network, case, layers, slice_step, batch_size, device):
        brain = network.on_input_grid(case.brain_mask, slices)
        yield {name: network.activation_values(activation, brain, region) for name, activation in activations.items()}


def _tally_iou(network, case: Case, layers: Sequence[str], concepts: Sequence[str], sums: dict[str, LayerDissection],
               slice_step: int, batch_size: int, device: torch.device) -> None:
    """IoU pass: each filter's post-processed masks against each concept, summed image by image (a 2D network's
    images are slices, a 3D network's the volume)."""
    network = analysed(network)
    truth = concept_masks(case, concepts)
    for slices, activations in _dissection_batches(network, case, layers, slice_step, batch_size, device):
        brain = torch.from_numpy(network.on_input_grid(case.brain_mask, slices))
        gt = network.on_input_grid(truth, slices)
        gt = gt.reshape(gt.shape[0], len(concepts), -1)  # (N, C, voxels)
        gt_area = gt.sum(-1)  # (N, C)
        present = gt_area > 0
        gt_flat = torch.from_numpy(gt).float()
        for name, activation in activations.items():
            masks = threshold_masks(network, activation, torch.from_numpy(sums[name].thresholds).float(), brain)
            masks = masks.reshape(masks.shape[0], masks.shape[1], -1)  # (N, K, voxels)
            # float32 sums of 0/1 are exact below 2**24 voxels per image
            inter = torch.bmm(torch.from_numpy(masks).float(), gt_flat.transpose(1, 2)).round().long().numpy()
            union = masks.sum(-1)[:, :, None] + gt_area[:, None, :] - inter  # (N, K, C)
            per_image = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
            result = sums[name]
            result.intersection += inter.sum(0)
            result.union += union.sum(0)
            result.image_iou_sum += (per_image * present[:, None, :]).sum(0)
            result.image_count += present.sum(0)


def filter_concept_masks(model, case: Case, dissection: Dissection, filters: Sequence[tuple[str, int]],
                         batch_size: int = 16, device: str | torch.device | None = None
                         ) -> dict[tuple[str, int], np.ndarray]:
    """Concept masks of chosen ``(layer, filter)`` pairs on one case, from saved thresholds: ``(Z, Y, X)`` bool on
    the case's canonical grid (empty on slices without brain). Write them with ``case.grid.write``."""
    dissection.check_model(model)
    for layer, k in filters:
        if layer not in dissection.layers:
            raise UsageError(f"layer {layer!r} was not dissected; dissected layers: {', '.join(dissection.layers)}")
        if not 0 <= k < len(dissection.layers[layer].thresholds):
            raise UsageError(f"filter {k} out of range for layer {layer} "
                             f"(0..{len(dissection.layers[layer].thresholds) - 1})")
    if not filters:
        return {}
    network = analysed(model, "network dissection")
    device = model_device(network.module, device)
    layers = network.layers(sorted({layer for layer, _ in filters}))
    masks = {pick: np.zeros(case.brain_mask.shape, dtype=bool) for pick in filters}
    with evaluating(network.module):
        for slices, activations in _dissection_batches(network, case, layers, 1, batch_size, device):
            brain = torch.from_numpy(network.on_input_grid(case.brain_mask, slices))
            for layer in layers:
                ks = [k for name, k in filters if name == layer]
                thresholds = torch.as_tensor(dissection.layers[layer].thresholds[ks], dtype=torch.float32)
                layer_masks = threshold_masks(network, activations[layer][:, ks], thresholds, brain)
                for position, k in enumerate(ks):
                    network.place(masks[(layer, k)], layer_masks[:, position], slices)
    return masks


def shipped_dissection_path(architecture: str) -> Path:
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
