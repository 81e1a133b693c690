"""ONNX exports of registered versions, one file per artifact digest under ``onnx_dir``.

The same bytes export to the same file, so a version's export is made once per work folder
(by the first ``/onnx`` download or the first load under ``RCS_PREDICT_ENGINE=onnxruntime`` or
``auto``) and shared by both. Each export is verified against torch before it is written
(``models.onnx_export``), and written atomically, so a reader never sees half a file. One
process of those sharing the folder exports a file at a time (a lock file beside it): the
API's workers all load the default model at once, and the others wait for its export instead
of each tracing a copy.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from models.errors import ExportError
from models.heads import Classifier
from models.onnx_export import OnnxRunner, export_onnx

log = logging.getLogger(__name__)

_guard = threading.Lock()
_exporting: dict[Path, threading.Lock] = {}


def export_path(onnx_dir: Path, digest: str) -> Path:
    return onnx_dir / f"{digest}.onnx"


def ensure_export(onnx_dir: Path, digest: str, classifier: Callable[[], Classifier]) -> Path:
    """The export of the artifact whose card digest is ``digest``, made from ``classifier()``
    if it is not there yet (one export per file at a time in this process)."""
    path = export_path(onnx_dir, digest)
    with _guard:
        lock = _exporting.setdefault(path, threading.Lock())
    with lock:
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a+b") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
            if not path.is_file():
                export_onnx(classifier(), path, extra_metadata={"artifact_digest": digest})
    return path


def remove_export(onnx_dir: Path, digest: str) -> bool:
    """Delete the export of the artifact whose digest is ``digest`` (and its lock file), once no
    version has those bytes; True when there was one. A process that has it open keeps its
    session (ONNX Runtime read the file when it opened it)."""
    path = export_path(onnx_dir, digest)
    path.with_name(path.name + ".lock").unlink(missing_ok=True)
    if not path.is_file():
        return False
    path.unlink(missing_ok=True)
    return True


def runner_for(
    classifier: Classifier, onnx_dir: Path, digest: str, device: str, threads: int
) -> OnnxRunner | None:
    """An ONNX Runtime runner over the artifact's export; None (torch serves it, and the log
    says why) for an architecture that cannot be exported."""
    try:
        path = ensure_export(onnx_dir, digest, lambda: classifier)
        return OnnxRunner(path, device=device, threads=threads)
    except ExportError as exc:
        log.warning("serving with torch instead of onnxruntime: %s", exc)
        return None
