"""Values as JSON: one conversion for cards, configs and database columns, one stable hash."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any


def json_safe(
    value: Any, *, finite: bool = False, fallback: Callable[[Any], Any] | None = None
) -> Any:
    """A copy JSON can hold: string keys, lists for tuples, sets, tensors and arrays.

    ``finite``: NaN and infinities become None (PostgreSQL's JSON refuses them). Any other type
    goes through ``fallback`` (``str``, say); without one it is a TypeError.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, finite=finite, fallback=fallback) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v, finite=finite, fallback=fallback) for v in value]
    if hasattr(value, "tolist"):  # tensors and arrays, without importing torch here
        return json_safe(value.tolist(), finite=finite, fallback=fallback)
    if isinstance(value, float) and finite and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if fallback is None:
        raise TypeError(f"cannot write {type(value).__name__} as JSON")
    return fallback(value)


def stable_hash(value: Any) -> str:
    """sha256 (hex) of ``value`` as JSON with sorted keys: equal for equal data, in any order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
