"""``python -m models``: finetune, eval, merge, predict, and small helpers.

Every command prints a one-line error naming what is wrong (exit code 2) for a user mistake;
only a bug gives a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from models import description_commands
from models.artifacts import (
    FINETUNED,
    RUN_CONFIG,
    ZEROSHOT,
    card_digest,
    load_artifact,
    merge_artifact,
    read_card,
)
from models.backbone import (
    DEFAULT_BACKBONE_CACHE,
    OFFLINE_BACKBONE,
    list_architectures,
    offline_builder,
)
from models.config import RunConfig, from_dict, load_run_config, to_dict
from models.data import open_dataset, read_image
from models.data.synthetic import write_shapes_dataset
from models.diagnostics import summary_line as diagnostics_line
from models.errors import Cancelled, ModelsError
from models.evaluation import split_evaluator, summary
from models.heads import HEAD_NAMES
from models.objective_registry import OBJECTIVES
from models.onnx_export import TOLERANCE, export_onnx, write_triton_repository
from models.pipeline import build_classifier, cpu_state, finetune
from models.report import report_png, robustness_report
from models.templates import TEMPLATE_SETS
from models.train import Progress


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        result: int = args.run(args)
        return result
    except (ModelsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("finetune", help="fine-tune a model and write an artifact")
    p.add_argument("--config", help="YAML run config (defaults when omitted)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--checkpoint-dir", help="keep resumable checkpoints here (resumes if present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_finetune)

    p = sub.add_parser("eval", help="evaluate an artifact on dataset splits")
    p.add_argument("artifact")
    p.add_argument("--data", required=True, help="image folder or manifest")
    p.add_argument("--splits", nargs="+", default=["val"])
    p.add_argument("--out", help="also write the metrics JSON here")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("merge", help="re-merge an artifact's fine-tuned weights at a new alpha")
    p.add_argument("artifact")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_merge)

    p = sub.add_parser(
        "report",
        help="an artifact's robustness report: the WiSE-FT curve, the gain over zero-shot, weak "
        "class descriptions",
    )
    p.add_argument("artifact")
    p.add_argument("--png", help="also write the effective-robustness plot here")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("predict", help="classify image files with an artifact")
    p.add_argument("artifact")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--head", choices=HEAD_NAMES, default="dual")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser(
        "export-onnx",
        help="write an artifact's served model (image tower + dual head) as one ONNX file, "
        "verified against torch",
    )
    p.add_argument("artifact")
    p.add_argument("--out", help="the .onnx file (default: beside the artifact, ARTIFACT.onnx)")
    p.add_argument(
        "--images", nargs="+", help="verify on these image files (default: seeded random pixels)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help="largest absolute difference of a probability allowed against torch",
    )
    p.add_argument("--triton", metavar="DIR", help="also write a Triton model repository entry")
    p.add_argument("--triton-name", help="its model name (default: the artifact folder's name)")
    p.add_argument("--triton-version", type=int, default=1)
    p.add_argument("--triton-max-batch", type=int, default=32)
    p.set_defaults(run=cmd_export_onnx)

    p = sub.add_parser("synthetic", help="write the small synthetic shapes shift dataset")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=24)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_synthetic)

    p = sub.add_parser(
        "build-offline-backbone",
        help="align real pretrained towers into a zero-shot backbone (no download needed)",
    )
    p.add_argument(
        "--out",
        default=str(DEFAULT_BACKBONE_CACHE / OFFLINE_BACKBONE),
        help="model folder to write",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="alignment steps (default: the build's own)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_build_offline_backbone)

    description_commands.add_parser(sub)

    p = sub.add_parser("list", help="architectures, objectives and template sets")
    p.set_defaults(run=cmd_list)
    return parser


class ProgressBar:
    """A tqdm bar fed by the training callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm[Any] | None = None

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=progress.total_steps, initial=progress.step - 1, unit="step")
        if progress.event == "step":
            self.bar.update(progress.step - self.bar.n)
            loss = progress.losses.get("loss", float("nan"))
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{progress.images_per_s:.1f}")
            if progress.step >= progress.total_steps:
                self.close()
        elif progress.metrics:
            self.bar.write(f"step {progress.step}: {summary(progress.metrics)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.enabled = False


def cmd_finetune(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.overrides)
    out = Path(cfg.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar(not args.no_progress)
    try:
        result = finetune(cfg, callback=bar, checkpoint_dir=args.checkpoint_dir, note=print)
    except Cancelled as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    # The resolved config goes beside the outputs, so the run can be repeated as it was.
    with open(out / RUN_CONFIG, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    metrics = result.card["metrics"]["selected"]
    print(f"artifact: {result.artifact.path}")
    print(f"selected alpha {result.card['wise']['selected_alpha']}: {summary(metrics)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    artifact = load_artifact(args.artifact)
    classifier = artifact.classifier
    ds = open_dataset(args.data, classnames=classifier.classnames)
    splits = {name: ds.split(name) for name in args.splits}
    transform = classifier.backbone.transform()
    evaluate = split_evaluator(splits, classifier.classnames, transform, scoring=ds.scoring)
    metrics = evaluate(classifier)
    text = json.dumps(metrics, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """What the service serves as ``.../report`` and ``.../report.png``, from the card alone."""
    card = read_card(args.artifact)
    report = robustness_report(card)
    if args.png:
        Path(args.png).write_bytes(report_png(card, Path(args.artifact).name))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    selection = report["selection"]
    how = (
        "chosen by hand"
        if selection["rule"] == "manual"
        else f"{selection['rule']} on ID validation {selection['metric']}"
    )
    print(
        f"objective {report['objective']}, served head {report['served_head']}, alpha "
        f"{selection['alpha']:g} ({how})"
    )
    splits = [*report["zeroshot"]]
    print(f"{'split':<16}{'zero-shot':>11}{'selected':>11}{'fine-tuned':>11}")
    served = report["served_head"]
    for split in splits:
        row = [report[end].get(split, {}).get(served, {}).get("top1") for end in ENDS]
        print(f"{split:<16}" + "".join(f"{'-' if v is None else f'{v:.3f}':>11}" for v in row))
    gain = report["gain_over_zeroshot"]
    ood = "n/a" if gain["ood"] is None else f"{gain['ood']:+.3f}"
    print(f"gain over zero-shot: ID ({report['id_split']}) {gain['id']:+.3f}, mean OOD {ood}")
    if report["description_diagnostics"]:
        print(diagnostics_line(report["description_diagnostics"]))
        if report["description_diagnostics"].get("warning"):
            print(report["description_diagnostics"]["warning"])
    if args.png:
        print(f"plot: {args.png}")
    return 0


# The report's three points of the curve, as table columns.
ENDS = ("zeroshot", "selected", "finetuned")


def cmd_merge(args: argparse.Namespace) -> int:
    card = read_card(args.artifact)
    zeroshot = None
    if FINETUNED in card.get("files", {}) and ZEROSHOT not in card.get("files", {}):
        # Saved before the zero-shot end was kept: rebuild it as the run started it (same source
        # and seed), exact where the same pretrained weights and torch build are at hand.
        cfg = from_dict(RunConfig, card["config"])
        zeroshot = cpu_state(build_classifier(cfg, card["classnames"], card["descriptions"]))
    path = merge_artifact(args.artifact, args.alpha, args.out, zeroshot_state=zeroshot)
    print(f"artifact: {path} (alpha {args.alpha})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    artifact = load_artifact(args.artifact)
    classifier = artifact.classifier
    transform = classifier.backbone.transform()
    images = torch.stack([transform(read_image(p)) for p in args.images])
    with torch.no_grad():
        probs = classifier(images.to(classifier.device), head=args.head).cpu()
    k = max(1, min(args.top_k, len(classifier.classnames)))
    for path, row in zip(args.images, probs, strict=True):
        values, indices = row.topk(k)
        labels = ", ".join(
            f"{classifier.classnames[i]} {v:.3f}"
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        )
        print(f"{path}: {labels}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    artifact = load_artifact(args.artifact)
    classifier = artifact.classifier
    images = None
    if args.images:
        transform = classifier.backbone.transform()
        images = torch.stack([transform(read_image(p)) for p in args.images])
    folder = Path(args.artifact).resolve()
    out = Path(args.out) if args.out else folder.with_name(folder.name + ".onnx")
    extra = {"artifact_digest": card_digest(artifact.path)}
    report = export_onnx(classifier, out, images, args.tolerance, extra_metadata=extra)
    print(
        f"onnx: {report.path} (opset {report.opset}; verified on {report.images} images: max "
        f"|onnxruntime - torch| = {report.max_abs_diff:.2g} <= {report.tolerance:g})"
    )
    if args.triton:
        name = args.triton_name or folder.name
        entry = write_triton_repository(
            report.path,
            args.triton,
            name,
            classifier.classnames,
            classifier.backbone.image_size,
            version=args.triton_version,
            max_batch_size=args.triton_max_batch,
        )
        print(f"triton: {entry} (config.pbtxt, labels.txt, {args.triton_version}/model.onnx)")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    root = write_shapes_dataset(args.out, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"dataset: {root} (descriptions: {root / 'descriptions.json'})")
    return 0


def cmd_build_offline_backbone(args: argparse.Namespace) -> int:
    build = offline_builder()  # the robust-clip-offline package, or an error saying how to get it
    if build.is_built(args.out) and not args.force:
        print(f"offline backbone: {args.out} (already built; --force rebuilds it)")
        return 0
    steps = {} if args.steps is None else {"steps": args.steps}
    cfg = build.OfflineBuildConfig(seed=args.seed, **steps)
    path = build.ensure_offline_backbone(
        args.out, cfg, force=True, progress=not args.no_progress, note=print
    )
    card = json.loads((path / build.CARD).read_text())
    if "zero_shot" in card:
        print(build.format_table(card["zero_shot"]))
    print(f"use it with backbone.arch={path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print("objectives:")
    for name, spec in OBJECTIVES.items():
        print(f"  {name:9s} {spec.description}")
    print("template sets: " + ", ".join(f"{k} ({len(v)})" for k, v in TEMPLATE_SETS.items()))
    print("architectures: " + ", ".join(list_architectures()))
    return 0
