"""The runs of results/ as tidy frames: what every table and figure is computed from.

`load_results` reads results/runs/<dataset>/<method>/<run_id>/ (summary.json, metrics.jsonl,
config.json) into one long frame with one row per run x epoch x split x head x metric
(DomainBed's collect_results groups records the same way: by dataset, method and seed).
Runs without summary.json (unfinished, killed, or still running) are left out and counted.

Everything downstream is a pure function of that frame: the epoch each run is scored at
(`select_epochs`: the best-val epoch the engine recorded, or the last), the mean +- std
over seeds (`aggregate`), modality forgetting (`forgetting_frame`, running max - current
of each modality's per-epoch accuracy, after avalanche's functional forgetting), the
published-vs-ours comparison (`paper_vs_ours`), the method order and the `Column`s a
table selects. tables.py renders these frames and figures.py draws them; this module
imports neither.

Runs of one method whose configs differ (other than seed) are not averaged together: the
differing keys become a variant label, e.g. `ogm_ge[alpha=0.5]`, shown as its own row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.errors import UserError
from benchmark.train import runstore
from benchmark.train.config import NOT_IN_RUN_ID
from benchmark.train.metrics import forgetting

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
    engine recorded it in summary.json; the test split never picks) or its last epoch.

    One exception, under best_val: in a run of a SEPARATE_MODELS method each modality's
    head is a model trained alone, so its rows are read at that head's own best-val epoch
    (`own_best_epochs`); the ensemble's stay at the recorded one, and so do the Shapley
    contributions (they belong to the ensemble) and any metric not measured at the own
    epoch (a probe, when `probe_every` skips it). Otherwise the other modality would
    decide when a modality's reference is read."""
    if select not in SELECTIONS:
        raise UserError(f"unknown --select {select!r}: use one of {', '.join(SELECTIONS)}")
    column = "best_epoch" if select == "best_val" else "last_epoch"
    chosen = results.runs[["run_id", column]].rename(columns={column: "at"})
    rows = results.long[results.long["split"] == split]
    picked = rows.merge(chosen, on="run_id")
    picked = picked[picked["epoch"] == picked.pop("at")]
    if select == "last":
        return picked.reset_index(drop=True)
    keys = ["run_id", "head", "metric"]
    own = rows[rows["metric"] != "contribution"].merge(own_best_epochs(results), on=keys[:2])
    own = own[own["epoch"] == own.pop("own_epoch")]
    kept = picked.merge(own[keys], on=keys, how="left", indicator=True)
    kept = kept[kept.pop("_merge") == "left_only"]
    return pd.concat([kept, own], ignore_index=True)


# Methods whose modality heads are separate models, each trained alone (no shared
# parameter, no gradient across modalities): each is scored at its own best-val epoch.
SEPARATE_MODELS = ("unimodal",)


def own_best_epochs(results: Results) -> pd.DataFrame:
    """run_id, head, own_epoch: for every modality head of a SEPARATE_MODELS run, the epoch
    of its best val accuracy (the earliest among ties, the engine's rule for fused)."""
    runs = results.runs[results.runs["method"].map(base_method).isin(SEPARATE_MODELS)]
    modal = runs[["run_id", "heads"]].explode("heads").rename(columns={"heads": "head"})
    modal = modal[modal["head"] != "fused"]
    long = results.long
    val = long[(long["split"] == "val") & (long["metric"] == "acc")].merge(
        modal, on=["run_id", "head"]
    )
    val = val.sort_values(["run_id", "head", "value", "epoch"], ascending=[True, True, False, True])
    best = val.drop_duplicates(["run_id", "head"])[["run_id", "head", "epoch"]]
    return best.rename(columns={"epoch": "own_epoch"}).reset_index(drop=True)


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


@dataclass
class Column:
    """One numeric column of a rendered table: its title, where its stats come from
    (a mask on the stats frame's key columns) and whether higher is better."""

    title: str
    where: dict[str, str]
    higher_is_better: bool = True


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


def run_counts(runs: pd.DataFrame) -> list[str]:
    counts = runs.groupby(["dataset", "method"]).size()
    return [f"{d}/{m} {n}" for (d, m), n in counts.items()]
