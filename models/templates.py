"""Built-in prompt template sets. Each template has one ``{c}`` slot for the class name.

``generic`` suits most photo tasks; ``imagenet`` (OpenAI's 80), ``iwildcam`` (2) and ``fmow`` (16)
are the sets the FLYP/WiSE-FT papers used for their benchmarks; ``*-drm`` are the single default
templates of DRM's released evaluation code, one per dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from models.errors import ConfigError

GENERIC = (
    "a photo of a {c}.",
    "a photo of the {c}.",
    "an image of a {c}.",
    "a close-up photo of a {c}.",
    "a low resolution photo of a {c}.",
    "a cropped photo of a {c}.",
)

# open_clip keeps OpenAI's ImageNet templates as lambdas; calling them with the slot gives text.
IMAGENET = tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)

IWILDCAM = ("a photo of {c}.", "{c} in the wild.")

FMOW = (
    "satellite photo of a {c}.",
    "aerial photo of a {c}.",
    "satellite photo of the {c}.",
    "aerial photo of the {c}.",
    "satellite photo of a {c} in asia.",
    "aerial photo of a {c} in asia.",
    "satellite photo of a {c} in africa.",
    "aerial photo of a {c} in africa.",
    "satellite photo of a {c} in the americas.",
    "aerial photo of a {c} in the americas.",
    "satellite photo of a {c} in europe.",
    "aerial photo of a {c} in europe.",
    "satellite photo of a {c} in oceania.",
    "aerial photo of a {c} in oceania.",
    "a photo of a {c}.",
    "{c}.",
)

# One generic prompt (CLIP's "a photo of a {c}."). None of DRM's released scripts uses it.
SINGLE = ("a photo of a {c}.",)

# The one default template per dataset that DRM's released evaluation code uses.
IMAGENET_DRM = ("a good photo of the {c}.",)
IWILDCAM_DRM = ("a photo of {c}.",)
FMOW_DRM = ("satellite photo of a {c}.",)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "generic": GENERIC,
    "imagenet": IMAGENET,
    "iwildcam": IWILDCAM,
    "fmow": FMOW,
    "single": SINGLE,
    "imagenet-drm": IMAGENET_DRM,
    "iwildcam-drm": IWILDCAM_DRM,
    "fmow-drm": FMOW_DRM,
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A set name or an explicit list -> a tuple of templates, each with a ``{c}`` slot."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ConfigError(
                f"unknown template set {templates!r}; built-in: {sorted(TEMPLATE_SETS)}",
                key="head.templates",
            )
        return TEMPLATE_SETS[templates]
    result = tuple(templates)
    if not result or any("{c}" not in t for t in result):
        raise ConfigError("every template needs a '{c}' slot", key="head.templates")
    return result


def fill(template: str, classname: str) -> str:
    # str.replace, not str.format: templates may contain other braces from user input.
    return template.replace("{c}", classname)
