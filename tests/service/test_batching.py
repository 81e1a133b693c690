"""Dynamic batching of POST /predict: shared forward passes, 429 when full, isolation, eviction.

Nothing here measures time. Forward passes are counted by wrapping the loaded model's
classifier in a ``Gate``, which can also hold a pass so that later requests are known to be
waiting in the queue when it is released.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.artifacts import load_artifact
from service.context import AppContext
from service.predict import service as predict_service
from service.predict.batcher import ModelQueue
from service.settings import Settings
from tests.service.support import b64, make_settings, png_bytes, register_artifact

HELD_FOREVER = 60.0  # a gate never waits longer than this, so a broken test cannot hang CI


class Gate:
    """Stands in for a loaded model's classifier: records each forward pass, can hold them."""

    def __init__(self, inner: Any, poison: torch.Tensor | None = None) -> None:
        self.inner = inner
        self.poison = poison
        self.sizes: list[int] = []
        self.opened = threading.Event()
        self.opened.set()

    def __getattr__(self, name: str) -> Any:  # classnames, device, ...: the wrapped model's
        return getattr(self.inner, name)

    def transform_for_test(self, data: bytes) -> torch.Tensor:
        transform = self.inner.backbone.transform(train=False)
        result: torch.Tensor = transform(Image.open(io.BytesIO(data)).convert("RGB"))
        return result

    def hold(self) -> None:
        self.opened.clear()

    def release(self) -> None:
        self.opened.set()

    def _pass(self, images: torch.Tensor) -> None:
        self.sizes.append(int(images.shape[0]))
        if not self.opened.wait(HELD_FOREVER):
            raise TimeoutError("the test never released the gate")
        if self.poison is not None and any(torch.equal(row, self.poison) for row in images):
            raise RuntimeError("poisoned batch")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._pass(images)
        return self.inner(images)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Where /predict's pass (``models.monitoring.served_pass``) enters the model."""
        self._pass(images)
        result: torch.Tensor = self.inner.image_features(images)
        return result


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HELD_FOREVER
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def app_settings(tmp_path: Path, shapes_root: Path, settings_overrides: dict[str, Any]) -> Settings:
    """The gates stand in front of torch's classifier, so these apps' passes run in torch (the
    default, ``auto``, may give the model to ONNX Runtime, which no gate sees)."""
    return make_settings(tmp_path, shapes_root, **{"predict_engine": "torch", **settings_overrides})


@pytest.fixture
def version(ctx: AppContext, artifact_folder: Path) -> int:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "1" * 24)
        return register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "2" * 24)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as executor:
        yield executor


def gate_model(ctx: AppContext, ref: str, **kwargs: Any) -> Gate:
    """Load ``ref`` as a request would, then put a gate in front of its classifier."""
    with ctx.sessions() as session:
        model = predict_service.model_for(ctx, session, ref)
    gate = Gate(model.classifier, **kwargs)
    model.classifier = gate  # type: ignore[assignment]
    return gate


def start_held_pass(
    ctx: AppContext, client: TestClient, pool: ThreadPoolExecutor, ref: str
) -> tuple[Gate, dict[str, Any], Future[Any]]:
    """Gate ``ref``'s model and send one request whose forward pass starts and is held."""
    gate = gate_model(ctx, ref)
    gate.hold()
    body = {"model": ref, "images": [b64(png_bytes())]}
    running = post(pool, client, body)
    try:
        wait_until(lambda: len(gate.sizes) == 1, "the first pass to start")
    except BaseException:
        gate.release()
        raise
    return gate, body, running


def queues_of(ctx: AppContext, ref: str) -> list[ModelQueue]:
    return [queue for queue in ctx.batcher.queues() if queue.model.ref == ref]


def waiting(ctx: AppContext, ref: str) -> int:
    return sum(queue.waiting for queue in queues_of(ctx, ref))


def post(pool: ThreadPoolExecutor, client: TestClient, body: dict[str, Any]) -> Future[Any]:
    return pool.submit(client.post, "/predict", json=body)


def colour_images(n: int) -> list[bytes]:
    return [png_bytes((40 * i % 256, 255 - 30 * i % 256, 90)) for i in range(n)]


def expected_probs(artifact_folder: Path, images: list[bytes]) -> torch.Tensor:
    """Each image alone through the artifact's classifier: what an unbatched server answers."""
    classifier = load_artifact(artifact_folder).classifier
    transform = classifier.backbone.transform(train=False)
    rows = []
    with torch.inference_mode():
        for data in images:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            rows.append(classifier(transform(image)[None])[0])
    return torch.stack(rows)


def admitted(ctx: AppContext, ref: str) -> int:
    return sum(queue.admitted for queue in queues_of(ctx, ref))


@pytest.mark.parametrize(
    "settings_overrides", [{"predict_max_batch": 8, "predict_max_wait_ms": 30_000}]
)
def test_concurrent_requests_share_one_forward_pass_with_unbatched_results(
    client: TestClient,
    ctx: AppContext,
    version: int,
    pool: ThreadPoolExecutor,
    artifact_folder: Path,
) -> None:
    gate, _, first = start_held_pass(ctx, client, pool, "shapes")
    batches_before = ctx.metrics.predict_batches._value.get()
    images = colour_images(8)
    try:
        futures = [
            post(pool, client, {"model": "shapes", "images": [b64(data)], "top_k": 4})
            for data in images
        ]
        wait_until(lambda: admitted(ctx, "shapes/2") == 9, "eight requests to be admitted")
    finally:
        gate.release()
    responses = [f.result() for f in futures]
    assert first.result().status_code == 200
    assert [r.status_code for r in responses] == [200] * 8
    # The eight admitted during the held pass leave together once it ends (the batch is full,
    # and any still decoding were waited for): one pass for eight requests, not eight passes.
    assert gate.sizes == [1, 8]
    assert ctx.metrics.predict_batches._value.get() - batches_before == 2

    expected = expected_probs(artifact_folder, images)
    names = list(load_artifact(artifact_folder).classifier.classnames)
    for i, response in enumerate(responses):
        labels = response.json()["data"][0]["labels"]
        got = {label["label"]: label["probability"] for label in labels}
        want = {name: float(expected[i, j]) for j, name in enumerate(names)}
        assert got.keys() == want.keys()
        assert [label["label"] for label in labels] == sorted(want, key=lambda c: -want[c])
        for name in names:
            assert got[name] == pytest.approx(want[name], abs=1e-5)
    assert ctx.batcher.queues() == []  # idle queues hold no model


@pytest.mark.parametrize(
    "settings_overrides",
    [{"predict_max_batch": 2, "predict_max_wait_ms": 0, "predict_max_queue": 3}],
)
def test_full_queue_answers_429_with_retry_after(
    client: TestClient, ctx: AppContext, version: int, pool: ThreadPoolExecutor
) -> None:
    gate, body, first = start_held_pass(ctx, client, pool, "shapes")
    try:
        queued = [post(pool, client, body) for _ in range(2)]
        wait_until(lambda: waiting(ctx, "shapes/2") == 2, "two requests to queue")
        refused = client.post("/predict", json=body)
        too_big = client.post("/predict", json={**body, "images": [body["images"][0]] * 2})
    finally:
        gate.release()
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "queue_full" and error["type"] == "invalid_request_error"
    assert "shapes/2" in error["message"]
    assert too_big.status_code == 429
    assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]
    metrics = client.get("/metrics").text
    assert "rcs_predict_rejected_total 2.0" in metrics
    # Once drained, the queue admits again; an empty queue admits even an oversized request.
    big = client.post("/predict", json={**body, "images": [body["images"][0]] * 5})
    assert big.status_code == 200 and len(big.json()["data"]) == 5


@pytest.mark.parametrize(
    "settings_overrides", [{"predict_max_batch": 3, "predict_max_wait_ms": 30_000}]
)
def test_a_bad_request_does_not_fail_its_batch(
    client: TestClient, ctx: AppContext, version: int, pool: ThreadPoolExecutor
) -> None:
    black = png_bytes((0, 0, 0))
    gate, _, first = start_held_pass(ctx, client, pool, "shapes")
    # The black image, preprocessed as the server will, makes any pass that contains it fail.
    gate.poison = gate.transform_for_test(black)
    try:
        undecodable = post(pool, client, {"model": "shapes", "images": [b64(b"not an image")]})
        bodies = [b64(png_bytes((200, 10, 10))), b64(black), b64(png_bytes((10, 200, 10)))]
        futures = [post(pool, client, {"model": "shapes", "images": [d]}) for d in bodies]
        # A request that fails to decode leaves the queue: nothing waits for it.
        wait_until(
            lambda: undecodable.done() and admitted(ctx, "shapes/2") == 4,
            "three requests to be admitted and the undecodable one refused",
        )
    finally:
        gate.release()

    assert first.result().status_code == 200
    assert undecodable.result().status_code == 422
    assert futures[0].result().status_code == 200
    assert futures[2].result().status_code == 200
    # The poisoned request alone fails (a server error: the test client re-raises it).
    with pytest.raises(RuntimeError, match="poisoned"):
        futures[1].result()
    # After the held pass, one shared pass of three failed, then each request ran alone.
    assert gate.sizes == [1, 3, 1, 1, 1]


@pytest.mark.parametrize("settings_overrides", [{"predict_max_wait_ms": 600_000}])
def test_a_lone_request_goes_straight_to_the_model(
    client: TestClient, ctx: AppContext, version: int, pool: ThreadPoolExecutor
) -> None:
    gate = gate_model(ctx, "shapes")
    for data in colour_images(3):
        # With nothing else admitted there is no company to wait for: each request is answered
        # now, not after the 10 minutes it may wait (the result's timeout only guards a hang).
        response = post(pool, client, {"model": "shapes", "images": [b64(data)]})
        assert response.result(timeout=HELD_FOREVER).status_code == 200
    assert gate.sizes == [1, 1, 1]


@pytest.mark.parametrize("settings_overrides", [{"predict_max_wait_ms": 600_000}])
def test_a_queued_request_waits_for_one_still_decoding(
    client: TestClient,
    ctx: AppContext,
    version: int,
    pool: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = gate_model(ctx, "shapes")
    slow = png_bytes((1, 2, 3))
    decoding = threading.Event()
    decoded = threading.Event()
    preprocess = predict_service.preprocess

    def held_preprocess(model: Any, images: list[Any], *args: Any) -> torch.Tensor:
        if images[0].data == slow:  # this request's decoding is held until the test says
            decoding.set()
            assert decoded.wait(HELD_FOREVER)
        return preprocess(model, images, *args)

    monkeypatch.setattr(predict_service, "preprocess", held_preprocess)
    late = post(pool, client, {"model": "shapes", "images": [b64(slow)]})
    try:
        assert decoding.wait(HELD_FOREVER)
        early = post(pool, client, {"model": "shapes", "images": [b64(png_bytes())]})
        wait_until(lambda: waiting(ctx, "shapes/2") == 1, "the other request to queue")
        assert gate.sizes == []  # it waits: a request is admitted and decoding
    finally:
        decoded.set()
    assert early.result().status_code == 200 and late.result().status_code == 200
    assert gate.sizes == [2]


@pytest.mark.parametrize("settings_overrides", [{"predict_max_batch": 1, "predict_max_wait_ms": 0}])
def test_model_deleted_while_requests_are_queued(
    client: TestClient, ctx: AppContext, version: int, pool: ThreadPoolExecutor
) -> None:
    gate, body, running = start_held_pass(ctx, client, pool, "shapes/2")
    try:
        queued = post(pool, client, body)
        wait_until(lambda: waiting(ctx, "shapes/2") == 1, "a request to queue")
        # Deleting the version evicts it from the cache while two requests still need it.
        assert client.delete("/models/shapes/versions/2").status_code == 204
        assert ("shapes", 2) not in ctx.models.keys()
    finally:
        gate.release()
    for future in (running, queued):
        response: httpx.Response = future.result()
        assert response.status_code == 200 and response.json()["model"] == "shapes/2"
    assert ctx.batcher.queues() == []  # the evicted model is no longer referenced
    gone = client.post("/predict", json=body)
    assert gone.status_code == 404
    latest = client.post("/predict", json={**body, "model": "shapes"})
    assert latest.status_code == 200 and latest.json()["model"] == "shapes/1"


@pytest.mark.parametrize("settings_overrides", [{"predict_max_batch": 4, "predict_max_wait_ms": 0}])
def test_evicted_and_reloaded_model_gets_a_new_queue(
    client: TestClient, ctx: AppContext, version: int, pool: ThreadPoolExecutor
) -> None:
    gate, body, old = start_held_pass(ctx, client, pool, "shapes/2")
    try:
        ctx.models.evict("shapes", 2)
        # Reloaded from the registry into a new copy with its own queue; the evicted copy
        # stays referenced by its queue until its request is answered.
        fresh = post(pool, client, body)
        wait_until(lambda: len(queues_of(ctx, "shapes/2")) == 2, "a queue for the new copy")
        evicted, reloaded = (queue.model for queue in queues_of(ctx, "shapes/2"))
        assert evicted is not reloaded and not isinstance(reloaded.classifier, Gate)
    finally:
        gate.release()
    assert old.result().status_code == 200
    assert fresh.result().status_code == 200
    assert ctx.batcher.queues() == []


@pytest.mark.parametrize("settings_overrides", [{"predict_batching": False}])
def test_batching_off_runs_one_pass_per_request(
    client: TestClient, ctx: AppContext, version: int, pool: ThreadPoolExecutor
) -> None:
    gate = gate_model(ctx, "shapes")
    futures = [
        post(pool, client, {"model": "shapes", "images": [b64(d)]}) for d in colour_images(4)
    ]
    assert [f.result().status_code for f in futures] == [200] * 4
    assert sorted(gate.sizes) == [1, 1, 1, 1]
    assert ctx.batcher.queues() == []


def test_split_preprocessing_equals_the_whole_transform(artifact_folder: Path) -> None:
    from torchvision.transforms import Compose, Grayscale

    from service.predict.cache import load, split_transform, to_input

    model = load("m", 1, artifact_folder, "cpu")
    assert model.pixels is not None
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in colour_images(3)] + [
        Image.new("RGB", (50, 90), (3, 140, 250))
    ]
    whole = torch.stack([model.transform(image) for image in images])
    split = to_input(model, torch.stack([model.pixels(image) for image in images]))
    assert split.dtype == torch.float32 and split.is_contiguous()
    assert torch.equal(whole, split)
    # A stage it does not know keeps the transform whole.
    unknown = Compose([Grayscale(3), *model.transform.transforms])
    assert split_transform(unknown) is None
