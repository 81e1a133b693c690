"""The compose files, the Dockerfile and the lock they install from, checked statically.

These run everywhere in a second; `make compose-smoke` (scripts/compose-smoke.sh) runs the same
files for real on a Docker engine: build, up, a job end to end, a worker container killed, down.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCK = ROOT / "requirements" / "deploy.txt"
NO_DEPS = ROOT / "requirements" / "no-deps.txt"
LONG_RUNNING = ("postgres", "redis", "api")


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose v2's merge tags (``!reset``, ``!override``), kept as their values."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return {f"!{suffix}": value}


ComposeLoader.add_multi_constructor("!", _tagged)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(path.read_text(), Loader=ComposeLoader)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return load(CPU)


def workers(compose: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in compose["services"].items() if k.startswith("worker")}


def python_modules(command: list[str]) -> list[str]:
    """The modules a `python -m X` command line runs."""
    return [command[i + 1] for i, part in enumerate(command[:-1]) if part == "-m"]


def module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def test_services_and_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "redis", "postgres", "migrate"} <= set(services)
    assert workers(compose), "at least one GPU worker service"
    assert any(p.endswith(":8000") for p in services["api"]["ports"])
    assert set(compose["volumes"]) >= {"artifacts", "datasets", "model-cache", "pgdata"}


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name in [*LONG_RUNNING, *workers(compose)]:
        check = compose["services"][name].get("healthcheck")
        assert check and check["test"], f"{name} has no healthcheck"


def test_redis_never_evicts(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_each_worker_reserves_one_gpu(compose: dict[str, Any]) -> None:
    seen = []
    for name, service in workers(compose).items():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert len(device["device_ids"]) == 1, f"{name}: one GPU per worker process"
        seen += device["device_ids"]
        assert service["environment"]["RCS_DEVICE"] == "cuda"
    assert len(seen) == len(set(seen)), "two workers on one GPU"


def test_secrets_come_from_the_environment_and_are_required() -> None:
    text = COMPOSE.read_text()
    for variable in ("POSTGRES_PASSWORD", "RCS_BOOTSTRAP_API_KEY"):
        assert re.search(rf"\$\{{{variable}:\?[^}}]*\}}", text), variable
    assert not re.search(r"(?i)password:\s*['\"]?\w+['\"]?\s*$", text, re.M)


def test_visibility_timeout_outlasts_jobs(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    default = re.search(r":-(\d+)", env["RCS_VISIBILITY_TIMEOUT_S"])
    assert default and int(default.group(1)) >= 24 * 3600


def test_commands_and_healthchecks_run_project_modules(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        commands = [service.get("command") or []]
        test = (service.get("healthcheck") or {}).get("test") or []
        commands.append(test[1:] if test and test[0] == "CMD" else [])
        for command in commands:
            for module in python_modules(command):
                assert module_exists(module), f"{name}: python -m {module} does not exist"


def test_services_accept_their_commands() -> None:
    from service.__main__ import main as service_main

    with pytest.raises(SystemExit) as caught:
        service_main(["serve", "--help"])
    assert caught.value.code == 0


def instructions(dockerfile: Path) -> list[list[str]]:
    text = dockerfile.read_text().replace("\\\n", " ")
    return [line.split(None, 1) for line in text.splitlines() if line and line[0].isupper()]


def stages(dockerfile: Path) -> list[str]:
    return [
        rest.split()[-1] for k, rest in instructions(dockerfile) if k == "FROM" and " AS " in rest
    ]


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*Dockerfile")))
def test_dockerfiles_copy_existing_paths_and_run_project_commands(dockerfile: Path) -> None:
    ignored = dockerignored()
    for keyword, rest in instructions(dockerfile):
        if keyword == "COPY":
            *sources, _ = shlex.split(rest)
            if any(s.startswith("--from") for s in sources):
                continue
            for source in (s for s in sources if not s.startswith("--")):
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is missing"
                assert not ignored(source), f"{dockerfile.name}: .dockerignore drops {source}"
        if keyword in ("CMD", "HEALTHCHECK"):
            exec_form = rest[rest.index("[") :] if "[" in rest else "[]"
            for module in python_modules(yaml.safe_load(exec_form)):
                assert module_exists(module), f"{dockerfile.name}: python -m {module}"
    assert any(k == "HEALTHCHECK" for k, _ in instructions(dockerfile))
    assert any(k == "USER" for k, _ in instructions(dockerfile)), "containers run as root"


def test_compose_builds_from_existing_dockerfiles(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            dockerfile = ROOT / build["context"] / build["dockerfile"]
            assert dockerfile.is_file(), name
            assert build["target"] in stages(dockerfile), f"{name}: no stage {build['target']}"


def test_worker_healthcheck_reads_the_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.health import main

    beat = tmp_path / "beat"
    monkeypatch.setenv("RCS_WORKER_HEARTBEAT_FILE", str(beat))
    assert main([]) == 1
    beat.touch()
    assert main(["--max-age", "60"]) == 0


def test_non_python_files_of_the_packages_are_package_data() -> None:
    # A non-editable install (pip install .) ships only what package-data names: without the
    # Alembic template, `alembic revision` breaks on an installed service.
    import fnmatch
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    for package in ("service", "worker"):
        folder = ROOT / package
        patterns = package_data.get(package, [])
        for path in folder.rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder).as_posix()
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{package}/{rel}"


def dockerignored() -> Any:
    """Whether .dockerignore keeps a path out of the build context (its last matching rule)."""
    import fnmatch

    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((keep, line.lstrip("!").rstrip("/")))

    def ignored(path: str) -> bool:
        path = path.rstrip("/")
        verdict = False
        for keep, pattern in rules:
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
                verdict = not keep
        return verdict

    return ignored


def test_the_build_context_leaves_local_state_out() -> None:
    ignored = dockerignored()
    for path in (".venv", "runs", "tests", ".git", "bench", "models/__pycache__/x.pyc"):
        assert ignored(path), path
    for path in ("models/backbone.py", "service/app.py", "requirements/deploy.txt"):
        assert not ignored(path), path


def test_base_images_are_variables_with_the_usual_defaults(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:16}"
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7}"
    for name, service in services.items():
        if service.get("build"):
            args = service["build"]["args"]
            assert args["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}", name
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    assert instructions(DOCKERFILE)[1] == ["FROM", "${PYTHON_IMAGE} AS deps"]


def test_only_the_api_publishes_a_port(compose: dict[str, Any], cpu: dict[str, Any]) -> None:
    # Redis and PostgreSQL stay on the compose network: a host's own servers on 6379 and 5432
    # are never in the way, nor reachable from outside through the stack.
    for document in (compose, cpu):
        for name, service in document["services"].items():
            if name != "api":
                assert "ports" not in service, name
    [port] = compose["services"]["api"]["ports"]
    assert port == "${RCS_API_ADDRESS:-0.0.0.0}:${RCS_API_PORT:-8000}:8000"


def test_the_cpu_file_swaps_the_gpu_worker_for_a_cpu_one(cpu: dict[str, Any]) -> None:
    services = cpu["services"]
    assert services["worker-gpu0"] == {"profiles": ["gpu"]}
    worker = services["worker-cpu"]
    assert worker["extends"] == {"file": "docker-compose.yml", "service": "worker-gpu0"}
    assert worker["deploy"] == {"!reset": {}}, "the NVIDIA device request must go"
    assert worker["environment"]["RCS_DEVICE"] == "cpu"
    assert re.fullmatch(r"\$\{RCS_WORKER_CPUS:-[0-9.]+\}", worker["cpus"])
    assert re.fullmatch(r"\$\{RCS_API_CPUS:-[0-9.]+\}", services["api"]["cpus"])


def test_the_images_install_from_the_lock_only() -> None:
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install ([^\n]*)", text)
    assert installs, "no pip install"
    for line in installs:
        assert "--require-hashes" in line and "--no-deps" in line, line
        assert re.search(r"-r /tmp/requirements/(deploy|no-deps)\.txt", line), line
    assert "pyproject" not in text


def locked(path: Path) -> dict[str, str]:
    """name -> version of every pinned requirement; each must carry a hash."""
    text = path.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)\s+(.*)", line)
        assert match, f"{path.name}: not a pin: {line[:80]}"
        assert "--hash=sha256:" in match.group(3), f"{path.name}: {match.group(1)} has no hash"
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_torch_and_covers_the_declared_dependencies() -> None:
    import tomllib

    pins = locked(LOCK)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["offline"]]
    for requirement in declared:
        name = canonical(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
        assert name in pins, f"{name} is declared but not in {LOCK.name}: bash requirements/lock.sh"
    # Only the images' extras: not the dev tools, nor the peer benchmark's.
    assert "pytest" not in pins and "bentoml" not in pins
    assert locked(NO_DEPS) == {"animal-mnist": "0.4"}


def imported_distributions() -> dict[str, set[str]]:
    """The distributions whose modules models/, service/, worker/ and the images' copy of the
    asset builders (offline/robust_clip_offline/) import (also lazily, by ``require("x")`` or
    ``package_dir("x", ...)`` in the builders), each with a file that does."""
    import ast
    import importlib.metadata
    import sys

    owners = importlib.metadata.packages_distributions()
    ours = {"models", "service", "worker", "tools", "bench", "tests", "robust_clip_offline"}
    found: dict[str, set[str]] = {}
    for package in ("models", "service", "worker", "offline/robust_clip_offline"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                elif (
                    package in ("models", "offline/robust_clip_offline")
                    and isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in ("require", "package_dir")
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    names = [str(node.args[0].value)]
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in ours:
                        continue
                    assert top in owners, f"{path}: {top} is not installed here"
                    for dist in owners[top]:
                        found.setdefault(canonical(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_locked_for_the_images() -> None:
    pins = {**locked(LOCK), **locked(NO_DEPS)}
    missing = {d: sorted(f)[:2] for d, f in imported_distributions().items() if d not in pins}
    assert not missing, f"imported but not in requirements/: {missing}"


def test_the_smoke_is_wired() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^compose-smoke: .*\n\tbash scripts/compose-smoke.sh$", makefile, re.M)
    for path in (
        "scripts/compose-smoke.sh",
        "scripts/compose-smoke/smoke.py",
        "scripts/compose-smoke/standins.sh",
    ):
        assert (ROOT / path).is_file(), path
    # The make target and the images install animal-mnist from the same pinned file.
    assert "-r requirements/no-deps.txt" in makefile
