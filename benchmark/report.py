"""Reports from results/: every run's summary.json into one table (mean +- std over seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark import runstore


def load_summaries(results: Path) -> tuple[pd.DataFrame, int]:
    """One row per finished run; also the number of run directories left out (unfinished)."""
    rows, missing = [], 0
    for directory in runstore.iter_run_dirs(results):
        summary = runstore.load_summary(directory)
        if summary is None:
            missing += 1
            continue
        rows.append(summary)
    return pd.DataFrame(rows), missing


def accuracy_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per dataset x method: test accuracy of every head at the best-val epoch, as
    "mean +- std" over seeds, with n."""
    if summaries.empty:
        return pd.DataFrame()
    columns = [c for c in summaries.columns if c.startswith("test/") and c.endswith("/acc")]
    grouped = summaries.groupby(["dataset", "method"])
    table = grouped[columns].agg(
        lambda s: f"{100 * s.mean():.2f} +- {100 * s.std(ddof=1) if len(s) > 1 else 0:.2f}"
    )
    table.columns = [c.removeprefix("test/").removesuffix("/acc") for c in columns]
    table["n"] = grouped.size()
    return table.reset_index()


def main(results: Path, args) -> int:
    summaries, missing = load_summaries(results)
    if missing:
        print(f"left out {missing} unfinished run(s) (no summary.json)")
    table = accuracy_table(summaries)
    if table.empty:
        print(f"no finished runs under {results / 'runs'}")
        return 0
    out = Path(getattr(args, "out", None) or results) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "main.csv", index=False)
    print(table.to_string(index=False))
    print(f"wrote {out / 'main.csv'}")
    return 0
