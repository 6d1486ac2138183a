"""Reports: pure functions on hand-written inputs, and a golden test on a bundled tree.

The bundled tree (tests/data/results_tree, written by tests/data/make_results_tree.py)
holds dataset "toy" (joint and mie, seeds 0 and 1, 3 epochs), dataset "tiny" (joint,
seed 0, 2 epochs), a run killed after one epoch (no summary.json) and one published CSV.
Worked by hand for toy, test accuracy at the best-val epoch:
  joint fused: seed 0 best epoch 1 -> 0.75, seed 1 best epoch 2 -> 0.85: 80.00 +- 7.07
  mie fused: 0.90 and 0.90: 90.00 +- 0.00 (bold); published 92.50 -> -2.50
  mie audio forgetting: seed 0 [.5 .6 .55] -> [0 0 .05], seed 1 [.6 .55 .5] -> [0 .05 .1]:
  mean over epochs 1.67 and 5.00 -> 3.33 +- 2.36; final 5 and 10 -> 7.50 +- 3.54.
If the report's output format changes on purpose, check the new output by hand, then
copy it over tests/data/expected_*.md.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main as cli_main
from benchmark.errors import UserError
from benchmark.report import build, frames, tables
from benchmark.train.fingerprint import code_fingerprint

DATA = Path(__file__).resolve().parent / "data"
TREE = DATA / "results_tree"


def current_tree(tmp_path: Path) -> Path:
    """The bundled tree as if this checkout's code had made it: its summaries get the
    current code fingerprint (as the engine writes it), so the golden tables do not
    depend on the code version. The bundled tree itself reads as older code."""
    results = tmp_path / "tree"
    shutil.copytree(TREE, results)
    for path in results.glob("runs/*/*/*/summary.json"):
        summary = json.loads(path.read_text())
        code = code_fingerprint(path.parts[-3])  # runs/<dataset>/<method>/<id>/summary.json
        path.write_text(json.dumps({**summary, "code": code, "commit": "test"}))
    return results


def test_parse_key():
    assert frames.parse_key("test/audio/acc") == ("test", "audio", "acc")
    assert frames.parse_key("val/fused/map") == ("val", "fused", "map")
    assert frames.parse_key("train/loss") == ("train", "all", "loss")
    assert frames.parse_key("train/coeff_audio") == ("train", "all", "coeff_audio")
    assert frames.parse_key("lr") == ("train", "all", "lr")


def test_tidy_metrics_one_row_per_epoch_split_head_metric():
    rows = [
        {"epoch": 0, "lr": 0.1, "train/loss": 2.0, "val/fused/acc": 0.5, "test/audio/f1": 0.25},
        {"epoch": 1, "lr": 0.05, "train/loss": 1.0, "val/fused/acc": 0.75, "note": "text"},
    ]
    long = frames.tidy_metrics(rows)
    assert len(long) == 7  # 4 numbers in epoch 0, 3 in epoch 1 ("note" is dropped)
    got = long.set_index(["epoch", "split", "head", "metric"])["value"].to_dict()
    assert got[(1, "val", "fused", "acc")] == 0.75
    assert got[(0, "test", "audio", "f1")] == 0.25
    assert got[(0, "train", "all", "loss")] == 2.0
    assert got[(1, "train", "all", "lr")] == 0.05


def _results() -> frames.Results:
    """Two runs of one method, 3 epochs, fused and audio test accuracy."""
    test = {
        "a": {"fused": [0.5, 0.8, 0.6], "audio": [0.4, 0.6, 0.5]},
        "b": {"fused": [0.7, 0.6, 0.9], "audio": [0.3, 0.2, 0.1]},
    }
    rows = []
    for run_id, heads in test.items():
        for head, accs in heads.items():
            for epoch, acc in enumerate(accs):
                rows.append(
                    ["d", "m", 0 if run_id == "a" else 1, run_id, epoch, "test", head, "acc", acc]
                )
    long = pd.DataFrame(
        rows, columns=[*frames.RUN_KEYS, "epoch", "split", "head", "metric", "value"]
    )
    runs = pd.DataFrame(
        [
            ["d", "m", 0, "a", 1, 2, ["fused", "audio"]],
            ["d", "m", 1, "b", 0, 2, ["fused", "audio"]],
        ],
        columns=[*frames.RUN_KEYS, "best_epoch", "last_epoch", "heads"],
    )
    return frames.Results(long=long, runs=runs)


def test_select_epochs_best_val_and_last():
    results = _results()
    best = frames.select_epochs(results, "best_val")
    fused = best[best["head"] == "fused"].set_index("run_id")["value"]
    assert fused.to_dict() == {"a": 0.8, "b": 0.7}
    last = frames.select_epochs(results, "last")
    assert last[last["head"] == "fused"].set_index("run_id")["value"].to_dict() == {
        "a": 0.6,
        "b": 0.9,
    }
    with pytest.raises(UserError, match="best_val, last"):
        frames.select_epochs(results, "oracle")


def test_unimodal_heads_are_each_scored_at_their_own_best_val_epoch():
    """A `unimodal` run is one model per modality: audio is read where audio's val acc
    peaks (earliest among ties), not where the ensemble's does; the ensemble, its
    contribution rows and every other method keep the recorded best-val epoch."""
    val = {"fused": [0.9, 0.95, 0.95, 0.9], "audio": [0.3, 0.5, 0.7, 0.7]}
    test = {"fused": [0.1, 0.2, 0.3, 0.4], "audio": [0.11, 0.22, 0.33, 0.44]}
    rows = []
    for method, run_id in (("unimodal", "u"), ("unimodal[ensemble=prob]", "p"), ("joint", "j")):
        for split, heads in (("val", val), ("test", test)):
            for head, values in heads.items():
                for epoch, v in enumerate(values):
                    rows.append(["d", method, 0, run_id, epoch, split, head, "acc", v])
            for epoch in range(4):
                rows.append(["d", method, 0, run_id, epoch, split, "audio", "contribution", epoch])
            for epoch in (1, 3):  # probed at some epochs only (probe_every > 1)
                rows.append(["d", method, 0, run_id, epoch, split, "audio", "probe_acc", epoch])
    long = pd.DataFrame(
        rows, columns=[*frames.RUN_KEYS, "epoch", "split", "head", "metric", "value"]
    )
    runs = pd.DataFrame(
        [
            ["d", m, 0, r, 1, 3, ["fused", "audio"]]
            for m, r in (("unimodal", "u"), ("unimodal[ensemble=prob]", "p"), ("joint", "j"))
        ],
        columns=[*frames.RUN_KEYS, "best_epoch", "last_epoch", "heads"],
    )
    results = frames.Results(long=long, runs=runs)
    best = frames.select_epochs(results, "best_val")
    got = best.set_index(["run_id", "head", "metric"])["value"].to_dict()
    for run_id in ("u", "p"):  # a variant of unimodal is still separate models
        assert got[(run_id, "audio", "acc")] == 0.33  # audio's val peaks first at epoch 2
        assert got[(run_id, "fused", "acc")] == 0.2  # the recorded best-val epoch
        assert got[(run_id, "audio", "contribution")] == 1  # the ensemble's epoch
        assert got[(run_id, "audio", "probe_acc")] == 1  # not probed at 2: the recorded one
    assert got[("j", "audio", "acc")] == 0.22  # joint's heads share one model: epoch 1
    assert len(best) == 3 * 4  # one row per run x (fused acc, audio acc, contribution, probe)
    last = frames.select_epochs(results, "last")
    assert set(last[last["metric"] == "acc"]["value"]) == {0.4, 0.44}
    assert set(last[last["metric"] == "probe_acc"]["value"]) == {3}


def test_aggregate_mean_std_n_in_percent():
    stats = frames.aggregate(frames.select_epochs(_results(), "best_val"))
    fused = stats[stats["head"] == "fused"].iloc[0]
    assert fused["n"] == 2
    assert fused["mean"] == pytest.approx(75.0)
    assert fused["std"] == pytest.approx(math.sqrt(2) * 5)  # values 80 and 70, ddof=1
    single = frames.aggregate(
        pd.DataFrame(
            {
                "dataset": ["d"],
                "method": ["m"],
                "head": ["fused"],
                "metric": ["acc"],
                "value": [0.5],
            }
        )
    )
    assert single["n"].iloc[0] == 1 and math.isnan(single["std"].iloc[0])


def test_forgetting_frame_and_summary():
    curves = frames.forgetting_frame(_results().long, "test", "acc")
    assert set(curves["head"]) == {"audio"}  # the fused head is not a modality
    by_run = curves.groupby("run_id")["forgetting"].apply(list).to_dict()
    assert by_run["a"] == pytest.approx([0.0, 0.0, 0.1])  # [.4 .6 .5]
    assert by_run["b"] == pytest.approx([0.0, 0.1, 0.2])  # [.3 .2 .1]
    summary = frames.forgetting_summary(curves).set_index("statistic")
    # mean over epochs: a 0.0333, b 0.1 -> 6.67 +- 4.71; final: a 0.1, b 0.2 -> 15 +- 7.07
    assert summary.loc["mean", "mean"] == pytest.approx(100 * (0.1 / 3 + 0.1) / 2)
    assert summary.loc["final", "mean"] == pytest.approx(15.0)
    assert summary.loc["final", "std"] == pytest.approx(math.sqrt(2) * 5)


def test_format_mean_std():
    assert tables.format_mean_std(81.054, 0.226) == "81.05 ± 0.23"
    assert tables.format_mean_std(81.054, 0.226, latex=True) == "81.05 $\\pm$ 0.23"
    assert tables.format_mean_std(65.0, float("nan")) == "65.00"
    assert tables.format_mean_std(float("nan"), float("nan")) == "–"


def _stats() -> pd.DataFrame:
    rows = [
        ("joint", "fused", "acc", 80.0, 7.0711, 2),
        ("joint", "audio", "acc", 75.0, 7.0711, 2),
        ("ogm_ge", "fused", "acc", 90.0, 0.0, 2),
        ("ogm_ge", "audio", "acc", 55.0, 7.0711, 2),
        ("mie", "fused", "acc", 90.0, 1.0, 3),
    ]
    return pd.DataFrame(rows, columns=["method", "head", "metric", "mean", "std", "n"])


def test_markdown_table_bolds_the_best_per_column_and_ties():
    columns = tables.main_columns(["fused", "audio"], ["acc"])
    text = tables.render_table(_stats(), columns, ["joint", "ogm_ge", "mie"], latex=False)
    assert text == (
        "| method | fused acc | audio acc | n |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| joint | 80.00 ± 7.07 | **75.00 ± 7.07** | 2 |\n"
        "| ogm_ge | **90.00 ± 0.00** | 55.00 ± 7.07 | 2 |\n"
        "| mie | **90.00 ± 1.00** | – | 3 |\n"
    )


def test_latex_table_bolds_best_and_escapes_names():
    columns = tables.main_columns(["fused"], ["acc"])
    text = tables.render_table(_stats(), columns, ["joint", "ogm_ge"], latex=True)
    assert text == (
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        "method & fused acc & n \\\\\n"
        "\\midrule\n"
        "joint & 80.00 $\\pm$ 7.07 & 2 \\\\\n"
        "ogm\\_ge & \\textbf{90.00 $\\pm$ 0.00} & 2 \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
    )


def test_lower_is_better_and_no_bold_when_all_tie():
    stats = pd.DataFrame(
        [
            ("a", "audio", "mean", 3.0, 1.0, 2),
            ("b", "audio", "mean", 1.0, 1.0, 2),
            ("a", "audio", "final", 0.0, 0.0, 2),
            ("b", "audio", "final", 0.0, 0.0, 2),
        ],
        columns=["method", "head", "statistic", "mean", "std", "n"],
    )
    text = tables.render_table(stats, tables.forgetting_columns(["audio"]), ["a", "b"], False)
    assert "| b | **1.00 ± 1.00** | 0.00 ± 0.00 | 2 |" in text
    assert "| a | 3.00 ± 1.00 | 0.00 ± 0.00 | 2 |" in text


def test_main_columns_first_metric_per_head_others_fused():
    titles = [c.title for c in tables.main_columns(["fused", "audio", "visual"], ["acc", "map"])]
    assert titles == ["fused acc", "audio acc", "visual acc", "fused mAP"]


def test_method_order_puts_the_baseline_first_and_variants_after_their_method():
    names = ["zeta", "mie", "ogm_ge[alpha=0.5]", "joint", "ogm_ge", "agm", "pmr", "unimodal"]
    assert frames.method_order(names) == [
        "unimodal",
        "joint",
        "ogm_ge",
        "ogm_ge[alpha=0.5]",
        "pmr",
        "agm",
        "mie",
        "zeta",
    ]


def test_runs_that_differ_in_config_are_variants_not_averaged():
    runs = pd.DataFrame({"dataset": ["d"] * 3, "method": ["ogm_ge"] * 3, "seed": [0, 1, 0]})
    configs = [
        {"alpha": "0.8", "lr": "0.1"},
        {"alpha": "0.8", "lr": "0.1"},
        {"alpha": "0.5", "lr": "0.1"},
    ]
    assert frames.variant_labels(runs, configs) == [
        "ogm_ge[alpha=0.8]",
        "ogm_ge[alpha=0.8]",
        "ogm_ge[alpha=0.5]",
    ]
    assert frames.variant_labels(runs.iloc[:2], configs[:2]) == ["ogm_ge", "ogm_ge"]


def test_paper_vs_ours_difference_and_missing():
    ours = pd.DataFrame(
        [("toy", "joint", "fused", "acc", 80.0, 7.07, 2)],
        columns=["dataset", "method", "head", "metric", "mean", "std", "n"],
    )
    published = frames.load_published(TREE / "paper")
    comparison = frames.paper_vs_ours(ours, published)
    assert list(comparison["method"]) == ["joint", "mie"]  # the unmatched row is not compared
    joint, mie = comparison.iloc[0], comparison.iloc[1]
    assert joint["difference"] == pytest.approx(20.0)
    assert mie["n"] == 0 and math.isnan(mie["difference"])


def test_published_csvs_of_the_checkout_are_well_formed():
    published = frames.load_published(Path(build.__file__).resolve().parents[2] / "results/paper")
    assert len(published) > 40
    assert set(published["metric"]) <= {"acc", "map"}
    assert published["value"].between(0, 100).all()
    unimodal = published[published["label"].str.startswith("Unimodal")]
    assert set(unimodal["head"]) == {"unconfirmed"}  # audio/visual labelling not confirmed
    assert (published["citation"] != "").all()
    igm = published[(published["label"] == "IGM") & (published["dataset"] == "cremad")]
    assert igm.set_index("metric")["value"].to_dict() == {"acc": 81.05, "map": 89.48}


def paper_protocol(tree: Path, dataset: str = "toy", train: int = 40) -> None:
    """Mark the runs of `dataset` as run under the papers' protocol (config.json), with
    `train` training samples, so paper_vs_ours counts them."""
    for path in tree.glob(f"runs/{dataset}/*/*/config.json"):
        config = json.loads(path.read_text())
        config["settings"]["protocol"] = "paper"
        config["dataset_meta"] = {"splits": {"train": train, "val": 10, "test": 10}}
        path.write_text(json.dumps(config))


def test_golden_report_of_the_bundled_tree(tmp_path, capsys):
    tree = current_tree(tmp_path)
    paper_protocol(tree)  # tiny's run records no protocol: left out of paper_vs_ours
    assert cli_main(["report", "--results", str(tree), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    left_out = [line for line in out.splitlines() if line.startswith("left out")]
    assert left_out == ["left out 1 run(s): 1 unfinished (no summary.json)"]
    assert "5 run(s): tiny/joint 1, toy/joint 2, toy/mie 2" in out
    assert "paper_vs_ours: left out of ours 1 run(s) that do not follow the papers' " in out
    for name in ("main", "forgetting", "paper_vs_ours"):
        expected = (DATA / f"expected_{name}.md").read_text()
        assert (tmp_path / "tables" / f"{name}.md").read_text() == expected, name
    for name in ("main", "forgetting"):
        tex = (tmp_path / "tables" / f"{name}.tex").read_text()
        assert "\\textbf{" in tex and "\\bottomrule" in tex
    main_csv = pd.read_csv(tmp_path / "tables" / "main.csv")
    mie = main_csv.query(
        "dataset == 'toy' and method == 'mie' and head == 'fused' and metric == 'acc'"
    )
    assert mie[["mean", "std", "n"]].to_numpy().tolist() == [[90.0, 0.0, 2]]
    figures = tmp_path / "figures"
    stems = [
        "unimodal_vs_multimodal",
        "forgetting_toy",
        "forgetting_tiny",
        "training_toy",
        "training_tiny",
        "paper_vs_ours",
        "imbalance_toy",
        "imbalance_tiny",
    ]
    for stem in stems:
        png, pdf = figures / f"{stem}.png", figures / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, pdf
    assert sorted(p.name for p in figures.iterdir()) == sorted(
        f"{s}.{e}" for s in stems for e in ("png", "pdf")
    )


def test_filters_select_last_and_tables_only(tmp_path, capsys):
    args = [
        "report",
        "--results",
        str(current_tree(tmp_path)),
        "--out",
        str(tmp_path),
        "--datasets",
        "toy",
        "--methods",
        "mie",
        "--metric",
        "map",
        "--select",
        "last",
        "--no-figures",
    ]
    assert cli_main(args) == 0
    main_md = (tmp_path / "tables" / "main.md").read_text()
    assert "tiny" not in main_md and "joint" not in main_md
    # last epoch, mAP = acc + 0.05: mie fused test acc 0.85 and 0.90 -> 92.50 +- 3.54
    assert "| mie | 92.50 ± 3.54 | 57.50 ± 3.54 | 70.00 ± 7.07 | 2 |" in main_md
    assert "at the last epoch" in main_md
    assert not (tmp_path / "figures").exists()


def test_unknown_filter_is_a_one_line_error(tmp_path, capsys):
    code = cli_main(["report", "--results", str(TREE), "--out", str(tmp_path), "--methods", "nope"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "error: no finished runs of method nope; present: joint, mie"


def test_half_written_runs_never_crash_the_report(tmp_path, capsys):
    results = current_tree(tmp_path)
    broken = results / "runs" / "toy" / "joint" / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "summary.json").write_text('{"method": "joint", "dataset": "toy", "seed": 9}')
    (broken / "metrics.jsonl").write_text('{"epoch": 0, "test/fused/acc": 0.5')  # cut off
    empty = results / "runs" / "toy" / "mie" / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert cli_main(["report", "--results", str(results), "--no-figures"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("left out")]
    assert lines == [
        "left out 3 run(s): 2 unfinished (no summary.json), "
        "1 damaged summary.json (run again with --restart)"
    ]
    assert (results / "tables" / "main.md").read_text() == (DATA / "expected_main.md").read_text()


def test_no_finished_runs_is_not_an_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert cli_main(["report", "--results", str(tmp_path)]) == 0
    assert "no finished runs" in capsys.readouterr().out
    assert not (tmp_path / "tables").exists()


def test_method_colours_are_fixed_by_name_not_by_subset():
    from benchmark.report.figures import method_colors

    everything = method_colors(["joint", "ogm_ge", "pmr", "agm", "mie"])
    assert method_colors(["mie"])["mie"] == everything["mie"]
    assert len(set(everything.values())) == 5
    assert np.allclose(everything["joint"], method_colors(["joint", "zeta"])["joint"])


def test_imbalance_table_of_an_old_tree_has_blanks_and_a_note(tmp_path, capsys):
    """The bundled tree predates probes, contributions and `unimodal`: the imbalance table
    is still written, with its head accuracies, blank new cells and the missing-reference note."""
    tree = current_tree(tmp_path)  # rows labelled plainly, not as older code
    assert cli_main(["report", "--results", str(tree), "--out", str(tmp_path), "--no-figures"]) == 0
    text = (tmp_path / "tables" / "imbalance.md").read_text()
    assert "No `unimodal` run here" in text
    mie = next(line for line in text.splitlines() if line.startswith("| mie"))
    cells = [c.strip() for c in mie.strip("|").split("|")]
    assert cells[1] != "–" and cells[2] != "–"  # fused acc and the audio head are there
    assert cells[3:6] == ["–", "–", "–"]  # probe, ref, gap: not measured in this tree
    assert (tmp_path / "tables" / "imbalance.tex").exists()
    cost = (tmp_path / "tables" / "cost.md").read_text()
    assert "| mie | – | – | – | – | – |" in cost  # no cost record in old runs: blanks


def test_imbalance_reference_and_gap_come_from_the_unimodal_run():
    from benchmark.report.imbalance import with_reference

    stats = pd.DataFrame(
        [
            ["d", "joint", "audio", "acc", 40.0, 1.0, 3],
            ["d", "joint", "audio", "probe_acc", 50.0, 2.0, 3],
            ["d", "unimodal", "audio", "acc", 60.0, 3.0, 3],
        ],
        columns=["dataset", "method", "head", "metric", "mean", "std", "n"],
    )
    out = with_reference(stats).set_index(["method", "metric"])
    assert out.loc[("joint", "reference"), "mean"] == 60.0
    assert out.loc[("joint", "gap"), "mean"] == 10.0


def test_std_bands_are_clipped_to_the_metric_range():
    """Two seeds at 90% and 100%: mean 95, std 7.1; the band stops at 100%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.report.figures import _lines

    frame = pd.DataFrame(
        {"epoch": [0, 0, 1, 1], "method": ["m"] * 4, "value": [90.0, 100.0, 90.0, 100.0]}
    )
    fig, ax = plt.subplots()
    _lines(ax, frame, "value", ["m"], {"m": (0, 0, 1)})
    (band,) = ax.collections
    top = max(v[1] for path in band.get_paths() for v in path.vertices)
    assert top == 100.0
    plt.close(fig)
