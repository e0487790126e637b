"""The evolution environment with scripted LLMs: each elimination rule, rewards, next states, per-row seeds."""

from dataclasses import replace

import pytest

from teams_rl.env.actions import load_actions
from teams_rl.env.environment import (
    EMPTY,
    LLM_ERROR,
    NO_GAIN,
    REASONS,
    REFUSAL,
    TEMPLATE_WORDS,
    TRUNCATED,
    EvolutionEnv,
    State,
    derive_seed,
    screen,
)
from teams_rl.env.reviewer import Reviewer
from teams_rl.env.screens import ANSWERED, COPIED, DRIFTED, SHRUNK
from teams_rl.env.seeds import Seed
from teams_rl.llm.base import GenerationResult, SamplingParams
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.role_client import RoleClient
from teams_rl.llm.scripted import ScriptedBackend

POEM = "Write a poem."
KEPT = "Write a four-line poem about the sea that mentions a lighthouse."  # 11 words
FAIL = "<<fail>>"  # the rewriter's script says: this call fails after retries


def _instruction(request) -> str:
    """The instruction the action prompt asks to rewrite (the last user turn: "Instruction: ...")."""
    text = request.messages[-1]["content"].rsplit("Instruction: ", 1)[1]
    return text.split("\nInput:", 1)[0]


class FailingBackend(ScriptedBackend):
    """A scripted backend whose reply ``FAIL`` comes back as a failed call, as a real backend reports one."""

    def generate(self, requests):
        out = super().generate(requests)
        return [
            GenerationResult(text="", finish_reason="error", error="timeout") if r.text == FAIL else r for r in out
        ]


class Harness:
    """A rewriter scripted by parent instruction and a text judge scripted by rewrite, behind one ledger."""

    def __init__(
        self,
        tmp_path,
        rewrites: dict[str, str],
        verdicts: dict[str, str] | None = None,
        *,
        run_seed: int = 7,
        max_new_tokens: int = 64,
        ledger: Ledger | None = None,
    ):
        self.rewrites, self.verdicts = rewrites, verdicts or {}
        self.rewrite_requests, self.judge_requests = [], []
        self.rewriter = FailingBackend(self._rewrite, model_id="rewriter")
        self.judge = ScriptedBackend(self._judge, model_id="judge")
        self.ledger = ledger or Ledger(tmp_path / f"ledger-{run_seed}.sqlite")
        reviewer = Reviewer(RoleClient(self.judge, self.ledger, "reviewer"), {"judge": 1.0})
        actions = {a.name: a for a in load_actions()}
        self.env = EvolutionEnv(
            actions,
            RoleClient(self.rewriter, self.ledger, "rewriter"),
            reviewer,
            SamplingParams(temperature=0.7, max_new_tokens=max_new_tokens),
            run_seed=run_seed,
        )

    def _rewrite(self, request) -> str:
        self.rewrite_requests.append(request)
        return self.rewrites[_instruction(request)]

    def _judge(self, request) -> str:
        self.judge_requests.append(request)
        rewrite = request.messages[-1]["content"].split("Instruction B:\n", 1)[1].split("\n\nDoes", 1)[0]
        return self.verdicts.get(rewrite, "Yes.")

    def step_one(self, instruction: str, action: str = "add_constraints", **state):
        state = State(seed_id="s1", instruction=instruction, **state)
        return self.env.step([state], [action])[0]


# ---------------------------------------------------------------- kept


def test_kept_rewrite_updates_the_state_and_earns_the_reward(tmp_path):
    h = Harness(tmp_path, {POEM: f"Rewritten instruction:\n{KEPT}"})
    parent = State("s1", POEM, input="", depth=2, step=5, actions=("deepen", "concretize"), lineage=("a", "b"))
    t = h.env.step([parent], ["add_constraints"])[0]
    assert t.eliminated is None and t.kept
    assert t.reward == 1.0
    assert t.review.scores == {"judge": 1.0} and t.review.gain is True
    assert t.raw == f"Rewritten instruction:\n{KEPT}"
    assert t.state is parent and t.action == "add_constraints"
    assert t.next_state == State(
        "s1", KEPT, "", depth=3, step=6, actions=("deepen", "concretize", "add_constraints"), lineage=("a", "b", POEM)
    )
    # the judge saw the parent and the parsed rewrite, not the label
    judge_text = h.judge_requests[0].messages[-1]["content"]
    assert f"Instruction A:\n{POEM}\n\nInstruction B:\n{KEPT}\n" in judge_text


def test_kept_rewrite_keeps_or_replaces_the_input(tmp_path):
    h = Harness(
        tmp_path,
        {
            "Sort these.": "Sort these in descending order.",
            "Average these.": "Average the sales by month.\n\nInput:\n| Jan | 120 |",
        },
    )
    states = [State("a", "Sort these.", input="3, 1, 2"), State("b", "Average these.", input="4, 8")]
    kept_input, new_input = h.env.step(states, ["add_constraints", "complicate_input"])
    assert kept_input.next_state.input == "3, 1, 2"  # an action that writes no input keeps the parent's
    assert new_input.next_state.input == "| Jan | 120 |"
    assert new_input.next_state.instruction == "Average the sales by month."
    assert _instruction(h.rewrite_requests[0]) == "Sort these."
    assert h.rewrite_requests[0].messages[-1]["content"].endswith("Instruction: Sort these.\nInput:\n3, 1, 2")


def test_state_from_seed():
    state = State.from_seed(Seed(id="row-3", instruction="Explain tides.", input="ctx"))
    assert state == State("row-3", "Explain tides.", "ctx", 0, 0, (), ())


# ---------------------------------------------------------------- the elimination rules


def _assert_eliminated(t, reason, parent):
    assert t.eliminated == reason and not t.kept
    assert t.reward == 0.0
    assert t.next_state == replace(parent, step=parent.step + 1)  # nothing changes but the attempt count


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("Sorry, I cannot help with rewriting this instruction.", REFUSAL),
        ("I cannot do that.", REFUSAL),
        ("The and of it, so it is.", EMPTY),
        ("...!?", EMPTY),
        ("", EMPTY),
        ("Write a poem that, unlike the #Given Prompt#, rhymes.", TEMPLATE_WORDS),
        ("Write a poem as the Rewritten Prompt asks, about the sea.", TEMPLATE_WORDS),
        (FAIL, LLM_ERROR),
    ],
)
def test_screen_rules_eliminate_before_the_reviewer(tmp_path, reply, reason):
    h = Harness(tmp_path, {POEM: reply})
    parent = State("s1", POEM, depth=1, step=3, actions=("deepen",), lineage=("Write.",))
    t = h.env.step([parent], ["deepen"])[0]
    _assert_eliminated(t, reason, parent)
    assert t.review is None
    assert h.judge.generate_calls == 0  # eliminated rewrites cost no reviewer call


def test_llm_error_is_recorded_and_not_cached(tmp_path):
    h = Harness(tmp_path, {POEM: FAIL})
    t = h.step_one(POEM)
    assert (t.eliminated, t.finish_reason, t.raw) == (LLM_ERROR, "error", "")
    assert h.env.rewriter.stats.errors == 1
    assert h.ledger.totals()["rewriter"].errors == 1
    h.rewrites[POEM] = KEPT  # the retry on a re-run reaches the model again and succeeds
    assert h.step_one(POEM).kept
    assert h.rewriter.generate_calls == 2


def test_long_reply_that_starts_with_sorry_is_not_a_refusal(tmp_path):
    long_rewrite = "Sorry to ask, but " + "write about the history of lighthouses on rocky coasts " * 9
    assert len(long_rewrite.split()) >= 80
    h = Harness(tmp_path, {POEM: long_rewrite}, max_new_tokens=200)
    assert h.step_one(POEM).kept


def test_truncated_rewrite(tmp_path):
    long_rewrite = "Write a detailed poem about the sea with a lighthouse, a storm, two sailors and a dog."  # 18 words
    h = Harness(tmp_path, {POEM: long_rewrite, "Write a haiku.": KEPT}, max_new_tokens=16)
    cut, fine = h.env.step([State("a", POEM), State("b", "Write a haiku.")], ["deepen", "deepen"])
    assert cut.finish_reason == "length"
    _assert_eliminated(cut, TRUNCATED, State("a", POEM))
    assert fine.finish_reason == "stop" and fine.kept


@pytest.mark.parametrize("reply", [POEM, "  write a   POEM. ", f'"{POEM}"', f"Rewritten Prompt: {POEM}"])
def test_unchanged_rewrite_is_no_gain_without_asking_the_reviewer(tmp_path, reply):
    h = Harness(tmp_path, {POEM: reply})
    t = h.step_one(POEM)
    _assert_eliminated(t, NO_GAIN, State("s1", POEM))
    assert t.review is None and h.judge.generate_calls == 0


@pytest.mark.parametrize("verdict", ["No.", "**NO**", '{"answer": "no"}', "They are equal."])
def test_reviewer_saying_no_gain_eliminates(tmp_path, verdict):
    h = Harness(tmp_path, {POEM: KEPT}, {KEPT: verdict})
    t = h.step_one(POEM, depth=1, step=2)
    _assert_eliminated(t, NO_GAIN, State("s1", POEM, depth=1, step=2))
    assert t.review.gain is False and t.review.scores == {"judge": 0.0}
    assert h.judge.generate_calls == 1


def test_unparseable_verdict_is_no_gain_and_counted(tmp_path):
    h = Harness(tmp_path, {POEM: KEPT}, {KEPT: "Hmm, hard to say."})
    t = h.step_one(POEM)
    _assert_eliminated(t, NO_GAIN, State("s1", POEM))
    assert t.review.gain is None and t.review.parse_failures == 1 and t.review.scores == {"judge": None}


def test_mixed_batch_keeps_order_and_reviews_only_survivors(tmp_path):
    rewrites = {
        "A.": "Write a limerick about a cat who loves rain.",
        "B.": "Sorry, I can't.",
        "C.": "The it.",
        "D.": "Explain the water cycle with three stages and one diagram idea.",
    }
    h = Harness(tmp_path, rewrites, {rewrites["D."]: "No"})
    states = [State(str(i), text) for i, text in enumerate(rewrites)]
    out = h.env.step(states, ["deepen"] * 4)
    assert [t.eliminated for t in out] == [None, REFUSAL, EMPTY, NO_GAIN]
    assert [t.reward for t in out] == [1.0, 0.0, 0.0, 0.0]
    assert [t.state for t in out] == states
    assert h.judge.generate_calls == 2
    assert set(REASONS) == {
        NO_GAIN,
        REFUSAL,
        EMPTY,
        TEMPLATE_WORDS,
        TRUNCATED,
        LLM_ERROR,
        ANSWERED,
        COPIED,
        DRIFTED,
        SHRUNK,
    }


def test_screen_order():
    assert screen("Write a poem.") is None
    assert screen("Write a poem.", "error") == LLM_ERROR
    assert screen("Write a poem.", "length") == TRUNCATED
    assert screen("Sorry.", "length") == REFUSAL  # a short refusal is a refusal, cut or not
    assert screen("the and", "length") == EMPTY
    assert screen("Sorry, the Given Prompt is unclear.") == TEMPLATE_WORDS
    assert screen("Sorry, it.") == REFUSAL


def test_same_instruction_with_a_new_input_is_not_no_gain(tmp_path):
    h = Harness(tmp_path, {"Average these.": "Average these.\n\nInput:\n| Jan | 120 |\n| Feb | 95 |"})
    t = h.env.step([State("s1", "Average these.")], ["complicate_input"])[0]
    assert t.kept
    assert t.next_state.input == "| Jan | 120 |\n| Feb | 95 |"


# ---------------------------------------------------------------- per-row seeds


def test_requests_carry_the_per_row_seeds(tmp_path):
    h = Harness(tmp_path, {POEM: KEPT}, run_seed=11)
    h.step_one(POEM, step=4)
    assert h.rewrite_requests[0].seed == derive_seed(11, "s1", 4, "rewrite")
    assert h.judge_requests[0].seed == derive_seed(11, "s1", 4, "review")
    assert h.rewrite_requests[0].sampling == SamplingParams(temperature=0.7, max_new_tokens=64)


def test_derive_seed():
    assert derive_seed(1, "row", 0) == derive_seed(1, "row", 0)
    assert 0 <= derive_seed(1, "row", 0) < 2**63
    assert (
        len(
            {
                derive_seed(1, "row", 0),
                derive_seed(2, "row", 0),
                derive_seed(1, "row2", 0),
                derive_seed(1, "row", 1),
                derive_seed(1, "row", 0, "review"),
            }
        )
        == 5
    )


def test_same_run_seed_same_requests_different_rows_different_seeds(tmp_path):
    rewrites = {"A.": "Write a limerick about a cat.", "B.": "Describe a storm at sea in detail."}
    states = [State("r1", "A."), State("r2", "B."), State("r1", "A.", step=1)]

    def requests(run_seed, folder):
        h = Harness(tmp_path / folder, rewrites, run_seed=run_seed, ledger=Ledger(tmp_path / folder / "l.sqlite"))
        h.env.step(states, ["deepen", "deepen", "deepen"])
        return [(r.messages, r.seed) for r in h.rewrite_requests]

    first, again, other = requests(3, "x"), requests(3, "y"), requests(4, "z")
    assert first == again  # a rerun in a fresh folder sends exactly the same requests
    assert len(first) == 3 and len({seed for _, seed in first}) == 3  # other row or other step: other seed
    assert [m for m, _ in other] == [m for m, _ in first]
    assert {s for _, s in other}.isdisjoint({s for _, s in first})


def test_rerun_on_the_same_ledger_is_answered_from_it(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    first = Harness(tmp_path, {POEM: KEPT}, ledger=ledger)
    t1 = first.step_one(POEM)
    second = Harness(tmp_path, {POEM: "something else entirely, never asked"}, ledger=ledger)
    t2 = second.step_one(POEM)
    assert second.rewriter.generate_calls == 0 and second.judge.generate_calls == 0
    assert (t2.next_state, t2.reward, t2.eliminated) == (t1.next_state, t1.reward, t1.eliminated)
