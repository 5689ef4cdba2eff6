"""Where the time of the two benchmarks that missed their targets goes: the operators of one batched TTD forward
and of one all-layers Grad-CAM, by device time (torch.profiler).

    python scripts/profile_bench.py --device cuda [--width 1.0]   (no --width: the shipped ResUnet)
    python scripts/profile_bench.py --batch-sweep                  (ms per image of a stochastic forward, by batch)
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from BrainTumorExplainLib.analyses.gradcam import gradcam_maps
from BrainTumorExplainLib.models import build_model, load_pretrained, test_time_dropout


def show(title: str, run, device: torch.device, repeats: int = 3) -> None:
    run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(repeats):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n## {title} ({repeats} runs)\n")
    print(profiler.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=40))


def batch_sweep(model, device: torch.device, seconds: float = 4.0) -> None:
    """Milliseconds per image of one stochastic forward at each batch size (twice, to show the spread)."""
    import time

    print("\n## stochastic forward, ms per image by batch size (two rounds)\n")
    for round_index in range(2):
        for batch in (1, 2, 4, 8, 16, 32):
            images = torch.randn(batch, 4, 240, 240, device=device)
            with test_time_dropout(model), torch.no_grad():
                model.predict(images)
                start, count = time.perf_counter(), 0
                while time.perf_counter() - start < seconds:
                    model.predict(images)
                    count += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            print(f"round {round_index + 1}, batch {batch}: {(time.perf_counter() - start) / count / batch * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--ttd-batch", type=int, default=200, help="images per TTD forward (slices × passes)")
    parser.add_argument("--gradcam-slices", type=int, default=16)
    parser.add_argument("--batch-sweep", action="store_true", help="only the per-image time by batch size")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = (load_pretrained("resunet", device=device) if args.width is None
             else build_model("resunet", width=args.width).to(device))
    if args.batch_sweep:
        batch_sweep(model, device)
        return
    images = torch.randn(args.ttd_batch, 4, 240, 240, device=device)
    with test_time_dropout(model), torch.no_grad():
        show(f"TTD forward, {args.ttd_batch} images, width {args.width or 'shipped'}", lambda: model.predict(images),
             device)
    slices = images[: args.gradcam_slices]
    show(f"Grad-CAM all layers × 4 classes, {len(slices)} slices",
         lambda: gradcam_maps(model, slices, "all", "all"), device)


if __name__ == "__main__":
    main()
