"""Write the tiny results tree the report's golden test reads (tests/data/results_tree/).

Run once by hand (`.venv/bin/python tests/data/make_results_tree.py`); the files it writes
are checked in. The accuracies are chosen so that every number in the expected tables can
be worked out by hand (see tests/test_report.py). Each run's summary.json follows the
engine's rule: the best epoch is the one with the highest val fused accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results_tree"

# dataset -> method -> seed -> (val fused acc per epoch, test acc per head per epoch)
RUNS = {
    "toy": {
        "joint": {
            0: (
                [0.50, 0.80, 0.70],
                {
                    "fused": [0.55, 0.75, 0.70],
                    "audio": [0.60, 0.70, 0.65],
                    "visual": [0.30, 0.35, 0.40],
                },
            ),
            1: (
                [0.60, 0.70, 0.90],
                {
                    "fused": [0.60, 0.70, 0.85],
                    "audio": [0.65, 0.75, 0.80],
                    "visual": [0.30, 0.30, 0.35],
                },
            ),
        },
        "mie": {
            0: (
                [0.70, 0.90, 0.80],
                {
                    "fused": [0.70, 0.90, 0.85],
                    "audio": [0.50, 0.60, 0.55],
                    "visual": [0.60, 0.50, 0.70],
                },
            ),
            1: (
                [0.80, 0.85, 0.95],
                {
                    "fused": [0.80, 0.85, 0.90],
                    "audio": [0.60, 0.55, 0.50],
                    "visual": [0.55, 0.65, 0.60],
                },
            ),
        },
    },
    "tiny": {
        "joint": {
            0: (
                [0.40, 0.60],
                {"fused": [0.45, 0.65], "audio": [0.50, 0.40], "visual": [0.30, 0.60]},
            ),
        },
    },
}
PUBLISHED = [
    "paper,table,dataset,method,label,head,metric,value,citation,note",
    "Toy paper (2024),Table 1,toy,joint,Baseline,fused,acc,60.0,Made-up numbers for the test,",
    "Toy paper (2024),Table 1,toy,mie,MIE,fused,acc,92.5,Made-up numbers for the test,",
    "Toy paper (2024),Table 1,toy,,Unimodal-1,unconfirmed,acc,50.0,Made-up numbers for the test,",
]


def rows_for(val_fused: list[float], test: dict[str, list[float]]) -> list[dict]:
    """metrics.jsonl rows: f1 = acc - 0.05 and mAP = acc + 0.05 for every head; val
    accuracy of the modality heads = their test accuracy."""
    rows = []
    for epoch, fused in enumerate(val_fused):
        row = {"epoch": epoch, "lr": 0.1, "train/loss": round(1.0 / (epoch + 1), 4)}
        for split in ("val", "test"):
            for head, accs in test.items():
                acc = fused if (split, head) == ("val", "fused") else accs[epoch]
                row[f"{split}/{head}/acc"] = acc
                row[f"{split}/{head}/f1"] = round(acc - 0.05, 4)
                row[f"{split}/{head}/map"] = round(acc + 0.05, 4)
        rows.append(row)
    return rows


def summary_for(dataset: str, method: str, seed: int, run_id: str, rows: list[dict]) -> dict:
    best = max(rows, key=lambda r: (r["val/fused/acc"], -r["epoch"]))
    heads = ["fused", "audio", "visual"]
    summary = {
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "run_id": run_id,
        "status": "done",
        "selection": "val/fused/acc",
        "best_epoch": best["epoch"],
        "epochs": len(rows),
        "heads": heads,
    }
    for key in best:
        if key.startswith(("val/", "test/")):
            summary[key] = best[key]
            summary[f"last/{key}"] = rows[-1][key]
    return summary


def write_run(
    dataset: str, method: str, seed: int, run_id: str, rows: list[dict], finished: bool
) -> None:
    directory = ROOT / "runs" / dataset / method / run_id
    directory.mkdir(parents=True)
    config = {
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "run_id": run_id,
        "settings": {"epochs": len(rows), "lr": 0.1, "workers": seed},
        "hp": {},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (directory / "metrics.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    )
    if finished:
        summary = summary_for(dataset, method, seed, run_id, rows)
        (directory / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    for dataset, methods in RUNS.items():
        for method, seeds in methods.items():
            for seed, (val_fused, test) in seeds.items():
                run_id = f"{dataset}{method}{seed}"
                write_run(dataset, method, seed, run_id, rows_for(val_fused, test), True)
    # A run killed after its first epoch: config and metrics, no summary.json.
    val_fused, test = RUNS["toy"]["mie"][0]
    rows = rows_for(val_fused, test)[:1]
    write_run("toy", "mie", 2, "toymie2", rows, finished=False)
    (ROOT / "paper").mkdir()
    (ROOT / "paper" / "toy.csv").write_text("\n".join(PUBLISHED) + "\n")


if __name__ == "__main__":
    main()
