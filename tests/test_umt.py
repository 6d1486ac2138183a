"""UMT (methods/umt.py): the distillation term against hand-worked numbers; the student and
teachers start as `joint` and `unimodal` runs of the same seed; stage T is a `unimodal` run,
loadable with teacher_from; a run killed in stage T resumes exactly."""

from __future__ import annotations

import pytest
import torch
from helpers import make_batch, make_method

from benchmark.train.config import resolve
from benchmark.train.data import open_dataset, prepare_dataset
from benchmark.train.engine import train_run
from benchmark.train.runstore import read_metrics, run_dir
from methods import MethodConfigError, StepInfo
from methods.umt import UMT, distillation_mse, feature_cosine, umt_loss

TIMING = ("seconds", "samples_per_s", "probe_seconds")


# -- pure functions, hand-worked ------------------------------------------------------------
def test_distillation_mse_hand_values_and_gradient():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    # differences 1, 2, 2, 3 -> squares 1, 4, 4, 9 -> mean over B x D = 18 / 4 = 4.5
    loss = distillation_mse(z, t)
    assert loss.item() == pytest.approx(4.5)
    loss.backward()
    # d/dz mean((z - t)^2) = 2 (z - t) / 4 = (z - t) / 2; the teacher gets nothing
    assert torch.allclose(z.grad, torch.tensor([[0.5, 1.0], [1.0, 1.5]]))
    assert t.grad is None


def test_feature_cosine_and_total_loss_hand_values():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert feature_cosine(z, t).item() == pytest.approx(0.5)  # cosines 0 and 1
    # L = CE + lambda (d_a + d_v) = 1 + 10 (4.5 + 0.5) = 51
    loss = umt_loss(torch.tensor(1.0), {"a": torch.tensor(4.5), "v": torch.tensor(0.5)}, 10.0)
    assert loss.item() == pytest.approx(51.0)


# -- the model ------------------------------------------------------------------------------
def test_student_is_joint_and_teachers_are_unimodal_at_init():
    umt, joint, uni = make_method("umt"), make_method("joint"), make_method("unimodal")
    student = {k: v for k, v in umt.state_dict().items() if not k.startswith("teacher.")}
    assert student.keys() == joint.state_dict().keys()
    assert all(torch.equal(v, joint.state_dict()[k]) for k, v in student.items())
    teacher = umt.teacher.state_dict()
    assert teacher.keys() == uni.state_dict().keys()
    assert all(torch.equal(v, uni.state_dict()[k]) for k, v in teacher.items())


def test_one_step_matches_the_rule_and_leaves_the_teachers_alone():
    from helpers import FixedSource

    model = make_method("umt", hp={"lam": 2.0})
    model.train()
    model.on_epoch_start(0, FixedSource([make_batch(seed=5)]))
    assert not model.teacher.training  # teacher_mode="eval"
    assert not any(p.requires_grad for p in model.teacher.parameters())
    frozen = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    batch = make_batch(seed=1)
    with torch.no_grad():
        feats = {m: model.encoders[m](batch[m]) for m in model.modalities}
        targets = {m: model.teacher.encoders[m](batch[m]) for m in model.modalities}
        fused, _ = model.head(feats)
        ce = torch.nn.functional.cross_entropy(fused, batch["label"])
        mse = {m: ((feats[m] - targets[m]) ** 2).mean() for m in model.modalities}
    logs = model.update(batch, StepInfo(0, 0, 0))
    assert logs["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    for m in model.modalities:
        assert logs[f"distill_{m}"].item() == pytest.approx(mse[m].item(), rel=1e-5)
    assert logs["loss"].item() == pytest.approx((ce + 2.0 * sum(mse.values())).item(), rel=1e-5)
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in frozen.items())


def test_teacher_mode_train_keeps_batch_statistics():
    from helpers import FixedSource

    model = make_method("umt", hp={"teacher_mode": "train"})
    model.train()
    model.on_epoch_start(0, FixedSource([make_batch(seed=5)]))
    assert model.teacher.training


@pytest.mark.parametrize(
    "hp, words",
    [
        ({"teacher_mode": "bn"}, "teacher_mode"),
        ({"lam": -1.0}, "lam"),
        ({"teacher_epochs": -2}, "teacher_epochs"),
    ],
)
def test_bad_options_are_one_line_errors(hp, words):
    with pytest.raises(MethodConfigError, match=words) as err:
        make_method("umt", hp=hp)
    assert "\n" not in str(err.value)


# -- engine: stage T, teacher_from, a kill in stage T -------------------------------------------
class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def tiny(data_root):
    out = data_root / "synth_umt"
    if not (out / "meta.json").exists():
        prepare_dataset("synth", data_root, options={"num_samples": 160}, out_dir=out)
    return open_dataset(str(out), data_root)


def config(ds, defaults, method, seed=0, **hp):
    overrides = {"epochs": 2, "workers": 0, "batch_size": 16, "probe_every": 0, **hp}
    return resolve(method, ds.name, str(ds.root), defaults, seed, overrides)


def rows(root, cfg):
    return [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir(root, cfg))
    ]


def test_stage_t_is_a_unimodal_run_and_teacher_from_loads_it(tiny, tmp_path, data_root):
    ds, defaults = tiny
    uni = config(ds, defaults, "unimodal")
    train_run(uni, tmp_path, data_root, progress=False)
    umt = config(ds, defaults, "umt")
    train_run(umt, tmp_path, data_root, progress=False)
    theirs = torch.load(run_dir(tmp_path, uni) / "checkpoint.pt", weights_only=True)
    ours = torch.load(run_dir(tmp_path, umt) / "umt" / "teachers.pt", weights_only=True)
    a, b = theirs["method"]["model"], ours["training"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    loaded = config(ds, defaults, "umt", teacher_from=str(run_dir(tmp_path, uni)))
    train_run(loaded, tmp_path, data_root, progress=False)
    row = read_metrics(run_dir(tmp_path, loaded))[-1]
    assert 0.0 <= row["train/teacher_acc_audio"] <= 1.0

    wrong = config(ds, defaults, "umt", seed=1, teacher_from=str(run_dir(tmp_path, uni)))
    with pytest.raises(MethodConfigError, match="seed") as err:
        train_run(wrong, tmp_path, data_root, progress=False)
    assert "\n" not in str(err.value)


def test_a_run_killed_in_stage_t_resumes_exactly(tiny, tmp_path, data_root, monkeypatch):
    ds, defaults = tiny
    cfg = config(ds, defaults, "umt")
    train_run(cfg, tmp_path / "straight", data_root, progress=False)

    save = UMT.save_teachers

    def save_then_die(self, state):
        save(self, state)
        raise Stop

    monkeypatch.setattr(UMT, "save_teachers", save_then_die)
    with pytest.raises(Stop):
        train_run(cfg, tmp_path / "killed", data_root, progress=False)
    monkeypatch.setattr(UMT, "save_teachers", save)
    train_run(cfg, tmp_path / "killed", data_root, progress=False)
    assert rows(tmp_path / "killed", cfg) == rows(tmp_path / "straight", cfg)
