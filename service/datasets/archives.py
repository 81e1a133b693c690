"""Unpack an uploaded dataset archive, refusing anything unsafe before a byte is written.

Every member is checked on the archive's own listing first: its name (no absolute path, no
``..``), its kind (regular files and folders only: links and devices could point anywhere),
and, together, their number, their declared unpacked size, that size against the archive's
(a compression ratio no image collection reaches) and against the key's upload quota. Only
image files are then written: anything else is no use to a dataset and would only fill the disk.
Other uploads (the registry's model artifacts) pass their own ``keep``, which may refuse a member
by name before anything is written.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO, TypeVar

from models.data import IMAGE_EXTENSIONS
from service.errors import InvalidRequest, PayloadTooLarge
from service.settings import Settings

T = TypeVar("T")

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int
    max_ratio: float
    packed_bytes: int
    quota_left: int

    @classmethod
    def of(cls, settings: Settings, fileobj: BinaryIO, quota_left: int) -> Limits:
        fileobj.seek(0, os.SEEK_END)
        packed = fileobj.tell()
        fileobj.seek(0)
        return cls(
            settings.max_extracted_bytes,
            settings.max_archive_files,
            settings.max_archive_ratio,
            packed,
            quota_left,
        )


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    kind: str  # "file" | "dir" | "other"


def keep_images(member: Member) -> bool:
    """A dataset keeps its folders and image files."""
    return member.kind == "dir" or _is_image(member.name)


def extract(
    filename: str,
    fileobj: BinaryIO,
    dest: Path,
    limits: Limits,
    keep: Callable[[Member], bool] = keep_images,
) -> int:
    """Unpack the members ``keep`` accepts (by default the image files) of a .zip or
    .tar(.gz/.bz2/.xz) into ``dest``; their total size. ``keep`` sees only members that passed
    every check, and may raise to refuse the whole archive."""
    lower = filename.lower()
    if lower.endswith(".zip"):
        return _extract_zip(fileobj, dest, limits, keep)
    if lower.endswith(TAR_SUFFIXES):
        return _extract_tar(fileobj, dest, limits, keep)
    raise InvalidRequest(
        "the archive must be .zip, .tar, .tar.gz, .tgz, .tar.bz2 or .tar.xz", "file"
    )


def check(
    members: list[Member], limits: Limits, keep: Callable[[Member], bool] = keep_images
) -> list[Member]:
    """The members to write (those ``keep`` accepts), once every member passed every check."""
    if len(members) > limits.max_files:
        raise PayloadTooLarge(
            f"the archive holds {len(members)} entries, over the {limits.max_files} limit "
            "(RCS_MAX_ARCHIVE_FILES)",
            "file",
        )
    for member in members:
        _check_name(member.name)
        if member.kind == "other":
            raise InvalidRequest(
                f"links, devices and other special entries are not allowed: {member.name}", "file"
            )
    _check_size(sum(m.size for m in members if m.kind == "file"), limits)
    return [m for m in members if keep(m)]


def _check_name(name: str) -> None:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    # A drive ("C:x") or a leading slash or backslash is absolute on some system: refused, not
    # stripped, since an archive that carries one was not made from a dataset folder.
    if posix.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        raise InvalidRequest(f"unsafe path in archive (absolute): {name}", "file")
    if ".." in posix.parts or ".." in windows.parts:
        raise InvalidRequest(f"unsafe path in archive: {name}", "file")


def _check_size(total: int, limits: Limits) -> None:
    # Declared sizes, before writing anything: a bomb never reaches the disk. Extraction then
    # writes no more than declared (zip checks sizes and CRCs; tar members are exact).
    if total > limits.max_bytes:
        raise PayloadTooLarge(
            f"the archive unpacks to {total} bytes, over the {limits.max_bytes} limit", "file"
        )
    ratio = total / max(1, limits.packed_bytes)
    if ratio > limits.max_ratio:
        raise PayloadTooLarge(
            f"the archive unpacks to {total} bytes, {ratio:.0f} times its own size: over the "
            f"compression ratio limit of {limits.max_ratio:g} (RCS_MAX_ARCHIVE_RATIO)",
            "file",
        )
    if total > limits.quota_left:
        raise PayloadTooLarge(
            f"the archive unpacks to {total} bytes but this API key has {limits.quota_left} "
            "bytes left of its upload quota (RCS_UPLOAD_QUOTA_BYTES); delete datasets it no "
            "longer needs (DELETE /datasets/{id})",
            "file",
        )


def _is_image(name: str) -> bool:
    base = PurePosixPath(name).name
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def _kept(infos: Sequence[T], members: Sequence[Member], chosen: Iterable[Member]) -> list[T]:
    """The archive entries behind the chosen members (by identity: names may repeat)."""
    wanted = {id(member) for member in chosen}
    return [info for info, member in zip(infos, members, strict=True) if id(member) in wanted]


def _zip_kind(info: zipfile.ZipInfo) -> str:
    kind = stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir():
        return "dir"
    # Many tools leave the type bits at 0 (a file). zipfile would write a symlink entry as a
    # file holding the target's name: refuse it, and any other special type.
    if kind not in (0, stat.S_IFREG):
        return "other"
    return "file"


def _extract_zip(
    fileobj: BinaryIO, dest: Path, limits: Limits, keep: Callable[[Member], bool]
) -> int:
    try:
        with zipfile.ZipFile(fileobj) as archive:
            infos = archive.infolist()
            members = [Member(i.filename, i.file_size, _zip_kind(i)) for i in infos]
            chosen = _kept(infos, members, check(members, limits, keep))
            for info in chosen:
                archive.extract(info, dest)
            return sum(info.file_size for info in chosen if not info.is_dir())
    except zipfile.BadZipFile as exc:
        raise InvalidRequest(f"not a readable zip archive: {exc}", "file") from exc


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isfile():
        return "file"
    return "dir" if info.isdir() else "other"


def _extract_tar(
    fileobj: BinaryIO, dest: Path, limits: Limits, keep: Callable[[Member], bool]
) -> int:
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as archive:
            infos = archive.getmembers()
            members = [Member(i.name, i.size, _tar_kind(i)) for i in infos]
            chosen = _kept(infos, members, check(members, limits, keep))
            if hasattr(tarfile, "data_filter"):
                # A second guard (absolute paths, '..', links, devices) where Python has it.
                archive.extractall(dest, members=chosen, filter="data")
            else:  # Python before 3.11.4 (Debian 12's 3.11.2): check() refused all of those
                archive.extractall(dest, members=chosen)
            return sum(info.size for info in chosen if info.isfile())
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidRequest(f"not a readable tar archive: {exc}", "file") from exc
