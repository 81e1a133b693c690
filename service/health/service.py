"""Readiness: the database and the broker answer, and the default model is warmed up."""

from __future__ import annotations

from typing import Any

from service.context import AppContext
from service.db.engine import ping
from service.errors import redact


def check_database(ctx: AppContext) -> str | None:
    try:
        ping(ctx.engine)
    except Exception as exc:  # any driver error means not ready, with the reason
        return redact(f"database: {type(exc).__name__}: {exc}")
    return None


def check_broker(ctx: AppContext) -> str | None:
    try:
        with ctx.broker.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=ctx.settings.readiness_timeout_s)
    except Exception as exc:  # kombu raises transport-specific errors
        return redact(f"broker: {type(exc).__name__}: {exc}")
    return None


def check_model(ctx: AppContext) -> str | None:
    if ctx.settings.default_model is None or ctx.default_model_ready:
        return None
    reason = ctx.default_model_error or "still loading"
    return f"default model {ctx.settings.default_model}: {reason}"


def readiness(ctx: AppContext) -> tuple[bool, dict[str, Any]]:
    checks = {
        "database": check_database(ctx),
        "broker": check_broker(ctx),
        "default_model": check_model(ctx),
    }
    ok = all(v is None for v in checks.values())
    return ok, {k: v or "ok" for k, v in checks.items()}
