"""The documentation (README.md and docs/*.md) stays short, linked, portable and in step with
the code: links resolve, the README fits in 12 KiB, no path of one machine leaks in, every
method option is documented, and the sections the code cites exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import methods

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional
# "title" after a space is ignored).
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
MACHINE_PATHS = ("/work/", "/tmp/rb", "/root/")

# Headings the code cites ("docs/design.md, 'Core interfaces'", ...).
DESIGN_HEADINGS = [
    "Core interfaces",
    "Prepared dataset format",
    "Run store",
    "Device and speed",
    "Command line",
    "Layout",
]
METHODS_HEADINGS = ["Shared model parts", "Joint training", "OGM-GE", "PMR", "AGM", "MIE"]


def headings(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    return [m[1].strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)]


def test_docs_exist():
    names = {p.name for p in DOCS}
    for name in ("design.md", "methods.md", "datasets.md", "slurm.md", "reports.md"):
        assert name in names, f"docs/{name} is missing"
    for name in ("speed.md", "development.md"):
        assert name in names, f"docs/{name} is missing"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(path):
    text = FENCE.sub("", path.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^(https?:|mailto:)", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0].split("?", 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.name}: links to missing files: {broken}"


def test_readme_is_at_most_12_kib():
    size = (ROOT / "README.md").stat().st_size
    assert size <= 12 * 1024, f"README.md is {size} bytes; move details to docs/"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_path_of_this_machine(path):
    text = path.read_text()
    found = [s for s in MACHINE_PATHS if s in text]
    assert not found, f"{path.name} contains {found}: use $PWD, relative paths or variables"


@pytest.mark.parametrize("name", methods.list_methods())
def test_every_default_of_every_method_is_documented(name):
    text = (ROOT / "docs" / "methods.md").read_text()
    quoted = set(re.findall(r"`([^`\n]+)`", text))
    # a key counts when it is quoted alone or as the left side of key=value
    keys = {q.split("=", 1)[0].strip() for q in quoted}
    missing = [k for k in methods.get_method_class(name).defaults if k not in keys]
    assert not missing, f"docs/methods.md does not document {name}'s {missing} (in backticks)"


@pytest.mark.parametrize(
    ("doc", "required"),
    [("design.md", DESIGN_HEADINGS), ("methods.md", METHODS_HEADINGS)],
)
def test_cited_headings_exist(doc, required):
    found = headings(ROOT / "docs" / doc)
    missing = [
        h for h in required if not any(re.match(re.escape(h) + r"($|[ :(,])", f) for f in found)
    ]
    assert not missing, f"docs/{doc} has no section {missing}; the code cites them"


def test_every_citation_in_the_code_names_an_existing_doc_section():
    """`(docs/methods.md, "AGM")` in a docstring or comment: the page exists and has a
    heading that starts with the cited name (e.g. "AGM (`agm`)")."""
    cite = re.compile(r'docs/(\w+)\.md(?:,| section) "([^"]+)"')
    sources = [
        p for d in ("benchmark", "methods", "datasets", "tests") for p in (ROOT / d).rglob("*.py")
    ]
    cited, bad = 0, []
    for source in sources:
        for page, section in cite.findall(source.read_text()):
            cited += 1
            doc = ROOT / "docs" / f"{page}.md"
            if not doc.is_file() or not any(h.startswith(section) for h in headings(doc)):
                bad.append(f"{source.relative_to(ROOT)}: docs/{page}.md, {section!r}")
    assert cited >= 10 and bad == []
