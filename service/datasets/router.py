from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.auth.deps import AnyKey, TrainKey
from service.datasets import service
from service.datasets.schemas import MAX_NAME, DatasetFromPath, DatasetObject
from service.deps import Ctx, Db, Page
from service.errors import InvalidRequest
from service.limits import body_limit
from service.multipart import read_form
from service.schemas import ERROR_RESPONSES, ListResponse

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES)


@router.post("", response_model=DatasetObject)
def register_from_path(body: DatasetFromPath, ctx: Ctx, db: Db, key: TrainKey) -> DatasetObject:
    """Register a dataset folder (or .csv/.jsonl manifest) under an allowed server root."""
    row = service.register_path(db, ctx.settings, key.key_id, body.name, body.path)
    return DatasetObject.model_validate(row)


@router.post(
    "/upload",
    response_model=DatasetObject,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "name"],
                        "properties": {
                            "name": {"type": "string"},
                            "file": {"type": "string", "format": "binary"},
                        },
                    }
                }
            }
        }
    },
)
@body_limit("max_upload_bytes")
async def register_upload(request: Request, ctx: Ctx, db: Db, key: TrainKey) -> DatasetObject:
    """Upload a .zip or .tar(.gz) of an image folder; capped by RCS_MAX_UPLOAD_BYTES."""
    # Parsed here rather than by FastAPI so the size-limit middleware sees the stream first.
    form = await read_form(request, max_files=1, max_fields=4)
    try:
        upload, name = form.get("file"), form.get("name")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("a multipart 'file' part with the archive is required", "file")
        if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME:
            raise InvalidRequest(
                f"a 'name' field of 1 to {MAX_NAME} characters is required", "name"
            )
        row = await run_in_threadpool(
            service.register_upload,
            db,
            ctx.settings,
            key.key_id,
            name.strip(),
            upload.filename or "",
            upload.file,
            ctx.store,
        )
    finally:
        await form.close()
    return DatasetObject.model_validate(row)


@router.get("", response_model=ListResponse[DatasetObject])
def list_datasets(db: Db, _: AnyKey, page: Page) -> ListResponse[DatasetObject]:
    rows, more = service.list_all(db, page.after, page.limit)
    return ListResponse(data=[DatasetObject.model_validate(r) for r in rows], has_more=more)


@router.get("/{dataset_id}", response_model=DatasetObject)
def get_dataset(dataset_id: str, db: Db, _: AnyKey) -> DatasetObject:
    return DatasetObject.model_validate(service.get(db, dataset_id))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, ctx: Ctx, db: Db, _: TrainKey) -> Response:
    """Delete a dataset no queued or running job uses (409 otherwise).

    An upload's files are removed; a server path's files belong to their owner and stay. The
    record is kept hidden, so finished jobs that name the dataset still read back.
    """
    service.delete(db, ctx.settings, dataset_id, ctx.store)
    return Response(status_code=204)
