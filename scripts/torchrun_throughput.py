"""Cases per hour and peak memory per process, one process against two under torchrun (issue 39), on this machine.

Each measurement runs a verb over the same held-out phantoms in a fresh process — alone at one torch thread, or under
``torchrun --standalone --nproc_per_node=2`` (one thread per rank: torchrun's default here) — and records its wall
time and the peak resident memory of its largest process (the launcher's children, from ``getrusage``).

    python scripts/torchrun_throughput.py --data HELDOUT --out DIR [--cases 4]

Resumable: each measurement is written to DIR/<name>.json as soon as it is made and a rerun skips it; DIR/summary.md
is made from every result in DIR. The verbs' own outputs go to DIR/runs/ and are deleted after each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# (name, verb arguments with {data} and {out}, processes, cases)
MEASUREMENTS = [
    ("explain_1x", ["explain", "{data}", "--out", "{out}"], 1, 4),
    ("explain_2x", ["explain", "{data}", "--out", "{out}"], 2, 4),
    ("explain_2x_half", ["explain", "{data}", "--out", "{out}"], 2, 2),
    ("dissect_1x", ["dissect", "--data", "{data}", "--model", "resunet", "--slice-step", "4", "--out", "{out}"], 1, 4),
    ("dissect_2x", ["dissect", "--data", "{data}", "--model", "resunet", "--slice-step", "4", "--out", "{out}"], 2, 4),
]


def measure(arguments: list[str], processes: int) -> dict:
    """Run ``python -m BrainTumorExplainLib ARGUMENTS`` (under torchrun for several processes) in a child that
    reports its wall time and the largest peak RSS among its own children."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
              if processes > 1 else [sys.executable])
    probe = ("import json, resource, subprocess, sys, time\n"
             "start = time.perf_counter()\n"
             "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "print(json.dumps({'returncode': done.returncode, 'seconds': time.perf_counter() - start,\n"
             "                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,\n"
             "                  'stderr_tail': done.stderr[-2000:]}))\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process, alone as under torchrun
    found = subprocess.run([sys.executable, "-c", probe, *launch, "-m", "BrainTumorExplainLib", *arguments],
                           capture_output=True, text=True, env=environment, check=True)
    return json.loads(found.stdout)


def summary(folder: Path) -> str:
    results = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    lines = ["| measurement | processes | cases | wall time | cases per hour | peak RSS of the largest process |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        lines.append(f"| {name} | {result['processes']} | {result['cases']} | {result['seconds']:.0f} s | "
                     f"{3600 * result['cases'] / result['seconds']:.1f} | {result['peak_rss_mb']:.0f} MB |")
    for verb in ("explain", "dissect"):
        if f"{verb}_1x" in results and f"{verb}_2x" in results:
            one, two = results[f"{verb}_1x"], results[f"{verb}_2x"]
            lines.append(f"\n{verb}: two processes {one['seconds'] / two['seconds']:.2f}× the cases per hour of one "
                         f"({one['cases']} cases)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of case folders (the first are used)")
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    cases = sorted(path for path in options.data.iterdir() if path.is_dir())
    options.out.mkdir(parents=True, exist_ok=True)
    for name, arguments, processes, count in MEASUREMENTS:
        result_file = options.out / f"{name}.json"
        if result_file.is_file():
            continue
        if len(cases) < count:
            sys.exit(f"error: {options.data}: {count} case folders needed, {len(cases)} found")
        listing = options.out / f"{name}.txt"
        listing.write_text("".join(f"{case}\n" for case in cases[:count]))
        runs = options.out / "runs" / name
        shutil.rmtree(runs, ignore_errors=True)
        runs.parent.mkdir(exist_ok=True)
        data = str(listing) if arguments[0] != "dissect" else str(_dataset_folder(options.out, name, cases[:count]))
        result = measure([a.format(data=data, out=runs) for a in arguments], processes)
        if result["returncode"] != 0:
            sys.exit(f"error: {name} failed:\n{result['stderr_tail']}")
        result.update(processes=processes, cases=count, arguments=arguments, when=time.strftime("%Y-%m-%d %H:%M"),
                      cpu_count=os.cpu_count(), cpu=_cpu_name())
        result.pop("stderr_tail")
        result_file.write_text(json.dumps(result, indent=1) + "\n")
        shutil.rmtree(runs, ignore_errors=True)
        print(f"{name}: {result['seconds']:.0f} s, {result['peak_rss_mb']:.0f} MB", flush=True)
    (options.out / "summary.md").write_text(summary(options.out))
    print((options.out / "summary.md").read_text())


def _dataset_folder(out: Path, name: str, cases: list[Path]) -> Path:
    """``dissect --data`` reads a folder: the cases linked into one."""
    folder = out / "datasets" / name
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        if not (folder / case.name).exists():
            (folder / case.name).symlink_to(case.resolve())
    return folder


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    main()
