"""Monitoring's rows: profiles, served images' statistics, closed windows, events, feedback.

Used by the API (the live monitor and the routes) and by the worker (a profile evaluation
stores its profile); no web import.

Many API processes serve one version: each buffers what it served and writes it here every
``RCS_MONITOR_FLUSH_S`` (``service.monitor.live``), and whichever process finds a window's
worth of unassigned images closes the window. Closing takes the images with one conditional
``UPDATE`` (``window_id IS NULL``): if another process took any of them first, this one rolls
back and leaves the window to it, so every image is in exactly one window, on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from models.monitoring import Profile, judge_window, proportion_interval
from service.db.tables import (
    ModelVersion,
    MonitorEvent,
    MonitorImage,
    MonitorProfile,
    MonitorWindow,
)
from service.settings import Settings

log = logging.getLogger(__name__)
# Feedback items per request, and the sha256 hashes a 422 quotes.
MAX_FEEDBACK = 10_000
MAX_QUOTED = 5


@dataclass(frozen=True)
class Rules:
    """When a window closes and what is flagged (from the settings)."""

    window: int
    min_window: int
    window_s: float
    alpha: float
    accuracy_drop: float
    keep_windows: int

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(
            settings.monitor_window,
            settings.monitor_min_window,
            settings.monitor_window_s,
            settings.monitor_alpha,
            settings.monitor_accuracy_drop,
            settings.monitor_keep_windows,
        )


def profile_row(session: Session, version_id: int) -> MonitorProfile | None:
    return session.get(MonitorProfile, version_id)


def save_profile(
    session: Session,
    version: ModelVersion,
    profile: Profile,
    dataset_id: str,
    split: str,
    evaluation_id: str | None,
) -> None:
    """Store (or replace) the version's profile, in the caller's transaction."""
    existing = session.get(MonitorProfile, version.id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(
        MonitorProfile(
            version_id=version.id,
            name=version.name,
            version=version.version,
            evaluation_id=evaluation_id,
            dataset_id=dataset_id,
            split=split,
            summary={**profile.summary(), "dataset": dataset_id, "split": split},
            profile=profile.to_json(),
        )
    )


def add_images(
    session: Session, version_id: int, rows: Sequence[tuple[str, float, list[float]]]
) -> None:
    """(sha256, served at, ``image_stats`` row) per image, committed."""
    session.add_all(
        MonitorImage(
            version_id=version_id, sha256=sha, created_at=at, pred=int(stats[3]), stats=stats
        )
        for sha, at, stats in rows
    )
    session.commit()


def _pending(session: Session, version_id: int, limit: int) -> list[tuple[int, float]]:
    query = (
        select(MonitorImage.id, MonitorImage.created_at)
        .where(MonitorImage.version_id == version_id, MonitorImage.window_id.is_(None))
        .order_by(MonitorImage.id)
        .limit(limit)
    )
    return [(int(i), float(t)) for i, t in session.execute(query).all()]


def _window_stats(session: Session, window_id: int | None, version_id: int) -> np.ndarray:
    query = select(MonitorImage.stats).where(
        MonitorImage.version_id == version_id,
        MonitorImage.window_id.is_(None)
        if window_id is None
        else MonitorImage.window_id == window_id,
    )
    rows = session.scalars(query).all()
    return np.asarray(rows, dtype=np.float64) if rows else np.zeros((0, 0))


def close_ready(
    session: Session, version: ModelVersion, profile: Profile, rules: Rules, now: float
) -> list[MonitorWindow]:
    """Close every window of ``version`` that is ready: ``rules.window`` unassigned images, or
    at least ``rules.min_window`` whose oldest is ``rules.window_s`` old. Each is judged,
    stored with its events and committed on its own."""
    closed: list[MonitorWindow] = []
    while True:
        pending = _pending(session, version.id, rules.window)
        full = len(pending) >= rules.window
        timed = (
            len(pending) >= rules.min_window and pending and now - pending[0][1] >= rules.window_s
        )
        if not (full or timed):
            return closed
        window = _take(session, version, pending, now)
        if window is None:  # another process took some of them first: the window is its own
            return closed
        stats = _window_stats(session, window.id, version.id)
        window.result = judge_window(profile, stats, rules.alpha, rules.min_window, seed=window.id)
        _events(session, version, window, rules)
        _prune(session, version.id, rules.keep_windows)
        session.commit()
        closed.append(window)


def _take(
    session: Session, version: ModelVersion, pending: list[tuple[int, float]], now: float
) -> MonitorWindow | None:
    window = MonitorWindow(
        version_id=version.id, opened_at=pending[0][1], closed_at=now, n=len(pending), result={}
    )
    session.add(window)
    session.flush()
    ids = [i for i, _ in pending]
    taken = session.execute(
        update(MonitorImage)
        .where(MonitorImage.id.in_(ids), MonitorImage.window_id.is_(None))
        .values(window_id=window.id)
    )
    if getattr(taken, "rowcount", 0) != len(ids):
        session.rollback()
        return None
    return window


def _previous(session: Session, version_id: int, before: int) -> dict[str, Any] | None:
    query = (
        select(MonitorWindow.result)
        .where(MonitorWindow.version_id == version_id, MonitorWindow.id < before)
        .order_by(MonitorWindow.id.desc())
        .limit(1)
    )
    result = session.scalar(query)
    return dict(result) if result else None


def low_accuracy(result: dict[str, Any] | None, drop: float) -> bool:
    if not result or result.get("status") != "ok":
        return False
    accuracy = result["accuracy"]
    return bool(accuracy["estimate"] < accuracy["reference"] - drop)


def drifted(result: dict[str, Any] | None) -> bool:
    return bool(result and result.get("status") == "ok" and result["drift"]["drifted"])


def _events(session: Session, version: ModelVersion, window: MonitorWindow, rules: Rules) -> None:
    """An event where a threshold is crossed (not for every window past it)."""
    ref = f"{version.name}/{version.version}"
    now, before = window.result, _previous(session, version.id, window.id)
    data = {"window": window.id, "n": window.n}
    if drifted(now) and not drifted(before):
        drift = now["drift"]
        add_event(
            session,
            version.id,
            f"Drift detected on {ref}: window {window.id} of {window.n} images, p = "
            f"{drift['p_value']:.2g} (alarm below {rules.alpha})",
            {**data, "drift": drift["score"], "p_value": drift["p_value"]},
            level="warning",
        )
    elif drifted(before) and not drifted(now):
        add_event(session, version.id, f"Drift over on {ref}: window {window.id}", data)
    if low_accuracy(now, rules.accuracy_drop) and not low_accuracy(before, rules.accuracy_drop):
        accuracy = now["accuracy"]
        add_event(
            session,
            version.id,
            f"Estimated accuracy of {ref} is {accuracy['estimate']:.3f}, more than "
            f"{rules.accuracy_drop} under its reference's {accuracy['reference']:.3f} "
            f"(window {window.id})",
            {**data, "estimate": accuracy["estimate"], "reference": accuracy["reference"]},
            level="warning",
        )
    elif low_accuracy(before, rules.accuracy_drop) and not low_accuracy(now, rules.accuracy_drop):
        add_event(session, version.id, f"Estimated accuracy of {ref} back within range", data)


def add_event(
    session: Session,
    version_id: int,
    message: str,
    data: dict[str, Any] | None = None,
    level: str = "info",
) -> None:
    log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", message)
    session.add(
        MonitorEvent(version_id=version_id, level=level, type="monitor", message=message, data=data)
    )


def _prune(session: Session, version_id: int, keep: int) -> None:
    """Drop the images of windows older than the last ``keep`` (the windows stay)."""
    cutoff = session.scalar(
        select(MonitorWindow.id)
        .where(MonitorWindow.version_id == version_id)
        .order_by(MonitorWindow.id.desc())
        .offset(keep)
        .limit(1)
    )
    if cutoff is not None:
        session.execute(
            delete(MonitorImage).where(
                MonitorImage.version_id == version_id, MonitorImage.window_id <= cutoff
            )
        )


def current(session: Session, version_id: int, profile: Profile, rules: Rules) -> dict[str, Any]:
    """The open window: its images so far, judged as a window would be (or not enough yet)."""
    stats = _window_stats(session, None, version_id)
    result = judge_window(profile, stats, rules.alpha, rules.min_window, seed=0)
    if result["status"] == "not_enough_traffic":
        result["message"] = (
            f"not enough traffic yet: {result['n']} of the {rules.min_window} images a window "
            "needs to be judged"
        )
    oldest = session.scalar(
        select(func.min(MonitorImage.created_at)).where(
            MonitorImage.version_id == version_id, MonitorImage.window_id.is_(None)
        )
    )
    return {**result, "opened_at": oldest, "window_size": rules.window}


def measured(session: Session, version_id: int, window_ids: Sequence[int]) -> dict[int, Any]:
    """Per window, the top-1 measured on the images feedback labelled, with its interval."""
    if not window_ids:
        return {}
    query = (
        select(MonitorImage.window_id, func.count(MonitorImage.label), _correct())
        .where(
            MonitorImage.version_id == version_id,
            MonitorImage.window_id.in_(list(window_ids)),
            MonitorImage.label.is_not(None),
        )
        .group_by(MonitorImage.window_id)
    )
    return {int(w): measured_accuracy(int(n), int(k)) for w, n, k in session.execute(query).all()}


def _correct() -> Any:
    return func.sum(case((MonitorImage.label == MonitorImage.pred, 1), else_=0))


def measured_accuracy(n: int, k: int) -> dict[str, Any]:
    return {
        "labelled": n,
        "top1": k / n if n else None,
        "interval": list(proportion_interval(k, n)),
    }


def history(session: Session, version_id: int, limit: int) -> list[MonitorWindow]:
    """The newest ``limit`` closed windows, oldest first."""
    rows = session.scalars(
        select(MonitorWindow)
        .where(MonitorWindow.version_id == version_id)
        .order_by(MonitorWindow.id.desc())
        .limit(limit)
    ).all()
    return list(reversed(rows))


def events(session: Session, version_id: int, limit: int) -> list[MonitorEvent]:
    rows = session.scalars(
        select(MonitorEvent)
        .where(MonitorEvent.version_id == version_id)
        .order_by(MonitorEvent.seq.desc())
        .limit(limit)
    ).all()
    return list(reversed(rows))


def latest_windows(session: Session) -> list[tuple[str, int, dict[str, Any]]]:
    """(name, version, result) of every version's newest closed window (for the gauges)."""
    newest = select(func.max(MonitorWindow.id)).group_by(MonitorWindow.version_id).scalar_subquery()
    query = (
        select(ModelVersion.name, ModelVersion.version, MonitorWindow.result)
        .join(ModelVersion, ModelVersion.id == MonitorWindow.version_id)
        .where(MonitorWindow.id.in_(newest))
    )
    return [(str(n), int(v), dict(r)) for n, v, r in session.execute(query).all()]


def label_images(
    session: Session, version_id: int, labels: dict[str, int]
) -> tuple[int, list[int], list[str]]:
    """Set the true label of every served image with these sha256 hashes: (images labelled,
    their windows, hashes no stored image has). Nothing is written when any is unknown."""
    found = session.execute(
        select(MonitorImage.sha256, MonitorImage.window_id).where(
            MonitorImage.version_id == version_id, MonitorImage.sha256.in_(list(labels))
        )
    ).all()
    unknown = sorted(set(labels) - {sha for sha, _ in found})
    if unknown:
        return 0, [], unknown
    for sha, label in labels.items():
        session.execute(
            update(MonitorImage)
            .where(MonitorImage.version_id == version_id, MonitorImage.sha256 == sha)
            .values(label=label)
        )
    session.commit()
    windows = sorted({int(w) for _, w in found if w is not None})
    return len(found), windows, []


def pending_measured(session: Session, version_id: int) -> dict[str, Any]:
    n, k = session.execute(
        select(func.count(MonitorImage.label), _correct()).where(
            MonitorImage.version_id == version_id,
            MonitorImage.window_id.is_(None),
            MonitorImage.label.is_not(None),
        )
    ).one()
    return measured_accuracy(int(n or 0), int(k or 0))


def history_row(session: Session, window_id: int) -> MonitorWindow | None:
    return session.get(MonitorWindow, window_id)
