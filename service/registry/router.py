from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from models.errors import ModelsError
from models.report import report_png, robustness_report
from service.auth.deps import AnyKey, TrainKey
from service.db.tables import ModelVersion
from service.deps import Ctx, Db, Page
from service.errors import Conflict, NotFound
from service.registry import service
from service.registry.schemas import (
    AliasObject,
    AliasUpdate,
    ModelVersionObject,
    RegisteredModelObject,
)
from service.schemas import ERROR_RESPONSES, MAX_INT, ListResponse
from service.visibility import version_for

# Versions are 32-bit integers in the database; a larger number is a 422, not a driver error.
Version = Annotated[int, Path(ge=1, le=MAX_INT)]
router = APIRouter(prefix="/models", tags=["registry"], responses=ERROR_RESPONSES)


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
    (mean OOD vs ID top-1 along alpha), per-class and worst-group accuracy."""
    return _report(service.get_version(db, name, version))


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
    return Response(status_code=204)


@router.put("/{name}/aliases/{alias}", response_model=AliasObject)
def set_alias(name: str, alias: str, body: AliasUpdate, db: Db, _: TrainKey) -> AliasObject:
    row = service.set_alias(db, name, alias, body.version)
    return AliasObject.model_validate(row)


@router.get("/{name}/aliases/{alias}", response_model=ModelVersionObject)
def get_by_alias(name: str, alias: str, db: Db, key: AnyKey) -> ModelVersionObject:
    aliases = service.aliases_of(db, name)
    if alias not in aliases:
        service.get_model(db, name)
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    row = service.get_version(db, name, aliases[alias])
    return version_for(key, ModelVersionObject.of(row, aliases))


@router.delete("/{name}/aliases/{alias}", status_code=204)
def delete_alias(name: str, alias: str, db: Db, _: TrainKey) -> Response:
    service.delete_alias(db, name, alias)
    return Response(status_code=204)
