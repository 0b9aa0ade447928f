import json
import warnings

import numpy as np
import pytest

from pipeline.metrics import ClassificationReport, classification_report, confusion_matrix

# 3 classes, 8 samples. Class 1 is never predicted; class 2 is never the true label.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 1])
Y_PRED = np.array([0, 0, 0, 2, 0, 0, 2, 2])
# Worked out by hand (rows = true, cols = predicted):
#   true 0 -> predicted 0,0,0,2  => [3, 0, 1]
#   true 1 -> predicted 0,0,2,2  => [2, 0, 2]
#   true 2 -> nothing            => [0, 0, 0]
EXPECTED_CONFUSION = [[3, 0, 1], [2, 0, 2], [0, 0, 0]]
# class 0: tp=3, predicted 5, support 4 -> p=3/5, r=3/4, f1=2*(0.6*0.75)/(0.6+0.75)=2/3
# class 1: tp=0, predicted 0, support 4 -> p=0 (never predicted), r=0, f1=0
# class 2: tp=0, predicted 3, support 0 -> p=0, r=0 (no support), f1=0
EXPECTED_PRECISION = [0.6, 0.0, 0.0]
EXPECTED_RECALL = [0.75, 0.0, 0.0]
EXPECTED_F1 = [2 / 3, 0.0, 0.0]
EXPECTED_SUPPORT = [4, 4, 0]
EXPECTED_ACCURACY = 3 / 8


def _report(confusion: np.ndarray) -> ClassificationReport:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return classification_report(confusion)


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == EXPECTED_CONFUSION


def test_report_with_empty_classes_by_hand() -> None:
    report = _report(confusion_matrix(Y_TRUE, Y_PRED, 3))
    assert report.accuracy == pytest.approx(EXPECTED_ACCURACY)
    np.testing.assert_allclose(report.precision, EXPECTED_PRECISION)
    np.testing.assert_allclose(report.recall, EXPECTED_RECALL)
    np.testing.assert_allclose(report.f1, EXPECTED_F1)
    assert report.support.tolist() == EXPECTED_SUPPORT
    assert report.support.dtype == np.int64
    assert report.precision.dtype == np.float64
    assert report.macro_precision == pytest.approx(0.6 / 3)
    assert report.macro_recall == pytest.approx(0.75 / 3)
    assert report.macro_f1 == pytest.approx(2 / 9)


def test_report_without_empty_classes_by_hand() -> None:
    # true 0 -> 0,1 ; true 1 -> 1,1,2 ; true 2 -> 2,2,0
    y_true = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2, 2, 0])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 2]]
    report = _report(cm)
    # column sums (predicted) = [2, 3, 3], row sums (support) = [2, 3, 3], diagonal = [1, 2, 2]
    assert report.accuracy == pytest.approx(5 / 8)
    np.testing.assert_allclose(report.precision, [1 / 2, 2 / 3, 2 / 3])
    np.testing.assert_allclose(report.recall, [1 / 2, 2 / 3, 2 / 3])
    np.testing.assert_allclose(report.f1, [1 / 2, 2 / 3, 2 / 3])
    assert report.macro_f1 == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)


def test_perfect_predictions() -> None:
    labels = np.array([0, 1, 2, 3, 3])
    report = _report(confusion_matrix(labels, labels, 5))
    assert report.accuracy == 1.0
    # class 4 never occurs: by the convention its scores are 0 and it drags the macro down
    np.testing.assert_allclose(report.f1, [1, 1, 1, 1, 0])
    assert report.macro_f1 == pytest.approx(0.8)


def test_invariants_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, size=500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 10, size=500))
    cm = confusion_matrix(y_true, y_pred, 10)
    report = _report(cm)
    assert cm.sum() == 500
    assert cm.sum(axis=1).tolist() == np.bincount(y_true, minlength=10).tolist()
    assert report.support.tolist() == cm.sum(axis=1).tolist()
    assert report.accuracy == pytest.approx(np.trace(cm) / cm.sum())
    assert report.accuracy == pytest.approx(float(np.mean(y_true == y_pred)))


def test_streaming_accumulation_matches_one_shot() -> None:
    first = confusion_matrix(Y_TRUE[:3], Y_PRED[:3], 3)
    rest = confusion_matrix(Y_TRUE[3:], Y_PRED[3:], 3)
    assert (first + rest).tolist() == EXPECTED_CONFUSION


def test_to_dict_is_plain_json() -> None:
    report = _report(confusion_matrix(Y_TRUE, Y_PRED, 3))
    d = report.to_dict(["zero", "one", "two"])
    assert json.loads(json.dumps(d)) == d
    assert d["accuracy"] == pytest.approx(EXPECTED_ACCURACY)
    assert d["confusion_matrix"] == EXPECTED_CONFUSION
    two_thirds = pytest.approx(2 / 3)
    assert d["per_class"] == [
        {"class": "zero", "precision": 0.6, "recall": 0.75, "f1": two_thirds, "support": 4},
        {"class": "one", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4},
        {"class": "two", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
    ]
    assert d["macro"] == pytest.approx({"precision": 0.2, "recall": 0.25, "f1": 2 / 9})
    with pytest.raises(ValueError, match="class names"):
        report.to_dict(["zero", "one"])


def test_report_arrays_are_read_only() -> None:
    report = _report(confusion_matrix(Y_TRUE, Y_PRED, 3))
    with pytest.raises(ValueError, match="read-only"):
        report.f1[0] = 1.0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "n_classes", "message"),
    [
        (np.array([0, 1]), np.array([0]), 2, "equal-length 1-D"),
        (np.array([[0, 1]]), np.array([[0, 1]]), 2, "equal-length 1-D"),
        (np.array([0, 2]), np.array([0, 1]), 2, "outside"),
        (np.array([0, 1]), np.array([-1, 1]), 2, "outside"),
        (np.array([0.0, 1.0]), np.array([0, 1]), 2, "integers"),
        (np.array([0, 1]), np.array([0, 1]), 0, "at least 1"),
    ],
)
def test_confusion_matrix_rejects_bad_input(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(y_true, y_pred, n_classes)


@pytest.mark.parametrize(
    ("confusion", "message"),
    [
        (np.zeros((3, 3), dtype=np.int64), "no samples"),
        (np.ones((2, 3), dtype=np.int64), "square"),
        (np.ones(3, dtype=np.int64), "square"),
        (np.zeros((0, 0), dtype=np.int64), "square"),
        (np.array([[1, -1], [0, 1]]), "negative"),
        (np.eye(2), "integer"),
    ],
)
def test_report_rejects_bad_confusion(confusion: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_report(confusion)
