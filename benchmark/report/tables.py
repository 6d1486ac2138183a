"""The report's tables, rendered from the frames of frames.py: main results, modality
forgetting, imbalance, paper vs ours and cost, each as Markdown, LaTeX and CSV under
<out>/tables/.

The renderers (`markdown_table`, `latex_table`) bold the best value per column within each
dataset; numbers are percentages, mean +- std over seeds with the number of runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.report import imbalance
from benchmark.report.frames import (
    METRIC_LABELS,
    METRICS,
    PAPER_COLUMNS,
    Column,
    Results,
    aggregate,
    forgetting_frame,
    forgetting_summary,
    heads_by_dataset,
    method_order,
    ours_protocol,
    paper_vs_ours,
    protocol_runs,
    select_epochs,
)


def format_mean_std(mean: float, std: float, latex: bool = False) -> str:
    """ "81.05 ± 0.23" (LaTeX: "81.05 $\\pm$ 0.23"); just the mean when std is NaN (n = 1)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–" if not latex else "--"
    if std is None or math.isnan(std):
        return f"{mean:.2f}"
    pm = " $\\pm$ " if latex else " ± "
    return f"{mean:.2f}{pm}{std:.2f}"


def wide_cells(
    stats: pd.DataFrame, columns: Sequence[Column], rows: Sequence[str], row_key: str = "method"
) -> tuple[list[list[tuple[float, float]]], list[int]]:
    """(mean, std) for each row x column (NaN where missing) and n per row (max over cells)."""
    cells, ns = [], []
    for row in rows:
        part = stats[stats[row_key] == row]
        line, n = [], 0
        for col in columns:
            mask = np.ones(len(part), dtype=bool)
            for key, value in col.where.items():
                mask &= (part[key] == value).to_numpy()
            hit = part[mask]
            if hit.empty:
                line.append((math.nan, math.nan))
            else:
                line.append((float(hit["mean"].iloc[0]), float(hit["std"].iloc[0])))
                n = max(n, int(hit["n"].iloc[0]))
        cells.append(line)
        ns.append(n)
    return cells, ns


def best_mask(cells: list[list[tuple[float, float]]], columns: Sequence[Column]) -> np.ndarray:
    """True where a cell holds the best mean of its column, compared at the printed
    precision (printed ties are all bold); no cell of a column where every row ties."""
    means = np.array([[c[0] for c in line] for line in cells], dtype=float).reshape(
        len(cells), len(columns)
    )
    rounded = np.round(means, 2)
    mask = np.zeros_like(rounded, dtype=bool)
    for j, col in enumerate(columns):
        values = rounded[:, j]
        if np.all(np.isnan(values)):
            continue
        present = values[~np.isnan(values)]
        if len(present) < 2 or np.all(present == present[0]):
            continue  # a single row, or all tied: no best to point out
        best = present.max() if col.higher_is_better else present.min()
        mask[:, j] = values == best
    return mask


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    """A GitHub-flavoured Markdown table; align holds "l" or "r" per column (first l)."""
    align = align or ["l", *["r"] * (len(header) - 1)]
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines) + "\n"


def _md_cell(cell: Any) -> str:
    """A cell as Markdown: a "|" (in a variant's value) is escaped so it never splits a
    column, and a variant label's settings are spaced after commas, so a renderer can wrap
    a long label instead of widening its column."""
    text = str(cell).replace("|", "\\|")
    return text.replace(",", ", ") if "[" in text and ", " not in text else text


def latex_escape(text: str) -> str:
    """Escape the characters LaTeX treats specially in plain text."""
    for char, repl in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(char, repl)
    for char in "#$":
        text = text.replace(char, "\\" + char)
    return text


def latex_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A booktabs tabular (cells already LaTeX; header cells are escaped here)."""
    spec = "l" + "r" * (len(header) - 1)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in header) + " \\\\")
    lines.append("\\midrule")
    lines.extend(" & ".join(row) + " \\\\" for row in rows)
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def render_table(
    stats: pd.DataFrame, columns: Sequence[Column], rows: Sequence[str], latex: bool
) -> str:
    """Rows (methods) x columns of mean +- std with the best per column in bold, and n."""
    cells, ns = wide_cells(stats, columns, rows)
    bold = best_mask(cells, columns)
    body = []
    for i, row in enumerate(rows):
        line = [latex_escape(row) if latex else row]
        for j, (mean, std) in enumerate(cells[i]):
            text = format_mean_std(mean, std, latex)
            if bold[i, j]:
                text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
            line.append(text)
        line.append(str(ns[i]))
        body.append(line)
    header = ["method", *[c.title for c in columns], "n"]
    return latex_table(header, body) if latex else markdown_table(header, body)


def main_columns(heads: Sequence[str], metrics: Sequence[str]) -> list[Column]:
    """The first metric for every head (fused, then each modality), the others fused only."""
    first, *rest = metrics
    columns = [Column(f"{h} {METRIC_LABELS[first]}", {"head": h, "metric": first}) for h in heads]
    columns += [Column(f"fused {METRIC_LABELS[m]}", {"head": "fused", "metric": m}) for m in rest]
    return columns


def forgetting_columns(modalities: Sequence[str]) -> list[Column]:
    """Mean and final forgetting per modality; lower is better."""
    return [
        Column(f"{m} {stat}", {"head": m, "statistic": stat}, higher_is_better=False)
        for m in modalities
        for stat in ("mean", "final")
    ]


SELECT_WORDS = {"best_val": "at the best-val epoch", "last": "at the last epoch"}


def tables_text(
    stats: pd.DataFrame,
    heads_by_dataset: dict[str, list[str]],
    columns_for: Callable[[list[str]], list[Column]],
    caption: str,
    latex: bool,
) -> str:
    """One table per dataset (their modalities differ), each under a heading/comment."""
    parts = []
    for dataset in sorted(heads_by_dataset):
        part = stats[stats["dataset"] == dataset]
        if part.empty:
            continue
        columns = columns_for(heads_by_dataset[dataset])
        rows = method_order(part["method"])
        if latex:
            parts.append(f"% {dataset}: {caption}\n" + render_table(part, columns, rows, True))
        else:
            parts.append(
                f"### {dataset}\n\n{caption}\n\n" + render_table(part, columns, rows, False)
            )
    return "\n".join(parts)


def paper_vs_ours_markdown(
    comparison: pd.DataFrame, our_datasets: Sequence[str], note: str | None = None
) -> str:
    """The comparison as Markdown, with a note on which datasets have no overlap."""
    header = [
        "dataset",
        "method",
        "head",
        "metric",
        "published",
        "source",
        "ours",
        "n",
        "epochs",
        "train n",
        "ours - published",
    ]
    body = []
    for r in comparison.itertuples(index=False):
        ours = format_mean_std(r.ours, r.ours_std) if r.n else "–"
        diff = f"{r.difference:+.2f}" if r.n else "–"
        source = f"{r.paper} {r.table}".strip()
        body.append(
            [
                r.dataset,
                r.method,
                r.head,
                METRIC_LABELS.get(r.metric, r.metric),
                f"{r.published:.2f}",
                source,
                ours,
                str(r.n),
                r.epochs if r.n else "–",
                r.train_size if r.n else "–",
                diff,
            ]
        )
    text = "# Published numbers beside ours\n\n"
    text += "Percent. Ours: mean ± std over seeds of the test split. Published values as "
    text += "printed in each paper (their own protocols and preprocessing). Ours counts only "
    text += "runs with `protocol=paper` and the paper's epochs (where the method defines "
    text += "them); epochs and train n (training samples) are ours.\n\n"
    text += markdown_table(header, body, ["l", "l", "l", "l", "r", "l", "r", "r", "r", "r", "r"])
    published_sets = sorted(set(comparison["dataset"]))
    without = [d for d in our_datasets if d not in published_sets]
    if without:
        text += (
            f"\nNo published numbers for {', '.join(without)}"
            f" (published: {', '.join(published_sets) or 'none'}).\n"
        )
    if note:
        text += f"\n{note[0].upper()}{note[1:]}.\n"
    return text


# ---------------------------------------------------------------- the command


def write_tables(
    results: Results,
    out: Path,
    metrics: Sequence[str] = METRICS,
    select: str = "best_val",
    published: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write tables/main.*, tables/forgetting.*, tables/paper_vs_ours.md under `out`;
    return the frames the figures are drawn from."""
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    heads = heads_by_dataset(results.runs)
    modalities = {d: [h for h in hs if h != "fused"] for d, hs in heads.items()}
    selected = select_epochs(results, select)
    stats = aggregate(selected)
    when = SELECT_WORDS[select]
    caption = f"Test {when}, mean ± std over seeds (n), percent."
    main_cols = partial(main_columns, metrics=metrics)
    _write_three(
        tables / "main",
        stats.assign(split="test", select=select),
        tables_text(stats, heads, main_cols, caption, latex=False),
        tables_text(stats, heads, main_cols, caption.replace("±", "$\\pm$"), latex=True),
        "# Main results\n\n",
    )
    first = metrics[0]
    curves = forgetting_frame(results.long, "test", first)
    forget = forgetting_summary(curves)
    caption = (
        f"Forgetting of each modality's test {METRIC_LABELS[first]} (running max - current, "
        "percentage points): mean over epochs and at the last epoch; mean ± std over seeds."
    )
    forget_cols = forgetting_columns
    _write_three(
        tables / "forgetting",
        forget.assign(metric=first, split="test"),
        tables_text(forget, modalities, forget_cols, caption, latex=False),
        tables_text(forget, modalities, forget_cols, caption.replace("±", "$\\pm$"), latex=True),
        "# Modality forgetting\n\n",
    )
    imb = imbalance.with_reference(stats)
    text = imbalance.caption(stats, when)
    _write_three(
        tables / "imbalance",
        imb.assign(split="test", select=select),
        tables_text(imb, modalities, imbalance.imbalance_columns, text, latex=False),
        tables_text(
            imb, modalities, imbalance.imbalance_columns, text.replace("±", "$\\pm$"), True
        ),
        "# Imbalance: each modality against its unimodal reference\n\n",
    )
    costs, text = cost_table(results.runs)
    costs.to_csv(tables / "cost.csv", index=False, float_format="%.4f")
    (tables / "cost.md").write_text(text)
    published = published if published is not None else pd.DataFrame(columns=PAPER_COLUMNS)
    compared, note = protocol_runs(results.runs)
    paper_stats = aggregate(selected[selected["run_id"].isin(compared["run_id"])])
    comparison = paper_vs_ours(paper_stats, published, ours_protocol(compared))
    (tables / "paper_vs_ours.md").write_text(
        paper_vs_ours_markdown(comparison, sorted(heads), note)
    )
    if note:
        print(f"paper_vs_ours: {note}")
    return {
        "stats": stats,
        "curves": curves,
        "forgetting": forget,
        "comparison": comparison,
        "imbalance": imb,
    }


COST_FIELDS = {  # summary.json cost field -> (column title, scale)
    "parameters": ("parameters (M)", 1e-6),
    "train_flops_per_sample": ("train MFLOPs/sample", 1e-6),
    "peak_memory_bytes": ("peak memory (MiB)", 1 / 2**20),
    "seconds_per_epoch": ("s/epoch", 1.0),
    "probe_seconds": ("probe s", 1.0),
}


def cost_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per dataset and method: the mean over seeds of each cost field of summary.json
    (blank for runs that predate it); the CSV frame and the Markdown text."""
    records = []
    for _, run in runs.iterrows():
        cost = run.get("cost") if isinstance(run.get("cost"), dict) else {}
        row = {"dataset": run["dataset"], "method": run["method"]}
        for key, (title, scale) in COST_FIELDS.items():
            value = cost.get(key)
            if key == "parameters" and isinstance(value, dict):
                value = value.get("total")
            row[title] = value * scale if isinstance(value, int | float) else math.nan
        records.append(row)
    titles = [t for t, _ in COST_FIELDS.values()]
    frame = pd.DataFrame(records, columns=["dataset", "method", *titles])
    frame = frame.groupby(["dataset", "method"], sort=False)[titles].mean().reset_index()
    parts = ["# Cost\n"]
    for dataset in sorted(frame["dataset"].unique()):
        part = frame[frame["dataset"] == dataset].set_index("method")
        body = [
            [m, *("–" if math.isnan(v) else f"{v:.3g}" for v in part.loc[m, titles])]
            for m in method_order(part.index)
        ]
        parts.append(
            f"### {dataset}\n\nMean over seeds; peak memory is CUDA's peak allocated, or the "
            "process's peak RSS on the CPU; blank: runs that predate the cost record.\n\n"
            + markdown_table(["method", *titles], body)
        )
    return frame, "\n".join(parts)


def _write_three(stem: Path, frame: pd.DataFrame, md: str, tex: str, title: str) -> None:
    keys = [c for c in ("dataset", "method", "split", "select", "metric") if c in frame]
    frame = frame[[*keys, *[c for c in frame.columns if c not in keys]]]
    frame.to_csv(stem.with_suffix(".csv"), index=False, float_format="%.4f")
    stem.with_suffix(".md").write_text(title + md)
    stem.with_suffix(".tex").write_text("% generated by `python -m benchmark report`\n" + tex)
