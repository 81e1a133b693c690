"""Reduced-scale JPEG decoding (``RCS_PREDICT_JPEG_DRAFT``): what it saves and what it changes.

For JPEGs of several sizes it times ``service.predict.service.preprocess`` (decode, resize,
crop, to pixels) per image with the reduced-scale decode off and on, in one thread (CPU time,
so the figures do not depend on what else the machine runs), and compares the model's
probabilities on the two results: the largest difference and whether the top-1 labels agree.
The images are drawn (gradients, lines, a disc), saved as JPEG at quality 90.

    .venv/bin/python bench/decode.py
    .venv/bin/python bench/decode.py --model ViT-B-32 --sizes 1024x768,4000x3000
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench.serve import write_artifact  # noqa: E402


def photo(width: int, height: int, seed: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    step, line = max(1, width // 60), max(1, width // 400)
    for i in range(0, width, step):
        colour = ((i * 7 + seed) % 255, (i * 3) % 255, 200 - i % 200)
        draw.line((i, 0, width - i, height), fill=colour, width=line)
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(seed, 120, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="offline-lite0-minilm")
    parser.add_argument("--sizes", default="256x256,1024x768,2048x1536,4000x3000")
    parser.add_argument("--seconds", type=float, default=1.5, help="least CPU time per timing")
    args = parser.parse_args()

    from models.monitoring import unpack
    from service.predict.cache import load, warm_up
    from service.predict.service import DRAFT_MARGIN, ImageInput, forward, preprocess

    with tempfile.TemporaryDirectory(prefix="rcs-bench-decode-") as tmp:
        model = load("bench", 1, write_artifact(args.model, Path(tmp) / "artifact"), "cpu")
        warm_up(model)
    size = max(model.classifier.backbone.image_size)
    print(
        f"{args.model}: input {size} px; a JPEG at least {2 * DRAFT_MARGIN * size} px on its "
        f"shorter side decodes at a reduced scale keeping {DRAFT_MARGIN * size} px\n"
    )
    print(
        "| JPEG | whole decode ms/image | reduced ms/image | speed-up | max probability "
        "difference | same top-1 |"
    )
    print("|---|---|---|---|---|---|")
    for text in args.sizes.split(","):
        width, height = (int(v) for v in text.split("x"))
        images = [
            ImageInput(photo(width, height, seed), None, f"images[{seed}]")
            for seed in (0, 60, 120, 180)
        ]
        ms, probs = {}, {}
        for draft in (False, True):
            batch = preprocess(model, images, 10**9, draft)
            started, n = time.process_time(), 0
            while time.process_time() - started < args.seconds:
                batch = preprocess(model, images, 10**9, draft)
                n += len(images)
            ms[draft] = (time.process_time() - started) / n * 1000
            probs[draft] = unpack(forward(model, batch), len(model.classnames))[0]
        diff = (probs[True] - probs[False]).abs().max().item()
        same = bool((probs[True].argmax(1) == probs[False].argmax(1)).all())
        print(
            f"| {width}x{height} | {ms[False]:.2f} | {ms[True]:.2f} | {ms[False] / ms[True]:.1f}x "
            f"| {diff:.4f} | {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
