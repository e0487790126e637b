"""How every stage runs as a process: the CPU thread setting and warning filters set once at start, logging, and
one exit-code contract (0 done, 1 crash, 2 user error, 130 interrupted) for ``teams-rl X``, ``python -m
teams_rl.X`` and ``accelerate launch -m teams_rl.X`` alike."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from teams_rl.core import secrets
from teams_rl.core.errors import TeamsRLError

# Known harmless messages printed between progress bars, matched by text and category (never all warnings).
_HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r".*pin_memory.*no accelerator is found", UserWarning),
    (r".*`torch_dtype` is deprecated", FutureWarning),
    (r".*`is_gradient_checkpointing` is deprecated", FutureWarning),
    # TrainingArguments warns whenever its (default) gradient_checkpointing field is set, which TRL's configs do
    (r".*`gradient_checkpointing` is deprecated and will be removed in v6", FutureWarning),
    (r".*`torch.jit.script_method` is deprecated", DeprecationWarning),
    # TRL's PPO logs the variance of its importance ratios over (epochs x mini-batches x accumulation steps): with
    # one of each, as on a CPU, that is one value and the metric is nan, which is all the warning says
    (r"var\(\): degrees of freedom is <= 0", UserWarning),
)
# Known harmless log lines, by logger and text: DeepSpeed says it once per process on every CPU machine.
_HARMLESS_LOGS: dict[str, tuple[str, ...]] = {
    "DeepSpeed": ("Setting accelerator to CPU",),
    "lm_eval.evaluator": ("Overwriting default num_fewshot",),  # teams-rl sets each task's shots on purpose
    # TRL 1.12's PPO passes a GenerationConfig plus output_scores to generate(), on purpose
    "transformers.generation.utils": ("Passing `generation_config` together with generation-related arguments",),
    # bitsandbytes looks for an optional kernels package at import; its CPU path works without it
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
}
# Loggers that narrate at INFO what the progress bars already show.
_QUIET_LOGGERS = (
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "openai",
    "sentence_transformers",
    "datasets",
    "urllib3",
    "accelerate",
    "DeepSpeed",
    "deepspeed",
    "bitsandbytes",
    "bitsandbytes.cextension",
    "lm_eval",
)


def prepare_process() -> None:
    """Set what must be set before torch is imported, once per process, and quiet the known harmless noise.

    With spinning OpenMP threads (the default) small matmuls on a 2-core machine hit a ~15 ms floor and generation
    runs ~5x slower, so ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose otherwise. API keys and tokens are masked
    in every log record, warning and traceback from here on (``secrets.install``).
    """
    secrets.install()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for message, category in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, texts in _HARMLESS_LOGS.items():
        logger = logging.getLogger(name)  # the library's own logger, created early so the filter is there first
        if not any(isinstance(f, _DropText) for f in logger.filters):
            logger.addFilter(_DropText(texts))


class _DropText(logging.Filter):
    """Drops log records whose message contains one of ``texts``; everything else from that logger passes."""

    def __init__(self, texts: Sequence[str]):
        super().__init__()
        self.texts = tuple(texts)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(t in record.getMessage() for t in self.texts)


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("TEAMS_RL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    secrets.install()  # keys masked in every record (and on the handler basicConfig just made)
    for noisy in _QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def resolve(target: str | Callable[[list[str]], object]) -> Callable[[list[str]], object]:
    """``"package.module:function"`` -> the function, imported only now (after ``prepare_process``)."""
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_stage(target: str | Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Run a stage's command function; user errors become one line on stderr and exit code 2, never a traceback."""
    prepare_process()
    setup_logging()
    try:
        resolve(target)(list(sys.argv[1:] if argv is None else argv))
    except TeamsRLError as err:
        print(f"error: {secrets.mask(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished calls are in the ledger; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


def stage_main(target: str) -> None:
    """The body of a stage package's ``__main__.py``: run it and exit with its code."""
    raise SystemExit(run_stage(target))
