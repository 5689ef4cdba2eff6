"""The contract of an ``explain`` run, in one place for the three processes that share it: ``explain`` (which
writes it), the CLI verbs (which write the same files) and the Slicer logic (which reads them and follows the run).

* **Stages**: :data:`STAGES`, in the order they run.
* **Progress**: one event per line. ``--progress text`` prints ``[stage] …`` and ``[stage] 12.3 s`` for people;
  ``--progress json`` prints one JSON object per line on stdout (:func:`event_line`, :func:`parse_event`) — what
  the Slicer panel reads — and nothing else there (progress bars, warnings and the error line go to stderr).
* **Output names**: the functions and constants below; every writer and reader builds its paths with them.
* **Summary**: ``summary.json``, written once at the end, carries :data:`SUMMARY_SCHEMA`; :func:`read_summary`
  refuses another schema by name.

torch is not imported here (the Slicer module reads this).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from ..errors import InputError

STAGES: tuple[str, ...] = ("load", "segmentation", "uncertainty", "gradcam", "concepts", "review", "featviz",
                           "scene", "report")
PROGRESS_FORMATS: tuple[str, ...] = ("text", "json")
SUMMARY_SCHEMA = 1

SUMMARY = "summary.json"
REPORT = "report.html"
SCENE = "scene.mrb"
SEGMENTATION = "segmentation.nii.gz"
UNCERTAINTY_MAPS: tuple[str, ...] = ("uncertainty", "entropy", "mutual_information")
FIGURES = "figures"
GRADCAM = "gradcam"
CONCEPTS = "concepts"
FEATVIZ = "featviz"
REVIEW = "review.nii.gz"  # the review regions, region n = rank n (summary.json's review.regions say why)
REGISTRATION = "registration"
PREPROCESSING = "preprocessing.json"  # what the preprocess verb did (summary.json's parts on it)
BRAIN_MASK = "brain_mask.nii.gz"  # written when the brain was masked by the atlas or the user's mask, or its rim cut
ATLAS = "atlas"  # the atlas's name in registration_file: flair_to_atlas.tfm is the head's pose against it


def registration_file(sequence: str, reference: str) -> str:
    """One co-registration's transform (ITK text format, ``registration/`` of an explain run)."""
    return f"{sequence}_to_{reference}.tfm"


def uncertainty_file(name: str) -> str:
    """``uncertainty.nii.gz``, ``entropy.nii.gz``, ``mutual_information.nii.gz``."""
    if name not in UNCERTAINTY_MAPS:
        raise ValueError(f"unknown uncertainty map {name!r}")
    return f"{name}.nii.gz"


def gradcam_file(layer: str, class_key: str) -> str:
    """One Grad-CAM map: ``<layer>_<class key>.nii.gz`` (in ``gradcam/`` of an explain run)."""
    return f"{layer}_{class_key}.nii.gz"


def gradcam_key(target: str) -> str:
    """A Grad-CAM target's name in file names: a class's key (``ncr``, ``ed``, ``et``), or a region's (``wt``...)."""
    from ..data.labels import CLASS_KEYS, CLASS_NAMES

    return CLASS_KEYS[CLASS_NAMES.index(target)] if target in CLASS_NAMES else target.lower()


def last_explained_layer(layers: list[str]) -> str:
    """The layer whose Grad-CAM the scene, its slice figure and the lesion table show: the last before the network's
    head (the last, when there is none)."""
    return next((layer for layer in reversed(layers) if layer != "head"), layers[-1])


def concept_file(layer: str, filter_index: int, concept: str) -> str:
    """One concept mask: ``<layer>_<filter>_<concept>.nii.gz`` (in ``concepts/`` of an explain run)."""
    return f"{layer}_{filter_index}_{concept}.nii.gz"


def figure_file(name: str) -> str:
    """A figure of an explain run: ``figures/<name>.png``."""
    return f"{FIGURES}/{name}.png"


# -- progress --------------------------------------------------------------------------------------------------------
def event_line(event: str, **fields) -> str:
    """One progress event as a line of JSON: ``{"event": "stage_started", "stage": "gradcam"}``."""
    return json.dumps({"event": event, **fields}, separators=(",", ":"))


def parse_event(line: str) -> dict | None:
    """The event of one line of ``--progress json`` output, or None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class Progress:
    """Stage timings, reported as they happen in the chosen format; ``seconds`` collects them for the summary."""

    def __init__(self, form: str | None = "text", stream: TextIO | None = None) -> None:
        if form not in (None, *PROGRESS_FORMATS):
            raise ValueError(f"unknown progress format {form!r}; expected one of {', '.join(PROGRESS_FORMATS)}")
        self.form, self.stream = form, stream
        self.seconds: dict[str, float] = {}

    def _say(self, text: str, event: str, **fields) -> None:
        if self.form is None:
            return
        stream = self.stream or sys.stdout
        print(event_line(event, **fields) if self.form == "json" else text, file=stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}: add it to STAGES")
        self._say(f"[{name}] …", "stage_started", stage=name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self._say(f"[{name}] {self.seconds[name]:.1f} s", "stage_finished", stage=name, seconds=self.seconds[name])

    def finished(self, out: Path) -> None:
        self._say(f"wrote {out}", "finished", out=str(out))


# -- summary ---------------------------------------------------------------------------------------------------------
def read_summary(run_folder: str | Path) -> dict:
    """``summary.json`` of a run folder, checked to be of this schema."""
    path = Path(run_folder) / SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable run summary ({error})") from None
    schema = summary.get("schema") if isinstance(summary, dict) else None
    if schema != SUMMARY_SCHEMA:
        raise InputError(f"{path}: summary schema {schema!r}, this version reads schema {SUMMARY_SCHEMA}; run "
                         "explain again with this version")
    return summary
