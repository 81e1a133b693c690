"""The queue contract: task names, the queue, payloads, broker options.

It belongs to the sending side (the API); the worker imports it from here. Tasks are sent by
name with JSON payloads, so the API never imports the task modules (and with them torch-heavy
training code) and either side can be deployed on its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TASK_FINETUNE = "rcs.finetune"
TASK_EVALUATE = "rcs.evaluate"
TRAINING_QUEUE = "training"
JOB_ID_PATTERN = r"^ftjob-[0-9a-f]{24}$"
EVALUATION_ID_PATTERN = r"^eval-[0-9a-f]{24}$"


class FinetunePayload(BaseModel):
    """A task carries ids only; the worker reads everything else from the database."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(pattern=JOB_ID_PATTERN)


class EvaluatePayload(BaseModel):
    """An evaluation (of a registered version, or a backbone's descriptions) by id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    evaluation_id: str = Field(pattern=EVALUATION_ID_PATTERN)


def transport_options(broker_url: str, visibility_timeout_s: int) -> dict[str, Any]:
    if broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        # Longer than the longest job, or Redis re-delivers a running job to another worker.
        return {"visibility_timeout": visibility_timeout_s}
    # The SQLAlchemy transport passes its options to create_engine: only engine options here.
    return {}


def celery_config(broker_url: str, visibility_timeout_s: int) -> dict[str, Any]:
    """Celery settings shared by the sender (API) and the consumer (worker)."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options(broker_url, visibility_timeout_s),
        "broker_connection_retry_on_startup": True,
        # Job state lives in our database; Celery keeps no results.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": TRAINING_QUEUE,
        # Evaluations run on the same GPU workers as training: one model on a GPU at a time.
        "task_routes": {
            TASK_FINETUNE: {"queue": TRAINING_QUEUE},
            TASK_EVALUATE: {"queue": TRAINING_QUEUE},
        },
        # Ack after the task ends and take one message at a time: a worker that dies mid-job
        # leaves its message for another worker, and an idle worker never hoards jobs.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
    }
