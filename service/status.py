"""The status vocabularies of jobs, evaluations and model versions, one home each.

A leaf module (it imports nothing of the service) so the tables, the schemas, the state
transitions and the worker all name the same members. Members are ``str``: the stored values
and the API's strings are the members' values, unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A fine-tuning job's state, in OpenAI's words. There is no validating_files: a request
    is validated before its job is stored, so no job could ever be seen in that state."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job in one of these states may still change; a terminal state never does.
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

# An evaluation is queued, claimed and finished as a job is, so it says so in the same words
# (and a client follows both with the same code).
EvaluationStatus = JobStatus


class VersionStatus(StrEnum):
    """MLflow's model-version vocabulary: created pending, READY once its artifact is stored."""

    PENDING = "PENDING_REGISTRATION"
    FAILED = "FAILED_REGISTRATION"
    READY = "READY"
