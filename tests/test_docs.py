"""The documentation holds together: every relative link in README.md, CONTRIBUTING.md and
docs/*.md names a file that exists, and every #anchor a heading of the page it points into."""

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_FENCE = re.compile(r"^\s*(```|~~~)")


def prose(page: Path) -> Iterator[str]:
    """The page's lines outside fenced code blocks."""
    fenced = False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield line


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to -."""
    text = heading.strip().lower().replace("`", "")
    kept = (c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(page):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            name, number = base, 1
            while name in found:  # GitHub numbers repeated headings: name, name-1, …
                name, number = f"{base}-{number}", number + 1
            found.add(name)
    return found


def links(page: Path) -> Iterator[str]:
    for line in prose(page):
        text = re.sub(r"`[^`]*`", "", line)  # `[x](y)` in inline code is no link
        yield from _LINK.findall(text)
        yield from _HTML.findall(text)


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` that names no file, or an anchor no heading makes."""
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, file:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_stays_short() -> None:
    """The README is the way in, not the manual: at most 200 lines."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    """The check itself fails on a missing file, a missing heading and a missing image."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Disk full, or `read-only`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#disk-full-or-read-only) [here](#page) "
        "[gone](gone.md) [bad](other.md#disk-full) ![img](pic.png) "
        '<img src="gone.png"> [web](https://example.org/x)\n\n'
        "```sh\n[not a link](nowhere.md)\n```\n"
    )
    assert broken_links(page) == [
        "page.md: gone.md (no such file)",
        "page.md: other.md#disk-full (no such heading)",
        "page.md: pic.png (no such file)",
        "page.md: gone.png (no such file)",
    ]
