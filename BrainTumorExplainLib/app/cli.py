"""``python -m BrainTumorExplainLib <verb> ...`` — argument parsing only: each verb's options are generated from its
settings (:mod:`app.verbs`, and the config of the analysis it runs) and its job is a function of :mod:`app.jobs`.

Every verb checks its options, inputs and outputs before any work, writes through :mod:`outputs` (a private name,
verified, then renamed onto the destination; inputs never written over), and fails with one ``error:`` line naming the
file or option (exit 2), or ``error: interrupted`` after cleaning up on SIGINT (exit 130) or SIGTERM (exit 143).
Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from ..errors import InputError, Interrupted, UsageError
from ..outputs import DISK_ERRNOS
from ..ranks import rank_label
from ..testbed.bench import BenchConfig
from ..version import __version__
from . import jobs, verbs
from .bundle_training import BundleTrainConfig
from .settings import DissectConfig, ExplainConfig, add_config_options, config_from_arguments
from .training import TrainConfig

# verb → its job and the settings it takes, in the order the job takes them
VERBS = {
    "demo": (jobs.demo, (verbs.DemoOptions,)),
    "explain": (jobs.explain, (verbs.ExplainInputs, ExplainConfig)),
    "phantom": (jobs.phantom, (verbs.PhantomOptions,)),
    "montage": (jobs.montage, (verbs.MontageOptions,)),
    "score": (jobs.score, (verbs.ScoreOptions,)),
    "segment": (jobs.segment, (verbs.SegmentOptions,)),
    "preprocess": (jobs.preprocess, (verbs.PreprocessOptions,)),
    "train": (jobs.train, (verbs.TrainOptions, TrainConfig)),
    "train-bundle": (jobs.train_bundle, (verbs.TrainBundleOptions, BundleTrainConfig)),
    "evaluate": (jobs.evaluate, (verbs.EvaluateOptions,)),
    "gradcam": (jobs.gradcam, (verbs.GradcamOptions,)),
    "dissect": (jobs.dissect, (verbs.DissectOptions, DissectConfig)),
    "uncertainty": (jobs.uncertainty, (verbs.UncertaintyOptions,)),
    "template": (jobs.template, (verbs.TemplateOptions,)),
    "featviz": (jobs.featviz, (verbs.FeatvizOptions,)),
    "ablate": (jobs.ablate, (verbs.AblateOptions,)),
    "bench": (jobs.bench, (verbs.BenchOptions, BenchConfig)),
}


class _Parser(argparse.ArgumentParser):
    """An option error is a :class:`UsageError` (one ``error:`` line, exit 2), not argparse's usage text."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m BrainTumorExplainLib",
                     description="Explain brain-tumour segmentation networks (Natekar et al. 2020).")
    parser.add_argument("--version", action="version", version=f"BrainTumorExplainLib {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for verb, (job, settings) in VERBS.items():
        summary, _, description = settings[0].__doc__.partition("\n\n")
        p = sub.add_parser(verb, help=summary, description=" ".join(description.split()) or None)
        for config_type in settings:
            add_config_options(p, config_type)
        p.set_defaults(job=job, settings=settings)
    return parser


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, so every ``with``/``finally`` cleans up
    (private folders, locks) before the process ends; the previous handlers come back afterwards."""
    def stop(number, _frame):
        name = signal.Signals(number).name
        raise Interrupted(name, 128 + number)

    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[number] = signal.signal(number, stop)
        except ValueError:  # not the main thread: leave the signals alone
            pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(argv: list[str] | None = None) -> int:
    rank = rank_label()  # under torchrun, a warning or an error says whose it is
    warnings.simplefilter("always")
    warnings.formatwarning = lambda message, category, *rest: f"{rank}warning: {message}\n"
    try:
        args = build_parser().parse_args(argv)
        with signals_interrupt():
            return int(args.job(*(config_from_arguments(args, kind) for kind in args.settings)) or 0)
    except InputError as error:
        print(f"{rank}error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"{rank}error: interrupted ({stop.signal_name}): nothing was published and the partial files were "
              "removed", file=sys.stderr)
        return stop.exit_status
    except OSError as error:
        if error.errno in DISK_ERRNOS and error.filename:
            print(f"{rank}error: {error.filename}: {error.strerror}", file=sys.stderr)
            return 2
        raise
