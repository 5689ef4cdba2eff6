"""Network dissection: streaming quantiles against exact ones, post-processing, and dissection of a network whose
filters are known concept detectors by construction."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from BrainTumorExplainLib.analyses.ablation import filter_ablation
from BrainTumorExplainLib.analyses.dissection import (
    Dissection,
    _open,
    check_concepts,
    concept_masks,
    dissect,
    filter_concept_masks,
    largest_component_per_image,
)
from BrainTumorExplainLib.analyses.quantiles import StreamingQuantiles
from BrainTumorExplainLib.data.case import CaseError, load_case
from BrainTumorExplainLib.data.labels import region_mask
from BrainTumorExplainLib.models import build_model
from BrainTumorExplainLib.models.base import SegmentationNet


def _stream(seed: int = 0) -> list[torch.Tensor]:
    """Batches whose range grows upwards, then downwards, with ties and a constant channel."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for scale in (1.0, 1.0, 6.0, 0.5, 30.0):
        batch = torch.randn(4, 3000, generator=generator) * scale
        batch[1] = torch.relu(batch[1])  # half the values tie at zero
        batch[2] = batch[2].abs() * -1 - scale  # only negative, drifting down
        batch[3] = 2.5  # constant
        batches.append(batch)
    return batches


@pytest.mark.parametrize("q", [0.99, 0.5, 0.999])
def test_streaming_quantile_is_within_its_stated_bound_of_the_exact_quantile(q):
    batches = _stream()
    exact = torch.quantile(torch.cat(batches, 1).double(), q, dim=1)
    statistic = StreamingQuantiles(4, q, bins=256)
    for batch in batches:
        statistic.add(batch)
    first, first_bound = statistic.quantile(), statistic.error_bound()
    assert ((first - exact).abs() <= 2 * first_bound + 1e-12).all()
    statistic.start_refinement()
    for batch in batches:
        statistic.add(batch)
    refined, bound = statistic.quantile(), statistic.error_bound()
    assert (bound <= first_bound / 256 + 1e-15).all()
    assert ((refined - exact).abs() <= 2 * bound + 1e-12).all(), (refined - exact, bound)
    # accuracy stated in numbers: for the spread-out channel 0 the refined error is below 1e-4 of its range
    spread = float(torch.cat(batches, 1)[0].max() - torch.cat(batches, 1)[0].min())
    assert abs(float(refined[0] - exact[0])) < 1e-4 * spread


def test_streaming_quantile_holds_its_bound_in_a_sparse_tail():
    # 1100 dense values, then 25 far apart: rank 0.99·1124 falls between two tail values ~40 apart, where
    # interpolating inside one bin (the old estimate) missed by most of that gap.
    generator = torch.Generator().manual_seed(3)
    values = torch.cat([torch.rand(2, 1100, generator=generator), torch.linspace(10, 1000, 25).repeat(2, 1)], 1)
    values = values[:, torch.randperm(values.shape[1], generator=generator)]
    exact = torch.quantile(values.double(), 0.99, dim=1)
    statistic = StreamingQuantiles(2, 0.99, bins=64)
    for batch in values.split(400, dim=1):
        statistic.add(batch)
    assert ((statistic.quantile() - exact).abs() <= statistic.error_bound()).all()
    statistic.start_refinement()
    for batch in values.split(400, dim=1):
        statistic.add(batch)
    error, bound = (statistic.quantile() - exact).abs(), statistic.error_bound()
    assert (error <= bound).all(), (error, bound)
    assert (bound < 1000 / 64 / 64 * 1.1).all()


def test_streaming_state_is_fixed_size_and_resumes_exactly():
    batches = _stream(1)
    whole = StreamingQuantiles(4, 0.99, bins=128)
    resumed = StreamingQuantiles(4, 0.99, bins=128)
    sizes = []
    for index, batch in enumerate(batches):
        whole.add(batch)
        resumed.add(batch)
        if index == 1:
            resumed = StreamingQuantiles.from_state_dict(resumed.state_dict())
        sizes.append(sum(v.numel() for v in whole.state_dict().values() if isinstance(v, torch.Tensor)))
    assert len(set(sizes)) == 1  # does not grow with the number of values
    assert torch.equal(whole.quantile(), resumed.quantile())


def test_streaming_quantile_rejects_bad_input():
    with pytest.raises(ValueError, match="quantile must lie in"):
        StreamingQuantiles(2, 1.0)
    statistic = StreamingQuantiles(2, 0.5)
    with pytest.raises(ValueError, match="no values"):
        statistic.quantile()
    with pytest.raises(ValueError, match=r"expected values \(2, n\)"):
        statistic.add(torch.zeros(3, 5))


@pytest.mark.parametrize("image", [(30, 30), (8, 12, 10)])
def test_largest_component_per_image_matches_a_per_image_reference(image):
    """Slices (8-connected) and volumes (26-connected), each image on its own."""
    rng = np.random.default_rng(0)
    rank = len(image)
    masks = ndimage.binary_dilation(rng.random((60,) + image) > 0.97, structure=np.ones((1,) + (2,) * rank, bool))
    masks[3] = False
    masks[4] = False
    masks[(4,) + (slice(2, 4),) * rank] = masks[(4,) + (slice(7, 9),) * rank] = True  # a tie: both kept
    kept = largest_component_per_image(masks)
    for plane in range(masks.shape[0]):
        labels, count = ndimage.label(masks[plane], structure=np.ones((3,) * rank))
        if count == 0:
            assert not kept[plane].any()
            continue
        sizes = np.bincount(labels.ravel())[1:]
        np.testing.assert_array_equal(kept[plane], np.isin(labels, np.flatnonzero(sizes == sizes.max()) + 1))


@pytest.mark.parametrize("image", [(40, 40), (12, 14, 16)])
def test_opening_matches_scipy_inside_the_image_and_max_pooling_at_its_border(image):
    """A square in slices, a cube in volumes; at the border, outside the image is left out of the neighbourhood
    (what max-pooling with its -inf padding does)."""
    rng = np.random.default_rng(1)
    rank = len(image)
    masks = rng.random((5,) + image) > 0.6
    ours = _open(torch.from_numpy(masks), rank).numpy()
    reference = ndimage.binary_opening(masks, structure=np.ones((1,) + (3,) * rank, bool))
    inside = (slice(None),) + (slice(2, -2),) * rank
    np.testing.assert_array_equal(ours[inside], reference[inside])
    pool = getattr(torch.nn.functional, f"max_pool{rank}d")
    x = torch.from_numpy(masks).float()
    eroded = 1.0 - pool(1.0 - x, 3, stride=1, padding=1)
    np.testing.assert_array_equal(ours, (pool(eroded, 3, stride=1, padding=1) > 0.5).numpy())


class ConceptToy(SegmentationNet):
    """Layer "a" passes the four input channels through unchanged, so filter k's activation *is* input channel k."""

    architecture = "toy"
    divisor = 1

    def __init__(self) -> None:
        super().__init__()
        self.config = {}
        self.a = nn.Conv2d(4, 4, 1, bias=False)
        self.out = nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.a.weight.copy_(torch.eye(4)[:, :, None, None])
        self._register_layer("a", "a")
        self._register_layer("out", "out")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x))


@pytest.fixture(scope="module")
def concept_case(small_phantom):
    """The small phantom with inputs replaced by concept indicators: WT, WM, TC and noise."""
    case = load_case(small_phantom.flair.parent)
    noise = np.random.default_rng(0).random(case.brain_mask.shape).astype(np.float32)
    images = np.stack([region_mask(case.labels, "WT"), case.tissue == 3, region_mask(case.labels, "TC"), noise])
    return dataclasses.replace(case, images=images.astype(np.float32))


def test_dissection_finds_the_detectors_built_into_a_toy(concept_case):
    result = dissect(ConceptToy(), [concept_case], layers=["a"], quantile=0.95, controls=False)
    assert result.concepts == ["WT", "TC", "ET", "ED", "NCR", "brain", "WM", "GM", "CSF"]
    iou = result.layers["a"].iou
    best = [result.concepts[i] for i in iou.argmax(1)]
    assert best[:3] == ["WT", "WM", "TC"]
    assert iou[0, result.concepts.index("WT")] > 0.8
    assert iou[2, result.concepts.index("TC")] > 0.8
    assert iou[3].max() < result.iou_cutoff  # scattered noise: opening + largest component leave little
    detected = {(row["filter"], row["concept"]) for row in result.detectors()}
    assert {(0, "WT"), (2, "TC")} <= detected and all(k != 3 for k, _ in detected)
    assert result.summary()["a"]["WT"] >= 1
    assert result.controls == {} and result.control_table() == []  # no controls: no row claims one
    # thresholds against the exact quantile of all the values the dissection saw (every brain slice)
    seen = torch.from_numpy(concept_case.images[:, concept_case.brain_slices()].reshape(4, -1)).double()
    exact = torch.quantile(seen, 0.95, dim=1).numpy()
    layer = result.layers["a"]
    assert (np.abs(layer.thresholds - exact) <= 2 * layer.threshold_error + 1e-6).all()


class PaddedConceptToy(ConceptToy):
    divisor = 16  # forward pads every slice: the activations cover a larger grid than the slice


@pytest.mark.parametrize("toy", [ConceptToy, PaddedConceptToy])
def test_brain_box_thresholds_are_the_quantiles_inside_each_slices_brain_box(concept_case, toy, tmp_path):
    """Issue 41: threshold_region="brain-box" takes each filter's quantile over the brain's bounding box in each slice
    (the region a 3D network's thresholds come from), not over the whole slice with its air; padding stays out."""
    result = dissect(toy(), [concept_case], layers=["a"], quantile=0.95, controls=False, threshold_region="brain-box")
    values = []
    for z in concept_case.brain_slices():
        rows, columns = np.nonzero(concept_case.brain_mask[z])
        values.append(concept_case.images[:, z, rows.min():rows.max() + 1, columns.min():columns.max() + 1]
                      .reshape(4, -1))
    exact = torch.quantile(torch.from_numpy(np.concatenate(values, 1)).double(), 0.95, dim=1).numpy()
    layer = result.layers["a"]
    assert (np.abs(layer.thresholds - exact) <= 2 * layer.threshold_error + 1e-6).all()
    whole = dissect(toy(), [concept_case], layers=["a"], quantile=0.95, controls=False)
    assert whole.threshold_region == "image" and (layer.thresholds[:3] > whole.layers["a"].thresholds[:3]).all()
    assert Dissection.load(result.save(tmp_path / "d.json")).threshold_region == "brain-box"
    with pytest.raises(ValueError, match="unknown threshold region 'air'"):
        dissect(toy(), [concept_case], layers=["a"], threshold_region="air")


def test_saved_thresholds_dissect_a_single_case_the_same_way(concept_case, tmp_path):
    model = ConceptToy()
    result = dissect(model, [concept_case], layers=["a"], quantile=0.95, controls=False)
    loaded = Dissection.load(result.save(tmp_path / "dissection.json"))
    assert loaded.concepts == result.concepts and loaded.fingerprint == result.fingerprint
    np.testing.assert_array_equal(loaded.layers["a"].intersection, result.layers["a"].intersection)
    masks = filter_concept_masks(model, concept_case, loaded, [("a", 0), ("a", 2)])
    truth = concept_masks(concept_case, ["WT", "TC"])
    for (pick, mask), gt, column in zip(masks.items(), truth, (0, 1)):
        assert mask.shape == concept_case.brain_mask.shape and mask.dtype == bool
        assert int((mask & gt).sum()) == result.layers["a"].intersection[pick[1], column]
        assert int((mask | gt).sum()) == result.layers["a"].union[pick[1], column]


def test_per_case_sums_give_held_out_subsets_and_intervals(concept_case, tmp_path):
    """Issue 41: each case's sums are kept (per_case); they add up to the dataset's, a subset of one case is that
    case's own dissection under the same thresholds, a subset of all is the whole, and the interval of a
    dataset-wide IoU comes from resampling cases with their intersection and union together."""
    flipped = dataclasses.replace(concept_case, case_id="Flipped", images=concept_case.images[:, :, ::-1].copy(),
                                  labels=concept_case.labels[:, ::-1].copy(), tissue=concept_case.tissue[:, ::-1].copy(),
                                  brain_mask=concept_case.brain_mask[:, ::-1].copy())
    noisy = dataclasses.replace(concept_case, case_id="Noisy",
                                images=concept_case.images[[3, 1, 2, 0]].copy())  # WT channel swapped for noise
    cases = [concept_case, flipped, noisy]
    result = dissect(ConceptToy(), cases, layers=["a"], quantile=0.95, per_case=True)
    layer = result.layers["a"]
    assert layer.per_case["intersection"].shape == (3, 4, len(result.concepts))
    for name in ("intersection", "union", "image_iou_sum", "image_count"):
        np.testing.assert_allclose(layer.per_case[name].sum(0), getattr(layer, name))
    loaded = Dissection.load(result.save(tmp_path / "dissection.json"))
    np.testing.assert_array_equal(loaded.layers["a"].per_case["union"], layer.per_case["union"])
    whole = loaded.subset(result.cases)
    np.testing.assert_array_equal(whole.layers["a"].iou, layer.iou)
    one = result.subset(["Noisy"])
    wt = result.concepts.index("WT")
    assert one.cases == ["Noisy"] and one.layers["a"].iou[0, wt] < 0.1 < 0.8 < layer.per_case["intersection"][
        0, 0, wt] / layer.per_case["union"][0, 0, wt]  # filter 0 is noise on Noisy, WT on the others
    assert set(one.controls) == set(result.controls)
    np.testing.assert_array_equal(one.controls["raw input"].layers["input"].intersection,
                                  result.controls["raw input"].layers["input"].per_case["intersection"][2])
    interval = result.iou_interval("a", 0, "WT")
    assert interval["value"] == pytest.approx(layer.iou[0, wt]) and interval["n"] == 3
    assert interval["low"] < interval["value"] < interval["high"]  # one case in three does not detect WT
    assert interval["low"] >= one.layers["a"].iou[0, wt] - 1e-9
    steady = result.iou_interval("a", 2, "TC")  # TC is its channel on every case
    assert steady["high"] - steady["low"] < interval["high"] - interval["low"]
    per_image = result.iou_interval("a", 0, "WT", per_image=True)
    assert per_image["value"] == pytest.approx(layer.image_iou[0, wt])
    with pytest.raises(ValueError, match="not among the dissected cases: Elsewhere"):
        result.subset(["Elsewhere"])
    plain = dissect(ConceptToy(), cases[:1], layers=["a"], quantile=0.95, controls=False)
    with pytest.raises(ValueError, match="no per-case sums"):
        plain.subset(plain.cases)


def test_bad_input_is_named(concept_case, tmp_path, small_phantom):
    model = ConceptToy()
    with pytest.raises(ValueError, match="dataset is empty"):
        dissect(model, [])
    with pytest.raises(ValueError, match="unknown layer.*valid layers: a, out"):
        dissect(model, [concept_case], layers=["b"])
    with pytest.raises(ValueError, match="unknown concept 'tumour'"):
        check_concepts([concept_case], ["tumour"])
    no_tissue = dataclasses.replace(concept_case, case_id="NoTissue", tissue=None)
    with pytest.raises(CaseError, match="concept WM needs tissue.*NoTissue"):
        dissect(model, [concept_case, no_tissue], concepts=["WT", "WM"])
    with pytest.raises(ValueError, match="control margin must lie in"):
        dissect(model, [concept_case], margin=2.0)
    assert "WM" not in check_concepts([concept_case, no_tissue], None)  # default: only what every case has
    result = dissect(model, [concept_case], layers=["a"], quantile=0.95, controls=False)
    other = build_model("resunet", width=0.0625)
    with pytest.raises(ValueError, match="computed for other weights"):
        filter_concept_masks(other, concept_case, result, [("enc1", 0)])
    with pytest.raises(ValueError, match="filter 9 out of range for layer a"):
        filter_concept_masks(model, concept_case, result, [("a", 9)])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="not a BrainTumorExplain dissection file"):
        Dissection.load(tmp_path / "junk.json")


def test_memory_does_not_grow_with_the_number_of_cases(small_phantom):
    """Cases given as folders are read one at a time: peak traced memory for 1 and 4 cases is the same."""
    folder = small_phantom.flair.parent
    torch.manual_seed(0)
    model = build_model("resunet", width=0.0625)
    peaks = []
    for count in (1, 4):
        tracemalloc.start()
        dissect(model, [folder] * count, layers=["enc1", "dec1"])  # with its controls
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.15 * peaks[0], peaks


@pytest.mark.parametrize("name", ["denseunet", "resunet", "simunet"])
def test_shipped_dissections_belong_to_the_shipped_weights(name):
    from BrainTumorExplainLib.analyses.dissection import load_shipped_dissection
    from BrainTumorExplainLib.models import load_pretrained

    model = load_pretrained(name)
    dissection = load_shipped_dissection(model)  # checks the weights' fingerprint
    assert list(dissection.layers) == list(model.analysable_layers())
    assert len(dissection.cases) == 10 and dissection.quantile == 0.99
    for layer, result in dissection.layers.items():
        assert (result.union >= result.intersection).all() and (result.threshold_error >= 0).all()
    assert dissection.detectors(), "the shipped models have concept detectors"
    # made with their controls, on the same cases: the random-weights network's layers, the four input channels
    assert set(dissection.controls) == {"random weights", "raw input"} and dissection.control_seed == 0
    assert list(dissection.controls["random weights"].layers) == list(dissection.layers)
    assert len(dissection.controls["raw input"].layers["input"].thresholds) == 4
    assert all(control.cases == dissection.cases for control in dissection.controls.values())
    assert all(row["iou"] >= row["control_iou"] + dissection.margin for row in dissection.detectors())


class CopyOrCompute(SegmentationNet):
    """Layer "a": filter 0 copies input channel 1 (WM) through a positive affine map; filter 1 averages channel 0
    over 3×3 — on a case whose channel 0 is the tumour core with half its voxels dropped (which the paper's 3×3
    opening wipes out), that mean fills the core back in: a concept the input alone does not show."""

    architecture = "copy-or-compute"
    divisor = 1

    def __init__(self) -> None:
        super().__init__()
        self.config = {}
        self.a = nn.Conv2d(4, 2, 3, padding=1)
        self.out = nn.Conv2d(2, 4, 1)
        with torch.no_grad():
            self.a.weight.zero_()
            self.a.bias.zero_()
            self.a.weight[0, 1, 1, 1], self.a.bias[0] = 2.0, 0.5
            self.a.weight[1, 0] = 1.0 / 9.0
        self._register_layer("a", "a")
        self._register_layer("out", "out")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.a(x)))


@pytest.fixture(scope="module")
def sparse_core_case(small_phantom):
    """Inputs: the tumour core with half its voxels dropped, white matter, noise, zeros."""
    case = load_case(small_phantom.flair.parent)
    rng = np.random.default_rng(1)
    core = region_mask(case.labels, "TC") & (rng.random(case.brain_mask.shape) > 0.5)
    images = np.stack([core, case.tissue == 3, rng.random(case.brain_mask.shape), np.zeros(core.shape)])
    return dataclasses.replace(case, images=images.astype(np.float32))


def test_a_filter_that_copies_an_input_channel_is_not_a_learned_detector(sparse_core_case, tmp_path):
    model = CopyOrCompute()
    result = dissect(model, [sparse_core_case], layers=["a"], concepts=["WT", "TC", "WM"], quantile=0.95)
    iou = result.layers["a"].iou
    tc, wm = result.concepts.index("TC"), result.concepts.index("WM")
    raw = result.controls["raw input"].layers["input"].iou
    assert iou[0, wm] > 0.2 and raw[0, tc] < 0.2 and iou[1, tc] > 0.5  # both reach the cutoff by far, but ...
    np.testing.assert_allclose(iou[0], raw[1])  # ... filter 0 is the input's channel 1, mask for mask
    assert result.controls["random weights"].architecture == "copy-or-compute (random weights)"
    bars = result.control_bars()
    assert bars["WM"]["iou"] >= raw[1, wm] and bars["TC"]["iou"] < iou[1, tc] - result.margin
    uncontrolled = {(row["filter"], row["concept"]) for row in result.detectors(controlled=False)}
    controlled = {(row["filter"], row["concept"]) for row in result.detectors()}
    assert (0, "WM") in uncontrolled and controlled == {(1, "TC")}
    assert all(row["control_iou"] == bars[row["concept"]]["iou"] for row in result.detectors())
    table = {row["concept"]: row for row in result.control_table()}
    assert table["TC"]["learned"] and not table["WM"]["learned"]
    assert table["WM"]["over_cutoff"] >= 1 and table["WM"]["detectors"] == 0
    # the controls' weights come from the seed and leave the model and the global random state alone
    state = torch.random.get_rng_state()
    again = dissect(model, [sparse_core_case], layers=["a"], concepts=["WT", "TC", "WM"], quantile=0.95)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(again.controls["random weights"].layers["a"].intersection,
                                  result.controls["random weights"].layers["a"].intersection)
    assert again.fingerprint == result.fingerprint
    # saved and read back: the same verdicts, the controls with it
    loaded = Dissection.load(result.save(tmp_path / "dissection.json"))
    assert loaded.detectors() == result.detectors() and loaded.control_seed == 0
    assert set(loaded.controls) == {"random weights", "raw input"}
    assert {path.name for path in loaded.write_tables(tmp_path / "tables")} == {"a.csv", "controls.csv"}


def _quantiles_on_ranks(rank: int, size: int, shares: list[list[torch.Tensor]], q: float, folder: str) -> None:
    """One rank of a gloo group (spawned): both passes over its own share of the batches, combined across ranks."""
    import torch.distributed as dist

    from BrainTumorExplainLib.ranks import Ranks

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=size)
    try:
        ranks, statistic = Ranks(rank, size), StreamingQuantiles(4, q, bins=256)
        for batch in shares[rank]:
            statistic.add(batch)
        statistic.start_refinement(ranks)
        for batch in shares[rank]:
            statistic.add(batch)
        statistic.combine(ranks)
        torch.save({"quantile": statistic.quantile(), "bound": statistic.error_bound()}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("q", [0.99, 0.5])
def test_ranks_combine_their_streams_within_the_stated_bound(q, tmp_path):
    """Issue 39: three ranks, each with its own batches (so histograms over ranges that do not line up; the last
    rank has none), find the quantile of all the values within the stated bound of the exact one, all alike, with
    a bound of the one-process size."""
    batches = _stream(2)
    exact = torch.quantile(torch.cat(batches, 1).double(), q, dim=1)
    alone = StreamingQuantiles(4, q, bins=256)
    for _ in range(2):
        for batch in batches:
            alone.add(batch)
        if alone.stage == 1:
            alone.start_refinement()
    torch.multiprocessing.spawn(_quantiles_on_ranks, (3, [batches[:3], batches[3:], []], q, str(tmp_path)), nprocs=3)
    found = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(3)]
    assert all(torch.equal(found[0]["quantile"], other["quantile"]) for other in found[1:])
    quantile, bound = found[0]["quantile"], found[0]["bound"]
    assert ((quantile - exact).abs() <= 2 * bound + 1e-12).all(), (quantile - exact, bound)
    assert (bound <= 4 * alone.error_bound()).all(), (bound, alone.error_bound())


class WiredToy(ConceptToy):
    """ConceptToy wired to segment: ET where the TC channel (filter 2 of "a") is on, ED where the WT channel
    (filter 0) is, background elsewhere; filters 1 and 3 feed nothing."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
            self.out.weight[2, 0] = 5.0  # ED from WT
            self.out.weight[3, 2] = 10.0  # ET from TC


def test_ablating_a_filter_the_output_uses_changes_the_segmentation_and_one_it_ignores_does_not(concept_case):
    """Issue 44: zeroing filter 2 (the TC detector the head reads) removes the predicted core — TC Dice 1 → 0 — while
    WT stays; zeroing filter 3 (noise, unused) changes no voxel; the weights are untouched."""
    model = WiredToy()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    found = filter_ablation(model, concept_case, [("a", 2), ("a", 3)])
    assert found["intact"]["WT"] == pytest.approx(1.0) and found["intact"]["TC"] == pytest.approx(1.0)
    core, noise = found["rows"]
    assert core["filters"] == [["a", 2]] and core["dice_change"]["TC"] == pytest.approx(-1.0)
    assert core["dice_change"]["WT"] == pytest.approx(0.0) and core["agreement"]["WT"] == pytest.approx(1.0)
    tc = region_mask(concept_case.labels, "TC")
    assert core["changed_voxels"] == pytest.approx(tc[concept_case.brain_mask].mean())
    assert noise["changed_voxels"] == 0 and all(v == 0 for v in noise["dice_change"].values())
    both = filter_ablation(model, concept_case, [("a", 0), ("a", 2)], together=True)["rows"]
    assert len(both) == 1 and both[0]["dice"]["WT"] == pytest.approx(0.0)  # nothing left but background
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown layer"):
        filter_ablation(model, concept_case, [("b", 0)])
    with pytest.raises(ValueError, match="numbered from 0"):
        filter_ablation(model, concept_case, [("a", -1)])
