"""What a worker reads from and writes to an object store (``RCS_STORAGE_URL=s3://...``).

A worker on another machine shares nothing with the API or the other workers but the database,
the broker and the bucket. It downloads a job's dataset into its own cache
(``service.storage.Cache``: checked by sha256, held while the task runs, least recently used
out), and uploads the checkpoints the training loop saves.

Checkpoints are fenced as on a shared folder (``worker.runner``): an attempt uploads each one
under its own prefix, ``jobs/<job>/attempt-N/step-S/``, outside any transaction (a slow upload
holds no lock); the job's index, ``jobs/<job>/checkpoints.json``, which names the checkpoint a
next attempt resumes from and the sha256 of each of its files, is rewritten only inside the
transaction that holds the job's row (the attempt's fence), with one PUT. A zombie attempt's
uploads are never named by the index, and go with the job's prefix when the job ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.train import KEEP_CHECKPOINTS
from service.db.tables import Dataset
from worker.lease import Lease, WorkerContext

INDEX = "checkpoints.json"


def dataset_path(ctx: WorkerContext, dataset: Dataset) -> Path:
    """This machine's copy of ``dataset``: its own path, or (stored in an object store) its
    tree unpacked in the cache, held until the running task ends (``WorkerContext.held``)."""
    if ctx.store.remote and "://" in dataset.path:
        return ctx.held.enter_context(ctx.store.dataset_folder(dataset.path))
    return Path(dataset.path)


class RemoteCheckpoints:
    """One attempt's view of its job's checkpoints in the object store."""

    def __init__(self, ctx: WorkerContext, lease: Lease) -> None:
        self.store, self.job_id = ctx.store, lease.task_id
        self.attempt = lease.attempt.number
        # step -> {"key", "files"} of what this attempt uploaded and has not published yet.
        self.uploaded: dict[int, dict[str, Any]] = {}
        self.newest = max((int(s) for s in self.index()["steps"]), default=-1)

    def index(self) -> dict[str, Any]:
        found = self.store.read_json(f"{self.job_id}/{INDEX}")
        return found if isinstance(found, dict) else {"latest": None, "steps": {}}

    def upload(self, ready: dict[int, Path]) -> None:
        """Upload the attempt's saved checkpoints not uploaded yet (no fence needed: the
        prefix is this attempt's own)."""
        for step, folder in sorted(ready.items()):
            if step in self.uploaded:
                continue
            key = f"attempt-{self.attempt}/{folder.name}"
            files = self.store.put_files(folder, f"{self.job_id}/{key}")
            self.uploaded[step] = {"key": key, "files": files}

    def publish(self, ready: dict[int, Path]) -> set[int]:
        """Name the newest of ``ready`` (uploaded already) as the job's checkpoint to resume
        from; the steps the index keeps. The caller holds the fence and commits."""
        index = self.index()
        steps: dict[str, Any] = dict(index["steps"])
        for step in ready:
            steps[str(step)] = self.uploaded.pop(step)
        kept = sorted(int(s) for s in steps)[-KEEP_CHECKPOINTS:]
        dropped = [steps.pop(str(s)) for s in sorted(int(s) for s in steps) if s not in kept]
        latest = max(kept)
        self.store.write_json(f"{self.job_id}/{INDEX}", {"latest": latest, "steps": steps})
        self.newest = latest
        for entry in dropped:  # after the index no longer names them
            self.store.remove(f"{self.job_id}/{entry['key']}")
        return set(kept)

    def resume_into(self, folder: Path) -> Path | None:
        """Download the job's latest published checkpoint into ``folder`` (each file checked
        by sha256); its folder, or None when the job has none yet."""
        index = self.index()
        latest = index.get("latest")
        if latest is None:
            return None
        entry = index["steps"][str(latest)]
        target = folder / Path(entry["key"]).name
        self.store.get_files(f"{self.job_id}/{entry['key']}", entry["files"], target)
        return target

    def remove(self) -> None:
        """The job's prefix: every attempt's uploads and the index."""
        self.store.remove(self.job_id)
