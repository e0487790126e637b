"""What the LLM trainers (PPO, GRPO) share around TRL's loop: a progress bar with the running reward, and a
budget stop that keeps the policy trained so far."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from teams_rl.core.errors import BudgetExhausted

logger = logging.getLogger(__name__)


class RewardBar(TrainerCallback):
    """A bar over training steps showing the running reward and acceptance (last ``window`` steps of the env's
    ``history``), the leading action of the last step and the trainer's KL (logged under ``kl_key``)."""

    def __init__(self, history: list[dict], desc: str, kl_key: str, window: int = 10):
        self.history, self.desc, self.kl_key, self.window = history, desc, kl_key, window
        self.bar, self.kl = None, None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step")

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.kl = (logs or {}).get(self.kl_key, self.kl)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        recent, post = self.history[-self.window :], {}
        if recent:
            post["reward"] = f"{sum(h['reward_mean'] for h in recent) / len(recent):.3f}"
            post["accept"] = f"{sum(h['acceptance_rate'] for h in recent) / len(recent):.2f}"
            share = {k[len("action_") :]: v for k, v in recent[-1].items() if k.startswith("action_")}
            if share:
                top = max(share, key=share.get)
                post["top"] = f"{top} {share[top]:.2f}"
        if self.kl is not None:
            post["kl"] = f"{self.kl:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train_within_budget(trainer, history: list[dict], name: str, kl_key: str) -> str | None:
    """``trainer.train()`` with the reward bar (unless tqdm is off); a spent role budget ends training cleanly.

    ``BudgetExhausted`` is raised while a batch is scored, before that step's optimizer update, so the weights
    left are those of the last finished step. Returns why training stopped early, or None.
    """
    from transformers import ProgressCallback

    if not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(RewardBar(history, name.lower(), kl_key))
    try:
        trainer.train()
    except BudgetExhausted as stop:
        logger.warning("%s; saving the policy after %d %s steps", stop, trainer.state.global_step, name)
        return str(stop)
    return None
