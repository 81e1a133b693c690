from __future__ import annotations

import pytest
import torch

from models.backbone import create_backbone, encode_text, list_architectures, trim_padding
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
