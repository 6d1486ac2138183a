"""The committed sweep (results/runs) is what the current code computes: one committed run
is trained again here, on the CPU, from a freshly generated dataset, and must give the same
run id (same data, same config) and the same metrics, epoch by epoch, to float rounding."""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers import ROOT, run_cli

COMMITTED = ROOT / "results" / "runs" / "avdigits" / "joint"
TIMING = ("seconds", "samples_per_s", "probe_seconds")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def committed_run(seed: int) -> Path:
    for config in sorted(COMMITTED.glob("*/config.json")):
        if json.loads(config.read_text())["seed"] == seed:
            return config.parent
    raise AssertionError(f"no committed joint run of seed {seed} under {COMMITTED}")


def test_a_committed_run_is_reproduced_by_this_code(tmp_path):
    committed = committed_run(0)
    config = json.loads((committed / "config.json").read_text())
    results, data = tmp_path / "results", tmp_path / "data"
    done = run_cli(
        "run", "--method", "joint", "--dataset", "avdigits", "--seeds", "0",
        "--set", f"probe_every={json.dumps(config['settings']['probe_every'])}",
        "--results", str(results), "--data-root", str(data),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (fresh,) = (results / "runs" / "avdigits" / "joint").iterdir()
    assert fresh.name == committed.name  # same data fingerprint, same configuration
    old, new = rows(committed / "metrics.jsonl"), rows(fresh / "metrics.jsonl")
    assert len(old) == len(new) == config["settings"]["epochs"]
    for a, b in zip(old, new, strict=True):
        keys = (set(a) | set(b)) - set(TIMING)
        assert set(a) - set(TIMING) == set(b) - set(TIMING), a["epoch"]
        for key in sorted(keys):
            x, y = a[key], b[key]
            if isinstance(x, float) or isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (a["epoch"], key, x, y)
            else:
                assert x == y, (a["epoch"], key)
    summary = json.loads((fresh / "summary.json").read_text())
    assert summary["code"] == json.loads((committed / "summary.json").read_text())["code"]
