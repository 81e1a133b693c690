"""Time one training step of ce, flyp and drm on the same model and batch; print ratios.
With ``--epoch``, train whole epochs from images on disk instead: images/s with data loading.

Each variant runs in its own subprocess, one after another, so its peak memory is its own.
Run from the repository root:

    .venv/bin/python bench/train_step.py                      # ViT-B-32, batch 32, CPU
    .venv/bin/python bench/train_step.py --arch ViT-B-16 --batch-size 128 --device cuda --amp bf16
    .venv/bin/python bench/train_step.py --epoch              # data loading and speed switches

Random weights are fine: the step costs the same. Step time is the median over the timed steps
of the real training loop (models.train.train), measured between progress callbacks.

``--epoch`` writes a small image-folder dataset (PNG, ``--image-size`` px) and trains two epochs
through the real loop, data loader and training augmentation included, for ce, flyp and drm,
then flyp again with no loader workers and with each speed switch (channels_last, bf16
autocast, torch.compile). It reports the second epoch (the first pays for compilation and
warm-up): images/s, and the share of its wall time the loop spent waiting for batches.
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
# Short names for --variants.
SHORT = dict(zip(["ce", "flyp", "drm", "drm-soft", "drm-per-step"], VARIANTS, strict=True))


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
        epochs=1,
        batch_size=args.batch_size,
        lr=1e-5,
        amp=args.amp,
        seed=0,
        grad_clip=1.0,
        channels_last=args.channels_last,
        compile=args.compile,
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


# --- whole epochs with data loading ------------------------------------------------------------

DRM = "drm (weight, cached p_c)"
# name: (objective variant, loader workers or None for --workers, TrainConfig switches)
EPOCH_RUNS: dict[str, tuple[str, int | None, dict[str, Any]]] = {
    "ce": ("ce", None, {}),
    "flyp": ("flyp", None, {}),
    "drm": (DRM, None, {}),
    "flyp (no loader workers)": ("flyp", 0, {}),
    "flyp + channels_last": ("flyp", None, {"channels_last": True}),
    "flyp + bf16 autocast": ("flyp", None, {"amp": "bf16"}),
    "flyp + torch.compile": ("flyp", None, {"compile": True}),
}


def write_epoch_dataset(root: Path, images: int, size: int) -> Path:
    from models.data.synthetic import CLASSES, write_shapes_dataset

    return write_shapes_dataset(root, per_class=max(2, images // len(CLASSES)), size=size)


def run_epoch(args: argparse.Namespace) -> dict[str, Any]:
    """Two epochs through the real loop from images on disk; the second one measured."""
    import torch
    from torch.utils.data import DataLoader

    from models.backbone import create_backbone
    from models.config import BackboneConfig, ObjectiveConfig, TrainConfig
    from models.data import ImageDataset, open_dataset
    from models.data.synthetic import DESCRIPTIONS
    from models.heads import Classifier
    from models.objectives import CorePrior, build_objective
    from models.train import Progress, train

    variant, workers, switches = EPOCH_RUNS[args.epoch_run]
    workers = args.workers if workers is None else workers
    torch.manual_seed(0)
    device = torch.device(args.device)
    backbone = create_backbone(BackboneConfig(arch=args.arch), device)
    ds = open_dataset(args.data)
    classifier = Classifier(backbone, ds.classnames, ["a photo of a {c}.", "a {c}."], DESCRIPTIONS)
    objective_cfg = ObjectiveConfig(**VARIANTS[variant])
    prior = None
    if objective_cfg.name == "drm":
        plain = ImageDataset(ds.split("train"), ds.classnames, backbone.transform(train=False))
        prior = CorePrior.cached(classifier, DataLoader(plain, batch_size=64, num_workers=workers))
    objective = build_objective(objective_cfg, classifier, 0, prior)
    seen: list[tuple[float, Progress]] = []
    cfg = TrainConfig(
        epochs=2, batch_size=args.batch_size, lr=1e-5, amp=args.amp, seed=0, grad_clip=1.0
    )
    cfg = TrainConfig(**{**cfg.__dict__, **switches})

    def clock(progress: Progress) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        seen.append((time.perf_counter(), progress))

    train_set = ImageDataset(ds.split("train"), ds.classnames)
    started = time.perf_counter()
    train(
        classifier,
        objective,
        train_set,
        cfg,
        transform=backbone.transform(train=True),
        callback=clock,
        num_workers=workers,
    )
    first = [t for t, p in seen if p.epoch == 0]
    second = [(t, p) for t, p in seen if p.epoch == 1]
    wall = second[-1][0] - first[-1]
    images = len(second) * args.batch_size
    return {
        "workers": workers,
        "switches": switches,
        "train_images": len(train_set),
        "images_per_s": images / wall,
        "first_epoch_images_per_s": len(first) * args.batch_size / (first[-1] - started),
        "data_wait_fraction": sum(p.data_wait_s for _, p in second) / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def epoch_main(args: argparse.Namespace) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rcs-bench-epoch-") as tmp:
        data = write_epoch_dataset(Path(tmp), args.epoch_images, args.image_size)
        results = {}
        for name in args.epoch_runs.split(","):
            cmd = [sys.executable, __file__, "--epoch-run", name, "--data", str(data)]
            done = subprocess.run(cmd + sys.argv[1:], capture_output=True, text=True)
            if done.returncode != 0:
                results[name] = {"error": done.stderr.strip().splitlines()[-1][:200]}
            else:
                results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    print_epoch_table(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


def print_epoch_table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    base = results.get("flyp", {}).get("images_per_s")
    train_images = next((r["train_images"] for r in results.values() if "train_images" in r), "?")
    print(
        f"training epochs from disk, {args.arch}, batch {args.batch_size}, {train_images} "
        f"training images ({args.image_size} px PNG), {args.device}, loader workers "
        f"{args.workers}; the second of two epochs"
    )
    print(
        "| run | epoch images/s | vs flyp | first epoch images/s | waiting for data "
        "| peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        print(
            f"| {name} | {r['images_per_s']:.2f} | {ratio} | {r['first_epoch_images_per_s']:.2f} "
            f"| {100 * r['data_wait_fraction']:.1f}% | {r['peak_rss_mb']:.0f} |"
        )


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
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last")
    parser.add_argument("--compile", action="store_true", help="train.compile (torch.compile)")
    parser.add_argument("--epoch", action="store_true", help="whole epochs with data loading")
    parser.add_argument("--epoch-images", type=int, default=64, help="training images (--epoch)")
    parser.add_argument("--image-size", type=int, default=256, help="stored image size (--epoch)")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers (--epoch)")
    parser.add_argument(
        "--epoch-runs", default=",".join(EPOCH_RUNS), help="comma-separated (--epoch)"
    )
    parser.add_argument(
        "--variants", default=",".join(SHORT), help=f"comma-separated, of {', '.join(SHORT)}"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--epoch-run", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    if args.epoch_run:
        print(json.dumps(run_epoch(args)))
        return
    if args.epoch:
        epoch_main(args)
        return
    results = {}
    for variant in [SHORT[name] for name in args.variants.split(",")]:
        cmd = [sys.executable, __file__, "--variant", variant] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    base = results.get("flyp", {}).get("step_s", float("nan"))
    cpu_base = results.get("flyp", {}).get("cpu_s", float("nan"))
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
    rates = ", ".join(f"{v} {args.batch_size / r['step_s']:.1f}" for v, r in results.items())
    print(f"\ntraining images/s (batch / median step wall): {rates}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
