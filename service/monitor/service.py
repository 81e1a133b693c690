"""Monitoring's API-side logic: profiles asked for, the monitor view, feedback."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.json_values import stable_hash
from models.monitoring import Profile
from service.db.tables import Evaluation, Job, ModelVersion, MonitorProfile, new_id
from service.errors import Conflict, InvalidRequest
from service.evaluations import service as evaluations
from service.evaluations import state
from service.monitor import store
from service.monitor.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    MonitorEventObject,
    MonitorObject,
    ProfileRequest,
    WindowObject,
)
from service.settings import Settings
from service.status import EvaluationStatus
from service.tasks.create import Sender, create_once

PROFILE = "profile"
DEFAULT_SPLIT = "val"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
HISTORY = 100
EVENTS = 50


def ref_of(version: ModelVersion) -> str:
    return f"{version.name}/{version.version}"


def how_to_profile(version: ModelVersion) -> str:
    return (
        f"POST /models/{version.name}/versions/{version.version}/monitor/profile with "
        '{"dataset": "<id of a dataset with its classes>", "split": "<a labelled ID split>"}'
    )


def profile_split_name(version: ModelVersion) -> str:
    config = (version.card or {}).get("config") or {}
    return str((config.get("data") or {}).get("val_split") or DEFAULT_SPLIT)


def build_profile_evaluation(
    session: Session, version: ModelVersion, dataset_id: str | None, split: str | None
) -> Evaluation:
    """A queued evaluation of kind ``profile``: the version on a labelled ID split, checked as
    an evaluation is (the dataset live, the split its own and not empty, the classes the
    model's). The defaults: the dataset the version was trained on, its validation split."""
    if dataset_id is None:
        job = session.get(Job, version.job_id) if version.job_id else None
        if job is None:
            raise InvalidRequest(
                f"{ref_of(version)} was not trained here (imported or re-merged): name the "
                "dataset to profile it on",
                "dataset",
            )
        dataset_id = job.dataset_id
    dataset = evaluations.visible_dataset(session, dataset_id)
    [chosen] = evaluations.choose_splits(dataset, [split or profile_split_name(version)], "split")
    evaluations.check_classes(evaluations.model_classes(version), dataset)
    return Evaluation(
        id=new_id("eval"),
        kind=PROFILE,
        status=EvaluationStatus.QUEUED,
        model=ref_of(version),
        model_reference=ref_of(version),
        model_name=version.name,
        model_version=version.version,
        version_id=version.id,
        model_digest=version.digest,
        dataset_id=dataset.id,
        splits=[chosen],
        config={},
        metadata_={},
        progress_step=0,
        progress_total=1,
        attempts=0,
    )


def create_profile(
    session: Session,
    version: ModelVersion,
    body: ProfileRequest,
    send: Sender,
    scope: str,
    idempotency_key: str | None,
) -> tuple[Evaluation, bool]:
    digest = stable_hash({"profile": ref_of(version), **body.model_dump(mode="json")})
    make = partial(build_profile_evaluation, session, version, body.dataset, body.split)
    return create_once(
        state.EVALUATIONS,
        session,
        make,
        digest,
        send,
        scope,
        idempotency_key,
        lambda row: (
            f"Validated the monitoring profile of {row.model} on "
            f"{row.dataset_id} split {row.splits[0]}"
        ),
    )


def required_profile(session: Session, version: ModelVersion) -> Profile:
    """The version's profile, or a 409 saying how to make one (or that one is coming)."""
    row = store.profile_row(session, version.id)
    if row is not None:
        return Profile.from_json(row.profile)
    running = session.scalar(
        select(Evaluation.id).where(
            Evaluation.version_id == version.id,
            Evaluation.kind == PROFILE,
            Evaluation.status.in_([EvaluationStatus.QUEUED, EvaluationStatus.RUNNING]),
        )
    )
    if running is not None:
        raise Conflict(
            f"{ref_of(version)} has no monitoring profile yet: evaluation {running} is "
            "computing it on a worker"
        )
    raise Conflict(f"{ref_of(version)} has no monitoring profile yet: {how_to_profile(version)}")


def _settings_view(settings: Settings) -> dict[str, Any]:
    return {
        "window": settings.monitor_window,
        "min_window": settings.monitor_min_window,
        "window_s": settings.monitor_window_s,
        "alpha": settings.monitor_alpha,
        "accuracy_drop": settings.monitor_accuracy_drop,
    }


def view(session: Session, settings: Settings, version: ModelVersion, limit: int) -> MonitorObject:
    profile = required_profile(session, version)
    row = store.profile_row(session, version.id)
    assert row is not None
    rules = store.Rules.of(settings)
    windows = store.history(session, version.id, limit)
    measured = store.measured(session, version.id, [w.id for w in windows])
    current = store.current(session, version.id, profile, rules)
    current["measured"] = store.pending_measured(session, version.id)
    return MonitorObject(
        model=ref_of(version),
        enabled=settings.monitor,
        profile={**row.summary, "created_at": row.created_at, "evaluation": row.evaluation_id},
        settings=_settings_view(settings),
        current=current,
        windows=[WindowObject.of(w, measured.get(w.id)) for w in windows],
        events=[MonitorEventObject.of(e) for e in store.events(session, version.id, EVENTS)],
    )


def feedback(
    session: Session, settings: Settings, version: ModelVersion, body: FeedbackRequest
) -> FeedbackResponse:
    """True labels for served images: each must be a sha256 /predict answered for this
    version and a class of the model's; nothing is stored unless all are."""
    profile = required_profile(session, version)
    classes = {name: i for i, name in enumerate(profile.classes)}
    labels: dict[str, int] = {}
    for i, item in enumerate(body.items):
        sha = item.sha256.strip().lower()
        if not SHA256.match(sha):
            raise InvalidRequest(
                f"items[{i}].sha256 is not a sha256 (64 hexadecimal digits)", f"items[{i}].sha256"
            )
        if item.label not in classes:
            raise InvalidRequest(
                f"items[{i}].label {item.label!r} is not a class of {ref_of(version)} "
                f"({_listed(profile.classes)})",
                f"items[{i}].label",
            )
        if labels.get(sha, classes[item.label]) != classes[item.label]:
            raise InvalidRequest(f"image {sha} is given two labels", f"items[{i}].label")
        labels[sha] = classes[item.label]
    labelled, window_ids, unknown = store.label_images(session, version.id, labels)
    if unknown:
        shown = ", ".join(unknown[: store.MAX_QUOTED])
        more = f" (and {len(unknown) - store.MAX_QUOTED} more)" if len(unknown) > 5 else ""
        raise InvalidRequest(
            f"{len(unknown)} image(s) unknown to {ref_of(version)}'s monitor: {shown}{more}. "
            "Feedback names images /predict served this version (by the sha256 it answered), "
            "monitored (not sent with monitor: false, and served once the profile existed), "
            f"within the last {settings.monitor_keep_windows} windows",
            "items",
        )
    rows = [store.history_row(session, w) for w in window_ids]
    measured = store.measured(session, version.id, window_ids)
    return FeedbackResponse(
        model=ref_of(version),
        labelled=labelled,
        windows=[WindowObject.of(w, measured.get(w.id)) for w in rows if w is not None],
        current=store.pending_measured(session, version.id),
    )


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[: evaluations.MAX_LISTED])
    more = len(names) - evaluations.MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def profile_of(session: Session, version: ModelVersion) -> dict[str, Any] | None:
    """The profile's summary for the version's report (None: none yet)."""
    row = session.get(MonitorProfile, version.id)
    if row is None:
        return None
    return {**row.summary, "created_at": row.created_at, "evaluation": row.evaluation_id}
