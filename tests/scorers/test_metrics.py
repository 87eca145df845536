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


def test_accuracy_per_quantile_is_the_share_called_positive_in_each_and_silent_ones_apart():
    from autointerp.scorers.metrics import metric_quantile, quantile_accuracies, quantile_metric

    truth = [True, True, True, True, True, False, False, False]
    pred = [True, False, None, True, True, False, True, None]
    quantile = [0, 0, 1, 2, 2, -1, -1, -1]
    got = quantile_accuracies(truth, pred, quantile)
    assert got == {
        "negative_accuracy": 0.5,  # one of the two answered silent items called silent
        "quantile_accuracy_0": 0.5,
        "quantile_accuracy_1": None,  # its only item has no usable answer: unknown, not 0
        "quantile_accuracy_2": 1.0,
    }
    assert list(got)[1:] == [quantile_metric(q) for q in (0, 1, 2)]  # weakest first
    assert metric_quantile("quantile_accuracy_12") == 12 and metric_quantile("accuracy") is None
    assert quantile_accuracies([True], [True], [3]) == {"negative_accuracy": None, "quantile_accuracy_3": 1.0}
