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
