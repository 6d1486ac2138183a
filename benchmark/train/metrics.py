"""Evaluation metrics (accuracy, macro-F1, mAP, cross-entropy) and forgetting, as pure
numpy functions."""

from __future__ import annotations

import numpy as np


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of scores [N, C] against labels [N]."""
    return float((scores.argmax(axis=1) == labels).mean())


def macro_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    """F1 = 2TP / (2TP + FP + FN) per class, averaged over the classes that occur in the
    labels or the predictions (scikit-learn's `f1_score(average="macro")`)."""
    num_classes = scores.shape[1]
    pred = scores.argmax(axis=1)
    tp = np.bincount(labels[pred == labels], minlength=num_classes)
    n_pred = np.bincount(pred, minlength=num_classes)
    n_true = np.bincount(labels, minlength=num_classes)
    present = (n_pred + n_true) > 0
    f1 = 2 * tp / np.maximum(n_pred + n_true, 1)
    return float(f1[present].mean())


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes (those with a positive) of one-vs-rest average precision:
    AP_c = mean, over the positives of c, of the precision at their rank when all
    samples are sorted by score for c (ties broken by sample order)."""
    n, num_classes = scores.shape
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = labels[order] == np.arange(num_classes)[None, :]
    precision = np.cumsum(hits, axis=0) / np.arange(1, n + 1)[:, None]
    positives = hits.sum(axis=0)
    ap = (precision * hits).sum(axis=0) / np.maximum(positives, 1)
    return float(ap[positives > 0].mean())


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log softmax(logits)[y] over the samples (float64, max-shifted)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{"acc", "f1", "map", "ce"} for one head's logits [N, C]. Every method's `predict`
    returns logits or log-probabilities, so "ce" (the cross-entropy of the head) is one
    quantity comparable across methods, whatever objective each of them trains on."""
    return {
        "acc": accuracy(scores, labels),
        "f1": macro_f1(scores, labels),
        "map": mean_average_precision(scores, labels),
        "ce": cross_entropy(scores, labels),
    }


def forgetting(acc: np.ndarray) -> np.ndarray:
    """Forgetting per time step and head: running maximum of accuracy minus current.

    acc: [epochs, heads] (or [epochs]); returns an array of the same shape, >= 0, with 0
    wherever a head is at its best so far (Chaudhry et al. 2018; avalanche's functional
    forgetting, applied to a time x modality matrix).
    """
    acc = np.asarray(acc, dtype=float)
    return np.maximum.accumulate(acc, axis=0) - acc
