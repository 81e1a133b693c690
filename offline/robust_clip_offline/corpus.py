"""The captioned alignment corpus: real grayscale images rendered in varied styles, with captions.

Each render draws its style (object colour, background colour or texture, scale, position,
corruption) independently of the class, so no non-core feature predicts the class anywhere in
the corpus. Captions name the class in varied words and templates and often say what the image
shows besides (colour, background, size, corruption, and the class's shape or parts), so the
text side learns those as separate directions instead of folding them into the class.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from models.data.images import open_image
from models.templates import GENERIC
from robust_clip_offline.data import DOMAINS, ImageSet

# Named colours the captions may use (RGB). Wide apart, so a name is always right.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "red": (215, 35, 35),
    "green": (40, 160, 60),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 40),
    "orange": (245, 135, 20),
    "purple": (125, 50, 165),
    "pink": (245, 135, 190),
    "brown": (120, 75, 35),
    "cyan": (40, 195, 205),
}
TEXTURES = ("striped", "checkered", "speckled", "gradient")
CORRUPTIONS: dict[str, tuple[str, ...]] = {
    "noise": ("noisy", "grainy", "with heavy noise"),
    "blur": ("blurry", "out of focus", "blurred"),
    "pixelate": ("pixelated", "blocky", "low resolution"),
    "contrast": ("low contrast", "faded", "washed out"),
    "jpeg": ("jpeg compressed", "with compression artifacts", "low quality"),
    "lowres": ("low resolution", "upscaled from a tiny image", "blurry and low resolution"),
}
# How often a render keeps the sources' own look (white on black, clean): benchmarks show it.
P_ORIGINAL = 0.25
P_TEXTURE = 0.35
P_CORRUPT = 0.35
# Object side over canvas side; above 1 the object is cropped by the frame (a tight crop).
SCALE_RANGE = (0.5, 1.25)
MIN_COLOUR_DISTANCE = 140.0

EXTRA_TEMPLATES = (
    "a {c}.",
    "{c}.",
    "a picture of a {c}.",
    "a drawing of a {c}.",
    "a silhouette of a {c}.",
    "an image of the {c}.",
    "a rendering of a {c}.",
    "there is a {c} in the picture.",
    "this is a {c}.",
)
TEMPLATES = GENERIC + EXTRA_TEMPLATES

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "digits": {
        f"digit {k}": (
            f"digit {k}",
            f"number {k}",
            f"{k}",
            _WORDS[k],
            f"digit {_WORDS[k]}",
            f"number {_WORDS[k]}",
            f"handwritten {k}",
            f"handwritten digit {k}",
        )
        for k in range(10)
    },
    "fashion": {
        "t-shirt": ("t-shirt", "tee shirt", "top", "short-sleeved top", "tee"),
        "trousers": ("trousers", "pair of trousers", "pants", "pair of jeans", "slacks"),
        "pullover": ("pullover", "sweater", "jumper", "knit sweater"),
        "dress": ("dress", "gown", "frock", "summer dress"),
        "coat": ("coat", "jacket", "overcoat", "winter coat"),
        "sandal": ("sandal", "strappy sandal", "summer sandal", "flip-flop"),
        "shirt": ("shirt", "button-up shirt", "blouse", "collared shirt"),
        "sneaker": ("sneaker", "trainer", "running shoe", "athletic shoe"),
        "bag": ("bag", "handbag", "purse", "tote bag", "shoulder bag"),
        "ankle boot": ("ankle boot", "boot", "short boot", "bootie"),
    },
    "animals": {
        "bear": ("bear", "grizzly bear", "wild bear", "bear cub"),
        "bird": ("bird", "songbird", "perched bird", "flying bird"),
        "cat": ("cat", "kitten", "house cat", "kitty"),
        "cow": ("cow", "bull", "calf", "dairy cow"),
        "dog": ("dog", "puppy", "hound", "pet dog"),
        "elephant": ("elephant", "african elephant", "baby elephant"),
        "giraffe": ("giraffe", "tall giraffe", "baby giraffe"),
        "horse": ("horse", "pony", "stallion", "foal"),
        "sheep": ("sheep", "lamb", "ewe", "woolly sheep"),
        "zebra": ("zebra", "striped zebra", "plains zebra"),
    },
}

# Shape and parts, worded differently from the concept-head descriptions in data.py, so
# the concept head is measured on descriptions the corpus never showed verbatim.
CORE_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "digits": {
        "digit 0": ("one closed oval loop", "a round ring shape", "an empty oval"),
        "digit 1": ("one straight vertical stroke", "a single upright line"),
        "digit 2": ("a curved hook and a flat bottom line", "a curve ending in a horizontal base"),
        "digit 3": ("two open curves facing right", "two stacked bumps on the right"),
        "digit 4": ("a horizontal bar crossing an upright stroke", "an open triangle and a stem"),
        "digit 5": ("a flat top bar and a round open belly", "a straight top and a curved bottom"),
        "digit 6": ("a closed loop at the bottom", "a lower loop with a curve rising above"),
        "digit 7": ("a top bar and a long slanted stroke", "a horizontal line and a diagonal"),
        "digit 8": ("two stacked closed loops", "two rings, one above the other"),
        "digit 9": ("a closed loop on top and a straight tail", "a round head over a stem"),
    },
    "fashion": {
        "t-shirt": ("short sleeves and a round neck", "short sleeves and no collar"),
        "trousers": ("two long legs", "a waistband and two legs"),
        "pullover": ("long sleeves and a knitted body", "long sleeves and no buttons"),
        "dress": ("a fitted top and a flowing skirt", "one piece that widens below the waist"),
        "coat": ("long sleeves and a front opening", "a long body with buttons or a zip"),
        "sandal": ("thin straps and an open toe", "a flat sole held by straps"),
        "shirt": ("a collar and a row of buttons", "a buttoned front and a collar"),
        "sneaker": ("laces and a thick rubber sole", "a low closed toe and laces"),
        "bag": ("a handle on top", "a boxy body and a strap"),
        "ankle boot": ("a short shaft above the ankle", "a closed toe, a heel and a high ankle"),
    },
    "animals": {
        "bear": ("a bulky body and thick legs", "a round head and a short tail"),
        "bird": ("wings and a pointed beak", "feathers, wings and thin legs"),
        "cat": ("pointed ears and a long tail", "a small body and a curling tail"),
        "cow": ("a large body and straight legs", "horns and a thin tail"),
        "dog": ("a snout, ears and a tail", "four legs and a pointed snout"),
        "elephant": ("a long trunk and large ears", "a trunk and tusks"),
        "giraffe": ("a very long neck", "a long neck and long thin legs"),
        "horse": ("a mane and a long face", "long legs and a flowing tail"),
        "sheep": ("a round woolly body", "a fluffy body and thin legs"),
        "zebra": ("a striped body", "a horse-like body with stripes"),
    },
}


@dataclass(frozen=True)
class Style:
    """How one image is rendered: every field is drawn independently of the class."""

    foreground: str
    background: str
    texture: str | None  # None: plain background
    texture_colour: str | None
    scale: float
    offset: tuple[float, float]  # fraction of the free space left / above the object
    corruption: str | None
    severity: float  # 0..1
    original: bool  # the sources' own look: white on black, clean, full size


@dataclass(frozen=True)
class Render:
    """One corpus item: an RGB uint8 image [S, S, 3], its caption and where it came from."""

    image: np.ndarray
    caption: str
    label: int
    source: str
    index: int


# ---------------------------------------------------------------------------------------------
# Styles


def sample_style(rng: np.random.Generator) -> Style:
    if rng.random() < P_ORIGINAL:
        return Style("white", "black", None, None, 1.0, (0.5, 0.5), None, 0.0, True)
    background = _pick(rng, tuple(PALETTE))
    texture = _pick(rng, TEXTURES) if rng.random() < P_TEXTURE else None
    texture_colour = _distinct_colour(rng, (background,)) if texture else None
    used = (background,) if texture_colour is None else (background, texture_colour)
    foreground = _distinct_colour(rng, used)
    scale = float(rng.uniform(*SCALE_RANGE))
    offset = (float(rng.random()), float(rng.random()))
    corruption = _pick(rng, tuple(CORRUPTIONS)) if rng.random() < P_CORRUPT else None
    severity = float(rng.random())
    return Style(
        foreground,
        background,
        texture,
        texture_colour,
        scale,
        offset,
        corruption,
        severity,
        False,
    )


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _distinct_colour(rng: np.random.Generator, avoid: Sequence[str]) -> str:
    """A palette colour far from every colour in ``avoid``, so the object stays visible."""
    options = [
        name
        for name, rgb in PALETTE.items()
        if all(_distance(rgb, PALETTE[other]) >= MIN_COLOUR_DISTANCE for other in avoid)
    ]
    return _pick(rng, options)


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------
# Rendering


def render(gray: np.ndarray, style: Style, size: int, rng: np.random.Generator) -> np.ndarray:
    """Composite a grayscale image (white object on black) onto ``style``'s canvas."""
    canvas = _background(style, size, rng)
    side = max(4, round(style.scale * size))
    alpha = _resized(gray, side)
    # Negative when the object is larger than the canvas: then only a window of it shows.
    top = round(style.offset[1] * (size - side))
    left = round(style.offset[0] * (size - side))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, size), min(left + side, size)
    a = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
    colour = _jittered(style.foreground, rng, 0.0 if style.original else 20.0)
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1.0 - a) + colour * a
    image = np.clip(canvas * 255.0, 0, 255).round().astype(np.uint8)
    return _corrupt(image, style, rng) if style.corruption else image


def _resized(gray: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(gray, dtype=np.uint8), mode="L")
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), np.float64) / 255.0


def _jittered(name: str, rng: np.random.Generator, amount: float) -> np.ndarray:
    rgb = np.asarray(PALETTE[name], dtype=np.float64) + rng.uniform(-amount, amount, 3)
    return np.clip(rgb, 0, 255) / 255.0


def _background(style: Style, size: int, rng: np.random.Generator) -> np.ndarray:
    jitter = 0.0 if style.original else 20.0
    base = _jittered(style.background, rng, jitter)
    canvas = np.broadcast_to(base, (size, size, 3)).copy()
    if style.texture is None or style.texture_colour is None:
        return canvas
    other = _jittered(style.texture_colour, rng, jitter)
    weight = _texture_weight(style.texture, size, rng)[..., None]
    return canvas * (1.0 - weight) + other * weight


def _texture_weight(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where the second colour shows, in [0, 1], for each texture kind."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    period = float(rng.uniform(0.08, 0.25) * size)
    if texture == "striped":
        angle = float(rng.uniform(0, np.pi))
        coord = x * np.cos(angle) + y * np.sin(angle)
        return ((coord // (period / 2)) % 2).astype(np.float64)
    if texture == "checkered":
        return ((x // period + y // period) % 2).astype(np.float64)
    if texture == "speckled":
        return (rng.random((size, size)) < 0.3).astype(np.float64)
    angle = float(rng.uniform(0, 2 * np.pi))  # gradient
    coord = x * np.cos(angle) + y * np.sin(angle)
    return (coord - coord.min()) / max(float(np.ptp(coord)), 1e-6)


def _corrupt(image: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    size = image.shape[0]
    s = style.severity
    if style.corruption == "noise":
        noisy = image.astype(np.float64) + rng.normal(0.0, 255.0 * (0.06 + 0.14 * s), image.shape)
        return np.clip(noisy, 0, 255).round().astype(np.uint8)
    if style.corruption == "contrast":
        f = image.astype(np.float64)
        mean = f.mean(axis=(0, 1), keepdims=True)
        return np.clip(mean + (f - mean) * (0.45 - 0.25 * s), 0, 255).round().astype(np.uint8)
    pil = Image.fromarray(image)
    if style.corruption == "lowres":  # a tiny image scaled up smoothly
        small = max(6, round(size * (0.2 - 0.08 * s)))
        pil = pil.resize((small, small), Image.Resampling.BOX)
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    elif style.corruption == "blur":
        pil = pil.filter(ImageFilter.GaussianBlur(radius=size / 64 * (0.8 + 1.2 * s)))
    elif style.corruption == "pixelate":
        small = max(6, round(size * (0.3 - 0.15 * s)))
        pil = pil.resize((small, small), Image.Resampling.BOX)
        pil = pil.resize((size, size), Image.Resampling.NEAREST)
    else:  # jpeg
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(round(20 - 14 * s)))
        pil = open_image(buffer.getvalue())  # its own bytes, but every open is the policy's
    return np.asarray(pil, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Captions


def caption(domain: str, classname: str, style: Style, rng: np.random.Generator) -> str:
    """A caption naming the class in one of many ways, with some of what else the image shows."""
    noun = _pick(rng, SYNONYMS[domain][classname])
    adjectives = _adjectives(style, rng)
    template = _pick(rng, TEMPLATES)
    text = template.replace("{c}", " ".join([*adjectives, noun])).rstrip(".")
    clauses = _clauses(domain, classname, style, rng, colour_said=bool(adjectives))
    order = rng.permutation(len(clauses))
    text = ", ".join([text, *(clauses[i] for i in order)]) + "."
    # Half the captions fix "a elephant" to "an elephant"; the default head's templates don't.
    return _articles(text) if rng.random() < 0.5 else text


def _adjectives(style: Style, rng: np.random.Generator) -> list[str]:
    words = []
    if style.scale < 0.65 and rng.random() < 0.5:
        words.append(_pick(rng, ("small", "tiny")))
    if style.scale > 0.9 and not style.original and rng.random() < 0.3:
        words.append(_pick(rng, ("large", "big")))
    if rng.random() < 0.4:
        words.append(style.foreground)
    return words


def _clauses(
    domain: str, classname: str, style: Style, rng: np.random.Generator, colour_said: bool
) -> list[str]:
    clauses = []
    if rng.random() < 0.35:
        clauses.append("with " + _pick(rng, CORE_PHRASES[domain][classname]))
    if rng.random() < 0.5:
        clauses.append(_background_phrase(style, rng))
    if not colour_said and rng.random() < 0.3:
        clauses.append(_pick(rng, (f"in {style.foreground}", f"drawn in {style.foreground}")))
    if style.scale > 1.05 and rng.random() < 0.4:
        clauses.append(_pick(rng, ("cropped tightly", "filling the frame", "close up")))
    if style.corruption and rng.random() < 0.6:
        clauses.append(_pick(rng, CORRUPTIONS[style.corruption]))
    return clauses


def _background_phrase(style: Style, rng: np.random.Generator) -> str:
    if style.texture is None:
        return f"on a {style.background} background"
    if rng.random() < 0.5:
        return f"on a {style.texture} background"
    return f"on a {style.texture} {style.background} and {style.texture_colour} background"


def _articles(text: str) -> str:
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


# ---------------------------------------------------------------------------------------------
# The corpus


def plan(
    sets: Mapping[str, ImageSet], renders: Mapping[str, int], seed: int
) -> list[tuple[str, int]]:
    """Which (source, position) each render uses: a seeded pass over each source's images,
    repeated (with fresh styles) when a source has fewer images than renders asked of it."""
    rng = np.random.default_rng(seed)
    items: list[tuple[str, int]] = []
    for source in sorted(renders):
        n = len(sets[source])
        order = np.concatenate([rng.permutation(n) for _ in range(-(-renders[source] // n))])
        items += [(source, int(i)) for i in order[: renders[source]]]
    return [items[i] for i in rng.permutation(len(items))]


def iter_corpus(
    sets: Mapping[str, ImageSet],
    renders: Mapping[str, int],
    size: int,
    seed: int,
) -> Iterator[Render]:
    """Render the corpus lazily (it is large as pixels; callers keep features, not images)."""
    rng = np.random.default_rng([seed, 1])
    for source, position in plan(sets, renders, seed):
        images = sets[source]
        label = int(images.labels[position])
        style = sample_style(rng)
        image = render(images.images[position], style, size, rng)
        text = caption(DOMAINS[source], images.classnames[label], style, rng)
        yield Render(image, text, label, source, int(images.indices[position]))
