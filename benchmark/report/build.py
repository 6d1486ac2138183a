"""`python -m benchmark report`: the runs of results/ read into frames, then the tables
(tables.py), the figures (figures.py) and the results blocks of README.md and docs/
(readme.py) written from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.errors import UserError
from benchmark.report.frames import (
    METRICS,
    left_out_line,
    load_published,
    load_results,
    older_code_line,
    run_counts,
)
from benchmark.report.readme import default_readmes, write_readme
from benchmark.report.tables import write_tables


def default_paper_dir(results: Path) -> Path:
    """results/paper under --results when it holds CSVs, else the checkout's results/paper."""
    local = results / "paper"
    if local.is_dir() and any(local.glob("*.csv")):
        return local
    return Path(__file__).resolve().parents[2] / "results" / "paper"


def main(results: Path, args: Any) -> int:
    """`python -m benchmark report`: tables and figures from `results`."""
    metrics = list(getattr(args, "metric", None) or METRICS)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UserError(f"unknown --metric {', '.join(bad)}: use some of {', '.join(METRICS)}")
    select = getattr(args, "select", None) or "best_val"
    out = Path(getattr(args, "out", None) or results)
    loaded = load_results(results, getattr(args, "datasets", None), getattr(args, "methods", None))
    line = left_out_line(loaded.left_out)
    if line:
        print(line)
    if loaded.runs.empty:
        print(f"no finished runs under {results / 'runs'}: nothing to report")
        return 0
    paper_dir = Path(args.paper) if getattr(args, "paper", None) else default_paper_dir(results)
    published = load_published(paper_dir)
    if getattr(args, "datasets", None):
        published = published[published["dataset"].isin(args.datasets)]
    if getattr(args, "methods", None):
        published = published[published["method"].isin(args.methods)]
    frames = write_tables(loaded, out, metrics, select, published)
    print(f"{len(loaded.runs)} run(s): " + ", ".join(run_counts(loaded.runs)))
    line = older_code_line(loaded.runs)
    if line:
        print(line)
    print((out / "tables" / "main.md").read_text())
    print((out / "tables" / "forgetting.md").read_text())
    written = [
        out / "tables" / f"{stem}.{ext}"
        for stem in ("main", "forgetting", "imbalance")
        for ext in ("md", "tex", "csv")
    ]
    written.append(out / "tables" / "paper_vs_ours.md")
    written += [out / "tables" / "cost.md", out / "tables" / "cost.csv"]
    if not getattr(args, "no_figures", False):
        from benchmark.report.figures import write_figures

        written += write_figures(loaded, frames, out / "figures", metrics[0])
    print(f"wrote {len(written)} files under {out} (tables/, figures/)")
    readmes = [Path(p) for p in getattr(args, "readme", None) or []] or default_readmes(out)
    for readme in readmes:
        if not readme.is_file():
            raise UserError(f"--readme {readme}: no such file")
    for readme in readmes:
        changed = write_readme(readme, out / "tables")
        print(f"{readme}: results blocks {'rewritten' if changed else 'already up to date'}")
    return 0


# ---------------------------------------------------------------- README blocks
