from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from models.errors import ModelsError
from models.report import report_png, robustness_report
from service.auth.deps import AnyKey, TrainKey
from service.auth.service import Principal
from service.db.tables import ModelVersion
from service.deps import Ctx, Db, Page
from service.errors import Conflict, InvalidRequest
from service.limits import body_limit
from service.monitor import service as monitor
from service.multipart import read_form
from service.predict.onnx import remove_export
from service.registry import service, transfer
from service.registry.schemas import (
    MAX_DESCRIPTION,
    AliasObject,
    AliasUpdate,
    MergeRequest,
    ModelVersionObject,
    RegisteredModelObject,
)
from service.schemas import ERROR_RESPONSES, MAX_INT, NAME_PATTERN, ListResponse
from service.visibility import version_for

# Versions are 32-bit integers in the database; a larger number is a 422, not a driver error.
Version = Annotated[int, Path(ge=1, le=MAX_INT)]
router = APIRouter(prefix="/models", tags=["registry"], responses=ERROR_RESPONSES)
IdempotencyKey = Annotated[str | None, Header(max_length=255)]
UPLOAD_FORM = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "description": {"type": "string"},
                    },
                }
            }
        }
    }
}


def _model_object(db: Db, name: str) -> RegisteredModelObject:
    row = service.get_model(db, name)
    return RegisteredModelObject.of(
        row, service.versions_of(db, name), service.aliases_of(db, name)
    )


@router.get("", response_model=ListResponse[RegisteredModelObject])
def list_models(db: Db, _: AnyKey, page: Page) -> ListResponse[RegisteredModelObject]:
    rows, more = service.list_models(db, page.after, page.limit)
    return ListResponse(data=[_model_object(db, r.name) for r in rows], has_more=more)


@router.get("/{name}", response_model=RegisteredModelObject)
def get_model(name: str, db: Db, _: AnyKey) -> RegisteredModelObject:
    return _model_object(db, name)


@router.get("/{name}/versions", response_model=ListResponse[ModelVersionObject])
def list_versions(name: str, db: Db, key: AnyKey) -> ListResponse[ModelVersionObject]:
    service.get_model(db, name)
    aliases = service.aliases_of(db, name)
    rows = service.versions_of(db, name)
    return ListResponse(data=[version_for(key, ModelVersionObject.of(r, aliases)) for r in rows])


@router.get("/{name}/versions/{version}", response_model=ModelVersionObject)
def get_version(name: str, version: Version, db: Db, key: AnyKey) -> ModelVersionObject:
    row = service.get_version(db, name, version)
    return version_for(key, ModelVersionObject.of(row, service.aliases_of(db, name)))


@router.get("/{name}/versions/{version}/report")
def get_report(name: str, version: Version, db: Db, _: AnyKey) -> dict[str, Any]:
    """The version's robustness report: the WiSE-FT curve (every split and head), the zero-shot
    baseline (alpha 0), the selected point and its gain over zero-shot, effective robustness
    (mean OOD vs ID top-1 along alpha), per-class and worst-group accuracy; ``monitoring``:
    the shift monitor's reference profile (None until one is computed)."""
    row = service.get_version(db, name, version)
    return {**_report(row), "monitoring": monitor.profile_of(db, row)}


@router.get(
    "/{name}/versions/{version}/report.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The plot"}},
)
def get_report_png(name: str, version: Version, db: Db, _: AnyKey) -> Response:
    """The version's effective-robustness plot: mean OOD vs ID top-1 along alpha, zero-shot
    starred, the selected alpha ringed."""
    row = service.get_version(db, name, version)
    _report(row)  # the same refusal as the JSON report for a card without a curve
    png = report_png(row.card, f"{row.name}/{row.version}")
    # The card never changes once written: a client may keep the picture.
    headers = {"Cache-Control": "private, max-age=86400"}
    return Response(png, media_type="image/png", headers=headers)


def _report(row: ModelVersion) -> dict[str, Any]:
    try:
        return robustness_report(row.card)
    except ModelsError as exc:
        raise Conflict(f"version {row.name}/{row.version} has no report: {exc}") from exc


@router.delete("/{name}/versions/{version}", status_code=204)
def delete_version(name: str, version: Version, ctx: Ctx, db: Db, _: TrainKey) -> Response:
    row = service.delete_version(db, name, version)
    ctx.models.evict(row.name, row.version)
    ctx.store.delete(service.version_key(row.name, row.version))
    if row.digest is not None and not service.digest_in_use(db, row.digest):
        # Its ONNX export (GET .../onnx, and every load under RCS_PREDICT_ENGINE=auto) goes with
        # the last version of those bytes.
        remove_export(ctx.settings.onnx_dir, row.digest)
    ctx.lookups.settle()  # answered once no API process can serve it from a cached lookup
    return Response(status_code=204)


@router.put("/{name}/aliases/{alias}", response_model=AliasObject)
def set_alias(
    name: str, alias: str, body: AliasUpdate, ctx: Ctx, db: Db, _: TrainKey
) -> AliasObject:
    row = service.set_alias(db, name, alias, body.version)
    ctx.lookups.settle()  # answered once every API process resolves the alias anew
    return AliasObject.model_validate(row)


@router.get("/{name}/aliases/{alias}", response_model=ModelVersionObject)
def get_by_alias(name: str, alias: str, db: Db, key: AnyKey) -> ModelVersionObject:
    row = service.alias_version(db, name, alias)
    return version_for(key, ModelVersionObject.of(row, service.aliases_of(db, row.name)))


@router.delete("/{name}/aliases/{alias}", status_code=204)
def delete_alias(name: str, alias: str, ctx: Ctx, db: Db, _: TrainKey) -> Response:
    service.delete_alias(db, name, alias)
    ctx.lookups.settle()
    return Response(status_code=204)


# --- transfer: import, export, re-merge (service/registry/transfer.py) ---


def _created(
    key: Principal, done: transfer.Registered, db: Db, response: Response
) -> ModelVersionObject:
    response.status_code = 201 if done.created else 200
    if not done.created:
        response.headers["Idempotent-Replayed"] = "true"
    version = ModelVersionObject.of(done.row, service.aliases_of(db, done.row.name))
    return version_for(key, version)


@router.post(
    "/{name}/versions",
    response_model=ModelVersionObject,
    status_code=201,
    openapi_extra=UPLOAD_FORM,
)
@body_limit("max_upload_bytes")
async def import_version(
    name: str,
    request: Request,
    response: Response,
    ctx: Ctx,
    db: Db,
    key: TrainKey,
    idempotency_key: IdempotencyKey = None,
) -> ModelVersionObject:
    """Register an artifact archive (.tar.gz/.tgz/.tar/.zip of the folder `python -m models
    finetune` writes) as the next version of ``name``; capped by RCS_MAX_UPLOAD_BYTES. Checked
    before anything is stored: files, card, sha256, shapes; nothing pickled is ever opened."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidRequest(
            f"{name!r} is not a model name: a letter or digit, then up to 99 letters, digits, "
            "'_', '.' or '-'",
            "name",
        )
    # Parsed here rather than by FastAPI so the size-limit middleware sees the stream first.
    form = await read_form(request, max_files=1, max_fields=4)
    try:
        upload, description = form.get("file"), form.get("description") or ""
        if not isinstance(upload, UploadFile):
            raise InvalidRequest(
                "a multipart 'file' part with the artifact archive is required", "file"
            )
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise InvalidRequest(
                f"'description' is text of at most {MAX_DESCRIPTION} characters", "description"
            )
        done = await run_in_threadpool(
            transfer.import_archive,
            ctx,
            db,
            key.key_id,
            name,
            (upload.filename or "", upload.file),
            description,
            idempotency_key,
        )
    finally:
        await form.close()
    return _created(key, done, db, response)


@router.get(
    "/{name}/versions/{version}/artifact",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "The artifact"}},
)
def export_version(name: str, version: Version, ctx: Ctx, db: Db, _: TrainKey) -> FileResponse:
    """The version's artifact as a .tar.gz of one folder, ``name-vN/``: unpacked, it loads with
    ``models.load_artifact`` and ``python -m models predict``, and imports back as it is.
    Weights need the ``train`` scope: they are the model itself, out of the service's control."""
    archive, digest = transfer.export_archive(ctx, db, name, version)
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=f"{name}-v{version}.tar.gz",
        headers={"X-Model-Digest": digest or ""},
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )


@router.get(
    "/{name}/versions/{version}/onnx",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "ONNX model"}},
)
def export_onnx(name: str, version: Version, ctx: Ctx, db: Db, _: TrainKey) -> FileResponse:
    """The version's served model as one ONNX file: image tower and dual head, input
    ``pixel_values`` (float32 [N, 3, H, W], preprocessed), output ``probabilities``; class names
    and preprocessing in its metadata. Verified against torch when first made, then kept by the
    artifact's digest. ``train``, as the artifact: it holds the weights."""
    path, digest = transfer.export_onnx_file(ctx, db, name, version)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{name}-v{version}.onnx",
        headers={"X-Model-Digest": digest or ""},
    )


@router.post("/{name}/versions/{version}/merge", response_model=ModelVersionObject, status_code=201)
def merge_version(
    name: str,
    version: Version,
    body: MergeRequest,
    response: Response,
    ctx: Ctx,
    db: Db,
    key: TrainKey,
    idempotency_key: IdempotencyKey = None,
) -> ModelVersionObject:
    """A new version of ``name``: version ``v`` re-merged at ``alpha`` (a point of its WiSE-FT
    curve) from its stored zero-shot and fine-tuned ends; its card keeps the curve, records the
    new selected alpha and, under ``source``, where it came from."""
    done = transfer.merge_version(
        ctx, db, key.key_id, (name, version), body.alpha, body.description, idempotency_key
    )
    return _created(key, done, db, response)
