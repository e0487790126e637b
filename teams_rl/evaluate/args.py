"""The evaluation recipe: what to evaluate, on which lm-eval tasks, and which extra reports to write."""

from __future__ import annotations

from dataclasses import dataclass, field

from teams_rl.core.bounds import BUDGET, COUNT, POSITIVE, between, bounded, one_of
from teams_rl.evaluate.lmeval import LOCAL_TASK


@bounded()
@dataclass
class EvalArguments:
    """What to evaluate, on which lm-eval tasks, and which extra reports (dataset metrics, privacy) to write."""

    output_dir: str = field(
        default="runs/evaluate", metadata={"help": "Run folder; everything goes to OUTPUT_DIR/eval."}
    )
    base_model: str = field(default="smollm2-135m", metadata={"help": "Base model: Hub id, folder or smollm2-135m."})
    tuned_model: str | None = field(
        default=None,
        metadata={
            "help": "The fine-tuned model: a peft adapter folder (applied to base_model with lm-eval's peft=) or a "
            "merged model folder / Hub id. null: evaluate the base only."
        },
    )
    tasks: list[str] = field(
        default_factory=lambda: [LOCAL_TASK],
        metadata={
            "help": "lm-eval tasks as NAME or NAME:SHOTS (e.g. arc_challenge:25); NAME alone keeps the task's default."
        },
    )
    tasks_dir: str | None = field(
        default="eval",
        metadata={
            "help": "Folder of local task YAMLs (lm-eval include_path); relative data_files are resolved at run time."
        },
    )
    run_lm_eval: bool = field(default=True, metadata={"help": "Run the benchmarks (false: only metrics/privacy)."})
    limit: float | None = field(
        default=None, metadata={"bound": POSITIVE, "help": "lm-eval limit: documents per task (or a fraction)."}
    )
    batch_size: int = field(default=8, metadata={"bound": COUNT, "help": "lm-eval and privacy scoring batch size."})
    dtype: str = field(
        default="auto",
        metadata={
            "bound": one_of("auto", "float32", "bfloat16", "float16"),
            "help": "Weights dtype: auto, float32, bfloat16, float16.",
        },
    )
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:0, cpu... (default: cuda if available)."})
    apply_chat_template: str = field(
        default="auto",
        metadata={
            "help": "auto: use the model's chat template when it has one (few-shot as multi-turn); true; false.",
            "choices": ["auto", "true", "false"],
        },
    )
    bootstrap_iters: int = field(
        default=1000, metadata={"bound": BUDGET, "help": "lm-eval bootstrap iterations for stderr."}
    )
    seed: int = field(
        default=42, metadata={"bound": BUDGET, "help": "Seeds lm-eval's few-shot sampling, row sampling, bootstrap."}
    )
    dataset: str | None = field(default=None, metadata={"help": "A dataset folder: also write its metrics."})
    embedding_model: str = field(default="minilm", metadata={"help": "Sentence embeddings for Vendi/near-dups."})
    privacy: bool = field(default=False, metadata={"help": "Run the membership-inference (privacy) test."})
    privacy_sft_config: str | None = field(
        default=None,
        metadata={
            "help": "The SFT recipe the tuned model was trained with: members = its train split, non-members = the "
            "rows it held out (test_split_size, seed), drawn exactly as teams-rl sft drew them. null: the "
            "config/sft.yaml that teams-rl sft saved in the tuned model's run folder."
        },
    )
    privacy_members: str | None = field(default=None, metadata={"help": "Or: a file/folder of training rows."})
    privacy_non_members: str | None = field(default=None, metadata={"help": "And: rows never trained on."})
    privacy_max_rows: int | None = field(
        default=200, metadata={"bound": COUNT, "help": "Most rows scored per side (seeded draw)."}
    )
    privacy_min_k: float = field(
        default=0.2,
        metadata={
            "bound": between(0, 1, lo_open=True),
            "help": "Min-K Prob: the fraction K of least likely answer tokens averaged.",
        },
    )
    privacy_max_length: int = field(
        default=512, metadata={"bound": COUNT, "help": "Tokens per scored row (SFT's max_length)."}
    )
    privacy_bootstrap: int = field(
        default=1000, metadata={"bound": COUNT, "help": "Bootstrap resamples for the AUC interval."}
    )
    plots: bool = field(default=True, metadata={"help": "Write PNG plots to OUTPUT_DIR/eval/plots."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Move a finished eval/ to OUTPUT_DIR/superseded/ and evaluate again. Without it a finished eval/ "
            "made by this config is kept, and one made by another config is refused."
        },
    )
