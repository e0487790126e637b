"""What every trainer shares: the instructor's answer format and mask, episodes, the reward, policy folders."""

import shutil

import pytest
import torch

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.actions import load_actions
from teams_rl.env.environment import State
from teams_rl.policy import load_policy
from teams_rl.policy.action_head import add_action_head
from teams_rl.policy.instructor import (
    InstructorFormat,
    InstructorPolicy,
    state_probs,
    write_policy_meta,
)
from teams_rl.policy.rollout import EpisodePool
from teams_rl.policy.train import main as train_main
from tests.policy_helpers import make_setup

ACTIONS = load_actions()
NAMES = [a.name for a in ACTIONS]
STATES = [State(f"s{i}", f"Explain topic {i}.", "x = 1" if i == 2 else "") for i in range(4)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_format_numbers_the_menu_and_parses_exactly(tokenizer):
    fmt = InstructorFormat(ACTIONS, tokenizer)
    text = fmt.prompt_text(STATES[2])
    assert fmt.menu.startswith("1. add constraints:") and "6. complicate input:" in fmt.menu
    assert "Input: x = 1" in text and "Explain topic 2." in text
    assert fmt.parse("2") == NAMES[1] and fmt.parse(" 6\n") == NAMES[5]
    for bad in ("7", "0", "22", "deepen", "2.", ""):
        assert fmt.parse(bad) is None, bad
    assert [fmt.action_of_token(t) for t in fmt.answer_token_ids] == NAMES
    assert fmt.action_of_token(0) is None


def test_action_head_starts_uniform_in_every_state_and_says_only_menu_digits(tiny_model_dir, tokenizer):
    import copy

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fmt = InstructorFormat(ACTIONS, tokenizer)
    batch = tokenizer([fmt.prompt_text(s) for s in STATES], return_tensors="pt", padding=True)
    before = model.generate(**batch, max_new_tokens=1, do_sample=True, top_k=0)[:, -1]
    assert not set(before.tolist()) <= set(fmt.answer_token_ids)  # a random model says anything
    handle = add_action_head(model, fmt.answer_token_ids)
    probs = state_probs(model, fmt, STATES)
    assert torch.allclose(probs, torch.full_like(probs, 1 / 6), atol=1e-3)  # uniform, whatever the state
    torch.manual_seed(0)
    after = model.generate(**batch, max_new_tokens=1, do_sample=True, top_k=0)[:, -1]
    assert set(after.tolist()) <= set(fmt.answer_token_ids)
    logits = model(**batch).logits[:, -1].float()
    assert torch.isfinite(torch.log_softmax(logits, -1) * torch.softmax(logits, -1)).all()  # entropy stays finite
    reference = copy.deepcopy(model)  # a reference copy keeps its own (zero) head
    with torch.no_grad():
        model.action_head.weight.normal_()
    moved = state_probs(model, fmt, STATES)
    assert (moved - moved.mean(0)).abs().max() > 1e-3  # the head reads the state through the hidden state
    assert torch.allclose(state_probs(reference, fmt, STATES), probs)
    assert not any("lm_head" in n or "embed" in n for n, _ in model.action_head.named_parameters())
    handle.remove()
    assert not torch.equal(model(**batch).logits[:, -1].float(), logits)


def test_the_state_prompt_shows_the_rewrites_so_far(tokenizer):
    fmt = InstructorFormat(ACTIONS, tokenizer)
    assert "Rewrites so far: none (the seed)" in fmt.prompt_text(STATES[0])
    evolved = State("s0", "Explain topic 0 in detail.", depth=2, step=2, actions=("deepen", "add_constraints"))
    assert "Rewrites so far: deepen, then add constraints" in fmt.prompt_text(evolved)


def test_episode_pool_carries_kept_rewrites_until_depth():
    from teams_rl.env.environment import Transition

    seeds = [State("a", "A."), State("b", "B."), State("c", "C.")]
    pool = EpisodePool(seeds, depth=2, slots=2)
    assert [pool.state(i).seed_id for i in range(2)] == ["a", "b"]
    child = State("a", "A, deeper.", depth=1, step=1, actions=("deepen",))
    pool.advance(0, Transition(seeds[0], "deepen", child, "A, deeper."))
    assert pool.state(0) is child
    grandchild = State("a", "A, deeper still.", depth=2, step=2)
    pool.advance(0, Transition(child, "deepen", grandchild, "x"))  # reached depth: next seed
    assert pool.state(0).seed_id == "c" and pool.episodes_done == 1
    pool.advance(1, Transition(seeds[1], "deepen", seeds[1], "x", eliminated="no_gain"))  # failed: next seed
    assert pool.state(1).seed_id == "a" and pool.episodes_done == 2


def test_reward_penalises_unparseable_and_continues_with_the_best_of_a_group(tmp_path, monkeypatch):
    # one rewriter sample per (state, action), so a repeat is the same request
    setup, backend = make_setup(tmp_path, monkeypatch, preferred="deepen", depth=3, n_seeds=4, rewrite_samples=1)
    reward = setup.reward(lambda a: a if a in NAMES else None)
    start = setup.pool.state(0)
    rewards = reward([0, 0, 0, 1], ["concretize", "deepen", "nonsense", "add_constraints"])
    assert rewards[1] > 0.9 and rewards[0] == 0.0 and rewards[3] == 0.0
    assert rewards[2] == setup.policy_args.parse_penalty
    assert reward.stats.unparseable == 1 and reward.stats.kept == 1
    assert reward.history[-1]["parse_failure_rate"] == 0.25
    assert setup.pool.state(0).lineage == (start.instruction,) and setup.pool.state(0).actions == ("deepen",)
    assert setup.pool.episodes_done == 1 and setup.pool.state(1).step == 0  # its only rewrite failed: restart
    # the same (state, action) again is answered by the ledger: repeated pairs are not paid twice
    paid = backend.generate_calls
    assert paid == 3
    again = setup.env.step([start], ["deepen"])
    assert backend.generate_calls == paid and again[0].kept


@pytest.fixture
def saved_instructor(tiny_model_dir, tmp_path):
    folder = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, folder)
    write_policy_meta(folder, "instructor", NAMES, algorithm="test", base_model=tiny_model_dir)
    return folder


def test_instructor_policy_loads_a_folder_and_selects(saved_instructor):
    greedy = load_policy(str(saved_instructor), ACTIONS)
    assert isinstance(greedy, InstructorPolicy)
    picks = greedy.select(STATES)
    assert len(picks) == 4 and set(picks) <= set(NAMES)
    probs = greedy.probabilities(STATES)
    assert probs.shape == (4, 6) and torch.allclose(probs.sum(-1), torch.ones(4))
    assert picks == [NAMES[int(i)] for i in probs.argmax(-1)]
    sampled = [load_policy(str(saved_instructor), ACTIONS, run_seed=3, sample=True).select(STATES) for _ in range(2)]
    assert sampled[0] == sampled[1]  # per-state seeds


def test_policy_folder_errors(saved_instructor, tmp_path):
    with pytest.raises(TeamsRLError, match="not a trained policy folder"):
        load_policy(str(tmp_path), ACTIONS)
    with pytest.raises(TeamsRLError, match="missing now"):
        load_policy(str(saved_instructor), ACTIONS[:3])


def test_synthesis_runs_with_a_trained_policy_folder(saved_instructor, tmp_path, monkeypatch):
    from teams_rl.env.dataset import load_rows
    from teams_rl.synthesize import run as synthesize
    from tests.policy_helpers import write_seeds

    setup, _ = make_setup(tmp_path, monkeypatch)  # patches the backends with the scripted ones
    setup.ledger.close()
    summary = synthesize.main(
        [
            "--dataset_name",
            str(write_seeds(tmp_path, 4)),
            "--output_dir",
            str(tmp_path / "s"),
            "--policy",
            str(saved_instructor),
            "--depth",
            "1",
            "--reviewer_modes",
            "judge_logprob:1",
        ]
    )
    rows, rejected, _ = load_rows(tmp_path / "s" / "dataset")
    assert summary["lineage"]["policy"].startswith("test:")
    assert len(rows) + len(rejected) == 4
    assert all(r["actions"][0] in NAMES for r in rows)


def test_unknown_algorithm_is_a_user_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm: sarsa\n", encoding="utf-8")
    with pytest.raises(TeamsRLError, match="unknown algorithm 'sarsa'"):
        train_main(["--config", str(recipe)])
