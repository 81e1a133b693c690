"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.cached_models = Gauge(
            "rcs_model_cache_models", "Models in the inference cache", registry=self.registry
        )
        self.cached_bytes = Gauge(
            "rcs_model_cache_bytes",
            "Bytes of models in the inference cache",
            registry=self.registry,
        )


def route_of(request: Request) -> str:
    # The route template (/jobs/{job_id}), not the path: ids would explode the label space.
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def middleware(
    metrics: Metrics,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def record(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = route_of(request)
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    return record
