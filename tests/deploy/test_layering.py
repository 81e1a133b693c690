"""The layers and what each may import (README, Layout), and no import cycle between modules.

    bench  -> tools, worker, service, models  (the benchmarks; not in the wheel)
    tools  -> worker, service, models     (the demo, starting processes; not in the wheel)
    worker -> service, models             (the Celery app and its task)
    service -> models                     (the API and its domain layer, with the queue contract)
    models -> nothing of ours             (the ML library and its CLI)

Imports are read from the source (every ``import``, at module level, inside a function or under
``if TYPE_CHECKING:``), so neither a lazy import nor one made for types alone can hide a
dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {"models", "service", "worker", "tools", "bench", "tests"}
MAY_IMPORT = {
    "models": set(),
    "service": {"models"},
    "worker": {"service", "models"},
    "tools": {"worker", "service", "models"},
    "bench": {"tools", "worker", "service", "models"},
}
# The library knows nothing of the web, the queue or the database.
MODELS_NEVER = {"fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic", "redis"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imports(name: str, path: Path) -> Iterator[tuple[str, str | None]]:
    """(module, name) for each ``from module import name``; (module, None) for ``import``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield from ((base, alias.name) for alias in node.names)


def graph() -> dict[str, set[str]]:
    """Each of our modules and the modules of ours it imports: ``from a import b`` imports the
    module ``a.b`` if there is one, else (b is a name in a) the module ``a``."""
    known: dict[str, Path] = {}
    for package in MAY_IMPORT:
        known |= modules(package)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for module, attribute in imports(name, path):
            target = f"{module}.{attribute}" if attribute else module
            target = target if target in known else module
            if target in known and target != name:
                edges[name].add(target)
    return edges


def foreign_imports(package: str) -> set[str]:
    """The top-level packages ``package`` imports, itself left out."""
    found = {m.split(".")[0] for n, p in modules(package).items() for m, _ in imports(n, p)}
    return found - {package}


def test_each_layer_imports_only_the_layers_below_it() -> None:
    for package, allowed in MAY_IMPORT.items():
        ours = foreign_imports(package) & OURS
        assert ours <= allowed, f"{package} imports {sorted(ours - allowed)}"


def test_models_imports_no_web_queue_or_database() -> None:
    found = foreign_imports("models") & MODELS_NEVER
    assert not found, sorted(found)


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def test_the_cycle_check_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [g for g in strongly_connected(edges) if len(g) > 1] == [{"a", "b", "c"}]
