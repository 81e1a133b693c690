"""Validate and register datasets. Every image is decoded once here, so jobs fail early."""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.data import DatasetSplits, image_problem, open_dataset
from models.errors import DataError
from service.db.queries import page
from service.db.tables import Dataset, new_id
from service.errors import InvalidRequest, NotFound, PayloadTooLarge
from service.settings import Settings

MAX_REPORTED_PROBLEMS = 20


def allowed_path(settings: Settings, raw: str) -> Path:
    """The real path of ``raw`` if it lies under an allowed root (symlinks resolved first)."""
    roots = [Path(os.path.realpath(r)) for r in settings.allowed_dataset_roots]
    if not roots:
        raise InvalidRequest("registering server paths is disabled on this server", "path")
    if "\x00" in raw:
        raise InvalidRequest("the path contains a NUL character", "path")
    path = Path(os.path.realpath(raw))
    if not any(path == root or path.is_relative_to(root) for root in roots):
        raise InvalidRequest(f"{raw} is not under an allowed dataset root", "path")
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long for the filesystem, a permission denied
        raise InvalidRequest(f"{raw} cannot be read: {exc.strerror}", "path") from exc
    if not exists:
        raise InvalidRequest(f"{raw} does not exist", "path")
    return path


def inspect(path: Path, param: str) -> DatasetSplits:
    """Open the dataset and decode every image; report every unreadable file (up to a cap)."""
    try:
        ds = open_dataset(path)
    except DataError as exc:
        raise InvalidRequest(str(exc), param) from exc
    if not ds.classnames:
        raise InvalidRequest("the dataset has no classes", param)
    if "train" in ds.splits:
        empty = [c for c, n in ds.counts()["train"].items() if n == 0]
        if empty:
            raise InvalidRequest(f"classes without training images: {empty}", param)
    problems = unreadable(ds)
    if problems:
        listed = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
        more = len(problems) - MAX_REPORTED_PROBLEMS
        suffix = f" (and {more} more)" if more > 0 else ""
        raise InvalidRequest(f"{len(problems)} unreadable image(s): {listed}{suffix}", param)
    return ds


def unreadable(ds: DatasetSplits) -> list[str]:
    paths = sorted({s.path for samples in ds.splits.values() for s in samples})
    # Two threads: PIL decodes without the GIL, and the API must stay responsive meanwhile.
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = pool.map(image_problem, paths)
        return [f"{p}: {problem}" for p, problem in zip(paths, found, strict=True) if problem]


def save(session: Session, name: str, source: str, path: Path, ds: DatasetSplits) -> Dataset:
    row = Dataset(
        id=new_id("ds"),
        name=name,
        source=source,
        path=str(path),
        classes=list(ds.classnames),
        counts=ds.counts(),
        fingerprint=ds.fingerprint,
        num_images=sum(len(s) for s in ds.splits.values()),
    )
    session.add(row)
    session.commit()
    return row


def register_path(session: Session, settings: Settings, name: str, raw: str) -> Dataset:
    path = allowed_path(settings, raw)
    return save(session, name, "path", path, inspect(path, "path"))


def register_upload(
    session: Session, settings: Settings, name: str, filename: str, fileobj: BinaryIO
) -> Dataset:
    """Unpack an uploaded .zip/.tar(.gz) into the uploads folder, then validate it."""
    dataset_id = new_id("ds")
    target = settings.uploads_dir / dataset_id
    tmp = settings.uploads_dir / f".{dataset_id}.tmp"
    tmp.mkdir(parents=True)
    try:
        extract(filename, fileobj, tmp, settings.max_extracted_bytes)
        root = _single_child(tmp)
        inspect(root, "file")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    path = target / root.relative_to(tmp)
    # Opened again at its final place: the samples' paths must point there.
    return save(session, name, "upload", path, open_dataset(path))


def _single_child(folder: Path) -> Path:
    """Archives often wrap everything in one top folder; the dataset is inside it then."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        inner = [p for p in children[0].iterdir() if p.is_dir()]
        if inner:
            return children[0]
    return folder


def extract(filename: str, fileobj: BinaryIO, dest: Path, max_bytes: int) -> None:
    lower = filename.lower()
    if lower.endswith(".zip"):
        _extract_zip(fileobj, dest, max_bytes)
    elif lower.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        _extract_tar(fileobj, dest, max_bytes)
    else:
        raise InvalidRequest(
            "the archive must be .zip, .tar, .tar.gz, .tgz, .tar.bz2 or .tar.xz", "file"
        )


def _extract_zip(fileobj: BinaryIO, dest: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(fileobj) as archive:
            members = archive.infolist()
            _check_total(sum(m.file_size for m in members), max_bytes)
            for member in members:
                _check_member_name(member.filename)
            archive.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise InvalidRequest(f"not a readable zip archive: {exc}", "file") from exc


def _extract_tar(fileobj: BinaryIO, dest: Path, max_bytes: int) -> None:
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as archive:
            members = archive.getmembers()
            _check_total(sum(m.size for m in members if m.isfile()), max_bytes)
            # The "data" filter refuses absolute paths, '..', links and devices.
            archive.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidRequest(f"not a readable tar archive: {exc}", "file") from exc


def _check_total(total: int, max_bytes: int) -> None:
    # Checked on the declared sizes before writing anything: a zip bomb never hits the disk.
    if total > max_bytes:
        raise PayloadTooLarge(f"the archive unpacks to {total} bytes, over the {max_bytes} limit")


def _check_member_name(name: str) -> None:
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts:
        raise InvalidRequest(f"unsafe path in archive: {name}", "file")


def get(session: Session, dataset_id: str, param: str | None = None) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None:
        if param is not None:
            raise InvalidRequest(f"no dataset {dataset_id!r}", param)
        raise NotFound(f"no dataset {dataset_id!r}")
    return row


def list_all(session: Session, after: str | None, limit: int) -> tuple[list[Dataset], bool]:
    query = select(Dataset).order_by(Dataset.id.desc())
    if after is not None:
        query = query.where(Dataset.id < after)
    return page(session, query, limit)
