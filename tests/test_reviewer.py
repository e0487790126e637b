"""Reviewer modes with scripted LLMs and the embedded MiniLM: scores, parse failures, weighted reward, gain."""

import math

import pytest

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.reviewer import MODES, VERDICT, Reviewer, ReviewItem, parse_modes
from teams_rl.llm.base import ScoreResult
from teams_rl.llm.embeddings import load_embedder
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.role_client import RoleClient
from teams_rl.llm.scripted import ScriptedBackend

NEG_INF = float("-inf")
POEM = "Write a poem about the sea."


def _rewrite_of(request) -> str:
    """The rewrite a reviewer prompt shows (judge: "Instruction B:", graded: "New instruction:")."""
    content = request.messages[-1]["content"]
    marker = "Instruction B:\n" if "Instruction B:\n" in content else "New instruction:\n"
    return content.split(marker, 1)[1].split("\n\n", 1)[0]


class FailingScorer(ScriptedBackend):
    """Scores whose rewrite is in ``failing`` come back as failed calls."""

    def __init__(self, reply, scorer, failing):
        super().__init__(reply, scorer)
        self.failing = failing

    def score(self, requests):
        return [
            ScoreResult([], error="timeout") if _rewrite_of(q) in self.failing else ScriptedBackend.score(self, [q])[0]
            for q in requests
        ]


def _client(tmp_path, replies=None, scorer=None, failing=()):
    """A reviewer client whose text answers and log-probabilities are looked up by the rewrite shown."""
    backend = FailingScorer(
        lambda req: (replies or {})[_rewrite_of(req)],
        (lambda req: scorer[_rewrite_of(req)]) if scorer else None,
        set(failing),
    )
    return RoleClient(backend, Ledger(tmp_path / "ledger.sqlite"), "reviewer"), backend


def _items(*rewrites, original=POEM):
    return [ReviewItem(original, r, seed=i) for i, r in enumerate(rewrites)]


def _logs(p_yes):
    return [math.log(p_yes), math.log(1 - p_yes)]


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("minilm")


# ---------------------------------------------------------------- judge (text)


def test_judge_scores_verdicts_and_counts_unparseable_answers(tmp_path):
    replies = {"A": "Yes.", "B": "**NO**", "C": '{"answer": "yes"}', "D": "yes or no?", "E": "I am not sure"}
    client, backend = _client(tmp_path, replies)
    reviews = Reviewer(client, {"judge": 1.0}).review(_items(*replies))
    assert [r.scores["judge"] for r in reviews] == [1.0, 0.0, 1.0, None, None]
    assert [r.gain for r in reviews] == [True, False, True, None, None]
    assert [r.parse_failures for r in reviews] == [0, 0, 0, 1, 1]
    assert [r.reward for r in reviews] == [1.0, 0.0, 1.0, 0.0, 0.0]  # unparseable scores as a failure
    assert backend.generate_calls == 5


def test_judge_requests_use_the_judge_prompt_greedy_and_the_item_seed(tmp_path):
    seen = []
    backend = ScriptedBackend(lambda req: seen.append(req) or "Yes")
    reviewer = Reviewer(RoleClient(backend, Ledger(tmp_path / "l.sqlite"), "reviewer"), {"judge": 1.0})
    reviewer.review([ReviewItem("Write.", "Write a haiku.", seed=1234)])
    (request,) = seen
    assert request.seed == 1234
    assert request.sampling == VERDICT and VERDICT.temperature == 0.0
    assert request.messages == reviewer.judge_prompt.render(original="Write.", rewrite="Write a haiku.")


def test_failed_judge_call_is_a_failure_not_a_crash(tmp_path):
    class Down(ScriptedBackend):
        def generate(self, requests):
            from teams_rl.llm.base import GenerationResult

            return [GenerationResult("", finish_reason="error", error="503") for _ in requests]

    reviewer = Reviewer(RoleClient(Down(str), Ledger(tmp_path / "l.sqlite"), "reviewer"), {"judge": 1.0})
    (review,) = reviewer.review(_items("Write a sonnet about rain."))
    assert (review.scores, review.gain, review.parse_failures, review.reward) == ({"judge": None}, None, 1, 0.0)


def test_no_items_no_calls(tmp_path):
    client, backend = _client(tmp_path, {})
    assert Reviewer(client, {"judge": 1.0, "graded": 1.0}).review([]) == []
    assert backend.generate_calls == 0


# ---------------------------------------------------------------- judge_logprob


def test_judge_logprob_uses_the_probability_of_yes(tmp_path):
    client, backend = _client(tmp_path, scorer={"A": _logs(0.9), "B": _logs(0.2), "C": [-0.5, NEG_INF]})
    reviews = Reviewer(client, {"judge_logprob": 1.0}, gain_threshold=0.6).review(_items("A", "B", "C"))
    assert [r.scores["judge_logprob"] for r in reviews] == pytest.approx([0.9, 0.2, 1.0])
    assert [r.reward for r in reviews] == pytest.approx([0.9, 0.2, 1.0])
    assert [r.gain for r in reviews] == [True, False, True]
    assert [r.parse_failures for r in reviews] == [0, 0, 0]
    assert backend.score_calls == 3 and backend.generate_calls == 0


def test_judge_logprob_scores_the_prompt_choices(tmp_path):
    seen = []
    backend = ScriptedBackend(str, lambda req: seen.append(req) or _logs(0.5))
    reviewer = Reviewer(RoleClient(backend, Ledger(tmp_path / "l.sqlite"), "reviewer"), {"judge_logprob": 1.0})
    reviewer.review([ReviewItem("Write.", "Write a haiku.", seed=99)])
    assert seen[0].choices == ("Yes", "No") and seen[0].seed == 99
    assert seen[0].messages == reviewer.judge_prompt.render(original="Write.", rewrite="Write a haiku.")


def test_gain_threshold_is_inclusive(tmp_path):
    client, _ = _client(tmp_path, scorer={"A": _logs(0.5)})
    assert Reviewer(client, {"judge_logprob": 1.0}, gain_threshold=0.5).review(_items("A"))[0].gain is True
    assert Reviewer(client, {"judge_logprob": 1.0}, gain_threshold=0.51).review(_items("A"))[0].gain is False


def test_failed_logprob_call_is_a_failure_not_a_crash(tmp_path):
    client, _ = _client(tmp_path, scorer={"A": _logs(0.9)}, failing={"B"})
    ok, failed = Reviewer(client, {"judge_logprob": 1.0}).review(_items("A", "B"))
    assert ok.gain is True and ok.parse_failures == 0
    assert (failed.scores, failed.gain, failed.parse_failures, failed.reward) == (
        {"judge_logprob": None},
        None,
        1,
        0.0,
    )


def test_unranked_choices_are_a_failure_not_a_gain(tmp_path):
    client, _ = _client(tmp_path, scorer={"A": [NEG_INF, NEG_INF]})
    (review,) = Reviewer(client, {"judge_logprob": 1.0}).review(_items("A"))
    assert review.gain is not True
    assert review.parse_failures == 1 and review.reward == 0.0


# ---------------------------------------------------------------- graded and graded_logprob


def test_graded_maps_1_to_10_onto_0_to_1(tmp_path):
    replies = {"A": "10", "B": "Score: 1/10", "C": "I'd give it a 7.", "D": "Score: 12", "E": "great!"}
    client, _ = _client(tmp_path, replies)
    reviews = Reviewer(client, {"graded": 1.0}).review(_items(*replies))
    assert [r.scores["graded"] for r in reviews] == pytest.approx([1.0, 0.0, 6 / 9, None, None], nan_ok=False)
    assert [r.parse_failures for r in reviews] == [0, 0, 0, 1, 1]
    assert [r.reward for r in reviews] == pytest.approx([1.0, 0.0, 6 / 9, 0.0, 0.0])
    assert {r.gain for r in reviews} == {True}  # no judge and no embedding: grading alone never rejects


def test_graded_logprob_is_the_expected_grade(tmp_path):
    certain_ten = [NEG_INF] * 9 + [0.0]
    uniform = [math.log(0.1)] * 10
    two_and_four = [NEG_INF, math.log(0.5), NEG_INF, math.log(0.5)] + [NEG_INF] * 6  # expected grade 3
    client, backend = _client(tmp_path, scorer={"A": certain_ten, "B": uniform, "C": two_and_four}, failing={"D"})
    reviews = Reviewer(client, {"graded_logprob": 1.0}).review(_items("A", "B", "C", "D"))
    assert [r.scores["graded_logprob"] for r in reviews] == pytest.approx([1.0, 0.5, 2 / 9, None])
    assert [r.parse_failures for r in reviews] == [0, 0, 0, 1]
    assert reviews[3].reward == 0.0


# ---------------------------------------------------------------- embedding


def test_embedding_novelty(embedder):
    reviewer = Reviewer(None, {"embedding": 1.0}, embedder=embedder, min_novelty=0.05)
    same, unrelated, close, like_grandparent = reviewer.review(
        [
            ReviewItem(POEM, POEM),
            ReviewItem(POEM, "List the prime factors of 360 and explain each step."),
            ReviewItem(POEM, "Write a short poem about the ocean."),
            ReviewItem(
                POEM,
                "Describe the history of the printing press.",
                ancestors=("Describe the history of the printing press.",),
            ),
        ]
    )
    assert same.scores["embedding"] == pytest.approx(0.0, abs=1e-4)
    assert same.gain is False and same.reward == pytest.approx(0.0, abs=1e-4)
    assert unrelated.scores["embedding"] > 0.7 and unrelated.gain is True
    assert 0.0 < close.scores["embedding"] < 0.3  # a paraphrase is barely novel
    assert like_grandparent.scores["embedding"] == pytest.approx(0.0, abs=1e-4)  # ancestors count, not only the parent
    assert [r.parse_failures for r in (same, unrelated, close, like_grandparent)] == [0, 0, 0, 0]


def test_embedding_score_does_not_depend_on_the_batch(embedder):
    reviewer = Reviewer(None, {"embedding": 1.0}, embedder=embedder)
    item = ReviewItem(POEM, "Explain how tides are caused by the moon.")
    alone = reviewer.review([item])[0].scores["embedding"]
    crowded = reviewer.review([ReviewItem("Cook rice.", "Cook rice with saffron."), item])[1].scores["embedding"]
    assert alone == pytest.approx(crowded, abs=1e-5)


# ---------------------------------------------------------------- weighted sum and gain


def test_reward_is_the_weighted_mean_of_the_modes(tmp_path, embedder):
    client, _ = _client(
        tmp_path,
        {"Explain how tides are caused by the moon.": "Score: 7"},
        scorer={"Explain how tides are caused by the moon.": _logs(0.8)},
    )
    reviewer = Reviewer(client, {"judge_logprob": 2.0, "graded": 1.0, "embedding": 1.0}, embedder=embedder)
    (review,) = reviewer.review(_items("Explain how tides are caused by the moon."))
    novelty = review.scores["embedding"]
    assert review.scores["judge_logprob"] == pytest.approx(0.8) and review.scores["graded"] == pytest.approx(6 / 9)
    assert 0.5 < novelty <= 1.0
    assert review.reward == pytest.approx((2 * 0.8 + 6 / 9 + novelty) / 4)


def test_failed_mode_counts_zero_in_the_weighted_mean(tmp_path):
    def reply(req):  # the judge answers, the grader rambles
        return "Yes" if "Instruction B" in req.messages[-1]["content"] else "no idea"

    client = RoleClient(ScriptedBackend(reply), Ledger(tmp_path / "l.sqlite"), "reviewer")
    (review,) = Reviewer(client, {"judge": 3.0, "graded": 1.0}).review(_items("A"))
    assert review.scores == {"judge": 1.0, "graded": None}
    assert review.parse_failures == 1
    assert review.reward == pytest.approx(0.75)
    assert review.gain is True


def test_logprob_judge_decides_gain_over_text_judge_and_embedding(tmp_path, embedder):
    client, _ = _client(tmp_path, {"A": "Yes"}, scorer={"A": _logs(0.1)})
    weights = {"judge": 1.0, "judge_logprob": 1.0, "embedding": 1.0}
    assert Reviewer(client, weights, embedder=embedder).review(_items("A"))[0].gain is False
    assert Reviewer(client, {"judge": 1.0, "embedding": 1.0}, embedder=embedder).review(_items("A"))[0].gain is True


def test_reviewer_needs_its_models():
    with pytest.raises(TeamsRLError) as info:
        Reviewer(None, {"judge": 1.0, "embedding": 1.0}, embedder=object())
    assert info.value.field == "reviewer_modes" and "judge" in info.value.message
    with pytest.raises(TeamsRLError) as info:
        Reviewer(None, {"embedding": 1.0})
    assert info.value.field == "reviewer_embedding_model"


# ---------------------------------------------------------------- parse_modes


def test_parse_modes():
    assert parse_modes("judge_logprob:1,embedding:0.5") == {"judge_logprob": 1.0, "embedding": 0.5}
    assert parse_modes(" judge , graded:2 ,") == {"judge": 1.0, "graded": 2.0}
    assert parse_modes("embedding:0,judge:1") == {"embedding": 0.0, "judge": 1.0}
    assert set(MODES) == {"judge", "judge_logprob", "graded", "graded_logprob", "embedding"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("judge,novelty:1", "unknown reviewer mode 'novelty'"),
        ("Judge", "unknown reviewer mode 'Judge'"),
        ("judge:high", "weight of 'judge' must be a number >= 0, got 'high'"),
        ("", "at least one reviewer mode"),
        ("judge:0", "at least one reviewer mode"),
        ("judge:1,embedding,judge:2", "reviewer mode 'judge' is given twice"),
    ],
)
def test_parse_modes_errors(text, message):
    with pytest.raises(TeamsRLError) as info:
        parse_modes(text, field="review_modes")
    assert message in info.value.message
    assert info.value.field == "review_modes"


@pytest.mark.parametrize("text", ["judge:nan", "judge:inf", "judge:-1,embedding:2"])
def test_parse_modes_rejects_weights_that_are_not_finite_and_non_negative(text):
    with pytest.raises(TeamsRLError):
        parse_modes(text)
