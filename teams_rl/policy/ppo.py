"""PPO for the instructor with TRL's ``PPOTrainer`` (trl 1.12.x): the state prompt as the query, one menu digit as
the answer (the action mask keeps sampling and training on the menu), LoRA on the policy and the value model, and
the environment's reward through ``ppo_reward`` (the only file that knows TRL's internals).

Fresh states: the query dataset renders each slot's *current* state when the dataloader asks for it, so kept
rewrites become the next queries. accelerate's dataloader builds the next batch before the current one is scored,
so a slot handed out stays busy until its reward comes back (hence ``episode_slots`` >= 2 batches).
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed
from trl import ModelConfig
from trl.experimental.ppo import PPOConfig

from teams_rl.core.bounds import BUDGET, COUNT, POSITIVE, TRAINING_ARGUMENTS, UNIT, any_value, at_least, bounded
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import atomic_folder
from teams_rl.core.recipes import inert
from teams_rl.llm.model_config import LoraModelConfig
from teams_rl.policy.action_head import add_action_head, instructor_peft_config, save_action_head
from teams_rl.policy.instructor import (
    InstructorFormat,
    head_meta,
    probe_actions,
    spread_states,
    write_policy_meta,
)
from teams_rl.policy.plots import plot_training
from teams_rl.policy.ppo_reward import CallableReward, CallableRewardPPOTrainer
from teams_rl.policy.progress import train_within_budget

logger = logging.getLogger(__name__)


@bounded(
    **TRAINING_ARGUMENTS,
    dataset_num_proc=COUNT,
    num_mini_batches=COUNT,
    total_episodes=COUNT,
    local_rollout_forward_batch_size=COUNT,
    num_sample_generations=BUDGET,
    response_length=COUNT,
    stop_token_id=BUDGET,
    temperature=POSITIVE,
    missing_eos_penalty=at_least(0),
    num_ppo_epochs=COUNT,
    kl_coef=at_least(0),
    cliprange=POSITIVE,
    vf_coef=at_least(0),
    cliprange_value=POSITIVE,
    gamma=UNIT,
    lam=UNIT,
)
@dataclass
class PPOPolicyConfig(PPOConfig):
    """TRL's ``PPOConfig`` (every PPO and Trainer key) plus what the instructor adds."""

    # Sizes the trainer computes from the others at start; a value set here would be overwritten.
    world_size: int | None = inert()
    num_total_batches: int | None = inert()
    micro_batch_size: int | None = inert()
    local_batch_size: int | None = inert()
    batch_size: int | None = inert()
    local_mini_batch_size: int | None = inert()
    mini_batch_size: int | None = inert()

    value_lora: bool = field(
        default=True,
        metadata={
            "help": "Train the value model through LoRA (the policy's lora_r/alpha/targets, minus lm_head) and its "
            "score head, instead of in full: about half the CPU time of a PPO step."
        },
    )
    probe_states: int = field(
        default=8,
        metadata={
            "bound": BUDGET,
            "help": "Seed states whose action probabilities are logged before and after training (0: skip).",
        },
    )
    value_init: float = field(
        default=0.5,
        metadata={
            "bound": any_value("a reward level"),
            "help": "Where the value head starts: zero weights and this bias, i.e. the expected reward of the "
            "uniform policy (the headroom table prints it), so the first advantages are reward minus a sensible "
            "baseline instead of reward minus a random head's noise.",
        },
    )

    def __post_init__(self):
        # PPO 1.12 builds a bare Accelerator, so bf16 has no effect; TRL's default (True) only makes
        # TrainingArguments refuse machines without a GPU.
        if self.bf16 is None:
            self.bf16 = False
        super().__post_init__()


CONFIG_CLASSES = (PPOPolicyConfig, LoraModelConfig)


def run_settings(config: PPOPolicyConfig, model_config: ModelConfig) -> tuple[str, int, str]:
    if not model_config.model_name_or_path:
        raise TeamsRLError("set model_name_or_path: the instructor LLM to train", field="model_name_or_path")
    return config.output_dir, config.seed, model_config.model_name_or_path


class StateQueries(torch.utils.data.Dataset):
    """PPO's queries: item ``i`` is the tokenized state prompt of slot ``i % len(pool)`` (or the next free slot),
    rendered when the dataloader asks. ``take(prompts)`` maps decoded prompts back to their slots, in order."""

    def __init__(self, pool, fmt: InstructorFormat):
        self.pool, self.fmt, self.tokenizer = pool, fmt, fmt.tokenizer
        self._pending: dict[str, deque[int]] = defaultdict(deque)  # decoded prompt -> slots handed out, in order
        self._busy: set[int] = set()

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> dict:
        n = len(self.pool)
        slot = next((s % n for s in range(i, i + n) if s % n not in self._busy), None)
        if slot is None:
            raise RuntimeError(f"all {n} episode slots are waiting for rewards: raise episode_slots")
        ids = self.tokenizer(self.fmt.prompt_text(self.pool.state(slot)), add_special_tokens=False)["input_ids"]
        if self.tokenizer.pad_token_id in ids:
            raise TeamsRLError("the instructor's prompt contains its pad token; PPO would mask it out", field="model")
        self._pending[self.tokenizer.decode(ids)].append(slot)
        self._busy.add(slot)
        return {"input_ids": ids}

    def take(self, prompts: list[str]) -> list[int]:
        slots = []
        for prompt in prompts:
            if not self._pending.get(prompt):
                raise RuntimeError(f"a reward was asked for a prompt no slot is waiting on: {prompt[-120:]!r}")
            slots.append(self._pending[prompt].popleft())
            self._busy.discard(slots[-1])
        return slots


def _distinct_pad(tokenizer) -> bool:
    """PPO masks every pad id in a query, so pad must not be a token the prompt uses (SmolLM2: pad = eos =
    ``<|im_end|>``, which ends every chat turn). Returns True when a new token had to be added."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", tokenizer.unk_token):
        if candidate and candidate in vocab and candidate != tokenizer.eos_token:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def _load_models(config: PPOPolicyConfig, model_config: ModelConfig):
    """The tokenizer (left padding, a pad distinct from eos), the policy and the value model (LoRA'd if asked)."""
    from transformers import AutoModelForSequenceClassification

    from teams_rl.llm.loader import load_causal_lm, load_tokenizer

    if model_config.load_in_4bit or model_config.load_in_8bit:
        raise TeamsRLError("quantized loading is not supported by the PPO instructor", field="load_in_4bit")
    ref = model_config.model_name_or_path
    common = {"revision": model_config.model_revision, "field": "model_name_or_path"}
    tokenizer = load_tokenizer(ref, padding_side="left", pad_from_eos=False, **common)
    added = _distinct_pad(tokenizer)
    policy = load_causal_lm(
        ref, dtype=model_config.dtype, attn_implementation=model_config.attn_implementation, **common
    )
    value = load_causal_lm(
        ref,
        dtype=model_config.dtype,
        model_class=AutoModelForSequenceClassification,
        num_labels=1,
        new_head="score",  # initialised below at value_init: its "missing" report is expected
        **common,
    )
    for model in (policy, value):
        if added:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():  # a constant baseline at the uniform policy's expected reward, not a random head
        value.score.weight.zero_()
        if value.score.bias is not None:
            value.score.bias.fill_(config.value_init)
        else:
            head = value.score.weight  # in the model's dtype: a float32 bias under bfloat16 weights breaks the forward
            value.score.bias = torch.nn.Parameter(
                torch.full((1,), config.value_init, dtype=head.dtype, device=head.device)
            )
    if config.value_lora:
        from peft import LoraConfig, inject_adapter_in_model

        targets = model_config.lora_target_modules
        if isinstance(targets, list | tuple | set):
            targets = [t for t in targets if t != "lm_head"]  # the value model's head is `score`, trained in full
        inject_adapter_in_model(
            LoraConfig(
                r=model_config.lora_r, lora_alpha=model_config.lora_alpha, lora_dropout=0.0, target_modules=targets
            ),
            value,
        )
        for name, param in value.named_parameters():
            param.requires_grad = "lora_" in name or name.startswith("score.")
    return tokenizer, policy, value


def train(setup, config: PPOPolicyConfig, model_config: ModelConfig) -> Path:
    """Train the instructor with PPO on ``setup``'s environment; returns the saved policy folder."""
    batch = config.per_device_train_batch_size * config.gradient_accumulation_steps
    if len(setup.pool) < 2 * batch:
        raise TeamsRLError(
            f"PPO builds the next batch of {batch} queries before the current one is scored, so it "
            f"needs episode_slots >= {2 * batch} (have {len(setup.pool)})",
            field="episode_slots",
        )
    set_seed(config.seed)  # the LoRA and value-head init happen before the trainer seeds torch: same recipe, same run
    tokenizer, policy, value = _load_models(config, model_config)
    fmt = InstructorFormat(setup.actions, tokenizer)
    hook = add_action_head(policy, fmt.answer_token_ids)
    peft_config = instructor_peft_config(model_config, policy)
    if peft_config is None:
        raise TeamsRLError(
            "the PPO instructor trains a LoRA adapter (use_peft: true): its KL reference is the adapter switched "
            "off, which is the uniform policy",
            field="use_peft",
        )
    probe = spread_states(setup.pool.seeds, config.probe_states)
    before = probe_actions(policy.eval(), fmt, probe)
    logger.info("PPO: P(action) on %d seed states before training: %s", len(probe), before)

    queries = StateQueries(setup.pool, fmt)
    reward = setup.reward(fmt.parse)
    action_keys = dict.fromkeys((f"env/action_{n}" for n in fmt.names), 0.0)

    def extra_logs() -> dict:
        calls = {f"calls/{role}": n for role, n in setup.calls().items()}
        return {**action_keys, **reward.stats.log_dict(), **calls}

    trainer = CallableRewardPPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=CallableReward(lambda prompts, completions: reward(queries.take(prompts), completions)),
        train_dataset=queries,
        value_model=value,
        peft_config=peft_config,
        extra_logs=extra_logs,
    )
    stopped = train_within_budget(trainer, reward.history, "PPO", kl_key="objective/kl")

    model = trainer.accelerator.unwrap_model(trainer.model).policy.eval()
    after = probe_actions(model, fmt, probe)
    logger.info("PPO: P(action) on %d seed states after training: %s", len(probe), after)
    hook.remove()
    if trainer.accelerator.is_main_process:
        with atomic_folder(setup.policy_dir) as tmp:
            model.save_pretrained(tmp, save_embedding_layers=False)  # the LoRA adapter and the action head
            save_action_head(model, tmp)
            tokenizer.save_pretrained(tmp)
            write_policy_meta(
                tmp,
                "instructor",
                fmt.names,
                algorithm="ppo",
                base_model=model_config.model_name_or_path,
                **head_meta(fmt, config.temperature),
                steps=trainer.state.global_step,
                episodes=trainer.state.episode,
                probe_before=before,
                probe_after=after,
                stopped=stopped,
            )
        plot_training(reward.history, setup.run_dir / "plots", title="PPO")
    trainer.accelerator.wait_for_everyone()
    logger.info(
        "PPO: %d steps, %d episodes finished; policy saved to %s",
        trainer.state.global_step,
        setup.pool.episodes_done,
        setup.policy_dir,
    )
    return setup.policy_dir
