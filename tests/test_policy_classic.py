"""The classic policy: TRPO pieces, learning the scripted reviewer's preferred action, save/load/select."""

import json

import pytest
import torch

from teams_rl.env.environment import State
from teams_rl.llm.role_client import Budget
from teams_rl.policy import classic, load_policy
from teams_rl.policy.classic import ClassicConfig, ClassicPolicy
from teams_rl.policy.trpo import conjugate_gradient, gae
from tests.policy_helpers import ACTIONS, make_setup

NAMES = [a.name for a in ACTIONS]


@pytest.fixture(scope="module")
def minilm():
    from teams_rl.llm.embeddings import load_embedder

    return load_embedder("minilm")


def test_conjugate_gradient_solves_a_small_spd_system():
    a = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    b = torch.tensor([1.0, -2.0, 0.5])
    assert torch.allclose(conjugate_gradient(lambda v: a @ v, b, 10), torch.linalg.solve(a, b), atol=1e-5)


def test_gae_stops_at_episode_ends_and_bootstraps_the_rest():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = torch.zeros(2, 2)
    dones = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    adv, returns = gae(rewards, values, dones, torch.tensor([10.0, 0.0]), gamma=0.5, lam=1.0)
    assert adv[0, 0] == 1.0  # the episode ended: nothing flows back from step 1
    assert adv[1, 0] == 0.0 + 0.5 * 10.0  # unfinished: bootstrapped from the last value
    assert adv[0, 1] == 0.0 + 0.5 * 1.0 and torch.equal(returns, adv)


def _train(tmp_path, monkeypatch, features, embedder=None, **overrides):
    if embedder is not None:
        monkeypatch.setattr(classic, "load_embedder", lambda ref: embedder)
    setup, _ = make_setup(tmp_path, monkeypatch, preferred="deepen", instructor_model=None, depth=2)
    kls, trpo_step = [], classic.trpo_step

    def recording(*args, **kwargs):
        stats = trpo_step(*args, **kwargs)
        kls.append(stats["kl"])
        return stats

    monkeypatch.setattr(classic, "trpo_step", recording)
    config = ClassicConfig(
        output_dir=str(tmp_path / "run"),
        seed=3,
        iterations=25,
        rollout_steps=2,
        state_features=features,
        report_to="none",
        **overrides,
    )
    folder = classic.train(setup, config)
    return setup, folder, kls


@pytest.mark.parametrize("features", ["last_action", "embedding"])
def test_trpo_learns_the_preferred_action_within_the_trust_region(tmp_path, monkeypatch, features, request):
    embedder = request.getfixturevalue("minilm") if features == "embedding" else None
    setup, folder, kls = _train(tmp_path, monkeypatch, features, embedder)
    meta = json.loads((folder / "policy.json").read_text())
    assert meta["kind"] == "classic" and meta["state_features"] == features and meta["actions"] == NAMES
    assert meta["probe_after"]["deepen"] > meta["probe_before"]["deepen"] + 0.3
    policy = load_policy(str(folder), ACTIONS)
    assert isinstance(policy, ClassicPolicy)
    states = [setup.pool.seeds[i] for i in range(4)]
    start = torch.full((len(NAMES),), 1 / len(NAMES))
    probs = policy.probabilities(states)
    assert probs.shape == (4, len(NAMES)) and torch.allclose(probs.sum(-1), torch.ones(4))
    assert (probs[:, NAMES.index("deepen")] > 0.6).all(), probs
    assert probs[:, NAMES.index("deepen")].min() > 3 * start[0]
    assert max(kls) <= 1.5 * 0.01 and sum(k > 0 for k in kls) >= len(kls) // 2  # steps taken, each in the region
    rewards = meta["reward_per_update"]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2
    assert policy.select(states) == ["deepen"] * 4
    assert (folder.parent / "plots" / "reward.png").is_file()


def test_untrained_policy_is_near_uniform_and_sampling_is_seeded_per_state(tmp_path, monkeypatch):
    setup, _ = make_setup(tmp_path, monkeypatch, preferred="deepen", instructor_model=None)
    config = ClassicConfig(output_dir=str(tmp_path / "run"), iterations=0, report_to="none")
    folder = classic.train(setup, config)
    states = [State(f"s{i}", f"Explain topic {i}.", step=i % 3) for i in range(40)]
    uniform = load_policy(str(folder), ACTIONS)
    assert torch.allclose(uniform.probabilities(states), torch.full((40, len(NAMES)), 1 / len(NAMES)), atol=0.02)
    first = load_policy(str(folder), ACTIONS, sample=True, run_seed=5).select(states)
    again = load_policy(str(folder), ACTIONS, sample=True, run_seed=5).select(list(reversed(states)))
    assert first == list(reversed(again))  # a state's draw depends on the state, not on its batch
    assert set(first) <= set(NAMES) and len(set(first)) >= 4
    assert load_policy(str(folder), ACTIONS, sample=True, run_seed=6).select(states) != first


def test_tensorboard_logs_and_budget_stop_still_saves(tmp_path, monkeypatch):
    setup, _ = make_setup(tmp_path, monkeypatch, preferred="deepen", instructor_model=None, depth=2)
    setup.clients["rewrite"].budget = Budget(max_calls=20)
    config = ClassicConfig(output_dir=str(tmp_path / "run"), iterations=5, rollout_steps=1)
    folder = classic.train(setup, config)
    assert (folder / "model.safetensors").is_file()
    assert len(json.loads((folder / "policy.json").read_text())["reward_per_update"]) < 5  # stopped early
    assert any((setup.run_dir / "tensorboard").iterdir())


def test_recipe_parses_and_must_name_the_rewriter(tmp_path, monkeypatch):
    from teams_rl.core.errors import TeamsRLError
    from teams_rl.core.recipes import parse_args
    from teams_rl.env.build import EnvArguments, ReviewArguments, ReviewerArguments, SeedArguments
    from teams_rl.policy.train import PolicyArguments, RewriterArguments, build_setup

    shared = (SeedArguments, PolicyArguments, RewriterArguments, ReviewerArguments, ReviewArguments, EnvArguments)
    (seeds, policy_args, rewriter, *_, config), _ = parse_args(
        (*shared, ClassicConfig), ["--config", "recipes/smollm2-135m/policy/config_classic.yaml"]
    )
    assert policy_args.algorithm == "classic" and rewriter.rewriter_model == "smollm2-135m"
    assert (config.hidden_sizes, config.max_kl, config.damping, config.cg_iters) == ([64, 64], 0.01, 0.1, 10)
    assert classic.run_settings(config) == ("runs/smollm2-135m-classic", 42, None)
    with pytest.raises(TeamsRLError, match="rewriter_model"):  # the default 'instructor' has nothing to borrow
        build_setup(
            tmp_path,
            0,
            None,
            seeds,
            policy_args,
            RewriterArguments(),
            ReviewerArguments(),
            ReviewArguments(),
            EnvArguments(),
        )


def test_cli_trains_from_the_recipe_and_prints_the_policy_and_ledger(tmp_path, monkeypatch, capsys):
    from teams_rl import cli
    from teams_rl.llm.factory import BackendPool
    from teams_rl.llm.scripted import ScriptedBackend
    from tests.policy_helpers import make_scorer, rewriter_reply, write_seeds

    backend = ScriptedBackend(rewriter_reply, make_scorer("deepen"), model_id="scripted")
    monkeypatch.setattr(BackendPool, "get", lambda self, settings, role: backend)
    run = tmp_path / "run"
    rc = cli.main(
        [
            "train-policy",
            "--config",
            "recipes/smollm2-135m/policy/config_classic.yaml",
            "--dataset_name",
            str(write_seeds(tmp_path)),
            "--output_dir",
            str(run),
            "--iterations",
            "2",
            "--rollout_steps",
            "1",
            "--report_to",
            "none",
            "--state_features",
            "last_action",
            "--reviewer_modes",
            "judge_logprob:1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "Policy: classic" in out and "deepen" in out and "rewriter" in out and "reviewer" in out
    assert f"teams-rl synthesize --policy {run / 'policy'}" in out.replace("\n", "")
    saved = (run / "config" / "train-policy.yaml").read_text()
    assert "algorithm: classic" in saved and "iterations: 2" in saved


def test_cli_unknown_algorithm_is_one_line_and_exit_2(capsys):
    from teams_rl import cli

    rc = cli.main(
        ["train-policy", "--config", "recipes/smollm2-135m/policy/config_classic.yaml", "--algorithm", "dqn"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "unknown algorithm 'dqn'" in err and "algorithm" in err


def test_module_entry_point_runs_the_train_policy_command():
    """``python -m teams_rl.policy`` (what ``accelerate launch -m teams_rl.policy`` runs) is the CLI stage."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "teams_rl.policy",
            "--config",
            "recipes/smollm2-135m/policy/config_classic.yaml",
            "--algorithm",
            "dqn",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip().splitlines()[-1]
        == "error: algorithm: unknown algorithm 'dqn' (choose from ppo, grpo, classic)"
    )
