"""Reports from results/: every run into one tidy DataFrame, then tables (md, tex, csv).

`load_results` reads results/runs/<dataset>/<method>/<run_id>/ (summary.json, metrics.jsonl,
config.json) into one long frame with one row per run x epoch x split x head x metric
(DomainBed's collect_results groups records the same way: by dataset, method and seed).
Runs without summary.json (unfinished, killed, or still running) are left out and counted.

Everything downstream is a pure function of that frame: the epoch each run is scored at
(`select_epochs`: the best-val epoch the engine recorded, or the last), the mean +- std
over seeds (`aggregate`), modality forgetting (`forgetting_frame`, running max - current
of each modality's per-epoch accuracy, after avalanche's functional forgetting), and the
table renderers (`markdown_table`, `latex_table`), which bold the best value per column
within each dataset. Numbers in tables are percentages.

Runs of one method whose configs differ (other than seed) are not averaged together: the
differing keys become a variant label, e.g. `ogm_ge[alpha=0.5]`, shown as its own row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark import imbalance, runstore
from benchmark.config import NOT_IN_RUN_ID
from benchmark.errors import UserError
from benchmark.metrics import forgetting

EVAL_SPLITS = ("val", "test")
METRICS = ("acc", "f1", "map")
METRIC_LABELS = {"acc": "acc", "f1": "F1", "map": "mAP"}
SELECTIONS = ("best_val", "last")
# The order of the papers' tables (baseline first, then by publication); it also fixes
# each method's colour in every figure, so adding a method never recolours these five.
PAPER_ORDER = ("joint", "ogm_ge", "pmr", "agm", "mie")
# Config keys that do not change what is being measured (not used to tell variants apart).
PAPER_COLUMNS = [
    "paper",
    "table",
    "dataset",
    "method",
    "label",
    "head",
    "metric",
    "value",
    "citation",
    "note",
]
RUN_KEYS = ["dataset", "method", "seed", "run_id"]
OLDER_CODE = " (older code)"  # the label suffix of runs done with other code


@dataclass
class Results:
    """Everything the report reads, already tidy.

    long: one row per run x epoch x split x head x metric, columns dataset, method, seed,
      run_id, epoch, split, head, metric, value. `method` carries the variant label where
      runs of one method differ in config. Train scalars (loss, lr, method diagnostics)
      have split "train" and head "all".
    runs: one row per finished run: dataset, method, seed, run_id, best_epoch, last_epoch,
      heads (fused first, then the modalities), older_code (None for runs of this code,
      else the short commit they were done with; their method label ends "(older code)").
    left_out: reason -> number of run directories not reported.
    """

    long: pd.DataFrame
    runs: pd.DataFrame
    left_out: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- loading


def parse_key(key: str) -> tuple[str, str, str]:
    """A metrics.jsonl key -> (split, head, metric).

    "test/audio/acc" -> ("test", "audio", "acc"); "train/loss" -> ("train", "all", "loss");
    "lr" -> ("train", "all", "lr").
    """
    parts = key.split("/")
    if parts[0] in EVAL_SPLITS and len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if parts[0] == "train" and len(parts) > 1:
        return "train", "all", "/".join(parts[1:])
    return "train", "all", key


def tidy_metrics(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """metrics.jsonl rows -> long frame (epoch, split, head, metric, value); non-numeric
    values are dropped."""
    if not rows:
        return pd.DataFrame(columns=["epoch", "split", "head", "metric", "value"])
    wide = pd.DataFrame(list(rows))
    long = wide.melt(id_vars="epoch", var_name="key", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    keys = pd.DataFrame(
        [parse_key(k) for k in long["key"]],
        columns=["split", "head", "metric"],
        index=long.index,
    )
    long = pd.concat([long[["epoch"]], keys, long[["value"]]], axis=1)
    long["epoch"] = long["epoch"].astype(int)
    return long.reset_index(drop=True)


def _config_items(config: dict[str, Any]) -> dict[str, str]:
    items = {**config.get("settings", {}), **config.get("hp", {})}
    return {k: json.dumps(v, sort_keys=True) for k, v in items.items() if k not in NOT_IN_RUN_ID}


def variant_labels(runs: pd.DataFrame, configs: Sequence[dict[str, str]]) -> list[str]:
    """Per run, "method" or "method[key=value,...]" naming the config keys in which the
    runs of the same (dataset, method) differ; seeds never count as a difference. Runs
    done with older code (column `older_code`, where present) are compared among
    themselves and labelled "... (older code)": they are never averaged with current ones."""
    frame = pd.DataFrame(list(configs), index=runs.index).fillna("(unset)")
    labels = runs["method"].astype(str).copy()
    older = (
        runs["older_code"].notna() if "older_code" in runs else pd.Series(False, index=runs.index)
    )
    keys = [runs["dataset"], runs["method"], older.rename("older")]
    for _, index in runs.groupby(keys).groups.items():
        group = frame.loc[index]
        differing = [c for c in sorted(group.columns) if group[c].nunique() > 1]
        for i in index:
            if differing:
                detail = ",".join(f"{c}={_shown(group.at[i, c])}" for c in differing)
                labels.at[i] = f"{runs.at[i, 'method']}[{detail}]"
            if older.at[i]:
                labels.at[i] += OLDER_CODE
    return labels.tolist()


def _shown(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def load_results(
    results: Path,
    datasets: Iterable[str] | None = None,
    methods: Iterable[str] | None = None,
) -> Results:
    """Read every finished run under results/runs into a `Results` (see its docstring).

    datasets / methods: keep only these (unknown names are a UserError that lists the
    names present). A run directory without summary.json, or whose metrics.jsonl is
    missing or unreadable, is left out and counted in `Results.left_out`.
    """
    if not results.is_dir():
        raise UserError(
            f"no results directory {results}: pass --results DIR (or set BENCH_RESULTS)"
        )
    left_out = {
        "unfinished (no summary.json)": 0,
        "damaged summary.json (run again with --restart)": 0,
        "no readable metrics.jsonl": 0,
    }
    records, frames, configs = [], [], []
    for directory in runstore.iter_run_dirs(results):
        try:
            summary = runstore.load_summary(directory)
        except (runstore.DamagedRunFile, OSError):
            left_out["damaged summary.json (run again with --restart)"] += 1
            continue
        if summary is None:
            left_out["unfinished (no summary.json)"] += 1
            continue
        try:
            long = tidy_metrics(runstore.read_metrics(directory))
        except (runstore.DamagedRunFile, OSError, KeyError, ValueError):
            long = tidy_metrics([])
        if long.empty:
            left_out["no readable metrics.jsonl"] += 1
            continue
        try:
            config = runstore.read_json(directory / runstore.CONFIG)
        except (runstore.DamagedRunFile, OSError):
            config = {}
        record = {k: summary.get(k) for k in RUN_KEYS}
        record["dataset"] = record["dataset"] or directory.parent.parent.name
        record["method"] = record["method"] or directory.parent.name
        record["run_id"] = record["run_id"] or directory.name
        record["best_epoch"] = int(summary.get("best_epoch", long["epoch"].max()))
        record["last_epoch"] = int(long["epoch"].max())
        record["heads"] = list(summary.get("heads") or _heads_of(long))
        record["older_code"] = runstore.older_code(directory, summary)
        record["cost"] = summary.get("cost") or {}
        records.append(record)
        frames.append(long.assign(run_id=record["run_id"]))
        configs.append(_config_items(config))
    runs = pd.DataFrame(
        records,
        columns=[*RUN_KEYS, "best_epoch", "last_epoch", "heads", "older_code", "cost"],
    )
    runs = _filter(runs, "dataset", datasets)
    runs = _filter(runs, "method", methods)
    configs = [configs[i] for i in runs.index]
    runs = runs.reset_index(drop=True)
    runs["method"] = variant_labels(runs, configs) if len(runs) else runs["method"]
    if frames and len(runs):
        long = pd.concat(frames, ignore_index=True)
        long = long.merge(runs[RUN_KEYS], on="run_id", how="inner")
        long = long[[*RUN_KEYS, "epoch", "split", "head", "metric", "value"]]
    else:
        long = pd.DataFrame(columns=[*RUN_KEYS, "epoch", "split", "head", "metric", "value"])
    return Results(long=long, runs=runs, left_out={k: v for k, v in left_out.items() if v})


def _heads_of(long: pd.DataFrame) -> list[str]:
    heads = long.loc[long["split"].isin(EVAL_SPLITS), "head"].unique().tolist()
    return sorted(heads, key=lambda h: (h != "fused", h))


def _filter(runs: pd.DataFrame, column: str, keep: Iterable[str] | None) -> pd.DataFrame:
    if not keep:
        return runs
    keep = list(keep)
    present = sorted(runs[column].dropna().unique())
    unknown = [k for k in keep if k not in present]
    if unknown:
        raise UserError(
            f"no finished runs of {column} {', '.join(unknown)}; present: "
            + (", ".join(present) or "none")
        )
    return runs[runs[column].isin(keep)]


def left_out_line(left_out: dict[str, int]) -> str | None:
    """One line that counts the run directories not reported, or None when there are none."""
    total = sum(left_out.values())
    if not total:
        return None
    reasons = ", ".join(f"{n} {reason}" for reason, n in left_out.items())
    return f"left out {total} run(s): {reasons}"


# ---------------------------------------------------------------- ordering


def method_order(names: Iterable[str]) -> list[str]:
    """Methods in table/figure order: PAPER_ORDER, then other registered methods, then any
    other name (variants sit right after their base method), each group alphabetical."""
    registered = _registered()
    canonical = [*PAPER_ORDER, *sorted(m for m in registered if m not in PAPER_ORDER)]

    def key(name: str) -> tuple[int, str]:
        base = name.removesuffix(OLDER_CODE).split("[", 1)[0]
        rank = canonical.index(base) if base in canonical else len(canonical)
        return rank, name

    return sorted(set(names), key=key)


def canonical_methods() -> list[str]:
    """Every method name whose colour is fixed: PAPER_ORDER then the rest of the registry."""
    return method_order([*PAPER_ORDER, *_registered()])


def _registered() -> list[str]:
    try:
        from methods import list_methods

        return list(list_methods())
    except Exception:
        return []


def head_order(heads: Iterable[str]) -> list[str]:
    """fused first, then the modalities alphabetically."""
    return sorted(set(heads), key=lambda h: (h != "fused", h))


# ---------------------------------------------------------------- aggregation


def select_epochs(results: Results, select: str = "best_val", split: str = "test") -> pd.DataFrame:
    """The rows of `split` at the epoch each run is scored at: its best-val epoch (as the
    engine recorded it in summary.json; the test split never picks) or its last epoch."""
    if select not in SELECTIONS:
        raise UserError(f"unknown --select {select!r}: use one of {', '.join(SELECTIONS)}")
    column = "best_epoch" if select == "best_val" else "last_epoch"
    chosen = results.runs[["run_id", column]].rename(columns={column: "epoch"})
    rows = results.long[results.long["split"] == split]
    return rows.merge(chosen, on=["run_id", "epoch"], how="inner")


def aggregate(
    frame: pd.DataFrame, by: Sequence[str] = ("dataset", "method", "head", "metric")
) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one run) and n of `value` per group, in percent."""
    grouped = frame.groupby(list(by), sort=False)["value"]
    stats = grouped.agg(mean="mean", std=lambda s: s.std(ddof=1), n="count").reset_index()
    stats["mean"] *= 100
    stats["std"] *= 100
    return stats


def forgetting_frame(long: pd.DataFrame, split: str = "test", metric: str = "acc") -> pd.DataFrame:
    """Per run, modality and epoch: the modality head's `metric` on `split` and its
    forgetting (running max over epochs so far - current), columns ..., value, forgetting."""
    rows = long[(long["split"] == split) & (long["metric"] == metric) & (long["head"] != "fused")]
    rows = rows.sort_values([*RUN_KEYS, "head", "epoch"]).reset_index(drop=True)
    curves = rows.groupby(["run_id", "head"], sort=False)["value"]
    rows["forgetting"] = curves.transform(lambda s: forgetting(s.to_numpy()))
    return rows


def forgetting_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, method and modality: mean over epochs and final forgetting of each run,
    then mean +- std over seeds (percent); column `statistic` is "mean" or "final"."""
    per_run = curves.groupby([*RUN_KEYS, "head"], sort=False)["forgetting"].agg(
        mean="mean", final="last"
    )
    per_run = per_run.reset_index().melt(
        id_vars=[*RUN_KEYS, "head"], var_name="statistic", value_name="value"
    )
    return aggregate(per_run, by=("dataset", "method", "head", "statistic"))


# ---------------------------------------------------------------- formatting


def format_mean_std(mean: float, std: float, latex: bool = False) -> str:
    """ "81.05 ± 0.23" (LaTeX: "81.05 $\\pm$ 0.23"); just the mean when std is NaN (n = 1)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–" if not latex else "--"
    if std is None or math.isnan(std):
        return f"{mean:.2f}"
    pm = " $\\pm$ " if latex else " ± "
    return f"{mean:.2f}{pm}{std:.2f}"


@dataclass
class Column:
    """One numeric column of a rendered table: its title, where its stats come from
    (a mask on the stats frame's key columns) and whether higher is better."""

    title: str
    where: dict[str, str]
    higher_is_better: bool = True


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
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines) + "\n"


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


def heads_by_dataset(runs: pd.DataFrame) -> dict[str, list[str]]:
    """dataset -> heads (fused first), the union over its runs."""
    out: dict[str, list[str]] = {}
    for dataset, heads in runs.groupby("dataset")["heads"]:
        out[str(dataset)] = head_order(h for hs in heads for h in hs)
    return out


# ---------------------------------------------------------------- published numbers


def load_published(paper_dir: Path | None) -> pd.DataFrame:
    """Every results/paper/*.csv (columns PAPER_COLUMNS; values in percent) in one frame."""
    files = sorted(paper_dir.glob("*.csv")) if paper_dir and paper_dir.is_dir() else []
    frames = []
    for path in files:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; see docs/reports.md")
        frame["value"] = pd.to_numeric(frame["value"], errors="raise")
        frames.append(frame[PAPER_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=PAPER_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def paper_vs_ours(ours: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Published rows of our methods beside our mean +- std (percent) and the difference
    ours - published; ours is NaN where we have no runs of that dataset and method."""
    rows = published[published["method"] != ""]
    merged = rows.merge(
        ours[["dataset", "method", "head", "metric", "mean", "std", "n"]],
        on=["dataset", "method", "head", "metric"],
        how="left",
    )
    merged = merged.rename(columns={"value": "published", "mean": "ours", "std": "ours_std"})
    merged["n"] = merged["n"].fillna(0).astype(int)
    merged["difference"] = merged["ours"] - merged["published"]
    order = {m: i for i, m in enumerate(method_order(merged["method"]))}
    merged = merged.assign(_rank=merged["method"].map(order))
    merged = merged.sort_values(["dataset", "_rank", "head", "metric", "paper", "table"])
    return merged.drop(columns="_rank").reset_index(drop=True)


def paper_vs_ours_markdown(comparison: pd.DataFrame, our_datasets: Sequence[str]) -> str:
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
                diff,
            ]
        )
    text = "# Published numbers beside ours\n\n"
    text += "Percent. Ours: mean ± std over seeds of the test split. Published values as "
    text += "printed in each paper (their own protocols and preprocessing).\n\n"
    text += markdown_table(header, body, ["l", "l", "l", "l", "r", "l", "r", "r", "r"])
    published_sets = sorted(set(comparison["dataset"]))
    without = [d for d in our_datasets if d not in published_sets]
    if without:
        text += (
            f"\nNo published numbers for {', '.join(without)}"
            f" (published: {', '.join(published_sets) or 'none'}).\n"
        )
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
    comparison = paper_vs_ours(stats, published)
    (tables / "paper_vs_ours.md").write_text(paper_vs_ours_markdown(comparison, sorted(heads)))
    return {"stats": stats, "curves": curves, "forgetting": forget, "comparison": comparison}


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


def default_paper_dir(results: Path) -> Path:
    """results/paper under --results when it holds CSVs, else the checkout's results/paper."""
    local = results / "paper"
    if local.is_dir() and any(local.glob("*.csv")):
        return local
    return Path(__file__).resolve().parents[1] / "results" / "paper"


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
    print(f"{len(loaded.runs)} run(s): " + ", ".join(_run_counts(loaded.runs)))
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
        from benchmark.figures import write_figures

        written += write_figures(loaded, frames, out / "figures", metrics[0])
    print(f"wrote {len(written)} files under {out} (tables/, figures/)")
    return 0


def older_code_line(runs: pd.DataFrame) -> str | None:
    """One line on the runs done with older code (marked in the tables), or None."""
    older = runs["older_code"].dropna() if "older_code" in runs else pd.Series(dtype=str)
    if older.empty:
        return None
    commits = ", ".join(sorted(set(older)))
    return (
        f"{len(older)} run(s) done with older code ({commits}), marked '{OLDER_CODE.strip()}' "
        "in the tables: `python -m benchmark run ... --rerun-stale` trains them with this code"
    )


def _run_counts(runs: pd.DataFrame) -> list[str]:
    counts = runs.groupby(["dataset", "method"]).size()
    return [f"{d}/{m} {n}" for (d, m), n in counts.items()]
