"""Training a 3D network as a MONAI bundle (the shipped 3D network's recipe): the bundle it writes is one MONAI runs
itself, our loader reads, and an interrupted run ends with the same weights; the shipped bundle is checked file by
file before it loads."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from BrainTumorExplainLib.app.bundle_training import BundleTrainConfig, train_bundle  # noqa: E402
from BrainTumorExplainLib.app.cli import main  # noqa: E402
from BrainTumorExplainLib.data.case import load_case  # noqa: E402
from BrainTumorExplainLib.models import load_model  # noqa: E402
from BrainTumorExplainLib.models.description import network_inputs  # noqa: E402
from BrainTumorExplainLib.models.inference import case_probabilities  # noqa: E402
from BrainTumorExplainLib.models.space import into_network_space  # noqa: E402
from conftest import torchrun  # noqa: E402

TINY = BundleTrainConfig(name="tiny3d", init_filters=8, blocks_down=(1, 1), blocks_up=(1,), spacing_mm=4.0, crop=24,
                         window=32, epochs=2, steps_per_epoch=3, batch_size=2, validation_cases=1, seed=2)


@pytest.fixture(scope="module")
def trained(training_phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny3d"
    return out, train_bundle(training_phantoms, out, TINY, progress=False, log=lambda _: None)


def test_the_trained_bundle_is_described_by_its_own_configs(trained):
    folder, history = trained
    assert [h["epoch"] for h in history] == [1, 2] and set(history[-1]["validation_dice"]) == {"TC", "WT", "ET"}
    network = load_model(str(folder))
    description = network.description
    assert description.channels == ("t1ce", "t1", "t2", "flair")  # MONAI's BraTS bundle order
    assert (description.outputs, description.output_names) == ("sigmoid", ("TC", "WT", "ET"))
    assert description.axes == "RAS" and description.spacing_mm == (4.0, 4.0, 4.0)
    assert description.window == (32, 32, 32) and description.blend == "gaussian" and description.dropout
    record = json.loads((folder / "configs" / "training.json").read_text())
    assert record["validation_cases"] == ["Phantom_00062"] and record["training"]["seed"] == 2
    assert not (folder.parent / "tiny3d.checkpoint.pt").exists()  # removed once the bundle is published


def test_monai_runs_the_trained_bundle_as_we_do(trained, training_phantoms):
    """MONAI's own ConfigParser runs the bundle's preprocessing (Orientationd RAS, Spacingd 4 mm), inferer and
    Activationsd + Invertd. Its network inputs are ours, on the same grid, but for brain-edge voxels where MONAI's
    interpolation leaves ~1e-13 instead of 0 and NormalizeIntensityd(nonzero) counts them as brain; fed our inputs
    (those voxels zero, as in training), its maps on the 3 mm input are ours."""
    from monai.bundle import ConfigParser

    folder, _ = trained
    case_folder = training_phantoms / "Phantom_00062"
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    files = [str(case_folder / f"Phantom_00062_{name}.nii.gz") for name in ("t1ce", "t1", "t2", "flair")]
    data = parser.get_parsed_content("preprocessing")({"image": files})
    network = load_model(str(folder))
    case = load_case(case_folder)
    resampled = into_network_space(case, network)
    inputs = network_inputs(resampled, network.description)
    assert inputs.shape == tuple(data["image"].shape) == (4, 60, 60, 39)
    theirs_in = np.asarray(data["image"])
    for channel in range(4):
        ours_brain = inputs[channel] != 0
        assert ((theirs_in[channel] != 0) != ours_brain).mean() < 0.01  # the edge voxels MONAI calls brain
        assert np.corrcoef(inputs[channel][ours_brain], theirs_in[channel][ours_brain])[0, 1] > 0.99999
    data["image"][:] = torch.from_numpy(inputs)  # in place: the transforms' record for Invertd stays
    module = parser.get_parsed_content("network")
    module.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    module.eval()
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], module)[0]
    post = parser.get_parsed_content("postprocessing").transforms
    theirs = np.asarray(post[1](post[0](data))["pred"])  # sigmoid, then back onto the input grid; (3, i, j, k)

    ours_canonical = [resampled.grid.to_reference(c) for c in case_probabilities(network, resampled)]
    import SimpleITK as sitk

    ours = np.stack([sitk.GetArrayFromImage(case.grid.to_image(c)).transpose(2, 1, 0) for c in ours_canonical])
    brain = sitk.GetArrayFromImage(case.grid.to_image(case.brain_mask)).transpose(2, 1, 0) > 0
    assert ours.shape == theirs.shape
    for region in range(3):
        assert np.abs(ours[region][brain] - theirs[region][brain]).max() < 1e-3


def test_interrupted_bundle_training_resumes_to_the_same_weights(training_phantoms, tmp_path):
    config = replace(TINY, epochs=2, steps_per_epoch=2)
    train_bundle(training_phantoms, tmp_path / "straight", config, progress=False, log=lambda _: None)

    class Stop(Exception):
        pass

    def stop(message):
        raise Stop(message)

    with pytest.raises(Stop):
        train_bundle(training_phantoms, tmp_path / "resumed", config, progress=False, log=stop)
    assert not (tmp_path / "resumed").exists()  # nothing published from the interrupted run
    messages = []
    train_bundle(training_phantoms, tmp_path / "resumed", config, progress=False, log=messages.append)
    assert messages[0].startswith("resuming from") and "after epoch 1" in messages[0]
    straight = torch.load(tmp_path / "straight" / "models" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_train_bundle_verb_refuses_to_overwrite_and_names_bad_data(training_phantoms, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["train-bundle", "--data", str(training_phantoms), "--out", str(taken), "--epochs", "1"]) == 2
    assert "exists" in capsys.readouterr().err and (taken / "notes.txt").read_text() == "mine"
    assert main(["train-bundle", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.startswith("error:") and not (tmp_path / "b").exists()


def test_the_shipped_bundle_is_checked_file_by_file(tmp_path, monkeypatch):
    from BrainTumorExplainLib.errors import WeightsError
    from BrainTumorExplainLib.models import registry

    manifest = registry.pretrained_manifest("segresnet3d")
    network = load_model("segresnet3d")
    assert network.description.spatial_dims == 3 and network.description.dropout
    assert manifest["heldout"]["mean"]["WT"]["dice"] > 0.5
    copy = tmp_path / "weights"
    shutil.copytree(registry.WEIGHTS_DIR, copy)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", copy)
    config = copy / manifest["bundle"] / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"overlap": 0.5', '"overlap": 0.25'))
    with pytest.raises(WeightsError, match="inference.json: does not match its manifest"):
        load_model("segresnet3d")
    with pytest.raises(Exception, match="bundle and brings its own"):
        load_model("segresnet3d", weights=str(tmp_path / "w.pt"))


def test_train_bundle_under_two_ranks_publishes_one_bundle(training_phantoms, tmp_path):
    """Issue 39: train-bundle under torchrun (2 ranks, gloo): data-parallel, rank 0 alone logs and publishes the
    bundle, which loads and segments; the other rank's scratch configs leave nothing behind."""
    out = tmp_path / "ranked"
    done = torchrun("train-bundle", "--data", str(training_phantoms), "--out", str(out), "--init-filters", "8",
                    "--spacing", "4", "--crop", "24", "--window", "32", "--epochs", "1", "--steps", "2",
                    "--batch-size", "2", "--validation", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1:") == 1 and done.stdout.count("wrote ") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranked"]  # no checkpoint, lock or partial folder left
    model = load_model(str(out))
    case = into_network_space(load_case(training_phantoms / "Phantom_00062"), model)
    probabilities = case_probabilities(model, case)
    assert probabilities.shape[0] == 3 and 0 <= probabilities.min() <= probabilities.max() <= 1  # TC, WT, ET
