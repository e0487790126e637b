"""What the policy is trained on is what the comparison counts: the reward formula, one set of screening settings
for training and synthesis, the stratified held-out split, the headroom table and its summary."""

import json
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest

from teams_rl.core.recipes import parse_args
from teams_rl.env.build import EnvArguments, ReviewArguments, SeedArguments, select_seeds
from teams_rl.env.environment import NO_GAIN, EvolutionEnv, State
from teams_rl.env.reviewer import Reviewer
from teams_rl.env.screens import ANSWERED, ScreenArguments, Screens
from teams_rl.env.seeds import BUILTIN, load_seeds, split_seeds
from teams_rl.llm.base import SamplingParams
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.role_client import RoleClient
from teams_rl.llm.scripted import ScriptedBackend
from teams_rl.policy.headroom import best_action, best_by_category, rows_per_call, summarize

RECIPES = Path(__file__).parents[1] / "recipes" / "smollm2-135m"


# ---------------------------------------------------------------- the reward


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_reward_is_kept_times_one_plus_weighted_quality(tmp_path, weight):
    from teams_rl.env.actions import load_actions

    replies = {
        "Write a poem.": "Write a four-line poem about the sea that names a lighthouse.",
        "Add 17 and 25.": "The answer is 42.",
        "Name a colour.": "Name a colour.",
    }

    def rewrite(request) -> str:
        return next(v for k, v in replies.items() if k in request.messages[-1]["content"])

    rewriter = ScriptedBackend(rewrite)
    judge = ScriptedBackend(lambda r: "Yes.", model_id="judge")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    env = EvolutionEnv(
        {a.name: a for a in load_actions()},
        RoleClient(rewriter, ledger, "rewriter"),
        Reviewer(RoleClient(judge, ledger, "reviewer"), {"judge": 1.0}),
        SamplingParams(temperature=0.7, max_new_tokens=64),
        quality_weight=weight,
        screens=Screens(ScreenArguments(), embedder=None),
    )
    states = [State("x", "Write a poem."), State("y", "Add 17 and 25."), State("z", "Name a colour.")]
    kept, answered, same = env.step(states, ["add_constraints"] * 3)
    assert kept.kept and kept.quality == 1.0 and kept.reward == pytest.approx(1.0 + weight * 1.0)
    assert answered.eliminated == ANSWERED and answered.reward == 0.0  # "The answer is 42." is no instruction
    assert same.eliminated == NO_GAIN and same.reward == 0.0
    ledger.close()


def test_sample_index_enters_the_request_seed_and_sample_zero_keeps_the_old_one(tmp_path):
    from teams_rl.env.actions import load_actions
    from teams_rl.env.environment import derive_seed

    seen = []
    rewriter = ScriptedBackend(lambda r: seen.append(r.seed) or "Write a long poem about winter nights.")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    env = EvolutionEnv(
        {a.name: a for a in load_actions()},
        RoleClient(rewriter, ledger, "rewriter"),
        Reviewer(None, {"embedding": 1.0}, embedder=_FakeEmbedder(), min_novelty=0.0),
        SamplingParams(),
        run_seed=3,
    )
    state = State("s", "Write a poem about winter.")
    transitions = env.step([state] * 3, ["deepen"] * 3, [0, 1, 2])
    assert [t.sample for t in transitions] == [0, 1, 2]
    assert seen[0] == derive_seed(3, "s", 0, "rewrite") and len(set(seen)) == 3
    ledger.close()


class _FakeEmbedder:
    def encode(self, texts, **_):
        import numpy as np

        return np.ones((len(texts), 4)) / 2.0


# ---------------------------------------------------------------- one definition for both stages


SHARED = [f.name for f in fields(EnvArguments)] + [f.name for f in fields(ReviewArguments)]
REWRITE_SIDE = [n for n in SHARED if n not in ("screen_repetition", "screen_language", "screen_min_relevance")]


def _values(recipe: Path) -> dict:
    from teams_rl.policy.train import argument_classes
    from teams_rl.synthesize.args import ARGUMENTS

    argv = ["--config", str(recipe)]
    if "bf16: true" in recipe.read_text():  # a GPU recipe: TrainingArguments refuses bf16 on a CPU-only machine
        argv += ["--use_cpu", "true"]
    classes = ARGUMENTS if "synthesize" in recipe.parts else argument_classes(argv)
    parsed, _ = parse_args(classes, argv)
    shared = [p for p in parsed if isinstance(p, EnvArguments | ReviewArguments)]
    return {n: getattr(p, n) for p in shared for n in SHARED if hasattr(p, n)}


def test_training_and_synthesis_parse_the_same_screening_and_reward_settings():
    from teams_rl.policy.train import argument_classes
    from teams_rl.synthesize.args import ARGUMENTS

    assert EnvArguments in ARGUMENTS and ReviewArguments in ARGUMENTS
    for algorithm in ("ppo", "grpo", "classic"):
        assert EnvArguments in argument_classes(["--algorithm", algorithm])
    pairs = {RECIPES / "synthesize" / "config_random.yaml": sorted((RECIPES / "policy").glob("config_*.yaml"))}
    llama = RECIPES.parent / "llama-3.1-8b"
    pairs[llama / "synthesize" / "config.yaml"] = sorted((llama / "policy").glob("config_*.yaml"))
    for synthesis_recipe, policy_recipes in pairs.items():
        synthesis = _values(synthesis_recipe)
        assert len(policy_recipes) >= 2, policy_recipes
        for recipe in policy_recipes:
            policy = _values(recipe)
            assert {k: policy[k] for k in REWRITE_SIDE} == {k: synthesis[k] for k in REWRITE_SIDE}, recipe


def test_the_rewriter_has_no_length_key_of_its_own():
    from teams_rl.policy.train import RewriterArguments

    names = {f.name for f in fields(RewriterArguments)}
    assert "rewriter_max_new_tokens" not in names and "rewriter_temperature" in names


# ---------------------------------------------------------------- the held-out split


def test_stratified_split_puts_every_category_on_both_sides_and_folds_partition():
    seeds = load_seeds(BUILTIN)
    categories = Counter(s.category for s in seeds)
    assert len(categories) > 5 and "" not in categories
    held_out_union = []
    for fold in range(3):
        held = split_seeds(seeds, "held_out", folds=3, fold=fold, seed=0)
        train = split_seeds(seeds, "train", folds=3, fold=fold, seed=0)
        assert {s.id for s in held}.isdisjoint({s.id for s in train}) and len(held) + len(train) == len(seeds)
        for side in (held, train):
            assert {s.category for s in side} == set(categories)  # every category on both sides
        held_out_union += [s.id for s in held]
    assert sorted(held_out_union) == sorted(s.id for s in seeds)  # each seed held out exactly once
    other = split_seeds(seeds, "held_out", folds=3, fold=0, seed=1)
    assert {s.id for s in other} != {s.id for s in split_seeds(seeds, "held_out", folds=3, fold=0, seed=0)}


def test_split_keys_select_the_same_seeds_in_every_stage_and_bad_keys_fail():
    from teams_rl.core.errors import TeamsRLError

    train = select_seeds(SeedArguments(dataset_name=BUILTIN, split="train"))
    held = select_seeds(SeedArguments(dataset_name=BUILTIN, split="held_out"))
    assert {s.id for s in train}.isdisjoint({s.id for s in held})
    assert len(select_seeds(SeedArguments(dataset_name=BUILTIN, split="held_out", max_seeds=5))) == 5
    with pytest.raises(TeamsRLError, match="split must be one of") as err:
        select_seeds(SeedArguments(dataset_name=BUILTIN, split="test"))
    assert err.value.field == "split"
    with pytest.raises(TeamsRLError):
        select_seeds(SeedArguments(dataset_name=BUILTIN, split="train", split_folds=3, split_fold=3))


# ---------------------------------------------------------------- headroom


def _table(keep: dict[tuple[str, str], list[int]], categories: dict[str, str]) -> list[dict]:
    return [
        {
            "state": f"{seed}/0",
            "seed_id": seed,
            "category": categories[seed],
            "action": action,
            "sample": k,
            "kept": bool(v),
            "reward": float(v),
        }
        for (seed, action), values in keep.items()
        for k, v in enumerate(values)
    ]


def test_headroom_summary_on_a_known_table():
    # a always kept, b never: uniform keeps 1/2, the best single action (a, chosen on the other fold) keeps all
    cats = {"s1": "x", "s2": "x", "s3": "y", "s4": "y"}
    keep = {(s, "a"): [1, 1] for s in cats} | {(s, "b"): [0, 0] for s in cats}
    summary = summarize(_table(keep, cats), ["a", "b"], {"s1": 0, "s2": 1, "s3": 0, "s4": 1})
    assert summary["uniform_keep_rate"] == 0.5 and summary["keep_rates"]["best_single"] == 1.0
    assert summary["rows_ratio"]["best_single"] == pytest.approx(rows_per_call(1.0) / rows_per_call(0.5))
    assert summary["rows_ratio"]["oracle"] == pytest.approx(summary["rows_ratio"]["best_single"])
    assert summary["per_action"]["a"]["keep_rate"] == 1.0 and summary["per_action"]["b"]["mean_reward"] == 0.0


def test_headroom_chooses_on_other_folds_and_the_oracle_reads_the_state():
    # category x wants a, category y wants b; a constant action gains nothing, the oracle everything
    cats = {"s1": "x", "s2": "x", "s3": "y", "s4": "y"}
    keep = {}
    for s, c in cats.items():
        keep[(s, "a")] = [1] if c == "x" else [0]
        keep[(s, "b")] = [0] if c == "x" else [1]
    summary = summarize(_table(keep, cats), ["a", "b"], {"s1": 0, "s2": 1, "s3": 0, "s4": 1})
    assert summary["rows_ratio"]["best_single"] == pytest.approx(1.0)
    assert summary["keep_rates"]["best_per_category"] == 1.0 and summary["keep_rates"]["oracle"] == 1.0
    assert summary["rows_ratio"]["oracle"] == pytest.approx((1 / 2) / (0.5 / 1.5))


def test_best_action_pools_kept_over_tried_and_breaks_ties_by_name():
    # a: 4 of 5 kept (rates per state 1.0 and 0.0), b: 2 of 3 (rates 1.0 and 0.5): pooled, a wins; a mean of the
    # per-state rates would pick b. The bench and the headroom summary both choose with this one definition.
    cats = {"s1": "x", "s2": "y"}
    rows = _table({("s1", "a"): [1, 1, 1, 1], ("s2", "a"): [0], ("s1", "b"): [1], ("s2", "b"): [1, 0]}, cats)
    assert best_action(rows) == "a"
    tie = _table({("s1", "a"): [1, 0], ("s1", "b"): [0, 1]}, cats)
    assert best_action(tie) == best_action(list(reversed(tie))) == "b"
    single, per_category = best_by_category(rows)
    assert single == "a" and per_category == {"x": "b", "y": "b"}  # x: both always kept, the tie goes to b
    with pytest.raises(ValueError, match="no rows"):
        best_action([])


def test_headroom_per_category_choice_falls_back_to_the_single_action_and_needs_two_folds():
    # category z exists only in fold 1: its state takes the best single action of fold 0 (a), not its own best (b)
    cats = {"s1": "x", "s2": "x", "s3": "z"}
    keep = {("s1", "a"): [1], ("s1", "b"): [0], ("s2", "a"): [1], ("s2", "b"): [0], ("s3", "a"): [0], ("s3", "b"): [1]}
    summary = summarize(_table(keep, cats), ["a", "b"], {"s1": 0, "s2": 1, "s3": 1})
    # single: s1 (fold 0) chooses on s2, s3, where a and b tie at 1/2 -> b, keeps 0; s2, s3 choose on s1: a
    assert summary["keep_rates"]["best_single"] == pytest.approx((0 + 1 + 0) / 3)
    # per category: s1 chooses on s2 (its category x): a, keeps 1; s2 on s1: a; s3 (z, unseen) falls back to a
    assert summary["keep_rates"]["best_per_category"] == pytest.approx((1 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="two folds"):
        summarize(_table(keep, cats), ["a", "b"], dict.fromkeys(cats, 0))


def test_explore_writes_the_table_and_training_then_pays_no_call_for_depth_zero(tmp_path, monkeypatch, capsys):
    from teams_rl import cli
    from teams_rl.llm.factory import BackendPool
    from tests.policy_helpers import make_scorer, rewriter_reply, write_seeds

    backend = ScriptedBackend(rewriter_reply, make_scorer("deepen"), model_id="scripted")
    monkeypatch.setattr(BackendPool, "get", lambda self, settings, role: backend)
    seeds = write_seeds(tmp_path, 6)
    common = [
        "--dataset_name",
        str(seeds),
        "--output_dir",
        str(tmp_path / "run"),
        "--rewriter_model",
        "scripted",
        "--reviewer_modes",
        "judge_logprob:1",
        "--screen_min_similarity",
        "0",
        "--screen_breadth_min_similarity",
        "0",
        "--screen_min_novelty",
        "0",
        "--rewrite_samples",
        "2",
        "--depth",
        "1",
    ]
    assert cli.main(["explore", "--config", str(RECIPES / "policy" / "config_classic.yaml"), *common]) == 0
    out = capsys.readouterr().out
    assert "Headroom" in out and "oracle" in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "explore" / "table.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 6 * 2 and {r["sample"] for r in rows} == {0, 1}
    assert {r["action"] for r in rows if r["kept"]} == {"deepen"}  # the scripted judge pays deepen only
    summary = json.loads((tmp_path / "run" / "explore" / "summary.json").read_text())
    assert summary["per_action"]["deepen"]["keep_rate"] == 1.0 and summary["uniform_keep_rate"] == pytest.approx(1 / 6)
    assert (tmp_path / "run" / "explore" / "headroom.png").stat().st_size > 0
    calls = Ledger(tmp_path / "run" / "ledger.sqlite")
    before = calls.db.execute("select count(*) from calls where role = 'rewriter'").fetchone()[0]
    calls.close()
    assert before == 6 * 6 * 2
    train = [
        "train-policy",
        "--config",
        str(RECIPES / "policy" / "config_classic.yaml"),
        *common,
        "--iterations",
        "2",
        "--rollout_steps",
        "2",
        "--max_seeds",
        "6",
    ]
    assert cli.main(train) == 0
    calls = Ledger(tmp_path / "run" / "ledger.sqlite")
    after = calls.db.execute("select count(*) from calls where role = 'rewriter'").fetchone()[0]
    calls.close()
    assert after == before  # depth 1 episodes: every rewrite training asked for was in the table


def test_expected_reward_of_a_policy_on_the_table():
    from teams_rl.policy.headroom import expected_reward

    cats = {"s1": "x", "s2": "y"}
    keep = {(s, "a"): [1, 1] for s in cats} | {(s, "b"): [0, 0] for s in cats}
    rows = _table(keep, cats)
    uniform = expected_reward(rows, {f"{s}/0": {"a": 0.5, "b": 0.5} for s in cats})
    always_a = expected_reward(rows, {f"{s}/0": {"a": 1.0, "b": 0.0} for s in cats})
    assert uniform == {"expected_reward": 0.5, "keep_rate": 0.5, "states": 2}
    assert always_a["expected_reward"] == 1.0 and always_a["keep_rate"] == 1.0


def test_cross_fit_oracle_is_not_fooled_by_one_lucky_sample():
    # two actions that each keep one of their two samples, never the same one: the in-sample oracle credits every
    # state with 0.5, while the cross-fit oracle chooses on one sample and is scored on the other, where its choice
    # was always dropped: it earns only what a choice made without seeing the scored sample earns
    cats = {"s1": "x", "s2": "x", "s3": "y", "s4": "y"}
    keep = {
        ("s1", "a"): [1, 0],
        ("s1", "b"): [0, 1],
        ("s2", "a"): [0, 1],
        ("s2", "b"): [1, 0],
        ("s3", "a"): [1, 0],
        ("s3", "b"): [0, 1],
        ("s4", "a"): [0, 1],
        ("s4", "b"): [1, 0],
    }
    summary = summarize(_table(keep, cats), ["a", "b"], {"s1": 0, "s2": 1, "s3": 0, "s4": 1})
    assert summary["keep_rates"]["uniform"] == 0.5 and summary["keep_rates"]["oracle"] == 0.5
    assert summary["keep_rates"]["oracle_cross_fit"] == 0.0  # the other sample always points the wrong way
    # a state whose best action is real: a kept on both samples, b on neither -> chosen and scored as kept
    steady = {(s, "a"): [1, 1] for s in cats} | {(s, "b"): [0, 0] for s in cats}
    summary = summarize(_table(steady, cats), ["a", "b"], {"s1": 0, "s2": 1, "s3": 0, "s4": 1})
    assert summary["keep_rates"]["oracle_cross_fit"] == 1.0
    assert summary["rows_ratio"]["oracle_cross_fit"] == pytest.approx(rows_per_call(1.0) / rows_per_call(0.5))
    # ties share the choice: equal means on the other sample split the score between the tied actions
    tied = {(s, "a"): [1, 1] for s in cats} | {(s, "b"): [0, 1] for s in cats}
    summary = summarize(_table(tied, cats), ["a", "b"], {"s1": 0, "s2": 1, "s3": 0, "s4": 1})
    # sample 0 scored: chosen on sample 1 where a and b tie -> (1 + 0) / 2; sample 1 scored: a chosen -> 1
    assert summary["keep_rates"]["oracle_cross_fit"] == pytest.approx(0.75)


def test_cross_fit_oracle_needs_two_samples():
    cats = {"s1": "x", "s2": "y"}
    keep = {(s, "a"): [1] for s in cats} | {(s, "b"): [0] for s in cats}
    summary = summarize(_table(keep, cats), ["a", "b"], {"s1": 0, "s2": 1})
    assert "oracle_cross_fit" not in summary["rows_ratio"] and "oracle_cross_fit" not in summary["keep_rates"]


def test_per_state_keep_is_the_policy_weighted_cell_mean():
    from teams_rl.policy.headroom import per_state_keep

    cats = {"s1": "x", "s2": "y"}
    keep = {("s1", "a"): [1, 0], ("s1", "b"): [0, 0], ("s2", "a"): [1, 1], ("s2", "b"): [1, 0]}
    rows = _table(keep, cats)
    got = per_state_keep(rows, {"s1/0": {"a": 0.8, "b": 0.2}, "s2/0": {"a": 0.25, "b": 0.75}})
    assert got == pytest.approx({"s1/0": 0.8 * 0.5, "s2/0": 0.25 * 1.0 + 0.75 * 0.5})
    assert per_state_keep(rows, {"s1/0": {"a": 1.0, "b": 0.0}}) == {"s1/0": 0.5}  # states without probs are left out
