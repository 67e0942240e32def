"""The nfn documentation pages: no placeholders left for the reader to fill in."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PAGES = [
    "index.md",
    "getting-started.md",
    "performance.md",
    "guide/specs.md",
    "guide/symmetries.md",
] + [f"api/{name}" for name in ("action.md", "layers.md", "models.md", "weight-space.md")]


@pytest.mark.parametrize("page", PAGES)
def test_no_placeholders(page):
    text = (DOCS / page).read_text()
    placeholders = re.findall(r"<(?:url|your|path|name)[^>\n]*>|git\+<", text, re.IGNORECASE)
    assert not placeholders, f"docs/{page} has placeholders: {placeholders}"
