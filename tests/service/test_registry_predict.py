"""Registry reads, aliases and deletion; POST /predict in both encodings and its errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from models.artifacts import load_artifact
from service.context import AppContext
from tests.service.support import b64, png_bytes, register_artifact


@pytest.fixture
def versions(ctx: AppContext, artifact_folder: Path) -> list[int]:
    with ctx.sessions() as session:
        return [
            register_artifact(session, ctx.store, "shapes", artifact_folder, f"ftjob-{i:024x}")
            for i in range(2)
        ]


def test_registration_is_keyed_by_job(ctx: AppContext, artifact_folder: Path) -> None:
    with ctx.sessions() as session:
        first = register_artifact(session, ctx.store, "m", artifact_folder, "ftjob-" + "a" * 24)
        again = register_artifact(session, ctx.store, "m", artifact_folder, "ftjob-" + "a" * 24)
    assert first == again == 1


def test_model_and_version_objects(client: TestClient, versions: list[int]) -> None:
    assert versions == [1, 2]
    model = client.get("/models/shapes").json()
    assert model["object"] == "registered_model"
    assert [v["version"] for v in model["latest_versions"]] == [2, 1]
    card = client.get("/models/shapes/versions/2").json()
    assert card["status"] == "READY"
    assert card["objective"] == "zeroshot"
    # The default rule serves the default head: dual inference at beta 1.
    assert card["beta"] == 1.0 and card["wise_ft"]["selected_head"] == "default"
    assert card["classes"] == ["circle", "cross", "square", "triangle"]
    assert set(card["metrics"]) >= {"zeroshot", "selected"}
    assert card["wise_ft"]["curve"][0]["alpha"] == 0.0
    assert len(card["dataset"]["fingerprint"]) == 64
    assert card["descriptions"]["circle"]
    assert card["source"].endswith("shapes/v2")
    assert client.get("/models").json()["data"][0]["name"] == "shapes"


def test_aliases_move_and_reserved_names_are_refused(
    client: TestClient, versions: list[int]
) -> None:
    put = client.put("/models/shapes/aliases/champion", json={"version": 1})
    assert put.status_code == 200 and put.json()["version"] == 1
    client.put("/models/shapes/aliases/champion", json={"version": 2})
    assert client.get("/models/shapes").json()["aliases"] == {"champion": 2}
    assert client.get("/models/shapes/aliases/champion").json()["version"] == 2
    for reserved in ("latest", "v3"):
        response = client.put(f"/models/shapes/aliases/{reserved}", json={"version": 1})
        assert response.status_code == 422 and response.json()["error"]["param"] == "alias"
    missing = client.put("/models/shapes/aliases/x", json={"version": 9})
    assert missing.status_code == 404
    assert client.delete("/models/shapes/aliases/champion").status_code == 204
    assert client.delete("/models/shapes/aliases/champion").status_code == 404


def test_delete_version_removes_aliases_artifact_and_cache(
    client: TestClient, ctx: AppContext, versions: list[int]
) -> None:
    client.put("/models/shapes/aliases/champion", json={"version": 2})
    client.post("/predict", json={"model": "shapes/2", "images": [b64(png_bytes())]})
    assert ("shapes", 2) in ctx.models.keys()
    assert client.delete("/models/shapes/versions/2").status_code == 204
    assert ("shapes", 2) not in ctx.models.keys()
    assert not ctx.store.local_path("shapes/v2").exists()
    assert client.get("/models/shapes").json()["aliases"] == {}
    assert client.get("/models/shapes/versions/2").status_code == 404
    latest = client.post("/predict", json={"model": "shapes", "images": [b64(png_bytes())]})
    assert latest.json()["model"] == "shapes/1"


def test_predict_json_matches_the_artifact(
    client: TestClient, versions: list[int], artifact_folder: Path, shapes_root: Path
) -> None:
    image_path = shapes_root / "test" / "circle" / "0000.png"
    body = {"model": "shapes/1", "images": [b64(image_path.read_bytes())] * 2, "top_k": 4}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"] == "shapes/1"
    assert len(result["data"]) == 2
    labels = result["data"][0]["labels"]
    assert len(labels) == 4
    assert sum(label["probability"] for label in labels) == pytest.approx(1.0, abs=1e-5)

    artifact = load_artifact(artifact_folder)
    from PIL import Image

    transform = artifact.classifier.backbone.transform(train=False)
    with torch.inference_mode():
        probs = artifact.classifier(transform(Image.open(image_path).convert("RGB"))[None])[0]
    expected = artifact.classifier.classnames[int(probs.argmax())]
    assert labels[0]["label"] == expected
    assert labels[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_with_the_same_answer(
    client: TestClient, ctx: AppContext, versions: list[int], shapes_root: Path
) -> None:
    from PIL import Image

    from service.predict.service import DRAFT_MARGIN, ImageInput, decode, resolve

    # A test image enlarged to 16 times the model's input, as a camera would send it.
    size = max(resolve(ctx, "shapes/1").classifier.backbone.image_size)
    image = Image.open(shapes_root / "test" / "circle" / "0000.png").convert("RGB")
    buffer = io.BytesIO()
    image.resize((16 * size,) * 2, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    decoded = decode(ImageInput(data, None, "images[0]"), 10**8, DRAFT_MARGIN * size)
    assert decoded.size == (2 * size,) * 2  # 1/8 of the side: still twice the input
    body = {"model": "shapes/1", "images": [b64(data)], "top_k": 1}

    def top() -> tuple[str, float]:
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        label = response.json()["data"][0]["labels"][0]
        return label["label"], label["probability"]

    whole = top()  # off by default
    ctx.settings.predict_jpeg_draft = True
    reduced = top()
    assert reduced[0] == whole[0]
    assert reduced[1] == pytest.approx(whole[1], abs=0.02)


def test_predict_multipart_by_alias(client: TestClient, versions: list[int]) -> None:
    client.put("/models/shapes/aliases/champion", json={"version": 1})
    files = [
        ("files", ("a.png", png_bytes(), "image/png")),
        ("files", ("b.png", png_bytes((1, 2, 3)), "image/png")),
    ]
    response = client.post("/predict", data={"model": "shapes@champion", "top_k": "1"}, files=files)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["filename"] for d in data] == ["a.png", "b.png"]
    assert all(len(d["labels"]) == 1 for d in data)


def test_predict_errors(client: TestClient, versions: list[int]) -> None:
    good = b64(png_bytes())
    unknown = client.post("/predict", json={"model": "nope", "images": [good]})
    assert unknown.status_code == 404 and "no model 'nope'" in unknown.json()["error"]["message"]
    alias = client.post("/predict", json={"model": "shapes@ghost", "images": [good]})
    assert alias.status_code == 404
    version = client.post("/predict", json={"model": "shapes/7", "images": [good]})
    assert version.status_code == 404

    garbage = client.post("/predict", json={"model": "shapes", "images": [good, b64(b"junk")]})
    assert garbage.status_code == 422
    assert garbage.json()["error"]["param"] == "images[1]"
    assert "cannot be decoded" in garbage.json()["error"]["message"]
    not_b64 = client.post("/predict", json={"model": "shapes", "images": ["***"]})
    assert not_b64.status_code == 422 and "base64" in not_b64.json()["error"]["message"]

    files = [
        ("files", ("ok.png", png_bytes(), "image/png")),
        ("files", ("bad.jpg", b"nope", "image/jpeg")),
    ]
    named = client.post("/predict", data={"model": "shapes"}, files=files)
    assert named.status_code == 422 and "'bad.jpg'" in named.json()["error"]["message"]

    empty = client.post("/predict", json={"model": "shapes", "images": []})
    assert empty.status_code == 422 and empty.json()["error"]["param"] == "images"
    wrong_type = client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 400


@pytest.mark.parametrize(
    "settings_overrides",
    [{"max_predict_bytes": 4000, "max_images_per_request": 2, "max_image_pixels": 64 * 64}],
)
def test_predict_limits_are_413(client: TestClient, versions: list[int]) -> None:
    small = b64(png_bytes())
    too_many = client.post("/predict", json={"model": "shapes", "images": [small] * 3})
    assert (
        too_many.status_code == 413 and "over the limit of 2" in too_many.json()["error"]["message"]
    )
    files = [("files", (f"{i}.png", png_bytes(), "image/png")) for i in range(4)]
    many_files = client.post("/predict", data={"model": "shapes"}, files=files)
    assert many_files.status_code == 413 and many_files.json()["error"]["param"] == "files"
    huge = client.post("/predict", json={"model": "shapes", "images": [b64(png_bytes(size=200))]})
    assert huge.status_code == 413 and "pixels" in huge.json()["error"]["message"]
    body = {"model": "shapes", "images": [b64(bytes(5000))]}
    too_big = client.post("/predict", json=body)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"


def test_model_cache_is_lru_bounded_by_bytes(artifact_folder: Path) -> None:
    from service.predict.cache import ModelCache, load

    size = load("m", 1, artifact_folder, "cpu").nbytes
    cache = ModelCache(max_bytes=int(size * 2.5))
    for version in (1, 2, 3):
        cache.get("m", version, lambda: artifact_folder)
    assert cache.keys() == [("m", 2), ("m", 3)]
    cache.get("m", 2, lambda: artifact_folder)  # touch: 3 becomes the least recently used
    cache.get("m", 4, lambda: artifact_folder)
    assert cache.keys() == [("m", 2), ("m", 4)]
    assert cache.get("m", 4, lambda: Path("/nonexistent")) is cache.get(
        "m", 4, lambda: artifact_folder
    )


@pytest.mark.parametrize(
    ("per_image_s", "chosen"),
    [({2: 0.030, 1: 0.010}, 1), ({2: 0.010, 1: 0.030}, 2), ({2: 0.009, 1: 0.010}, 1)],
)
def test_a_model_s_passes_get_the_thread_count_timed_faster_and_one_unless_more_earn_it(
    artifact_folder: Path, per_image_s: dict[int, float], chosen: int
) -> None:
    from service.predict import cache

    model = cache.load("m", 1, artifact_folder, "cpu")
    now = [0.0]
    seen: list[int | None] = []

    def forward(loaded: cache.LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
        seen.append(loaded.threads)
        assert loaded.threads is not None
        now[0] += per_image_s[loaded.threads] * inputs.shape[0]  # a fake clock
        return inputs

    threads, seconds = cache.calibrate_threads(model, 2, forward, clock=lambda: now[0])
    assert threads == chosen == model.threads
    assert seconds == pytest.approx(
        {n: s * cache.CALIBRATION_BATCH for n, s in per_image_s.items()}
    )
    assert seen == [2] * (1 + cache.CALIBRATION_PASSES) + [1] * (1 + cache.CALIBRATION_PASSES)


def test_a_model_s_passes_run_with_its_threads_and_leave_the_caller_s_as_they_were(
    artifact_folder: Path,
) -> None:
    from service.predict import cache

    model = cache.ModelCache(max_bytes=1 << 40).get("m", 1, lambda: artifact_folder)
    inside: list[int] = []
    features = model.classifier.image_features

    def image_features(images: torch.Tensor) -> torch.Tensor:  # where the pass enters the model
        inside.append(torch.get_num_threads())
        return features(images)

    model.classifier.image_features = image_features  # type: ignore[method-assign]
    before = torch.get_num_threads()
    model.threads = 1
    cache.run(model, torch.zeros(1, 3, *model.classifier.backbone.image_size))
    model.threads = None
    cache.run(model, torch.zeros(1, 3, *model.classifier.backbone.image_size))
    assert inside[-2:] == [1, before] and torch.get_num_threads() == before


def test_a_set_thread_count_or_a_single_core_is_not_timed(artifact_folder: Path) -> None:
    from service.predict import cache

    fixed = cache.ModelCache(max_bytes=1 << 40, engine=cache.Engine(threads=2))
    assert fixed.get("m", 1, lambda: artifact_folder).threads is None
    one = cache.ModelCache(max_bytes=1 << 40)
    one.available_threads = 1
    assert one.get("m", 1, lambda: artifact_folder).threads is None
    timed = cache.ModelCache(max_bytes=1 << 40)
    timed.available_threads = 2
    assert timed.get("m", 1, lambda: artifact_folder).threads in (1, 2)


def test_a_model_whose_timing_fails_is_served_with_every_thread(
    artifact_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.predict import cache

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cache, "calibrate_threads", broken)
    models = cache.ModelCache(max_bytes=1 << 40)
    models.available_threads = 2
    assert models.get("m", 1, lambda: artifact_folder).threads is None


def test_a_loaded_model_is_kept_from_the_collector_and_a_dropped_one_is_collected(
    artifact_folder: Path,
) -> None:
    import gc
    import weakref

    from service.predict.cache import ModelCache

    cache = ModelCache(max_bytes=1 << 40)
    model = cache.get("m", 1, lambda: artifact_folder)
    # Full collections then walk only what requests make, not the model (the p99 pauses).
    assert gc.get_freeze_count() > 0
    model.classifier.cycle = model  # type: ignore[attr-defined]  # a reference cycle
    dropped = weakref.ref(model)
    del model
    cache.evict("m", 1)
    assert dropped() is None  # not kept alive by the freeze
    gc.unfreeze()


def test_report_and_its_plot_are_served_for_every_version(
    client: TestClient, versions: list[int]
) -> None:
    from PIL import Image

    report = client.get(f"/models/shapes/versions/{versions[0]}/report")
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["format"] == "robust-clip-report/1" and body["served_head"] == "default"
    assert body["selection"]["alpha"] == 0.0 and body["curve"][0]["alpha"] == 0.0
    assert set(body["per_class_acc"]["test"]) == {"circle", "square", "triangle", "cross"}
    assert set(body["description_diagnostics"]["per_class"]) == set(body["per_class_acc"]["test"])
    png = client.get(f"/models/shapes/versions/{versions[0]}/report.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    missing = client.get("/models/shapes/versions/99/report")
    assert missing.status_code == 404 and "no version 99" in missing.json()["error"]["message"]
    assert (
        client.get("/models/shapes/versions/1/report", headers={"Authorization": ""}).status_code
        == 401
    )
