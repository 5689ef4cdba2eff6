"""The three networks: shapes, dropout-only sampling, layer names, paper width, and safe weight files."""

import pickle

import pytest
import torch

from BrainTumorExplainLib.models import (
    ARCHITECTURES,
    WeightsError,
    build_model,
    dropout_modules,
    load_weights,
    save_weights,
    test_time_dropout,
)
from BrainTumorExplainLib.models.denseunet import DenseBlock, DenseLayer

TINY = {"denseunet": {"width": 0.125}, "resunet": {"width": 0.0625}, "simunet": {"width": 0.0625}}
LAYERS = {
    "resunet": ["enc1", "enc2", "enc3", "enc4", "bottleneck", "dec4", "dec3", "dec2", "dec1", "head"],
    "simunet": ["enc1", "enc2", "enc3", "enc4", "bottleneck", "dec4", "dec3", "dec2", "dec1", "head"],
    "denseunet": ["stem", "dense1", "trans1", "dense2", "trans2", "dense3", "trans3", "dense4",
                  "dec4", "dec3", "dec2", "dec1", "dec0", "head"],
}


@pytest.fixture(params=sorted(ARCHITECTURES))
def tiny(request):
    torch.manual_seed(0)
    return request.param, build_model(request.param, **TINY[request.param]).eval()


@pytest.mark.parametrize("height, width", [(240, 240), (100, 90), (33, 47)])
def test_any_slice_size_gives_four_class_maps_of_the_same_size(tiny, height, width):
    _, model = tiny
    with torch.no_grad():
        logits = model(torch.randn(2, 4, height, width))
        probabilities = model.predict(torch.randn(1, 4, height, width))
    assert logits.shape == (2, 4, height, width)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(1, height, width))


def test_wrong_input_channels_are_refused(tiny):
    with pytest.raises(ValueError, match=r"expected images \(N, 4, H, W\)"):
        tiny[1](torch.randn(1, 3, 32, 32))


def test_eval_is_deterministic_and_test_time_dropout_samples_without_touching_batchnorm(tiny):
    _, model = tiny
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        with test_time_dropout(model):
            assert all(m.training for m in dropout_modules(model))
            assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            first, second = model(x), model(x)
        assert not torch.equal(first, second)  # dropout samples
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name  # running statistics untouched
    assert not any(m.training for m in model.modules())  # eval mode restored
    assert len(dropout_modules(model)) >= 9 and all(m.p == 0.2 for m in dropout_modules(model))


def test_layer_names_are_stable_and_follow_the_forward_order(tiny):
    name, model = tiny
    layers = model.analysable_layers()
    assert list(layers) == LAYERS[name]
    order = []
    handles = [module.register_forward_hook(lambda m, i, o, n=n: order.append(n)) for n, module in layers.items()]
    with torch.no_grad():
        model(torch.randn(1, 4, 64, 64))
    for handle in handles:
        handle.remove()
    assert order == LAYERS[name]


def test_simunet_has_neither_skips_nor_residuals():
    res, sim = build_model("resunet", width=0.0625), build_model("simunet", width=0.0625)
    assert all(block.shortcut is not None for block in res.encoders)
    assert all(block.shortcut is None for block in sim.encoders) and not sim.skips
    assert res.decoders[0].body[2].in_channels > sim.decoders[0].body[2].in_channels  # concatenated skip


def test_paper_width_builds_densenet121_encoder():
    model = build_model("denseunet", width=1.0)
    blocks = [m for m in model.dense_blocks]
    assert [sum(isinstance(l, DenseLayer) for l in b) for b in blocks] == [6, 12, 24, 16]
    assert all(isinstance(b, DenseBlock) for b in blocks)
    first_layer = blocks[0][0].layers
    assert first_layer[-1].out_channels == 32 and first_layer[2].out_channels == 128  # growth 32, bottleneck 4k
    assert model.stem[0].out_channels == 64
    assert build_model("resunet", width=1.0).stem.out_channels == 64


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid models: denseunet, resunet, simunet"):
        build_model("vnet")


def test_weights_round_trip_and_refusals(tmp_path, tiny):
    name, model = tiny
    path = tmp_path / f"{name}.pt"
    digest = save_weights(model, path, note="test")
    loaded = load_weights(path, expected_sha256=digest, architecture=name)
    x = torch.randn(1, 4, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training

    tampered = tmp_path / "tampered.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_weights(tampered, expected_sha256=digest)

    other = "simunet" if name != "simunet" else "resunet"
    with pytest.raises(WeightsError, match=f"holds {name} weights, not {other}"):
        load_weights(path, architecture=other)


def test_weights_of_another_shape_get_a_clear_error_not_a_traceback(tmp_path):
    model = build_model("resunet", width=0.0625)
    path = tmp_path / "w.pt"
    save_weights(model, path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["width"] = 0.125  # claims another width than its tensors have
    torch.save(payload, path)
    with pytest.raises(WeightsError, match="do not match the checksum stored in the file"):
        load_weights(path)
    del payload["checksum"]  # as a file written before checksums: the shapes still give a clear error
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="has no checksum"), pytest.raises(WeightsError,
                                                                          match="weights do not fit resunet"):
        load_weights(path)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_never_executes_code_from_the_file(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as stream:
        pickle.dump({"format": 1, "payload": _Evil()}, stream)
    with pytest.raises(WeightsError, match="not a readable weights file"):
        load_weights(path)
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_shipped_weights_load_verified_and_segment_the_sample(name):
    from BrainTumorExplainLib.data.case import SAMPLE_CASE, load_case
    from BrainTumorExplainLib.data.labels import region_mask
    from BrainTumorExplainLib.models import load_pretrained, pretrained_manifest
    from BrainTumorExplainLib.models.inference import segment_case
    from BrainTumorExplainLib.models.registry import WEIGHTS_DIR, sha256_of
    from BrainTumorExplainLib.scoring.metrics import dice

    manifest = pretrained_manifest(name)
    assert sha256_of(WEIGHTS_DIR / manifest["weights"]) == manifest["sha256"]
    assert manifest["architecture"] == name and manifest["heldout"]["cases"]
    assert manifest["training"]["command"].startswith("python -m BrainTumorExplainLib train")
    model = load_pretrained(name)
    assert not model.training and model.config == manifest["config"]
    case = load_case(SAMPLE_CASE)
    labels = segment_case(model, case)
    assert dice(region_mask(labels, "WT"), region_mask(case.labels, "WT")) > 0.6  # a trained network, not noise
    # The sample is held-out case 1003: re-segmenting it reproduces the manifest's recorded scores.
    recorded = manifest["heldout"]["cases"][case.case_id]
    for region in ("WT", "TC", "ET"):
        measured = dice(region_mask(labels, region), region_mask(case.labels, region))
        assert measured == pytest.approx(recorded[region]["dice"], abs=1e-6), region
    if "storage" in manifest:  # re-shipped since issue 35: half precision, its labels compared on every held-out voxel
        stored = torch.load(WEIGHTS_DIR / manifest["weights"], weights_only=True)["state_dict"]
        assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
        assert manifest["storage"]["labels_changed"] <= 1e-4 * manifest["storage"]["heldout_brain_voxels"]
        as_read = [case for case in manifest["training"]["training_cases"] if "~" not in case]  # not acquisitions
        assert model.intensity_reference["cases"] == len(as_read) == 22
    if name == "denseunet":  # the best model: every class is predicted (NCR/NET once was not, see training.py)
        assert set(range(4)) <= set(labels.ravel().tolist())


def test_shipped_weights_fit_the_size_budget():
    from BrainTumorExplainLib.models.registry import WEIGHTS_DIR

    assert sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.pt")) <= 60e6
