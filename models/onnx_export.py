"""ONNX export of a served classifier, and running the exported file with ONNX Runtime.

One file holds what ``/predict`` computes after preprocessing: the image tower, the default and
concept heads and dual inference with the version's beta, ending in class probabilities. Its
input is the preprocessed batch (float32 NCHW, RGB scaled to [0, 1] then normalised by the
model's mean and std); the batch axis is dynamic. The class names and the preprocessing
constants travel in the model's ``metadata_props`` (``robust_clip.*``), so a runtime that has
only the file can prepare images and name its outputs.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: it needs no
package beyond torch and onnx, runs offline, and writes the same bytes for the same weights.
Every export is verified before it is kept: ONNX Runtime's probabilities on sample images (a
batch size other than the one traced, so the dynamic axis is exercised too) must equal torch's
within ``TOLERANCE``, or ``ExportError`` says by how much they differ.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.errors import ExportError
from models.heads import Classifier, blend

FORMAT = "robust-clip-onnx/1"
ONNX_FILE = "model.onnx"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "probabilities"
# What the shift monitor reads from the same pass (models.monitoring.served_pass): the default
# and concept heads' labels (int64 [N, 2]) and the normalised image embedding (float32 [N, D]).
HEAD_LABELS = "head_labels"
EMBEDDING = "embedding"
OUTPUTS = (OUTPUT_NAME, HEAD_LABELS, EMBEDDING)
OPSET = 18
# Largest absolute difference allowed between ONNX Runtime's and torch's probabilities. Both
# compute in float32; graph optimisations reorder sums, which moves the last bits (about 1e-6
# on the offline backbone), far below this and far below any difference that changes a label.
TOLERANCE = 1e-4
SAMPLE_IMAGES = 3
TRACE_BATCH = 2
META = "robust_clip."


def _onnx() -> Any:
    try:
        import onnx
    except ModuleNotFoundError as exc:  # a declared dependency; only a broken install lacks it
        raise ExportError("ONNX export needs the onnx package (pip install onnx)") from exc
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        raise ExportError("running ONNX files needs onnxruntime (pip install onnxruntime)") from exc
    return onnxruntime


class ServedGraph(nn.Module):
    """What is exported: preprocessed images -> dual-head probabilities (exactly
    ``classifier(images)``), each head's label and the normalised embedding."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.classifier.image_features(images)
        default = self.classifier.logits_from_features(features, "default")
        concept = self.classifier.logits_from_features(features, "concept")
        probs = blend(default, concept, self.classifier.beta)
        labels = torch.stack([default.argmax(dim=1), concept.argmax(dim=1)], dim=1)
        return probs, labels, features


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float
    tolerance: float
    images: int
    opset: int
    seconds: float = 0.0


def preprocessing(classifier: Classifier) -> dict[str, Any]:
    """The constants a runtime needs to prepare an image as the exported model expects it."""
    cfg = classifier.backbone.preprocess_cfg
    height, width = classifier.backbone.image_size
    return {
        "size": [height, width],
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": cfg.get("interpolation", "bicubic"),
        "resize_mode": cfg.get("resize_mode", "shortest"),
        "layout": "NCHW",
        "dtype": "float32",
        "scale": "RGB / 255, then (x - mean) / std per channel",
    }


def metadata(classifier: Classifier, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an export (every value a string, as ONNX stores them)."""
    props = {
        "format": FORMAT,
        "classnames": json.dumps(list(classifier.classnames)),
        "preprocess": json.dumps(preprocessing(classifier)),
        "head": "dual",
        "beta": repr(float(classifier.beta)),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "outputs": json.dumps(list(OUTPUTS)),
        "backbone": json.dumps(classifier.backbone.source),
    }
    props.update(extra or {})
    return {META + k: str(v) for k, v in props.items()}


def read_metadata(model_or_path: Any) -> dict[str, str]:
    """An export's ``robust_clip.*`` metadata, prefix removed (from a path or a loaded model)."""
    if isinstance(model_or_path, Mapping):  # an ONNX Runtime session's custom_metadata_map
        props = dict(model_or_path)
    else:
        model = model_or_path
        if isinstance(model_or_path, str | Path):
            model = _onnx().load(str(model_or_path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
    return {k.removeprefix(META): v for k, v in props.items() if k.startswith(META)}


def sample_images(classifier: Classifier, n: int = SAMPLE_IMAGES, seed: int = 0) -> Tensor:
    """``n`` preprocessed images of random pixels (a fixed seed): what real images look like to
    the graph (values in the normalised range), without needing any image at hand."""
    height, width = classifier.backbone.image_size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, height, width), generator=generator).float() / 255
    info = preprocessing(classifier)
    mean = torch.tensor(info["mean"])[:, None, None]
    std = torch.tensor(info["std"])[:, None, None]
    return (pixels - mean) / std


def export_onnx(
    classifier: Classifier,
    out: str | Path,
    images: Tensor | None = None,
    tolerance: float = TOLERANCE,
    extra_metadata: Mapping[str, str] | None = None,
) -> ExportReport:
    """Write ``classifier``'s served graph to ``out`` (atomically), verified against torch on
    ``images`` (preprocessed; seeded random ones by default). ``ExportError`` names why an
    architecture cannot be exported, or by how much ONNX Runtime's answers differ."""
    started = time.perf_counter()
    target = Path(out)
    onnx = _onnx()
    if classifier.device.type != "cpu":  # traced on the CPU; the caller's copy stays put
        classifier = copy.deepcopy(classifier).cpu()
    graph = ServedGraph(classifier).eval()
    model = onnx.load_model_from_string(_trace(graph, classifier))
    for key, value in metadata(classifier, extra_metadata).items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "robust-clip"
    model.doc_string = (
        f"{len(classifier.classnames)}-class robust-clip classifier: image tower and dual head "
        f"(beta {classifier.beta:g}); input {INPUT_NAME} float32 [N, 3, H, W] preprocessed, "
        f"output {OUTPUT_NAME} float32 [N, classes]"
    )
    data = model.SerializeToString()
    sample = sample_images(classifier) if images is None else images.float().cpu()
    diff = max_difference(data, graph, sample)
    if not diff <= tolerance:  # NaN fails too
        raise ExportError(
            f"the ONNX export of {_arch(classifier)} differs from torch by {diff:.3g} on "
            f"{len(sample)} sample images (tolerance {tolerance:g}); not written"
        )
    _write_atomic(target, data)
    return ExportReport(target, diff, tolerance, len(sample), OPSET, time.perf_counter() - started)


def _arch(classifier: Classifier) -> str:
    source = classifier.backbone.source
    name = source.get("arch") or "this model"
    return f"{Path(str(name)).name!r}" if os.sep in str(name) else f"{name!r}"


def _trace(graph: ServedGraph, classifier: Classifier) -> bytes:
    height, width = classifier.backbone.image_size
    dummy = torch.zeros(TRACE_BATCH, 3, height, width)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _without_mha_fastpath():
            # The TorchScript exporter's deprecation notice and tracer hints are not the user's.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (dummy,),
                buffer,  # type: ignore[arg-type]  # a file object is accepted, as documented
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUTS),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUTS)},
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many kinds; each means "cannot export"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"{_arch(classifier)} cannot be exported to ONNX (opset {OPSET}): "
            f"{type(exc).__name__}: {first}"
        ) from exc
    return buffer.getvalue()


@contextlib.contextmanager
def _without_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention's fused inference path (taken without gradients, as here) is one
    operator no ONNX opset has; the unfused path computes the same attention in exportable
    operators. Process-wide, so restored at once."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def max_difference(data: bytes, graph: nn.Module, images: Tensor) -> float:
    """Largest absolute difference between ONNX Runtime's and torch's outputs on ``images``."""
    session = open_session(data)
    with torch.no_grad():
        expected = graph(images)[0].float().numpy()
    try:
        got = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot run the exported graph: {exc}") from exc
    if got.shape != expected.shape:
        raise ExportError(f"the exported graph answers shape {got.shape}, torch {expected.shape}")
    return float(np.max(np.abs(got - expected))) if got.size else 0.0


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for ``device``: CUDA first where it is installed and
    the device is a GPU, CPU always last (never required to be anything else)."""
    available = _ort().get_available_providers()
    chosen = ["CUDAExecutionProvider"] if str(device).startswith("cuda") else []
    return [p for p in chosen if p in available] + ["CPUExecutionProvider"]


def open_session(model: bytes | str | Path, device: str = "cpu", threads: int = 0) -> Any:
    """An ONNX Runtime session over an exported file (``threads`` 0: its own default)."""
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning, as the server asks of OpenMP (torch):
    # spinning threads starve the decoding threads and other processes on a busy CPU.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=providers(device))
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {exc}") from exc


class OnnxRunner:
    """An exported file run by ONNX Runtime: preprocessed images -> probabilities."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        self.path = Path(path)
        self.threads = threads  # intra-op threads (0: ONNX Runtime's default)
        self.session = open_session(self.path, device, threads)
        self.metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        return out

    def served(self, images: np.ndarray) -> np.ndarray:
        """The probabilities packed with the monitor's statistics, in ``served_pass``'s layout
        (an export from before those outputs: the probabilities alone)."""
        names = [o.name for o in self.session.get_outputs()]
        if not all(name in names for name in OUTPUTS):
            return self(images)
        probs, labels, features = self.session.run(list(OUTPUTS), {INPUT_NAME: images})
        packed = [probs, labels.astype(np.float32), features.astype(np.float32)]
        return np.concatenate(packed, axis=1)

    @property
    def classnames(self) -> list[str]:
        names: list[str] = json.loads(self.metadata["classnames"])
        return names


# --- Triton ---

TRITON_CONFIG = "config.pbtxt"
TRITON_LABELS = "labels.txt"


def triton_name(name: str) -> str:
    """A model name Triton accepts as a folder and in URLs: letters, digits, ``_-.``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return cleaned or "model"


def triton_config(
    name: str, image_size: Sequence[int], classes: int, max_batch_size: int = 32
) -> str:
    """``config.pbtxt`` for the export under Triton's ONNX Runtime backend, with dynamic
    batching and the class names as the output's labels (Triton's classification extension)."""
    height, width = image_size
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n"
        f'  {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ 3, {height}, {width} ] }}\n'
        "]\n"
        "output [\n"
        f'  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {classes} ] '
        f'label_filename: "{TRITON_LABELS}" }}\n'
        "]\n"
        "dynamic_batching { max_queue_delay_microseconds: 5000 }\n"
        "instance_group [ { count: 1, kind: KIND_AUTO } ]\n"
    )


def write_triton_repository(
    onnx_path: str | Path,
    repository: str | Path,
    name: str,
    classnames: Sequence[str],
    image_size: Sequence[int],
    version: int = 1,
    max_batch_size: int = 32,
) -> Path:
    """A Triton model repository entry: ``<repository>/<name>/config.pbtxt``, ``labels.txt``
    and ``<version>/model.onnx``; returns the model's folder."""
    folder = Path(repository) / triton_name(name)
    config = triton_config(folder.name, image_size, len(classnames), max_batch_size)
    _write_atomic(folder / TRITON_CONFIG, config.encode())
    _write_atomic(folder / TRITON_LABELS, "".join(f"{c}\n" for c in classnames).encode())
    _write_atomic(folder / str(version) / ONNX_FILE, Path(onnx_path).read_bytes())
    return folder
