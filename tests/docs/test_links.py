"""The documents hold together: every relative link in README.md and docs/**/*.md names a file
that exists (and, into a Markdown file, a heading it has), and the README stays short."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

from tools.processes import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^```.*?^```$", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")
# The "](target)" of [text](target), ![alt](target) and [![alt](image)](target): a target has
# no spaces (an optional "title" may follow).
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def links(text: str) -> list[str]:
    """The link targets of a Markdown text, outside code blocks and code spans."""
    return LINK.findall(CODE.sub("", FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def broken(document: Path) -> list[str]:
    problems = []
    for target in links(document.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, https:, mailto: ...: not checked offline
        path_part, _, anchor = target.partition("#")
        path = (document.parent / unquote(path_part)).resolve() if path_part else document
        if not path.exists():
            problems.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and unquote(anchor) not in anchors(path):
            problems.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    assert broken(document) == []


def test_links_are_found() -> None:
    """The checker sees links in every form the documents use, and not those in code."""
    text = "a [b](x.md#y) ![c](d.png) [![e](f.png)](g.md) `[h](i.md)`\n```\n[j](k.md)\n```\n"
    assert links(text) == ["x.md#y", "d.png", "f.png", "g.md"]
    assert slug("`make compose-smoke`: the deployment run for real") == (
        "make-compose-smoke-the-deployment-run-for-real"
    )


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_every_page_is_reachable_from_the_index() -> None:
    """docs/README.md leads to every page of docs/, directly or through the pages it links."""
    seen: set[Path] = set()
    todo = [ROOT / "docs" / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for target in links(page.read_text(encoding="utf-8")):
            path = (page.parent / unquote(target.partition("#")[0])).resolve()
            if path.suffix == ".md" and path.is_relative_to(ROOT / "docs") and path.exists():
                todo.append(path)
    pages = {p.resolve() for p in DOCUMENTS if p.is_relative_to(ROOT / "docs")}
    assert sorted(pages - seen) == [], "pages no link from docs/README.md leads to"
