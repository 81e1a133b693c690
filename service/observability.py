"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rcs_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rcs_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.jobs_created = Counter(
            "rcs_jobs_created_total", "Fine-tuning jobs created", registry=self.registry
        )
        self.predicted_images = Counter(
            "rcs_predicted_images_total", "Images classified", registry=self.registry
        )
        self.predict_batches = Counter(
            "rcs_predict_batches_total",
            "Forward passes run for /predict (fewer than requests when batching works)",
            registry=self.registry,
        )
        self.predict_batch_images = Histogram(
            "rcs_predict_batch_images",
            "Images per /predict forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.predict_rejected = Counter(
            "rcs_predict_rejected_total",
            "/predict requests refused with 429 because the model's queue was full",
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "rcs_event_streams_open",
            "Server-sent event streams of job events open now",
            registry=self.registry,
        )
        self.cached_models = Gauge(
            "rcs_model_cache_models", "Models in the inference cache", registry=self.registry
        )
        self.cached_bytes = Gauge(
            "rcs_model_cache_bytes",
            "Bytes of models in the inference cache",
            registry=self.registry,
        )
        self.loaded_models = Gauge(
            "rcs_model_loaded",
            "Models loaded in this process (1 each), with the engine and the intra-op threads "
            "their passes run on, chosen when each was loaded (RCS_PREDICT_ENGINE, "
            "RCS_TORCH_THREADS; threads 'default': the engine's own count)",
            ["model", "version", "engine", "threads"],
            registry=self.registry,
        )

    def observe_batch(self, images: int) -> None:
        self.predicted_images.inc(images)
        self.predict_batches.inc()
        self.predict_batch_images.observe(images)


class RecordMetrics:
    """Pure ASGI middleware (not ``BaseHTTPMiddleware``): it runs the app in the same task, so an
    exception from the body stream (``BodyTooLarge``) reaches the size limit unwrapped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics: Metrics | None = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # The route template (/jobs/{job_id}), not the path: ids would explode the labels.
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.requests.labels(scope["method"], route, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - started)
