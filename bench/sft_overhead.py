"""Bench: what teams-rl's SFT stage costs on top of a bare TRL ``SFTTrainer`` script.

The same model (the embedded SmolLM2-135M-Instruct unless ``--model``), the same rows (tests/fixtures/sft_dataset),
the same LoRA and training settings go (a) through ``teams_rl.sft.main`` (recipe parsing, data conversion, chat
template and EOS handling, the saved-weights check, model card, loss plot) and (b) through a bare script that builds
the prompt/completion rows by hand and calls ``trl.SFTTrainer`` directly. Each side runs in its own fresh process,
in ABBA order (bare, teams-rl, teams-rl, bare) so warm file caches and drift cancel. Printed: the median optimizer
step time of each (after warm-up steps) and its ratio (goal <= 1.05), and peak resident memory of each process
(``ru_maxrss``, whole process: import, load, train, save) and its ratio. The first step's loss must agree on both
sides (same rows, template and loss mask; a fresh LoRA adapter does not change the output), else it is void.

    python bench/sft_overhead.py                 # embedded SmolLM2-135M on CPU, about 4 minutes on 2 cores
    python bench/sft_overhead.py --steps 30 --model HuggingFaceTB/SmolLM2-360M-Instruct
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teams_rl.core.entry import prepare_process

prepare_process()  # before torch is imported: the CPU thread setting and the warning filters

DATA = ROOT / "tests" / "fixtures" / "sft_dataset"
STEP_GOAL = 1.05
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Identical on both sides; teams-rl gets them as command-line flags, the bare script as SFTConfig/LoraConfig fields.
TRAINING = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
    "max_length": 512,
    "seed": 42,
    "logging_steps": 1,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
    "bf16": False,
    "activation_checkpointing": False,
    "completion_only_loss": True,
    "packing": False,
    "dataloader_pin_memory": False,
}
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


def _timer(warmup: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (forward, backward, optimizer) and the logged losses."""

        def __init__(self):
            self.times, self.losses, self._start = [], [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > warmup:
                self.times.append(time.perf_counter() - self._start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepTimer()


def _teams(model: str, steps: int, out: str, timer) -> None:
    from teams_rl.sft.train import main

    argv = [
        "--model_name_or_path",
        model,
        "--dataset_name",
        str(DATA),
        "--output_dir",
        out,
        "--max_steps",
        str(steps),
        "--use_peft",
        "true",
        "--lora_target_modules",
        *TARGETS,
        "--dtype",
        "float32",
        "--test_split_size",
        "0",
    ]
    for key, value in {**TRAINING, **LORA}.items():
        argv += [f"--{key}", str(value)]
    main(argv, callbacks=[timer])


def _bare(model: str, steps: int, out: str, timer) -> None:
    """What a user would write with TRL alone: rows -> prompt/completion chats -> SFTTrainer -> save."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from teams_rl.core.refs import resolve_model  # only to find the embedded model's folder

    path = resolve_model(model)
    rows = [json.loads(line) for line in (DATA / "rows.jsonl").read_text().splitlines() if line.strip()]
    chats = [
        {
            "prompt": [
                {"role": "user", "content": f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"]}
            ],
            "completion": [{"role": "assistant", "content": r["response"]}],
        }
        for r in rows
    ]
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    config = SFTConfig(output_dir=out, max_steps=steps, **TRAINING)
    lora = LoraConfig(
        r=LORA["lora_r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=base,
        args=config,
        train_dataset=datasets.Dataset.from_list(chats),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[timer],
    )
    trainer.train()
    trainer.save_model(str(Path(out) / "adapter"))


def child(side: str, model: str, steps: int, warmup: int) -> None:
    timer = _timer(warmup)
    with tempfile.TemporaryDirectory() as out:
        (_teams if side == "teams-rl" else _bare)(model, steps, out, timer)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print("RESULT " + json.dumps({"side": side, "times": timer.times, "losses": timer.losses, "peak_kib": peak_kib}))


def _run_side(side: str, model: str, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--model", model, "--steps", str(steps), "--warmup", str(warmup)]
    env = {**os.environ, "TEAMS_RL_LOG_LEVEL": "WARNING"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="base model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per run (default: 14)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing (default: 2)")
    parser.add_argument("--child", choices=["teams-rl", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model, args.steps, args.warmup)
        return 0

    runs: dict[str, list[dict]] = {"bare": [], "teams-rl": []}
    for side in ("bare", "teams-rl", "teams-rl", "bare"):  # ABBA
        start = time.perf_counter()
        runs[side].append(_run_side(side, args.model, args.steps, args.warmup))
        print(f"  {side:<9} run done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    first = {side: [r["losses"][0] for r in rs] for side, rs in runs.items()}
    if max(abs(a - b) for a in first["bare"] for b in first["teams-rl"]) > 1e-3 * abs(first["bare"][0]):
        raise RuntimeError(f"first-step losses differ ({first}): the two sides did not train on the same tokens")

    stats = {}
    for side, rs in runs.items():
        times = [t for r in rs for t in r["times"]]
        stats[side] = {
            "median_s": statistics.median(times),
            "mean_s": statistics.fmean(times),
            "n": len(times),
            "peak_mib": max(r["peak_kib"] for r in rs) / 1024,
            "loss0": rs[0]["losses"][0],
        }
    step_ratio = stats["teams-rl"]["median_s"] / stats["bare"]["median_s"]
    mem_ratio = stats["teams-rl"]["peak_mib"] / stats["bare"]["peak_mib"]
    print(
        f"\nteams-rl sft vs bare trl.SFTTrainer: {args.model}, LoRA r={LORA['lora_r']} on {len(TARGETS)} modules, "
        f"batch {TRAINING['per_device_train_batch_size']}, {args.steps} steps x 2 runs each (ABBA), "
        f"first {args.warmup} steps untimed"
    )
    print(f"{'path':<10}{'steps':>7}{'median s/step':>15}{'mean s/step':>13}{'peak RSS MiB':>14}{'loss@1':>9}")
    for side in ("bare", "teams-rl"):
        s = stats[side]
        print(
            f"{side:<10}{s['n']:>7}{s['median_s']:>15.3f}{s['mean_s']:>13.3f}{s['peak_mib']:>14.0f}{s['loss0']:>9.4f}"
        )
    spread = {side: ", ".join(f"{statistics.median(r['times']):.3f}" for r in rs) for side, rs in runs.items()}
    print(
        f"per-run median s/step (order bare, teams-rl, teams-rl, bare): bare [{spread['bare']}], "
        f"teams-rl [{spread['teams-rl']}]"
    )
    verdict = "meets" if step_ratio <= STEP_GOAL else "MISSES"
    print(f"teams-rl / bare step time = {step_ratio:.3f} ({verdict} the <= {STEP_GOAL} goal)")
    print(f"teams-rl / bare peak RSS  = {mem_ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
