"""The one training loop: every objective, one device or many, resumable.

Read ``train`` top to bottom; the helpers above it keep it short. Two choices make a resumed run
give the same weights as an uninterrupted one: the data order is a permutation seeded by
(seed, epoch), and each image's augmentation is seeded by (seed, epoch, index), so nothing
depends on how far a global random stream had advanced when the process died.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from models.config import TrainConfig
from models.errors import Cancelled, TrainingError
from models.heads import Classifier
from models.objectives import Batch, DualEncoder, Objective
from models.seeding import derive_seed

LATEST = "latest"
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class Progress:
    """What the loop tells its observer after each optimiser step and each evaluation."""

    event: str  # "step" | "eval" | "checkpoint"
    step: int
    total_steps: int
    epoch: int
    losses: dict[str, float]
    lr: float
    images_per_s: float
    eta_s: float | None
    metrics: dict[str, Any] | None = None
    # Seconds this step waited for its batches (loading, decoding, augmenting, copying to the
    # device): near zero when the data loader keeps ahead of the model.
    data_wait_s: float = 0.0


# The callback may return "cancel" (stop now) or "preempt" (checkpoint, then stop); the loop
# raises Cancelled either way. Anything else means go on.
Callback = Callable[[Progress], str | None]
Evaluate = Callable[[Classifier], dict[str, Any]]


@dataclass
class TrainResult:
    steps: int
    resumed_from: int | None
    losses: dict[str, float]
    evals: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


class SeededView(Dataset[tuple[Tensor, int, int]]):
    """Applies the training transform with a generator seeded by (seed, epoch, index)."""

    def __init__(self, base: Dataset[Any], transform: Callable[[Any], Tensor], seed: int) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        image, label, index = self.base[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.epoch, index))
            return self.transform(image), label, index


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_order(n: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """This rank's share of a permutation seeded by (seed, epoch); equal shares on every rank."""
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, -1))
    order = torch.randperm(n, generator=gen).tolist()
    per_rank = n // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


def batches_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    per_rank = n // world_size
    # Contrastive losses need more than one pair; keep the last partial batch only if alone.
    return max(1, per_rank // batch_size)


def param_groups(
    model: nn.Module, weight_decay: float, decay_on: str = "matrices"
) -> list[dict[str, Any]]:
    """AdamW groups: no decay on gains, biases, embeddings of position, temperature, heads.

    ``decay_on="all"`` decays every trainable parameter (one group), as FLYP's release does.
    """
    if decay_on == "all":
        trainable = [p for p in model.parameters() if p.requires_grad]
        return [{"params": trainable, "weight_decay": weight_decay}]
    skip = set()
    for name, module in model.named_modules():
        no_wd = getattr(module, "no_weight_decay", None)
        if callable(no_wd):
            skip |= {f"{name}.{n}" if name else n for n in no_wd()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "logit_scale" in name or name in skip or name.endswith("_head")
        (no_decay if plain else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to the base lr, then cosine decay to zero at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPU by default; on CPU only bf16, and only when asked for (``auto``
    leaves it off there: without AMX units it slows these models down)."""
    if amp == "none":
        return None
    if device.type == "cpu":
        return torch.bfloat16 if amp == "bf16" else None
    if device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _batches(
    view: SeededView,
    cfg: TrainConfig,
    epoch: int,
    start: int,
    device: torch.device,
    num_workers: int,
) -> Iterator[Batch]:
    rank, world_size = world()
    view.epoch = epoch
    order = epoch_order(len(view), cfg.seed, epoch, rank, world_size)
    usable = batches_per_epoch(len(view), cfg.batch_size, world_size) * cfg.batch_size
    order = order[:usable][start * cfg.batch_size :]
    loader = DataLoader(
        view,
        batch_size=cfg.batch_size,
        sampler=order,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",  # lets the non-blocking copy below overlap
    )
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for images, labels, indices in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        yield Batch(images, labels.to(device, non_blocking=True), indices)


# --- checkpoints: weights in safetensors, optimiser state through torch.save read back with
# weights_only=True (tensors and plain containers only, never code). ---


def save_checkpoint(
    folder: Path, classifier: Classifier, trainer_state: dict[str, Any], step: int
) -> Path:
    """Write step-N atomically (temporary folder, then rename), point ``latest`` at it."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(trainer_state, tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = folder / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, folder / LATEST)
    for old in sorted(folder.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path | None) -> Path | None:
    if folder is None or not (folder / LATEST).is_file():
        return None
    path = folder / (folder / LATEST).read_text().strip()
    return path if (path / "trainer.pt").is_file() else None


def load_checkpoint(path: Path, classifier: Classifier) -> dict[str, Any]:
    state = load_file(str(path / "model.safetensors"), device=str(classifier.device))
    classifier.load_state_dict(state, strict=True)
    trainer: dict[str, Any] = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    return trainer


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _finite_or_raise(parts: dict[str, Tensor], step: int) -> None:
    if not torch.isfinite(parts["loss"]).all():
        values = {k: float(v.detach()) for k, v in parts.items()}
        raise TrainingError(f"non-finite loss at step {step}: {values}")


def _mean_parts(parts: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    return {k: sum(float(p[k].detach()) for p in parts) / len(parts) for k in parts[0]}


def train(
    classifier: Classifier,
    objective: Objective,
    dataset: Dataset[Any],
    cfg: TrainConfig,
    *,
    transform: Callable[[Any], Tensor],
    callback: Callback | None = None,
    evaluate: Evaluate | None = None,
    checkpoint_dir: str | Path | None = None,
    num_workers: int = 0,
    run_key: str = "",
) -> TrainResult:
    """Fine-tune ``classifier`` in place with ``objective``; resume from ``checkpoint_dir``.

    ``run_key`` identifies the run (a hash of its config): a checkpoint left by another run in
    the same folder is refused instead of silently continued.
    """
    started = time.monotonic()
    device = classifier.device
    rank, world_size = world()
    torch.manual_seed(derive_seed(cfg.seed, rank, -2))
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None

    view = SeededView(dataset, transform, cfg.seed)
    steps_per_epoch = max(
        1, batches_per_epoch(len(view), cfg.batch_size, world_size) // cfg.grad_accum
    )
    total = cfg.max_steps or cfg.epochs * steps_per_epoch

    if cfg.channels_last:
        classifier.to(memory_format=torch.channels_last)  # 4-d weights only: the convolutions
    encoder: nn.Module = DualEncoder(classifier)
    if world_size > 1:
        # Heads are buffers rebuilt identically on every rank: no need to broadcast them.
        encoder = nn.parallel.DistributedDataParallel(encoder, broadcast_buffers=False)
    if cfg.compile:
        # Prompt batches change length from step to step (tokens are trimmed): dynamic shapes.
        encoder = torch.compile(encoder, dynamic=None)  # type: ignore[assignment]
    groups = param_groups(classifier, cfg.weight_decay, cfg.weight_decay_on)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(cfg.warmup_steps, total)
    )
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    step, resumed_from = 0, None
    checkpoint = latest_checkpoint(folder)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, classifier)
        if state.get("run_key", "") != run_key:
            raise TrainingError(f"{checkpoint} belongs to another run (different config)")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step = resumed_from = int(state["step"])

    def trainer_state() -> dict[str, Any]:
        return {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "step": step,
            "run_key": run_key,
        }

    result = TrainResult(steps=step, resumed_from=resumed_from, losses={})
    training_mode(classifier, cfg.freeze_norm_stats)
    window_start, window_images = time.monotonic(), 0
    while step < total:
        epoch = step // steps_per_epoch
        start = (step % steps_per_epoch) * cfg.grad_accum
        micro_batches = _batches(view, cfg, epoch, start, device, num_workers)
        while step < total and step // steps_per_epoch == epoch:
            waited = time.perf_counter()
            group = [b for _, b in zip(range(cfg.grad_accum), micro_batches, strict=False)]
            waited = time.perf_counter() - waited
            if not group:  # cannot happen with the counts above; never spin on an empty loader
                raise TrainingError(f"the data loader ran dry in epoch {epoch} at step {step}")
            parts_seen = []
            for i, batch in enumerate(group):
                # Only the last micro-batch of an accumulation group syncs gradients in DDP.
                sync = i == len(group) - 1 or world_size == 1
                no_sync = getattr(encoder, "no_sync", contextlib.nullcontext)
                with contextlib.nullcontext() if sync else no_sync():
                    with torch.autocast(
                        device.type, amp_dtype or torch.float32, amp_dtype is not None
                    ):
                        parts = objective(encoder, batch, step)
                    _finite_or_raise(parts, step)
                    scaler.scale(parts["loss"] / len(group)).backward()
                parts_seen.append(parts)
                window_images += len(batch.labels) * world_size
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(classifier.parameters(), cfg.grad_clip)
            lr = float(scheduler.get_last_lr()[0])  # the rate this step used
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            result.steps, result.losses = step, _mean_parts(parts_seen)

            elapsed = time.monotonic() - window_start
            rate = window_images / elapsed if elapsed > 0 else 0.0
            steps_rate = (step - (resumed_from or 0)) / max(1e-9, time.monotonic() - started)
            progress = Progress(
                event="step",
                step=step,
                total_steps=total,
                epoch=epoch,
                losses=result.losses,
                lr=lr,
                images_per_s=rate,
                eta_s=(total - step) / steps_rate if steps_rate > 0 else None,
                data_wait_s=waited,
            )
            control = callback(progress) if callback is not None else None

            if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0:
                metrics = _evaluate(classifier, evaluate, rank, cfg.freeze_norm_stats)
                result.evals.append({"step": step, **metrics})
                if callback is not None:
                    callback(Progress(**{**progress.__dict__, "event": "eval", "metrics": metrics}))
            periodic = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
            if folder is not None and rank == 0 and (periodic or control == "preempt"):
                save_checkpoint(folder, classifier, trainer_state(), step)
            if control in ("cancel", "preempt"):
                raise Cancelled(f"training {control}ed at step {step} of {total}")
    result.wall_s = time.monotonic() - started
    return result


def training_mode(module: nn.Module, freeze_norm_stats: bool) -> None:
    """``module.train()``, with batch-norm layers left in eval mode when ``freeze_norm_stats``.

    Frozen, they normalise with the running statistics the pretrained (zero-shot) model was
    aligned with instead of each small batch's, and those statistics stay the zero-shot
    model's, so WiSE-FT averages two models that agree on them. ViTs have no batch norm.
    """
    module.train()
    if freeze_norm_stats:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _evaluate(
    classifier: Classifier, evaluate: Evaluate, rank: int, freeze_norm_stats: bool
) -> dict[str, Any]:
    was_training = classifier.training
    classifier.eval()
    metrics = evaluate(classifier) if rank == 0 else {}
    if was_training:
        training_mode(classifier, freeze_norm_stats)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return metrics
