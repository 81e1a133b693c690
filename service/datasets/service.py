"""Validate and register datasets. Every image is decoded once here, so jobs fail early.

Two live datasets never share a name (``service.validation.name_key``: case and lookalikes
folded); a deleted dataset's name is free again.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.data import (
    DatasetSplits,
    dataset_root,
    empty_classes,
    image_problems,
    open_dataset,
)
from models.errors import DataError
from service.datasets import archives
from service.db.queries import missing, page, required
from service.db.tables import Dataset, Evaluation, Job, new_id, now
from service.errors import Conflict, InvalidRequest, TooManyRequests, Unavailable
from service.paths import under_roots
from service.settings import Settings
from service.status import ACTIVE
from service.storage import ArtifactStore, explain, space_needed
from service.validation import clean_name, distinct, name_key, spelled

MAX_REPORTED_PROBLEMS = 20


def allowed_path(settings: Settings, raw: str) -> Path:
    """The real path of ``raw`` if it lies under an allowed dataset root."""
    return under_roots(
        settings.allowed_dataset_roots, raw, "path", "dataset", "RCS_ALLOWED_DATASET_ROOTS"
    )


def inspect(path: Path, param: str, within: Path) -> DatasetSplits:
    """Open the dataset and decode every image; report every unreadable file (up to a cap).

    Every file must resolve inside ``within``, the dataset's own folder: a manifest row or a
    class folder that points elsewhere on the server is refused before anything is read.
    """
    try:
        ds = open_dataset(path, within=within)
    except DataError as exc:
        raise InvalidRequest(str(exc), param) from exc
    if not ds.classnames:
        raise InvalidRequest("the dataset has no classes", param)
    problem = class_name_problem(ds.classnames)
    if problem is not None:
        raise InvalidRequest(problem, param)
    if "train" not in ds.splits:
        found = ", ".join(repr(name) for name in ds.splits) or "none"
        raise InvalidRequest(f"the dataset has no 'train' split (found: {found})", param)
    empty = empty_classes(ds, "train")
    if empty:
        raise InvalidRequest(f"classes without training images: {empty}", param)
    problems = unreadable(ds)
    if problems:
        listed = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
        more = len(problems) - MAX_REPORTED_PROBLEMS
        suffix = f" (and {more} more)" if more > 0 else ""
        raise InvalidRequest(f"{len(problems)} unreadable image(s): {listed}{suffix}", param)
    return ds


def class_name_problem(classes: Sequence[str]) -> str | None:
    """Why the dataset's class names break the name policy, or None.

    They are folder names (or manifest labels) that the worker reads again, so they cannot be
    normalised here: one that is not already its clean NFC form is refused, as are two that
    are one name (``Cat`` and ``cat``, ``café`` composed and decomposed).
    """
    for name in classes:
        try:
            cleaned = clean_name(name)
        except ValueError as exc:
            return f"class {spelled(name)} {exc}; rename its folder (or label)"
        if cleaned != name:
            return (
                f"class {spelled(name)} is not in Unicode NFC form without surrounding spaces, "
                f"the form descriptions and model cards use: rename its folder (or label) to "
                f"{spelled(cleaned)}"
            )
    try:
        distinct(classes, "classes")
    except ValueError as exc:
        return f"{exc}; rename one of the folders (or labels)"
    return None


def unreadable(ds: DatasetSplits) -> list[str]:
    # Two threads: PIL decodes without the GIL, and the API must stay responsive meanwhile.
    found = image_problems(ds, list(ds.splits), workers=2)
    return sorted(f"{sample.path}: {problem}" for sample, problem in found)


@dataclass(frozen=True)
class Origin:
    """How a dataset came: "path" or "upload", by which key, taking how many bytes."""

    source: str
    key_id: str
    size_bytes: int | None = None


def save(
    session: Session,
    dataset_id: str,
    name: str,
    origin: Origin,
    path: Path | str,
    ds: DatasetSplits,
) -> Dataset:
    row = Dataset(
        id=dataset_id,
        name=name,
        name_key=name_key(name),
        source=origin.source,
        path=str(path),
        classes=list(ds.classnames),
        counts=ds.counts(),
        fingerprint=ds.fingerprint,
        num_images=sum(len(s) for s in ds.splits.values()),
        created_by=origin.key_id,
        size_bytes=origin.size_bytes,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        # The live-name index: a concurrent registration took the name since ``name_free``.
        session.rollback()
        name_free(session, name)
        raise
    return row


def name_free(session: Session, name: str) -> None:
    """A 409 naming the live dataset already called ``name`` (in any case), if there is one."""
    taken = session.scalars(
        select(Dataset).where(Dataset.name_key == name_key(name), Dataset.deleted_at.is_(None))
    ).first()
    if taken is not None:
        raise Conflict(
            f"dataset {taken.id!r} is already named {taken.name!r}: choose another name, or "
            "delete that dataset first",
            "name",
        )


def register_path(
    session: Session, settings: Settings, key_id: str, name: str, raw: str
) -> Dataset:
    if settings.remote_storage:
        # A server folder is on this machine only; workers elsewhere could not read it.
        raise InvalidRequest(
            "datasets by server path are a single-machine feature, and this server keeps its "
            "data in object storage (RCS_STORAGE_URL) for workers on other machines: upload "
            "the dataset as a .zip or .tar archive (POST /datasets/upload) instead",
            "path",
        )
    path = allowed_path(settings, raw)
    ds = inspect(path, "path", dataset_root(path))
    name_free(session, name)  # after the request's own checks: a bad dataset is a 422 first
    return save(session, new_id("ds"), name, Origin("path", key_id), path, ds)


def register_upload(
    session: Session,
    settings: Settings,
    key_id: str,
    name: str,
    filename: str,
    fileobj: BinaryIO,
    store: ArtifactStore | None = None,
) -> Dataset:
    """Unpack an uploaded .zip/.tar(.gz) into the uploads folder, then validate it.

    With an object store (``store.remote``), the validated tree goes to the bucket as one tar
    (``ArtifactStore.put_dataset``) and the row names its URI; this machine keeps nothing.
    """
    try:  # a form field: the schema's name policy, applied here
        name = clean_name(name)
    except ValueError as exc:
        raise InvalidRequest(f"name: {exc}", "name") from exc
    with _upload_slot(key_id, settings.max_concurrent_uploads):
        limits = archives.Limits.of(settings, fileobj, quota_left(session, settings, key_id))
        dataset_id = new_id("ds")
        target = settings.uploads_dir / dataset_id
        tmp = settings.uploads_dir / f".{dataset_id}.tmp"
        tmp.mkdir(parents=True)
        try:
            with space_needed("RCS_WORK_DIR", "unpack the dataset"):
                size = archives.extract(filename, fileobj, tmp, limits)
            root = _single_child(tmp)
            inspect(root, "file", root)
            name_free(session, name)
            if store is not None and store.remote:
                origin = Origin("upload", key_id, size)
                return _save_remote(session, store, dataset_id, name, origin, root, tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if store is not None and store.remote:
                shutil.rmtree(tmp, ignore_errors=True)
    path = target / root.relative_to(tmp)
    # Opened again at its final place: the samples' paths must point there.
    ds = open_dataset(path, within=path)
    try:
        return save(session, dataset_id, name, Origin("upload", key_id, size), path, ds)
    except Conflict:  # a concurrent registration took the name meanwhile
        shutil.rmtree(target, ignore_errors=True)  # no row will ever name these files
        raise


def _save_remote(
    session: Session,
    store: ArtifactStore,
    dataset_id: str,
    name: str,
    origin: Origin,
    root: Path,
    scratch: Path,
) -> Dataset:
    """Upload the validated tree, then the row: a failed upload registers nothing, and a row
    refused (a concurrent registration took the name) leaves no tar behind."""
    ds = open_dataset(root, within=root)
    try:
        uri = store.put_dataset(dataset_id, root, scratch.parent)
    except Exception as exc:
        raise Unavailable(
            f"the dataset could not be stored: the object store (RCS_STORAGE_URL) failed: "
            f"{explain(exc)}; nothing was registered, retry later",
            "file",
        ) from exc
    try:
        return save(session, dataset_id, name, origin, uri, ds)
    except BaseException:
        store.delete_dataset(uri)
        raise


def quota_left(session: Session, settings: Settings, key_id: str) -> int:
    """Bytes this key may still unpack: its quota less its uploads that are not deleted."""
    used = session.scalar(
        select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(
            Dataset.created_by == key_id,
            Dataset.source == "upload",
            Dataset.deleted_at.is_(None),
        )
    )
    return max(0, settings.upload_quota_bytes - int(used or 0))


_uploading: Counter[str] = Counter()
_uploading_lock = threading.Lock()


@contextmanager
def _upload_slot(key_id: str, limit: int) -> Iterator[None]:
    """At most ``limit`` uploads per key unpack at once (in this process): unpacking and
    decoding take disk and CPU that one client must not monopolise."""
    with _uploading_lock:
        if _uploading[key_id] >= limit:
            raise TooManyRequests(
                f"this API key already has {limit} upload(s) being unpacked; "
                "retry when one has finished",
                "file",
                retry_after_s=5,
            )
        _uploading[key_id] += 1
    try:
        yield
    finally:
        with _uploading_lock:
            _uploading[key_id] -= 1
            if not _uploading[key_id]:
                del _uploading[key_id]


def _single_child(folder: Path) -> Path:
    """Archives often wrap everything in one top folder; the dataset is inside it then."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        inner = [p for p in children[0].iterdir() if p.is_dir()]
        if inner:
            return children[0]
    return folder


def delete(
    session: Session, settings: Settings, dataset_id: str, store: ArtifactStore | None = None
) -> None:
    """Hide the dataset and free an upload's files; a path dataset's files are the user's.

    One decision in the database, against a job or evaluation being created on the dataset at
    the same moment: the UPDATE that marks the row deleted locks it (PostgreSQL's row lock,
    SQLite's write lock) and the users are looked for after it, in the same transaction. A
    create takes the same lock before it commits (``hold_live``), so either it committed
    first and is found here (409), or it waits and then finds the row deleted (422).
    """
    row = get(session, dataset_id)
    marked = session.execute(
        update(Dataset)
        .where(Dataset.id == row.id, Dataset.deleted_at.is_(None))
        .values(deleted_at=now())
    )
    if not _changed(marked):  # deleted by a concurrent request meanwhile
        session.rollback()
        raise missing(f"no dataset {dataset_id!r}")
    conflict = _in_use(session, row.id)
    if conflict is not None:
        session.rollback()
        raise conflict
    # The row stays (finished jobs name it). Its files go only now that the decision is
    # committed: a create from here on finds the row deleted, so nothing can come to use them.
    session.commit()
    if store is not None and store.remote and row.source == "upload" and "://" in row.path:
        store.delete_dataset(row.path)
        return
    folder = upload_folder(settings, row)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _in_use(session: Session, dataset_id: str) -> Conflict | None:
    """The 409 naming a queued or running job or evaluation on the dataset, if there is one."""
    user = session.scalars(
        select(Job).where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE)).limit(1)
    ).first()
    if user is not None:
        return Conflict(
            f"dataset {dataset_id!r} is used by job {user.id!r} ({user.status}); "
            "cancel the job or wait for it to finish",
            "dataset_id",
        )
    evaluation = session.scalars(
        select(Evaluation)
        .where(Evaluation.dataset_id == dataset_id, Evaluation.status.in_(ACTIVE))
        .limit(1)
    ).first()
    if evaluation is not None:
        return Conflict(
            f"dataset {dataset_id!r} is used by evaluation {evaluation.id!r} "
            f"({evaluation.status}); cancel it or wait for it to finish",
            "dataset_id",
        )
    return None


def hold_live(session: Session, dataset_id: str, param: str) -> None:
    """Lock the dataset's row for the caller's transaction, which is about to commit a job or
    an evaluation that uses it: a concurrent ``delete`` waits for that commit and then sees
    the user. A 422 on ``param`` (the transaction rolled back) if it was deleted meanwhile."""
    kept = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None))
        .values(deleted_at=Dataset.deleted_at)
    )
    if not _changed(kept):
        session.rollback()
        raise InvalidRequest(f"dataset {dataset_id!r} was deleted", param)


def _changed(result: object) -> bool:
    return isinstance(result, CursorResult) and result.rowcount == 1


def upload_folder(settings: Settings, row: Dataset) -> Path | None:
    """The folder an upload was unpacked into, or None (a path dataset, or not under uploads)."""
    if row.source != "upload":
        return None
    uploads = Path(os.path.realpath(settings.uploads_dir))
    try:
        relative = Path(os.path.realpath(row.path)).relative_to(uploads)
    except ValueError:
        return None
    return uploads / relative.parts[0] if relative.parts else None


def get(session: Session, dataset_id: str, param: str | None = None) -> Dataset:
    row = session.get(Dataset, dataset_id)
    visible = row if row is not None and row.deleted_at is None else None
    return required(visible, f"no dataset {dataset_id!r}", param)


def list_all(session: Session, after: str | None, limit: int) -> tuple[list[Dataset], bool]:
    query = select(Dataset).where(Dataset.deleted_at.is_(None)).order_by(Dataset.id.desc())
    if after is not None:
        query = query.where(Dataset.id < after)
    return page(session, query, limit)
