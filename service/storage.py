"""Storage: artifacts, uploaded datasets and job checkpoints, on fsspec.

Three places, chosen by ``RCS_STORAGE_URL`` (``Settings.artifacts_location``, ``uploads_dir``,
``jobs_dir``):

- unset: artifacts under ``RCS_ARTIFACTS_URL`` (a folder by default), uploaded datasets and
  checkpoints under ``RCS_WORK_DIR``, all on this machine;
- a folder (a mount every machine shares): ``artifacts/``, ``datasets/`` and ``jobs/`` under it,
  read and written in place as on one machine;
- an object store (``s3://bucket/prefix``): the same three prefixes in the bucket. An uploaded
  dataset is kept as one uncompressed tar of its validated tree, named by its sha256
  (``datasets/<id>/<sha256>.tar``); a job's checkpoints as ``jobs/<id>/attempt-N/step-S/``
  with an index the worker rewrites only under the job's fence (``worker/checkpoints.py``).
  Every machine downloads what it needs into its own ``Cache``: by digest, checked after the
  download, bounded by ``RCS_CACHE_BYTES``, least recently used out.

Credentials come from what botocore reads (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance role) and the endpoint from ``AWS_ENDPOINT_URL``; none of them
is written into a card, an error or a log (the URL itself may not carry any: settings.py).

Writes are atomic where the filesystem allows: a folder is written under a temporary name and
renamed into place. Object stores cannot rename a folder, so there the card (``artifact.json``)
is written last, and the registry marks a version READY only after ``put_folder`` returns; a
failed ``put_folder`` removes what it had written.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from models.artifacts import CARD, card_digest, swap_into_place
from service.errors import InsufficientStorage
from service.settings import Settings

log = logging.getLogger(__name__)

# A write refused for want of space: the volume is full, or the user's quota on it is.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# botocore's own retries of a request (throttling, a dropped connection), and how long a
# connection may take: a wrong endpoint fails in seconds, not minutes.
S3_CONFIG = {"connect_timeout": 10, "read_timeout": 120, "retries": {"max_attempts": 3}}
CHUNK = 1024 * 1024


class StorageError(Exception):
    """Remote storage that cannot be used: the message names the setting to fix."""


class ArtifactStore:
    """The storage layer (the module's docstring): artifacts by key, and for an object store
    the datasets' tars and the jobs' checkpoint files, with the download cache."""

    def __init__(
        self,
        url: str,
        cache_dir: Path,
        cache_bytes: int | None = None,
        storage_url: str | None = None,
    ) -> None:
        self.fs: Any = _filesystem(url)
        self.root = str(fsspec.core.url_to_fs(url)[1]).rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        self.cache_dir = cache_dir
        self.cache = Cache(cache_dir, cache_bytes)
        # RCS_STORAGE_URL when it is an object store: datasets and checkpoints live there too.
        self.remote_root: str | None = None
        if storage_url is not None and not self.local:
            self.remote_root = str(fsspec.core.url_to_fs(storage_url)[1]).rstrip("/")
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, settings: Settings) -> ArtifactStore:
        """The storage ``settings`` choose; nothing is contacted yet (``check`` does)."""
        return cls(
            settings.artifacts_location,
            settings.cache_dir,
            settings.cache_bytes,
            settings.storage_url if settings.remote_storage else None,
        )

    @property
    def remote(self) -> bool:
        """Whether datasets and checkpoints are in an object store (RCS_STORAGE_URL)."""
        return self.remote_root is not None

    def uri(self, key: str) -> str:
        path = f"{self.root}/{key}"
        return path if self.local else self.fs.unstrip_protocol(path)

    # --- artifacts ---

    def put_folder(self, local: Path, key: str) -> str:
        """Copy ``local`` to ``key``; a second call for the same key replaces the first.
        A failed copy to an object store removes what it wrote (the card goes last, so no
        reader ever saw it as complete)."""
        target = f"{self.root}/{key}"
        if self.local:
            _local_atomic_copy(local, Path(target))
            return self.uri(key)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        try:
            for path in sorted(files, key=lambda p: p.name == CARD):  # the card last
                self.fs.put_file(str(path), f"{target}/{path.relative_to(local).as_posix()}")
        except BaseException:
            self._remove_quietly(target)
            raise
        return self.uri(key)

    def local_path(self, key: str, digest: str | None = None) -> Path:
        """A local folder with the artifact: the folder itself, or a cached download.

        ``digest`` (sha256 of the card) is the artifact the caller expects: a download of
        other bytes under the same key is refused rather than served.
        """
        if self.local:
            return Path(f"{self.root}/{key}")
        name = digest or hashlib.sha256(key.encode()).hexdigest()

        def fill(tmp: Path) -> None:
            self.fs.get(f"{self.root}/{key}/", str(tmp), recursive=True)
            if not (tmp / CARD).is_file():
                raise FileNotFoundError(f"no artifact at {self.uri(key)}")
            if digest is not None and card_digest(tmp) != digest:
                raise StorageError(
                    f"the artifact at {self.uri(key)} is not the registered one "
                    f"(card sha256 {card_digest(tmp)[:12]}, registered {digest[:12]})"
                )

        return self.cache.get("artifacts", name, fill)

    def delete(self, key: str) -> None:
        target = f"{self.root}/{key}"
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        # Downloads are cached by digest: a later version under the key is another entry, and
        # this one leaves the cache when it is the least recently used.

    # --- datasets (object store) ---

    def put_dataset(self, dataset_id: str, folder: Path, scratch: Path) -> str:
        """Upload ``folder`` (a validated dataset tree) as one tar named by its sha256; its URI.
        The tar is made in ``scratch`` (a folder) and removed; a failed upload leaves nothing
        under the dataset's prefix."""
        handle, name = tempfile.mkstemp(prefix=f".{dataset_id}.", suffix=".tar", dir=scratch)
        os.close(handle)
        packed = Path(name)
        try:
            _pack(folder, packed)
            digest = file_sha256(packed)
            key = f"{self._remote('datasets')}/{dataset_id}/{digest}.tar"
            try:
                self.fs.put_file(str(packed), key)
            except BaseException:
                self._remove_quietly(f"{self._remote('datasets')}/{dataset_id}")
                raise
        finally:
            packed.unlink(missing_ok=True)
        return str(self.fs.unstrip_protocol(key))

    @contextmanager
    def dataset_folder(self, uri: str) -> Iterator[Path]:
        """The dataset at ``uri`` unpacked on this machine, held in the cache while in use."""
        path = str(fsspec.core.url_to_fs(uri)[1])
        digest = Path(path).stem

        def fill(tmp: Path) -> None:
            packed = tmp.parent / f"{tmp.name}.tar"
            try:
                self.fs.get_file(path, str(packed))
                found = file_sha256(packed)
                if found != digest:
                    raise StorageError(
                        f"the dataset archive {uri} has sha256 {found[:12]}, not the "
                        f"{digest[:12]} it was registered with"
                    )
                tmp.mkdir()
                _unpack(packed, tmp)
            finally:
                packed.unlink(missing_ok=True)

        with self.cache.holding("datasets", digest, fill) as folder:
            yield folder

    def delete_dataset(self, uri: str) -> None:
        """The dataset's prefix in the bucket (its tar); a missing one is fine."""
        prefix = str(Path(str(fsspec.core.url_to_fs(uri)[1])).parent)
        self._remove_quietly(prefix)

    # --- checkpoint files and small objects (object store) ---

    def put_files(self, folder: Path, key: str) -> dict[str, str]:
        """Upload the files of ``folder`` under ``key``; their sha256 by relative name."""
        digests = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            digests[name] = file_sha256(path)
            self.fs.put_file(str(path), f"{self._remote('jobs')}/{key}/{name}")
        return digests

    def get_files(self, key: str, files: dict[str, str], folder: Path) -> None:
        """Download ``files`` (name: sha256) under ``key`` into ``folder``, each checked."""
        for name, digest in files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{self._remote('jobs')}/{key}/{name}", str(target))
            found = file_sha256(target)
            if found != digest:
                raise StorageError(
                    f"checkpoint file {key}/{name} has sha256 {found[:12]}, not {digest[:12]}"
                )

    def read_json(self, key: str) -> Any:
        """The JSON object at ``jobs/<key>``, or None if there is none."""
        try:
            return json.loads(self.fs.cat_file(f"{self._remote('jobs')}/{key}"))
        except FileNotFoundError:
            return None

    def write_json(self, key: str, value: Any) -> None:
        """One PUT: a reader sees the old object or the new one, never a part."""
        self.fs.pipe_file(f"{self._remote('jobs')}/{key}", json.dumps(value).encode())

    def remove(self, key: str) -> None:
        """Everything under ``jobs/<key>``; a missing prefix is fine."""
        self._remove_quietly(f"{self._remote('jobs')}/{key}")

    # --- start ---

    def check(self) -> None:
        """Write, read and remove a probe under the storage's root: StorageError with one line
        naming the setting when the credentials, the endpoint or the bucket are wrong."""
        if self.local:
            return
        setting = "RCS_STORAGE_URL" if self.remote else "RCS_ARTIFACTS_URL"
        where = self.fs.unstrip_protocol(self.remote_root or self.root)
        probe = f"{self.remote_root or self.root}/.rcs-probe-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(probe, b"probe")
            self.fs.cat_file(probe)
            self.fs.rm_file(probe)
        except Exception as exc:  # every failure here is the configuration's
            raise StorageError(f"{setting}: {where} cannot be used: {explain(exc)}") from None

    def _remote(self, section: str) -> str:
        if self.remote_root is None:
            raise StorageError(
                "datasets and checkpoints are stored remotely only with an "
                "object store in RCS_STORAGE_URL"
            )
        return f"{self.remote_root}/{section}"

    def _remove_quietly(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except Exception:  # the caller's own error matters more; log this one
            log.warning("could not remove %s after a failed write", self.fs.unstrip_protocol(path))


def check_storage(settings: Settings) -> None:
    """Exit with one line naming the setting if the configured object store cannot be written
    (no credentials, a wrong endpoint, no bucket): at start, not at the first job."""
    try:
        ArtifactStore.of(settings).check()
    except (StorageError, ImportError, ValueError) as exc:
        raise SystemExit(f"refusing to start: {exc}") from None


def explain(exc: BaseException) -> str:
    """What went wrong with an object store, in words an operator acts on, without secrets."""
    name = type(exc).__name__
    text = str(exc)
    if name == "NoCredentialsError":
        return (
            "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or (
        "Could not connect" in text or "Connect timeout" in text
    ):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return f"the endpoint cannot be reached ({endpoint or 'the default AWS endpoint'})"
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        return "the bucket does not exist"
    if isinstance(exc, PermissionError) or any(
        word in text for word in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")
    ):
        return "the credentials were refused (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    return f"{name}: {text.splitlines()[0] if text else 'no detail'}"


class Cache:
    """Downloads from remote storage on this machine: one folder per digest under ``root``,
    at most ``max_bytes`` in all (None: unbounded), the least recently used removed first.

    An entry is renamed into place only once complete and checked, so a present entry is a
    good one. A process using an entry holds a shared lock on it (``holding``), and eviction
    skips every entry it cannot lock exclusively: nothing in use is removed. Two processes
    wanting the same missing entry download it once (an exclusive lock while filling).
    """

    def __init__(self, root: Path, max_bytes: int | None) -> None:
        self.root, self.max_bytes = root, max_bytes

    def get(self, kind: str, digest: str, fill: Callable[[Path], None]) -> Path:
        """The entry's folder, filled if missing; not held (the caller reads it at once)."""
        with self.holding(kind, digest, fill) as folder:
            return folder

    @contextmanager
    def holding(self, kind: str, digest: str, fill: Callable[[Path], None]) -> Iterator[Path]:
        if not digest or "/" in digest or digest.startswith("."):
            raise StorageError(f"not a digest: {digest!r}")
        folder = self.root / kind / digest
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{digest}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            filled = False
            if not folder.is_dir():
                tmp = folder.parent / f".{digest}.tmp-{uuid.uuid4().hex[:8]}"
                try:
                    fill(tmp)
                    swap_into_place(tmp, folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                filled = True
            os.utime(folder)  # last used: what eviction orders by
            fcntl.flock(lock, fcntl.LOCK_SH)
            if filled:
                self.evict(keep=folder)
            yield folder

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used entries not in use until the cache fits; those
        removed."""
        if self.max_bytes is None or not self.root.is_dir():
            return []
        entries = []
        for kind in (p for p in self.root.iterdir() if p.is_dir()):
            for folder in (p for p in kind.iterdir() if p.is_dir() and not p.name.startswith(".")):
                entries.append((folder.stat().st_mtime, folder, _size(folder)))
        total = sum(size for _, _, size in entries)
        removed = []
        for _, folder, size in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if folder == keep:
                continue
            with open(folder.parent / f".{folder.name}.lock", "a+b") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use by a job or a request: it stays
                shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed.append(folder)
        if total > self.max_bytes:
            log.warning(
                "the download cache at %s holds %d bytes in use, over RCS_CACHE_BYTES=%d",
                self.root,
                total,
                self.max_bytes,
            )
        return removed


def _filesystem(url: str) -> Any:
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in ("s3", "s3a"):
        # A fresh instance (not fsspec's cache: the environment may differ between uses),
        # and no listing cache: another machine writes the same prefixes.
        return fsspec.filesystem(
            "s3", skip_instance_cache=True, use_listings_cache=False, config_kwargs=S3_CONFIG
        )
    return fsspec.core.url_to_fs(url)[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _pack(folder: Path, target: Path) -> None:
    """An uncompressed tar of ``folder``'s files, in name order, without owners or times: the
    same tree gives the same bytes (images compress poorly; the tar is read in one pass)."""

    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                archive.add(path, path.relative_to(folder).as_posix(), filter=plain)


def _unpack(packed: Path, target: Path) -> None:
    """Unpack a dataset tar (``_pack``'s, its digest checked) into ``target``: regular files
    and folders only, every one inside ``target``. tarfile's "data" filter does this where the
    Python has it (3.11.4 and later); before, the same rules are applied here."""
    with tarfile.open(packed) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, filter="data")
            return
        root = target.resolve()
        for member in archive.getmembers():
            inside = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not inside.is_relative_to(root):
                raise StorageError(f"the dataset archive has an unsafe member: {member.name!r}")
        archive.extractall(target)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


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
