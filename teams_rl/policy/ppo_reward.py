"""The one file that touches TRL PPO internals: a plain Python reward ``fn(prompts, completions) -> rewards`` in
place of PPO's reward *model*. Checked against trl 1.12.x, the last release with ``trl.experimental.ppo``.

Why: ``PPOTrainer`` scores rollouts only through ``get_reward(reward_model, query_responses, pad_token_id,
context_length)``, a module-level function that ``train()`` and ``generate_completions()`` look up in their own
module's globals and that runs a sequence-classification backbone; TRL has no callable-reward option for PPO
(declined upstream: huggingface/trl#2363, #2451, #2518, #3093). How: ``CallableReward`` is a weightless module
holding the callable; ``CallableRewardPPOTrainer`` swaps that global, only while those two methods run, for a
router that sends calls for the ``CallableReward`` to it (prompt = the tokens before ``context_length``, completion
= the tokens after, pads dropped; the same triple ``get_reward`` returns) and every other call (the value model) to
TRL's function. ``check_trl_internals`` fails loudly, at construction and in the tests, if TRL moves any of this.
DeepSpeed would wrap the weightless module, so it is refused.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn
from trl.experimental.ppo import PPOTrainer

CHECKED_TRL = ">=1.12,<1.13"
GET_REWARD_PARAMS = ("model", "query_responses", "pad_token_id", "context_length")
ROUTED_METHODS = ("train", "generate_completions")

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


def check_trl_internals() -> None:
    """Raise if PPOTrainer no longer looks up ``get_reward`` (with the expected signature) the way we route it."""
    namespace = PPOTrainer.train.__globals__
    problems = []
    fn = namespace.get("get_reward")
    if not callable(fn):
        problems.append(f"{PPOTrainer.__module__} has no module-level get_reward")
    elif tuple(inspect.signature(fn).parameters) != GET_REWARD_PARAMS:
        problems.append(f"get_reward{inspect.signature(fn)} is not get_reward({', '.join(GET_REWARD_PARAMS)})")
    for name in ROUTED_METHODS:
        method = getattr(PPOTrainer, name, None)
        code = getattr(method, "__code__", None)
        if code is None or method.__globals__ is not namespace or "get_reward" not in code.co_names:
            problems.append(f"PPOTrainer.{name} no longer calls the module-level get_reward")
    if problems:
        raise RuntimeError(
            f"teams_rl.policy.ppo_reward was checked against trl{CHECKED_TRL} and TRL's PPO internals "
            f"moved: {'; '.join(problems)}"
        )


class CallableReward(nn.Module):
    """A weightless ``reward_model`` for ``CallableRewardPPOTrainer``: ``fn(prompts, completions)`` scores."""

    def __init__(self, fn: RewardFn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        raise RuntimeError("CallableReward scores through CallableRewardPPOTrainer, not as a model")

    def score(self, query_responses: torch.Tensor, pad_token_id: int, context_length: int, tokenizer):
        """What ``get_reward`` returns: (per-token logits, final scores, index of each sequence's last token)."""
        responses = query_responses[:, context_length:]
        is_pad = responses == pad_token_id
        first_pad = torch.where(is_pad.any(dim=1), is_pad.int().argmax(dim=1), responses.shape[1])
        lengths = first_pad - 1 + context_length
        prompts = [tokenizer.decode(row[row != pad_token_id]) for row in query_responses[:, :context_length]]
        completions = [tokenizer.decode(row[row != pad_token_id], skip_special_tokens=True) for row in responses]
        rewards = [float(r) for r in self.fn(prompts, completions)]
        if len(rewards) != len(prompts):
            raise RuntimeError(f"the reward function returned {len(rewards)} rewards for {len(prompts)} completions")
        scores = torch.tensor(rewards, dtype=torch.float32, device=query_responses.device)
        logits = torch.zeros((*query_responses.shape, 1), dtype=torch.float32, device=query_responses.device)
        logits[torch.arange(len(scores), device=scores.device), lengths, 0] = scores
        return logits, scores, lengths


class CallableRewardPPOTrainer(PPOTrainer):
    """``PPOTrainer`` whose ``reward_model`` is a ``CallableReward``. ``extra_logs()`` (optional) is merged into
    every log (e.g. environment statistics of the step just scored)."""

    def __init__(self, *args, extra_logs: Callable[[], dict] | None = None, **kwargs):
        check_trl_internals()
        super().__init__(*args, **kwargs)
        if not isinstance(self.reward_model, CallableReward):
            raise TypeError("CallableRewardPPOTrainer needs reward_model=CallableReward(fn)")
        if self.is_deepspeed_enabled:
            raise NotImplementedError("DeepSpeed would wrap the weightless CallableReward; untested, so refused")
        self.extra_logs = extra_logs

    @contextlib.contextmanager
    def _routed_reward(self):
        namespace = PPOTrainer.train.__globals__
        original = namespace["get_reward"]

        def get_reward(model, query_responses, pad_token_id, context_length):
            if model is self.reward_model:
                return model.score(query_responses, pad_token_id, context_length, self.processing_class)
            return original(model, query_responses, pad_token_id, context_length)

        namespace["get_reward"] = get_reward
        try:
            yield
        finally:
            namespace["get_reward"] = original

    def train(self):
        with self._routed_reward():
            return super().train()

    def generate_completions(self, sampling: bool = False):
        with self._routed_reward():
            return super().generate_completions(sampling=sampling)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.extra_logs is not None:
            logs = {**logs, **self.extra_logs()}
        super().log(logs, start_time)
