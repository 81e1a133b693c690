from __future__ import annotations

import torch

from models.seeding import MAX_SEED, derive_seed
from models.train import SeededView, epoch_order


def test_derived_seeds_are_deterministic_distinct_and_in_range() -> None:
    seeds = {derive_seed(s, e, i) for s in (0, 1, MAX_SEED) for e in (0, 1) for i in (0, 1, 10**12)}
    assert len(seeds) == 18
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert derive_seed(3, 4, 5) == derive_seed(3, 4, 5)
    assert derive_seed(1, 23) != derive_seed(12, 3)  # parts are delimited, not concatenated


def test_the_largest_seed_seeds_every_generator() -> None:
    view = SeededView([(torch.zeros(1), 0, 10**9)], lambda image: image + torch.rand(1), MAX_SEED)
    view.epoch = 10**6
    first = view[0][0]
    assert torch.equal(first, view[0][0])
    assert len(epoch_order(10, MAX_SEED, 10**6, 0, 1)) == 10
