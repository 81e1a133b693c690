"""Loaded models, one copy per process, bounded by memory (least recently used out).

An artifact carries its class heads precomputed (``heads.safetensors``), so loading encodes no
prompts and a request runs the image tower only.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import Compose, Normalize

from models.artifacts import card_digest, load_artifact
from models.heads import Classifier
from models.monitoring import served_pass
from models.onnx_export import OnnxRunner
from service.predict.onnx import ensure_export, runner_for

# (name, version, identity): the identity (``registry.cache_key``: row id and artifact digest)
# names the bytes, so another artifact under a name/version this process once loaded is never
# mistaken for the copy in memory.
Key = tuple[str, int, str]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    version: int
    classifier: Classifier
    transform: Callable[[Any], torch.Tensor]
    nbytes: int
    # The transform split in two: ``pixels`` (PIL stages, then uint8 HWC) runs per image on the
    # decoding threads; ``to_input`` (to float, normalise) runs once per batch before the pass.
    # Decoding threads then run no torch kernels, whose thread teams stall on a busy CPU, and a
    # GPU receives uint8, a quarter of the bytes.
    pixels: Callable[[Any], torch.Tensor] | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    # RCS_PREDICT_ENGINE=onnxruntime (or auto, where it was faster): the version's ONNX export
    # runs the forward pass.
    runner: OnnxRunner | None = None
    # torch threads of this model's passes, chosen when it was loaded (``calibrate_threads``);
    # None: the calling thread's as they are.
    threads: int | None = None

    @property
    def engine(self) -> str:
        return "torch" if self.runner is None else "onnxruntime"

    @property
    def pass_threads(self) -> int | None:
        """The intra-op threads its passes run on (None: the engine's own count)."""
        threads = self.runner.threads if self.runner is not None else self.threads
        return threads or None

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def classnames(self) -> list[str]:
        return list(self.classifier.classnames)


def model_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class Engine:
    """What runs the forward passes: ``torch``; ``onnxruntime`` over exports in ``onnx_dir``;
    or ``auto``: whichever of the two is faster for the model, timed when it loads
    (``ModelCache``; torch on a GPU). ``threads``: the intra-op threads of either (0: chosen per
    model, ``calibrate_threads``); ``by_model`` names another engine for some models
    (``RCS_PREDICT_ENGINE_BY_MODEL``), which wins over ``name`` for them."""

    name: str = "torch"
    onnx_dir: Path | None = None
    threads: int = 0
    by_model: tuple[tuple[str, str], ...] = ()

    def for_model(self, model: str) -> str:
        return dict(self.by_model).get(model, self.name)


def load(
    name: str, version: int, folder: Path, device: str, engine: Engine | None = None
) -> LoadedModel:
    artifact = load_artifact(folder, device=device)
    classifier = artifact.classifier.eval()
    transform = classifier.backbone.transform(train=False)
    model = LoadedModel(name, version, classifier, transform, model_bytes(classifier))
    split = split_transform(transform)
    if split is not None:
        model.pixels, mean, std = split
        model.mean, model.std = (t.to(classifier.device)[:, None, None] for t in (mean, std))
    if engine is not None and engine.for_model(name) == "onnxruntime" and engine.onnx_dir:
        digest = card_digest(folder)
        model.runner = runner_for(classifier, engine.onnx_dir, digest, device, engine.threads)
        if model.runner is not None:  # its own copy of the weights
            model.nbytes += model.runner.path.stat().st_size
    return model


def split_transform(
    transform: Any,
) -> tuple[Callable[[Any], torch.Tensor], torch.Tensor, torch.Tensor] | None:
    """(PIL stages -> uint8 HWC, mean, std) of an open_clip eval transform ending in
    ToTensor and Normalize; None for any other transform (it then runs whole per image)."""
    stages = list(getattr(transform, "transforms", []))
    if len(stages) < 2 or not isinstance(stages[-1], Normalize):
        return None
    if type(stages[-2]).__name__ not in ("ToTensor", "MaybeToTensor"):
        return None
    if not all(type(stage).__name__ in PIL_STAGES for stage in stages[:-2]):
        return None
    pil_stages = Compose(stages[:-2])

    def pixels(image: Any) -> torch.Tensor:
        array = np.array(pil_stages(image), dtype=np.uint8)  # a writable copy torch can own
        return torch.from_numpy(array[..., None] if array.ndim == 2 else array)

    normalize = stages[-1]
    mean = torch.as_tensor(normalize.mean, dtype=torch.float32)
    std = torch.as_tensor(normalize.std, dtype=torch.float32)
    return pixels, mean, std


# Eval stages known to take and give PIL images; any other stage keeps the transform whole.
PIL_STAGES = frozenset({"Resize", "CenterCrop", "MaybeConvertMode"})


def to_input(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """A batch from ``preprocess`` as the model's input: float NCHW, normalised, on its device."""
    device = model.classifier.device
    if images.dtype != torch.uint8 or model.mean is None or model.std is None:
        return images.to(device)
    # The same arithmetic as ToTensor then Normalize, on the whole batch at once.
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
    return x.float().div(255).sub_(model.mean).div_(model.std)


def settle_heap() -> None:
    """Collect, then move every object now alive out of the garbage collector's sight.

    A loaded model, torch and the libraries are hundreds of thousands of long-lived objects;
    left in the oldest generation, each full collection walks them all: 350 ms pauses, every
    few seconds under load, which were the /predict p99 (``bench/peer.py``). Frozen, a full
    collection walks only what requests made. Called after a model is loaded or dropped
    (``unfreeze`` first, so a dropped model's reference cycles are collected); the collection
    itself pauses the process once, then. The first load (the default model's, at start) also
    freezes what the imports made.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def warm_up(model: LoadedModel) -> None:
    """One forward pass: the first one pays for lazy initialisation, not a user's request."""
    run(model, torch.zeros(1, 3, *model.classifier.backbone.image_size))


# Images per timed pass, and timed passes per setting, when a model's threads and engine are
# chosen.
CALIBRATION_BATCH = 4
CALIBRATION_PASSES = 2
# A model's passes use all of the process's threads only when these are at least this much
# faster than one thread; otherwise one thread, and the other cores decode and serve requests.
MIN_THREAD_SPEEDUP = 1.2
# Under RCS_PREDICT_ENGINE=auto, a model's passes move to ONNX Runtime only when they are at
# least this much faster there: the export is a second copy of the weights in memory.
MIN_ENGINE_SPEEDUP = 1.2

Forward = Callable[["LoadedModel", torch.Tensor], torch.Tensor]


def calibration_inputs(model: LoadedModel) -> torch.Tensor:
    return torch.zeros(CALIBRATION_BATCH, 3, *model.classifier.backbone.image_size)


def seconds_per_pass(
    model: LoadedModel, inputs: torch.Tensor, forward: Forward, clock: Callable[[], float]
) -> float:
    """The fastest of ``CALIBRATION_PASSES`` passes, after an untimed one (the thread team
    forms, the engine's lazy set-up is paid)."""
    forward(model, inputs)
    timings = []
    for _ in range(CALIBRATION_PASSES):
        started = clock()
        forward(model, inputs)
        timings.append(clock() - started)
    return min(timings)


def fewest_threads_earning(seconds: dict[int, float]) -> int:
    """Of the thread counts timed (count -> seconds per pass), the fewest unless more are at
    least ``MIN_THREAD_SPEEDUP`` faster than the count chosen so far."""
    counts = sorted(seconds)
    chosen = counts[0]
    for count in counts[1:]:
        if seconds[chosen] >= MIN_THREAD_SPEEDUP * seconds[count]:
            chosen = count
    return chosen


def calibrate_threads(
    model: LoadedModel,
    available: int,
    forward: Forward | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, dict[int, float]]:
    """The torch threads ``model``'s passes should use on this CPU, of ``available``, timed now:
    passes of ``CALIBRATION_BATCH`` images with ``available`` threads and with one. Returns the
    choice and the seconds per pass of each.

    Intra-op threads pay off for models of large matrix products (a ViT-B-32 on 2 cores: 1.3x
    faster at 1 image, 1.8x at 8) and cost for models of many small operations (the offline
    backbone's EfficientNet-Lite0: 3x slower at 1 image, 1.8x at 8, threads waking and waiting at
    every layer; ``bench/batch_cost.py``), and only timing tells which a model is. One thread
    also leaves the other cores to decode images and run the server, so more threads must earn
    their keep by ``MIN_THREAD_SPEEDUP``.
    """
    forward = forward or run
    inputs = calibration_inputs(model)
    seconds: dict[int, float] = {}
    for threads in (available, 1):
        model.threads = threads
        seconds[threads] = seconds_per_pass(model, inputs, forward, clock)
    model.threads = fewest_threads_earning(seconds)
    return model.threads, seconds


def calibrate_engine(
    model: LoadedModel,
    runners: dict[int, OnnxRunner],
    forward: Forward | None = None,
    clock: Callable[[], float] = time.perf_counter,
    torch_s: float | None = None,
) -> tuple[str, dict[str, float]]:
    """Whether ``model``'s passes should run in torch (on its chosen threads) or in ONNX Runtime
    (``runners``: a session per intra-op thread count), timed now on the same inputs; sets
    ``model.runner`` to the choice (None: torch). ``torch_s``: torch's seconds per pass on the
    model's threads when ``calibrate_threads`` has just timed them (None: timed here). Returns
    the choice and the seconds per pass of each setting (``torch``, ``onnxruntime/N``).

    ONNX Runtime fuses a convolutional tower's small operations (the offline backbone's
    EfficientNet-Lite0: 2.8x torch's own rate, ``docs/benchmarks/onnx.md``) and gains little on
    large matrix products (a ViT-B-32: 1.2x); it must beat torch by ``MIN_ENGINE_SPEEDUP``. Its
    thread counts are chosen among themselves as torch's are, by ``MIN_THREAD_SPEEDUP``.
    """
    forward = forward or run
    inputs = calibration_inputs(model)
    model.runner = None
    if torch_s is None:
        torch_s = seconds_per_pass(model, inputs, forward, clock)
    onnx_s: dict[int, float] = {}
    for threads, runner in sorted(runners.items()):  # one thread first
        model.runner = runner
        onnx_s[threads] = seconds_per_pass(model, inputs, forward, clock)
    model.runner = None
    if onnx_s:
        threads = fewest_threads_earning(onnx_s)
        if torch_s >= MIN_ENGINE_SPEEDUP * onnx_s[threads]:
            model.runner = runners[threads]
    seconds = {"torch": torch_s, **{f"onnxruntime/{n}": t for n, t in onnx_s.items()}}
    return model.engine, seconds


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """The calling thread's torch threads set to ``threads`` (None: left as they are) within."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(model: LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
    """The forward pass on model inputs (float NCHW, normalised), from the model's engine: (N,
    classes) probabilities on the CPU, packed with what the shift monitor reads from the same
    pass (``models.monitoring.served_pass``'s layout; ``unpack`` separates them)."""
    if model.runner is not None:
        array = inputs.detach().cpu().numpy()
        return torch.from_numpy(model.runner.served(np.ascontiguousarray(array, dtype=np.float32)))
    with torch.inference_mode(), torch_threads(model.threads):
        return served_pass(model.classifier, inputs.to(model.classifier.device))


class ModelCache:
    def __init__(self, max_bytes: int, device: str = "cpu", engine: Engine | None = None) -> None:
        self.max_bytes = max_bytes
        self.device = device
        self.engine = engine or Engine()
        # The process's torch threads as it started (RCS_TORCH_THREADS, or torch's default):
        # what a model's passes may use at most.
        self.available_threads = torch.get_num_threads()
        self._models: OrderedDict[Key, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Key, threading.Lock] = {}

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(
        self, name: str, version: int, folder: Callable[[], Path], identity: str = ""
    ) -> LoadedModel:
        key = (name, version, identity)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        # One loader per model; other requests for it wait here instead of loading a copy.
        with loading:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            path = folder()
            model = load(name, version, path, self.device, self.engine)
            warm_up(model)
            torch_s = self._choose_threads(model)
            self._choose_engine(model, path, torch_s)
            self._insert(key, model)
            settle_heap()
            return model

    def _choose_threads(self, model: LoadedModel) -> float | None:
        """On CPU with torch and RCS_TORCH_THREADS unset (0), time the model's passes with the
        process's threads and with one (``calibrate_threads``) and keep the faster. Returns the
        seconds per pass on the count kept (None: not timed)."""
        available = self.available_threads
        if self.engine.threads or model.engine != "torch" or available < 2:
            return None
        if model.classifier.device.type != "cpu":
            return None
        started = time.perf_counter()
        try:
            threads, seconds = calibrate_threads(model, available)
        except Exception as exc:  # the warm-up pass ran: serve with the process's threads
            model.threads = None
            log.warning(
                "%s: its passes could not be timed (%s); they use every thread", model.ref, exc
            )
            return None
        log.info(
            "%s: passes use %d torch thread(s) of %d (%s per pass of %d images; timed in %.1f s)",
            model.ref,
            threads,
            available,
            ", ".join(f"{n} thread(s) {s * 1000:.1f} ms" for n, s in seconds.items()),
            CALIBRATION_BATCH,
            time.perf_counter() - started,
        )
        return seconds[threads]

    def _choose_engine(self, model: LoadedModel, folder: Path, torch_s: float | None) -> None:
        """Under ``auto`` on the CPU: export the version (once per work folder), time its passes
        in ONNX Runtime against torch (``calibrate_engine``) and keep the faster. An
        architecture that cannot be exported, or a missing ONNX Runtime, leaves it on torch.
        ``torch_s``: torch's seconds per pass from ``_choose_threads`` (None: timed here)."""
        engine = self.engine
        if engine.for_model(model.name) != "auto" or engine.onnx_dir is None:
            return
        if model.classifier.device.type != "cpu":
            return
        started = time.perf_counter()
        try:
            path = ensure_export(engine.onnx_dir, card_digest(folder), lambda: model.classifier)
            exported = time.perf_counter()
            counts = {engine.threads or self.available_threads, engine.threads or 1}
            runners = {n: OnnxRunner(path, device=self.device, threads=n) for n in counts}
            choice, seconds = calibrate_engine(model, runners, torch_s=torch_s)
        except Exception as exc:  # ExportError, no onnxruntime, a failed pass: torch serves
            model.runner = None
            log.warning("%s: served by torch; ONNX Runtime was not tried (%s)", model.ref, exc)
            return
        if model.runner is not None:  # its own copy of the weights
            model.nbytes += model.runner.path.stat().st_size
        log.info(
            "%s: passes run in %s (%s per pass of %d images; export %.1f s, timed in %.1f s)",
            model.ref,
            choice if model.runner is None else f"{choice} on {model.runner.threads} thread(s)",
            ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in seconds.items()),
            CALIBRATION_BATCH,
            exported - started,
            time.perf_counter() - exported,
        )

    def peek(self, name: str, version: int, identity: str = "") -> LoadedModel | None:
        """The model if it is loaded now (counted as a use); never loads."""
        key = (name, version, identity)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def _insert(self, key: Key, model: LoadedModel) -> None:
        with self._lock:
            self._models[key] = model
            self._loading.pop(key, None)
            # Keep at least the model just loaded, even when it alone exceeds the budget.
            while self.nbytes > self.max_bytes and len(self._models) > 1:
                self._models.popitem(last=False)

    def evict(self, name: str, version: int) -> None:
        """Drop every copy of ``name/version`` (whatever artifact it was loaded from)."""
        with self._lock:
            dropped = [k for k in self._models if k[:2] == (name, version)]
            for key in dropped:
                del self._models[key]
        if dropped:
            settle_heap()

    def loaded(self) -> list[LoadedModel]:
        """The loaded models, least recently used first."""
        with self._lock:
            return list(self._models.values())

    def keys(self) -> list[tuple[str, int]]:
        """The loaded models as (name, version), least recently used first."""
        with self._lock:
            return [(name, version) for name, version, _ in self._models]
