"""Diversity metrics against values worked out by hand."""

import numpy as np
import pytest

from teams_rl.evaluate.metrics import distinct_n, vendi_score, words


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


def test_near_duplicates_flags_the_crafted_twins_only():
    from teams_rl.evaluate.metrics import near_duplicates

    texts = [
        "Write a short poem about the sea at night.",
        "Write a short poem about the sea at night!",  # a textual twin of row 0 (ROUGE-L 1.0)
        "Explain how a refrigerator keeps food cold.",
        "List three causes of the French Revolution.",
        "Describe photosynthesis to a ten-year-old.",
    ]
    emb = np.eye(5)
    emb[4] = emb[3] + 0.05 * np.eye(5)[4]  # rows 3 and 4: different words, near-identical embeddings (cos > 0.9)
    out = near_duplicates(texts, emb)
    assert out["rouge_l_rate"] == pytest.approx(2 / 5)  # rows 0 and 1
    assert out["embedding_rate"] == pytest.approx(2 / 5)  # rows 3 and 4
    assert out["rate"] == pytest.approx(4 / 5)
    assert {(p["a"], p["b"]) for p in out["pairs"]} == {(0, 1), (3, 4)}
    strict = near_duplicates(texts, emb, rouge_threshold=1.0, cosine_threshold=0.999)
    assert strict["rate"] == 0.0


def test_near_duplicates_rouge_counts_non_ascii_words():
    from teams_rl.evaluate.metrics import near_duplicates

    texts = ["Опиши зиму в трёх словах.", "Опиши зиму в трёх словах!", "Назови столицу Франции."]
    out = near_duplicates(texts, np.eye(3))
    assert out["rouge_l_rate"] == pytest.approx(2 / 3)  # rouge-score's own tokenizer would see empty strings


def test_summary_stats_by_hand():
    from teams_rl.evaluate.metrics import summary_stats

    s = summary_stats([1, 2, 3, 4, 5])
    assert (s["count"], s["mean"], s["median"], s["min"], s["max"]) == (5, 3.0, 3.0, 1.0, 5.0)
    assert s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)
    assert summary_stats([])["mean"] is None


def test_dataset_metrics_counts_review_outcomes_and_actions():
    from teams_rl.evaluate.dataset_metrics import dataset_metrics

    rows = [
        {
            "id": "a/1",
            "seed_id": "a",
            "instruction": "Do x.",
            "input": "",
            "response": "done x",
            "depth": 1,
            "actions": ["deepen"],
            "score_embedding": 0.2,
        },
        {
            "id": "a/2",
            "seed_id": "a",
            "instruction": "Do x and y.",
            "input": "",
            "response": "done x, y",
            "depth": 2,
            "actions": ["deepen", "concretize"],
            "score_embedding": 0.4,
        },
    ]
    rejected = [
        {"stage": "rewrite", "reason": "no_gain", "action": "in_breadth"},
        {"stage": "rewrite", "reason": "refusal", "action": "deepen"},
        {"stage": "answer", "reason": "answer_refusal", "action": "concretize"},
    ]
    summary = {
        "steps": 5,
        "calls": [{"role": "expert", "new": 6, "cached": 2}, {"role": "reviewer", "new": 3, "cached": 0}],
    }
    m = dataset_metrics(rows, rejected, summary)
    # reviewed = 3 answered (2 kept + 1 answer-eliminated) + 1 no_gain; the refusal never reached the reviewer
    assert m["review"] == {
        "rewrites_tried": 5,
        "rule_eliminated": 1,
        "reviewed": 4,
        "reviewer_accepted": 3,
        "reviewer_acceptance": 0.75,
        "answers_eliminated": 1,
        "kept": 2,
        "kept_rate": 0.4,
    }
    assert m["actions"]["kept"] == {"concretize": 1, "deepen": 1}
    assert m["actions"]["eliminated"] == {"concretize": 1, "deepen": 1, "in_breadth": 1}
    assert m["depth"] == {"1": 1, "2": 1}
    assert m["eliminated"] == {"answer_refusal": 1, "no_gain": 1, "refusal": 1}
    assert m["scores"]["embedding"]["mean"] == pytest.approx(0.3)
    assert m["queries"]["synthesis"]["expert"] == {"calls": 8, "per_row": 4.0}
    assert m["diversity"]["distinct_1_response"] == pytest.approx(4 / 6)  # done x done x , y
    assert "near_duplicates" not in m  # no embeddings given


def test_vendi_from_the_small_gram_matches_the_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))  # n > d: computed from the 8 x 8 matrix
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    eig = np.linalg.eigvalsh(unit @ unit.T / 50)
    eig = eig[eig > 1e-12]
    assert vendi_score(x) == pytest.approx(float(np.exp(-np.sum(eig * np.log(eig)))))
    assert 1.0 < vendi_score(x) <= 8.0
