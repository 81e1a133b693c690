"""Settings, read from ``RCS_*`` environment variables and validated once at start.

The API and the worker read the same settings so both sides agree on the database, the broker
and where artifacts live. Outside ``RCS_ENV=local`` placeholder secrets and disabled auth are
refused: a deployment must fail at start, not run open.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from service.queue import TRAINING_QUEUE

PLACEHOLDERS = frozenset({"", "changeme", "change-me", "changethis", "secret", "password", "xxx"})
DEFAULT_ROOT = Path("runs/service")


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.replace(";", ",").split(",") if item.strip()]
    return value


def _placeholder_password(url: str) -> bool:
    """``user:@host`` or ``user:changeme@host``; a URL without a password (trust, peer or IAM
    authentication, SQLite) is fine."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return False
    return password is not None and password.strip().lower() in PLACEHOLDERS


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting must not print the others (database password,
    # API key) into the deployment's logs.
    model_config = SettingsConfigDict(env_prefix="RCS_", extra="ignore", hide_input_in_errors=True)

    env: Literal["local", "production"] = "production"
    database_url: str = f"sqlite:///{DEFAULT_ROOT}/rcs.db"
    broker_url: str = f"sqla+sqlite:///{DEFAULT_ROOT}/broker.db"
    # One queue per pool of identical GPUs; the API sends every training job here.
    training_queue: str = TRAINING_QUEUE
    # Where artifacts, uploaded datasets and job checkpoints live (service/storage.py): unset,
    # artifacts under RCS_ARTIFACTS_URL and the rest under RCS_WORK_DIR, on this machine; a
    # folder (a shared mount), all three under it; an object store URL (s3://bucket/prefix,
    # credentials from the usual AWS variables or profile, never in the URL), all three in the
    # bucket, and machines share nothing else but the database and the broker.
    storage_url: str | None = None
    # Artifacts only, when RCS_STORAGE_URL is unset: a folder, or any fsspec URL.
    artifacts_url: str = str(DEFAULT_ROOT / "artifacts")
    # Local scratch: uploaded datasets and job checkpoints (unless RCS_STORAGE_URL says
    # otherwise), the attempts' own files, and the cache of downloads from remote storage.
    work_dir: Path = DEFAULT_ROOT / "work"
    # Bytes the cache of downloads from remote storage (datasets, artifacts) may keep on this
    # machine; the least recently used go first, never one a running job is using.
    cache_bytes: int = Field(default=20 * 1024**3, ge=0)
    # Server-side dataset folders may only be registered from under these roots.
    allowed_dataset_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # Server-side model folders (open_clip local-dir models, pretrained weight files) a job may
    # start from; empty: none, only architectures, the offline backbone and registry versions.
    allowed_model_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    auto_migrate: bool = True

    auth_disabled: bool = False
    # Seconds an API key's scopes and a model reference's version are remembered (service/
    # lookups.py): a change made through another process is seen after at most this long; one
    # made through this process, at once. 0: look both up in the database on every request.
    lookup_cache_s: float = Field(default=1.0, ge=0, le=60)
    # Inserted (hashed) at start with both scopes, so a fresh deployment has a first key.
    bootstrap_api_key: str | None = None

    # open_clip's hf-hub: models download at training time; off by default (and always off with
    # HF_HUB_OFFLINE=1), so a job cannot ask an offline or locked-down server to fetch weights.
    allow_hub_models: bool = False

    # Processes of `python -m service serve` (its --workers wins). Each holds its own copy of
    # the models it serves and batches its own requests; on CPU, one per core with
    # RCS_TORCH_THREADS=1 serves the most images (bench/peer.py).
    api_workers: int = Field(default=1, ge=1)
    # With several processes, each listens on a socket of its own (SO_REUSEPORT, the kernel
    # spreads connections; service/listen.py). Off by default: one shared socket, as uvicorn
    # does; an A/B on 2 processes showed no reliable throughput difference (benchmarks/peer.md).
    api_reuse_port: bool = False
    default_model: str | None = None
    model_cache_bytes: int = 2 * 1024**3
    device: str = "auto"
    torch_threads: int = 0

    max_upload_bytes: int = 2 * 1024**3
    max_extracted_bytes: int = 8 * 1024**3
    # Parameters a model import may have (POST /models/{name}/versions), counted from its config
    # and weight headers before anything is built: about 4 bytes each once served. A ViT-L-14
    # (428 M) fits; past it, 413.
    max_import_params: int = Field(default=500_000_000, ge=1)
    # Dataset archives: members at most, and unpacked/packed size ratio at most (zip bombs).
    max_archive_files: int = Field(default=100_000, ge=1)
    max_archive_ratio: float = Field(default=100.0, gt=1)
    # Unpacked bytes of uploaded datasets one API key may keep (DELETE /datasets frees them),
    # and uploads one key may have unpacking at once in this process.
    upload_quota_bytes: int = Field(default=50 * 1024**3, ge=0)
    max_concurrent_uploads: int = Field(default=2, ge=1)
    max_predict_bytes: int = 16 * 1024**2
    max_images_per_request: int = 64
    max_image_pixels: int = 40_000_000

    # Dynamic batching of /predict: concurrent requests for a model share one forward pass of up
    # to predict_max_batch images. A pass leaves at once unless other requests for the model are
    # admitted and still decoding; then it waits for them, at most predict_max_wait_ms after its
    # oldest request queued (a lone request never waits). Off, each request runs its own pass
    # (the naive baseline bench/serve.py compares against).
    predict_batching: bool = True
    predict_max_batch: int = Field(default=32, ge=1)
    predict_max_wait_ms: float = Field(default=5.0, ge=0)
    # Images admitted per model (decoding, queued or in a pass) before /predict answers 429.
    predict_max_queue: int = Field(default=256, ge=1)
    # On: a JPEG whose shorter side is at least 4 times the model's input size is decoded at a
    # reduced scale that keeps at least twice the input size (service/predict/service.py). Off
    # by default: it changes probabilities by up to a few hundredths (bench/decode.py), so
    # served answers would differ from the evaluation the version was selected on.
    predict_jpeg_draft: bool = False
    # Threads that decode and preprocess images off the event loop (0: min(4, CPU count)).
    predict_decode_threads: int = Field(default=0, ge=0)
    # What runs a loaded model's forward pass: torch; ONNX Runtime over the version's ONNX
    # export (made on first load, verified against torch, cached under onnx_dir by digest); or
    # auto: on the CPU, both are timed when the model loads and ONNX Runtime serves it when it is
    # at least 1.2x faster (a convolutional tower such as the offline backbone's; a ViT gains
    # little), torch otherwise and on a GPU. The log says what was chosen, with the timings. A
    # model that cannot be exported is served by torch, with a warning in the log.
    predict_engine: Literal["auto", "torch", "onnxruntime"] = "auto"
    # Another engine for some models, by registered name: "shapes=onnxruntime,cams=torch" or
    # the JSON object {"shapes": "onnxruntime"} (those whose towers gain from ONNX Runtime,
    # while the rest stay on torch, or back); empty: none.
    predict_engine_by_model: Annotated[
        dict[str, Literal["auto", "torch", "onnxruntime"]], NoDecode
    ] = Field(default_factory=dict)

    # Shift monitoring of /predict traffic (service/monitor/): windows of monitor_window
    # images per version (or fewer, at least monitor_min_window, once the oldest is
    # monitor_window_s old), flagged when the drift test's p-value is under monitor_alpha, with
    # an event when the estimated accuracy falls monitor_accuracy_drop below the reference's.
    monitor: bool = True
    monitor_window: int = Field(default=256, ge=8, le=100_000)
    monitor_min_window: int = Field(default=32, ge=8, le=100_000)
    monitor_window_s: float = Field(default=3600.0, gt=0)
    monitor_alpha: float = Field(default=0.01, gt=0, lt=1)
    monitor_accuracy_drop: float = Field(default=0.05, gt=0, lt=1)
    # Seconds between an API process's writes of what it served to the database.
    monitor_flush_s: float = Field(default=1.0, gt=0, le=60)
    # Closed windows per version whose images are kept (for feedback); older images go.
    monitor_keep_windows: int = Field(default=100, ge=1)

    # Server-sent event streams (GET /jobs/{id}/events?stream=true) open at once, per API key
    # and in all, before a new one is refused with 429.
    stream_max_per_key: int = Field(default=20, ge=1)
    stream_max_total: int = Field(default=100, ge=1)

    # What one connection may cost before the app sees its request (service/server.py): a head
    # (request line and headers) over max_header_bytes or with more than max_headers fields is
    # 431; a head not complete header_timeout_s after it began, or a body with nothing for
    # body_timeout_s or slower than body_min_bytes_per_s after it (0: no rate floor), is 408.
    # Connections one client address may hold open to each API process (0: no cap); behind a
    # reverse proxy every client has the proxy's address, so raise it or let the proxy cap.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024**2)
    max_headers: int = Field(default=100, ge=10, le=10_000)
    header_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    body_min_bytes_per_s: float = Field(default=500.0, ge=0)
    max_connections_per_client: int = Field(default=128, ge=0)

    # Must exceed the longest job: Redis re-delivers unacknowledged messages after it.
    visibility_timeout_s: int = 48 * 3600
    # A running job whose worker stopped renewing this lease may be taken over.
    lease_s: int = 300
    checkpoint_every: int = 200
    # The worker touches this file every few seconds; its container healthcheck reads the age.
    worker_heartbeat_file: Path = Path("/tmp/rcs-worker-heartbeat")
    readiness_timeout_s: float = 2.0

    # Candidate descriptions one POST /descriptions/score or /draft may score (each is one
    # pass over the training images' features; thousands belong in several requests).
    max_score_candidates: int = Field(default=1000, ge=1)
    # POST /descriptions/draft: the operator's language model, any server speaking OpenAI's
    # chat completions (vLLM, Ollama, llama.cpp's server, OpenAI). Unset: the route answers 501.
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None  # sent as a bearer token; never logged or echoed
    llm_timeout_s: float = Field(default=60.0, gt=0, le=600)
    llm_max_response_bytes: int = Field(default=1024**2, ge=1024)

    @field_validator("llm_base_url", "llm_model", "llm_api_key", mode="before")
    @classmethod
    def _blank_llm_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: object) -> object:
        for name in ("allowed_dataset_roots", "allowed_model_roots"):
            if isinstance(data, dict) and name in data:
                data = {**data, name: _split_list(data[name])}
        return data

    @field_validator("predict_engine_by_model", mode="before")
    @classmethod
    def _engine_map(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object: {exc}") from exc
        pairs = [item.strip() for item in text.split(",") if item.strip()]
        if any("=" not in pair for pair in pairs):
            raise ValueError('expected "name=engine,..." or a JSON object')
        return {k.strip(): v.strip() for k, v in (pair.split("=", 1) for pair in pairs)}

    @field_validator("storage_url", mode="before")
    @classmethod
    def _storage_url(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and "://" in value and urlsplit(value).password is not None:
            # The URL is written into version cards and logs: credentials never go there.
            raise ValueError(
                "must not contain credentials: give them in AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or a profile (AWS_PROFILE)"
            )
        return value.rstrip("/") if isinstance(value, str) else value

    @field_validator("default_model", "bootstrap_api_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        # Compose passes unset optional variables as empty strings.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _monitor_window(self) -> Settings:
        if self.monitor_min_window > self.monitor_window:
            raise ValueError("RCS_MONITOR_MIN_WINDOW is larger than RCS_MONITOR_WINDOW")
        return self

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.env == "local":
            return self
        if self.auth_disabled:
            raise ValueError("RCS_AUTH_DISABLED is only allowed with RCS_ENV=local")
        key = self.bootstrap_api_key
        if key is not None and (key.strip().lower() in PLACEHOLDERS or len(key) < 16):
            raise ValueError("RCS_BOOTSTRAP_API_KEY is a placeholder or shorter than 16 chars")
        for word in ("changeme", "changethis", ":password@"):
            if word in self.database_url:
                raise ValueError("RCS_DATABASE_URL contains a placeholder password")
        for name, url in (
            ("RCS_DATABASE_URL", self.database_url),
            ("RCS_BROKER_URL", self.broker_url),
        ):
            if _placeholder_password(url):
                raise ValueError(f"{name} has an empty or placeholder password")
        return self

    @property
    def remote_storage(self) -> bool:
        """Whether RCS_STORAGE_URL is an object store (anything but a local folder)."""
        url = self.storage_url
        return url is not None and "://" in url and not url.startswith("file://")

    @property
    def shared_root(self) -> Path | None:
        """RCS_STORAGE_URL as a local folder (a shared mount), or None."""
        if self.storage_url is None or self.remote_storage:
            return None
        return Path(self.storage_url.removeprefix("file://"))

    @property
    def artifacts_location(self) -> str:
        """Where artifacts go: under RCS_STORAGE_URL if set, else RCS_ARTIFACTS_URL."""
        if self.storage_url is not None:
            return f"{self.storage_url}/artifacts"
        return self.artifacts_url

    @property
    def uploads_dir(self) -> Path:
        """Uploaded datasets, unpacked (a folder storage; an object store keeps archives)."""
        return (self.shared_root or self.work_dir) / "datasets"

    @property
    def jobs_dir(self) -> Path:
        """Each job's folder: its attempts' scratch, and its published checkpoints unless the
        storage is an object store (service/storage.py, worker/checkpoints.py)."""
        return (self.shared_root or self.work_dir) / "jobs"

    @property
    def cache_dir(self) -> Path:
        """Downloads from an object store: datasets and artifacts, LRU within cache_bytes."""
        return self.work_dir / "cache"

    @property
    def onnx_dir(self) -> Path:
        """ONNX exports of versions, one file per artifact digest (RCS_PREDICT_ENGINE, and
        GET /models/{name}/versions/{v}/onnx)."""
        return self.work_dir / "onnx"


def settings_from_env() -> Settings:
    """The settings, or exit with one line naming each refused setting and why.

    For the processes' start: an operator needs the variable to fix, not a traceback through
    pydantic's internals.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(f"refusing to start: {describe_settings_error(exc)}") from None
    except SettingsError as exc:  # a value pydantic-settings could not even parse
        raise SystemExit(f"refusing to start: {exc}") from None


def describe_settings_error(exc: ValidationError) -> str:
    """``RCS_NAME: problem; ...``, without the values (one may be a secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        field = error["loc"][0] if error["loc"] else None
        problems.append(f"RCS_{str(field).upper()}: {message}" if field else message)
    return "; ".join(problems)
