from __future__ import annotations

import json

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.auth.deps import PredictKey
from service.deps import Ctx
from service.errors import BadRequest, InvalidRequest
from service.limits import body_limit
from service.multipart import read_parts
from service.predict import service
from service.predict.schemas import PredictJSON, PredictResponse
from service.schemas import ERROR_RESPONSES

router = APIRouter(tags=["predict"], responses=ERROR_RESPONSES)

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["model", "files"],
    "properties": {
        "model": {"type": "string"},
        "top_k": {"type": "integer", "default": 5},
        "monitor": {"type": "boolean", "default": True},
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": PredictJSON.model_json_schema()},
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            },
        }
    },
)
@body_limit("max_predict_bytes")
async def predict(request: Request, ctx: Ctx, _: PredictKey) -> PredictResponse:
    """Classify one or many images (multipart ``files`` or base64 JSON ``images``)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        ref, top_k, images, monitor = await _from_multipart(
            request, ctx.settings.max_images_per_request
        )
    elif content_type.startswith("application/json"):
        ref, top_k, images, monitor = await _from_json(request)
    else:
        raise BadRequest("send application/json or multipart/form-data")
    if ctx.settings.predict_batching:
        return await service.predict_batched(ctx, ref, images, top_k, monitor)
    return await run_in_threadpool(service.predict, ctx, ref, images, top_k, monitor)


async def _from_json(request: Request) -> tuple[str, int, list[service.ImageInput], bool]:
    try:
        body = PredictJSON.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param) from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc}") from exc
    return body.model, body.top_k, service.from_base64(body.images), body.monitor


async def _from_multipart(
    request: Request, max_files: int
) -> tuple[str, int, list[service.ImageInput], bool]:
    parts = await read_parts(request, max_files=max_files)
    ref = parts.field("model")
    if ref is None or not ref.strip():
        raise InvalidRequest("a 'model' field is required", "model")
    top_k = _top_k(parts.field("top_k"))
    monitor = _monitor(parts.field("monitor"))
    for key in ("files", "file"):
        if key in parts.fields:
            raise InvalidRequest(f"{key} must be file parts (with a filename)", key)
    uploads = [f for key in ("files", "file") for f in parts.files if f.name == key]
    images = [
        service.ImageInput(upload.data, upload.filename, f"files[{i}]")
        for i, upload in enumerate(uploads)
    ]
    if not images:
        raise InvalidRequest("no image files given (multipart field 'files')", "files")
    return ref.strip(), top_k, images, monitor


def _monitor(value: object) -> bool:
    if value is None:
        return True
    if not isinstance(value, str) or value.strip().lower() not in ("true", "false"):
        raise InvalidRequest("monitor must be true or false", "monitor")
    return value.strip().lower() == "true"


def _top_k(value: object) -> int:
    if value is None:
        return 5
    if not isinstance(value, str) or not value.isdecimal() or not 1 <= int(value) <= 1000:
        raise InvalidRequest("top_k must be an integer from 1 to 1000", "top_k")
    return int(value)
