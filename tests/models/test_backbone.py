from __future__ import annotations

import logging
import threading

import pytest
import torch

from models.backbone import (
    _quiet_open_clip,
    create_backbone,
    encode_text,
    list_architectures,
    skipped_random_init,
    trim_padding,
)
from models.config import BackboneConfig
from models.errors import BackboneError


def test_tiny_test_architectures_are_registered() -> None:
    assert {"test-tiny-vit", "test-tiny-vit-64", "ViT-B-16"} <= set(list_architectures())


def test_trimmed_text_encoding_equals_open_clip_full_length() -> None:
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(arch="test-tiny-vit"))
    tokens = backbone.tokenizer(["a photo of a circle.", "a much longer description of a cross"])
    assert trim_padding(tokens).shape[1] < tokens.shape[1]
    with torch.no_grad():
        full = backbone.model.encode_text(tokens)
        trimmed = encode_text(backbone.model, tokens)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_unknown_architecture_and_missing_weights_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackboneError, match="unknown architecture 'ViT-Q-99'"):
        create_backbone(BackboneConfig(arch="ViT-Q-99"))
    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone(BackboneConfig(arch="test-tiny-vit", pretrained=str(tmp_path / "w.pt")))
    with pytest.raises(BackboneError, match="open_clip_config.json"):
        create_backbone(BackboneConfig(arch=str(tmp_path)))


def test_local_checkpoint_file_is_loaded_with_weights_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = create_backbone(BackboneConfig(arch="test-tiny-vit"))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    torch.manual_seed(2)
    loaded = create_backbone(BackboneConfig(arch="test-tiny-vit", pretrained=str(path)))
    assert torch.equal(loaded.model.visual.proj, source.model.visual.proj)


def test_skipped_random_init_puts_torch_nn_init_back() -> None:
    originals = {name: getattr(torch.nn.init, name) for name in ("normal_", "kaiming_uniform_")}
    with skipped_random_init(), skipped_random_init():  # nested: restored once, at the end
        assert torch.nn.init.normal_ is not originals["normal_"]
    assert {name: getattr(torch.nn.init, name) for name in originals} == originals


def test_quieting_open_clip_leaves_other_threads_and_the_level_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = logging.getLogger()
    level = root.level

    def other_thread() -> None:
        logging.warning("from another thread")

    with caplog.at_level(logging.INFO):
        with _quiet_open_clip():
            logging.warning("from open_clip")
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()
            logging.error("an error still shows")
        logging.warning("after the block")
    assert [r.getMessage() for r in caplog.records] == [
        "from another thread",
        "an error still shows",
        "after the block",
    ]
    assert root.level == level and not root.filters
