"""A failed job's or evaluation's error code is the API's code for the same error (issue 23),
never a Python class name."""

from __future__ import annotations

import pytest

from models.data.images import ImageError
from models.errors import (
    ArtifactError,
    BackboneError,
    ConfigError,
    DataError,
    ModelsError,
    TrainingError,
)
from service.errors import error_code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("must be positive", "train.lr"), "invalid_config"),
        (DataError("no images"), "invalid_data"),
        # A subclass takes its parent's code.
        (ImageError("is not an image", file="a.png"), "invalid_data"),
        (BackboneError("unknown architecture"), "invalid_model"),
        (ArtifactError("heads.safetensors is missing"), "model_unavailable"),
        (TrainingError("non-finite loss at step 2"), "training_failed"),
    ],
)
def test_a_core_error_records_the_api_code(error: ModelsError, code: str) -> None:
    assert error_code(error) == code
