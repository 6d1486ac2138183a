"""Linear probes of frozen encoder features (issue 12; OGM-GE / BalanceBenchmark style)."""

import torch

from benchmark.train.config import resolve
from benchmark.train.engine import train_run
from benchmark.train.probes import fit_probe, fit_probes, probe_due
from benchmark.train.runstore import read_metrics, run_dir


def _planted(n: int, seed: int, classes: int = 5, dim: int = 32):
    """Features where a random linear map of a one-hot label is hidden in noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 2
    return centres[y] + torch.randn(n, dim, generator=g), y


def test_probe_recovers_a_linearly_separable_signal():
    (xt, yt), (xv, yv), (xs, ys) = _planted(300, 0), _planted(200, 1), _planted(200, 2)
    probe = fit_probe(xt, yt, xv, yv, 5)
    assert probe.accuracy(xs, ys) > 0.95


def test_probe_is_at_chance_on_shuffled_labels():
    (xt, yt), (xv, yv), (xs, ys) = _planted(300, 0), _planted(200, 1), _planted(2000, 2)
    g = torch.Generator().manual_seed(5)
    shuffle = lambda y: y[torch.randperm(len(y), generator=g)]  # noqa: E731
    probe = fit_probe(xt, shuffle(yt), xv, shuffle(yv), 5)
    assert abs(probe.accuracy(xs, shuffle(ys)) - 0.2) < 0.05


def test_l2_is_chosen_on_val_only():
    """fit_probe takes no test data (its signature), and its l2 follows val: with val
    labels no probe can hit, every l2 ties and the strongest is kept."""
    (xt, yt), (xv, yv) = _planted(60, 0, dim=64), _planted(200, 1, dim=64)
    grid = (1e-4, 10.0)
    assert fit_probe(xt, yt, xv, yv, 5, l2_grid=grid).l2 in grid
    assert fit_probe(xt, yt, xv, torch.full_like(yv, -1), 5, l2_grid=grid).l2 == max(grid)


def test_modalities_fitted_together_equal_separate_fits():
    """The batched fit (zero-padded to one width) solves each modality's own problem: the
    same choice of l2 and, up to the optimiser's tolerance, the same predictions."""
    (xa, ya), (va, yva) = _planted(300, 0, dim=32), _planted(200, 1, dim=32)
    xb, vb = xa[:, :12] * 3 + 1, va[:, :12] * 3 + 1  # another width, scale and offset
    together = fit_probes({"a": xa, "b": xb}, ya, {"a": va, "b": vb}, yva, 5, iters=200)
    for name, (x, v) in {"a": (xa, va), "b": (xb, vb)}.items():
        alone = fit_probe(x, ya, v, yva, 5, iters=200)
        assert together[name].l2 == alone.l2
        assert together[name].weight.shape == alone.weight.shape
        agree = (together[name].logits(v).argmax(1) == alone.logits(v).argmax(1)).float().mean()
        assert agree > 0.99


def test_probes_do_not_change_training(synth, data_root, tmp_path):
    """Evaluation only: a run probed every epoch trains exactly as one never probed."""
    rows = []
    for every in (0, 1):
        cfg = resolve(
            "joint",
            "synth",
            str(synth.root),
            {},
            0,
            {"epochs": 2, "workers": 0, "encoder": "small", "crop_size": 16, "probe_every": every},
        )
        train_run(cfg, tmp_path / str(every), data_root, progress=False)
        rows.append(read_metrics(run_dir(tmp_path / str(every), cfg)))
    assert "val/audio/probe_acc" not in rows[0][-1] and "val/audio/probe_acc" in rows[1][0]
    for a, b in zip(*rows, strict=True):
        for key in ("train/loss", "val/fused/acc", "test/audio/acc", "test/visual/f1"):
            assert a[key] == b[key]


def test_probe_schedule():
    assert [probe_due(e, 5, 2, False) for e in range(5)] == [False, True, False, True, True]
    assert [probe_due(e, 5, "last", False) for e in range(5)] == [False] * 4 + [True]
    assert probe_due(1, 5, "last", True)  # a new best val epoch is probed
    assert not probe_due(4, 5, 0, True)
