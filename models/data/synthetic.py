"""A small synthetic shift benchmark written as an image folder, for tests and the demo.

The core feature is the shape (what the class descriptions talk about). A non-core feature, the
background colour, agrees with the class for most training images and is shuffled in the
``ood_test`` split, so a model that learned the background loses accuracy there.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
DESCRIPTIONS = {
    "circle": ["a round shape with a smooth curved outline", "a filled disc"],
    "square": ["a shape with four equal straight sides and four right angles"],
    "triangle": ["a shape with three straight sides and three corners"],
    "cross": ["two straight bars crossing at right angles, like a plus sign"],
}
BACKGROUNDS = ((200, 60, 60), (60, 160, 60), (60, 90, 200), (200, 180, 60))


def _draw(
    shape: str, background: tuple[int, int, int], size: int, rng: random.Random
) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = (rng.uniform(0.4, 0.6) * size for _ in range(2))
    fill = tuple(rng.randint(225, 255) for _ in range(3))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    return image


def write_shapes_dataset(
    root: str | Path,
    per_class: int = 24,
    size: int = 32,
    spurious: float = 0.9,
    seed: int = 0,
) -> Path:
    """Write train/val/test/ood_test splits plus ``descriptions.json`` under ``root``.

    In train, val and test the background matches the class with probability ``spurious``;
    in ood_test it is always a different class's background.
    """
    root = Path(root)
    rng = random.Random(seed)
    counts = {"train": per_class, "val": max(2, per_class // 3), "test": max(2, per_class // 3)}
    counts["ood_test"] = counts["test"]
    for split, n in counts.items():
        for k, shape in enumerate(CLASSES):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                aligned = split != "ood_test" and rng.random() < spurious
                offset = 0 if aligned else rng.randint(1, len(CLASSES) - 1)
                background = BACKGROUNDS[(k + offset) % len(CLASSES)]
                _draw(shape, background, size, rng).save(folder / f"{i:04d}.png")
    with open(root / "descriptions.json", "w", encoding="utf-8") as fh:
        json.dump(DESCRIPTIONS, fh, indent=2)
    return root
