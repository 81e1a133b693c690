"""The live monitor of one API process: what ``/predict`` served, buffered, then written.

``observe`` runs on the request path and only appends the forward pass's packed output
(``models.monitoring.served_pass``: no second pass) to a buffer; it never raises. A thread
of its own writes the buffer to the database every ``RCS_MONITOR_FLUSH_S``: the per-image
statistics (projected on the version's profile), then closes whatever windows are ready
(``service.monitor.store.close_ready``) and refreshes the gauges from the newest windows.

Why the database and not per-process windows: with ``RCS_API_WORKERS`` processes (or several
hosts) each would see a fraction of the traffic, so its windows would fill N times slower and
its answers would differ from its neighbours'. Through the database every process adds to one
window per version, closed windows survive restarts, feedback finds any process's images, and
every process's ``/metrics`` reports the same newest window. The price is one insert per
flush per version, off the request path; what a process had not flushed when it is killed
(at most ``RCS_MONITOR_FLUSH_S`` of traffic) is lost to the monitor, never to the client.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from torch import Tensor

from models.monitoring import Profile, image_stats, unpack
from service.db.tables import ModelVersion, MonitorProfile
from service.monitor import store
from service.settings import Settings

log = logging.getLogger(__name__)
# Seconds between checks for a version's profile (made or replaced by a worker meanwhile),
# and between refreshes of the gauges from the database.
PROFILE_CHECK_S = 10.0
GAUGES_EVERY_S = 5.0
# Buffered images that wake the writer before its next flush.
WAKE_AT = 4096


@dataclass
class _Served:
    name: str
    version: int
    classes: int
    out: Tensor
    hashes: list[str]
    at: float


@dataclass
class _Known:
    """A version as the writer knows it: its row id and profile (None: none yet)."""

    version_id: int | None
    profile: Profile | None
    profile_stamp: tuple[int, str | None] | None
    checked: float


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["model", "version"]
        self.drift = Gauge(
            "rcs_monitor_drift_score",
            "Drift score of the version's newest closed window (-log10 of its p-value)",
            labels,
            registry=registry,
        )
        self.drifted = Gauge(
            "rcs_monitor_drifted",
            "1 when the version's newest closed window is flagged as drifted",
            labels,
            registry=registry,
        )
        self.accuracy = Gauge(
            "rcs_monitor_estimated_accuracy",
            "Estimated top-1 (ATC) of the version's newest closed window",
            labels,
            registry=registry,
        )
        self.disagreement = Gauge(
            "rcs_monitor_disagreement",
            "Default vs concept head disagreement rate of the version's newest closed window",
            labels,
            registry=registry,
        )
        self.images = Counter(
            "rcs_monitor_images_total",
            "Served images this process recorded for monitoring",
            registry=registry,
        )
        self.skipped = Counter(
            "rcs_monitor_skipped_images_total",
            "Served images not monitored, by reason",
            ["reason"],
            registry=registry,
        )
        self.errors = Counter(
            "rcs_monitor_errors_total",
            "Errors of the monitor (logged; no /predict fails for them)",
            ["stage"],
            registry=registry,
        )
        self.windows = Counter(
            "rcs_monitor_windows_closed_total", "Windows this process closed", registry=registry
        )

    def show(self, latest: list[tuple[str, int, dict[str, Any]]]) -> None:
        for gauge in (self.drift, self.drifted, self.accuracy, self.disagreement):
            gauge.clear()
        for name, version, result in latest:
            if result.get("status") != "ok":
                continue
            labels = (name, str(version))
            self.drift.labels(*labels).set(result["drift"]["score"])
            self.drifted.labels(*labels).set(float(result["drift"]["drifted"]))
            self.accuracy.labels(*labels).set(result["accuracy"]["estimate"])
            self.disagreement.labels(*labels).set(result["disagreement"]["rate"])


@dataclass
class Monitor:
    settings: Settings
    sessions: sessionmaker[Session]
    metrics: MonitorMetrics
    _buffer: list[_Served] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _known: dict[tuple[str, int], _Known] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _gauges_at: float = 0.0

    @classmethod
    def start(
        cls, settings: Settings, sessions: sessionmaker[Session], registry: CollectorRegistry
    ) -> Monitor:
        monitor = cls(settings, sessions, MonitorMetrics(registry))
        if settings.monitor:
            monitor._thread = threading.Thread(target=monitor._run, name="rcs-monitor", daemon=True)
            monitor._thread.start()
        return monitor

    @property
    def rules(self) -> store.Rules:
        return store.Rules.of(self.settings)

    def observe(
        self, name: str, version: int, classes: int, out: Tensor, hashes: list[str]
    ) -> None:
        """Buffer one request's forward-pass output; never raises (an error is logged and
        counted, and the request answers as if nothing happened)."""
        try:
            if not self.settings.monitor:
                return
            with self._lock:
                self._buffer.append(_Served(name, version, classes, out, hashes, time.time()))
                size = len(self._buffer)
            if size >= WAKE_AT:
                self._wake.set()
        except Exception:
            self.metrics.errors.labels("observe").inc()
            log.exception("monitor: could not record a /predict")

    def skip(self, images: int, reason: str) -> None:
        self.metrics.skipped.labels(reason).inc(images)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.monitor_flush_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write what was buffered, close ready windows, refresh the gauges; errors logged and
        counted, never raised (the buffered images are then lost to the monitor)."""
        with self._lock:
            served, self._buffer = self._buffer, []
        groups: dict[tuple[str, int], list[_Served]] = {}
        for item in served:
            groups.setdefault((item.name, item.version), []).append(item)
        for key, items in groups.items():
            try:
                self._write(key, items)
            except Exception:
                self.metrics.errors.labels("write").inc()
                log.exception("monitor: could not record %s/%s's traffic", *key)
        try:
            self._refresh_gauges()
        except Exception:
            self.metrics.errors.labels("gauges").inc()
            log.exception("monitor: could not refresh the gauges")

    def _write(self, key: tuple[str, int], items: list[_Served]) -> None:
        n = sum(len(item.hashes) for item in items)
        closed: list[Any] = []
        with self.sessions() as session:
            known = self._version(session, key)
            if known.version_id is None:
                self.skip(n, "version_gone")
                return
            if known.profile is None:
                self.skip(n, "no_profile")
                return
            rows = [row for item in items for row in self._rows(known.profile, item)]
            store.add_images(session, known.version_id, rows)
            self.metrics.images.inc(len(rows))
            version = session.get(ModelVersion, known.version_id)
            if version is not None:
                closed = store.close_ready(session, version, known.profile, self.rules, time.time())
                self.metrics.windows.inc(len(closed))
        if closed:
            self._gauges_at = 0.0

    @staticmethod
    def _rows(profile: Profile, item: _Served) -> list[tuple[str, float, list[float]]]:
        probs, rest = unpack(item.out, item.classes)
        if rest is None:
            return []
        extra = rest.numpy().astype(np.float64)
        stats = image_stats(probs.numpy(), extra[:, 0], extra[:, 1], extra[:, 2:], profile.pca)
        return [
            (sha, item.at, [float(round(v, 6)) for v in row])
            for sha, row in zip(item.hashes, stats.tolist(), strict=True)
        ]

    def _version(self, session: Session, key: tuple[str, int]) -> _Known:
        known = self._known.get(key)
        now = time.monotonic()
        if known is not None and now - known.checked < PROFILE_CHECK_S:
            return known
        if known is None or known.version_id is None:
            version_id = session.scalar(
                select(ModelVersion.id).where(
                    ModelVersion.name == key[0], ModelVersion.version == key[1]
                )
            )
            known = _Known(version_id, None, None, now)
        if known.version_id is None:
            self._known[key] = known
            return known
        stamp_row = session.execute(
            select(MonitorProfile.created_at, MonitorProfile.evaluation_id).where(
                MonitorProfile.version_id == known.version_id
            )
        ).first()
        stamp = None if stamp_row is None else (int(stamp_row[0]), stamp_row[1])
        if stamp != known.profile_stamp:
            row = store.profile_row(session, known.version_id) if stamp else None
            known.profile = Profile.from_json(row.profile) if row is not None else None
            known.profile_stamp = stamp
        known.checked = now
        self._known[key] = known
        return known

    def _refresh_gauges(self) -> None:
        now = time.monotonic()
        if now - self._gauges_at < GAUGES_EVERY_S:
            return
        self._gauges_at = now
        with self.sessions() as session:
            self.metrics.show(store.latest_windows(session))

    def close(self) -> None:
        """Stop the writer after a last flush (an API shutting down keeps what it served)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.settings.monitor:
            self.flush()
