"""``/docs`` renders without internet access: the page and everything it loads come from the
API itself, with Swagger UI's licence kept (and served) beside its files."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from fastapi.testclient import TestClient

from service.docs import SWAGGER_DIR

JS_TYPES = {"text/javascript", "application/javascript"}


class AssetLinks(HTMLParser):
    """Every URL the page loads: script sources, stylesheets and icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        url = values.get("src") if tag == "script" else values.get("href")
        if tag in {"script", "link", "img"} and url:
            self.urls.append((tag, url))


def page_assets(client: TestClient, path: str) -> list[tuple[str, str]]:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    parser = AssetLinks()
    parser.feed(response.text)
    return parser.urls


def test_docs_loads_only_same_origin_assets_that_are_served(client: TestClient) -> None:
    client.headers.pop("Authorization")  # the docs need no key
    assets = page_assets(client, "/docs")
    assert {tag for tag, _ in assets} == {"script", "link"}, assets
    for _, url in assets:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not same-origin"
    expected = {".js": JS_TYPES, ".css": {"text/css"}, ".png": {"image/png"}}
    for _, url in assets:
        response = client.get(url)
        assert response.status_code == 200, url
        kind = response.headers["content-type"].split(";")[0]
        assert kind in expected[url[url.rindex(".") :]], (url, kind)
        assert len(response.content) > 500
    # Swagger UI itself would fetch a validator badge from swagger.io unless told not to.
    assert re.search(r'"validatorUrl":\s*null', client.get("/docs").text)


def test_swagger_licence_is_kept_and_served_beside_the_assets(client: TestClient) -> None:
    for name in ("LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"):
        assert (SWAGGER_DIR / name).is_file()
        response = client.get(f"/docs/assets/{name}")
        assert response.status_code == 200 and response.text == (SWAGGER_DIR / name).read_text()
    assert "Apache License" in client.get("/docs/assets/LICENSE").text
    bundle = (SWAGGER_DIR / "swagger-ui-bundle.js").read_text()
    assert "swagger-ui-bundle.js.LICENSE.txt" in bundle.splitlines()[0]


def test_the_schema_is_openapi_3_1_which_the_vendored_swagger_ui_reads(
    client: TestClient,
) -> None:
    # Swagger UI 4 cannot render OpenAPI 3.1 (FastAPI's); the vendored release must be 5 or later.
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    readme = (SWAGGER_DIR / "README.md").read_text()
    version = re.search(r"swagger-ui-dist` (\d+)\.", readme)
    assert version and int(version.group(1)) >= 5


def test_redoc_is_off_rather_than_blank(client: TestClient) -> None:
    # FastAPI's ReDoc page loads its script from a CDN; no page beats a blank one.
    assert client.get("/redoc").status_code == 404
