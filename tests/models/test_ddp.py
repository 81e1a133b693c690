"""DistributedDataParallel in the same training loop, on CPU: gloo backend, 2 processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, root: str, out: str) -> None:
    from models.config import ObjectiveConfig, TrainConfig
    from models.data import ImageDataset, open_dataset
    from models.objectives import CorePrior, build_objective
    from models.train import train
    from tests.conftest import make_classifier

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        classifier = make_classifier(seed=0)  # same start on both ranks
        ds = open_dataset(root)
        cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, seed=0)
        prior = CorePrior.per_step(classifier)
        objective = build_objective(ObjectiveConfig(name="drm"), classifier, 0, prior)
        result = train(
            classifier,
            objective,
            ImageDataset(ds.split("train"), ds.classnames),
            cfg,
            transform=classifier.backbone.transform(train=True),
        )
        state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
        state["steps"] = torch.tensor(result.steps)
        save_file(state, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_training_keeps_ranks_in_sync(shapes_root: Path, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(shapes_root), str(tmp_path)), nprocs=2)
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    # 32 images split over 2 ranks in batches of 4: 4 optimizer steps each.
    assert int(rank0["steps"]) == int(rank1["steps"]) == 4
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    from tests.conftest import make_classifier

    start = make_classifier(seed=0).state_dict()
    assert not torch.equal(start["clip.visual.proj"], rank0["clip.visual.proj"])
