"""The one image-opening policy: training, dataset validation, the CLI and the service use it.

Only the formats of ``ACCEPTED_FORMATS`` are opened: any other is refused from its first bytes,
before its decoder runs. An image is refused before it is decoded when it has more pixels than
``max_pixels`` or is more than ``max_aspect_ratio`` times longer than wide; decompression bombs
and truncated files are refused while decoding. Every refusal is an ``ImageError``.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from PIL import Image

from models.errors import DataError

T = TypeVar("T")

# The formats an image may be in (Pillow's names), and the only decoders a file can reach: the
# photo and web formats. Pillow knows some forty others, each more code a hostile file reaches.
# EPS runs Ghostscript, where it is installed, on the PostScript inside: code from whoever sent
# the file. TIFF is left out too: one container for many codecs (libtiff's), float samples that
# mean nothing as RGB, and pages. A GIF (or an animated WebP) is read as its first frame.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_ACCEPTED = ", ".join(ACCEPTED_FORMATS)

# Validation decodes at most this size: JPEG can then skip most of the IDCT work while still
# reading every byte of the file, so truncation is still caught.
_CHECK_SIZE = 64


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be before it is decoded (the defaults are the service's settings).

    Resizing an image's shorter side to the model's input size scales its longer side by the
    same factor: a 3 KB PNG of 2 x 1,000,000 pixels became a 2.6 GB image. No photo is this thin.
    """

    max_pixels: int = 40_000_000
    max_aspect_ratio: int = 50


class ImageError(DataError):
    """An image refused or undecodable. ``problem`` reads after the image's name ("image x
    {problem}"); ``too_large``: refused for its size (a 413 at the service, not a 422);
    ``detail``: the problem as dataset errors state it (a decoder's exception type included)."""

    def __init__(
        self, problem: str, *, too_large: bool = False, detail: str | None = None, file: str | None
    ) -> None:
        self.problem = problem
        self.too_large = too_large
        self.detail = detail or problem
        super().__init__(problem, file=file)


def open_image(
    source: str | Path | bytes, limits: ImageLimits | None = None, *, at_least: int | None = None
) -> Image.Image:
    """The image (a path or the file's bytes) decoded to RGB, or an ``ImageError``.

    ``at_least``: a JPEG at least twice this size on its shorter side may be decoded at a
    reduced scale (1/2, 1/4 or 1/8, in the decoder's DCT), keeping the shorter side at least
    ``at_least`` pixels. A 12-megapixel photo then decodes in about a tenth of the time; what a
    model later resizes it to differs a little from the full decode's (``bench/decode.py``).
    """
    return _guarded(source, limits or ImageLimits(), partial(to_rgb, at_least=at_least))


def read_image(path: str, limits: ImageLimits | None = None) -> Image.Image:
    """The image at ``path`` as RGB, or a DataError naming the file."""
    try:
        return open_image(path, limits)
    except ImageError as exc:
        raise DataError(f"cannot read image: {exc.detail}", file=path) from exc


def image_problem(path: str, limits: ImageLimits | None = None) -> str | None:
    """Why the image at ``path`` cannot be used, or None when it can (decoded at a small size)."""
    try:
        _guarded(path, limits or ImageLimits(), _draft)
    except ImageError as exc:
        return exc.detail
    return None


def _rgb(image: Image.Image) -> Image.Image:
    image.load()
    return image.convert("RGB")


def to_rgb(image: Image.Image, at_least: int | None = None) -> Image.Image:
    """An opened, not yet decoded ``image`` decoded to RGB (``at_least``: as ``open_image``)."""
    if at_least is not None and image.format == "JPEG":
        width, height = image.size
        scale = min(width, height) / max(at_least, 1)
        if scale >= 2:
            # The decoder picks the largest reduction that keeps both sides at least this size.
            image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
    return _rgb(image)


def _draft(image: Image.Image) -> None:
    image.draft("RGB", (_CHECK_SIZE, _CHECK_SIZE))
    image.load()


def _guarded(source: str | Path | bytes, limits: ImageLimits, use: Callable[[Image.Image], T]) -> T:
    file = None if isinstance(source, bytes) else str(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # PIL only warns between its own limit and twice that; the whole band is refused.
            # catch_warnings swaps the process-wide filter list and is not thread-safe: opens in
            # several threads may leave this one filter in place after they return, which only
            # makes PIL refuse, anywhere in the process, what this policy refuses anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream, formats=ACCEPTED_FORMATS) as image:
                _check_limits(image, limits, file)
                return use(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"is too large: {exc}", too_large=True, file=file) from exc
    except Image.UnidentifiedImageError as exc:
        raise _unidentified(exc, _head(source), file) from exc
    except Exception as exc:  # PIL plugins raise OSError, SyntaxError, struct.error, ...
        raise _undecodable(exc, file) from exc


def _check_limits(image: Image.Image, limits: ImageLimits, file: str | None) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        problem = f"has {width}x{height} pixels, over the {limits.max_pixels} limit"
        raise ImageError(problem, too_large=True, file=file)
    if max(image.size) > limits.max_aspect_ratio * min(image.size):
        problem = (
            f"is {width}x{height} pixels, more than {limits.max_aspect_ratio} times longer than "
            "wide: crop it first"
        )
        raise ImageError(problem, file=file)


def _undecodable(exc: Exception, file: str | None) -> ImageError:
    detail = f"{type(exc).__name__}: {exc}"
    return ImageError(f"cannot be decoded: {exc}", detail=detail, file=file)


def _unidentified(exc: Exception, head: bytes, file: str | None) -> ImageError:
    # PIL's own message names an in-memory buffer object, which tells a client nothing.
    found = format_of(head)
    if found is not None and found not in ACCEPTED_FORMATS:
        # "Looks like": a signature is a few bytes (a TGA file can start as a CUR file does).
        problem = f"is not an accepted image format: it looks like {found} (accepted: {_ACCEPTED})"
        return ImageError(problem, file=file)
    if found is None:
        problem = f"cannot be decoded: not a recognised image format (accepted: {_ACCEPTED})"
    else:  # its signature, then its decoder refused the header
        problem = f"cannot be decoded: not a valid {found} file"
    return ImageError(problem, detail=f"{type(exc).__name__}: {problem}", file=file)


def format_of(head: bytes) -> str | None:
    """The format whose signature ``head`` (a file's first 16 bytes) carries, by the plugins'
    own signature checks (pure tests of these bytes: no decoder runs); None when none does."""
    Image.init()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            found = accept is not None and accept(head)
        except Exception:  # a check that trips over a short head is no match
            continue
        if found and not isinstance(found, str):  # a str is a warning, as Image.open reads it
            return name
    return None


def _head(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source[:16]
    try:
        with open(source, "rb") as fh:
            return fh.read(16)
    except OSError:
        return b""
