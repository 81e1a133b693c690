"""Server paths a request may name: only under the roots an operator allowed, links resolved."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from service.errors import InvalidRequest


def under_roots(roots: Sequence[Path], raw: str, param: str, what: str, setting: str) -> Path:
    """The real path of ``raw`` if it lies under one of ``roots`` (symlinks resolved first).

    ``what`` names the kind of root in errors ("dataset", "model"), ``setting`` the variable
    that lists them; ``param`` is the request field the error points at.
    """
    if not roots:
        raise InvalidRequest(
            f"{what} paths on the server are disabled on this server ({setting} is empty)", param
        )
    if "\x00" in raw:
        raise InvalidRequest("the path contains a NUL character", param)
    path = Path(os.path.realpath(raw))
    if not is_under(path, roots):
        raise InvalidRequest(f"{raw} is not under an allowed {what} root ({setting})", param)
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long for the filesystem, a permission denied
        raise InvalidRequest(f"{raw} cannot be read: {exc.strerror}", param) from exc
    if not exists:
        raise InvalidRequest(f"{raw} does not exist", param)
    return path


def is_under(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` resolves (symlinks followed) to one of ``roots`` or inside one."""
    real = Path(os.path.realpath(path))
    for root in (Path(os.path.realpath(r)) for r in roots):
        if real == root or real.is_relative_to(root):
            return True
    return False
