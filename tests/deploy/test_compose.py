"""The compose file and Dockerfiles, checked statically (no Docker engine runs here)."""

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
LONG_RUNNING = ("postgres", "redis", "api")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


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


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")))
def test_dockerfiles_copy_existing_paths_and_run_project_commands(dockerfile: Path) -> None:
    text = dockerfile.read_text().replace("\\\n", " ")
    instructions = [line.split(None, 1) for line in text.splitlines() if line and line[0].isupper()]
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is missing"
        if keyword in ("CMD", "HEALTHCHECK"):
            exec_form = rest[rest.index("[") :] if "[" in rest else "[]"
            for module in python_modules(yaml.safe_load(exec_form)):
                assert module_exists(module), f"{dockerfile.name}: python -m {module}"
    assert any(k == "HEALTHCHECK" for k, _ in instructions)
    assert any(k == "USER" for k, _ in instructions), "containers should not run as root"


def test_compose_builds_from_existing_dockerfiles(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


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
