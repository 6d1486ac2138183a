"""Report rules of issue 12: the imbalance figure, variant colours, the training panel's
quantity, paper_vs_ours's protocol filter, Markdown-safe names and the README blocks that
are generated from results/tables (and must equal what the committed tables produce)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from test_report import current_tree, paper_protocol  # noqa: E402

from benchmark.cli import main as cli_main  # noqa: E402
from benchmark.report import figures, frames, readme, tables  # noqa: E402
from benchmark.report.imbalance import with_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATS_COLUMNS = ["dataset", "method", "head", "metric", "mean", "std", "n"]


# ---------------------------------------------------------------- README blocks


def test_committed_readme_blocks_equal_the_committed_tables():
    """README, docs and results/ cannot drift: every results block of the committed README.md
    and docs/*.md is what `python -m benchmark report` (`make figures`) writes from
    results/tables."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    names = []
    for path in files:
        text = path.read_text()
        names += [m["name"] for m in readme.README_BLOCK.finditer(text)]
        new, stale = readme.update_readme(text, ROOT / "results" / "tables")
        assert stale == [], f"{path.name}: blocks {stale} have no table"
        assert new == text, f"{path.name}: results blocks are stale: run `make figures`"
    assert {"main/avdigits", "imbalance/avdigits", "forgetting/avdigits", "cost/avdigits"} <= set(
        names
    )


def test_readme_blocks_are_rewritten_from_the_tables_only_between_markers(tmp_path):
    table_dir = tmp_path / "table_dir"
    table_dir.mkdir()
    (table_dir / "main.md").write_text(
        "# Main\n\n### toy\n\ncaption\n\n| method | a | b |\n| --- | ---: | ---: |\n"
        "| joint | 1.00 | 2.00 |\n\n### other\n\n| method | a |\n| --- | ---: |\n| x | 3 |\n"
    )
    text = (
        "Prose stays.\n\n<!-- results:begin main/toy -->\nold\n<!-- results:end main/toy -->\n"
        "<!-- results:begin main/toy cols=method;b -->\n<!-- results:end main/toy -->\n"
        "<!-- results:begin main/absent -->\nkept\n<!-- results:end main/absent -->\nEnd.\n"
    )
    new, stale = readme.update_readme(text, table_dir)
    assert stale == ["main/absent"]
    assert new.startswith("Prose stays.\n\n<!-- results:begin main/toy -->\n\n| method | a | b |")
    assert "| joint | 1.00 | 2.00 |\n\n<!-- results:end main/toy -->" in new
    assert "| method | b |\n| --- | ---: |\n| joint | 2.00 |\n" in new  # only the named columns
    assert "\nkept\n" in new and new.endswith("End.\n")
    assert readme.update_readme(new, table_dir)[0] == new  # idempotent


def test_report_rewrites_the_readme_passed_with_readme(tmp_path, capsys):
    tree = current_tree(tmp_path)
    readme_md = tmp_path / "README.md"
    readme_md.write_text("x\n<!-- results:begin main/toy -->\n<!-- results:end main/toy -->\n")
    doc = tmp_path / "results.md"
    doc.write_text(readme_md.read_text())
    args = ["report", "--results", str(tree), "--out", str(tmp_path / "out"), "--no-figures"]
    assert cli_main([*args, "--readme", str(readme_md), str(doc)]) == 0
    assert "| mie | **90.00 ± 0.00** |" in readme_md.read_text()
    assert doc.read_text() == readme_md.read_text()
    assert capsys.readouterr().out.count("results blocks rewritten") == 2


# ---------------------------------------------------------------- order, names, colours


def test_method_order_reference_first_then_baseline_then_publication():
    names = ["inforeg", "mie", "joint", "unimodal", "mmpareto", "g_blending", "joint[lr=0.1]"]
    assert frames.method_order(names) == [
        "unimodal",
        "joint",
        "joint[lr=0.1]",
        "g_blending",
        "mmpareto",
        "mie",
        "inforeg",
    ]
    assert frames.canonical_methods()[:2] == ["unimodal", "joint"]


def test_long_and_odd_method_names_never_break_markdown_columns():
    name = "joint[fusion=concat,lr=0.01,note=a|b]"
    text = tables.markdown_table(["method", "acc"], [[name, "1.00"]])
    row = text.splitlines()[2]
    assert row.count("|") - row.count("\\|") == 3  # two cells: the escaped bar is not a rule
    assert "fusion=concat, lr=0.01" in row  # a renderer may wrap the long label


def test_a_variant_takes_its_methods_colour_and_differs_by_style():
    names = ["ogm_ge", "ogm_ge[alpha=0.5]", "ogm_ge[alpha=0.5] (older code)", "pmr"]
    colors = figures.method_colors(names)
    assert colors["ogm_ge[alpha=0.5]"] == colors["ogm_ge"] == colors[names[2]]
    assert colors["pmr"] != colors["ogm_ge"]
    styles = figures.method_styles(names)
    looks = {(s["linestyle"], s["marker"]) for n, s in styles.items() if n.startswith("ogm_ge")}
    assert len(looks) == 3  # the three labels of one colour are told apart by style
    canonical = frames.canonical_methods()
    fifteen = figures.method_colors(canonical)
    assert len(set(fifteen.values())) == len(canonical)  # no repeat among the registry


# ---------------------------------------------------------------- imbalance figure


def _imbalance_stats(with_unimodal: bool) -> pd.DataFrame:
    rows = [
        ["d", "joint", "fused", "acc", 90.0, 1.0, 3],
        ["d", "joint", "audio", "acc", 40.0, 5.0, 3],
        ["d", "joint", "audio", "probe_acc", 50.0, 2.0, 3],
        ["d", "joint[lr=0.1]", "audio", "acc", 98.0, 9.0, 3],
        ["d", "joint[lr=0.1]", "audio", "probe_acc", 55.0, 2.0, 3],
    ]
    if with_unimodal:
        rows += [["d", "unimodal", "audio", "acc", 97.0, 6.0, 3]]
    return with_reference(pd.DataFrame(rows, columns=STATS_COLUMNS))


def test_imbalance_figure_draws_the_reference_band_clipped_to_100():
    fig = figures.plot_imbalance(_imbalance_stats(True), "d")
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if list(line.get_ydata()) == [97.0, 97.0]]
    assert len(lines) == 1  # the reference line at the unimodal run's accuracy
    (band,) = [p for p in ax.patches if p.get_height() > 0 and p.get_width() >= 1]
    assert band.get_y() == pytest.approx(91.0) and band.get_y() + band.get_height() == 100.0
    for container in ax.containers:  # error bars: no whisker above 100% or below 0
        for segments in container.lines[2]:
            ys = np.concatenate([s[:, 1] for s in segments.get_segments()])
            assert ys.max() <= 100.0 and ys.min() >= 0.0
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["unimodal", "joint", "joint[lr=0.1]"]
    plt.close(fig)


def test_imbalance_figure_without_unimodal_has_a_note_not_an_error():
    fig = figures.plot_imbalance(_imbalance_stats(False), "d")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("no `unimodal` run" in t for t in texts)
    axhlines = [line for line in fig.axes[0].get_lines() if list(line.get_xdata()) == [0, 1]]
    assert axhlines == [] and len(fig.axes[0].patches) == 0  # no reference line, no band
    plt.close(fig)


def test_an_old_tree_still_writes_every_figure_and_the_imbalance_one(tmp_path, capsys):
    """The bundled tree predates probes, CE and unimodal: the report writes all figures."""
    tree = current_tree(tmp_path)
    assert cli_main(["report", "--results", str(tree), "--out", str(tmp_path / "o")]) == 0
    figs = tmp_path / "o" / "figures"
    for stem in ("imbalance_toy", "training_toy", "paper_vs_ours"):
        assert (figs / f"{stem}.png").stat().st_size > 1000


# ---------------------------------------------------------------- training panel


def _long(ce: bool) -> pd.DataFrame:
    rows = []
    for epoch in range(3):
        rows.append(["d", "pmr", 0, "r0", epoch, "train", "all", "loss", 1.0 + epoch])
        rows.append(["d", "pmr", 0, "r0", epoch, "val", "fused", "acc", 0.5 + 0.1 * epoch])
        if ce:
            rows.append(["d", "pmr", 0, "r0", epoch, "val", "fused", "ce", 2.0 - 0.5 * epoch])
    cols = [*frames.RUN_KEYS, "epoch", "split", "head", "metric", "value"]
    return pd.DataFrame(rows, columns=cols)


def test_training_panel_plots_the_fused_heads_ce_not_the_methods_objective():
    fig = figures.plot_training(_long(ce=True), "d", "acc")
    top = fig.axes[0]
    assert top.get_ylabel().startswith("val fused CE")
    (line,) = top.get_lines()
    assert list(line.get_ydata()) == [2.0, 1.5, 1.0]  # not train/loss's rising 1, 2, 3
    plt.close(fig)


def test_training_panel_without_ce_says_so_instead_of_plotting_train_loss():
    fig = figures.plot_training(_long(ce=False), "d", "acc")
    top = fig.axes[0]
    assert top.get_lines() == []
    assert any("val/fused/ce" in t.get_text() for t in top.texts)
    plt.close(fig)


# ---------------------------------------------------------------- paper vs ours


def _runs(rows) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["dataset", "method", "run_id", "protocol", "epochs", "variant", "train_size"]
    )


def test_only_paper_protocol_runs_at_the_papers_epochs_are_ours():
    runs = _runs(
        [
            ["cremad", "ogm_ge", "a", "paper", 100, None, 3000],  # OGM-GE's paper: 100 epochs
            ["cremad", "ogm_ge", "b", "paper", 1, None, 36],  # a 1-epoch run on 36 clips
            ["cremad", "joint", "c", "benchmark", 20, None, 3000],
            ["cremad", "mie", "d", "paper", 7, None, 3000],  # no paper epochs defined: kept
        ]
    )
    kept, note = frames.protocol_runs(runs)
    assert list(kept["run_id"]) == ["a", "d"]
    assert note.startswith("left out of ours 2 run(s)")
    assert "1 epochs other than the paper's" in note and "1 protocol benchmark" in note
    shown = frames.ours_protocol(kept).set_index("method")
    assert shown.loc["ogm_ge", "epochs"] == "100" and shown.loc["ogm_ge", "train_size"] == "3000"


def test_a_one_epoch_run_is_left_out_of_paper_vs_ours_with_a_note(tmp_path, capsys):
    tree = current_tree(tmp_path)
    paper_protocol(tree)
    path = next(tree.glob("runs/toy/mie/*/config.json"))
    config = json.loads(path.read_text())
    config["method"] = "ogm_ge"  # pretend: an OGM-GE run at 3 epochs, the paper says 100
    run = path.parent
    target = tree / "runs" / "toy" / "ogm_ge" / run.name
    target.parent.mkdir(parents=True)
    run.rename(target)
    (target / "config.json").write_text(json.dumps(config))
    summary = json.loads((target / "summary.json").read_text())
    (target / "summary.json").write_text(json.dumps({**summary, "method": "ogm_ge"}))
    args = ["report", "--results", str(tree), "--out", str(tmp_path / "o"), "--no-figures"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "left out of ours 2 run(s)" in out and "1 epochs other than the paper's" in out
    text = (tmp_path / "o" / "tables" / "paper_vs_ours.md").read_text()
    joint = "| toy | joint | fused | acc | 60.00 | Toy paper (2024) Table 1 | 80.00 ± 7.07 |"
    assert f"{joint} 2 | 3 | 40 | +20.00 |" in text  # joint (no paper epochs) stays: 3, 40
