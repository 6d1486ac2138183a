"""The results blocks of README.md and docs/*.md: the text between
`<!-- results:begin TABLE/DATASET [cols=a;b] -->` and `<!-- results:end TABLE/DATASET -->`
is that dataset's table from <out>/tables/TABLE.md (optionally only the named columns),
rewritten by `python -m benchmark report`; the prose around the markers is never touched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from benchmark.errors import UserError

README_BLOCK = re.compile(
    r"(<!-- results:begin (?P<name>[\w.-]+/[\w.-]+)(?: cols=(?P<cols>[^>]*?))? -->\n)"
    r"(?P<body>.*?)"
    r"(<!-- results:end (?P=name) -->)",
    re.S,
)


def table_of(text: str, dataset: str) -> list[str] | None:
    """The Markdown table lines under "### <dataset>" in a generated tables/*.md."""
    lines = text.splitlines()
    try:
        start = lines.index(f"### {dataset}")
    except ValueError:
        return None
    rest = lines[start + 1 :]
    first = next((i for i, line in enumerate(rest) if line.startswith("|")), None)
    if first is None:
        return None
    table = []
    for line in rest[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def select_columns(table: list[str], titles: Sequence[str]) -> list[str]:
    """The table with only the named columns (header titles), in the order given."""
    header = _split_row(table[0])
    missing = [t for t in titles if t not in header]
    if missing:
        raise UserError(f"README block asks for column(s) {', '.join(missing)}: not in {header}")
    keep = [header.index(t) for t in titles]
    rows = [_split_row(line) for line in table]
    return ["| " + " | ".join(row[i] for i in keep) + " |" for row in rows]


def readme_block(tables: Path, name: str, cols: str | None = None) -> str | None:
    """The text of README block `name` ("<table>/<dataset>", e.g. "main/avdigits"): that
    dataset's table from tables/<table>.md, optionally only the columns `cols` (titles
    separated by ";"); None where the table or dataset is not there."""
    table_name, dataset = name.split("/", 1)
    path = tables / f"{table_name}.md"
    if not path.is_file():
        return None
    table = table_of(path.read_text(), dataset)
    if table is None:
        return None
    if cols:
        table = select_columns(table, [c.strip() for c in cols.split(";") if c.strip()])
    return "\n" + "\n".join(table) + "\n\n"


def update_readme(text: str, tables: Path) -> tuple[str, list[str]]:
    """`text` with every results block rewritten from `tables`; and the names of the blocks
    left as they were (their table or dataset is not in this report)."""
    stale: list[str] = []

    def fill(match: re.Match) -> str:
        body = readme_block(tables, match["name"], match["cols"])
        if body is None:
            stale.append(match["name"])
            return match[0]
        return match[1] + body + match[5]

    return README_BLOCK.sub(fill, text), stale


def write_readme(path: Path, tables: Path) -> bool:
    """Rewrite the results blocks of README `path` from `tables`; True when it changed."""
    text = path.read_text()
    new, stale = update_readme(text, tables)
    if stale:
        print(f"{path}: block(s) {', '.join(stale)} left as they were (not in this report)")
    if new != text:
        path.write_text(new)
        return True
    return False


def default_readmes(out: Path) -> list[Path]:
    """The Markdown files beside the results directory that have results blocks: README.md
    and docs/*.md of the checkout that holds ./results."""
    root = out.resolve().parent
    candidates = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [p for p in candidates if p.is_file() and README_BLOCK.search(p.read_text())]
