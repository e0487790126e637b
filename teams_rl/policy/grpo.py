"""GRPO for the instructor: TRL's ``GRPOTrainer`` samples a group of one-digit answers per episode state and the
shared ``PolicyReward`` (rewrite, review) scores them; the LoRA adapter (or full model) is saved as a policy folder.

Two things are ours, the rest is TRL (trl 1.12):
- the action head: ``add_action_head`` hooks the output layer, and trl 1.12's GRPO computes both the sampling
  logits and the training log-probs through ``model(...).logits``, so the answer is a menu digit in both and the
  ratio/KL are taken over the menu alone (one completion token: ``max_completion_length`` must be 1);
- fresh states: the dataset holds episode *slots*; each slot's prompt is rendered from ``setup.pool`` at
  generation time (``_generate_and_score_completions``), because the dataloader fetches rows ahead of time while
  the pool only advances when a step's rewards are computed. Kept rewrites thus become the next prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed
from trl import GRPOConfig, GRPOTrainer, ModelConfig, get_quantization_config

from teams_rl.core.bounds import (
    BUDGET,
    COUNT,
    POSITIVE,
    PROBABILITY,
    TRAINING_ARGUMENTS,
    UNIT,
    at_least,
    between,
    bounded,
)
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
from teams_rl.policy.progress import train_within_budget

logger = logging.getLogger(__name__)


@bounded(
    **TRAINING_ARGUMENTS,
    router_aux_loss_coef=at_least(0),
    num_generations_eval=COUNT,
    pad_to_multiple_of=COUNT,
    generation_batch_size=COUNT,
    steps_per_generation=COUNT,
    temperature=POSITIVE,
    top_p=PROBABILITY,
    top_k=BUDGET,
    min_p=UNIT,
    repetition_penalty=POSITIVE,
    num_iterations=COUNT,
    epsilon=POSITIVE,
    delta=POSITIVE,
    epsilon_high=POSITIVE,
    sapo_temperature_neg=POSITIVE,
    sapo_temperature_pos=POSITIVE,
    vespo_k_pos=at_least(0),
    vespo_lambda_pos=at_least(0),
    vespo_k_neg=at_least(0),
    vespo_lambda_neg=at_least(0),
    ref_model_mixup_alpha=UNIT,
    ref_model_sync_steps=COUNT,
    top_entropy_quantile=UNIT,
    entropy_coef=at_least(0),
    entropy_coef_min=at_least(0),
    entropy_coef_max=at_least(0),
    entropy_coef_delta=at_least(0),
    entropy_target=at_least(0),
    off_policy_mask_threshold=at_least(0),
    num_completions_to_print=BUDGET,
    reward_weights=at_least(0),
)
@dataclass
class GRPOPolicyConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` with defaults for a one-token instructor on a small machine (every key is TRL's)."""

    output_dir: str | None = field(default="runs/grpo", metadata={"help": "Run folder (ledger, policy, plots, logs)."})
    max_completion_length: int | None = field(
        default=1,
        metadata={
            "bound": between(1, 1, lo_open=False),
            "help": "Must be 1: the answer is one menu digit (the action mask allows nothing else).",
        },
    )
    num_generations: int | None = field(
        default=4, metadata={"bound": at_least(2), "help": "Answers per state (the GRPO group)."}
    )
    per_device_train_batch_size: int = field(
        default=8, metadata={"bound": COUNT, "help": "Answers per step (states x group)."}
    )
    learning_rate: float = field(
        default=1e-4, metadata={"bound": POSITIVE, "help": "AdamW learning rate (LoRA-sized)."}
    )
    beta: float = field(
        default=0.02,
        metadata={
            "bound": at_least(0),
            "help": "KL to the starting policy (adapter off); keeps some "
            "exploration over the menu. 0 skips the reference pass.",
        },
    )
    logging_steps: float = field(default=1, metadata={"bound": POSITIVE, "help": "Log every N steps."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "tensorboard, wandb, none..."})
    save_strategy: str = field(
        default="no", metadata={"help": "Trainer checkpoints (the policy is saved at the end)."}
    )
    # None, not TRL's True: transformers 5 renamed it activation_checkpointing and warns on every run otherwise.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."}
    )
    bf16: bool | None = field(default=False, metadata={"help": "bfloat16 mixed precision (GPU)."})
    # use_vllm is refused (the instructor answers through its action head), so vLLM's and tools' keys do nothing.
    vllm_server_port: int = inert(GRPOConfig.vllm_server_port)
    vllm_server_timeout: float = inert(GRPOConfig.vllm_server_timeout)
    vllm_group_port: int = inert(GRPOConfig.vllm_group_port)
    vllm_gpu_memory_utilization: float = inert(GRPOConfig.vllm_gpu_memory_utilization)
    vllm_max_model_length: int | None = inert(GRPOConfig.vllm_max_model_length)
    vllm_tensor_parallel_size: int = inert(GRPOConfig.vllm_tensor_parallel_size)
    vllm_importance_sampling_clip_max: float | None = inert(GRPOConfig.vllm_importance_sampling_clip_max)
    vllm_importance_sampling_clip_min: float | None = inert(GRPOConfig.vllm_importance_sampling_clip_min)
    vllm_importance_sampling_cap: float | None = inert(GRPOConfig.vllm_importance_sampling_cap)
    max_tool_calling_iterations: int | None = inert(GRPOConfig.max_tool_calling_iterations)
    probe_states: int = field(
        default=8,
        metadata={
            "bound": BUDGET,
            "help": "Seed states whose action probabilities are logged before and after training (0: skip).",
        },
    )


CONFIG_CLASSES = (GRPOPolicyConfig, LoraModelConfig)


def run_settings(config: GRPOPolicyConfig, model_config: ModelConfig) -> tuple[str, int, str]:
    if not model_config.model_name_or_path:
        raise TeamsRLError("set model_name_or_path: the instructor LLM to train", field="model_name_or_path")
    return config.output_dir, config.seed, model_config.model_name_or_path


def instructor_reward(setup, fmt: InstructorFormat):
    """A TRL reward function over ``setup``'s environment, and the ``PolicyReward`` behind it (stats, history).

    It takes the dataset's ``slot`` column, checks that each prompt still shows its slot's state (the action is
    applied to what the instructor saw), scores, and logs the step's env stats and LLM calls through TRL.
    """
    reward = setup.reward(fmt.parse)
    action_keys = [f"env/action_{n}" for n in fmt.names]

    def instructor_reward(prompts, completions, slot, log_metric=None, **_) -> list[float]:
        for prompt, s in zip(prompts, slot, strict=True):
            if _content(prompt) != fmt.messages(setup.pool.state(s))[-1]["content"]:
                raise RuntimeError(f"slot {s}: the prompt no longer shows the slot's state")
        rewards = reward(list(slot), [_content(c) for c in completions])
        if log_metric is not None:
            stats = reward.stats.log_dict()
            for key, value in {**dict.fromkeys(action_keys, 0.0), **stats}.items():
                log_metric(key, value)
        return rewards

    return instructor_reward, reward


def _content(message) -> str:
    """The text of a prompt or completion, conversational (a list of messages) or plain."""
    return message[-1]["content"] if isinstance(message, list) else message


class _PoolGRPOTrainer(GRPOTrainer):
    """GRPO whose prompts are the episode pool's current states, read when completions are generated."""

    def __init__(self, *args, setup, fmt: InstructorFormat, **kwargs):
        self.setup, self.fmt = setup, fmt
        super().__init__(*args, **kwargs)

    def _generate_and_score_completions(self, inputs):
        inputs = [{**x, "prompt": list(self.fmt.messages(self.setup.pool.state(x["slot"])))} for x in inputs]
        return super()._generate_and_score_completions(inputs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update({f"calls/{role}": n for role, n in self.setup.calls().items()})
        super().log(logs, start_time)


def _check(config: GRPOPolicyConfig, setup) -> None:
    """Refuse settings under which the action mask or the slot pool would silently stop working."""
    if config.max_completion_length != 1:
        raise TeamsRLError(
            "the instructor answers with one menu digit: max_completion_length must be 1",
            field="max_completion_length",
        )
    if config.use_vllm or config.use_liger_kernel:
        key = "use_vllm" if config.use_vllm else "use_liger_kernel"
        raise TeamsRLError(f"{key} bypasses the model's output layer, where the action mask lives", field=key)
    states_per_step = config.generation_batch_size // config.num_generations
    if len(setup.pool) < states_per_step:
        raise TeamsRLError(
            f"{states_per_step} states per generation batch need at least as many episode slots "
            f"(have {len(setup.pool)})",
            field="episode_slots",
        )


def _load_model(model_config: ModelConfig, trust_remote_code: bool):
    from teams_rl.llm.loader import load_causal_lm, load_tokenizer

    common = {
        "revision": model_config.model_revision,
        "trust_remote_code": trust_remote_code,
        "field": "model_name_or_path",
    }
    model = load_causal_lm(
        model_config.model_name_or_path,
        dtype=model_config.dtype,
        attn_implementation=model_config.attn_implementation,
        quantization_config=get_quantization_config(model_config),
        **common,
    )
    return model, load_tokenizer(model_config.model_name_or_path, padding_side="left", **common)


def train(setup, config: GRPOPolicyConfig, model_config: ModelConfig) -> Path:
    """Train the instructor with GRPO on ``setup``'s environment; returns the saved policy folder."""
    from datasets import Dataset

    _check(config, setup)
    set_seed(config.seed)  # the LoRA init happens before the trainer seeds torch: same recipe, same adapter
    model, tokenizer = _load_model(model_config, config.trust_remote_code)
    fmt = InstructorFormat(setup.actions, tokenizer)
    add_action_head(model, fmt.answer_token_ids)
    peft_config = instructor_peft_config(model_config, model)
    probe = spread_states(setup.pool.seeds, config.probe_states)
    before = probe_actions(model.eval(), fmt, probe)
    logger.info("GRPO: P(action) on %d seed states before training: %s", len(probe), before)
    reward_fn, reward = instructor_reward(setup, fmt)
    # One row per episode slot; the prompt here is only the slot's first state (see _PoolGRPOTrainer).
    slots = list(range(len(setup.pool)))
    dataset = Dataset.from_dict({"prompt": [list(fmt.messages(setup.pool.state(s))) for s in slots], "slot": slots})
    trainer = _PoolGRPOTrainer(
        model=model,
        reward_funcs=[reward_fn],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        setup=setup,
        fmt=fmt,
    )
    if trainer.ref_model is not None:  # full fine-tuning with beta > 0: TRL loaded a fresh copy; a zero head on it
        add_action_head(getattr(trainer.ref_model, "module", trainer.ref_model), fmt.answer_token_ids)
    stopped = train_within_budget(trainer, reward.history, "GRPO", kl_key="kl")
    trainer.save_state()  # trainer_state.json: the full log history, beside the TensorBoard logs

    after = probe_actions(trainer.model.eval(), fmt, probe)
    logger.info("GRPO: P(action) on %d seed states after training: %s", len(probe), after)
    with atomic_folder(setup.policy_dir) as tmp:
        trainer.model.save_pretrained(tmp)  # a LoRA adapter (with the action head), or the full model
        save_action_head(trainer.model, tmp)
        tokenizer.save_pretrained(tmp)
        write_policy_meta(
            tmp,
            "instructor",
            fmt.names,
            algorithm="grpo",
            base_model=model_config.model_name_or_path,
            **head_meta(fmt, config.temperature),
            steps=trainer.state.global_step,
            stopped=stopped,
            probe_before=before,
            probe_after=after,
        )
    plot_training(reward.history, setup.run_dir / "plots", title="GRPO")
    logger.info(
        "GRPO: %d steps, %d episodes finished; policy saved to %s",
        trainer.state.global_step,
        setup.pool.episodes_done,
        setup.policy_dir,
    )
    return setup.policy_dir
