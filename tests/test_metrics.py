"""metrics.py: top-k counts under the one ranking rule -- descending score, ties by
position (lower class index first), NaN below every number -- on the host and on the
device, and the same rule in evaluate's and predict's rankings."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivgg import backend, evaluate, metrics, predict
from strict_arrays import on_device, strict_device  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


def rule_rank(row, label):
    """The label's place in the row, the rule written out: NaN last, then higher score
    first, then lower index first."""
    def key(c):
        s = row[c]
        return (1, 0.0, c) if math.isnan(s) else (0, -s, c)
    return sorted(range(len(row)), key=key).index(label)


# Few distinct values: ties everywhere, and NaN and infinities among them.
SCORES = st.sampled_from([0.0, 0.25, 0.5, 1.0, np.inf, -np.inf, np.nan])


@st.composite
def scored_batches(draw):
    n, classes = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    probs = np.array(draw(st.lists(SCORES, min_size=n * classes, max_size=n * classes)),
                     dtype=np.float32).reshape(n, classes)
    labels = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)),
                      dtype=np.int32)
    return probs, labels, draw(st.integers(1, classes + 1))


@given(scored_batches())
def test_top_k_correct_follows_the_rule_with_ties_and_nans(batch):
    probs, labels, k = batch
    want = sum(rule_rank(row, y) < k for row, y in zip(probs, labels))
    assert int(metrics.top_k_correct(probs, labels, k)) == want


@given(scored_batches())
def test_top_classes_and_evaluate_rank_by_the_same_rule(batch):
    probs, labels, k = batch
    top = metrics.top_classes(probs, k)
    for row, got in zip(probs, top):
        want = sorted(range(len(row)), key=lambda c: rule_rank(row, c))[:k]
        assert list(got) == want
    # the confusion matrix's diagonal is exactly the top-1 hits
    classes = probs.shape[1]
    hits = int(metrics.top_k_correct(probs, labels, 1))
    assert np.trace(evaluate.confusion_matrix(probs, labels, classes)) == hits
    assert evaluate.top_k_error(probs, labels, 1) == pytest.approx(1 - hits / len(labels))


def test_all_equal_scores_are_right_only_for_the_first_k_labels():
    # An untrained or dead net: the same score for every class. Validation must report
    # chance (9 of 10 wrong at top-1), not 0% error.
    classes = 10
    probs = np.full((classes, classes), 0.1, dtype=np.float32)
    labels = np.arange(classes, dtype=np.int32)
    assert int(metrics.top_k_correct(probs, labels, 1)) == 1     # label 0 only
    assert int(metrics.top_k_correct(probs, labels, 5)) == 5     # labels 0..4
    assert evaluate.top_k_error(probs, labels, 1) == pytest.approx(0.9)
    assert evaluate.top_k_error(probs, labels, 5) == pytest.approx(0.5)


def test_a_tie_goes_to_the_lower_class_index():
    probs = np.array([[0.1, 0.4, 0.4, 0.1]], dtype=np.float32)
    hit = [int(metrics.top_k_correct(probs, np.array([y]), 1)) for y in range(4)]
    assert hit == [0, 1, 0, 0]
    hit2 = [int(metrics.top_k_correct(probs, np.array([y]), 2)) for y in range(4)]
    assert hit2 == [0, 1, 1, 0]
    assert [c for c, _ in predict.top_classes(probs[0], "abcd", 4)] == list("bcad")


def test_nan_ranks_last():
    probs = np.array([[np.nan, 0.2, np.nan, 0.1]], dtype=np.float32)
    hit = [int(metrics.top_k_correct(probs, np.array([y]), 2)) for y in range(4)]
    assert hit == [0, 1, 0, 1]                       # order: 1, 3, 0, 2
    all_nan = np.full((3, 3), np.nan, dtype=np.float32)
    assert int(metrics.top_k_correct(all_nan, np.arange(3), 1)) == 1


def test_k_beyond_the_classes_counts_every_row():
    probs = np.array([[0.3, 0.7], [np.nan, np.nan]], dtype=np.float32)
    assert int(metrics.top_k_correct(probs, np.array([0, 1]), 5)) == 2


def test_bad_arguments_are_one_line_value_errors():
    probs, labels = np.zeros((2, 3), np.float32), np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        metrics.top_k_correct(probs, labels, 0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        metrics.top_k_correct(probs, np.zeros(3, np.int32), 1)
    with pytest.raises(ValueError, match="probs on the host but labels on the device"):
        metrics.top_k_correct(probs, on_device(labels, np.int32), 1)


def test_on_the_device_no_host_sync_and_the_same_count(strict_device):
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 3, (16, 5)).astype(np.float32)  # many ties
    labels = rng.integers(0, 5, 16).astype(np.int32)
    want = int(metrics.top_k_correct(probs, labels, 2))
    got = metrics.top_k_correct(backend.to_device(probs),
                                backend.to_device(labels, np.int32), 2)
    assert backend.is_device_array(got)  # stays on the device: no sync in the loop
    assert backend.scalar(got) == want
    with pytest.raises(ValueError, match="probs on the device but labels on the host"):
        metrics.top_k_correct(backend.to_device(probs), labels, 2)
