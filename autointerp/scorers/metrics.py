"""Metrics over judge answers (classification, ranking, correlation), written out so their edge cases are ours.

A metric that is undefined for the data (precision with no positive predictions, AUROC with one
class) is None, never 0: a missing value must not read as a bad explanation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# the columns a Yes/No scorer writes into results.parquet, headline figures first
CLASSIFICATION_METRICS = ("balanced_accuracy", "auroc", "accuracy", "precision", "recall", "f1")
# ... and the accuracy on its silent items; the accuracy per activation quantile follows, one metric
# per quantile (`quantile_metric`), as many as the record's activating items span
NEGATIVE_ACCURACY = "negative_accuracy"
_QUANTILE_METRIC = re.compile(r"quantile_accuracy_(\d+)")


def _counts(truth: Sequence[bool], pred: Sequence[bool]) -> tuple[int, int, int, int]:
    t = np.asarray(truth, bool)
    p = np.asarray(pred, bool)
    return int((t & p).sum()), int((~t & p).sum()), int((~t & ~p).sum()), int((t & ~p).sum())


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def accuracy(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    tp, fp, tn, fn = _counts(truth, pred)
    return _ratio(tp + tn, tp + fp + tn + fn)


def recall(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    tp, _, _, fn = _counts(truth, pred)
    return _ratio(tp, tp + fn)


def specificity(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    _, fp, tn, _ = _counts(truth, pred)
    return _ratio(tn, tn + fp)


def precision(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    tp, fp, _, _ = _counts(truth, pred)
    return _ratio(tp, tp + fp)


def f1(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    p, r = precision(truth, pred), recall(truth, pred)
    if p is None or r is None or p + r == 0:
        return None if p is None or r is None else 0.0
    return 2 * p * r / (p + r)


def balanced_accuracy(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    """Mean of recall on each class; None unless both classes are present."""
    r, s = recall(truth, pred), specificity(truth, pred)
    return None if r is None or s is None else (r + s) / 2


def auroc(truth: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half)."""
    t = np.asarray(truth, bool)
    s = np.asarray(scores, float)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), float)
    sorted_s = s[order]
    # average ranks over ties
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    truth: Sequence[bool], pred: Sequence[bool], probability: Sequence[float | None] | None = None
) -> dict[str, float | None]:
    out = {
        "accuracy": accuracy(truth, pred),
        "balanced_accuracy": balanced_accuracy(truth, pred),
        "precision": precision(truth, pred),
        "recall": recall(truth, pred),
        "f1": f1(truth, pred),
        "auroc": None,
    }
    if probability is not None and len(probability) and all(p is not None for p in probability):
        out["auroc"] = auroc(truth, [float(p) for p in probability])  # type: ignore[arg-type]
    return out


def quantile_metric(quantile: int) -> str:
    """The metric name of the accuracy within one activation quantile (0 = weakest)."""
    return f"quantile_accuracy_{int(quantile)}"


def metric_quantile(name: str) -> int | None:
    """The quantile a `quantile_metric` name stands for; None for any other metric."""
    m = _QUANTILE_METRIC.fullmatch(name)
    return int(m.group(1)) if m else None


def quantile_accuracies(
    truth: Sequence[bool], pred: Sequence[bool | None], quantile: Sequence[int]
) -> dict[str, float | None]:
    """Accuracy within each activation quantile of the activating items (the share called positive:
    recall within the quantile), and on the non-activating ones (`negative_accuracy`, the
    specificity).

    One number per quantile rather than a list: every metric stays a plain number, so results,
    controls, means over latents and the report need no second shape. An item with no usable
    answer (`pred` None) is left out; a quantile whose items all lack one is None, and a quantile
    with no item at all gets no metric (the column is null for that latent).
    """
    hits: dict[int, list[bool]] = {}
    silent: list[bool] = []
    for t, p, q in zip(truth, pred, quantile, strict=True):
        if t:
            hits.setdefault(int(q), [])
            if p is not None:
                hits[int(q)].append(bool(p))
        elif p is not None:
            silent.append(not p)
    out: dict[str, float | None] = {NEGATIVE_ACCURACY: mean_or_none(silent)}
    for q in sorted(hits):
        out[quantile_metric(q)] = mean_or_none(hits[q])
    return out


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean, or None for no values (a latent with nothing measured has no score, not a 0)."""
    return float(np.mean(values)) if len(values) else None


def win_rate(differences: Sequence[float]) -> float | None:
    """Fraction of paired differences that are positive, ties counting half."""
    if not len(differences):
        return None
    d = np.asarray(differences, float)
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / len(d))


def top_r(truth: Sequence[bool], scores: Sequence[float]) -> list[bool]:
    """Call the R highest-scored items positive, R = the number of positives (ties: earlier item first).

    The threshold-free decision rule for scores with no natural cut (a cosine similarity); the
    precision of these predictions is the R-precision of the ranking.
    """
    r = int(np.asarray(truth, bool).sum())
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    pred = np.zeros(len(order), bool)
    pred[order[:r]] = True
    return pred.tolist()


def correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when it is undefined (fewer than two points, or either side constant)."""
    a = np.asarray(x, float)
    b = np.asarray(y, float)
    if a.shape != b.shape:
        raise ValueError(f"correlation of sequences of different lengths ({a.size} and {b.size})")
    if a.size < 2:
        return None
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den == 0 or not np.isfinite(den):
        return None
    return float(np.clip((a * b).sum() / den, -1.0, 1.0))
