from __future__ import annotations

import pytest

from models.errors import ConfigError
from models.templates import TEMPLATE_SETS, fill, resolve_templates


def test_builtin_sets_have_the_papers_sizes() -> None:
    sizes = {name: len(t) for name, t in TEMPLATE_SETS.items()}
    assert sizes["imagenet"] == 80 and sizes["iwildcam"] == 2 and sizes["fmow"] == 16
    assert all("{c}" in t for templates in TEMPLATE_SETS.values() for t in templates)


def test_user_lists_are_accepted_and_checked() -> None:
    assert resolve_templates(["a {c} on a shelf."]) == ("a {c} on a shelf.",)
    with pytest.raises(ConfigError, match="slot"):
        resolve_templates(["no slot here"])
    with pytest.raises(ConfigError, match="unknown template set 'nope'"):
        resolve_templates("nope")


def test_fill_leaves_other_braces_alone() -> None:
    assert fill("a {c} {not a slot}", "cat") == "a cat {not a slot}"


def test_drms_released_single_templates_are_named_sets() -> None:
    assert resolve_templates("imagenet-drm") == ("a good photo of the {c}.",)
    assert resolve_templates("iwildcam-drm") == ("a photo of {c}.",)
    assert resolve_templates("fmow-drm") == ("satellite photo of a {c}.",)
    # ``single`` is CLIP's generic prompt, which none of DRM's released scripts uses.
    assert resolve_templates("single") == ("a photo of a {c}.",)
    assert resolve_templates("single") not in {
        resolve_templates(f"{name}-drm") for name in ("imagenet", "iwildcam", "fmow")
    }
