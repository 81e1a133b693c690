"""`python -m service serve`'s logging: the project's own loggers reach uvicorn's stderr handler,
each line naming its logger, at the level asked for (uvicorn's config alone dropped them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, logging.config, sys
from service.server import log_config
logging.config.dictConfig(log_config(sys.argv[1] if len(sys.argv) > 1 else None))
logging.getLogger("service.predict.cache").info("shapes/1: passes run in torch")
logging.getLogger("models.train").warning("a warning from the library")
logging.getLogger("uvicorn.error").info("uvicorn's own line")
"""


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [
        (
            None,
            ["service.predict.cache: shapes/1: passes run in torch", "models.train: a warn"],
            [],
        ),
        ("warning", ["models.train: a warning from the library"], ["passes run in"]),
    ],
)
def test_the_service_loggers_lines_reach_stderr_at_the_level_asked_for(
    level: str | None, shown: list[str], hidden: list[str]
) -> None:
    args = [sys.executable, "-c", SCRIPT, *([level] if level else [])]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    for text in shown:
        assert text in done.stderr
    for text in hidden:
        assert text not in done.stderr
    assert "uvicorn's own line" in done.stderr  # uvicorn's config is kept
