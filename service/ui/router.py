"""The dashboard: static files under ``/ui``, served by the API itself.

The page is plain ES modules and SVG, so nothing is built at install time; it talks only to the
public REST API with the user's key. Every response carries a Content-Security-Policy that
forbids inline scripts, inline handlers, inline styles and HTML sinks (Trusted Types), so data
that reaches the page (class names, descriptions, metadata) can never run as code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from service.deps import Ctx
from service.errors import NotFound

STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        # innerHTML and friends throw unless given a TrustedHTML, which this page never makes.
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate so a new release is picked up; the files are small.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _listing() -> dict[str, Path]:
    """Relative path -> file, read once: only these files are served (no path is joined from
    the request, so no traversal)."""
    return {
        p.relative_to(STATIC).as_posix(): p
        for p in STATIC.rglob("*")
        if p.is_file() and p.suffix in MEDIA_TYPES
    }


FILES = _listing()
# The page learns from this tag whether to ask for a key, so it sends no request bound to fail
# (a 401 is a console error) before the user has pasted one.
AUTH_META = '<meta name="rcs-auth" content="enabled">'


def _file(name: str) -> Response:
    path = FILES.get(name)
    if path is None:
        raise NotFound(f"no dashboard file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
def index(ctx: Ctx) -> Response:
    return _index(ctx)


@router.get("/ui/{name:path}")
def static_file(name: str, ctx: Ctx) -> Response:
    return _index(ctx) if name == "index.html" else _file(name)


def _index(ctx: Ctx) -> Response:
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    if ctx.settings.auth_disabled:
        page = page.replace(AUTH_META, AUTH_META.replace("enabled", "disabled"))
    headers = {**SECURITY_HEADERS, "Content-Type": MEDIA_TYPES[".html"]}
    return HTMLResponse(page, headers=headers)
