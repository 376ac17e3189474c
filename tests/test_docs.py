"""README.md fits on a screen and every relative link in it and in docs/ resolves."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    """Links to files (no scheme, no pure #anchor), without their #anchor."""
    return [target.split("#")[0] for target in LINK.findall(page.read_text())
            if "://" not in target and not target.startswith(("#", "mailto:"))]


def test_the_readme_fits_on_a_screen_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = {(ROOT / target).resolve() for target in relative_links(ROOT / "README.md")}
    assert set(PAGES[1:]) <= linked and len(PAGES) > 5


def test_every_relative_link_resolves():
    broken = [(page.relative_to(ROOT).as_posix(), target) for page in PAGES for target in relative_links(page)
              if target and not (page.parent / target).exists()]
    assert not broken


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [gone](missing.md#x) [web](https://example.org/) [anchor](#top)")
    assert relative_links(page) == ["page.md", "missing.md"]
    assert [t for t in relative_links(page) if not (page.parent / t).exists()] == ["missing.md"]
