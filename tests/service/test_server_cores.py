"""How many cores ``python -m service serve`` shares out over its processes (torch threads each):
those the process may run on, fewer under a cgroup v2 CPU quota (a container's ``--cpus``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.server import usable_cores

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [
        ("max 100000\n", AFFINITY),  # no quota
        ("50000 100000\n", 1),  # half a core: at least one
        ("150000 100000\n", min(AFFINITY, 1)),  # 1.5 cores: rounded down
        (f"{100000 * (AFFINITY + 4)} 100000\n", AFFINITY),  # a quota above the cores it may use
        ("not a quota\n", AFFINITY),
    ],
)
def test_a_cgroup_quota_caps_the_cores_and_anything_else_leaves_the_affinity(
    tmp_path: Path, cpu_max: str, cores: int
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert usable_cores(path) == cores


def test_without_a_cgroup_file_the_affinity_decides(tmp_path: Path) -> None:
    assert usable_cores(tmp_path / "absent") == AFFINITY
