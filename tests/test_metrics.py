import pytest

from autointerp.scorers.metrics import auroc, balanced_accuracy, classification_metrics, f1, precision, recall


def test_perfect_and_inverted_auroc():
    truth = [True, True, False, False]
    assert auroc(truth, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert auroc(truth, [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_auroc_ties_count_half():
    assert auroc([True, False], [0.5, 0.5]) == 0.5
    # one positive above both negatives, one tied with a negative: (2 + 0.5) / 4
    assert auroc([True, True, False, False], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)


def test_undefined_metrics_are_none_not_zero():
    assert auroc([True, True], [0.1, 0.9]) is None
    assert balanced_accuracy([True, True], [True, False]) is None
    assert precision([True, False], [False, False]) is None


def test_balanced_accuracy_ignores_class_imbalance():
    truth = [True] * 9 + [False]
    pred = [True] * 10
    assert balanced_accuracy(truth, pred) == 0.5
    assert recall(truth, pred) == 1.0
    assert f1(truth, pred) == pytest.approx(2 * 0.9 / 1.9)


def test_classification_metrics_skips_auroc_without_probabilities():
    m = classification_metrics([True, False], [True, False], None)
    assert m["balanced_accuracy"] == 1.0 and m["auroc"] is None
