"""Publishing results so that nothing is lost: inputs are never written over or deleted, a published result is
complete and from one run, and a failed write is one error naming the file.

Every command that writes goes through :class:`OutputFile` (one file) or :class:`OutputFolder` (a result folder):

* they are checked when made — before any work: the output is not an input, does not contain or lie inside one,
  is not an existing file or folder unless ``overwrite``, and a folder to replace is one of our results (it carries
  :data:`RESULT_MARKER`), so ``--overwrite`` can never delete what a run did not create;
* the run writes into a private temporary name beside the destination (a hidden ``.<name>.partial-<token>``);
  a folder is also locked (``.<name>.lock``) so that a second run to the same destination fails at once — a lock
  whose process is verifiably gone (killed) is taken over, and the private folder that process left is removed;
* when the work is done every written file is verified (images read back, zips CRC-checked, JSON parsed, PNGs
  complete) and only then renamed onto the destination; on any failure or interrupt the private copy is removed.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import time
import zipfile
from pathlib import Path
from typing import Iterable

from .data.imagefiles import VOLUME_SUFFIXES, check_image_file, check_volume_path
from .errors import CaseError, OutputError
from .version import __version__

RESULT_MARKER = ".braintumorexplain"
# errors of the disk or the permissions, not of the program: reported as one line naming the output
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _same_or_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_an_input(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Raise :class:`OutputError` when ``out`` is an input, contains one, or lies inside an input folder (symbolic
    links resolved, so two names for one place are one place)."""
    target = Path(os.path.realpath(_absolute(out)))
    for given in inputs:
        if given is None:
            continue
        source = Path(os.path.realpath(_absolute(given)))
        if target == source:
            raise OutputError(f"{out}: this is an input ({given}); choose another output — inputs are never "
                              "written over")
        if target in source.parents:
            raise OutputError(f"{out}: this folder contains the input {given}; choose another output — inputs are "
                              "never written over or deleted")
        if source.is_dir() and _same_or_within(target, source):
            raise OutputError(f"{out}: this is inside the input folder {given}; write results elsewhere")


def _check_parent_writable(path: Path) -> None:
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{path}: {ancestor} is a file, so no folder can be made for the output")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write in {ancestor} (read-only or no permission)")


def verify_written(path: Path, shown_as: Path | None = None) -> None:
    """Raise :class:`OutputError` unless the file just written reads back whole (see the module notes)."""
    shown = shown_as or path
    name = path.name.lower()
    try:
        size = path.stat().st_size
    except OSError as error:
        raise OutputError(f"{shown}: was not written ({error.strerror})") from None
    if size == 0:
        raise OutputError(f"{shown}: was written empty (is the disk full?)")
    try:
        if name.endswith(VOLUME_SUFFIXES):
            _verify_volume(path)
        elif name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith(".png"):
            data = path.read_bytes()
            if not (data.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in data[-12:]):
                raise ValueError("the PNG stops before its end")
        elif name.endswith((".npz", ".pt", ".ckpt", ".mrb", ".zip")):
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is not None:
                raise ValueError(f"member {damaged} is damaged")
    except (ValueError, OSError, zipfile.BadZipFile, CaseError) as error:
        reason = str(error).replace(f"{path}: ", "").replace(str(path), str(shown))[:160]
        raise OutputError(f"{shown}: was not written completely ({reason}); is the disk full?") from None


def _verify_volume(path: Path) -> None:
    import SimpleITK as sitk

    check_image_file(path, "written", values=False)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(f"its header cannot be read back: {str(error).strip().splitlines()[-1][:120]}") from None


def _disk_error(out: Path, error: BaseException) -> OutputError | None:
    """An OS error of the disk while writing ``out``, as one line; None for anything else (a bug)."""
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        where = error.filename or out
        return OutputError(f"{where}: cannot write ({error.strerror or os.strerror(error.errno)})")
    return None


class OutputFile:
    """One output file: checked now, written under a private name by ``with target.writing() as path:``, verified
    and renamed onto the destination when the block ends without error."""

    def __init__(self, path: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                 volume: bool = False) -> None:
        self.path = _absolute(path)
        self.shown = Path(path)
        if self.path.is_dir():
            raise OutputError(f"{path}: is a folder; give a file name")
        if volume:
            check_volume_path(path)
        check_not_an_input(self.path, inputs)
        if self.path.exists() and not overwrite:
            raise OutputError(f"{path}: exists; choose another name or pass --overwrite")
        _check_parent_writable(self.path)

    def writing(self) -> "_Writing":
        return _Writing(self)


class _Writing:
    def __init__(self, target: OutputFile) -> None:
        self.target = target
        self.made: list[Path] = []
        name = target.path.name
        suffix = next((s for s in VOLUME_SUFFIXES + (".json", ".png", ".npz", ".pt", ".md", ".html") if
                       name.lower().endswith(s)), "")
        self.temporary = target.path.with_name(f".{name[:len(name) - len(suffix)]}.partial-{secrets.token_hex(4)}"
                                               f"{suffix}")

    def __enter__(self) -> Path:
        self.made = _make_folders(self.target.path.parent)
        return self.temporary

    def __exit__(self, exc_type, exc, traceback) -> bool:
        try:
            if exc_type is None:
                verify_written(self.temporary, self.target.shown)
                self.temporary.replace(self.target.path)
                return False
        except BaseException:
            self._undo()
            raise
        self._undo()
        problem = _disk_error(self.target.shown, exc)
        if problem is None and isinstance(exc, OutputError) and str(self.temporary) in str(exc):
            problem = OutputError(str(exc).replace(str(self.temporary), str(self.target.shown)))  # say where to
        if problem is not None:
            raise problem from None
        return False

    def _undo(self) -> None:
        self.temporary.unlink(missing_ok=True)
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:
                break


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created (outermost first), to undo on failure."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir()
        except FileExistsError:
            pass
        except OSError as error:
            raise OutputError(f"{made}: cannot create the output folder ({error.strerror})") from None
    return list(reversed(missing))


class OutputFolder:
    """A result folder: ``with OutputFolder(out, inputs, overwrite, "explain") as work:`` writes into ``work`` (a
    private folder beside ``out``), then verifies and publishes it as ``out``; on failure nothing is published."""

    def __init__(self, path: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                 producer: str = "") -> None:
        self.path = _absolute(path)
        self.shown = Path(path)
        self.producer = producer
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"{path}: is a file; give a folder name for the results")
        check_not_an_input(self.path, inputs)
        if self.path.exists():
            if not overwrite:
                raise OutputError(f"{path}: exists; choose another --out or pass --overwrite (runs are never mixed)")
            if not is_result_folder(self.path) and any(self.path.iterdir()):
                raise OutputError(f"{path}: exists and is not a BrainTumorExplain result (no {RESULT_MARKER} "
                                  "inside), so --overwrite will not delete it; choose another --out")
        _check_parent_writable(self.path)
        self.lock = self.path.with_name(f".{self.path.name}.lock")
        self.work = self.path.with_name(f".{self.path.name}.partial-{secrets.token_hex(4)}")
        self._made: list[Path] = []
        self._locked = False

    def __enter__(self) -> Path:
        self._made = _make_folders(self.path.parent)
        try:
            self._acquire_lock()
            self.work.mkdir()
            (self.work / RESULT_MARKER).write_text(json.dumps(
                {"producer": self.producer, "version": __version__, "pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        except BaseException as error:
            self._discard()
            problem = _disk_error(self.shown, error) if isinstance(error, OSError) else None
            if problem is not None:
                raise problem from None
            raise
        return self.work

    def __exit__(self, exc_type, exc, traceback) -> bool:
        try:
            if exc_type is None:
                for file in sorted(p for p in self.work.rglob("*") if p.is_file()):
                    verify_written(file, self.shown / file.relative_to(self.work))
                self._publish()
                return False
        except BaseException as error:
            self._discard()
            problem = _disk_error(self.shown, error)
            if problem is not None:
                raise problem from None
            raise
        self._discard()
        problem = _disk_error(self.shown, exc)
        if problem is not None:
            raise problem from None
        return False

    def _publish(self) -> None:
        replaced = None
        if self.path.exists():
            replaced = self.path.with_name(f".{self.path.name}.replaced-{secrets.token_hex(4)}")
            self.path.rename(replaced)
        try:
            self.work.rename(self.path)
        except BaseException:
            if replaced is not None:
                replaced.rename(self.path)
            raise
        self._release_lock()
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    def _discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self._release_lock()
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                break

    def _acquire_lock(self) -> None:
        for _ in range(2):
            try:
                handle = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _lock_holder(self.lock)
                if not _alive(holder):  # its run ended without releasing it (killed): take it over
                    self._remove_partials_of(holder)
                    self.lock.unlink(missing_ok=True)
                    continue
                raise OutputError(f"{self.shown}: another run (pid {holder.get('pid')}, started "
                                  f"{holder.get('started')}) is writing this output; wait for it to finish or choose "
                                  f"another --out (a run that was killed leaves {self.lock.name}: delete it then)"
                                  ) from None
            with os.fdopen(handle, "w") as stream:
                stream.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            self._locked = True
            return
        raise OutputError(f"{self.shown}: could not lock the output ({self.lock})")

    def _remove_partials_of(self, dead: dict) -> None:
        """The private folders the dead lock holder left beside the destination (their marker names its process and
        machine): nothing else removes them, and nobody owns them any more."""
        for partial in self.path.parent.glob(f".{self.path.name}.partial-*"):
            try:
                owner = json.loads((partial / RESULT_MARKER).read_text())
            except (OSError, ValueError):
                continue  # not ours to judge
            if isinstance(owner, dict) and (owner.get("pid"), owner.get("host")) == (dead["pid"], dead["host"]):
                shutil.rmtree(partial, ignore_errors=True)

    def _release_lock(self) -> None:
        if self._locked:
            self.lock.unlink(missing_ok=True)
            self._locked = False


def _lock_holder(lock: Path) -> dict:
    """What the lock says of its owner (pid, host, started)."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        holder = None
    return holder if isinstance(holder, dict) else {"pid": "?", "started": "?"}  # being written right now


def _alive(holder: dict) -> bool:
    """Whether the lock's owner may still run: False only when its process is verifiably gone from this machine."""
    if holder.get("host") != socket.gethostname() or os.name == "nt":  # os.kill would end the process on Windows
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError, OSError):
        return True
    return True


def is_result_folder(folder: Path) -> bool:
    """A folder a run of ours published: it carries the marker, or (written before the marker) is an explain
    result — a summary.json naming our version and case beside report.html."""
    folder = Path(folder)
    if (folder / RESULT_MARKER).is_file():
        return True
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"version", "case"} <= set(summary) and (folder / "report.html").is_file()


def write_json(data, path: str | Path) -> Path:
    """JSON, as the results are written (indented, newline-terminated, UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
