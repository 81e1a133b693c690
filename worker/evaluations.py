"""Run one evaluation: claim it, measure the version on the dataset's splits (or, kind
``descriptions``, diagnose a backbone's class descriptions on one split), record results.

As a job, it tolerates being delivered twice: the claim is a conditional UPDATE with a lease, a
finished evaluation is skipped, and the results are written with the terminal status in one
transaction that only the lease's holder can commit. There is nothing to resume: a released
or taken-over evaluation starts over, which costs one pass over its splits. Every write is
fenced by the claim's attempt, as a job's are (``worker.runner``): a worker that lost the
evaluation to another writes no event, result or status once it resumes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from torch import Tensor

from models.artifacts import load_artifact
from models.backbone import resolve_device
from models.config import RunConfig, from_dict
from models.data import DatasetSplits, ImageDataset, Sample, Scoring, dataset_root, open_dataset
from models.description_scoring import ScoringRule, score_dataset
from models.diagnostics import description_diagnostics, set_difference, summary_line
from models.errors import Cancelled, DataError, ModelsError
from models.evaluation import evaluate_split
from models.heads import Classifier
from models.json_values import json_safe
from models.monitoring import Profile, profile_split
from models.pipeline import build_classifier, frozen_head_probs
from service.db.tables import Dataset, Evaluation, ModelVersion
from service.errors import error_code
from service.evaluations import state
from service.evaluations.schemas import SERVED_HEAD
from service.monitor import store as monitor_store
from service.monitor.service import PROFILE, profile_split_name
from service.registry import service as registry
from service.status import EvaluationStatus, VersionStatus
from worker.lease import Lease, Outcome, Stop, TaskWatch, WorkerContext, claim, failed, stopped
from worker.runner import check_server_paths
from worker.storage import dataset_path

log = logging.getLogger(__name__)
Results = dict[str, dict[str, dict[str, Any]]]
# Writes a result beside the evaluation's own, in the transaction that finishes it.
AlsoStore = Callable[[Session], None]


class LeaseWatch(TaskWatch):
    """``should_stop`` for the evaluation loop, asked between batches (``TaskWatch``)."""

    tasks = state.EVALUATIONS


@dataclass(frozen=True)
class Plan:
    """What the evaluation reads, checked on this machine: the artifact's folder, the dataset,
    the splits."""

    model: str
    folder: str
    dataset: Dataset
    splits: list[str]


def run_evaluation(ctx: WorkerContext, evaluation_id: str) -> Outcome:
    lease = claim(ctx, state.EVALUATIONS, evaluation_id)
    if isinstance(lease, Outcome):
        return lease
    with ctx.sessions() as session:
        row = session.get(Evaluation, evaluation_id)
        assert row is not None  # claimed just now; rows are never deleted while active
        kind = row.kind
    with ctx.held:  # its dataset stays in the download cache until it ends
        return _evaluate_and_record(ctx, lease, kind)


def _evaluate_and_record(ctx: WorkerContext, lease: Lease, kind: str) -> Outcome:
    watch = LeaseWatch(ctx, lease)
    evaluation_id = lease.task_id
    try:
        if kind == "descriptions":
            diagnostics = diagnose(ctx, evaluation_id, watch)
            summary = summary_line(diagnostics)
            return _record(ctx, lease, {"diagnostics": diagnostics}, 1, summary)
        if kind == "candidates":
            scores = score(ctx, evaluation_id, watch)
            return _record(ctx, lease, {"scores": scores}, 1, scoring_line(scores))
        if kind == PROFILE:
            plan = _plan(ctx, evaluation_id)
            profile, save = reference_profile(ctx, evaluation_id, plan, plan.splits[0], watch)
            line = f"profile of {plan.model}: top-1 {profile.accuracy:.3f} on {plan.splits[0]}"
            return _record(ctx, lease, {"profile": profile.summary()}, 1, line, save)
        results = evaluate(ctx, evaluation_id, watch)
        summary = ", ".join(f"{s} {m[SERVED_HEAD]['top1']:.3f}" for s, m in results.items())
        return _record(ctx, lease, results, len(results), summary, first_profile(ctx, lease, watch))
    except Cancelled as exc:
        return _stopped(ctx, watch, str(exc))
    except (OperationalError, InterfaceError):
        # Not the evaluation's fault: it stays ours (the lease runs out if we die) and the
        # task is delivered again.
        raise
    except ModelsError as exc:
        return _failed(ctx, lease, error_code(exc), str(exc))
    except Exception as exc:  # a bug or an environment failure: fail it, keep the worker
        log.exception("evaluation %s failed", evaluation_id)
        return _failed(ctx, lease, "internal_error", f"{type(exc).__name__}: {exc}")


def _plan(ctx: WorkerContext, evaluation_id: str) -> Plan:
    """The version and dataset the evaluation names, as they are now: either may have been
    deleted (or the version replaced) since it was queued."""
    with ctx.sessions() as session:
        row = _row(session, evaluation_id)
        folder = _version_folder(ctx, session, row)
        dataset = _dataset(session, row)
        return Plan(row.model, folder, dataset, list(row.splits))


def _row(session: Session, evaluation_id: str) -> Evaluation:
    row = session.get(Evaluation, evaluation_id)
    if row is None:
        raise ModelsError(f"evaluation {evaluation_id} disappeared")
    return row


def _version_folder(ctx: WorkerContext, session: Session, row: Evaluation) -> str:
    """This machine's copy of the version ``row`` names, still READY and the same bytes."""
    version = session.get(ModelVersion, row.version_id) if row.version_id else None
    same = version is not None and (version.name, version.version, version.digest) == (
        row.model_name,
        row.model_version,
        row.model_digest,
    )
    if version is None or not same or version.status != VersionStatus.READY:
        raise ModelsError(f"model {row.model} was deleted before it could be evaluated")
    key = registry.version_key(version.name, version.version)
    return str(ctx.store.local_path(key, version.digest))


def _dataset(session: Session, row: Evaluation) -> Dataset:
    dataset = session.get(Dataset, row.dataset_id)
    if dataset is None or dataset.deleted_at is not None:
        raise ModelsError(f"dataset {row.dataset_id} was deleted before it could be evaluated")
    session.expunge(dataset)
    return dataset


def open_checked(dataset: Dataset, path: Path) -> DatasetSplits:
    """The dataset (at ``path``, this machine's copy) confined to its own folder, as at
    registration, and unchanged since."""
    ds = open_dataset(path, within=dataset_root(path))
    if ds.fingerprint != dataset.fingerprint:
        raise DataError(f"dataset {dataset.id} changed on disk since it was registered")
    return ds


def relabel(
    ds: DatasetSplits, classnames: Sequence[str]
) -> tuple[dict[str, list[Sample]], dict[str, Scoring]]:
    """The dataset's samples and scoring rules with labels as indices of ``classnames`` (the
    model's order): classes are matched by name, so a dataset may list them in any order."""
    if set(ds.classnames) != set(classnames):
        raise DataError(
            f"the dataset's classes {sorted(ds.classnames)} are not the model's "
            f"{sorted(classnames)}"
        )
    index = {name: i for i, name in enumerate(classnames)}
    to_model = [index[name] for name in ds.classnames]
    splits = {
        name: [dataclasses.replace(s, label=to_model[s.label]) for s in samples]
        for name, samples in ds.splits.items()
    }
    scoring = {
        name: dataclasses.replace(
            rule,
            classes=None if rule.classes is None else tuple(to_model[k] for k in rule.classes),
        )
        for name, rule in ds.scoring.items()
    }
    return splits, scoring


def evaluate(ctx: WorkerContext, evaluation_id: str, watch: LeaseWatch) -> Results:
    """Every head's metrics on each split, with an event (and the lease renewed) per split."""
    plan = _plan(ctx, evaluation_id)
    ds = open_checked(plan.dataset, dataset_path(ctx, plan.dataset))
    device = resolve_device(ctx.settings.device)
    classifier: Classifier = load_artifact(plan.folder, device=device).classifier
    samples, scoring = relabel(ds, classifier.classnames)
    transform = classifier.backbone.transform(train=False)
    results: Results = {}
    for done, split in enumerate(plan.splits, start=1):
        ds.split(split)  # a DataError naming the splits there are, should one have gone
        data = ImageDataset(samples[split], classifier.classnames, transform)
        metrics = evaluate_split(
            classifier,
            data,
            should_stop=watch.should_stop,
            scoring=scoring.get(split),
        )
        results[split] = json_safe(metrics, finite=True, fallback=str)
        if not watch.renew(done):
            raise Cancelled(f"stopped after split {split}")
        _split_event(watch, split, results[split])
    return results


def _frozen_config(
    ctx: WorkerContext, evaluation_id: str
) -> tuple[RunConfig, DatasetSplits, dict[str, Any], str]:
    """A frozen-backbone evaluation's run config (its backbone on this machine, its dataset
    checked and confined as a job's), the opened dataset, the stored config and the split."""
    with ctx.sessions() as session:
        row = _row(session, evaluation_id)
        config, split = dict(row.config), row.splits[0]
        backbone = dict(config["backbone"])
        if row.version_id is not None:  # a registry backbone: this machine's copy of it
            backbone["arch"] = _version_folder(ctx, session, row)
        else:
            check_server_paths(ctx.settings, backbone["arch"], backbone.get("pretrained"))
        dataset = _dataset(session, row)
    path = dataset_path(ctx, dataset)
    ds = open_checked(dataset, path)
    # As a job's config: every file confined to the dataset's own folder.
    cfg = from_dict(
        RunConfig,
        {
            "backbone": backbone,
            "head": config["head"],
            "data": {
                "path": str(path),
                "within": str(dataset_root(path)),
                "train_split": split,
                "check_images": False,
            },
            "train": {"device": ctx.settings.device},
        },
    )
    return cfg, ds, config, split


def diagnose(ctx: WorkerContext, evaluation_id: str, watch: LeaseWatch) -> dict[str, Any]:
    """Description diagnostics (models.diagnostics): the frozen backbone's concept head, built
    from the evaluation's descriptions, on its split's images, against its default head; with
    ``compare`` in the config, another set's concept head on the same images beside it and
    the differences. JSON-ready, with an event."""
    cfg, ds, config, split = _frozen_config(ctx, evaluation_id)
    samples = ds.split(split)  # a DataError naming the splits there are, should it have gone
    classifier = build_classifier(cfg, ds.classnames, config["descriptions"])
    compare = config.get("compare")
    heads = frozen_head_probs(
        cfg,
        classifier,
        samples,
        ds.classnames,
        compare["descriptions"] if compare else None,
        watch.should_stop,
    )
    labels, groups = [s.label for s in samples], [s.group for s in samples]

    def of(concept: Tensor) -> dict[str, Any]:
        found = description_diagnostics(concept, labels, ds.classnames, heads["default"], groups)
        return dict(json_safe(found, finite=True, fallback=str))

    diagnostics = of(heads["concept"])
    if compare:
        other = of(heads["other"])
        diagnostics["compared"] = {
            "description_set": compare["description_set"],
            **other,
            "difference": set_difference(diagnostics, other),
        }
    if not watch.renew(1):
        raise Cancelled(f"stopped after split {split}")
    line = summary_line(diagnostics)
    message = f"{line[0].upper()}{line[1:]}"
    data = {
        "split": split,
        "n": diagnostics["images"],
        "concept_top1": diagnostics["concept_top1"],
        "default_top1": diagnostics["default_top1"],
        "accepted": diagnostics["accepted"],
        "weak": diagnostics["weak"],
    }
    if compare:
        delta = diagnostics["compared"]["difference"]["concept_top1"]
        message += (
            f". Set {compare['description_set']} on the same images: concept head "
            f"{diagnostics['compared']['concept_top1']:.1%} ({delta:+.1%}), "
            + ("accepted" if diagnostics["compared"]["accepted"] else "not accepted")
        )
        data["compared_concept_top1"] = diagnostics["compared"]["concept_top1"]
    watch.record(message, data)
    return diagnostics


def reference_profile(
    ctx: WorkerContext, evaluation_id: str, plan: Plan, split: str, watch: LeaseWatch
) -> tuple[Profile, AlsoStore]:
    """The version's shift-monitoring reference on a labelled ID split (``models.monitoring``),
    with an event, and what stores it with the evaluation's result."""
    ds = open_checked(plan.dataset, dataset_path(ctx, plan.dataset))
    device = resolve_device(ctx.settings.device)
    classifier: Classifier = load_artifact(plan.folder, device=device).classifier
    samples, _ = relabel(ds, classifier.classnames)
    ds.split(split)  # a DataError naming the splits there are, should it have gone
    transform = classifier.backbone.transform(train=False)
    data = ImageDataset(samples[split], classifier.classnames, transform)
    profile = profile_split(classifier, data, should_stop=watch.should_stop)
    summary = profile.summary()
    watch.record(
        f"Monitoring profile on {split}: {summary['n']} images, top-1 {profile.accuracy:.4f}, "
        f"head disagreement {profile.disagreement:.4f}",
        {"split": split, "n": summary["n"], "top1": profile.accuracy},
    )
    with ctx.sessions() as session:
        version_id = _row(session, evaluation_id).version_id

    def save(session: Session) -> None:
        version = session.get(ModelVersion, version_id) if version_id is not None else None
        if version is not None:  # deleted meanwhile: nothing to monitor
            monitor_store.save_profile(
                session, version, profile, plan.dataset.id, split, evaluation_id
            )

    return profile, save


def first_profile(ctx: WorkerContext, lease: Lease, watch: LeaseWatch) -> AlsoStore | None:
    """An evaluation of a version without a monitoring profile (one imported, say) that
    measured its validation split also makes its profile there: one more pass over it."""
    with ctx.sessions() as session:
        row = _row(session, lease.task_id)
        version = session.get(ModelVersion, row.version_id) if row.version_id else None
        if version is None or monitor_store.profile_row(session, version.id) is not None:
            return None
        split = profile_split_name(version)
    plan = _plan(ctx, lease.task_id)
    if split not in plan.splits:
        return None
    return reference_profile(ctx, lease.task_id, plan, split, watch)[1]


def _split_event(watch: LeaseWatch, split: str, metrics: Mapping[str, Any]) -> None:
    top1 = {head: m.get("top1") for head, m in metrics.items()}
    served = metrics[SERVED_HEAD]
    message = f"{split}: top-1 {served['top1']:.4f} ({SERVED_HEAD} head) on {served['n']} images"
    watch.record(message, {"split": split, "n": served["n"], "top1": top1})


def _record(
    ctx: WorkerContext,
    lease: Lease,
    results: dict[str, Any],
    done: int,
    summary: str,
    also: AlsoStore | None = None,
) -> Outcome:
    """Results (and ``also``'s) and ``succeeded`` in one transaction, only while the lease is
    ours."""
    with ctx.sessions() as session:
        values = {"results": json_safe(results, finite=True, fallback=str), "progress_step": done}
        succeeded = EvaluationStatus.SUCCEEDED
        if not state.finish(session, lease.task_id, lease.attempt, succeeded, values=values):
            # Cancelled (or taken over) after the last batch: the cancel stands.
            session.rollback()
            lease.lose()
            return Outcome("cancelled", "stopped before the results were recorded")
        if also is not None:
            also(session)
        state.add_event(session, lease.task_id, "The evaluation has successfully completed")
        session.commit()
    return Outcome("succeeded", summary)


def _stopped(ctx: WorkerContext, watch: LeaseWatch, where: str) -> Outcome:
    # Nothing to resume: a released evaluation starts over.
    stop = Stop("Worker stopping: back in the queue")
    return stopped(ctx, state.EVALUATIONS, watch.lease, where, stop)


def _failed(ctx: WorkerContext, lease: Lease, code: str, message: str) -> Outcome:
    return failed(ctx, state.EVALUATIONS, lease, code, message)


def score(ctx: WorkerContext, evaluation_id: str, watch: LeaseWatch) -> dict[str, Any]:
    """Candidate descriptions scored on the training split (models.description_scoring) with
    the frozen backbone, and the proposed set; JSON-ready, with an event."""
    cfg, ds, config, split = _frozen_config(ctx, evaluation_id)
    ds.split(split)  # a DataError naming the splits there are, should it have gone
    scores: dict[str, Any] = json_safe(
        score_dataset(
            cfg,
            config["candidates"],
            reference=config.get("reference"),
            rule=ScoringRule(**config["rule"]),
            should_stop=watch.should_stop,
        ),
        finite=True,
        fallback=str,
    )
    if not watch.renew(1):
        raise Cancelled(f"stopped after split {split}")
    data = {
        "split": split,
        "candidates": scores["candidates"],
        "proposed_concept_top1": scores["proposed_concept_top1"],
        "weak": scores["weak_classes"],
    }
    watch.record(scoring_line(scores), data)
    return scores


def scoring_line(scores: dict[str, Any]) -> str:
    dropped = sum(not c["kept"] for v in scores["per_class"].values() for c in v["candidates"])
    weak = scores["weak_classes"]
    return (
        f"Scored {scores['candidates']} candidates on {scores['images']} training images: "
        f"{dropped} dropped; the proposed set's concept head gets "
        f"{scores['proposed_concept_top1']:.1%} (the template baseline "
        f"{scores['baseline_top1']:.1%})"
        + (f"; no candidate passes for {', '.join(weak[:10])}" if weak else "")
    )
