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
import re
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
# Row order of every table and figure: the `unimodal` reference first, the `joint`
# baseline, then the methods by publication (venue and year in each method's docstring).
# It also fixes each method's colour, so adding a method never recolours the others;
# registered methods not listed here follow, alphabetically.
METHOD_ORDER = (
    "unimodal",  # reference: each modality trained alone (UME, ICML 2023)
    "joint",  # baseline
    "g_blending",  # CVPR 2020
    "ogm_ge",  # CVPR 2022
    "greedy",  # ICML 2022
    "mmcosine",  # ICASSP 2023
    "pmr",  # CVPR 2023
    "umt",  # ICML 2023
    "agm",  # ICCV 2023
    "mla",  # CVPR 2024
    "mmpareto",  # ICML 2024
    "reconboost",  # ICML 2024
    "relearn",  # ECCV 2024
    "mie",  # IJCAI 2025
    "inforeg",  # CVPR 2025
)
PAPER_ORDER = METHOD_ORDER  # the name earlier code used
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
        record.update(_protocol_of(config))
        records.append(record)
        frames.append(long.assign(run_id=record["run_id"]))
        configs.append(_config_items(config))
    runs = pd.DataFrame(
        records,
        columns=[
            *RUN_KEYS,
            "best_epoch",
            "last_epoch",
            "heads",
            "older_code",
            "cost",
            *PROTOCOL_FIELDS,
        ],
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


PROTOCOL_FIELDS = ["protocol", "epochs", "variant", "train_size"]


def _protocol_of(config: dict[str, Any]) -> dict[str, Any]:
    """What paper_vs_ours needs from config.json: the protocol ("benchmark" | "paper"), the
    configured epochs, the method variant and the number of train samples (None where the
    config predates the field)."""
    settings = config.get("settings") or {}
    hp = config.get("hp") or {}
    splits = (config.get("dataset_meta") or {}).get("splits") or {}
    return {
        "protocol": settings.get("protocol"),
        "epochs": settings.get("epochs"),
        "variant": hp.get("variant", settings.get("variant")),
        "train_size": splits.get("train"),
    }


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
    """Methods in table/figure order: METHOD_ORDER, then other registered methods, then any
    other name (variants sit right after their base method), each group alphabetical."""
    canonical = _canonical()

    def key(name: str) -> tuple[int, str, str]:
        base = base_method(name)
        rank = canonical.index(base) if base in canonical else len(canonical)
        return rank, base if rank == len(canonical) else "", name

    return sorted(set(names), key=key)


def base_method(name: str) -> str:
    """The method a row label belongs to: "ogm_ge[alpha=0.5] (older code)" -> "ogm_ge"."""
    return name.removesuffix(OLDER_CODE).split("[", 1)[0]


def _canonical() -> list[str]:
    listed = [*METHOD_ORDER, *sorted(m for m in _registered() if m not in METHOD_ORDER)]
    return list(dict.fromkeys(listed))


def canonical_methods() -> list[str]:
    """Every method name whose colour is fixed: METHOD_ORDER then the rest of the registry."""
    return _canonical()


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
    modality = ~long["head"].astype(str).str.startswith("fused")  # not fused_without_<m>
    rows = long[(long["split"] == split) & (long["metric"] == metric) & modality]
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


def paper_epochs(method: str, variant: Any = None) -> int | None:
    """The epochs of `method`'s paper protocol (its paper_settings, then the variant's
    variant_paper_settings), or None where the method does not define them."""
    try:
        from methods import get_method_class

        cls = get_method_class(method)
    except Exception:
        return None
    settings = {**cls.paper_settings}
    if variant is not None:
        settings.update(cls.variant_paper_settings.get(variant, {}))
    epochs = settings.get("epochs")
    return int(epochs) if epochs is not None else None


def protocol_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The runs that may stand beside published numbers: config protocol "paper", and the
    epochs of the method's paper protocol where it defines them; and a one-line note
    counting the others (None when every run qualifies)."""
    if runs.empty:
        return runs, None
    reasons: dict[str, int] = {}
    keep = []
    for _, run in runs.iterrows():
        reason = None
        protocol = run.get("protocol")
        variant = run.get("variant")
        if protocol != "paper":
            shown = protocol if isinstance(protocol, str) else "unrecorded"
            reason = f"protocol {shown}, not paper"
        else:
            want = paper_epochs(
                base_method(str(run["method"])), variant if isinstance(variant, str) else None
            )
            epochs = run.get("epochs")
            if want is not None and (pd.isna(epochs) or int(epochs) != want):
                reason = "epochs other than the paper's"
        keep.append(reason is None)
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    kept = runs[keep]
    if not reasons:
        return kept, None
    why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    note = (
        f"left out of ours {sum(reasons.values())} run(s) that do not follow the papers' "
        f"protocol ({why})"
    )
    return kept, note


def ours_protocol(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and method of the compared runs: their epochs and train-set size, as
    text ("100", "80/100" when seeds differ; "?" where unrecorded)."""

    def shown(values: pd.Series) -> str:
        present = sorted({int(v) for v in values.dropna()})
        return "/".join(str(v) for v in present) or "?"

    if runs.empty:
        return pd.DataFrame(columns=["dataset", "method", "epochs", "train_size"])
    return (
        runs.groupby(["dataset", "method"])
        .agg(epochs=("epochs", shown), train_size=("train_size", shown))
        .reset_index()
    )


def paper_vs_ours(
    ours: pd.DataFrame, published: pd.DataFrame, protocol: pd.DataFrame | None = None
) -> pd.DataFrame:
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
    if protocol is not None and not protocol.empty:
        merged = merged.merge(protocol, on=["dataset", "method"], how="left")
    else:
        merged["epochs"], merged["train_size"] = None, None
    merged[["epochs", "train_size"]] = merged[["epochs", "train_size"]].fillna("–")
    order = {m: i for i, m in enumerate(method_order(merged["method"]))}
    merged = merged.assign(_rank=merged["method"].map(order))
    merged = merged.sort_values(["dataset", "_rank", "head", "metric", "paper", "table"])
    return merged.drop(columns="_rank").reset_index(drop=True)


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
    readmes = [Path(p) for p in getattr(args, "readme", None) or []] or default_readmes(out)
    for readme in readmes:
        if not readme.is_file():
            raise UserError(f"--readme {readme}: no such file")
    for readme in readmes:
        changed = write_readme(readme, out / "tables")
        print(f"{readme}: results blocks {'rewritten' if changed else 'already up to date'}")
    return 0


# ---------------------------------------------------------------- README blocks

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
