"""PPO instructor: the reward adapter's contract with TRL, fresh states per slot, the action mask, and a short run
on a tiny model whose scripted reward prefers 'deepen' (it must learn that, save, and load back as a policy)."""

import inspect
from pathlib import Path

import pytest
import torch
from policy_helpers import make_setup
from trl import ModelConfig

from teams_rl.core.errors import TeamsRLError
from teams_rl.policy import load_policy, ppo
from teams_rl.policy.action_head import add_action_head
from teams_rl.policy.instructor import InstructorFormat, read_policy_meta
from teams_rl.policy.ppo_reward import (
    GET_REWARD_PARAMS,
    CallableReward,
    CallableRewardPPOTrainer,
    check_trl_internals,
)

RECIPE = Path(__file__).parents[1] / "recipes" / "smollm2-135m" / "policy" / "config_ppo.yaml"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _config(run_dir, **overrides) -> ppo.PPOPolicyConfig:
    # 8 steps of 8 answers, one PPO epoch at a LoRA-sized learning rate: ~20-40 s on 2 CPU cores.
    settings = {
        "output_dir": str(run_dir),
        "per_device_train_batch_size": 8,
        "total_episodes": 64,
        "num_ppo_epochs": 1,
        "learning_rate": 2e-2,
        "kl_coef": 0.01,
        "response_length": 1,
        "num_sample_generations": 0,
        "save_strategy": "no",
        "report_to": "tensorboard",
        "seed": 0,
        "probe_states": 8,
    }
    return ppo.PPOPolicyConfig(**{**settings, **overrides})


def _model_config(path) -> ModelConfig:
    return ModelConfig(
        model_name_or_path=path, use_peft=True, lora_r=8, lora_alpha=16, lora_target_modules=LORA_TARGETS
    )


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One short PPO run shared by the tests below: (setup, policy folder)."""
    with pytest.MonkeyPatch.context() as mp:
        setup, _ = make_setup(
            tmp_path_factory.mktemp("ppo"), mp, preferred="deepen", instructor_model=tiny_model_dir, episode_slots=16
        )  # 16 slots over 8 seeds: repeated prompts map back by order
        folder = ppo.train(setup, _config(setup.run_dir), _model_config(tiny_model_dir))
        setup.ledger.close()
    return setup, folder


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in run_dir.glob("runs/**/events.out.tfevents.*")}
    acc = EventAccumulator(str(events))
    acc.Reload()
    return {tag.removeprefix("train/"): [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_ppo_learns_the_preferred_action(trained):
    setup, folder = trained
    meta = read_policy_meta(folder)
    assert meta["algorithm"] == "ppo" and meta["steps"] == 8
    # the untrained instructor is uniform over the six actions, in every state: only training moved it
    assert all(abs(meta["probe_before"][n] - 1 / 6) < 1e-3 for n in meta["actions"])
    assert meta["probe_before"]["spread"] < 1e-6
    assert load_policy(str(folder), setup.actions).temperature == meta["temperature"] == 0.7  # sampled as trained
    policy = load_policy(str(folder), setup.actions, temperature=1.0)  # the probe's temperature
    probs = policy.probabilities(setup.pool.seeds)
    deepen = policy.format.names.index("deepen")
    assert probs[:, deepen].mean() > 0.6, probs.mean(0)
    assert meta["probe_after"]["deepen"] == pytest.approx(float(probs[:8, deepen].mean()), abs=1e-3)


def test_saved_policy_loads_and_selects(trained):
    setup, folder = trained
    assert (folder / "adapter_config.json").is_file() and not (folder / "model.safetensors").exists()
    policy = load_policy(str(folder), setup.actions, sample=True, run_seed=3)
    picks = policy.select(setup.pool.seeds[:5])
    assert len(picks) == 5 and set(picks) <= {a.name for a in setup.actions}
    assert {p.name for p in (setup.run_dir / "plots").glob("*.png")} == {"reward.png", "action_mix.png"}


def test_ppo_logs_env_stats_calls_and_kl(trained):
    setup, _ = trained
    scalars = _scalars(setup.run_dir)
    for tag in (
        "env/reward_mean",
        "env/acceptance_rate",
        "env/parse_failure_rate",
        "env/action_deepen",
        "calls/rewriter",
        "calls/reviewer",
        "objective/kl",
    ):
        assert len(scalars.get(tag, [])) == 8, (tag, sorted(scalars))
    assert scalars["env/parse_failure_rate"] == [0.0] * 8  # the mask leaves nothing else to say
    assert scalars["env/reward_mean"][-1] > scalars["env/reward_mean"][0]
    assert 0 < scalars["calls/rewriter"][0] <= 8 < scalars["calls/rewriter"][-1] <= 64  # repeats come from the ledger


def test_trl_still_looks_up_get_reward_where_we_route_it():
    """Fails if TRL moves or changes the function the adapter routes (it was checked against trl 1.12.x)."""
    import trl
    from trl.experimental.ppo import PPOTrainer, ppo_trainer

    assert trl.__version__.startswith("1.12."), "re-check teams_rl/policy/ppo_reward.py against this TRL"
    assert tuple(inspect.signature(ppo_trainer.get_reward).parameters) == GET_REWARD_PARAMS
    assert PPOTrainer.train.__globals__ is vars(ppo_trainer)
    for method in (PPOTrainer.train, PPOTrainer.generate_completions):
        assert "get_reward" in method.__code__.co_names
    check_trl_internals()


def test_check_trl_internals_fails_when_get_reward_moves(monkeypatch):
    from trl.experimental.ppo import ppo_trainer

    monkeypatch.delattr(ppo_trainer, "get_reward")
    with pytest.raises(RuntimeError, match="moved"):
        check_trl_internals()


def test_routing_sends_only_the_callable_reward_to_the_callable(tiny_model_dir):
    from transformers import AutoTokenizer
    from trl.experimental.ppo import ppo_trainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = []
    reward_model = CallableReward(lambda prompts, completions: seen.append((prompts, completions)) or [1.5, -2.0])
    trainer = CallableRewardPPOTrainer.__new__(CallableRewardPPOTrainer)  # routing needs no trained models
    trainer.reward_model, trainer.processing_class = reward_model, tok
    original = ppo_trainer.get_reward
    # Left-padded prompts (pad 0), then a one-token completion; row 2's completion is a pad (empty answer).
    hello, hi, three = (tok.encode(t, add_special_tokens=False) for t in ("Hello there", "Hi", "3"))
    qr = torch.tensor([hello + three, [0] * (len(hello) - len(hi)) + hi + [0]])
    with trainer._routed_reward():
        assert ppo_trainer.get_reward is not original
        logits, scores, lengths = ppo_trainer.get_reward(reward_model, qr, 0, len(hello))
        with pytest.raises(AttributeError):  # anything else goes to TRL's function (which wants a real model)
            ppo_trainer.get_reward(torch.nn.Identity(), qr, 0, len(hello))
    assert ppo_trainer.get_reward is original
    assert seen == [(["Hello there", "Hi"], ["3", ""])]
    assert scores.tolist() == [1.5, -2.0] and lengths.tolist() == [len(hello), len(hello) - 1]
    assert logits.shape == (2, len(hello) + 1, 1) and logits[0, len(hello), 0] == 1.5


def test_queries_follow_the_pool_and_map_back_to_slots(tmp_path, monkeypatch, tiny_model_dir):
    from transformers import AutoTokenizer

    setup, _ = make_setup(tmp_path, monkeypatch, preferred="deepen", depth=2, n_seeds=2, episode_slots=4)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = "<|endoftext|>"
    fmt = InstructorFormat(setup.actions, tok)
    queries = ppo.StateQueries(setup.pool, fmt)
    reward = setup.reward(fmt.parse)
    decode = tok.decode
    first = [queries[i]["input_ids"] for i in (0, 2)]  # slots 0 and 2 both start at seed 0: same prompt
    assert first[0] == first[1]
    assert queries[0]["input_ids"] == queries[1]["input_ids"] != first[0]  # 0 is busy: slot 1 (seed 1) instead
    deepen = str(fmt.names.index("deepen") + 1)
    slots = queries.take([decode(first[0]), decode(first[1])])
    assert slots == [0, 2]
    # kept rewrite: 1 + 0.25 x P(Yes) 0.95; unparseable answer: the penalty
    assert reward(slots, [deepen, "x"]) == [pytest.approx(1 + 0.25 * 0.95), -0.5]
    assert reward.stats.unparseable == 1 and reward.stats.log_dict()["env/parse_failure_rate"] == 0.5
    again = decode(queries[0]["input_ids"])  # slot 0 is free again and shows its kept rewrite (depth 1 of 2)
    assert "deepen treatment" in again and "Rewrites so far: deepen" in again
    assert "Rewrites so far: none (the seed)" in decode(
        queries[2]["input_ids"]
    )  # slot 2's answer was unparseable: same seed
    with pytest.raises(RuntimeError, match="no slot is waiting"):
        queries.take(["a prompt never handed out"])
    setup.ledger.close()


def test_the_action_head_makes_every_sampled_answer_a_menu_digit(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from teams_rl.env.actions import load_actions
    from teams_rl.env.environment import State

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    fmt = InstructorFormat(load_actions(), tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok(fmt.prompt_text(State("s", "Explain tides.")), return_tensors="pt", add_special_tokens=False)
    gen = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=5.0, top_k=0, top_p=1.0, pad_token_id=0)
    torch.manual_seed(0)
    unmasked = model.generate(**ids, generation_config=gen, num_return_sequences=64)[:, -1]
    assert not set(unmasked.tolist()) <= set(fmt.answer_token_ids)  # a random model says anything
    add_action_head(model, fmt.answer_token_ids)
    masked = model.generate(**ids, generation_config=gen, num_return_sequences=64)[:, -1]
    assert set(masked.tolist()) <= set(fmt.answer_token_ids)
    assert all(fmt.parse(tok.decode([t])) for t in masked.tolist())


def test_lora_on_a_tied_lm_head_is_refused(tmp_path, monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from teams_rl.policy.action_head import instructor_peft_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tied = ModelConfig(
        model_name_or_path=tiny_model_dir, use_peft=True, lora_target_modules=[*LORA_TARGETS, "lm_head"]
    )
    if model.config.tie_word_embeddings:
        with pytest.raises(TeamsRLError, match="tied") as err:
            instructor_peft_config(tied, model)
        assert err.value.field == "lora_target_modules"
    config = instructor_peft_config(_model_config(tiny_model_dir), model)
    assert "action_head" in config.modules_to_save and "lm_head" not in config.target_modules


def test_too_few_episode_slots_is_refused_before_loading(tmp_path, monkeypatch):
    setup, _ = make_setup(tmp_path, monkeypatch, n_seeds=8)
    with pytest.raises(TeamsRLError, match="episode_slots >= 16") as err:
        ppo.train(setup, _config(setup.run_dir), _model_config("/nonexistent"))
    assert err.value.field == "episode_slots"
    setup.ledger.close()


def test_recipe_parses_and_names_the_run(monkeypatch):
    from teams_rl.core.recipes import parse_args
    from teams_rl.env.build import EnvArguments, ReviewArguments, ReviewerArguments, SeedArguments
    from teams_rl.policy.train import PolicyArguments, RewriterArguments

    shared = (SeedArguments, PolicyArguments, RewriterArguments, ReviewerArguments, ReviewArguments, EnvArguments)
    parsed, _ = parse_args((*shared, *ppo.CONFIG_CLASSES), ["--config", str(RECIPE)])
    policy_args, review_args, config, model_config = parsed[1], parsed[4], parsed[6], parsed[7]
    assert policy_args.algorithm == "ppo" and review_args.reviewer_modes == "judge_logprob:1,embedding:1"
    assert model_config.use_peft and "lm_head" not in model_config.lora_target_modules  # tied to the embeddings
    assert config.response_length == 1 and config.bf16 is False and "tensorboard" in config.report_to
    assert config.per_device_train_batch_size * 2 <= (policy_args.episode_slots or 80)
    assert ppo.run_settings(config, model_config) == ("runs/smollm2-135m-ppo", config.seed, "smollm2-135m")


def test_a_rewriter_budget_stops_training_cleanly_and_keeps_the_policy(tmp_path, monkeypatch, tiny_model_dir):
    from teams_rl.llm.role_client import Budget

    setup, _ = make_setup(tmp_path, monkeypatch, preferred="deepen", instructor_model=tiny_model_dir, episode_slots=16)
    setup.clients["rewrite"].budget = Budget(max_calls=12)  # step 1 pays for <= 8; a later step runs out
    folder = ppo.train(setup, _config(setup.run_dir), _model_config(tiny_model_dir))
    meta = read_policy_meta(folder)
    assert "budget for role 'rewriter' exhausted" in meta["stopped"]
    assert 1 <= meta["steps"] < 8
    assert setup.clients["rewrite"].stats.new_calls <= 12
    assert len(load_policy(str(folder), setup.actions).select(setup.pool.seeds[:3])) == 3
    setup.ledger.close()


def test_value_model_runs_in_bfloat16(tiny_model_dir):
    """The value head's added bias takes the weights' dtype (a float32 bias broke the first forward in bf16)."""
    import torch
    from trl import ModelConfig

    from teams_rl.policy.ppo import PPOPolicyConfig, _load_models

    config = PPOPolicyConfig(output_dir="unused", value_init=0.25, value_lora=False)
    _, _, value = _load_models(config, ModelConfig(model_name_or_path=tiny_model_dir, dtype="bfloat16"))
    assert value.score.bias.dtype == value.score.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = value(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert float(out[0, 0]) == pytest.approx(0.25, abs=1e-2)  # zero weights: the bias alone
