"""Hostile and odd images, made in memory: each name maps to (bytes, the statuses accepted)."""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

OK = (200,)
REFUSED = (413, 422)
NOT_ACCEPTED = (422,)
# The cases in a format the image policy does not open, and the format the 422 names (None: it
# has no signature of its own to name it by).
OTHER_FORMATS: dict[str, str | None] = {
    "eps": "EPS",
    "pcx": "PCX",
    "tga": None,
    "ico": "ICO",
    "32-bit float tiff": "TIFF",
    "multipage tiff": "TIFF",
}
ACCEPTED = "(accepted: JPEG, PNG, WEBP, GIF, BMP)"
GHOSTSCRIPT_LOG = "RCS_TEST_GHOSTSCRIPT_LOG"


def fake_ghostscript(folder: Path) -> dict[str, str]:
    """The environment of an API process whose ``gs`` is a stand-in that logs each call and
    fails. Pillow runs ``gs`` to load an EPS image: an empty log proves none reached it."""
    folder.mkdir(parents=True, exist_ok=True)
    gs = folder / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> "${GHOSTSCRIPT_LOG}"\nexit 1\n')
    gs.chmod(gs.stat().st_mode | stat.S_IXUSR)
    path = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    return {"PATH": path, GHOSTSCRIPT_LOG: str(folder / "calls.log")}


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(size: int = 64, mode: str = "RGB") -> Image.Image:
    return Image.effect_noise((size, size), 64).convert(mode)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height``, with a few bytes of pixel data: the
    decompression bomb's shape (a tiny file that would decode to gigapixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def animated_gif(frames: int = 30) -> bytes:
    images = [Image.new("P", (48, 48), i % 256) for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=20, loop=0)


def sixteen_bit_png() -> bytes:
    return encode(Image.new("I;16", (40, 30), 40000), "PNG")


def multipage_tiff() -> bytes:
    pages = [noise(32) for _ in range(3)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def cases() -> dict[str, tuple[Callable[[], bytes], tuple[int, ...]]]:
    png = encode(noise(), "PNG")
    jpeg = encode(noise(), "JPEG")
    return {
        "zero bytes": (lambda: b"", REFUSED),
        "one byte": (lambda: b"\x89", REFUSED),
        "text": (lambda: b"hello, this is not an image\n" * 10, REFUSED),
        "pdf header": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", REFUSED),
        "svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', REFUSED),
        "png magic only": (lambda: png[:8], REFUSED),
        "truncated png": (lambda: png[: len(png) // 2], REFUSED),
        "truncated jpeg": (lambda: jpeg[: len(jpeg) // 2], REFUSED),
        "png with a bad crc": (lambda: png[:40] + bytes([png[40] ^ 0xFF]) + png[41:], REFUSED),
        "bomb header 100k x 100k": (lambda: png_claiming(100_000, 100_000), REFUSED),
        "bomb header 3k x 3k": (lambda: png_claiming(3_000, 3_000), REFUSED),
        "real bomb 1-bit 6k x 6k": (lambda: encode(Image.new("1", (6000, 6000)), "PNG"), REFUSED),
        "huge height 1 x 60000": (lambda: encode(Image.new("L", (1, 60_000)), "PNG"), REFUSED),
        "huge width 60000 x 1": (lambda: encode(Image.new("L", (60_000, 1)), "PNG"), REFUSED),
        "tall 2 x 1000000": (lambda: encode(Image.new("L", (2, 1_000_000)), "PNG"), REFUSED),
        "one pixel": (lambda: encode(Image.new("RGB", (1, 1)), "PNG"), OK),
        "panorama 800 x 100": (lambda: encode(noise(100).resize((800, 100)), "PNG"), OK),
        "palette png": (lambda: encode(noise().convert("P"), "PNG"), OK),
        "cmyk jpeg": (lambda: encode(noise(mode="CMYK"), "JPEG"), OK),
        "16-bit png": (sixteen_bit_png, OK),
        "32-bit float tiff": (lambda: encode(noise(mode="F"), "TIFF"), NOT_ACCEPTED),
        "rgba png": (lambda: encode(noise(mode="RGBA"), "PNG"), OK),
        "la png": (lambda: encode(noise(mode="LA"), "PNG"), OK),
        "1-bit png": (lambda: encode(noise(mode="1"), "PNG"), OK),
        "animated gif": (animated_gif, OK),
        "multipage tiff": (multipage_tiff, NOT_ACCEPTED),
        "webp": (lambda: encode(noise(), "WEBP"), OK),
        "bmp": (lambda: encode(noise(), "BMP"), OK),
        "progressive jpeg": (lambda: encode(noise(), "JPEG", progressive=True), OK),
        "ico": (lambda: encode(noise(32), "ICO"), NOT_ACCEPTED),
        "eps": (lambda: encode(noise(), "EPS"), NOT_ACCEPTED),
        "pcx": (lambda: encode(noise(), "PCX"), NOT_ACCEPTED),
        "tga": (lambda: encode(noise(), "TGA"), NOT_ACCEPTED),
    }
