"""The original TeaMs-RL policy: a small MLP over the six actions trained with TRPO, torch only.

The state is the last kept action (one-hot) and the depth, as in the original code; ``state_features: embedding``
adds a MiniLM embedding of the current instruction so this cheap policy can also read the text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from teams_rl.core.bounds import BUDGET, COUNT, POSITIVE, UNIT, at_least, bounded, one_of
from teams_rl.core.errors import BudgetExhausted, TeamsRLError
from teams_rl.core.files import atomic_folder
from teams_rl.env.environment import State, derive_seed
from teams_rl.llm.embeddings import load_embedder
from teams_rl.policy.instructor import probe_summary, read_policy_meta, spread_states, write_policy_meta
from teams_rl.policy.trpo import gae, mlp, trpo_step

logger = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"


@bounded()
@dataclass
class ClassicConfig:
    """The classic policy's run and TRPO settings (defaults: the original code's)."""

    output_dir: str = field(default="runs/classic", metadata={"help": "Run folder (ledger, config, policy/, plots/)."})
    seed: int = field(
        default=42, metadata={"bound": BUDGET, "help": "Run seed: network init, action sampling, rewriter seeds."}
    )
    iterations: int = field(default=50, metadata={"bound": COUNT, "help": "TRPO updates."})
    rollout_steps: int = field(
        default=6,
        metadata={
            "bound": COUNT,
            "help": "Env steps per update; each step acts in every episode "
            "slot, so an update sees rollout_steps x slots moves.",
        },
    )
    hidden_sizes: list[int] = field(
        default_factory=lambda: [64, 64], metadata={"bound": COUNT, "help": "MLP hidden layers."}
    )
    max_kl: float = field(
        default=0.01, metadata={"bound": POSITIVE, "help": "TRPO trust region: largest mean KL(old || new)."}
    )
    damping: float = field(
        default=0.1, metadata={"bound": at_least(0), "help": "Added to the Fisher matrix (F + damping I)."}
    )
    cg_iters: int = field(default=10, metadata={"bound": COUNT, "help": "Conjugate-gradient steps to solve F x = g."})
    gamma: float = field(default=0.995, metadata={"bound": UNIT, "help": "Discount."})
    lam: float = field(default=0.97, metadata={"bound": UNIT, "help": "GAE lambda."})
    value_lr: float = field(default=1e-3, metadata={"bound": POSITIVE, "help": "Value MLP learning rate (Adam)."})
    value_iters: int = field(default=20, metadata={"bound": COUNT, "help": "Value MLP gradient steps per update."})
    state_features: str = field(
        default="last_action",
        metadata={
            "bound": one_of("last_action", "embedding"),
            "help": "last_action (the original: one-hot of the last action + depth) or embedding (also a sentence "
            "embedding of the current instruction).",
        },
    )
    state_embedding_model: str = field(default="minilm", metadata={"help": "Embedder of state_features: embedding."})
    report_to: str = field(
        default="tensorboard",
        metadata={
            "bound": one_of("tensorboard", "none"),
            "help": "tensorboard (under <output_dir>/tensorboard) or none.",
        },
    )
    logging_steps: int = field(default=1, metadata={"bound": COUNT, "help": "Log every N updates."})


CONFIG_CLASSES = (ClassicConfig,)


def run_settings(config: ClassicConfig):
    """(run folder, seed, instructor model): there is no instructor LLM, so the recipe must name the rewriter."""
    return config.output_dir, config.seed, None


class Features:
    """State → vector: one-hot of the last kept action (or 'none'), depth / max depth, optionally an embedding."""

    def __init__(self, names: Sequence[str], depth: int, mode: str, embedder=None):
        if mode not in ("last_action", "embedding"):
            raise TeamsRLError(f"unknown state_features '{mode}' (last_action or embedding)", field="state_features")
        self.names, self.depth, self.mode, self.embedder = list(names), max(1, depth), mode, embedder
        self._cache: dict[str, torch.Tensor] = {}  # seeds come back every episode: embed each text once
        self.size = len(self.names) + 2 + (len(embedder.encode("probe")) if embedder else 0)

    def __call__(self, states: Sequence[State]) -> torch.Tensor:
        x = torch.zeros(len(states), len(self.names) + 2)
        for i, s in enumerate(states):
            last = s.actions[-1] if s.actions else None
            x[i, self.names.index(last) if last in self.names else len(self.names)] = 1.0
            x[i, -1] = s.depth / self.depth
        if self.mode == "last_action":
            return x
        new = list(dict.fromkeys(s.instruction for s in states if s.instruction not in self._cache))
        if new:
            vectors = self.embedder.encode(
                new, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False
            )
            self._cache.update(zip(new, vectors.float().cpu(), strict=True))
        return torch.cat([x, torch.stack([self._cache[s.instruction] for s in states])], dim=1)


def train(setup, config: ClassicConfig) -> Path:
    """Roll out the MLP policy over the episode pool, update it with TRPO, save it to ``<output_dir>/policy``."""
    names = [a.name for a in setup.actions]
    embedder = load_embedder(config.state_embedding_model) if config.state_features == "embedding" else None
    features = Features(names, setup.policy_args.depth, config.state_features, embedder)
    with torch.random.fork_rng():  # seeded init without touching the global RNG
        torch.manual_seed(config.seed)
        policy = mlp([features.size, *config.hidden_sizes, len(names)], out_scale=0.0)
        value = mlp([features.size, *config.hidden_sizes, 1])
    value_opt = torch.optim.Adam(value.parameters(), lr=config.value_lr)
    probe = spread_states(setup.pool.seeds, 8)  # P(action) on seed states over the pool, like the LLM trainers

    def probe_actions() -> dict[str, float]:
        with torch.no_grad():
            return probe_summary(names, torch.softmax(policy(features(probe)), -1))

    before = probe_actions()
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "classic", "actions"))
    reward = setup.reward(lambda a: a)  # the MLP names actions directly: nothing to parse
    slots = list(range(len(setup.pool)))
    writer = None
    if config.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(setup.run_dir / "tensorboard"))
    per_update: list[float] = []
    stopped = None
    bar = tqdm(range(config.iterations), desc="classic", unit="update")
    try:
        for it in bar:
            steps = []
            for _ in range(config.rollout_steps):  # one batched env.step for all slots per step
                x = features([setup.pool.state(i) for i in slots])
                with torch.no_grad():
                    a = torch.multinomial(torch.softmax(policy(x), -1), 1, generator=gen).squeeze(1)
                r = torch.tensor(reward(slots, [names[i] for i in a]))
                done = torch.tensor([float(setup.pool.state(i).step == 0) for i in slots])  # the slot started over
                steps.append((x, a, r, done))
            obs, acts, rews, dones = (torch.stack(t) for t in zip(*steps, strict=True))
            with torch.no_grad():
                values = value(obs).squeeze(-1)
                last = value(features([setup.pool.state(i) for i in slots])).squeeze(-1)
            adv, returns = gae(rews, values, dones, last, config.gamma, config.lam)
            flat_obs, adv = obs.flatten(0, 1), adv.flatten()
            stats = trpo_step(
                policy,
                flat_obs,
                acts.flatten(),
                (adv - adv.mean()) / (adv.std() + 1e-8),
                max_kl=config.max_kl,
                damping=config.damping,
                cg_iters=config.cg_iters,
            )
            for _ in range(config.value_iters):
                value_loss = (value(flat_obs).squeeze(-1) - returns.flatten()).pow(2).mean()
                value_opt.zero_grad()
                value_loss.backward()
                value_opt.step()
            recent = reward.history[-config.rollout_steps :]
            keys = dict.fromkeys(k for h in recent for k in h)
            env_stats = {k: sum(h.get(k, 0.0) for h in recent) / len(recent) for k in keys}
            per_update.append(env_stats["reward_mean"])
            bar.set_postfix(reward=f"{sum(per_update[-5:]) / len(per_update[-5:]):.3f}", kl=f"{stats['kl']:.4f}")
            if (it + 1) % max(1, config.logging_steps) == 0:
                logs = {
                    **{f"env/{k}": v for k, v in env_stats.items()},
                    **{f"trpo/{k}": v for k, v in stats.items()},
                    "trpo/value_loss": value_loss.item(),
                    **{f"calls/{role}": n for role, n in setup.calls().items()},
                }
                logger.info("update %d: %s", it + 1, {k: round(v, 4) for k, v in logs.items()})
                if writer:
                    for key, v in logs.items():
                        writer.add_scalar(key, v, it + 1)
    except BudgetExhausted as stop:
        stopped = str(stop)
        logger.warning("%s; saving the policy after %d updates", stop, len(per_update))
    finally:
        bar.close()
        if writer:
            writer.close()

    from safetensors.torch import save_file

    from teams_rl.policy.plots import plot_training

    plot_training(reward.history, setup.run_dir / "plots", title="classic")
    with atomic_folder(setup.policy_dir) as tmp:
        save_file(policy.state_dict(), str(tmp / WEIGHTS))
        write_policy_meta(
            tmp,
            "classic",
            names,
            algorithm="classic",
            state_features=config.state_features,
            hidden=list(config.hidden_sizes),
            depth=setup.policy_args.depth,
            embedding_model=config.state_embedding_model if embedder else None,
            reward_per_update=[round(r, 4) for r in per_update],
            stopped=stopped,
            probe_before=before,
            probe_after=probe_actions(),
        )
    return setup.policy_dir


class ClassicPolicy:
    """A trained classic MLP choosing actions: the most likely one, or one drawn with a per-state seed."""

    def __init__(self, net: nn.Module, features: Features, name: str, sample: bool = False, run_seed: int = 0):
        self.net, self.features, self.name = net.eval(), features, name
        self.names, self.sample, self.run_seed = features.names, sample, run_seed

    @classmethod
    def load(cls, folder: str | Path, actions, sample: bool = False, run_seed: int = 0) -> ClassicPolicy:
        from safetensors.torch import load_file

        meta = read_policy_meta(folder)
        missing = [n for n in meta["actions"] if n not in {a.name for a in actions}]
        if missing:
            raise TeamsRLError(
                f"the policy was trained with actions {meta['actions']}; missing now: {missing}", field="actions"
            )
        embedder = load_embedder(meta["embedding_model"]) if meta["state_features"] == "embedding" else None
        features = Features(meta["actions"], meta["depth"], meta["state_features"], embedder)
        net = mlp([features.size, *meta["hidden"], len(meta["actions"])])
        net.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
        return cls(net, features, f"classic:{Path(folder).name}", sample=sample, run_seed=run_seed)

    def probabilities(self, states: Sequence[State]) -> torch.Tensor:
        """``(len(states), n_actions)`` tensor of action probabilities."""
        if not states:
            return torch.empty(0, len(self.names))
        with torch.no_grad():
            return torch.softmax(self.net(self.features(states)), -1)

    def select(self, states: Sequence[State]) -> list[str]:
        probs = self.probabilities(states)
        if not self.sample:
            return [self.names[int(i)] for i in probs.argmax(dim=-1)]
        picks = []
        for s, p in zip(states, probs, strict=True):
            gen = torch.Generator().manual_seed(derive_seed(self.run_seed, s.seed_id, s.step, "policy"))
            picks.append(self.names[int(torch.multinomial(p, 1, generator=gen))])
        return picks
