"""Artifact storage: a local folder by default, any fsspec URL (S3-compatible) by configuration.

Writes are atomic where the filesystem allows: a folder is written under a temporary name and
renamed into place. Object stores cannot rename a folder, so there the card (``artifact.json``)
is written last, and the registry marks a version READY only after ``put_folder`` returns.
"""

from __future__ import annotations

import errno
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from models.artifacts import CARD, card_digest, swap_into_place
from service.errors import InsufficientStorage

# A write refused for want of space: the volume is full, or the user's quota on it is.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class ArtifactStore:
    def __init__(self, url: str, cache_dir: Path) -> None:
        fs, root = fsspec.core.url_to_fs(url)
        self.fs: Any = fs
        self.root = str(root).rstrip("/")
        self.cache_dir = cache_dir
        self.local = isinstance(fs, LocalFileSystem)
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def uri(self, key: str) -> str:
        path = f"{self.root}/{key}"
        return path if self.local else self.fs.unstrip_protocol(path)

    def put_folder(self, local: Path, key: str) -> str:
        """Copy ``local`` to ``key``; a second call for the same key replaces the first."""
        target = f"{self.root}/{key}"
        if self.local:
            _local_atomic_copy(local, Path(target))
        else:
            files = sorted(p for p in local.rglob("*") if p.is_file())
            for path in sorted(files, key=lambda p: p.name == CARD):  # the card last
                self.fs.put_file(str(path), f"{target}/{path.relative_to(local).as_posix()}")
        return self.uri(key)

    def local_path(self, key: str, digest: str | None = None) -> Path:
        """A local folder with the artifact: the file itself, or a cached download.

        ``digest`` (sha256 of the card) is the artifact the caller expects: a download cached
        from other bytes under the same key is fetched again rather than served.
        """
        if self.local:
            return Path(f"{self.root}/{key}")
        cached = self.cache_dir / key
        if not _has_card(cached, digest):
            tmp = cached.parent / f".{cached.name}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.get(f"{self.root}/{key}/", str(tmp), recursive=True)
            swap_into_place(tmp, cached)
        return cached

    def delete(self, key: str) -> None:
        target = f"{self.root}/{key}"
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        shutil.rmtree(self.cache_dir / key, ignore_errors=True)


@contextmanager
def space_needed(setting: str, what: str) -> Iterator[None]:
    """Turn a full volume under the block into a 507 naming ``setting``, the one that chose
    where ``what`` is written; the block's own cleanup (on the way out) keeps nothing half
    written. Other OS errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL:
            raise
        raise InsufficientStorage(
            f"no space left to {what}: the volume behind {setting} is full ({exc.strerror}); "
            f"free space there or point {setting} at a larger one, then retry"
        ) from exc


def _has_card(folder: Path, digest: str | None) -> bool:
    if not (folder / CARD).is_file():
        return False
    return digest is None or card_digest(folder) == digest


def _local_atomic_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _copy_files(source, tmp)
        swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_files(source: Path, target: Path) -> None:
    """``shutil.copytree``, stopping at the first failure with its own OSError: copytree goes on
    past a full disk and raises one ``shutil.Error`` without an errno for all of them."""
    target.mkdir()
    for path in sorted(source.rglob("*")):
        copy = target / path.relative_to(source)
        if path.is_dir():
            copy.mkdir()
        else:
            shutil.copy2(path, copy)
