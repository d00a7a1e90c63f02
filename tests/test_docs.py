"""The documentation's shape: a short README over docs/, and no link that leads nowhere.

Pure Python, no TensorFlow: part of the quick loop.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# A newcomer reads README in ten minutes; the details live in docs/ (issue 21).
README_MAX_LINES = 300

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without code blocks and inline code, where brackets are not links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def relative_links(page: Path) -> list[str]:
    """Every link target of a Markdown page that is not a URL (``http:``, ``mailto:``...)."""
    return [t for t in _LINK.findall(_prose(page.read_text(encoding="utf-8")))
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page: lower case, punctuation dropped, spaces as dashes."""
    out = set()
    for title in _HEADING.findall(_prose(page.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", title.lower().replace("`", "")).replace(" ", "-")
        out.add(slug)
    return out


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file (or anchor in it) does not exist."""
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    return broken


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the detail to a docs/ page")


def test_docs_folder_has_pages():
    assert len(list(DOCS.glob("*.md"))) >= 5


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)}: broken links"


def test_every_docs_page_is_linked_from_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert unlinked == [], f"docs pages README does not link: {unlinked}"


def test_broken_links_are_found(tmp_path):
    """The checker itself: a missing file and a missing anchor are both reported."""
    (tmp_path / "a.md").write_text("# Title here\n\n[ok](a.md#title-here) [gone](b.md) [bad](a.md#nope)"
                                   " `[code](x.md)` [web](https://example.com)\n")
    assert [b.split(" ")[0] for b in broken_links(tmp_path / "a.md")] == ["b.md", "a.md#nope"]
