"""Validate the ML core's frozen dataclass configs at the edge without restating their fields.

``strict(WiseConfig)`` is a pydantic dataclass *subclass* of the core's class that refuses unknown
keys; its instances are still ``WiseConfig`` instances, and the core's own ``__post_init__``
checks run inside pydantic validation, so their errors come back as 422s naming the field.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import pydantic.dataclasses
from pydantic import ConfigDict

T = TypeVar("T")


@functools.cache
def strict(cls: type[T]) -> type[T]:
    wrapped: Any = pydantic.dataclasses.dataclass(config=ConfigDict(extra="forbid"), frozen=True)
    return wrapped(type(cls.__name__, (cls,), {"__doc__": cls.__doc__}))
