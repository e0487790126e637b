"""Diversity metrics against values worked out by hand."""

import numpy as np
import pytest

from teams_rl.metrics import distinct_n, vendi_score, words


def test_words_split_punctuation_and_lowercase():
    assert words("Hello, World!") == ["hello", ",", "world", "!"]


def test_distinct_n_counted_by_hand():
    texts = ["a b c", "a b d"]  # bigrams: ab bc ab bd -> 3 unique of 4
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # a b c a b d
    assert distinct_n(["one"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_vendi_of_identical_items_is_one_and_of_orthogonal_items_is_n():
    assert vendi_score(np.ones((5, 8))) == pytest.approx(1.0)
    assert vendi_score(np.eye(4)) == pytest.approx(4.0)
    two_pairs = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    assert vendi_score(two_pairs) == pytest.approx(2.0)
    assert vendi_score(np.zeros((0, 3))) == 0.0
