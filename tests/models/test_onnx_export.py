"""ONNX export: ONNX Runtime answers as torch (dual inference, dynamic batch), the metadata a
runtime needs, every kind of image tower the project builds exports or says why not, the CLI
with its Triton repository, and a fresh process that has only the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import open_clip
import pytest
import torch

from models.artifacts import load_artifact, read_card
from models.backbone import OFFLINE_BACKBONE, create_backbone
from models.cli import main
from models.config import BackboneConfig
from models.data import read_image
from models.data.synthetic import CLASSES, DESCRIPTIONS
from models.errors import ExportError
from models.heads import Classifier
from models.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    TOLERANCE,
    OnnxRunner,
    export_onnx,
    read_metadata,
    sample_images,
)
from tests.conftest import make_classifier

CONFIGS = Path(__file__).parent / "onnx_configs"


@pytest.fixture(scope="module")
def artifact_on_disk(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.service.support import zeroshot_artifact

    return zeroshot_artifact(shapes_root, tmp_path_factory.mktemp("artifact") / "shapes")


def classifier_for(arch: str, beta: float = 0.5) -> Classifier:
    open_clip.add_model_config(CONFIGS)
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(arch=arch))
    return Classifier(backbone, CLASSES, ["a photo of a {c}."], DESCRIPTIONS, beta=beta)


def torch_probs(classifier: Classifier, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return classifier(images).numpy()


def test_export_answers_as_torch_for_any_batch_size(tmp_path: Path) -> None:
    classifier = make_classifier()
    report = export_onnx(classifier, tmp_path / "m.onnx")
    assert report.max_abs_diff <= TOLERANCE and report.images == 3
    runner = OnnxRunner(report.path)
    for n in (1, 7):  # traced at 2: the batch axis is dynamic
        images = sample_images(classifier, n, seed=n)
        got = runner(images.numpy())
        assert got.shape == (n, len(CLASSES))
        np.testing.assert_allclose(got, torch_probs(classifier, images), atol=TOLERANCE)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_export_carries_the_versions_beta(tmp_path: Path) -> None:
    images = sample_images(make_classifier(), 4)
    answers = {}
    for beta in (0.0, 0.5, 1.0):
        classifier = make_classifier()
        classifier.beta = beta
        path = export_onnx(classifier, tmp_path / f"b{beta}.onnx").path
        answers[beta] = OnnxRunner(path)(images.numpy())
        default = classifier(images, head="default" if beta == 1.0 else "dual").detach().numpy()
        np.testing.assert_allclose(answers[beta], default, atol=TOLERANCE)
    assert not np.allclose(answers[0.0], answers[1.0], atol=1e-3)
    np.testing.assert_allclose(answers[0.5], (answers[0.0] + answers[1.0]) / 2, atol=1e-5)


def test_metadata_names_classes_and_preprocessing(tmp_path: Path) -> None:
    classifier = make_classifier()
    path = export_onnx(classifier, tmp_path / "m.onnx", extra_metadata={"note": "x"}).path
    meta = read_metadata(path)
    assert json.loads(meta["classnames"]) == list(CLASSES)
    pre = json.loads(meta["preprocess"])
    assert pre["size"] == [32, 32] and len(pre["mean"]) == len(pre["std"]) == 3
    assert meta["head"] == "dual" and float(meta["beta"]) == 0.5 and meta["note"] == "x"
    model = onnx.load(str(path))
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == INPUT_NAME and dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert model.graph.output[0].name == OUTPUT_NAME


def test_a_difference_past_the_tolerance_fails_with_it(tmp_path: Path) -> None:
    classifier = make_classifier()
    report = export_onnx(classifier, tmp_path / "m.onnx")
    if report.max_abs_diff == 0:
        pytest.skip("ONNX Runtime answered bit for bit here; no difference to refuse")
    target = tmp_path / "strict.onnx"
    with pytest.raises(ExportError, match=r"differs from torch by .* \(tolerance"):
        export_onnx(classifier, target, tolerance=report.max_abs_diff / 2)
    assert not target.exists() and not list(tmp_path.glob(".strict*"))


# Each kind of image tower open_clip builds: its own ViT (the test-tiny-* architectures, with
# nn.MultiheadAttention), the ModifiedResNet (RN50 and kin), and timm towers (ConvNeXt,
# EfficientNet as in the offline backbone); tiny configs, random weights.
@pytest.mark.parametrize(
    "arch",
    [
        "test-tiny-vit",
        "test-tiny-vit-64",
        "test-onnx-rn",
        "test-onnx-timm-convnext",
        "test-onnx-timm-efficientnet",
    ],
)
def test_every_kind_of_tower_exports(arch: str, tmp_path: Path) -> None:
    classifier = classifier_for(arch)
    report = export_onnx(classifier, tmp_path / "m.onnx")
    assert report.max_abs_diff <= TOLERANCE


def test_a_tower_the_exporter_cannot_express_says_why(tmp_path: Path) -> None:
    # timm's test_vit resizes its position embedding at run time (dynamic_img_size) with an
    # antialiased bicubic resize, which no ONNX opset has.
    classifier = classifier_for("test-onnx-timm-vit")
    with pytest.raises(ExportError, match="'test-onnx-timm-vit' cannot be exported.*bicubic"):
        export_onnx(classifier, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_the_offline_backbone_exports(tmp_path: Path) -> None:
    from robust_clip_offline.build import build_offline_backbone
    from tests.models.test_offline import TINY, fake_sets

    folder = build_offline_backbone(
        tmp_path / OFFLINE_BACKBONE, TINY, sets=fake_sets(), progress=False
    )
    classifier = classifier_for(str(folder))
    report = export_onnx(classifier, tmp_path / "m.onnx")
    assert report.max_abs_diff <= TOLERANCE


# A script that knows nothing of this project: onnxruntime, numpy, PIL and the file's metadata.
STANDALONE = """
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
pre = json.loads(meta["robust_clip.preprocess"])
classes = json.loads(meta["robust_clip.classnames"])
h, w = pre["size"]
batch = []
for path in sys.argv[2:]:
    image = Image.open(path).convert("RGB")
    scale = max(h / image.height, w / image.width)
    size = (round(image.width * scale), round(image.height * scale))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    x = np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.float32) / 255
    batch.append(((x - pre["mean"]) / pre["std"]).transpose(2, 0, 1))
probs = session.run(["probabilities"], {"pixel_values": np.stack(batch).astype(np.float32)})[0]
print(json.dumps({"classes": classes, "probabilities": probs.tolist()}))
"""


def run_standalone(onnx_path: Path, images: list[Path]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(onnx_path), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.slow
def test_cli_writes_a_verified_file_and_a_triton_repository(
    artifact_on_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], shapes_root: Path
) -> None:
    out, repo = tmp_path / "shapes.onnx", tmp_path / "triton"
    images = sorted((shapes_root / "test").rglob("*.png"))[:4]
    code = main(
        [
            "export-onnx",
            str(artifact_on_disk),
            "--out",
            str(out),
            "--triton",
            str(repo),
            "--triton-name",
            "shapes model",
            "--images",
            *map(str, images),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "verified on 4 images" in printed and "triton:" in printed
    entry = repo / "shapes_model"
    config = (entry / "config.pbtxt").read_text()
    assert 'name: "shapes_model"' in config and 'backend: "onnxruntime"' in config
    assert "dims: [ 3, 32, 32 ]" in config and "dims: [ 4 ]" in config
    assert "max_batch_size: 32" in config and "dynamic_batching" in config
    classes = read_card(artifact_on_disk)["classnames"]
    assert (entry / "labels.txt").read_text().split() == classes
    assert (entry / "1" / "model.onnx").read_bytes() == out.read_bytes()
    meta = read_metadata(out)
    assert len(meta["artifact_digest"]) == 64
    # A fresh process with only onnxruntime and the file answers as the library does.
    classifier = load_artifact(artifact_on_disk).classifier
    transform = classifier.backbone.transform()
    expected = torch_probs(classifier, torch.stack([transform(read_image(p)) for p in images]))
    result = run_standalone(out, images)
    assert result["classes"] == classes
    np.testing.assert_allclose(np.array(result["probabilities"]), expected, atol=1e-4)


def test_cli_refuses_what_it_cannot_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-onnx", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
