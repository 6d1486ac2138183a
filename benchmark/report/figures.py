"""Figures of a report (PNG for the README, PDF for papers), drawn from the frames of frames.py.

One style everywhere: seaborn's "paper" context on a white grid, 7 pt text, sized for
a paper column (3.3 in wide), and one colour per method from seaborn's colour-blind-safe
palette, fixed by the method's position in `frames.canonical_methods()` (the papers'
order, then the rest of the registry), so a method keeps its colour whatever subset of
methods or datasets a report shows. Values are percentages; epochs are counted from 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from benchmark.report.frames import (  # noqa: E402
    METRIC_LABELS,
    Results,
    base_method,
    canonical_methods,
    head_order,
    method_order,
)
from benchmark.report.imbalance import reference_rows  # noqa: E402

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
PALETTE = "colorblind"
HEAD_HATCHES = ["", "///", "..", "xx", "\\\\\\"]
SOURCE_MARKERS = ["o", "s", "^", "v", "P", "X", "D"]
STYLE_RC = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.title_fontsize": 6,
    "lines.linewidth": 1.0,
    "patch.linewidth": 0.5,
    "hatch.linewidth": 0.5,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


def apply_style() -> None:
    """The seaborn theme every figure uses."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, rc=STYLE_RC)


VARIANT_LINESTYLES = ["-", "--", ":", "-."]
VARIANT_MARKERS = ["o", "s", "^", "v", "D", "P", "X"]
VARIANT_HATCHES = ["", "////", "....", "xxxx", "\\\\\\\\"]


def _palette() -> list[tuple[float, float, float]]:
    """20 colours: seaborn's colour-blind-safe 10, then its dark 10 shifted by five (so
    method 11 is not a darker method 10)."""
    first = sns.color_palette(PALETTE, 10)
    dark = sns.color_palette("dark", 10)
    return [*first, *dark[5:], *dark[:5]]


def method_colors(names: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """A colour per method name, fixed by its base method's canonical position (a variant,
    "ogm_ge[alpha=0.5]", or older code's row takes its method's colour); unregistered
    names after the registry; the palette repeats after 20."""
    palette = _palette()
    names = list(names)
    canonical = canonical_methods()
    bases = [base_method(n) for n in names]
    extra = [b for b in method_order(bases) if b not in canonical]
    ranks = {n: i for i, n in enumerate([*canonical, *extra])}
    return {n: palette[ranks[base_method(n)] % len(palette)] for n in names}


def variant_index(names: Iterable[str]) -> dict[str, int]:
    """Per name, its position among the labels of the same base method (the plain method
    0, its variants 1, 2, ... in table order): what sets the line style, marker and hatch
    that tell variants of one colour apart."""
    out: dict[str, int] = {}
    seen: dict[str, int] = {}
    for name in method_order(names):
        base = base_method(name)
        out[name] = seen.get(base, 0)
        seen[base] = out[name] + 1
    return out


def method_styles(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per name: color (its base method's), linestyle, marker and hatch (by variant)."""
    names = list(names)
    colors, index = method_colors(names), variant_index(names)
    return {
        n: {
            "color": colors[n],
            "linestyle": VARIANT_LINESTYLES[index[n] % len(VARIANT_LINESTYLES)],
            "marker": VARIANT_MARKERS[index[n] % len(VARIANT_MARKERS)],
            "hatch": VARIANT_HATCHES[index[n] % len(VARIANT_HATCHES)],
        }
        for n in names
    }


def wrap_label(name: str, width: int = 18) -> str:
    """A method label on lines of about `width` characters: a variant's settings go under
    its name, one or more per line, so long labels never run into each other."""
    if "[" not in name or len(name) <= width:
        return name
    base, rest = name.split("[", 1)
    parts = ("[" + rest).split(",")
    lines, line = [base], ""
    for i, part in enumerate(parts):
        piece = part + ("," if i < len(parts) - 1 else "")
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\n".join(lines)


def clipped_err(
    mean: Sequence[float], std: Sequence[float], low: float = 0.0, high: float = 100.0
) -> np.ndarray:
    """Asymmetric error bars (2 x n) for mean +- std that stop at the metric's range."""
    mean = np.asarray(mean, dtype=float)
    std = np.nan_to_num(np.asarray(std, dtype=float))
    below = mean - np.clip(mean - std, low, high)
    above = np.clip(mean + std, low, high) - mean
    return np.nan_to_num(np.vstack([np.maximum(below, 0), np.maximum(above, 0)]))


def safe_name(text: str) -> str:
    """A dataset name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "dataset"


def save(fig: plt.Figure, directory: Path, stem: str) -> list[Path]:
    """Write stem.png (300 dpi) and stem.pdf (vector), both without timestamps, so
    regenerating unchanged results leaves the files unchanged."""
    directory.mkdir(parents=True, exist_ok=True)
    png, pdf = directory / f"{stem}.png", directory / f"{stem}.pdf"
    fig.savefig(png, dpi=300, metadata={"Software": None})
    fig.savefig(pdf, metadata={"CreationDate": None, "Creator": None})
    plt.close(fig)
    return [png, pdf]


def _method_legend(fig: plt.Figure, methods: Sequence[str], colors: dict) -> None:
    """One entry per method above the axes: its colour, line style and marker; long
    variant labels are wrapped and the columns fewer."""
    styles = method_styles(methods)
    handles = [
        plt.Line2D(
            [],
            [],
            color=styles[m]["color"],
            linestyle=styles[m]["linestyle"],
            marker=styles[m]["marker"],
            markersize=3,
            label=wrap_label(m, 24),
        )
        for m in methods
    ]
    longest = max((len(m) for m in methods), default=0)
    ncol = 2 if longest > 24 else 3 if longest > 12 else 5
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(methods), ncol),
        frameon=False,
        handlelength=2.0,
        columnspacing=1.0,
    )


def plot_unimodal_vs_multimodal(stats: pd.DataFrame, metric: str) -> plt.Figure:
    """Grouped bars, one row of axes per dataset: methods on the x axis, the fused head
    (solid) and each modality (hatched, lighter) with error bars = std over seeds."""
    stats = stats[(stats["metric"] == metric) & ~stats["head"].str.startswith("fused_")]
    datasets = sorted(stats["dataset"].unique())
    colors = method_colors(stats["method"].unique())
    count = max((stats.loc[stats["dataset"] == d, "method"].nunique() for d in datasets), default=1)
    width = max(COLUMN_WIDTH, 0.3 * count + 0.6)
    fig, axes = plt.subplots(
        len(datasets), 1, figsize=(width, 2.1 * len(datasets) + 0.2), squeeze=False
    )
    all_heads: list[str] = []
    for ax, dataset in zip(axes[:, 0], datasets, strict=True):
        part = stats[stats["dataset"] == dataset]
        methods = method_order(part["method"])
        heads = head_order(part["head"])
        all_heads += [h for h in heads if h not in all_heads]
        width = 0.8 / len(heads)
        for j, head in enumerate(heads):
            rows = part[part["head"] == head].set_index("method").reindex(methods)
            x = np.arange(len(methods)) - 0.4 + width * (j + 0.5)
            ax.bar(
                x,
                rows["mean"],
                width,
                yerr=clipped_err(rows["mean"], rows["std"]),
                color=[colors[m] for m in methods],
                alpha=1.0 if head == "fused" else 0.55,
                hatch=HEAD_HATCHES[all_heads.index(head) % len(HEAD_HATCHES)],
                edgecolor="0.2",
                linewidth=0.4,
                error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "0.15"},
            )
        _method_ticks(ax, methods, colors)
        ax.set_ylabel(f"test {METRIC_LABELS[metric]} (%)")
        ax.set_ylim(0, 100)
        ax.set_title(dataset)
        ax.grid(axis="x", visible=False)
    handles = [
        Patch(
            facecolor="0.75" if h != "fused" else "0.45",
            edgecolor="0.2",
            hatch=HEAD_HATCHES[i % len(HEAD_HATCHES)],
            label=h,
        )
        for i, h in enumerate(all_heads)
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        frameon=False,
    )
    fig.tight_layout()
    return fig


def _method_ticks(ax: plt.Axes, methods: Sequence[str], colors: dict) -> None:
    """Method names under the x axis, wrapped and slanted so they never overlap, each in
    its method's colour."""
    ax.set_xticks(np.arange(len(methods)), methods)  # slanted: one line each, no wrapping
    ax.set_xlim(-0.6, len(methods) - 0.4)
    for tick, method in zip(ax.get_xticklabels(), methods, strict=True):
        tick.set_rotation(40)
        tick.set_horizontalalignment("right")
        tick.set_rotation_mode("anchor")
        tick.set_color(tuple(0.6 * c for c in colors[method]))


def _lines(
    ax: plt.Axes,
    frame: pd.DataFrame,
    y: str,
    methods: Sequence[str],
    colors: dict,
    bounds: tuple[float | None, float | None] = (0.0, 100.0),
    log: bool = False,
) -> None:
    """Mean over seeds per method and epoch, with a +- std band clipped to `bounds` (the
    metric's range: a band above 100% accuracy is not a possible value)."""
    frame = frame.assign(epoch=frame["epoch"] + 1)
    styles = method_styles(methods)
    for method in methods:
        part = frame[frame["method"] == method]
        if part.empty:
            continue
        if log:  # a log axis: geometric mean and band (a band down to 0 is -inf there)
            grouped = np.log(part[y].clip(lower=1e-12)).groupby(part["epoch"])
            center, spread = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
            mean, low, high = np.exp(center), np.exp(center - spread), np.exp(center + spread)
        else:
            grouped = part.groupby("epoch")[y]
            mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
            low, high = (mean - std).clip(*bounds), (mean + std).clip(*bounds)
        color = colors[method]
        ax.plot(
            mean.index,
            mean.to_numpy(),
            color=color,
            linestyle=styles[method]["linestyle"],
            marker=styles[method]["marker"],
            markersize=2.5,
            markeredgewidth=0,
        )
        ax.fill_between(
            mean.index, low.to_numpy(), high.to_numpy(), color=color, alpha=0.15, linewidth=0
        )
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)


def plot_forgetting(curves: pd.DataFrame, dataset: str, metric: str) -> plt.Figure:
    """Per modality (columns): test accuracy over epochs for every method (top) and its
    forgetting, running max - current (bottom); mean over seeds with a +- std band."""
    part = curves[curves["dataset"] == dataset].assign(
        value=lambda f: 100 * f["value"], forgetting=lambda f: 100 * f["forgetting"]
    )
    modalities = head_order(part["head"])
    methods = method_order(part["method"])
    colors = method_colors(methods)
    fig, axes = plt.subplots(
        2,
        len(modalities),
        figsize=(COLUMN_WIDTH, 2.6),
        sharex=True,
        sharey="row",
        squeeze=False,
    )
    for j, modality in enumerate(modalities):
        rows = part[part["head"] == modality]
        _lines(axes[0, j], rows, "value", methods, colors)
        _lines(axes[1, j], rows, "forgetting", methods, colors)
        axes[0, j].set_title(modality)
        axes[0, j].set_xlabel("")
    axes[0, 0].set_ylabel(f"test {METRIC_LABELS[metric]} (%)")
    axes[1, 0].set_ylabel("forgetting (pp)")
    axes[1, 0].set_ylim(0, max(1.0, axes[1, 0].get_ylim()[1]))  # rows share y
    _method_legend(fig, methods, colors)
    fig.tight_layout()
    return fig


def plot_training(long: pd.DataFrame, dataset: str, metric: str) -> plt.Figure:
    """Validation cross-entropy of the fused head (top; one quantity for every method,
    unlike each method's own training objective `train/loss`) and validation fused
    accuracy (bottom) over epochs per method. The CE is drawn on a log scale as the
    geometric mean ± std over seeds (one diverging seed must not flatten the others).
    Runs that predate `val/fused/ce` are named in the top panel instead of drawn."""
    part = long[long["dataset"] == dataset]
    loss = part[(part["split"] == "val") & (part["head"] == "fused") & (part["metric"] == "ce")]
    val = part[(part["split"] == "val") & (part["head"] == "fused") & (part["metric"] == metric)]
    val = val.assign(value=100 * val["value"])
    methods = method_order(part["method"])
    colors = method_colors(methods)
    fig, axes = plt.subplots(2, 1, figsize=(COLUMN_WIDTH, 2.6), sharex=True)
    _lines(axes[0], loss, "value", methods, colors, bounds=(0.0, None), log=True)
    _lines(axes[1], val, "value", methods, colors)
    axes[0].set_xlabel("")
    axes[0].set_ylabel("val fused CE\n(geometric mean ± std)")
    if not loss.empty:
        axes[0].set_yscale("log")  # one diverging seed must not flatten the others
    axes[1].set_ylabel(f"val fused {METRIC_LABELS[metric]} (%)")
    without = [m for m in methods if loss[loss["method"] == m].empty]
    if without:
        what = "no run logs" if len(without) == len(methods) else f"not logged by {len(without)}:"
        names = "" if len(without) == len(methods) else " " + ", ".join(without)
        axes[0].text(
            0.5,
            0.5,
            f"val/fused/ce {what}{names}\n(runs older than the CE record)",
            ha="center",
            va="center",
            fontsize=5,
            wrap=True,
            transform=axes[0].transAxes,
        )
    _method_legend(fig, methods, colors)
    fig.tight_layout()
    return fig


def plot_paper_vs_ours(comparison: pd.DataFrame, metric: str) -> plt.Figure:
    """Per dataset with published numbers: fused test accuracy per method, one marker per
    published source (hollow) and ours (filled diamond, error bar = std over seeds)."""
    rows = comparison[(comparison["head"] == "fused") & (comparison["metric"] == metric)]
    datasets = sorted(rows["dataset"].unique())
    if not datasets:
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no published numbers for these datasets and methods", ha="center")
        return fig
    sources = sorted((rows["paper"] + " " + rows["table"]).str.strip().unique())
    markers = {s: SOURCE_MARKERS[i % len(SOURCE_MARKERS)] for i, s in enumerate(sources)}
    heights = [0.35 + 0.22 * rows.loc[rows["dataset"] == d, "method"].nunique() for d in datasets]
    fig, axes = plt.subplots(
        len(datasets),
        1,
        figsize=(COLUMN_WIDTH, sum(heights) + 0.5),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
        sharex=True,
    )
    for ax, dataset in zip(axes[:, 0], datasets, strict=True):
        part = rows[rows["dataset"] == dataset]
        methods = method_order(part["method"])
        colors = method_colors(methods)
        y = {m: i for i, m in enumerate(methods)}
        offsets = np.linspace(-0.25, 0.25, len(sources) + 1)
        for r in part.itertuples(index=False):
            source = f"{r.paper} {r.table}".strip()
            ax.plot(
                r.published,
                y[r.method] + offsets[sources.index(source)],
                linestyle="none",
                marker=markers[source],
                markersize=4,
                markerfacecolor="white",
                markeredgecolor=colors[r.method],
                markeredgewidth=1.0,
            )
        ours = part.drop_duplicates("method").dropna(subset=["ours"])
        for r in ours.itertuples(index=False):
            ax.errorbar(
                r.ours,
                y[r.method] + offsets[-1],
                xerr=clipped_err([r.ours], [r.ours_std]),
                marker="D",
                markersize=4,
                color=colors[r.method],
                markeredgecolor="0.1",
                markeredgewidth=0.5,
                elinewidth=0.8,
                capsize=1.5,
            )
        ax.set_yticks(range(len(methods)), [wrap_label(m, 24) for m in methods])
        ax.set_ylim(len(methods) - 0.5, -0.5)
        if ours.empty:
            title = f"{dataset} (no paper-protocol runs of ours)"
        else:
            epochs = "/".join(sorted(set(ours["epochs"].astype(str))))
            size = "/".join(sorted(set(ours["train_size"].astype(str))))
            title = f"{dataset} (ours: {epochs} epochs, {size} train samples)"
        ax.set_title(title)
    axes[-1, 0].set_xlabel(f"test fused {METRIC_LABELS[metric]} (%)")
    handles = [
        plt.Line2D(
            [],
            [],
            linestyle="none",
            marker=markers[s],
            markerfacecolor="white",
            markeredgecolor="0.3",
            label=s,
        )
        for s in sources
    ]
    handles.append(
        plt.Line2D(
            [], [], linestyle="none", marker="D", color="0.4", markeredgecolor="0.1", label="ours"
        )
    )
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=2,
        frameon=False,
        columnspacing=0.8,
        handletextpad=0.2,
        fontsize=5.5,
    )
    fig.tight_layout()
    return fig


def plot_imbalance(imb: pd.DataFrame, dataset: str) -> plt.Figure:
    """One row of axes per modality: each method's linear-probe accuracy of the modality
    (filled marker) and its head's accuracy (hollow), mean +- std over seeds at the
    reported epoch, beside the `unimodal` reference (the modality trained alone) as a grey
    line with its +- std band; the distance to the band is the imbalance. Frame: the
    imbalance table's (`imbalance.with_reference`); without a `unimodal` run, no line and
    a note."""
    part = imb[imb["dataset"] == dataset]
    modalities = [
        h for h in head_order(part["head"]) if h != "fused" and not h.startswith("fused_")
    ]
    methods = method_order(part["method"])
    styles = method_styles(methods)
    width = max(COLUMN_WIDTH, 0.3 * len(methods) + 0.6)
    fig, axes = plt.subplots(
        len(modalities), 1, figsize=(width, 1.9 * len(modalities) + 0.3), squeeze=False,
        sharex=True,
    )  # fmt: skip
    x = np.arange(len(methods))
    for ax, modality in zip(axes[:, 0], modalities, strict=True):
        rows = part[part["head"] == modality]
        ref = reference_rows(part, dataset, modality)
        if ref.empty:
            ax.text(
                0.5, 0.96, "no `unimodal` run: no reference line", ha="center", va="top",
                fontsize=5.5, transform=ax.transAxes,
            )  # fmt: skip
        else:
            mean, std = float(ref["mean"].iloc[0]), float(np.nan_to_num(ref["std"].iloc[0]))
            ax.axhspan(max(0.0, mean - std), min(100.0, mean + std), color="0.85", linewidth=0)
            ax.axhline(mean, color="0.35", linewidth=0.9, zorder=1.5)
        for metric, offset, filled in (("probe_acc", -0.15, True), ("acc", 0.15, False)):
            values = rows[rows["metric"] == metric].set_index("method").reindex(methods)
            for i, method in enumerate(methods):
                m, sd = values.at[method, "mean"], values.at[method, "std"]
                if pd.isna(m):
                    continue
                color = styles[method]["color"]
                ax.errorbar(
                    x[i] + offset,
                    m,
                    yerr=clipped_err([m], [sd]),
                    marker=styles[method]["marker"],
                    markersize=3.5,
                    markerfacecolor=color if filled else "white",
                    markeredgecolor=color,
                    markeredgewidth=0.8,
                    color=color,
                    elinewidth=0.7,
                    capsize=1.2,
                    linestyle="none",
                    zorder=3,
                )
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{modality}: test acc (%)")
        ax.grid(axis="x", visible=False)
    _method_ticks(axes[-1, 0], methods, {m: styles[m]["color"] for m in methods})
    axes[0, 0].set_title(dataset)
    handles = [
        plt.Line2D([], [], linestyle="none", marker="o", color="0.3", label="probe (encoder)"),
        plt.Line2D(
            [], [], linestyle="none", marker="o", markerfacecolor="white",
            markeredgecolor="0.3", label="head",
        ),
        plt.Line2D([], [], color="0.35", linewidth=0.9, label="unimodal reference ± std"),
    ]  # fmt: skip
    fig.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False
    )
    fig.tight_layout()
    return fig


def write_figures(
    results: Results, frames: dict[str, Any], out: Path, metric: str = "acc"
) -> list[Path]:
    """Every figure of the report under `out`; returns the files written."""
    apply_style()
    written = save(
        plot_unimodal_vs_multimodal(frames["stats"], metric), out, "unimodal_vs_multimodal"
    )
    for dataset in sorted(results.runs["dataset"].unique()):
        name = safe_name(dataset)
        if not frames["curves"][frames["curves"]["dataset"] == dataset].empty:
            written += save(
                plot_forgetting(frames["curves"], dataset, metric), out, f"forgetting_{name}"
            )
        written += save(plot_training(results.long, dataset, metric), out, f"training_{name}")
        imb = frames.get("imbalance")
        if imb is not None and not imb[imb["dataset"] == dataset].empty:
            written += save(plot_imbalance(imb, dataset), out, f"imbalance_{name}")
    written += save(plot_paper_vs_ours(frames["comparison"], metric), out, "paper_vs_ours")
    return written
