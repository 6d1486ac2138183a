"""docs/development.md's "Adding a method" and "Adding a dataset" work as written: their
code blocks are taken from the page, saved as modules outside the package and used the
way the page says (issue 18).

- the method: the registry-parametrised tests (build with every encoder and fusion head,
  train on synth and log the declared diagnostics, checkpoint loads) run on it, in a
  pytest subprocess that imports the module before collecting the tests;
- the dataset: `prepare my_dataset --raw DIR` on small raw arrays, then a `joint` run on it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
from helpers import ROOT

PAGE = ROOT / "docs" / "development.md"
REGISTRY_TESTS = ("tests/test_build.py", "tests/test_methods_synth.py", "tests/test_run_store.py")


def code_block(first_line: str) -> str:
    """The ```python block of the page whose first line is `first_line`."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    found = [b for b in blocks if b.startswith(first_line + "\n")]
    assert len(found) == 1, f"{PAGE.name}: no single python block starting {first_line!r}"
    return found[0]


def test_the_documented_method_passes_the_registry_parametrised_tests(tmp_path):
    module = tmp_path / "my_method.py"
    module.write_text(code_block("# methods/my_method.py"))
    env = {**os.environ, "BENCH_TEST_EXTRA_MODULES": str(module), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "my_method",
         *REGISTRY_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", proc.stdout)[1])
    assert passed >= 5 and " failed" not in proc.stdout and "skipped" not in proc.stdout, tail


def test_the_documented_dataset_prepares_and_trains(tmp_path):
    """In a subprocess (the registration must not leak into this session's registry)."""
    module = tmp_path / "my_dataset.py"
    module.write_text(code_block("# datasets/my_dataset.py"))
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    n, classes = 90, 3
    labels = np.repeat(np.arange(classes), n // classes)
    audio = rng.normal(size=(n, 16, 16)) + labels[:, None, None]  # informative audio
    frames = rng.integers(0, 256, size=(n, 2, 16, 16, 3), dtype=np.uint8)
    for name, array in (("audio", audio), ("frames", frames), ("labels", labels)):
        np.save(raw / f"{name}.npy", array)
    data, results = tmp_path / "data", tmp_path / "results"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('my_dataset', {str(module)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "from benchmark.cli import main\n"
        f"assert main(['prepare', 'my_dataset', '--raw', {str(raw)!r}, '--data-root', "
        f"{str(data)!r}]) == 0\n"
        f"sys.exit(main(['run', '--method', 'joint', '--dataset', 'my_dataset', '--data-root', "
        f"{str(data)!r}, '--results', {str(results)!r}, '--set', 'epochs=2', 'workers=0']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (data / "my_dataset" / "meta.json").is_file()
    summaries = list(results.glob("runs/my_dataset/joint/*/summary.json"))
    assert len(summaries) == 1
    assert "[joint/my_dataset/seed 0] epoch 2/2" in proc.stdout + proc.stderr
