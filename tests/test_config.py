import pytest

from benchmark.errors import UserError
from benchmark.train.config import RUN_DEFAULTS, parse_overrides, resolve
from methods import MethodConfigError


def _resolve(overrides=None, seed=0, method="joint", defaults=None):
    return resolve(method, "synth", "/x", defaults or {"encoder": "small"}, seed, overrides or {})


def test_precedence_dataset_then_overrides():
    cfg = _resolve({"lr": 0.5}, defaults={"encoder": "small", "lr": 0.1, "epochs": 3})
    assert cfg.settings["lr"] == 0.5
    assert cfg.settings["epochs"] == 3
    assert cfg.settings["batch_size"] == RUN_DEFAULTS["batch_size"]


def test_parse_overrides_json_and_strings():
    assert parse_overrides(["lr=0.01", "fusion=sum", "hflip=false", "crop_scale=[0.5, 1]"]) == {
        "lr": 0.01,
        "fusion": "sum",
        "hflip": False,
        "crop_scale": [0.5, 1],
    }
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["lr"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
        ({"lr": "fast"}, "lr expects a number"),
        ({"hflip": 1}, "hflip expects true or false"),
        ({"fusion": "attention"}, "unknown fusion 'attention'"),
        ({"encoder": "vit"}, "unknown encoder 'vit'"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(UserError, match=message):
        _resolve(overrides)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(MethodConfigError, match="unknown method 'nope'; known methods: .*joint"):
        _resolve(method="nope")


def test_run_id_hashes_what_changes_results_only():
    base = _resolve()
    assert base.run_id == _resolve().run_id
    assert base.run_id != _resolve(seed=1).run_id
    assert base.run_id != _resolve({"lr": 0.5}).run_id
    assert base.run_id == _resolve({"device": "cpu", "workers": 2}).run_id
