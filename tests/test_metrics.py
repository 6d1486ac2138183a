import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, log_loss

from benchmark.train.metrics import (
    accuracy,
    classification_metrics,
    cross_entropy,
    forgetting,
    macro_f1,
    mean_average_precision,
)


def test_accuracy_by_hand():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy(scores, np.array([0, 1, 1])) == pytest.approx(2 / 3)


def test_macro_f1_by_hand():
    # predictions 0, 1, 1, 2 for labels 0, 1, 2, 2
    scores = np.eye(3)[[0, 1, 1, 2]]
    labels = np.array([0, 1, 2, 2])
    # class 0: F1 1; class 1: tp 1, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 2/3
    assert macro_f1(scores, labels) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_map_by_hand():
    # class 0 scores rank samples 0 (pos), 2 (neg), 1 (pos): AP = (1/1 + 2/3) / 2
    # class 1 scores rank samples 1 (neg), 2 (pos), 0 (neg): AP = 1/2
    scores = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 0, 1])
    assert mean_average_precision(scores, labels) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)


def test_cross_entropy_by_hand():
    # logits (0, ln 3) -> p = (1/4, 3/4); labels 1 then 0: CE = (ln(4/3) + ln 4) / 2
    scores = np.array([[0.0, np.log(3)], [0.0, np.log(3)]])
    expected = (np.log(4 / 3) + np.log(4)) / 2
    assert cross_entropy(scores, np.array([1, 0])) == pytest.approx(expected)
    # invariant to a per-row shift (log-probabilities and logits give the same CE)
    assert cross_entropy(scores + 1000.0, np.array([1, 0])) == pytest.approx(expected)


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 5))
    labels = rng.integers(0, 5, size=200)
    m = classification_metrics(scores, labels)
    assert m["f1"] == pytest.approx(f1_score(labels, scores.argmax(1), average="macro"))
    onehot = np.eye(5)[labels]
    assert m["map"] == pytest.approx(average_precision_score(onehot, scores, average="macro"))
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert m["ce"] == pytest.approx(log_loss(labels, probs, labels=range(5)))


def test_forgetting_is_running_max_minus_current():
    acc = np.array([[0.5, 0.2], [0.7, 0.1], [0.6, 0.3], [0.8, 0.25]])
    expected = np.array([[0.0, 0.0], [0.0, 0.1], [0.1, 0.0], [0.0, 0.05]])
    np.testing.assert_allclose(forgetting(acc), expected)
    assert forgetting(np.array([0.3, 0.2])).tolist() == pytest.approx([0.0, 0.1])
