"""Decode images, resolve the model, run dual inference, keep the top k."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from PIL import Image
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from models.data import ImageError, ImageLimits, open_image
from models.monitoring import unpack
from service.context import AppContext
from service.errors import InvalidRequest, PayloadTooLarge, TooManyRequests
from service.lookups import Resolved
from service.predict.cache import LoadedModel, run, to_input
from service.predict.schemas import Label, Prediction, PredictResponse
from service.registry import service as registry

# A reduced-scale JPEG decode keeps at least this many times the model's input size, so the
# transform's own antialiased resize still does the last step (RCS_PREDICT_JPEG_DRAFT).
DRAFT_MARGIN = 2


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    filename: str | None
    param: str

    @cached_property
    def sha256(self) -> str:
        """What feedback names the image by (``POST .../feedback``)."""
        return hashlib.sha256(self.data).hexdigest()


def from_base64(items: list[str]) -> list[ImageInput]:
    return [
        ImageInput(_base64_image(text, i), None, f"images[{i}]") for i, text in enumerate(items)
    ]


def _base64_image(text: str, i: int) -> bytes:
    """Standard base64, bare or as a ``data:<type>;base64,<data>`` URL.

    Whitespace is ignored: MIME encoders (``base64`` on the command line, email libraries) wrap
    lines at 76 characters, and a line break carries no data.
    """
    param = f"images[{i}]"
    payload = text
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise InvalidRequest(
                f"image {i} is a data URL but not of the form 'data:<type>;base64,<data>'", param
            )
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"image {i} is not valid base64: {exc}", param) from exc


def decode(image: ImageInput, max_pixels: int, at_least: int | None = None) -> Image.Image:
    """The image under the library's image policy, its refusals mapped to 413 and 422;
    ``at_least``: as ``open_image`` takes it (a large JPEG decoded at a reduced scale)."""
    name = f"'{image.filename}'" if image.filename else image.param
    try:
        return open_image(image.data, ImageLimits(max_pixels=max_pixels), at_least=at_least)
    except ImageError as exc:
        error = PayloadTooLarge if exc.too_large else InvalidRequest
        raise error(f"image {name} {exc.problem}", image.param) from exc


def model_for(ctx: AppContext, session: Session, ref: str) -> LoadedModel:
    """The loaded model ``ref`` names now, per the registry (loading it if it is not)."""
    generation = ctx.lookups.generation
    row = registry.resolve(session, ref)
    key = registry.version_key(row.name, row.version)
    # The cache only answers for the exact artifact the registry lists (its identity).
    resolved = Resolved(row.name, row.version, registry.cache_key(row))
    model = ctx.models.get(
        row.name, row.version, lambda: ctx.store.local_path(key, row.digest), resolved.identity
    )
    ctx.lookups.remember_ref(ref, resolved, generation)
    return model


def cached_model(ctx: AppContext, ref: str) -> LoadedModel | None:
    """The loaded model ``ref`` named in the last ``lookup_cache_s``, without the database or
    a thread; None when it must be resolved (and perhaps loaded) by ``resolve``.

    A version deleted or an alias moved is seen at once: through this process, the lookups
    are cleared on commit; through another one, its answer waits until no entry older than
    the change is left (``service/lookups.py``).
    """
    resolved = ctx.lookups.refs.get(ref)
    if resolved is None:
        return None
    return ctx.models.peek(resolved.name, resolved.version, resolved.identity)


def check_count(images: list[ImageInput], limit: int) -> None:
    if len(images) > limit:
        raise PayloadTooLarge(f"{len(images)} images in one request, over the limit of {limit}")
    if not images:
        raise InvalidRequest("no images given", "images")


def preprocess(
    model: LoadedModel, images: list[ImageInput], max_pixels: int, draft: bool = False
) -> Tensor:
    """Decode and transform every image on the CPU, ready to batch: uint8 (N, H, W, C) when
    the model's transform splits (normalised later, per batch), else float (N, C, H, W).

    ``draft``: a JPEG far larger than the model's input is decoded at a reduced scale that
    keeps DRAFT_MARGIN times the input size, which the transform then resizes as before.
    """
    transform = model.pixels or model.transform
    at_least = DRAFT_MARGIN * max(model.classifier.backbone.image_size) if draft else None
    return torch.stack([transform(decode(image, max_pixels, at_least)) for image in images])


def forward(model: LoadedModel, images: Tensor) -> Tensor:
    """One forward pass (dual inference): (N, classes) probabilities on the CPU, packed with
    what the shift monitor reads from the same pass (``models.monitoring.served_pass``).

    Only the image tower runs: the class heads are precomputed rows of the loaded artifact.
    The model's engine (torch, or ONNX Runtime over its export, whose extra outputs are the
    same statistics) runs the pass.
    """
    return run(model, to_input(model, images))


def respond(
    model: LoadedModel, images: list[ImageInput], probs: Tensor, top_k: int
) -> PredictResponse:
    probs, _ = unpack(probs, len(model.classnames))
    k = min(top_k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    names = model.classnames
    data = [
        Prediction(
            index=i,
            filename=image.filename,
            sha256=image.sha256,
            labels=[
                Label(label=names[j], probability=float(p))
                for p, j in zip(values[i].tolist(), indices[i].tolist(), strict=True)
            ],
        )
        for i, image in enumerate(images)
    ]
    return PredictResponse(model=model.ref, data=data)


def resolve(ctx: AppContext, ref: str) -> LoadedModel:
    """``cached_model``, else ``model_for`` in a session of its own (one worker-thread hop per
    request, not three)."""
    model = cached_model(ctx, ref)
    if model is not None:
        return model
    with ctx.sessions() as session:
        return model_for(ctx, session, ref)


def monitored(
    ctx: AppContext, model: LoadedModel, images: list[ImageInput], out: Tensor, on: bool
) -> None:
    """Hand the pass's output to the shift monitor (``monitor: false``: counted as skipped)."""
    if on:
        hashes = [image.sha256 for image in images]
        ctx.monitor.observe(model.name, model.version, len(model.classnames), out, hashes)
    else:
        ctx.monitor.skip(len(images), "opted_out")


def hashed(images: list[ImageInput], batch: Tensor) -> Tensor:
    """``batch``, once every image's sha256 is computed (on the decoding thread that calls this)."""
    for image in images:
        _ = image.sha256
    return batch


def predict(
    ctx: AppContext, ref: str, images: list[ImageInput], top_k: int, monitor: bool = True
) -> PredictResponse:
    """The whole request on the calling thread, with a forward pass of its own (no batching)."""
    check_count(images, ctx.settings.max_images_per_request)
    model = resolve(ctx, ref)
    settings = ctx.settings
    probs = forward(
        model, preprocess(model, images, settings.max_image_pixels, settings.predict_jpeg_draft)
    )
    ctx.metrics.observe_batch(len(images))
    monitored(ctx, model, images, probs, monitor)
    return respond(model, images, probs, top_k)


async def predict_batched(
    ctx: AppContext, ref: str, images: list[ImageInput], top_k: int, monitor: bool = True
) -> PredictResponse:
    """Resolve and decode on worker threads, then share a forward pass with concurrent requests.

    Admission comes before decoding, so a full queue refuses a request (429) cheaply.
    """
    check_count(images, ctx.settings.max_images_per_request)
    model = cached_model(ctx, ref)
    if model is None:
        model = await run_in_threadpool(resolve, ctx, ref)
    max_pixels, draft = ctx.settings.max_image_pixels, ctx.settings.predict_jpeg_draft
    probs = await batched_probs(
        ctx,
        model,
        len(images),
        lambda: hashed(images, preprocess(model, images, max_pixels, draft)),
    )
    monitored(ctx, model, images, probs, monitor)
    return respond(model, images, probs, top_k)


async def batched_probs(
    ctx: AppContext, model: LoadedModel, n: int, prepare: Callable[[], Tensor]
) -> Tensor:
    """Admit ``n`` images to the model's queue (429 past its limit), run ``prepare`` (decode and
    preprocess) on the decoding threads, then share a forward pass: (n, classes) probabilities.
    ``/predict`` and the Open Inference Protocol's ``infer`` both come through here."""
    batcher = ctx.batcher
    queue = batcher.queue_for(model)
    try:
        admission = queue.admit(n)
    except TooManyRequests:
        ctx.metrics.predict_rejected.inc()
        raise
    with admission:
        batch = await batcher.preprocess(prepare)
        return await admission.submit(batch)
