"""The Open Inference Protocol (KServe V2): tensors in and out, over ``/predict``'s machinery.

A request carries one input: ``images`` (BYTES, shape [N]: encoded image files, base64 text in
JSON or raw bytes in the binary extension) or ``pixel_values`` (FP32, shape [N, 3, H, W]:
images already preprocessed as the model's metadata says). Both go through the same model
cache, batcher, admission limit and metrics as ``/predict``. The answer holds the requested
outputs: ``probabilities`` (FP32 [N, classes]; with Triton's ``classification`` parameter, the
top k as ``"probability:index:label"`` BYTES) and ``labels`` (BYTES [N, k], best first).

Triton's binary tensor extension is supported both ways (``Inference-Header-Content-Length``),
as ``tritonclient`` sends and asks for it by default. Every protocol violation is a
``BadRequest`` (400) naming the tensor and what is wrong; too many images a 413.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from models.monitoring import unpack
from models.onnx_export import INPUT_NAME, OUTPUT_NAME
from service.context import AppContext
from service.errors import BadRequest, PayloadTooLarge
from service.predict import service as predict
from service.predict.cache import LoadedModel
from service.registry import service as registry

IMAGES = "images"
LABELS = "labels"
INPUTS = {IMAGES: "BYTES", INPUT_NAME: "FP32"}
OUTPUTS = (OUTPUT_NAME, LABELS)
DEFAULT_TOP_K = 5
HEADER_LENGTH = "inference-header-content-length"
PLATFORM = "robust-clip_dual"


@dataclass
class Requested:
    """An output the client asked for, and how it wants it."""

    name: str
    binary: bool
    classification: int | None = None


@dataclass
class InferRequest:
    id: str | None
    input_name: str
    shape: list[int]
    data: Any  # JSON data (a list) or raw bytes (binary extension)
    binary: bool
    outputs: list[Requested]
    top_k: int
    parameters: dict[str, Any] = field(default_factory=dict)


def reference(name: str, version: str | None) -> str:
    """The registry reference of a V2 path: ``name`` (latest READY, or ``name@alias``) or
    ``name/<version>``; the version is an integer, as the registry numbers them."""
    if version is None:
        return name
    if not version.isdecimal() or not 1 <= int(version) <= 2**31 - 1:
        raise BadRequest(f"model version must be a positive integer, got {version!r}")
    return f"{name}/{int(version)}"


def model_metadata(ctx: AppContext, ref: str) -> dict[str, Any]:
    """The metadata route's answer, from the version's card (no model is loaded)."""
    with ctx.sessions() as session:
        row = registry.resolve(session, ref)
        name, version, card = row.name, row.version, dict(row.card or {})
    size = card.get("preprocess", {}).get("size", 224)
    height, width = (size, size) if isinstance(size, int) else size[:2]
    classes = len(card.get("classnames", []))
    return {
        "name": name,
        "versions": [str(version)],
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGES, "datatype": "BYTES", "shape": [-1]},
            {"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, height, width]},
        ],
        "outputs": [
            {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, classes]},
            {"name": LABELS, "datatype": "BYTES", "shape": [-1, -1]},
        ],
        "parameters": {
            "classnames": card.get("classnames", []),
            "preprocess": card.get("preprocess", {}),
            "beta": card.get("beta"),
            "head": "dual",
        },
    }


# --- parsing ---


def parse(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The request's JSON part (checked) and its binary tail (empty without the extension)."""
    head, tail = _split(body, header_length)
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the inference request is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("the inference request is not valid JSON: nested too deeply") from exc
    if not isinstance(doc, dict):
        raise BadRequest("the inference request must be a JSON object")
    params = _object(doc.get("parameters"), "parameters")
    tensor = _single_input(doc.get("inputs"))
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if not isinstance(name, str) or name not in INPUTS:
        raise BadRequest(f"unknown input {name!r}; this model takes {_names(INPUTS)}")
    if datatype != INPUTS[name]:
        raise BadRequest(f"input {name!r} must be {INPUTS[name]}, got datatype {datatype!r}")
    shape = _shape(tensor.get("shape"), name)
    tensor_params = _object(tensor.get("parameters"), f"input {name!r} parameters")
    binary_size = tensor_params.get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size < 0 or binary_size > len(tail):
            raise BadRequest(
                f"input {name!r}: binary_data_size {binary_size!r} does not fit the "
                f"{len(tail)} bytes after the JSON header"
            )
        data: Any = tail[:binary_size]
    elif "data" in tensor:
        data = tensor["data"]
    else:
        raise BadRequest(f"input {name!r} has no data (nor a binary_data_size)")
    top_k = _top_k(params.get("top_k", DEFAULT_TOP_K), "parameters.top_k")
    default_binary = params.get("binary_data_output") is True
    outputs = _outputs(doc.get("outputs"), default_binary)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    return InferRequest(
        request_id, name, shape, data, binary_size is not None, outputs, top_k, params
    ), tail


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdecimal() or int(header_length) > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} is not a length within the "
            f"{len(body)}-byte body"
        )
    n = int(header_length)
    return body[:n], body[n:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _single_input(inputs: Any) -> dict[str, Any]:
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(f"inputs must be a list holding one tensor ({_names(INPUTS)})")
    if len(inputs) != 1:
        raise BadRequest(f"send one input tensor ({_names(INPUTS)}), got {len(inputs)}")
    if not isinstance(inputs[0], dict):
        raise BadRequest("inputs[0] must be a JSON object")
    return inputs[0]


def _shape(shape: Any, name: str) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
    return shape


def _top_k(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise BadRequest(f"{what} must be an integer from 1 to 1000, got {value!r}")
    return value


def _outputs(outputs: Any, default_binary: bool) -> list[Requested]:
    if outputs is None:
        return [Requested(name, default_binary) for name in OUTPUTS]
    if not isinstance(outputs, list) or not outputs:
        raise BadRequest("outputs must be a non-empty list when given")
    requested = []
    for i, item in enumerate(outputs):
        if not isinstance(item, dict):
            raise BadRequest(f"outputs[{i}] must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or name not in OUTPUTS:
            raise BadRequest(f"unknown output {name!r}; this model answers {_names(OUTPUTS)}")
        params = _object(item.get("parameters"), f"output {name!r} parameters")
        binary = params.get("binary_data", default_binary) is True
        count = params.get("classification")
        classification = None if count is None else _top_k(count, f"{name}: classification")
        if classification is None and name == LABELS and "top_k" in params:
            classification = _top_k(params["top_k"], f"{name}: top_k")
        requested.append(Requested(name, binary, classification))
    return requested


def _names(names: Any) -> str:
    return " or ".join(repr(n) for n in names)


# --- the tensors ---


def image_inputs(request: InferRequest, max_images: int) -> list[predict.ImageInput]:
    """The BYTES input as encoded images (base64 text in JSON, raw in the binary extension)."""
    shape = request.shape
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadRequest(f"input {IMAGES!r} must have shape [N] or [N, 1], got {shape}")
    n = shape[0]
    _check_count(n, max_images)
    if request.binary:
        items = _bytes_elements(request.data)
    else:
        items = [_base64(text, i) for i, text in enumerate(_json_strings(request.data))]
    if len(items) != n:
        raise BadRequest(f"input {IMAGES!r} has shape {shape} but {len(items)} elements")
    return [predict.ImageInput(item, None, f"{IMAGES}[{i}]") for i, item in enumerate(items)]


def _check_count(n: int, max_images: int) -> None:
    if n > max_images:
        raise PayloadTooLarge(f"{n} images in one request, over the limit of {max_images}")
    if n == 0:
        raise BadRequest("the input holds no images (batch size 0)")


def _json_strings(data: Any) -> list[str]:
    flat = data
    if isinstance(data, list) and data and all(isinstance(row, list) for row in data):
        flat = [x for row in data for x in row]
    if not isinstance(flat, list) or not all(isinstance(x, str) for x in flat):
        raise BadRequest(f"input {IMAGES!r}: data must be a list of base64 strings")
    return flat


def _base64(text: str, i: int) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{IMAGES}[{i}] is not valid base64: {exc}") from exc


def _bytes_elements(raw: bytes) -> list[bytes]:
    """Triton's serialised BYTES tensor: each element a 4-byte little-endian length, then it."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"input {IMAGES!r}: a BYTES element's length is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"input {IMAGES!r}: a BYTES element runs past the data")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def pixel_tensor(request: InferRequest, image_size: Sequence[int], max_images: int) -> Tensor:
    """The FP32 input as a float (N, 3, H, W) batch, checked against the model's input."""
    shape = request.shape
    expected = [3, *image_size]
    if len(shape) != 4 or shape[1:] != expected:
        raise BadRequest(
            f"input {INPUT_NAME!r} must have shape [N, {', '.join(map(str, expected))}] for this "
            f"model, got {shape}"
        )
    _check_count(shape[0], max_images)
    count = int(np.prod(shape))
    if request.binary:
        if len(request.data) != count * 4:
            raise BadRequest(
                f"input {INPUT_NAME!r}: shape {shape} needs {count * 4} bytes of FP32, got "
                f"{len(request.data)}"
            )
        array = np.frombuffer(request.data, dtype="<f4")
    else:
        array = _json_floats(request.data, count, shape)
    if not np.isfinite(array).all():
        raise BadRequest(f"input {INPUT_NAME!r} holds NaN or infinite values")
    return torch.from_numpy(array.astype(np.float32).reshape(shape))


def _json_floats(data: Any, count: int, shape: list[int]) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"input {INPUT_NAME!r}: data must be a list of numbers")
    try:
        array = np.asarray(data, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"input {INPUT_NAME!r}: data must be numbers (flat or nested)") from exc
    if array.size != count:
        raise BadRequest(f"input {INPUT_NAME!r} has shape {shape} but {array.size} values")
    return array


# --- running and answering ---


async def infer(ctx: AppContext, ref: str, request: InferRequest) -> tuple[LoadedModel, Tensor]:
    """(model, (N, classes) probabilities), through ``/predict``'s cache, batcher and limits.
    Encoded images count in the version's shift monitoring as ``/predict``'s do (request
    parameter ``monitor: false`` keeps them out); preprocessed tensors have no image to name
    and are counted as skipped."""
    monitor = request.parameters.get("monitor", True)
    if not isinstance(monitor, bool):
        raise BadRequest(f"parameters.monitor must be true or false, got {monitor!r}")
    settings = ctx.settings
    max_images = settings.max_images_per_request
    images: list[predict.ImageInput] = []
    if request.input_name == IMAGES:
        images = image_inputs(request, max_images)
        model = await _model(ctx, ref)
        max_pixels, draft = settings.max_image_pixels, settings.predict_jpeg_draft

        def prepare() -> Tensor:
            return predict.hashed(images, predict.preprocess(model, images, max_pixels, draft))

        n = len(images)
    else:
        model = await _model(ctx, ref)
        pixels = pixel_tensor(request, model.classifier.backbone.image_size, max_images)

        def prepare() -> Tensor:
            return pixels

        n = int(pixels.shape[0])
    if settings.predict_batching:
        out = await predict.batched_probs(ctx, model, n, prepare)
    else:
        out = await run_in_threadpool(lambda: predict.forward(model, prepare()))
        ctx.metrics.observe_batch(n)
    if images:
        predict.monitored(ctx, model, images, out, monitor)
    else:
        ctx.monitor.skip(n, "preprocessed")
    probs, _ = unpack(out, len(model.classnames))
    return model, probs


async def _model(ctx: AppContext, ref: str) -> LoadedModel:
    model = predict.cached_model(ctx, ref)
    if model is None:
        model = await run_in_threadpool(predict.resolve, ctx, ref)
    return model


def answer(
    model: LoadedModel, request: InferRequest, probs: Tensor
) -> tuple[dict[str, Any], list[bytes]]:
    """The response's JSON and the binary tail of the outputs asked for in binary."""
    names = model.classnames
    outputs, tail = [], []
    for want in request.outputs:
        shape, datatype, values = _output(want, request.top_k, names, probs)
        entry: dict[str, Any] = {"name": want.name, "datatype": datatype, "shape": shape}
        if want.binary:
            raw = _serialise(datatype, values)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = values.reshape(-1).tolist()
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": model.name,
        "model_version": str(model.version),
        "outputs": outputs,
    }
    if request.id is not None:
        body["id"] = request.id
    return body, tail


def _output(
    want: Requested, top_k: int, names: list[str], probs: Tensor
) -> tuple[list[int], str, np.ndarray]:
    n, classes = int(probs.shape[0]), int(probs.shape[1])
    if want.name == OUTPUT_NAME and want.classification is None:
        return [n, classes], "FP32", probs.numpy().astype(np.float32)
    k = min(want.classification or top_k, classes)
    values, indices = probs.topk(k, dim=1)
    if want.name == OUTPUT_NAME:  # Triton's classification extension
        cells = [
            f"{v:f}:{j}:{names[j]}"
            for row_v, row_j in zip(values.tolist(), indices.tolist(), strict=True)
            for v, j in zip(row_v, row_j, strict=True)
        ]
    else:
        cells = [names[j] for row in indices.tolist() for j in row]
    return [n, k], "BYTES", np.array(cells, dtype=object).reshape(n, k)


def _serialise(datatype: str, values: np.ndarray) -> bytes:
    if datatype == "FP32":
        return values.astype("<f4").tobytes()
    parts = []
    for item in values.reshape(-1):
        raw = str(item).encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def render(body: dict[str, Any], tail: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The response bytes and headers: plain JSON, or JSON then binary outputs."""
    head = json.dumps(body, separators=(",", ":")).encode()
    if not tail:
        return head, {"content-type": "application/json"}
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }
    return head + b"".join(tail), headers
