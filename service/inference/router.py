"""The Open Inference Protocol's REST routes (KServe V2; what Triton, KServe and MLServer
speak): health, server and model metadata, model readiness and ``infer``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from models._version import __version__
from service.auth.deps import AnyKey, PredictKey
from service.context import AppContext
from service.deps import Ctx
from service.errors import BadRequest
from service.health.service import readiness
from service.inference import service
from service.limits import body_limit
from service.predict.service import resolve

router = APIRouter(prefix="/v2", tags=["inference (Open Inference Protocol)"])
# The protocol's error body, {"error": "<message>"} (service/inference/errors.py).
PROTOCOL_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"content": {"application/json": {"example": {"error": "what is wrong"}}}}
    for status in (400, 401, 403, 404, 409, 413, 422, 429)
}


@router.get("")
def server_metadata() -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return {
        "name": "robust-clip",
        "version": __version__,
        "extensions": ["binary_tensor_data", "classification"],
    }


@router.get("/health/live")
def live() -> dict[str, bool]:
    """The process is up."""
    return {"live": True}


@router.get("/health/ready", responses={400: {"description": "not ready"}})
async def ready(ctx: Ctx) -> Any:
    """Ready as ``/readyz`` (database, broker, default model); not ready is a 400, as the
    protocol has it."""
    ok, _ = await run_in_threadpool(readiness, ctx)
    return JSONResponse({"ready": ok}, 200 if ok else 400)


@router.get("/models/{name}", responses=PROTOCOL_ERRORS)
async def model_metadata(name: str, ctx: Ctx, _: AnyKey) -> dict[str, Any]:
    """Inputs, outputs, shapes and datatypes of the latest READY version of ``name`` (or of
    ``name@alias``), with its class names and preprocessing."""
    return await run_in_threadpool(service.model_metadata, ctx, service.reference(name, None))


@router.get("/models/{name}/versions/{version}", responses=PROTOCOL_ERRORS)
async def version_metadata(name: str, version: str, ctx: Ctx, _: AnyKey) -> dict[str, Any]:
    """As ``/v2/models/{name}``, for one version."""
    return await run_in_threadpool(service.model_metadata, ctx, service.reference(name, version))


@router.get("/models/{name}/ready", responses=PROTOCOL_ERRORS)
async def model_ready(name: str, ctx: Ctx, _: AnyKey) -> dict[str, Any]:
    """The version can serve: READY in the registry, loaded here (loading it if need be)."""
    return await _ready(ctx, service.reference(name, None))


@router.get("/models/{name}/versions/{version}/ready", responses=PROTOCOL_ERRORS)
async def version_ready(name: str, version: str, ctx: Ctx, _: AnyKey) -> dict[str, Any]:
    """As ``/v2/models/{name}/ready``, for one version."""
    return await _ready(ctx, service.reference(name, version))


async def _ready(ctx: AppContext, ref: str) -> dict[str, Any]:
    model = await run_in_threadpool(resolve, ctx, ref)
    return {"name": model.name, "version": str(model.version), "ready": True}


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {
                    "inputs": [
                        {"name": "images", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}
                    ],
                    "outputs": [{"name": "labels"}, {"name": "probabilities"}],
                    "parameters": {"top_k": 3},
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            },
        },
    }
}


ContentEncoding = Annotated[str | None, Header()]


@router.post("/models/{name}/infer", responses=PROTOCOL_ERRORS, openapi_extra=INFER_BODY)
@body_limit("max_predict_bytes")
async def infer(
    name: str, request: Request, ctx: Ctx, _: PredictKey, content_encoding: ContentEncoding = None
) -> Response:
    """Classify images given as BYTES (encoded files) or FP32 (preprocessed [N, 3, H, W]),
    on ``/predict``'s batcher and limits; Triton's binary tensor extension both ways."""
    return await _infer(ctx, request, service.reference(name, None), content_encoding)


@router.post(
    "/models/{name}/versions/{version}/infer",
    responses=PROTOCOL_ERRORS,
    openapi_extra=INFER_BODY,
)
@body_limit("max_predict_bytes")
async def infer_version(
    name: str,
    version: str,
    request: Request,
    ctx: Ctx,
    _: PredictKey,
    content_encoding: ContentEncoding = None,
) -> Response:
    """As ``/v2/models/{name}/infer``, on one version."""
    return await _infer(ctx, request, service.reference(name, version), content_encoding)


async def _infer(
    ctx: AppContext, request: Request, ref: str, content_encoding: str | None
) -> Response:
    if content_encoding not in (None, "", "identity"):
        raise BadRequest(f"Content-Encoding {content_encoding!r} is not accepted; send it plain")
    body = await request.body()
    parsed, _tail = service.parse(body, request.headers.get(service.HEADER_LENGTH))
    model, probs = await service.infer(ctx, ref, parsed)
    content, headers = service.render(*service.answer(model, parsed, probs))
    return Response(content, headers=headers)
