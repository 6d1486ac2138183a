"""`unimodal` (UME, Du et al. ICML 2023): each modality trained alone, nothing crosses."""

import pytest
import torch
from helpers import make_batch, make_method

from benchmark.train.engine import StepInfo
from methods import MethodConfigError


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_on_one_modality_never_changes_another():
    method = make_method("unimodal", settings={"lr": 0.1})
    method.train()
    before = {m: (_params(method.encoders[m]), _params(method.heads[m])) for m in method.modalities}
    method.train_modality(make_batch(), "audio")
    assert not _same(_params(method.encoders["audio"]), before["audio"][0])
    assert not _same(_params(method.heads["audio"]), before["audio"][1])
    assert _same(_params(method.encoders["visual"]), before["visual"][0])
    assert _same(_params(method.heads["visual"]), before["visual"][1])


def test_other_modalities_inputs_leave_the_update_bit_identical():
    batch = make_batch()
    other = {**batch, "visual": torch.randn_like(batch["visual"]) * 5}
    states = []
    for b in (batch, other):
        method = make_method("unimodal", settings={"lr": 0.1}, seed=3)
        method.train()
        for step in range(2):
            method.update(b, StepInfo(epoch=0, step=step, batch=step))
        states.append(method)
    audio = [(_params(m.encoders["audio"]), _params(m.heads["audio"])) for m in states]
    assert _same(audio[0][0], audio[1][0]) and _same(audio[0][1], audio[1][1])
    # ... while the visual encoder did see its different input
    assert not _same(_params(states[0].encoders["visual"]), _params(states[1].encoders["visual"]))


def test_one_optimiser_per_modality_over_its_own_parameters():
    method = make_method("unimodal")
    assert set(method.optimizers) == {"audio", "visual"}
    for m, opt in method.optimizers.items():
        owned = {id(p) for p in [*method.encoders[m].parameters(), *method.heads[m].parameters()]}
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        assert held == owned


@pytest.mark.parametrize("ensemble", ["logit", "prob"])
def test_predict_fuses_the_unimodal_logits(ensemble):
    method = make_method("unimodal", {"ensemble": ensemble}).eval()
    with torch.no_grad():
        out = method.predict(make_batch())
    a, v = out["audio"], out["visual"]
    want = (a + v) / 2 if ensemble == "logit" else ((a.softmax(1) + v.softmax(1)) / 2).log()
    torch.testing.assert_close(out["fused"], want)


def test_unknown_ensemble_is_an_error():
    with pytest.raises(MethodConfigError, match="ensemble"):
        make_method("unimodal", {"ensemble": "vote"})
