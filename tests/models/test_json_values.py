"""The one JSON-safe conversion and the one stable hash."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from models.json_values import json_safe, stable_hash


def test_json_safe_makes_lists_and_string_keys() -> None:
    value = {"a": (1, 2), 3: [torch.tensor([0.5, 1.5])], "s": {"x"}}
    assert json_safe(value) == {"a": [1, 2], "3": [[0.5, 1.5]], "s": ["x"]}


def test_json_safe_drops_non_finite_floats_only_when_asked() -> None:
    assert json_safe({"x": math.inf, "y": 1.0}, finite=True) == {"x": None, "y": 1.0}
    assert math.isnan(json_safe([math.nan])[0])


def test_json_safe_refuses_unknown_types_unless_given_a_fallback() -> None:
    with pytest.raises(TypeError, match="cannot write PosixPath as JSON"):
        json_safe({"p": Path("/a")})
    assert json_safe({"p": Path("/a")}, fallback=str) == {"p": "/a"}


def test_stable_hash_is_sha256_of_sorted_json_and_ignores_key_order() -> None:
    value = {"b": [1, 2], "a": {"y": None, "x": "é"}}
    expected = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    assert stable_hash(value) == expected
    assert stable_hash({"a": {"x": "é", "y": None}, "b": [1, 2]}) == expected
