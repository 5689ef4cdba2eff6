"""What the resumable study scripts of issue 41 share (control_seeds, uncertainty_heldout, gradcam_heldout): a command
line of two actions — ``run`` (one result file per case or network, each written whole, those that exist skipped) and
``table`` (markdown from every file written) — and the bootstrap interval as the tables print it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from BrainTumorExplainLib.scoring.statistics import mean_interval


def rounded(value, digits: int = 6):
    """``value`` with every float in it rounded to ``digits`` decimals (result files are committed: kept small)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    return value


def write_whole(path: Path, record: dict) -> None:
    """``record`` as JSON at ``path`` (floats to 6 decimals), through a partial file: a result file that exists is
    complete."""
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(rounded(record), separators=(",", ":")) + "\n")
    os.replace(partial, path)


def load(path: Path) -> dict:
    """A result file, or one ``error:`` line saying it is not written yet."""
    if not path.is_file():
        raise SystemExit(f"error: {path}: not written yet (the run action writes it)")
    return json.loads(path.read_text())


def records(folder: Path, pattern: str = "Phantom_*.json", least: int = 2) -> list[dict]:
    """Every result file of ``folder`` matching ``pattern``, in name order; at least ``least`` of them."""
    found = [json.loads(path.read_text()) for path in sorted(folder.glob(pattern))]
    if len(found) < least:
        raise SystemExit(f"error: {folder}: need at least {least} finished results ({pattern}), found {len(found)}")
    return found


def interval(values: Sequence[float | None], digits: int = 2) -> str:
    """``mean [low, high]`` over the values given (None left out): the mean and its bootstrap 95 % interval."""
    found = mean_interval([v for v in values if v is not None])
    if found["mean"] is None:
        return "–"
    if found["low"] is None:
        return f"{found['mean']:.{digits}f}"
    return f"{found['mean']:.{digits}f} [{found['low']:.{digits}f}, {found['high']:.{digits}f}]"


def main(description: str, default_out: str, run: Callable[[argparse.Namespace], None],
         table: Callable[[argparse.Namespace], str], arguments: Callable[[argparse.ArgumentParser], None],
         needs: Sequence[str] = ("data",)) -> None:
    """``SCRIPT run|table MODEL --out DIR [--markdown FILE] …``: ``arguments`` adds the script's own options;
    ``run`` needs ``needs``; ``table`` prints its markdown (and writes it to ``--markdown``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "table"))
    parser.add_argument("model")
    parser.add_argument("--out", type=Path, default=Path(default_out))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (1 leaves a core free on a 2-core machine)")
    parser.add_argument("--markdown", type=Path, help="write the tables here too")
    arguments(parser)
    args = parser.parse_args()
    if args.action == "run":
        missing = [name for name in needs if getattr(args, name) is None]
        if missing:
            parser.error(f"run needs {', '.join('--' + name for name in missing)}")
        torch.set_num_threads(args.threads)
        run(args)
    else:
        text = table(args)
        if args.markdown:
            args.markdown.write_text(text)
        sys.stdout.write(text)
