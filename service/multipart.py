"""Multipart bodies parsed in the route (after the size-limit middleware has seen the stream).

Starlette answers a malformed body or too many parts with its own ``HTTPException``; here they
become our typed errors, so the client gets the usual error shape and the right status.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from service.errors import BadRequest, PayloadTooLarge
from service.storage import space_needed


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
