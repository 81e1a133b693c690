"""Artifacts in and out of the registry: import an archive, export one, re-merge a version.

Imports are unpacked and checked, and re-merges built, in scratch (``RCS_WORK_DIR/registry``)
before the registry is touched; then a version number is taken, the artifact copied to the
store, and the version's row added READY in one commit. A failure at any point removes what it
stored and leaves no row (at worst a version number never used, as after a deletion); a full
volume is a 507 naming the setting that chose it.

An import's model is never built here: ``check_artifact`` sizes it from its config and weight
headers (past ``RCS_MAX_IMPORT_PARAMS``: 413) and matches every name and shape against the
model open_clip builds on the ``meta`` device (no storage), which is all a strict load would
check (``models.sizing``). A re-merge does build its model, one that passed that limit (or a
job trained); so does serving it.

An imported or merged version has no job: its ``job_id`` column holds a registration key
(``import-...`` / ``merge-...``, from the caller's key, the model and its ``Idempotency-Key``),
so a retried request finds the version the first one made, as a job delivered twice does.
Without the header every request makes a new version (as MLflow's create_model_version).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from models.artifacts import (
    CARD,
    FINETUNED,
    LISTABLE,
    OPEN_CLIP_CONFIG,
    PICKLE_SUFFIXES,
    RUN_CONFIG,
    ZEROSHOT,
    check_artifact,
    curve_alphas,
    load_artifact,
    merge_artifact,
    read_card,
    rewrite_card,
    verify_files,
)
from models.errors import ArtifactError
from models.json_values import json_safe
from models.sizing import ArtifactTooLarge
from service.context import AppContext
from service.datasets import archives
from service.db.tables import ModelVersion
from service.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, TooManyRequests
from service.predict.onnx import ensure_export
from service.registry import service as registry
from service.status import VersionStatus
from service.storage import card_digest, space_needed

log = logging.getLogger(__name__)

# The names an artifact's files may have (alone, or inside one top folder).
ARTIFACT_FILES = frozenset({CARD, *LISTABLE})
# The settings that choose where imports and merges write: a full volume's 507 names one.
WORK_DIR, ARTIFACTS = "RCS_WORK_DIR", "RCS_ARTIFACTS_URL"


@dataclass(frozen=True)
class Registered:
    row: ModelVersion
    created: bool  # False: an Idempotency-Key replay


# --- import ---


def import_archive(
    ctx: AppContext,
    session: Session,
    key_id: str,
    name: str,
    upload: tuple[str, BinaryIO],
    description: str = "",
    idempotency_key: str | None = None,
) -> Registered:
    """Register the artifact in an uploaded .tar(.gz) / .zip as the next version of ``name``."""
    filename, fileobj = upload
    archive_sha256 = _sha256(fileobj)
    request = {"type": "import", "archive_sha256": archive_sha256}
    key = _key("import", key_id, name, idempotency_key)
    replayed = _replay(session, key, request)
    if replayed is not None:
        return replayed
    with _slot(key_id, ctx.settings.max_concurrent_uploads), _scratch(ctx, "import") as tmp:
        with space_needed(WORK_DIR, "unpack the archive"):
            archives.extract(filename, fileobj, tmp, _limits(ctx, fileobj), keep=_artifact_member)
        root = _artifact_root(tmp)
        card = _checked(ctx, root)
        source = {
            **request,
            "archive": filename[:200],
            "at": _utc_now(),
            "previous": card.get("source"),
        }
        with space_needed(WORK_DIR, "unpack the archive"):
            rewrite_card(root, {**card, "source": source})
        return _register(ctx, session, name, root, key, description)


def _checked(ctx: AppContext, root: Path) -> dict[str, Any]:
    """The card of the artifact at ``root`` once ``check_artifact`` passed it: from its config
    and weight headers, without building the model (``models.sizing``), so a config of billions
    of parameters costs this process nothing."""
    try:
        return check_artifact(root, ctx.settings.max_import_params).card
    except ArtifactTooLarge as exc:
        raise PayloadTooLarge(
            f"{_relative(str(exc), root)} (RCS_MAX_IMPORT_PARAMS); a larger model needs a "
            "larger setting, and about 4 bytes of memory a parameter wherever it is served",
            "file",
        ) from exc
    except ArtifactError as exc:
        raise InvalidRequest(_relative(str(exc), root), "file") from exc


def _sha256(fileobj: BinaryIO) -> str:
    digest = hashlib.sha256()
    fileobj.seek(0)
    for chunk in iter(lambda: fileobj.read(1 << 20), b""):
        digest.update(chunk)
    fileobj.seek(0)
    return digest.hexdigest()


def _limits(ctx: AppContext, fileobj: BinaryIO) -> archives.Limits:
    # The dataset upload caps (RCS_MAX_EXTRACTED_BYTES, RCS_MAX_ARCHIVE_FILES and _RATIO), but
    # no per-key quota: a model is not a user's dataset, and jobs register models unmetered too.
    settings = ctx.settings
    return archives.Limits.of(settings, fileobj, quota_left=settings.max_extracted_bytes)


def _artifact_member(member: archives.Member) -> bool:
    """Refuse, before anything is written, what no artifact holds: pickles, deep folders,
    unknown names (an artifact's files, alone or inside one top folder)."""
    parts = PurePosixPath(member.name).parts
    if member.kind == "dir":
        if len(parts) > 1:
            raise InvalidRequest(f"unexpected folder in the archive: {member.name}", "file")
        return True
    if parts and parts[-1].lower().endswith(PICKLE_SUFFIXES):
        raise InvalidRequest(
            f"{member.name} is a pickled file (pickle, torch.save, joblib or numpy): refused "
            "without being opened; an artifact holds only safetensors and JSON",
            "file",
        )
    if 0 < len(parts) <= 2 and parts[-1] == RUN_CONFIG:
        # The CLI's record of the run, beside the artifact it wrote: the folder packed as it is
        # imports. Not stored: the card holds the same config.
        return False
    if len(parts) > 2 or not parts or parts[-1] not in ARTIFACT_FILES:
        raise InvalidRequest(
            f"unexpected file in the archive: {member.name} (an artifact holds {CARD}, "
            f"{OPEN_CLIP_CONFIG} and the files its card lists)",
            "file",
        )
    return True


def _artifact_root(tmp: Path) -> Path:
    """The folder with the card: the archive's top, or its one top folder."""
    if (tmp / CARD).is_file():
        return tmp
    entries = list(tmp.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / CARD).is_file():
        return entries[0]
    raise InvalidRequest(
        f"the archive holds no {CARD} at its top or inside one top folder: not an artifact "
        "(pack the folder `python -m models finetune` writes)",
        "file",
    )


def _relative(message: str, root: Path) -> str:
    """A refusal names files inside the archive, not where the server unpacked it."""
    return message.replace(f"{root}/", "").replace(str(root), "the archive")


# --- export ---


def export_archive(
    ctx: AppContext, session: Session, name: str, version: int
) -> tuple[Path, str | None]:
    """A .tar.gz of the version's artifact (one top folder ``name-vN``) in scratch; the caller
    deletes it once sent. The stored files are checked against the version's digest and their
    sha256 first: a corrupted artifact is never handed out as the version."""
    row = registry.get_version(session, name, version)
    digest = row.digest
    out = _scratch_dir(ctx) / f".export-{uuid.uuid4().hex}.tar.gz"
    try:
        with _reading(session, row), space_needed(WORK_DIR, "pack the export"):
            folder = _stored(ctx, row)
            # Level 1: weights barely compress, and level 9 would cost minutes on a large model.
            with tarfile.open(out, "w:gz", compresslevel=1) as archive:
                for path in sorted(folder.iterdir()):
                    if path.is_file() and not path.name.startswith("."):
                        archive.add(path, f"{name}-v{version}/{path.name}", recursive=False)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out, digest


def export_onnx_file(
    ctx: AppContext, session: Session, name: str, version: int
) -> tuple[Path, str | None]:
    """The version's ONNX export (``models.onnx_export``: image tower and dual head, verified
    against torch), made from its checked stored files on first request and then kept under
    ``onnx_dir`` by digest; ``ExportError`` (422) for an architecture that cannot be exported."""
    row = registry.get_version(session, name, version)
    with _reading(session, row), space_needed(WORK_DIR, "write the ONNX export"):
        folder = _stored(ctx, row)
        digest = row.digest or card_digest(folder)
        path = ensure_export(
            ctx.settings.onnx_dir, digest, lambda: load_artifact(folder).classifier
        )
    return path, row.digest


def _stored(ctx: AppContext, row: ModelVersion) -> Path:
    """The READY version's artifact folder, its bytes checked against the registry's digest."""
    if row.status != VersionStatus.READY:
        raise Conflict(f"version {row.version} of {row.name!r} is {row.status}, not READY")
    folder = ctx.store.local_path(registry.version_key(row.name, row.version), row.digest)
    if row.digest is not None and card_digest(folder) != row.digest:
        raise ArtifactError(f"the stored artifact of {row.name}/{row.version} is not its digest")
    verify_files(folder)
    return folder


@contextmanager
def _reading(session: Session, row: ModelVersion) -> Iterator[None]:
    """Reads of ``row``'s stored files. A deletion commits the row's removal before it removes
    the files, so a file found missing here is looked up again: a version deleted meanwhile is
    a 404 (one no longer READY a 409), and only a READY version's missing or corrupt file is the
    503 of a damaged stored copy."""
    name, version = row.name, row.version  # the row expires with the rollback below
    try:
        yield
    except (ArtifactError, FileNotFoundError) as exc:
        session.rollback()  # a fresh transaction sees the deletion another request committed
        try:
            current = registry.get_version(session, name, version)
        except NotFound:
            raise NotFound(
                f"model {name!r} has no version {version}: it was deleted while this request "
                "read it"
            ) from exc
        if current.status != VersionStatus.READY:
            raise Conflict(f"version {version} of {name!r} is {current.status}, not READY") from exc
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(
            f"the stored artifact of {name}/{version} cannot be read: {exc.strerror}"
        ) from exc


# --- re-merge ---


def merge_version(
    ctx: AppContext,
    session: Session,
    key_id: str,
    ref: tuple[str, int],
    alpha: float,
    description: str = "",
    idempotency_key: str | None = None,
) -> Registered:
    """A new version of ``name``: version ``v`` re-merged at ``alpha``, a point of its curve."""
    name, version = ref
    row = registry.get_version(session, name, version)
    request = {"type": "merge", "from": f"{name}/{version}", "alpha": alpha}
    key = _key("merge", key_id, name, idempotency_key)
    replayed = _replay(session, key, request)
    if replayed is not None:
        return replayed
    alpha = _on_curve(row, alpha)
    with _slot(key_id, ctx.settings.max_concurrent_uploads), _scratch(ctx, "merge") as tmp:
        source = {
            **request,
            "alpha": alpha,
            "from_digest": row.digest,
            "from_alpha": (row.card.get("wise") or {}).get("selected_alpha"),
            "at": _utc_now(),
            "previous": row.card.get("source"),
        }
        with _reading(session, row), space_needed(WORK_DIR, "write the merged artifact"):
            folder = _stored(ctx, row)
            _check_mergeable(row, read_card(folder))
            merged = merge_artifact(folder, alpha, tmp / "artifact", card={"source": source})
        return _register(ctx, session, name, merged, key, description)


def _on_curve(row: ModelVersion, alpha: float) -> float:
    """The curve's own alpha nearest ``alpha``: the report needs the served point's metrics."""
    alphas = curve_alphas(row.card)
    if not alphas:
        raise Conflict(f"{row.name}/{row.version} has no WiSE-FT curve to pick a point from")
    nearest = min(alphas, key=lambda a: abs(a - alpha))
    if abs(nearest - alpha) > 1e-9:
        listed = ", ".join(f"{a:g}" for a in alphas)
        raise InvalidRequest(
            f"alpha {alpha:g} is not on the curve of {row.name}/{row.version}; pick one of "
            f"{listed} (its metrics are known there)",
            "alpha",
        )
    return nearest


def _check_mergeable(row: ModelVersion, card: Mapping[str, Any]) -> None:
    files = card.get("files") or {}
    ref = f"{row.name}/{row.version}"
    if FINETUNED not in files:
        raise Conflict(
            f"{ref} has no fine-tuned end ({FINETUNED}): a zero-shot run, nothing to merge"
        )
    if ZEROSHOT not in files:
        raise Conflict(
            f"{ref} was saved without its zero-shot end ({ZEROSHOT}), so re-merging it here could "
            "not be exact; run `python -m models merge` where its backbone is, and import that",
        )


# --- registration shared by both ---


def _register(
    ctx: AppContext,
    session: Session,
    name: str,
    folder: Path,
    key: str | None,
    description: str,
) -> Registered:
    card = json_safe(
        {k: v for k, v in read_card(folder).items() if k != "files"}, finite=True, fallback=str
    )
    # The model's stored spelling from here on: ``M1`` adds a version to ``m1``.
    name, version = registry.reserve_version(session, name)
    store_key = registry.version_key(name, version)
    try:
        with space_needed(ARTIFACTS, "store the version's artifact"):
            stored = (ctx.store.put_folder(folder, store_key), registry.artifact_digest(folder))
        row = registry.insert_ready(session, name, version, key, card, stored, description)
    except BaseException:
        session.rollback()
        _forget(ctx, store_key)
        raise
    if row is None:
        # A retry with the same Idempotency-Key registered first: answer with its version.
        _forget(ctx, store_key)
        found = registry.find_registered(session, key) if key else None
        if found is None:
            raise Conflict(f"could not register a version of {name!r}; retry")
        return Registered(found, False)
    return Registered(row, True)


def _forget(ctx: AppContext, store_key: str) -> None:
    try:
        ctx.store.delete(store_key)
    except Exception:  # the original failure matters more; the folder is unlisted anyway
        log.exception("could not remove %s after a failed registration", store_key)


def _key(kind: str, key_id: str, name: str, idempotency_key: str | None) -> str | None:
    if idempotency_key is None:
        return None
    return registry.registration_key(kind, key_id, name, idempotency_key)


def _replay(session: Session, key: str | None, request: Mapping[str, Any]) -> Registered | None:
    """The version an earlier request with this Idempotency-Key made, if it was the same one."""
    row = registry.find_registered(session, key) if key else None
    if row is None:
        return None
    source = row.card.get("source") or {}
    if any(source.get(k) != v for k, v in request.items()):
        raise Conflict("Idempotency-Key was used with a different request", "Idempotency-Key")
    return Registered(row, False)


# --- scratch space and per-key concurrency ---


def _scratch_dir(ctx: AppContext) -> Path:
    folder = ctx.settings.work_dir / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _scratch(ctx: AppContext, kind: str) -> Iterator[Path]:
    tmp = _scratch_dir(ctx) / f".{kind}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_busy: Counter[str] = Counter()
_busy_lock = threading.Lock()


@contextmanager
def _slot(key_id: str, limit: int) -> Iterator[None]:
    """At most ``limit`` imports or merges per key at once in this process: each unpacks or
    merges whole models, disk and CPU one client must not monopolise."""
    with _busy_lock:
        if _busy[key_id] >= limit:
            raise TooManyRequests(
                f"this API key already has {limit} model import(s) or merge(s) running; "
                "retry when one has finished",
                None,
                retry_after_s=5,
            )
        _busy[key_id] += 1
    try:
        yield
    finally:
        with _busy_lock:
            _busy[key_id] -= 1
            if not _busy[key_id]:
                del _busy[key_id]


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
