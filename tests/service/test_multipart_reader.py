"""``/predict``'s lean multipart reader (``service.multipart.MultipartReader``): the parts a
standard encoder wrote come back whatever the chunking, limits refuse while reading, and any
bytes give parts or one of our 4xx errors, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.filepost import encode_multipart_formdata

from service.errors import BadRequest, PayloadTooLarge
from service.multipart import MultipartReader, Parts, boundary_of

BOUNDARY = "b0undary-XYZ"

names = st.text(st.characters(codec="utf-8", exclude_characters='"\r\n\\'), min_size=1, max_size=8)
values = st.text(st.characters(codec="utf-8"), max_size=40)
files = st.tuples(names, names, st.binary(max_size=300))


def reader(**limits: int) -> MultipartReader:
    return MultipartReader(
        BOUNDARY.encode(), max_files=limits.pop("max_files", 64), max_fields=16, **limits
    )


def parse(body: bytes, cuts: list[int], **limits: int) -> Parts:
    parser = reader(**limits)
    start = 0
    for cut in sorted({c % (len(body) + 1) for c in cuts}):
        parser.feed(body[start:cut])
        start = cut
    parser.feed(body[start:])
    return parser.close()


def encode(fields: list[tuple[str, str]], uploads: list[tuple[str, str, bytes]]) -> bytes:
    parts: list[tuple[str, object]] = [(name, value) for name, value in fields]
    parts += [(name, (filename, data, "image/jpeg")) for name, filename, data in uploads]
    body, _ = encode_multipart_formdata(parts, boundary=BOUNDARY)  # type: ignore[arg-type]
    return body


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(
    fields=st.lists(st.tuples(names, values), max_size=4),
    uploads=st.lists(files, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_parts_come_back_whatever_the_chunking(
    fields: list[tuple[str, str]], uploads: list[tuple[str, str, bytes]], cuts: list[int]
) -> None:
    parts = parse(encode(fields, uploads), cuts)
    got_fields = [(name, value) for name, vs in parts.fields.items() for value in vs]
    assert sorted(got_fields) == sorted(fields)
    assert [(f.name, f.filename, f.data) for f in parts.files] == uploads


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    body=st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda good, at, junk: good[:at] + junk + good[at:],
            st.builds(
                encode, st.lists(st.tuples(names, values), max_size=2), st.lists(files, max_size=2)
            ),
            st.integers(min_value=0, max_value=600),
            st.binary(min_size=1, max_size=20),
        ),
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=6),
)
def test_any_bytes_give_parts_or_a_4xx(body: bytes, cuts: list[int]) -> None:
    try:
        parse(body, cuts)
    except (BadRequest, PayloadTooLarge):
        pass


def test_a_preamble_and_an_epilogue_are_skipped_and_padding_allowed() -> None:
    body = encode([("model", "shapes")], [("files", "a.jpg", b"\xff\xd8 data")])
    body = b"preamble text\r\n" + body.replace(
        f"--{BOUNDARY}\r\n".encode(), f"--{BOUNDARY} \t\r\n".encode(), 1
    )
    parts = parse(body + b"epilogue", [])
    assert parts.field("model") == "shapes"
    assert [(f.name, f.filename, f.data) for f in parts.files] == [
        ("files", "a.jpg", b"\xff\xd8 data")
    ]


def test_too_many_files_is_refused_at_the_part_that_passes_the_limit() -> None:
    body = encode([], [("files", f"{i}.jpg", b"x" * 10) for i in range(5)])
    parser = reader(max_files=3)
    fourth = body.index(b'filename="3.jpg"')
    parser.feed(body[: fourth - 40])  # three files and part of the fourth's boundary: fine
    with pytest.raises(PayloadTooLarge, match="more than 3 file"):
        parser.feed(body[fourth - 40 : fourth + 60])  # the rest is never read


def test_a_large_field_is_refused_while_it_arrives() -> None:
    parser = reader(max_field_bytes=100)
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'.encode()
    parser.feed(head + b"m" * 60)
    with pytest.raises(PayloadTooLarge, match="form field 'model' is over 100 bytes"):
        parser.feed(b"m" * 200)


def test_too_many_fields_and_long_headers_are_refused() -> None:
    fields = [(f"f{i}", "v") for i in range(17)]
    with pytest.raises(BadRequest, match="more than 16 form fields"):
        parse(encode(fields, []), [])
    parser = reader(max_header_bytes=64)
    with pytest.raises(BadRequest, match="headers are over 64 bytes"):
        parser.feed(f"--{BOUNDARY}\r\nX-Long: {'a' * 100}".encode())


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "ends before its closing boundary"),
        (encode([("model", "m")], [])[:-10], "ends before its closing boundary"),
        (
            f"--{BOUNDARY}\r\nX-Other: 1\r\n\r\nv\r\n--{BOUNDARY}--".encode(),
            "no Content-Disposition",
        ),
        (
            f"--{BOUNDARY}\r\nContent-Disposition: attachment\r\n\r\nv\r\n--{BOUNDARY}--".encode(),
            "not 'form-data' with a name",
        ),
        (
            f"--{BOUNDARY}\r\nno colon\r\n\r\nv\r\n--{BOUNDARY}--".encode(),
            "header line without a name",
        ),
        (f"--{BOUNDARY}junk\r\n".encode(), "neither a line break nor '--'"),
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="m"\r\n\r\n'.encode()
            + f"\xff\r\n--{BOUNDARY}--".encode("latin-1"),
            "form field 'm' is not UTF-8",
        ),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: bytes, problem: str) -> None:
    with pytest.raises(BadRequest, match="malformed multipart body: .*" + problem):
        parse(body, [])


def test_the_boundary_comes_from_the_content_type() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    for bad in ("multipart/form-data", "multipart/form-data; boundary=", "x; boundary=" + "a" * 71):
        with pytest.raises(BadRequest, match="no valid boundary"):
            boundary_of(bad)
