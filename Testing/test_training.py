"""Training, resuming, evaluating and segmenting with the CLI verbs on tiny phantoms and tiny networks."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BrainTumorExplainLib.app.cli import main
from BrainTumorExplainLib.app.training import TrainConfig, train
from BrainTumorExplainLib.data.case import MODALITIES, CaseError, find_cases, load_case
from BrainTumorExplainLib.models import load_weights
from conftest import torchrun

CONFIG = TrainConfig(model="resunet", width=0.0625, epochs=3, steps_per_epoch=8, batch_size=4, crop=(64, 64),
                     validation_cases=1, seed=3)


@pytest.fixture(scope="module")
def tiny_data(training_phantoms):
    return training_phantoms


def test_training_lowers_the_loss_and_writes_loadable_weights(tiny_data, tmp_path):
    history = train(tiny_data, tmp_path / "w.pt", CONFIG, progress=False, log=lambda _: None)
    assert len(history) == 3
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(history[-1]["validation_dice"]) == {"WT", "TC", "ET"}
    model = load_weights(tmp_path / "w.pt", architecture="resunet")
    assert model.config["width"] == 0.0625
    assert (tmp_path / "w.pt.ckpt").is_file()
    # The file says the space it was trained in (3 mm phantoms), so its cases are not resampled to the shipped 1 mm.
    from BrainTumorExplainLib.data.case import load_case
    from BrainTumorExplainLib.models.space import into_network_space, training_spacing

    assert training_spacing(model) == (3.0, 3.0, 3.0)
    case = load_case(tiny_data / "Phantom_00062")
    assert into_network_space(case, model) is case
    # It keeps its training cases' intensities for the domain check (data.domain), the validation case not among them.
    assert model.intensity_reference["cases"] == 2 and set(model.intensity_reference["sequences"]) == set(MODALITIES)
    # Stored in half precision, as the shipped files are: half the bytes, float32 parameters again when loaded, and
    # the labels of the trained network kept.
    from BrainTumorExplainLib.models import save_weights
    from BrainTumorExplainLib.models.inference import segment_case

    save_weights(model, tmp_path / "half.pt", half=True, training_spacing_mm=[3.0, 3.0, 3.0])
    stored = torch.load(tmp_path / "half.pt", weights_only=True)["state_dict"]
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "w.pt").stat().st_size
    half = load_weights(tmp_path / "half.pt", architecture="resunet")
    assert next(half.parameters()).dtype == torch.float32
    assert half.intensity_reference is None  # save_weights keeps only the metadata it is given
    labels = segment_case(model, case)
    assert np.mean(segment_case(half, case) != labels) < 1e-3 and len(np.unique(labels)) > 1


def test_interrupted_training_resumes_to_the_same_weights(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "straight.pt", CONFIG, progress=False, log=lambda _: None)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(message):
        raise Stop(message)

    with pytest.raises(Stop):
        train(tiny_data, tmp_path / "resumed.pt", CONFIG, progress=False, log=stop_after_first_epoch)
    messages = []
    train(tiny_data, tmp_path / "resumed.pt", CONFIG, progress=False, log=messages.append)
    assert messages[0].startswith("resuming from") and "after epoch 1" in messages[0]
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "w.pt", CONFIG, progress=False, log=lambda _: None)
    other = TrainConfig(**{**CONFIG.__dict__, "learning_rate": 1e-4})
    with pytest.raises(ValueError, match="checkpoint of a different training configuration"):
        train(tiny_data, tmp_path / "w.pt", other, progress=False, log=lambda _: None)


def test_evaluate_and_segment_verbs(tiny_data, tmp_path, capsys):
    train(tiny_data, tmp_path / "w.pt", CONFIG, progress=False, log=lambda _: None)
    case_folder = tiny_data / "Phantom_00062"
    assert main(["evaluate", "--data", str(tiny_data), "--model", "resunet", "--weights", str(tmp_path / "w.pt"),
                 "--json", str(tmp_path / "e.json")]) == 0
    summary = json.loads((tmp_path / "e.json").read_text())
    assert sorted(summary["cases"]) == ["Phantom_00060", "Phantom_00061", "Phantom_00062"]
    assert 0.0 <= summary["mean"]["WT"]["dice"] <= 1.0
    cases = summary["cases"].values()  # lesion-wise too: means of the cases' scores, lesion counts summed
    assert summary["mean"]["ET"]["lesion_dice"] == pytest.approx(np.mean([c["ET"]["lesion_dice"] for c in cases]))
    assert summary["mean"]["WT"]["lesion_fn"] == sum(c["WT"]["lesion_fn"] for c in cases)
    assert "lesion counts summed" in summary["mean_convention"]
    printed = capsys.readouterr().out
    assert "mean (3)" in printed and "WT L-Dice" in printed
    assert main(["segment", str(case_folder), "--model", "resunet", "--weights", str(tmp_path / "w.pt"),
                 "--out", str(tmp_path / "seg.nii.gz")]) == 0
    written = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    reference = sitk.ReadImage(str(case_folder / "Phantom_00062_flair.nii.gz"))
    assert written.GetSize() == reference.GetSize() and written.GetOrigin() == reference.GetOrigin()
    assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1, 2, 4}
    case = load_case(case_folder)
    assert not sitk.GetArrayFromImage(written)[~case.grid.reorientation.from_canonical(case.brain_mask)].any()


def test_bad_training_and_evaluation_input(tiny_data, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaseError, match="no BraTS case folders found"):
        find_cases(empty)
    assert main(["train", "--data", str(tiny_data), "--model", "unet3d", "--out", str(tmp_path / "x.pt")]) == 2
    assert "valid models: denseunet, resunet, simunet" in capsys.readouterr().err
    unlabelled = tmp_path / "unlabelled" / "Phantom_00060"
    unlabelled.mkdir(parents=True)
    for path in (tiny_data / "Phantom_00060").glob("*_[ft]*.nii.gz"):
        if "tissue" not in path.name:
            (unlabelled / path.name).write_bytes(path.read_bytes())
    train(tiny_data, tmp_path / "w.pt", CONFIG, progress=False, log=lambda _: None)
    assert main(["evaluate", "--data", str(unlabelled.parent), "--model", "resunet", "--weights",
                 str(tmp_path / "w.pt")]) == 2
    assert "no label file (_seg), so this case cannot be evaluated" in capsys.readouterr().err
    broken = tmp_path / "broken"  # a bad case among good ones: named, and the others scored
    shutil.copytree(tiny_data, broken)
    next((broken / "Phantom_00061").glob("*_t2.nii.gz")).write_bytes(b"not an image")
    assert main(["evaluate", "--data", str(broken), "--model", "resunet", "--weights", str(tmp_path / "w.pt"),
                 "--json", str(tmp_path / "b.json")]) == 2
    assert "cannot read t2 image" in capsys.readouterr().err
    summary = json.loads((tmp_path / "b.json").read_text())
    assert sorted(summary["cases"]) == ["Phantom_00060", "Phantom_00062"]
    assert [entry["case"] for entry in summary["failed"]] == ["Phantom_00061"]
    interval = summary["mean_interval"]["WT"]["dice"]
    assert interval["n"] == 2 and interval["mean"] == pytest.approx(summary["mean"]["WT"]["dice"])
    assert main(["segment", str(unlabelled), "--model", "denseunet", "--weights", str(tmp_path / "w.pt"),
                 "--out", str(tmp_path / "s.nii.gz")]) == 2
    assert "holds resunet weights, not denseunet" in capsys.readouterr().err
    assert not (tmp_path / "s.nii.gz").exists()


def test_loss_dice_term_ignores_tumour_classes_absent_from_the_batch():
    from BrainTumorExplainLib.app.training import segmentation_loss

    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 2  # only edema present
    weights = torch.ones(4)
    perfect = torch.full((1, 4, 4, 4), -20.0)
    perfect[0, 0][target[0] == 0] = 20.0
    perfect[0, 2][target[0] == 2] = 20.0
    ncr_leak = perfect.clone()
    ncr_leak[0, 1, 3, 3] = 25.0  # one background pixel called NCR/NET
    cross_entropy_only = torch.nn.functional.cross_entropy(ncr_leak, target)
    # Edema's Dice is 1; the absent NCR/NET class adds nothing to the Dice term, only to cross-entropy.
    assert float(segmentation_loss(perfect, target, weights)) == pytest.approx(0.0, abs=1e-6)
    assert float(segmentation_loss(ncr_leak, target, weights)) == pytest.approx(float(cross_entropy_only), abs=1e-4)
    assert float(segmentation_loss(perfect, torch.zeros(1, 4, 4, dtype=torch.long), weights)) > 0  # CE alone


def test_training_leaves_the_global_torch_rng_alone(tiny_data, tmp_path):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    train(tiny_data, tmp_path / "w.pt", TrainConfig(**{**CONFIG.__dict__, "epochs": 1, "steps_per_epoch": 2}),
          progress=False, log=lambda _: None)
    assert torch.equal(torch.get_rng_state(), before)


def test_clinical_acquisitions_of_the_training_cases_are_seeded_and_in_the_training_space(tiny_data, tmp_path,
                                                                                       monkeypatch):
    """Issue 35: each training case seen through a random clinical acquisition and brought back as inference brings
    a scan — on the training grid, with its labels, the same for the same seed — and trained on beside the
    originals (their ids in the weights file); the validation case gets none."""
    from BrainTumorExplainLib.app.training import acquired_cases

    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 1, "steps_per_epoch": 2, "acquisitions": 1})
    paths = find_cases(tiny_data)[:2]
    first, again = (list(acquired_cases(paths, config, (3.0, 3.0, 3.0), False)) for _ in range(2))
    assert [case.case_id for case in first] == ["Phantom_00060~acq0", "Phantom_00061~acq0"]
    original = load_case(paths[0])
    for case, same in zip(first, again):
        assert case.grid.canonical_spacing == (3.0, 3.0, 3.0) and case.labels is not None
        np.testing.assert_allclose(case.images, same.images, atol=1e-2)  # registration threads: equal to rounding
        assert case.labels.any() and 0.5 < case.brain_mask.sum() / original.brain_mask.sum() < 1.5
    assert first[0].images.shape != original.images.shape or not np.allclose(first[0].images, original.images)
    train(tiny_data, tmp_path / "w.pt", config, progress=False, log=lambda _: None)
    metadata = torch.load(tmp_path / "w.pt", weights_only=True)["metadata"]
    assert metadata["training"]["acquisitions"] == 1
    assert metadata["training_cases"] == ["Phantom_00060", "Phantom_00061", "Phantom_00060~acq0", "Phantom_00061~acq0"]
    # Kept in a cache, the acquisitions are read back as made: the next run makes none.
    cache = tmp_path / "acquisitions"
    made = list(acquired_cases(paths, config, (3.0, 3.0, 3.0), False, cache=cache))
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob("*.partial*"))
    from BrainTumorExplainLib.data import acquisition

    def refuse(*_args, **_kwargs):
        raise AssertionError("an acquisition was made again although it was kept")

    monkeypatch.setattr(acquisition, "reacquire", refuse)
    read = list(acquired_cases(paths, config, (3.0, 3.0, 3.0), False, cache=cache))
    for case, back in zip(made, read):
        assert back.case_id == case.case_id and back.grid.canonical_spacing == case.grid.canonical_spacing
        np.testing.assert_array_equal(back.images, case.images)
        np.testing.assert_array_equal(back.labels, case.labels)


def test_upright_share_draws_that_share_of_each_batch_from_the_cases_as_read():
    """``upright_share`` 1 draws only from the cases as read, 0 only from the acquisitions; None draws every case
    alike (the RNG's use unchanged for the recipes that predate it)."""
    from BrainTumorExplainLib.app.training import SliceData

    def slices(value: int) -> np.ndarray:
        return np.full((4, 3, 8, 8), value, dtype=np.float16)

    data = SliceData([slices(1), slices(2), slices(-1)], [np.ones((3, 8, 8), np.uint8)] * 3, [(4, 4)] * 3,
                     ["A", "B", "A~acq0"])
    for share, expected in ((1.0, {1.0, 2.0}), (0.0, {-1.0})):
        x, _ = data.sample(np.random.default_rng(0), 64, (8, 8), 0.7, augment=False, upright_share=share)
        assert set(x[:, 0, 4, 4].tolist()) == expected
    x, _ = data.sample(np.random.default_rng(0), 64, (8, 8), 0.7, augment=False)
    assert set(x[:, 0, 4, 4].tolist()) == {1.0, 2.0, -1.0}


def test_the_trainers_options_are_their_configs_fields(tmp_path, capsys):
    """train and train-bundle take their options from TrainConfig and BundleTrainConfig (one spelling, one
    default, one check each)."""
    from BrainTumorExplainLib.app.bundle_training import BundleTrainConfig
    from BrainTumorExplainLib.app.cli import build_parser
    from BrainTumorExplainLib.app.settings import config_from_arguments

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--model", "simunet", "--out", "w.pt", "--steps", "5", "--lr",
                              "0.01", "--validation", "3", "--acquisitions", "2", "--upright-share", "0.5"])
    assert config_from_arguments(args, TrainConfig, device="cpu") == TrainConfig(
        model="simunet", steps_per_epoch=5, learning_rate=0.01, validation_cases=3, acquisitions=2, upright_share=0.5)
    args = parser.parse_args(["train-bundle", "--data", "d", "--out", "b", "--spacing", "3", "--epochs", "4"])
    assert config_from_arguments(args, BundleTrainConfig, device="cpu") == BundleTrainConfig(spacing_mm=3.0, epochs=4)
    assert main(["train", "--data", str(tmp_path), "--model", "resunet", "--out", str(tmp_path / "w.pt"),
                 "--upright-share", "1.5"]) == 2
    assert "--upright-share 1.5: expected a finite number ≥ 0 and ≤ 1" in capsys.readouterr().err


# the CLI's spelling of RANKED, for the run under torchrun
RANKED = TrainConfig(model="resunet", width=0.0625, epochs=2, steps_per_epoch=4, batch_size=4, validation_cases=1,
                     seed=3)
RANKED_OPTIONS = ["--model", "resunet", "--width", "0.0625", "--epochs", "2", "--steps", "4", "--batch-size", "4",
                  "--validation", "1", "--seed", "3", "--device", "cpu"]


def _train_on_ranks(rank: int, data: str, out: str, folder: str, stop_after_first_epoch: bool) -> None:
    """One rank of a 2-rank gloo group (spawned) training RANKED; rank 0 stops after its first epoch's checkpoint
    when told, as a killed job would, and rank 1 then fails on its next gradient exchange."""
    import torch.distributed as dist

    from BrainTumorExplainLib.ranks import Ranks

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    torch.set_num_threads(1)  # as torchrun's ranks on this machine: float sums in the same order

    def log(message):
        if stop_after_first_epoch and message.startswith("epoch 1:"):
            raise SystemExit(3)

    try:
        train(data, out, RANKED, progress=False, log=log, ranks=Ranks(rank, 2))
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_data_parallel_and_a_stopped_run_resumes_to_the_same_weights(tiny_data, tmp_path):
    """Issue 39: train under torchrun (2 ranks, gloo): DistributedDataParallel, each rank half of each step's batch
    from its own seeded stream, rank 0 writes the checkpoint (with both ranks' streams) and the weights. A run stopped
    after its first epoch resumes on two ranks to the uninterrupted run's weights exactly; not on one."""
    done = torchrun("train", "--data", str(tiny_data), *RANKED_OPTIONS, "--out", str(tmp_path / "straight.pt"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("epoch 2:") == 1  # rank 0 alone logs
    state = torch.load(tmp_path / "straight.pt.ckpt", weights_only=True)
    assert state["ranks"] == 2 and len(json.loads(state["numpy_rng"])) == 2
    resumed = tmp_path / "resumed.pt"
    with pytest.raises((torch.multiprocessing.ProcessExitedException, torch.multiprocessing.ProcessRaisedException)):
        # rank 0 stops after epoch 1; rank 1 loses it in the next gradient exchange
        torch.multiprocessing.spawn(_train_on_ranks, (str(tiny_data), str(resumed), str(tmp_path), True), nprocs=2)
    assert not resumed.exists() and len(json.loads(torch.load(tmp_path / "resumed.pt.ckpt", weights_only=True)
                                                   ["history"])) == 1
    with pytest.raises(ValueError, match="checkpoint of a run on 2 process"):  # alone, the streams would not match
        train(tiny_data, resumed, RANKED, progress=False, log=lambda _: None)
    (tmp_path / "rendezvous").unlink(missing_ok=True)
    torch.multiprocessing.spawn(_train_on_ranks, (str(tiny_data), str(resumed), str(tmp_path), False), nprocs=2)
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)["state_dict"]
    again = torch.load(resumed, weights_only=True)["state_dict"]
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)
