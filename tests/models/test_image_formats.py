"""The formats the image policy opens (issue 22, item 6): JPEG, PNG, WebP, GIF and BMP; any other
is refused from its first bytes, before a decoder of its own runs: EPS never reaches Ghostscript.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import EpsImagePlugin, Image

from models.data import ImageError, image_problem, open_image, read_image
from models.data.images import ACCEPTED_FORMATS, format_of
from models.errors import DataError

ACCEPTED = "(accepted: JPEG, PNG, WEBP, GIF, BMP)"


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(mode: str = "RGB", size: int = 32) -> Image.Image:
    return Image.effect_noise((size, size), 64).convert(mode)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


REFUSED = {
    "EPS": lambda: encode(noise(), "EPS"),
    "PCX": lambda: encode(noise(), "PCX"),
    "ICO": lambda: encode(noise(), "ICO"),
    "float TIFF": lambda: encode(noise("F"), "TIFF"),
    "8-bit TIFF": lambda: encode(noise(), "TIFF"),
    "TGA": lambda: encode(noise(), "TGA"),
}


@pytest.mark.parametrize(
    "fmt, data",
    [
        ("JPEG", lambda: encode(noise(), "JPEG")),
        ("PNG", lambda: encode(noise("I;16"), "PNG")),
        ("WEBP", lambda: encode(noise(), "WEBP")),
        ("GIF", animated_gif),
        ("BMP", lambda: encode(noise(), "BMP")),
    ],
)
def test_the_accepted_formats_open_as_rgb(fmt: str, data: Any) -> None:
    assert fmt in ACCEPTED_FORMATS
    image = open_image(data())
    assert image.mode == "RGB" and image.size in {(32, 32), (16, 16)}


def test_a_gif_is_its_first_frame() -> None:
    assert open_image(animated_gif()).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("name", list(REFUSED))
def test_other_formats_are_refused_naming_what_is_accepted(name: str) -> None:
    with pytest.raises(ImageError) as info:
        open_image(REFUSED[name]())
    problem = info.value.problem
    assert problem.endswith(ACCEPTED) and not info.value.too_large, problem
    if name != "TGA":  # TGA has no signature (its first bytes can be a CUR file's)
        assert f"is not an accepted image format: it looks like {name.split()[-1]}" in problem


def test_eps_never_reaches_its_plugin_nor_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ghostscript runs when an EPS image loads; its plugin's header parser runs when the file is
    opened. Neither may run: the file is refused from its signature."""
    reached: list[str] = []

    def parse(self: Any) -> None:
        reached.append("EpsImageFile._open")
        raise SyntaxError("stop")

    def ghostscript(*_: Any, **__: Any) -> Any:
        reached.append("Ghostscript")
        raise OSError("stop")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", parse)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    eps = encode(noise(), "EPS")
    with pytest.raises(ImageError, match="it looks like EPS"):
        open_image(eps)
    assert reached == []
    # The same file opened under no policy goes to the plugin: the instrument above is live.
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(eps))
    assert reached == ["EpsImageFile._open"]


def test_a_dataset_file_in_another_format_is_refused_naming_it(tmp_path: Path) -> None:
    # Named .png: the extension lists it as an image, the bytes decide what it is.
    disguised = tmp_path / "photo.png"
    disguised.write_bytes(encode(noise(), "EPS"))
    problem = image_problem(str(disguised))
    assert problem is not None and "looks like EPS" in problem and ACCEPTED in problem
    tiff = tmp_path / "scan.tif"
    tiff.write_bytes(encode(noise("F"), "TIFF"))
    with pytest.raises(DataError, match="cannot read image: is not an accepted image format"):
        read_image(str(tiff))


def test_a_damaged_file_of_an_accepted_format_says_so() -> None:
    with pytest.raises(ImageError, match="cannot be decoded: not a valid PNG file"):
        open_image(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ImageError, match="not a recognised image format"):
        open_image(b"hello")


def test_signatures_are_read_without_a_decoder() -> None:
    assert format_of(encode(noise(), "PNG")[:16]) == "PNG"
    assert format_of(b"%!PS-Adobe-3.0 EPSF-3.0") == "EPS"
    assert format_of(b"") is None and format_of(b"hello, world") is None
