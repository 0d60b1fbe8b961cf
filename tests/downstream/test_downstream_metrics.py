"""Metrics against independent references (scipy, hand-counted cases)."""

import numpy as np
import pytest
from scipy import stats

from ankh_jax.downstream import metrics


def test_accuracy_ignores_unscored_positions():
    assert metrics.accuracy([1, 2, 0, 5], [1, 0, -100, -100]) == 0.5
    with pytest.raises(ValueError, match="no scored"):
        metrics.accuracy([1], [-100])


def test_spearman_and_ranks_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=200).astype(float)      # many ties
    y = x + rng.normal(size=200)
    np.testing.assert_allclose(metrics.rankdata(x), stats.rankdata(x))
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("where", ["labels", "predictions"])
def test_spearman_is_nan_when_an_input_holds_nan_as_scipy(where):
    """A NaN used to rank as the largest value and give a number (0.0394 -> 0.0429 in issue 12's case)."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=30), rng.normal(size=30)
    (y if where == "labels" else x)[7] = np.nan
    assert np.isnan(stats.spearmanr(x, y).statistic)
    assert np.isnan(metrics.spearman(x, y))


def test_contact_precision_counts_top_long_range_pairs():
    length = 50
    prob = np.zeros((length, length))
    contacts = np.zeros((length, length), bool)
    # Ten long-range pairs ranked highest; the first 6 are real contacts.
    pairs = [(i, i + 30) for i in range(10)]
    for rank, (i, j) in enumerate(pairs):
        prob[i, j] = prob[j, i] = 1.0 - rank * 0.01
        contacts[i, j] = contacts[j, i] = rank < 6
    prob[0, 5] = 2.0  # short range: never counted
    contacts[0, 5] = True
    valid = np.ones(length, bool)
    out = metrics.contact_precision([prob], [contacts], [valid])
    assert out["L/5"] == pytest.approx(6 / 10)           # L/5 = 10 pairs, 6 true
    assert out["L/1"] == pytest.approx(6 / 50)
    valid[0] = False                                      # drops pair (0, 30), a contact
    assert metrics.contact_precision([prob], [contacts], [valid])["L/5"] == pytest.approx(5 / 10)


def test_contact_map_threshold():
    coords = np.array([[0, 0, 0], [0, 0, 7.9], [0, 0, 16.0]])
    np.testing.assert_array_equal(metrics.contact_map(coords),
                                  [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_lookup_accuracy_per_cath_level():
    queries = ["1.10.8.10", "2.40.50.140", "3.30.70.270"]
    hits = ["1.10.8.20", "2.40.10.10", "4.10.1.1"]
    out = metrics.lookup_accuracy(queries, hits)
    assert out == {"C": pytest.approx(2 / 3), "A": pytest.approx(2 / 3), "T": pytest.approx(1 / 3), "H": 0.0}


def test_cosine_nearest_and_micro_f1():
    lookup = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = np.array([[5.0, 0.1], [0.2, 3.0], [-2, 0.5]])
    np.testing.assert_array_equal(metrics.cosine_nearest(queries, lookup), [0, 1, 2])
    assert metrics.micro_f1([[1, 0], [1, 1]], [[1, 0], [0, 1]]) == pytest.approx(2 * 2 / (2 * 2 + 1))
