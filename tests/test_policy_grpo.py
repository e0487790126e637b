"""GRPO policy training on a tiny random Llama with scripted rewriter/reviewer: it learns the rewarded action,
keeps its answers on the menu, shows kept rewrites as next states, saves a policy folder that loads back, and
penalises and counts answers that name no action."""

import json
import math
from pathlib import Path

import pytest
from trl import ModelConfig

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.recipes import parse_args
from teams_rl.env.build import EnvArguments, ReviewArguments, ReviewerArguments, SeedArguments
from teams_rl.policy import grpo, load_policy
from teams_rl.policy.grpo import CONFIG_CLASSES, GRPOPolicyConfig, instructor_reward, run_settings, train
from teams_rl.policy.instructor import InstructorFormat, InstructorPolicy, read_policy_meta, write_policy_meta
from teams_rl.policy.train import PolicyArguments, RewriterArguments
from tests.policy_helpers import ACTIONS, make_setup

NAMES = [a.name for a in ACTIONS]
RECIPE = Path(__file__).parent.parent / "recipes" / "smollm2-135m" / "policy" / "config_grpo.yaml"


def grpo_config(run_dir: Path, **overrides) -> GRPOPolicyConfig:
    # 2 states x 8 answers per step: a group of 8 holds the rewarded action with probability ~0.77 at the start
    settings = {
        "output_dir": str(run_dir),
        "max_steps": 20,
        "num_generations": 8,
        "per_device_train_batch_size": 16,
        "learning_rate": 3e-3,
        "beta": 0.04,
        "seed": 0,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
    }
    return GRPOPolicyConfig(**{**settings, **overrides})


def lora(model_dir: str) -> ModelConfig:
    # no lm_head: the action head (trained in full) gives the answer logits
    return ModelConfig(
        model_name_or_path=model_dir,
        use_peft=True,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


def untrained_policy(model_dir: str, folder: Path) -> InstructorPolicy:
    """The starting model seen through the same loader as a trained policy (files linked, not copied)."""
    folder.mkdir()
    for f in Path(model_dir).iterdir():
        (folder / f.name).symlink_to(f)
    write_policy_meta(folder, "instructor", NAMES, algorithm="none")
    return InstructorPolicy(folder, ACTIONS)


def p_deepen(policy: InstructorPolicy, states) -> float:
    return float(policy.probabilities(states)[:, policy.format.names.index("deepen")].mean())


def log_history(setup) -> list[dict]:
    return json.loads((setup.run_dir / "trainer_state.json").read_text())["log_history"]


def test_grpo_learns_the_rewarded_action_and_saves_a_loadable_policy(tmp_path, monkeypatch, tiny_model_dir):
    setup, _ = make_setup(tmp_path, monkeypatch, preferred="deepen", instructor_model=tiny_model_dir)
    states = list(setup.pool.seeds)
    before = p_deepen(untrained_policy(tiny_model_dir, tmp_path / "before"), states)

    config, model_config = grpo_config(setup.run_dir), lora(tiny_model_dir)
    assert run_settings(config, model_config) == (str(setup.run_dir), 0, tiny_model_dir)
    folder = train(setup, config, model_config)

    assert folder == setup.policy_dir
    meta = read_policy_meta(folder)
    assert meta["probe_after"]["deepen"] > meta["probe_before"]["deepen"] + 0.3
    meta = {k: v for k, v in meta.items() if not k.startswith("probe_")}
    assert meta == {
        "kind": "instructor",
        "actions": NAMES,
        "algorithm": "grpo",
        "base_model": tiny_model_dir,
        "steps": 20,
        "stopped": None,
        "action_head": True,
        "answer_token_ids": meta["answer_token_ids"],
        "temperature": 1.0,
    }
    assert abs(meta_probe_before(folder)["deepen"] - 1 / 6) < 1e-3  # training starts from uniform
    assert (folder / "adapter_config.json").is_file()
    policy = load_policy(str(folder), ACTIONS)
    after = p_deepen(policy, states)
    assert before < 0.3 and after > 0.6, (before, after)  # measured: 0.17 -> 0.92 (seeds 0-2: 0.92-0.94)
    picks = policy.select(states)
    assert set(picks) <= set(NAMES) and picks.count("deepen") >= len(states) // 2

    steps = [h for h in log_history(setup) if "reward" in h]
    assert len(steps) == 20
    # the mask is in the training log-probs too: entropy over 6 menu tokens, not the 49k vocabulary
    assert all(h["entropy"] <= math.log(len(NAMES)) + 1e-3 for h in steps)
    assert all(h["env/parse_failure_rate"] == 0.0 and h["completions/max_length"] == 1 for h in steps)
    assert math.isfinite(steps[-1]["kl"]) and steps[-1]["kl"] > 0
    assert steps[-1]["env/action_deepen"] > steps[0]["env/action_deepen"]
    assert {"env/acceptance_rate", "env/reward_mean", "calls/rewriter", "calls/reviewer"} <= set(steps[-1])
    assert (setup.run_dir / "plots" / "reward.png").is_file()


def meta_probe_before(folder) -> dict:
    return read_policy_meta(folder)["probe_before"]


def test_prompts_show_kept_rewrites_as_next_states(tmp_path, monkeypatch, tiny_model_dir):
    setup, _ = make_setup(
        tmp_path, monkeypatch, preferred="deepen", instructor_model=tiny_model_dir, depth=3, n_seeds=4
    )
    shown, step = [], setup.env.step

    def recording(states, actions, samples=None):
        shown.extend(s.depth for s in states)
        return step(states, actions, samples)

    monkeypatch.setattr(setup.env, "step", recording)
    # the reward function refuses a prompt that is not its slot's current state, so a stale prompt would fail here
    train(setup, grpo_config(setup.run_dir, max_steps=6, beta=0.0, disable_tqdm=False), lora(tiny_model_dir))
    assert max(shown) >= 1  # rewrites kept at step t were the prompts of a later step
    assert setup.pool.episodes_done >= 1


def test_unparseable_answers_get_the_penalty_and_are_counted(tmp_path, monkeypatch, tiny_model_dir):
    from transformers import AutoTokenizer

    setup, _ = make_setup(tmp_path, monkeypatch, preferred="deepen", parse_penalty=-0.7)
    fmt = InstructorFormat(setup.actions, AutoTokenizer.from_pretrained(tiny_model_dir))
    fn, reward = instructor_reward(setup, fmt)
    slots = [0, 0, 1, 1]
    prompts = [list(fmt.messages(setup.pool.state(s))) for s in slots]
    deepen = str(NAMES.index("deepen") + 1)
    answers = ["banana", deepen, deepen * 2, f" {deepen}\n"]
    logged = {}
    rewards = fn(
        prompts=prompts,
        completions=[[{"role": "assistant", "content": a}] for a in answers],
        slot=slots,
        log_metric=logged.__setitem__,
    )
    assert rewards[0] == rewards[2] == -0.7
    assert rewards[1] > 0 and rewards[3] > 0
    assert reward.stats.unparseable == 2
    assert logged["env/parse_failure_rate"] == 0.5 and logged["env/action_deepen"] == 1.0
    assert logged["env/action_concretize"] == 0.0  # every action is logged each step, so means stay honest

    stale = [list(fmt.messages(setup.pool.seeds[5]))]  # not what slot 0 holds now
    with pytest.raises(RuntimeError, match="slot 0"):
        fn(prompts=stale, completions=[deepen], slot=[0])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"max_completion_length": 2}, "max_completion_length"),
        ({"use_liger_kernel": True}, "use_liger_kernel"),
        ({"per_device_train_batch_size": 40}, "episode_slots"),
    ],
)
def test_settings_that_would_break_the_mask_or_the_pool_are_refused(
    tmp_path, monkeypatch, tiny_model_dir, overrides, key
):
    setup, _ = make_setup(tmp_path, monkeypatch, instructor_model=tiny_model_dir)  # 8 slots; 40 / 4 = 10 states
    with pytest.raises(TeamsRLError) as err:
        train(setup, grpo_config(setup.run_dir, num_generations=4, **overrides), lora(tiny_model_dir))
    assert err.value.field == key


def test_recipe_parses_with_the_shared_arguments():
    shared = (SeedArguments, PolicyArguments, RewriterArguments, ReviewerArguments, ReviewArguments, EnvArguments)
    parsed, _ = parse_args((*shared, *CONFIG_CLASSES), ["--config", str(RECIPE), "--max_steps", "3"])
    policy_args, config, model_config = parsed[1], parsed[-2], parsed[-1]
    assert policy_args.algorithm == "grpo" and model_config.use_peft
    assert config.max_completion_length == 1 and config.max_steps == 3 and config.report_to == ["tensorboard"]
    assert model_config.lora_target_modules == "all-linear"  # TRL turns a one-item list into the shorthand
    assert run_settings(config, model_config) == ("runs/smollm2-135m-grpo", 42, "smollm2-135m")
    assert grpo.GRPOPolicyConfig is type(config)


def test_a_rewriter_budget_stops_training_cleanly_and_keeps_the_policy(tmp_path, monkeypatch, tiny_model_dir):
    from teams_rl.llm.role_client import Budget

    setup, _ = make_setup(tmp_path, monkeypatch, preferred="deepen", instructor_model=tiny_model_dir)
    setup.clients["rewrite"].budget = Budget(max_calls=12)  # step 1 pays for <= 12 distinct rewrites at most
    folder = train(setup, grpo_config(setup.run_dir), lora(tiny_model_dir))
    meta = read_policy_meta(folder)
    assert "budget for role 'rewriter' exhausted" in meta["stopped"]
    assert meta["steps"] < 20
    assert setup.clients["rewrite"].stats.new_calls <= 12
    assert len(load_policy(str(folder), ACTIONS).select(list(setup.pool.seeds[:3]))) == 3
