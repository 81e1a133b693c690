"""Time one training step of ce, flyp and drm on the same model and batch; print ratios.

Each variant runs in its own subprocess, one after another, so its peak memory is its own.
Run from the repository root:

    .venv/bin/python bench/train_step.py                      # ViT-B-32, batch 32, CPU
    .venv/bin/python bench/train_step.py --arch ViT-B-16 --batch-size 128 --device cuda --amp bf16

Random weights are fine: the step costs the same. Step time is the median over the timed steps
of the real training loop (models.train.train), measured between progress callbacks.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "ce": {"name": "ce"},
    "flyp": {"name": "flyp"},
    "drm (weight, cached p_c)": {"name": "drm", "wrm": "weight", "pc_mode": "cached"},
    "drm (soft, cached p_c)": {"name": "drm", "wrm": "soft", "pc_mode": "cached"},
    "drm (weight, per-step p_c)": {"name": "drm", "wrm": "weight", "pc_mode": "per_step"},
}


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from models.backbone import create_backbone
    from models.config import BackboneConfig, ObjectiveConfig, TrainConfig
    from models.heads import Classifier
    from models.objectives import CorePrior, build_objective
    from models.train import Progress, train

    torch.manual_seed(0)
    device = torch.device(args.device)
    backbone = create_backbone(BackboneConfig(arch=args.arch), device)
    classes = [f"class {i}" for i in range(args.classes)]
    descriptions = {
        c: [f"an object of {c} with a distinct shape", f"the parts of a {c}"] for c in classes
    }
    classifier = Classifier(backbone, classes, ["a photo of a {c}.", "a {c}."], descriptions)
    size = backbone.image_size
    n = args.batch_size * (args.steps + args.warmup)
    images = torch.randn(n, 3, *size)
    labels = torch.arange(n) % args.classes
    dataset = [(images[i], int(labels[i]), i) for i in range(n)]
    objective_cfg = ObjectiveConfig(**VARIANTS[args.variant])
    prior = None
    if objective_cfg.name == "drm":
        if objective_cfg.pc_mode == "cached":
            loader = DataLoader(dataset, batch_size=64)
            prior = CorePrior.cached(classifier, [(x.to(device), y, i) for x, y, i in loader])
        else:
            prior = CorePrior.per_step(classifier)
    objective = build_objective(objective_cfg, classifier, 0, prior)
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    def clock(progress: Progress) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(
        epochs=1, batch_size=args.batch_size, lr=1e-5, amp=args.amp, seed=0, grad_clip=1.0
    )
    train(classifier, objective, dataset, cfg, transform=lambda x: x, callback=clock)
    times = _deltas(stamps, args.warmup)
    cpu_times = _deltas(cpu_stamps, args.warmup)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {
        "step_s": statistics.median(times),
        "cpu_s": statistics.median(cpu_times),
        "steps": len(times),
        "peak_rss_mb": peak_mb,
        "peak_gpu_mb": gpu_mb,
    }


def _deltas(stamps: list[float], skip: int) -> list[float]:
    return [b - a for a, b in zip(stamps[skip - 1 :], stamps[skip:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    base = results["flyp"]["step_s"]
    cpu_base = results["flyp"]["cpu_s"]
    print(
        f"train step, {args.arch}, batch {args.batch_size}, {args.classes} classes, {args.device}"
        f" (median of {args.steps} steps after {args.warmup} warm-up)"
    )
    # CPU time per step beside wall time: on a shared machine it is the steadier of the two.
    print(
        "| objective | step wall (s) | vs flyp | step CPU (s) | vs flyp | peak RSS (MiB) "
        "| peak GPU (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        print(
            f"| {variant} | {r['step_s']:.3f} | {r['step_s'] / base:.2f}x | {r['cpu_s']:.2f} | "
            f"{r['cpu_s'] / cpu_base:.2f}x | {r['peak_rss_mb']:.0f} | {gpu} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
