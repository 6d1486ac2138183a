"""The imbalance table: per method, how much each modality learnt, against a reference.

Per dataset and method (mean +- std over seeds, percent, test split at the reported
epoch): fused accuracy; for each modality m its head's accuracy, its linear probe
(`benchmark.train.probes`), the `unimodal` run's accuracy of m (the reference: m trained alone,
as the "<m>-only" rows of OGM-GE / BalanceBenchmark tables), the gap reference - probe
(how much of m's features joint training cost), m's Shapley contribution and the fused
accuracy without m (`benchmark.train.contribution`). Runs that predate these metrics, or a
sweep without `unimodal`, leave their cells blank ("–"), never an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from benchmark.report.frames import Column

REFERENCE_METHOD = "unimodal"


def with_reference(stats: pd.DataFrame) -> pd.DataFrame:
    """`stats` plus, for every method, rows metric "reference" (the unimodal run's acc of
    head m) and "gap" (reference - probe mean) per dataset and modality."""
    extra = []
    for (dataset, method, head), part in stats.groupby(["dataset", "method", "head"]):
        if head == "fused" or str(head).startswith("fused_without_"):
            continue
        ref = reference_rows(stats, dataset, head)
        if ref.empty:
            continue
        r = ref.iloc[0]
        extra.append([dataset, method, head, "reference", r["mean"], r["std"], r["n"]])
        probe = part[part["metric"] == "probe_acc"]
        if not probe.empty:
            gap = r["mean"] - probe["mean"].iloc[0]
            extra.append([dataset, method, head, "gap", gap, math.nan, probe["n"].iloc[0]])
    cols = ["dataset", "method", "head", "metric", "mean", "std", "n"]
    return pd.concat([stats[cols], pd.DataFrame(extra, columns=cols)], ignore_index=True)


def reference_rows(stats: pd.DataFrame, dataset: str, head: str) -> pd.DataFrame:
    """The `unimodal` run's acc row(s) of `head` on `dataset`: the plain "unimodal" row, or
    where only runs of older code exist, "unimodal (older code)" (never a variant)."""
    rows = stats[
        (stats["dataset"] == dataset) & (stats["head"] == head) & (stats["metric"] == "acc")
    ]
    for label in (REFERENCE_METHOD, f"{REFERENCE_METHOD} (older code)"):
        hit = rows[rows["method"] == label]
        if not hit.empty:
            return hit
    return rows.iloc[:0]


def has_reference(stats: pd.DataFrame) -> bool:
    methods = set(stats["method"])
    return bool({REFERENCE_METHOD, f"{REFERENCE_METHOD} (older code)"} & methods)


def imbalance_columns(modalities: Sequence[str]):
    """fused acc, then per modality: head, probe, reference, gap, contribution, without m."""
    columns = [Column("fused acc", {"head": "fused", "metric": "acc"})]
    for m in modalities:
        columns += [
            Column(f"{m} head", {"head": m, "metric": "acc"}),
            Column(f"{m} probe", {"head": m, "metric": "probe_acc"}),
            Column(f"{m} ref", {"head": m, "metric": "reference"}),
            Column(f"{m} gap", {"head": m, "metric": "gap"}, higher_is_better=False),
            Column(f"{m} contrib", {"head": m, "metric": "contribution"}),
            Column(f"fused w/o {m}", {"head": f"fused_without_{m}", "metric": "acc"}),
        ]
    return columns


def caption(stats: pd.DataFrame, when: str) -> str:
    text = (
        f"Test {when}, mean ± std over seeds, percent. head: the modality's own logits; "
        "probe: linear probe of its frozen encoder; ref: the `unimodal` run's accuracy "
        "(the modality trained alone); gap = ref - probe; contrib: Shapley contribution "
        "to fused accuracy (absent = zero input); fused w/o: fused accuracy without it."
    )
    if not has_reference(stats):
        text += " No `unimodal` run here: the ref and gap columns are empty."
    return text
