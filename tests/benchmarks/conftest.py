"""The update-speed benchmarks: a ResNet18 pair at small inputs, the ratio table at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

RATIOS = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def speed_ratios(request: pytest.FixtureRequest) -> dict:
    """{method: fastest step time} of this session, and the ratios computed from it."""
    return request.config.stash.setdefault(RATIOS, {"time": {}, "ratio": {}})


@pytest.fixture(scope="session")
def resnet_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`synth` with 32 x 32 spectrograms and one 32 x 32 frame per clip (small inputs)."""
    from benchmark.train.data import prepare_dataset

    root = tmp_path_factory.mktemp("bench-data")
    options = {"size": 32, "frames": 1, "num_samples": 200}
    return prepare_dataset("synth", root, options=options, out_dir=root / "synth32").root


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    results = config.stash.get(RATIOS, None)
    if not results or not results["ratio"]:
        return
    terminalreporter.section("update time / joint's (same batch and model, this run)")
    for name, ratio in results["ratio"].items():
        best = results["time"][name]
        terminalreporter.write_line(f"{name:8s} {1000 * best:8.1f} ms  {ratio:5.2f}x")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Plain `pytest` (pyproject: --benchmark-disable) leaves the slow benchmarks out;
    `make bench-speed` (--benchmark-enable) collects them."""
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    if disabled and collection_path.name.startswith("test_"):
        return True
    return None
