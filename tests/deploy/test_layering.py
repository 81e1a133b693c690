"""Dependency direction: models knows nothing of the service; the API never imports tasks."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
    return found


def test_models_imports_no_web_queue_or_database() -> None:
    for name in imports("models"):
        assert name.split(".")[0] not in {"fastapi", "celery", "sqlalchemy", "service", "worker"}


def test_service_imports_only_the_worker_contracts() -> None:
    worker_imports = {n for n in imports("service") if n.split(".")[0] == "worker"}
    assert worker_imports <= {"worker.contracts"}
