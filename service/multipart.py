"""Multipart bodies parsed in the route (after the size-limit middleware has seen the stream).

Two readers:
- ``read_form``: Starlette's form parser, for uploads that may be large (datasets, model
  archives): a file part over 1 MB is spooled to the system's temporary folder. Starlette
  answers a malformed body or too many parts with its own ``HTTPException``; here they become
  our typed errors, so the client gets the usual error shape and the right status.
- ``read_parts``: ``/predict``'s lean reader. Its body is bounded by ``RCS_MAX_PREDICT_BYTES``
  (16 MiB; the JSON form of the same request is read whole too), so every part stays in memory:
  the stream is parsed as it arrives (``MultipartReader``), delimiters found by ``bytes.find``,
  no temporary files, no ``UploadFile`` or ``FormData``, and the limits (parts, field sizes,
  header sizes) are enforced while reading, before the rest of the body is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from service.errors import BadRequest, PayloadTooLarge
from service.storage import space_needed

# A part's header block (Content-Disposition, Content-Type, ...): browsers send about 150 bytes.
MAX_HEADER_BYTES = 8 * 1024
# A form field that is not a file (``model``, ``top_k``, ``monitor``).
MAX_FIELD_BYTES = 64 * 1024
# Whitespace allowed between a boundary and its line break (RFC 2046's transport padding).
MAX_PADDING_BYTES = 256


async def read_form(request: Request, *, max_files: int, max_fields: int = 16) -> FormData:
    """The parsed form; the caller closes it (``await form.close()``)."""
    try:
        # A file part over 1 MB is spooled to the system's temporary folder (Starlette removes
        # it when parsing fails): a full one is a 507, not a 500.
        with space_needed("TMPDIR", "receive the upload"):
            return await request.form(max_files=max_files, max_fields=max_fields)
    except HTTPException as exc:
        detail = str(exc.detail)
        if detail.startswith("Too many files"):
            raise PayloadTooLarge(f"more than {max_files} file(s) in one request", "files") from exc
        if detail.startswith("Too many fields"):
            raise BadRequest(f"more than {max_fields} form fields in one request") from exc
        raise BadRequest(f"malformed multipart body: {detail}") from exc


@dataclass
class FilePart:
    name: str
    filename: str
    data: bytes


@dataclass
class Parts:
    """A multipart body's parts in order: text fields by name, and file parts (those whose
    Content-Disposition has a ``filename``)."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)

    def field(self, name: str) -> str | None:
        """The first value of text field ``name``, or None."""
        values = self.fields.get(name)
        return values[0] if values else None


def boundary_of(content_type: str) -> bytes:
    """The ``boundary`` parameter of a ``multipart/form-data`` Content-Type (400 without one)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    # RFC 2046: 1 to 70 characters.
    if not 1 <= len(boundary) <= 70:
        raise BadRequest("malformed multipart body: the Content-Type has no valid boundary")
    return boundary


async def read_parts(request: Request, *, max_files: int, max_fields: int = 16) -> Parts:
    """``/predict``'s multipart body, parsed as it is received (see the module's notes)."""
    reader = MultipartReader(
        boundary_of(request.headers.get("content-type", "")),
        max_files=max_files,
        max_fields=max_fields,
    )
    async for chunk in request.stream():
        if chunk:
            reader.feed(chunk)
    return reader.close()


def _malformed(problem: str) -> BadRequest:
    return BadRequest(f"malformed multipart body: {problem}")


_PREAMBLE, _DATA, _AFTER_BOUNDARY, _HEADERS, _END = range(5)


class MultipartReader:
    """An incremental ``multipart/form-data`` parser: ``feed`` the body's chunks as they come,
    then ``close`` for the parts. Every limit is checked as soon as the bytes that pass it
    arrive; a refusal is a ``BadRequest`` (400) or a ``PayloadTooLarge`` (413)."""

    def __init__(
        self,
        boundary: bytes,
        *,
        max_files: int,
        max_fields: int,
        max_field_bytes: int = MAX_FIELD_BYTES,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self._delimiter = b"\r\n--" + boundary
        # The body's first boundary has no line break before it: one is supplied, so every
        # boundary is found the same way (a preamble before it is skipped, as RFC 2046 says).
        self._buffer = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self.max_files = max_files
        self.max_fields = max_fields
        self.max_field_bytes = max_field_bytes
        self.max_header_bytes = max_header_bytes
        self._parts = Parts()
        self._name = ""
        self._filename: str | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._field_count = 0

    def feed(self, data: bytes) -> None:
        if self._state == _END:
            return  # the epilogue after the closing boundary is ignored
        self._buffer += data
        while self._step():
            pass

    def close(self) -> Parts:
        if self._state != _END:
            raise _malformed("the body ends before its closing boundary")
        return self._parts

    def _step(self) -> bool:
        """Parse what the buffer holds from the current state; False when it needs more."""
        buffer = self._buffer
        if self._state in (_PREAMBLE, _DATA):
            at = buffer.find(self._delimiter)
            if at < 0:
                # The buffer's end may hold the start of a boundary: keep it for the next chunk.
                keep = len(self._delimiter) - 1
                if len(buffer) > keep:
                    if self._state == _DATA:
                        self._add(bytes(buffer[: len(buffer) - keep]))
                    del buffer[: len(buffer) - keep]
                return False
            if self._state == _DATA:
                self._add(bytes(buffer[:at]))
                self._end_part()
            del buffer[: at + len(self._delimiter)]
            self._state = _AFTER_BOUNDARY
            return True
        if self._state == _AFTER_BOUNDARY:
            if buffer[:2] == b"--":
                self._state = _END
                buffer.clear()
                return False
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > MAX_PADDING_BYTES or buffer[:1] == b"-" and len(buffer) > 1:
                    raise _malformed("a boundary is followed by neither a line break nor '--'")
                return False
            if buffer[:line_end].strip(b" \t"):
                raise _malformed("a boundary is followed by neither a line break nor '--'")
            del buffer[: line_end + 2]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buffer[:2] == b"\r\n":
                head_end, skip = 0, 2  # a part without headers
            else:
                head_end, skip = buffer.find(b"\r\n\r\n"), 4
            if head_end < 0:
                if len(buffer) > self.max_header_bytes:
                    raise _malformed(f"a part's headers are over {self.max_header_bytes} bytes")
                return False
            if head_end > self.max_header_bytes:
                raise _malformed(f"a part's headers are over {self.max_header_bytes} bytes")
            self._start_part(bytes(buffer[:head_end]))
            del buffer[: head_end + skip]
            self._state = _DATA
            return True
        return False

    def _start_part(self, head: bytes) -> None:
        disposition = None
        for line in head.split(b"\r\n") if head else []:
            name, colon, value = line.partition(b":")
            if not colon or not name.strip():
                raise _malformed("a part has a header line without a name")
            if name.strip().lower() == b"content-disposition":
                disposition = value.strip()
        if disposition is None:
            raise _malformed("a part has no Content-Disposition header")
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise _malformed("a part's Content-Disposition is not 'form-data' with a name")
        self._name = _text(options[b"name"], "a part's name")
        filename = options.get(b"filename")
        self._filename = None if filename is None else _text(filename, "a file's name")
        if self._filename is not None:
            if len(self._parts.files) >= self.max_files:
                raise PayloadTooLarge(f"more than {self.max_files} file(s) in one request", "files")
        else:
            self._field_count += 1
            if self._field_count > self.max_fields:
                raise BadRequest(f"more than {self.max_fields} form fields in one request")
        self._chunks = []
        self._size = 0

    def _add(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._filename is None and self._size > self.max_field_bytes:
            raise PayloadTooLarge(
                f"form field '{self._name}' is over {self.max_field_bytes} bytes", self._name
            )
        self._chunks.append(data)

    def _end_part(self) -> None:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        if self._filename is not None:
            self._parts.files.append(FilePart(self._name, self._filename, data))
        else:
            value = _text(data, f"form field '{self._name}'")
            self._parts.fields.setdefault(self._name, []).append(value)


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise _malformed(f"{what} is not UTF-8") from exc
