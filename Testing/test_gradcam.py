"""Layer-wise Grad-CAM: against an independent per-layer autograd computation, a closed form, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from BrainTumorExplainLib.analyses.gradcam import (
    gradcam_maps,
    gradcam_volume,
    gradcam_weights,
    localisation,
    localisation_controls,
    normalise,
    raw_input_volume,
)
from BrainTumorExplainLib.analyses.sanity import cascading_randomisation
from BrainTumorExplainLib.data.case import load_case
from BrainTumorExplainLib.models import build_model
from BrainTumorExplainLib.models.base import SegmentationNet


class LinearToy(SegmentationNet):
    """x → A = W1·x (1×1 conv, layer "a") → logits = W2·A + b. With logits as the target, eq. 4 gives
    β_k^c = W2[c, k] / N (N = pixels of the padded map) and Grad-CAM = ReLU(Σ_k W2[c, k] A_k) / N."""

    architecture = "toy"
    divisor = 8

    def __init__(self, filters: int = 5) -> None:
        super().__init__()
        self.config = {}
        self.a = nn.Conv2d(4, filters, 1)
        self.out = nn.Conv2d(filters, 4, 1)
        self._register_layer("a", "a")
        self._register_layer("out", "out")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x))


def test_closed_form_on_a_linear_toy_with_padding():
    torch.manual_seed(0)
    model = LinearToy()
    x = torch.randn(2, 4, 13, 11)  # not a multiple of 8: the map is padded to 16x16 and cropped back
    cams = gradcam_maps(model, x, ["a"], "all", target="logits")["a"]
    padded_pixels = 16 * 16
    activation = model.a(x)  # 1x1 conv: the padded map, cropped, is the unpadded map
    expected = torch.relu(torch.einsum("ck,nkhw->nchw", model.out.weight[:, :, 0, 0], activation)) / padded_pixels
    assert cams.shape == (2, 4, 13, 11)
    torch.testing.assert_close(cams, expected.detach(), rtol=1e-5, atol=1e-9)


def test_a_cam_variant_is_one_weights_function():
    """The weights seam (as pytorch-grad-cam's get_cam_weights): with every filter weighted 1, the map is
    ReLU(Σ_k A_k) for every class — and the default weights are eq. 4's."""
    torch.manual_seed(1)
    model = LinearToy()
    x = torch.randn(2, 4, 16, 16)
    default = gradcam_maps(model, x, ["a"], "all", target="logits")["a"]
    assert torch.equal(default, gradcam_maps(model, x, ["a"], "all", target="logits", weights=gradcam_weights)["a"])
    flat = gradcam_maps(model, x, ["a"], "all", target="logits",
                         weights=lambda activation, gradient: torch.ones_like(gradient[:, :, :1, :1]))["a"]
    expected = torch.relu(model.a(x).sum(dim=1, keepdim=True)).expand(-1, 4, -1, -1)
    torch.testing.assert_close(flat, expected.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(flat, default)


def _independent_gradcam(model: SegmentationNet, x: torch.Tensor, layer: str, class_index: int, target: str,
                         pool: str = "image"):
    """One layer, one class, one hook, straight from eqs. 3-5 (the slow way the batched code replaces); ``pool``
    "predicted": y(c) is the mean over the slice's pixels labelled c, skipped (zero map) where there are none."""
    kept = {}
    handle = model.analysable_layers()[layer].register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        output = model(x)
    finally:
        handle.remove()
    labels = output.argmax(1)
    output = torch.softmax(output, 1) if target == "softmax" else output
    cams = []
    for n in range(x.shape[0]):  # one slice at a time: y(c) of that slice only
        region = labels[n] == class_index
        if pool == "predicted" and not region.any():
            cams.append(torch.zeros(x.shape[-2:]))
            continue
        score = output[n, class_index].mean() if pool == "image" else output[n, class_index][region].mean()
        (gradient,) = torch.autograd.grad(score, kept["a"], retain_graph=True)
        beta = gradient[n].mean(dim=(1, 2))
        cam = torch.relu((beta[:, None, None] * kept["a"][n]).sum(0))
        cams.append(torch.nn.functional.interpolate(cam.detach()[None, None], size=x.shape[-2:], mode="bilinear",
                                                    align_corners=False)[0, 0])
    return torch.stack(cams)


@pytest.mark.parametrize("architecture,pool", [("resunet", "image"), ("denseunet", "image"),
                                               ("resunet", "predicted")])
@pytest.mark.parametrize("target", ["softmax", "logits"])
def test_all_layers_at_once_equal_one_layer_at_a_time(architecture, target, pool):
    torch.manual_seed(1)
    model = build_model(architecture, width=0.125).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 64, 64)
    maps = gradcam_maps(model, x, "all", "all", target=target, pool=pool)
    assert list(maps) == list(model.analysable_layers())
    if pool == "predicted":  # some class is missing from some slice: its map there must be zero
        labels = model(x).argmax(1)
        assert any(not (labels[n] == c).any() for n in range(3) for c in range(4))
    for layer, cams in maps.items():
        for class_index in range(4):
            expected = _independent_gradcam(model, x, layer, class_index, target, pool)
            scale = float(expected.abs().max()) or 1.0
            assert float((cams[:, class_index] - expected).abs().max()) <= 1e-4 * scale, (layer, class_index)


def test_model_mode_and_hooks_are_restored():
    model = build_model("resunet", width=0.0625).train()
    gradcam_maps(model, torch.randn(1, 4, 32, 32), "enc1", "et")
    assert model.training
    assert all(not module._forward_hooks for module in model.modules())


def test_bad_input_is_named():
    model = build_model("simunet", width=0.0625)
    x = torch.randn(1, 4, 32, 32)
    with pytest.raises(ValueError, match="unknown layer.*valid layers: enc1, enc2"):
        gradcam_maps(model, x, "enc9")
    with pytest.raises(ValueError, match="class 7 out of range"):
        gradcam_maps(model, x, "enc1", [7])
    with pytest.raises(ValueError, match=r"expected images \(N, 4, H, W\)"):
        gradcam_maps(model, torch.randn(1, 3, 32, 32), "enc1")
    with pytest.raises(ValueError, match="unknown Grad-CAM target 'sigmoid'; expected one of probabilities, logits"):
        gradcam_maps(model, x, "enc1", target="sigmoid")


def test_volume_on_a_phantom_and_localisation(small_phantom):
    case = load_case(small_phantom.flair.parent)
    torch.manual_seed(0)
    model = build_model("resunet", width=0.0625)
    volume = gradcam_volume(model, case, ["enc1", "head"], "tumour", batch_size=16)
    brain_slices = case.brain_slices()
    assert set(volume.maps) == {(layer, c) for layer in ("enc1", "head") for c in (1, 2, 3)}
    head_et = volume.maps[("head", 3)]
    assert head_et.shape == case.brain_mask.shape and head_et.dtype == np.float32
    outside = np.setdiff1d(np.arange(case.brain_mask.shape[0]), brain_slices)
    assert not head_et[outside].any()  # slices without brain are never computed
    assert (head_et >= 0).all() and head_et[brain_slices].any()
    display = normalise(volume.maps[("head", 3)])
    assert display.max() == pytest.approx(1.0) and display.min() >= 0

    # A map that is the WT indicator puts all its mass in WT and its top voxels inside WT.
    from BrainTumorExplainLib.data.labels import region_mask

    wt = region_mask(case.labels, "WT")
    volume.maps[("enc1", 2)] = wt.astype(np.float32)
    table = localisation(volume, case, top_fraction=0.01)
    entry = table["enc1"]["ED"]
    assert entry["WT"].mass_inside == pytest.approx(1.0)
    assert entry["WT"].chance == pytest.approx(wt.sum() / case.brain_mask.sum())
    assert entry["brain"].mass_inside == pytest.approx(1.0)
    assert 0 < entry["WT"].top_iou <= 1
    assert entry["WT"].top_iou > entry["ET"].top_iou or entry["ET"].mass_inside > 0.9


def test_localisation_controls_on_known_maps(small_phantom):
    """The raw-input control of a channel that is the region itself puts all its mass inside; a channel below its
    mean everywhere has no mass; the random-weights column is the same Grad-CAM of a re-initialised network."""
    from BrainTumorExplainLib.analyses.controls import random_weights
    from BrainTumorExplainLib.data.labels import region_mask

    case = load_case(small_phantom.flair.parent)
    slices = case.brain_slices()[::4]
    et = region_mask(case.labels, "ET")
    channels = np.stack([et.astype(np.float32), -np.ones(et.shape, np.float32), case.images[2]])
    raw = localisation(raw_input_volume(channels, ["et", "dark", "t1ce"], slices), case)
    assert raw["input"]["et"]["ET"].mass_inside == pytest.approx(1.0)
    assert np.isnan(raw["input"]["dark"]["ET"].mass_inside)  # an all-zero map has no share anywhere
    torch.manual_seed(0)
    model = build_model("resunet", width=0.0625)
    control = random_weights(model, seed=5)
    assert not torch.equal(model.head[2].weight, control.head[2].weight)
    again = random_weights(model, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(control.state_dict().values(), again.state_dict().values()))
    trained = localisation(gradcam_volume(model, case, ["enc1", "head"], "tumour", slices=slices), case)
    random = localisation(gradcam_volume(control, case, ["enc1", "head"], "tumour", slices=slices), case)
    result = localisation_controls(trained, random, raw, {"ET": "ET", "WT": "WT"}, seed=5, slices=len(slices))
    entry = result["targets"]["ET"]
    assert entry["raw input"] == {"channel": "et", "mass_inside": 1.0}  # the best channel, named
    assert entry["chance"] == pytest.approx(et[slices].sum() / case.brain_mask[slices].sum(), abs=1e-4)
    for layer, column, table in (("head", "random weights", random), ("enc1", "trained", trained)):
        np.testing.assert_equal(entry["layers"][layer][column], round(table[layer]["ET"]["ET"].mass_inside, 4))
    assert result["seed"] == 5 and result["slices"] == len(slices)


def test_normalise_keeps_zero_maps_zero():
    assert not normalise(np.zeros((3, 3))).any()
    assert normalise(np.array([0.0, 2.0, 4.0])).tolist() == [0.0, 0.5, 1.0]


def test_cascading_randomisation_moves_a_gradcam_map_and_not_a_map_that_ignores_the_weights_above(small_phantom):
    """Issue 41 (Adebayo et al. 2018): randomising the output layer must move layer a's Grad-CAM (its weights β are
    the output layer's); a map weighting every filter 1 — ReLU(Σ_k A_k), blind to everything above a — keeps ρ = 1
    until a itself is randomised. The model is not touched; the last step has every parameter random."""
    torch.manual_seed(3)
    model = LinearToy()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    case = load_case(small_phantom.flair.parent)
    slices = case.brain_slices()[::3]
    found = cascading_randomisation(model, case, ["a"], "all", slices, target="logits")
    assert found["randomised"] == ["out", "a"] and found["slices"] == len(slices)
    shares = found["parameter_share"]
    assert shares[0] == pytest.approx((5 * 4 + 4) / (4 * 5 + 5 + 5 * 4 + 4)) and shares[1] == 1.0
    moved = found["spearman"]["a"]
    assert set(moved) == {"background", "NCR/NET", "ED", "ET"}
    assert all(rho is None or rho < 0.9 for rho in (moved[name][0] for name in moved))
    blind = cascading_randomisation(model, case, ["a"], [1], slices, target="logits",
                                    weights=lambda activation, gradient: torch.ones_like(gradient[:, :, :1, :1]))
    first, second = blind["spearman"]["a"]["NCR/NET"]
    assert first == pytest.approx(1.0) and second < 0.99
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
