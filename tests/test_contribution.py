"""Shapley contribution of each modality and fused accuracy without it (issue 12)."""

import pytest
import torch
from helpers import make_batch, make_method

from benchmark.train.config import resolve
from benchmark.train.contribution import cached_encoders, contribution_row, shapley, subset_batches
from benchmark.train.data import open_dataset, prepare_dataset
from benchmark.train.engine import train_run

A, V = "audio", "visual"


def _v(**acc):
    names = {"none": frozenset(), "a": frozenset({A}), "v": frozenset({V}), "av": frozenset({A, V})}
    return {names[k]: x for k, x in acc.items()}


def test_two_modalities_by_hand():
    values = _v(none=0.1, a=0.6, v=0.3, av=0.8)
    phi = shapley(values, [A, V])
    # phi_a = 1/2 [(v(av) - v(v)) + (v(a) - v(0))] = 1/2 [0.5 + 0.5]
    assert phi[A] == pytest.approx(0.5)
    assert phi[V] == pytest.approx(0.5 * ((0.8 - 0.6) + (0.3 - 0.1)))
    row = contribution_row("test", values, [A, V])
    assert row["test/fused_without_audio/acc"] == 0.3
    assert row["test/fused_without_visual/acc"] == 0.6


def test_three_modalities_sum_to_full_minus_empty():
    mods = ["a", "b", "c"]
    g = torch.Generator().manual_seed(0)
    from benchmark.train.contribution import subsets

    values = {s: float(torch.rand((), generator=g)) for s in subsets(mods)}
    phi = shapley(values, mods)
    assert sum(phi.values()) == pytest.approx(values[frozenset(mods)] - values[frozenset()])
    # a modality that changes no v(S) gets 0
    dummy = {s: values[s - {"c"}] for s in subsets(mods)}
    assert shapley(dummy, mods)["c"] == pytest.approx(0.0)


def test_cached_encoders_equal_zeroing_the_input():
    """The cache (features reused, one zero sample broadcast) gives the logits of really
    replacing the input by zeros, and the encoders are restored afterwards."""
    method = make_method("joint").eval()
    batch = make_batch(n=6)
    originals = dict(method.encoders.items())
    with torch.no_grad():
        want = method.predict({**batch, A: torch.zeros_like(batch[A])})["fused"]
        with cached_encoders(method) as enc:
            method.predict(batch)
            got = dict(subset_batches(batch, enc))[frozenset({V})]
            out = method.predict(got)["fused"]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert dict(method.encoders.items()) == originals


def test_an_uninformative_modality_contributes_nothing(data_root, tmp_path):
    out = data_root / "synth_blind"
    if not (out / "meta.json").exists():
        prepare_dataset(
            "synth", data_root, options={"num_samples": 400, "visual_info": 0.0}, out_dir=out
        )
    ds, defaults = open_dataset(str(out), data_root)
    cfg = resolve("unimodal", ds.name, str(ds.root), defaults, 0, {"epochs": 3, "workers": 0})
    s = train_run(cfg, tmp_path, data_root, progress=False)
    assert abs(s["test/visual/contribution"]) < 0.1
    assert s["test/audio/contribution"] > 0.2
    assert abs(s["test/fused_without_visual/acc"] - s["test/fused/acc"]) < 0.1
