"""The dashboard's files: served under /ui with a strict CSP, the whole module graph present,
no inline script or HTML sink anywhere, no path outside the static folder, all of it packaged."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.ui.router import FILES, STATIC

ROOT = Path(__file__).resolve().parents[2]
TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
IMPORT = re.compile(r"""(?:import|export)\s[^;]*?\sfrom\s+["']([^"']+)["']""", re.S)
# Every way a string can become markup or code in the page; the page builds nodes instead.
SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"createContextualFragment|srcdoc|DOMParser|localStorage|document\.cookie|"
    r"setAttribute\(\s*[\"']on|setAttribute\(\s*[\"']style"
)


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.assets: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.inline += [f"{tag} {a}" for a in names if a.startswith("on") or a == "style"]
        if tag == "script":
            self.scripts.append(names)
            self._in_script = True
        if tag in ("script", "link") and (names.get("src") or names.get("href")):
            self.assets.append(str(names.get("src") or names.get("href")))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"script body {data.strip()[:40]!r}")


def _markup() -> _Markup:
    parser = _Markup()
    parser.feed((STATIC / "index.html").read_text())
    return parser


def _module_graph() -> set[str]:
    """Every /ui path the page loads: index.html's assets and each module's imports."""
    seen: set[str] = set()
    todo = list(_markup().assets)
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        if url.endswith(".js"):
            source = (STATIC / url.removeprefix("/ui/")).read_text()
            base = url.rsplit("/", 1)[0]
            for spec in IMPORT.findall(source):
                todo.append(_join(base, spec))
    return seen


def _join(base: str, relative: str) -> str:
    parts = base.split("/")
    for piece in relative.split("/"):
        if piece == "..":
            parts.pop()
        elif piece != ".":
            parts.append(piece)
    return "/".join(parts)


def _check_csp(policy: str) -> None:
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert "require-trusted-types-for" in directives and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy and "*" not in policy


def test_every_file_the_page_loads_is_served_with_a_strict_csp(app_client: TestClient) -> None:
    graph = _module_graph()
    assert {"/ui/js/app.js", "/ui/js/pages/version.js", "/ui/style.css"} <= graph
    for url in ["/ui/", *sorted(graph)]:
        response = app_client.get(url)  # no key: the page itself is public, its data is not
        assert response.status_code == 200, url
        _check_csp(response.headers["content-security-policy"])
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        expected = TYPES[url.rsplit(".", 1)[-1] if "." in url else "html"]
        assert response.headers["content-type"].startswith(expected), url
    assert app_client.get("/jobs").status_code == 401


def test_the_page_knows_whether_to_ask_for_a_key(app_client: TestClient) -> None:
    for path in ("/ui/", "/ui/index.html"):
        assert '<meta name="rcs-auth" content="enabled">' in app_client.get(path).text


@pytest.mark.parametrize("settings_overrides", [{"env": "local", "auth_disabled": True}])
def test_local_mode_without_keys_is_written_into_the_page(app_client: TestClient) -> None:
    for path in ("/ui/", "/ui/index.html"):
        page = app_client.get(path)
        assert '<meta name="rcs-auth" content="disabled">' in page.text
        _check_csp(page.headers["content-security-policy"])


def test_root_and_bare_ui_redirect_to_the_dashboard(app_client: TestClient) -> None:
    for path in ("/", "/ui"):
        response = app_client.get(path)
        assert response.status_code == 307 and response.headers["location"] == "/ui/"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/../app.py",
        "/ui/%2e%2e/router.py",
        "/ui/js/..%2F..%2Frouter.py",
        "/ui/js/%2e%2e/%2e%2e/__init__.py",
        "/ui/..%5Crouter.py",
        "/ui/index.html%00.js",
    ],
)
def test_only_the_static_files_are_served(app_client: TestClient, path: str) -> None:
    response = app_client.get(path)
    assert response.status_code == 404, path
    assert "error" in response.json()


def test_the_page_has_no_inline_script_handler_or_style() -> None:
    markup = _markup()
    assert markup.inline == []
    assert markup.scripts and all(str(s.get("src")).startswith("/ui/") for s in markup.scripts)


def test_no_module_parses_strings_as_html_or_keeps_the_key_beyond_the_tab() -> None:
    offenders = {
        name: SINKS.findall(path.read_text())
        for name, path in FILES.items()
        if name.endswith(".js")
    }
    assert {name: hits for name, hits in offenders.items() if hits} == {}
    api = (STATIC / "js" / "api.js").read_text()
    assert "sessionStorage" in api and "Authorization" in api


def test_every_static_file_is_packaged() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    for name in FILES:
        relative = f"ui/static/{name}"
        assert any(
            fnmatch.fnmatch(relative, p) and p.count("/") == relative.count("/") for p in patterns
        ), relative
