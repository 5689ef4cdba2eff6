"""How far the domain check's intensity quantiles move (data.domain: intensity_profile against a reference of the
training cases) under acquisitions a network should take in its stride, and under inputs it should not: a sequence
given in another's place. What INTENSITY_LIMIT and MIN_INTENSITY_SPREAD were chosen from.

    python scripts/intensity_check.py --train TRAIN --heldout HELDOUT [--cases 3]

For each held-out case and each input, the largest offset of any quantile of any sequence from the training mean, in
z-score units and in (floored) training spreads, and whether the check warns.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

from BrainTumorExplainLib.data.acquisition import Acquisition, reacquire
from BrainTumorExplainLib.data.case import find_cases, load_case
from BrainTumorExplainLib.data.domain import (INTENSITY_LIMIT, MIN_INTENSITY_SPREAD, case_domain_check,
                                              farthest_quantiles, intensity_profile, intensity_reference_from)
from BrainTumorExplainLib.data.preprocess import preprocess

INTERPOLATED = {"stripped": False}
TAKEN_IN_STRIDE = {
    "as read (1 mm)": None,
    "0.9×0.9×3 mm, interpolated": Acquisition(spacing_mm=(0.9, 0.9, 3.0), **INTERPOLATED),
    "0.8×0.8×3 mm, 20° tilt, interpolated": Acquisition(spacing_mm=(0.8, 0.8, 3.0), tilt_degrees=(20.0, 0.0, 5.0),
                                                        **INTERPOLATED),
    "0.9×0.9×6 mm, interpolated": Acquisition(spacing_mm=(0.9, 0.9, 6.0), **INTERPOLATED),
    "bias field 30 %": Acquisition(bias_field=0.3, seed=3),
    "Rician noise 5 %": Acquisition(noise=0.05, seed=3),
}
SWAPS = {"T1 and T2 swapped": (0, 3, 2, 1), "T1 and T1ce swapped": (0, 2, 1, 3), "FLAIR and T2 swapped": (3, 1, 2, 0)}


def largest_offset(case, reference) -> tuple[float, float, str]:
    """The quantile of any sequence farthest from the training mean: its offset in z, in spreads, and where."""
    profile = intensity_profile(case)
    name, (q, mean, _, spreads) = max(farthest_quantiles(profile, reference).items(), key=lambda item: abs(item[1][3]))
    return profile[name][q] - mean, spreads, f"{name} q{reference['quantiles'][q]:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--heldout", required=True, type=Path)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    reference = intensity_reference_from(load_case(path) for path in find_cases(args.train)[:-2])  # as `train`
    print(f"reference: {reference['cases']} training cases; limit {INTENSITY_LIMIT:g} spreads, floor "
          f"{MIN_INTENSITY_SPREAD:g}\n\n| input | case | largest offset (z) | spreads | where | warns |\n|---|---|---|---|---|---|")
    for path in find_cases(args.heldout)[:args.cases]:
        inputs = {}
        for name, acquisition in TAKEN_IN_STRIDE.items():
            if acquisition is None:
                inputs[name] = load_case(path)
                continue
            with tempfile.TemporaryDirectory() as scratch:
                inputs[name], _ = preprocess(reacquire(path, Path(scratch) / "case", acquisition), (1.0, 1.0, 1.0))
        for name, order in SWAPS.items():
            inputs[name] = replace(inputs["as read (1 mm)"], images=inputs["as read (1 mm)"].images[list(order)])
        for name, case in inputs.items():
            z, spreads, where = largest_offset(case, reference)
            warns = any("intensities are unlike" in w for w in
                        case_domain_check(case, intensity_reference=reference)["warnings"])
            print(f"| {name} | {path.name} | {z:+.2f} | {spreads:+.1f} | {where} | {'yes' if warns else 'no'} |",
                  flush=True)


if __name__ == "__main__":
    main()
