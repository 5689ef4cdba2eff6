"""Nothing lost, nothing silently wrong: one test per defect of the hostile-input run (issue 20), on the command line
through subprocess or main(), and on the Slicer logic through slicer-core."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import FAST_EXPLAIN, synthetic_case, write_image

from BrainTumorExplainLib.app.cli import main
from BrainTumorExplainLib.data.case import CaseError, load_case, read_label_file
from BrainTumorExplainLib.models import WeightsError, build_model, load_weights, save_weights
from BrainTumorExplainLib.outputs import OutputFolder

FAST = list(FAST_EXPLAIN)
SEGMENT = ["--model", "resunet", "--device", "cpu", "--no-resample"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def case(small_phantom, tmp_path):
    """A private copy of the small phantom (tests here try to destroy it)."""
    copy = tmp_path / "case" / small_phantom.case_id
    shutil.copytree(small_phantom.flair.parent, copy)
    return copy


def _cli(*arguments: str, env: dict | None = None, preexec=None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "BrainTumorExplainLib", *arguments], capture_output=True, text=True,
                          env=env, preexec_fn=preexec, timeout=timeout)


def _one_error_line(result, *words: str) -> None:
    """Exit 2 with exactly one ``error:`` line (progress bars may precede it) and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


# -- data loss -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["case", "parent"])
def test_overwrite_never_deletes_the_input_case(case, capsys, where):
    before = _digest(case.parent)
    out = case if where == "case" else case.parent
    assert main(["explain", str(case), *FAST, "--out", str(out), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert ("this is an input" if where == "case" else "contains the input") in error
    assert _digest(case.parent) == before


def test_overwrite_deletes_only_a_result_of_ours(case, tmp_path, capsys):
    foreign = tmp_path / "my thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("months of work")
    assert main(["explain", str(case), *FAST, "--out", str(foreign), "--overwrite"]) == 2
    assert "is not a BrainTumorExplain result" in capsys.readouterr().err
    assert (foreign / "chapter1.tex").read_text() == "months of work"


@pytest.mark.parametrize("target", ["flair", "seg"])
def test_segment_never_writes_over_an_input(case, capsys, target):
    path = next(case.glob(f"*_{target}.nii.gz"))
    before = path.read_bytes()
    assert main(["segment", str(case), *SEGMENT, "--out", str(path), "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err and path.read_bytes() == before


def test_segment_refuses_an_existing_file_and_replaces_it_whole_with_overwrite(case, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"an earlier result")
    assert main(["segment", str(case), *SEGMENT, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"an earlier result"
    assert main(["segment", str(case), *SEGMENT, "--out", str(out), "--overwrite"]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == sitk.ReadImage(str(next(case.glob("*_flair.nii.gz")))).GetSize()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_a_second_run_to_a_locked_destination_fails_at_once_and_publishes_nothing(case, tmp_path):
    out = tmp_path / "run"
    with OutputFolder(out, producer="explain") as work:  # another run holds the destination
        (work / "summary.json").write_text("{}")
        result = _cli("explain", str(case), *FAST, "--out", str(out), "--overwrite")
        _one_error_line(result, "another run", str(out))
        assert "[segmentation]" not in result.stdout  # it did no work
    assert json.loads((out / "summary.json").read_text()) == {}  # what is published is the first run's alone
    assert not out.with_name(".run.lock").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(case, tmp_path):
    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    out.with_name(".run.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                                      "started": "long ago"}))
    assert main(["explain", str(case), *FAST, "--no-scene", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file() and not out.with_name(".run.lock").exists()


def test_the_private_folder_of_a_killed_run_is_removed_when_its_lock_is_taken_over(tmp_path):
    import socket

    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys\n"
                             "from BrainTumorExplainLib.outputs import OutputFolder\n"
                             f"work = OutputFolder({str(out)!r}, producer='explain').__enter__()\n"
                             "(work / 'segmentation.nii.gz').write_bytes(b'half a volume')\n"
                             "os.kill(os.getpid(), signal.SIGKILL)"], cwd=Path(__file__).parents[1])
    assert killed.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".run.partial-*"))
    assert len(left) == 1 and out.with_name(".run.lock").exists()
    running = tmp_path / ".run.partial-0000live"  # one whose process still runs (ours) is not touched
    running.mkdir()
    (running / ".braintumorexplain").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with OutputFolder(out, producer="explain") as work:
        (work / "summary.json").write_text("{}")
    assert json.loads((out / "summary.json").read_text()) == {} and not (out / "segmentation.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.partial-0000live", "run"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_image_files_are_refused_by_name(case, suffix, capsys):
    flair = next(case.glob("*_flair.nii.gz"))
    if suffix == ".nii":
        image = sitk.ReadImage(str(flair))
        flair.unlink()
        flair = flair.with_name(flair.name.replace(".nii.gz", ".nii"))
        sitk.WriteImage(image, str(flair))
    data = flair.read_bytes()
    flair.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(CaseError, match=rf"{flair.name}: the flair file is truncated"):
        load_case(case)
    seg = next(case.glob("*_seg.nii.gz"))
    seg.write_bytes(seg.read_bytes()[:-50])
    assert main(["score", "--pred", str(seg), "--gt", str(seg)]) == 2
    assert "truncated" in capsys.readouterr().err


def _limited_file_size(limit: int):
    """A child that may write files of at most ``limit`` bytes: writes past it fail as on a full disk (EFBIG)."""
    def limit_writes():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


def test_a_full_disk_is_one_error_line_and_leaves_no_file(case, tmp_path):
    out = tmp_path / "seg.nii.gz"
    result = _cli("segment", str(case), *SEGMENT, "--out", str(out), preexec=_limited_file_size(200))
    _one_error_line(result, "seg")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".seg")]


def test_a_full_disk_during_explain_publishes_nothing(case, tmp_path):
    out = tmp_path / "run"
    result = _cli("explain", str(case), *FAST, "--no-scene", "--out", str(out), preexec=_limited_file_size(20000))
    _one_error_line(result, "cannot write")
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []


def test_nan_in_a_label_file_is_refused(case, capsys):
    seg = next(case.glob("*_seg.nii.gz"))
    image = nibabel.load(str(seg))
    labels = np.asanyarray(image.dataobj).astype(np.float32)
    labels[3, 3, 3] = np.nan
    stored = nibabel.Nifti1Image(labels, image.affine, image.header)
    stored.set_data_dtype(np.float32)  # ITK reads this NaN as 0, a background voxel
    nibabel.save(stored, str(seg))
    with pytest.raises(CaseError, match=rf"{seg.name}: segmentation image has 1 NaN/Inf voxels"):
        load_case(case)
    with pytest.raises(CaseError, match="NaN/Inf"):
        read_label_file(seg, "brats2021")


# -- wrong results without an error ----------------------------------------------------------------------------------
def test_nan_weights_are_refused(tmp_path):
    model = build_model("resunet", width=0.0625)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(WeightsError, match="NaN or infinite"):
        save_weights(model, tmp_path / "w.pt")
    payload = {"format": 1, "library_version": "0", "architecture": "resunet", "config": dict(model.config),
               "metadata": {}, "state_dict": {k: v.detach() for k, v in model.state_dict().items()}}
    torch.save(payload, tmp_path / "nan.pt")  # as another tool would write it
    with pytest.warns(UserWarning, match="no checksum"), pytest.raises(WeightsError, match="NaN or infinite"):
        load_weights(tmp_path / "nan.pt")


def _flip_a_byte(path: Path, member_suffix: str) -> None:
    """Flip one byte in the middle of a stored member of a weights file's zip (torch does not check the CRC)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix) and i.file_size > 64)
    data = bytearray(path.read_bytes())
    name_length, extra_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("member", ["tensor", "data.pkl"])
def test_a_flipped_byte_in_own_weights_is_detected(tmp_path, member):
    model = build_model("resunet", width=0.0625)
    path = tmp_path / "w.pt"
    save_weights(model, path)
    load_weights(path)  # whole: loads, no warning
    _flip_a_byte(path, "data.pkl" if member == "data.pkl" else "/data/0")
    with pytest.raises(WeightsError):
        load_weights(path)


def test_a_copy_of_shipped_weights_is_verified_by_the_manifest_beside_it(tmp_path):
    """A shipped file is checked against its manifest first (the whole file), then against its own checksum (the
    weights); a file written before the checksum existed, alone, says plainly that nothing can check it."""
    import warnings

    from BrainTumorExplainLib.models import registry

    for name in ("resunet.pt", "resunet.json"):
        shutil.copy(registry.WEIGHTS_DIR / name, tmp_path / name)
    copy = tmp_path / "resunet.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_weights(copy)  # whole and verified: no warning
    payload = torch.load(copy, weights_only=True)
    _flip_a_byte(copy, "/data/0")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_weights(copy)
    (tmp_path / "resunet.json").unlink()  # without the manifest, the file's own checksum still catches it
    with pytest.raises(WeightsError, match="do not match the checksum stored in the file"):
        load_weights(copy)
    del payload["checksum"]  # as files were written before it existed
    torch.save(payload, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match=r"old.pt: UNVERIFIED weights: .* no manifest beside it \(old.json\)"):
        load_weights(tmp_path / "old.pt")


def test_feature_visualisation_leaves_nothing_in_the_temp_folder(tmp_path):
    """An optimiser's first step imports torch._dynamo, which made <temp>/torchinductor_<user> and left it there."""
    temp = tmp_path / "temp"
    temp.mkdir()
    code = ("import os\n"
            "from BrainTumorExplainLib.analyses.featviz import FeatvizConfig, Regularisers, visualise_filters\n"
            "from BrainTumorExplainLib.models import build_model\n"
            "visualise_filters(build_model('simunet', width=0.0625), [('enc1', 0)], Regularisers.none(),\n"
            "                  FeatvizConfig(steps=1, size=16, start='noise'), None, 'cpu')\n"
            "print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'))")
    environment = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_CACHE_DIR"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                            env={**environment, "TMPDIR": str(temp)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(temp.iterdir()) == [] and result.stdout.strip() == "None"  # torch's setting as it was: unset


def test_volumes_are_written_only_in_3d_formats(case, tmp_path, capsys):
    assert main(["segment", str(case), *SEGMENT, "--out", str(tmp_path / "seg.png")]) == 2
    assert "a volume is written as .nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "seg.png").exists()


def _patched_header(case: Path, **values) -> Path:
    """The case's FLAIR with raw NIfTI-1 header fields overwritten in place (nibabel would recompute them):
    ``pixdim`` (3 floats at byte 80), ``codes`` (qform_code, sform_code at 252), ``srow_x_shift`` (added to
    srow_x[3] at byte 292)."""
    import gzip
    import struct

    flair = next(case.glob("*_flair.nii.gz"))
    data = bytearray(gzip.decompress(flair.read_bytes()))
    if "pixdim" in values:
        struct.pack_into("<3f", data, 80, *values["pixdim"])
    if "codes" in values:
        struct.pack_into("<2h", data, 252, *values["codes"])
    if "srow_x_shift" in values:
        struct.pack_into("<f", data, 292, struct.unpack_from("<f", data, 292)[0] + values["srow_x_shift"])
    flair.write_bytes(gzip.compress(bytes(data)))
    return flair


def test_a_zero_voxel_size_is_named_on_its_own_file(case):
    flair = _patched_header(case, pixdim=(0.0, 0.0, 0.0), codes=(0, 0))
    with pytest.raises(CaseError, match=rf"{flair.name}: the flair's NIfTI header gives voxel size"):
        load_case(case)


def test_disagreeing_qform_and_sform_are_refused(case):
    flair = _patched_header(case, srow_x_shift=7.5)
    with pytest.raises(CaseError, match=rf"{flair.name}: the flair's NIfTI qform and sform disagree \(by up to 7.5 mm"):
        load_case(case)


def test_a_flipped_tilted_grid_written_by_simpleitk_is_read(tmp_path):
    """A flipped and slightly tilted grid (a turn near 180°) written by SimpleITK itself has its quaternion's derived
    component rounded in float32: qform and sform differ by a few micrometres per millimetre of voxel axis. That is
    rounding, not two grids, and the file is read (it once refused re-acquired scans, issue 35)."""
    from BrainTumorExplainLib.data.acquisition import Acquisition
    from BrainTumorExplainLib.data.grid import ReferenceGrid
    from BrainTumorExplainLib.data.imagefiles import check_image_file, read_nifti_header

    base = ReferenceGrid((40, 40, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    grid = Acquisition(spacing_mm=(0.9, 0.9, 6.0), tilt_degrees=(0.5, 0.0, 0.0), flips=(False, True, True)).grid_for(base)
    path = grid.write(np.ones(grid.canonical_shape, np.float32), tmp_path / "tilted.nii.gz")
    header = read_nifti_header(path)
    assert float(np.abs(header.qform() - header.sform()).max()) > 1e-3  # beyond the millimetre tolerance
    check_image_file(path, "flair")
    assert ReferenceGrid.from_image(sitk.ReadImage(str(path))).matches(grid)


# -- one error line instead of a traceback -----------------------------------------------------------------------------
def test_score_json_to_a_folder_is_refused_before_any_output(case, tmp_path):
    seg = str(next(case.glob("*_seg.nii.gz")))
    result = _cli("score", "--pred", seg, "--gt", seg, "--json", str(tmp_path))
    _one_error_line(result, str(tmp_path))
    assert "WT" not in result.stdout


@pytest.mark.parametrize("out, words", [("folder", "is a folder"), ("seg.txt", "a volume is written as"),
                                        ("missing/deeper/seg.nii.gz", None)])
def test_segment_output_errors_are_one_line(case, tmp_path, out, words):
    target = tmp_path / out
    if out == "folder":
        target.mkdir()
    result = _cli("segment", str(case), *SEGMENT, "--out", str(target))
    if words is None:  # a new folder is made for it
        assert result.returncode == 0 and target.is_file(), result.stderr
        return
    _one_error_line(result, words)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="uses Linux's sysfs as a place no one may write")
def test_a_destination_that_cannot_be_written_is_one_line(case, tmp_path):
    """sysfs refuses new files and folders even to root (these tests may run as root, which chmod cannot stop)."""
    for out, words in ((Path("/sys/kernel/seg.nii.gz"), "could not be written"),
                       (Path("/sys/kernel/bte-new/seg.nii.gz"), "cannot create the output folder")):
        result = _cli("segment", str(case), *SEGMENT, "--out", str(out))
        _one_error_line(result, str(out.parent if "folder" in words else out), words)
    if os.geteuid() != 0:  # and a folder without write permission, where permissions apply
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        _one_error_line(_cli("segment", str(case), *SEGMENT, "--out", str(locked / "seg.nii.gz")), "cannot write in")


def test_explain_to_an_existing_file_is_refused_before_any_work(case, tmp_path):
    out = tmp_path / "results"
    out.write_text("a file")
    result = _cli("explain", str(case), *FAST, "--out", str(out), "--overwrite")
    _one_error_line(result, "is a file")
    assert "[segmentation]" not in result.stdout and out.read_text() == "a file"
    assert not list(tmp_path.glob(".results*"))


@pytest.mark.parametrize("device, words", [("cuda", "sees no CUDA GPU"), ("gpu0", "expected auto, cpu, cuda")])
def test_an_unusable_device_is_one_line(case, tmp_path, device, words):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for verb in (["segment", str(case), "--model", "resunet", "--out", str(tmp_path / "s.nii.gz")],
                 ["explain", str(case), "--model", "resunet", "--out", str(tmp_path / "e")]):
        result = _cli(*verb, "--device", device)
        _one_error_line(result, words)


def test_phantom_spacing_zero_is_one_line(tmp_path):
    _one_error_line(_cli("phantom", "--out", str(tmp_path), "--spacing", "0"), "--spacing 0")


@pytest.mark.parametrize("value", ["nan", "inf", "-5"])
def test_the_lesion_volume_threshold_is_a_finite_volume(tmp_path, capsys, value):
    """NaN dropped every true lesion (Dice 1.000 with TP/FP/FN 0/0/0); -5 acted as 0."""
    seg = str(write_image(tmp_path / "seg.nii.gz", np.zeros((8, 8, 8), np.uint8)))
    assert main(["score", "--pred", seg, "--gt", seg, "--min-lesion-mm3", value]) == 2
    assert capsys.readouterr().err == f"error: --min-lesion-mm3 {value}: expected a finite number ≥ 0\n"


def test_every_numeric_option_is_finite_and_in_range():
    """Every verb's every numeric option refuses NaN, infinity and a huge negative number when it is read, naming
    itself (a range check alone lets NaN through)."""
    import argparse
    import re

    from BrainTumorExplainLib.app.cli import build_parser
    from BrainTumorExplainLib.errors import UsageError

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    checked = []
    for verb, sub in verbs.items():
        for action in sub._actions:
            if action.option_strings and (action.type in (int, float) or hasattr(action, "bounds")):
                flag = action.option_strings[-1]
                for value in ("nan", "inf", "-1000000000"):
                    with pytest.raises(UsageError, match=re.escape(f"{flag} {value}: expected")):
                        parser.parse_args([verb, flag, value])
                checked.append(f"{verb} {flag}")
    assert len(checked) > 50 and "score --min-lesion-mm3" in checked and "explain --seed" in checked


def test_options_are_checked_before_any_work(case, tmp_path):
    for option, words in ((["--layers", "enc9"], "valid layers"), (["--classes", "xx"], "--classes xx")):
        result = _cli("explain", str(case), *FAST, *option, "--out", str(tmp_path / "e"))
        _one_error_line(result, words)
        assert "[segmentation]" not in result.stdout


def test_a_broken_manifest_of_the_shipped_weights_is_named(tmp_path, monkeypatch, capsys):
    from BrainTumorExplainLib.models import registry

    sample = registry.WEIGHTS_DIR.parent / "sample_data" / "Phantom_01003"
    broken = tmp_path / "weights"
    shutil.copytree(registry.WEIGHTS_DIR, broken)
    (broken / "resunet.json").write_text('{"weights": "resunet.pt", "sha')
    monkeypatch.setattr(registry, "WEIGHTS_DIR", broken)
    assert main(["segment", str(sample), *SEGMENT, "--out", str(tmp_path / "s.nii.gz")]) == 2
    assert f"{broken / 'resunet.json'}: the manifest of the shipped resunet weights is damaged" in \
        capsys.readouterr().err


@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_explain_cleans_up_and_says_so(case, tmp_path, stop, status):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "BrainTumorExplainLib", "explain", str(case), *FAST[:-6],
                                "-T", "100", "--device", "cpu", "--out", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("[uncertainty]"):
            break
    time.sleep(1.0)
    assert list(tmp_path.glob(".run.partial-*"))  # working
    process.send_signal(stop)
    _, error = process.communicate(timeout=120)
    assert process.returncode == status, error[-2000:]
    assert error.strip().splitlines()[-1].startswith("error: interrupted")
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def _damage(path: Path, how: str) -> Path:
    """``path`` (a .nii.gz) made unreadable: text, 0 bytes, or a MetaImage under a NIfTI name; the damaged file."""
    if how == "not an image":
        path.write_text("not an image at all")
    elif how == "empty":
        path.write_bytes(b"")
    else:
        image = sitk.ReadImage(str(path))
        path.unlink()
        path = path.with_name(path.name.replace(".nii.gz", ".nii"))
        sitk.WriteImage(image, str(path.with_suffix(".mha")))
        path.with_suffix(".mha").rename(path)
    return path


@pytest.mark.parametrize("how", ["not an image", "empty", "MetaImage named .nii"])
def test_an_unreadable_sequence_is_named_before_any_step_reads_it(tmp_path, capsys, how):
    """Co-registration's decision (--coregister auto) reads the headers: every file is checked first."""
    t1 = _damage(synthetic_case(tmp_path / "case" / "X", "X")["t1"], how)
    case = str(t1.parent)
    for verb in (["segment", case, *SEGMENT, "--out", str(tmp_path / "s.nii.gz")],
                 ["preprocess", case, "--out", str(tmp_path / "p")],
                 ["explain", case, *FAST, "--no-scene", "--out", str(tmp_path / "e")]):
        assert main(verb) == 2, verb[0]
        assert f"{t1}: cannot read t1 image" in capsys.readouterr().err, verb[0]
    assert not [p for p in tmp_path.iterdir() if p.name != "case"]


@pytest.mark.parametrize("atlas", ["auto", "never"])
def test_a_case_too_small_to_analyse_is_refused_by_name(tmp_path, capsys, atlas):
    folder, rng = tmp_path / "Tiny", np.random.default_rng(0)
    for modality in ("flair", "t1", "t1ce", "t2"):
        write_image(folder / f"Tiny_{modality}.nii.gz", rng.uniform(100, 200, (2, 2, 2)).astype(np.float32))
    assert main(["segment", str(folder), "--model", "resunet", "--device", "cpu", "--atlas", atlas,
                 "--out", str(tmp_path / "s.nii.gz")]) == 2
    assert f"{folder / 'Tiny_flair.nii.gz'}: flair image has size (2, 2, 2): too small to analyse" in \
        capsys.readouterr().err
    with pytest.raises(CaseError, match="too small to analyse"):
        load_case(folder)


def test_a_case_far_smaller_than_a_head_is_not_aligned_to_the_atlas_and_says_why(tmp_path, capsys):
    """16³ voxels of 0.1 mm pass the size check, but ITK finds no overlap with the template: the alignment is
    refused with ITK's reason, as any failed alignment is, not a traceback."""
    folder, rng = tmp_path / "Small", np.random.default_rng(0)
    for modality in ("flair", "t1", "t1ce", "t2"):
        write_image(folder / f"Small_{modality}.nii.gz", rng.uniform(100, 200, (16, 16, 16)).astype(np.float32),
                    spacing=(0.1, 0.1, 0.1))
    assert main(["segment", str(folder), "--model", "resunet", "--device", "cpu", "--atlas", "always",
                 "--out", str(tmp_path / "s.nii.gz")]) == 0
    printed = capsys.readouterr().out
    assert ("atlas alignment: skipped (the atlas registration was refused: ITK could not register the T1 to the "
            "template (All samples map outside moving image buffer") in printed
    assert "brain edge" not in printed  # not skull-stripped: its mask as read is no stripped brain's, left alone


def test_sequences_too_small_to_register_are_kept_as_acquired(tmp_path):
    paths = synthetic_case(tmp_path / "X", "X")  # 12 x 14 x 16: analysable, too small for the registration
    t1 = sitk.ReadImage(str(paths["t1"]))
    t1.SetOrigin((0.5, 0.0, 0.0))  # another grid: co-registered
    sitk.WriteImage(t1, str(paths["t1"]))
    case = load_case(paths["flair"].parent, coregister=True)
    assert not case.registrations["t1"].applied and "too small to register" in case.registrations["t1"].reason


# -- the Slicer logic (slicer-core) --------------------------------------------------------------------------------------
@pytest.fixture
def pushed(scene, small_phantom, explained_phantom, tmp_path):
    """An explain run folder (a copy of the shared run: tests here break it) and the case's nodes in the scene, with
    the FLAIR's geometry recorded."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))
    import slicer
    from BrainTumorExplainLogic import ReferenceGeometry, load_case_nodes

    run = Path(shutil.copytree(explained_phantom, tmp_path / "run"))
    nodes = load_case_nodes(scene, small_phantom.flair.parent)
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)  # the scene's own, as in desktop Slicer
    return run, nodes, ReferenceGeometry(nodes.volumes["flair"])


def test_results_go_back_only_onto_the_reference_they_were_computed_on(scene, pushed):
    from BrainTumorExplainLogic import add_run_outputs

    run, nodes, geometry = pushed
    flair = nodes.volumes["flair"]
    count = scene.GetNumberOfNodes()
    flair.SetSpacing(2.0, 2.0, 2.0)  # changed since the run started
    with pytest.raises(ValueError, match="was moved, resampled or given another spacing"):
        add_run_outputs(scene, run, flair, "run", geometry)
    assert scene.GetNumberOfNodes() == count
    scene.RemoveNode(flair)  # deleted since the run started
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="no longer in the scene"):
        add_run_outputs(scene, run, flair, "run", geometry)
    assert scene.GetNumberOfNodes() == count


def test_a_truncated_result_is_not_pushed(scene, pushed):
    from BrainTumorExplainLogic import add_run_outputs

    run, nodes, geometry = pushed
    uncertainty = run / "uncertainty.nii.gz"
    uncertainty.write_bytes(uncertainty.read_bytes()[:-200])
    count = scene.GetNumberOfNodes()
    with pytest.raises(CaseError, match="uncertainty.nii.gz: the uncertainty file is truncated"):
        add_run_outputs(scene, run, nodes.volumes["flair"], "run", geometry)
    assert scene.GetNumberOfNodes() == count


def test_an_interrupt_inside_volume_creation_leaves_no_node(scene, pushed, monkeypatch):
    import slicer
    from BrainTumorExplainLogic import RunOutputs

    _, nodes, _ = pushed
    count = scene.GetNumberOfNodes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(slicer.util, "updateVolumeFromArray", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with RunOutputs(scene, nodes.volumes["flair"], "run") as run:
            run.add_heatmap(np.zeros(load_case(nodes.files.flair.parent).brain_mask.shape, np.float32), "map")
    assert scene.GetNumberOfNodes() == count


def test_scene_bundles_open_from_a_relative_path_and_leave_nothing(scene, small_phantom, tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parents[1] / "BrainTumorExplain"))
    from BrainTumorExplainLogic import load_case_nodes, open_scene_bundle, save_scene_bundle

    load_case_nodes(scene, small_phantom.flair.parent)
    monkeypatch.chdir(tmp_path)
    save_scene_bundle(scene, Path("bundles") / "scene.mrb")
    before = set(Path(tempfile.gettempdir()).glob("bte_mrb_open_*"))
    opened = open_scene_bundle(Path("bundles") / "scene.mrb")
    assert opened.GetNumberOfNodes() > 0 and Path.cwd() == tmp_path
    assert set(Path(tempfile.gettempdir()).glob("bte_mrb_open_*")) == before
    with pytest.raises(ValueError, match="not a Slicer data bundle"):
        (tmp_path / "fake.mrb").write_bytes(b"not a zip")
        open_scene_bundle("fake.mrb")
    assert Path.cwd() == tmp_path
