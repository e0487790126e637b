"""Bench: trained policies vs the random policy (Evol-Instruct), each driving synthesis on held-out seeds with the
same expert, reviewer and per-role query budget. Prints acceptance rate, mean graded score, distinct-2, embedding
Vendi score and expert queries per kept row, with each policy's ratio to random (goals: acceptance >= 1.2x,
Vendi >= 1.1x).

    python bench/policy_vs_random.py --policy ppo=runs/smollm2-135m-ppo/policy \\
        --policy grpo=runs/smollm2-135m-grpo/policy --policy classic=runs/smollm2-135m-classic/policy

Held-out seeds are the last ``--held-out`` shipped seeds; train with ``held_out_seeds`` >= that so training never
saw them. Each policy gets its own run folder under ``--out`` (so a re-run is answered by the ledgers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teams_rl.core.entry import prepare_process

prepare_process()  # before torch is imported: the CPU thread setting and the warning filters

from teams_rl.env.dataset import load_rows
from teams_rl.env.seeds import BUILTIN, load_seeds
from teams_rl.evaluate.metrics import distinct_n, vendi_score
from teams_rl.llm.embeddings import load_embedder
from teams_rl.synthesize.run import main as synthesize

GOALS = {"acceptance": 1.2, "vendi": 1.1}
COLUMNS = ("acceptance", "graded", "distinct2", "vendi", "expert_per_row")


def held_out_file(n: int, out: Path) -> Path:
    seeds = load_seeds(BUILTIN)[-n:]
    path = out / "held_out_seeds.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"id": s.id, "instruction": s.instruction, "input": s.input}) + "\n" for s in seeds),
        encoding="utf-8",
    )
    return path


def run_policy(name: str, ref: str, seeds: Path, out: Path, args) -> dict:
    argv = [
        "--dataset_name",
        str(seeds),
        "--output_dir",
        str(out / name),
        "--policy",
        ref,
        "--depth",
        str(args.depth),
        "--seed",
        str(args.seed),
        "--expert_model",
        args.model,
        "--reviewer_model",
        args.model,
        "--expert_dtype",
        "float32",
        "--reviewer_dtype",
        "float32",
        "--rewrite_max_new_tokens",
        "96",
        "--expert_max_new_tokens",
        str(args.answer_tokens),
        # graded_logprob at weight 0: recorded in every row for this table, but not part of the reward
        "--reviewer_modes",
        "judge_logprob:1,embedding:1,graded_logprob:0",
    ]
    if ref != "random" and not args.greedy:
        argv += ["--policy_sample", "true"]  # draw from the policy (seeded per row), as the paper's policy acts
    if args.expert_max_calls:
        argv += ["--expert_max_calls", str(args.expert_max_calls)]
    summary = synthesize(argv)
    rows = load_rows(out / name / "dataset")[0]
    expert_calls = sum(c["new"] + c["cached"] for c in summary["calls"] if c["role"] == "expert")
    graded = [r["score_graded_logprob"] for r in rows if r.get("score_graded_logprob") is not None]
    return {
        "rows": len(rows),
        "steps": summary["steps"],
        "acceptance": len(rows) / summary["steps"] if summary["steps"] else 0.0,
        "graded": 1 + 9 * sum(graded) / len(graded) if graded else 0.0,
        "distinct2": distinct_n([r["instruction"] for r in rows], 2),
        "instructions": [r["instruction"] for r in rows],
        "expert_per_row": expert_calls / len(rows) if rows else float("inf"),
        "stopped": summary["stopped"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="a trained policy to compare (repeat); random is always included",
    )
    parser.add_argument("--held-out", type=int, default=16, help="last N shipped seeds (default: 16)")
    parser.add_argument("--depth", type=int, default=2, help="evolution steps per seed (default: 2)")
    parser.add_argument("--expert-max-calls", type=int, default=None, help="per-policy expert budget (default: none)")
    parser.add_argument("--answer-tokens", type=int, default=96, help="expert answer length (default: 96)")
    parser.add_argument("--model", default="smollm2-135m", help="expert and reviewer model (default: smollm2-135m)")
    parser.add_argument(
        "--greedy", action="store_true", help="trained policies take their most likely action instead of sampling one"
    )
    parser.add_argument("--seed", type=int, default=42, help="run seed shared by every policy (default: 42)")
    parser.add_argument("--out", default="runs/bench-policy", help="folder for the per-policy runs")
    args = parser.parse_args(argv)
    policies = {"random": "random"}
    for item in args.policy:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref:
            parser.error(f"--policy takes NAME=FOLDER, got {item!r}")
        policies[name] = ref

    out = Path(args.out)
    seeds = held_out_file(args.held_out, out)
    results = {name: run_policy(name, ref, seeds, out, args) for name, ref in policies.items()}
    embedder = load_embedder("minilm")
    for r in results.values():
        r["vendi"] = vendi_score(embedder.encode(r.pop("instructions"))) if r["rows"] else 0.0

    base = results["random"]
    print(
        f"\nPolicies vs random on {args.held_out} held-out seeds, depth {args.depth}, expert/reviewer "
        f"{args.model}, expert budget {args.expert_max_calls or 'none'}, trained policies "
        f"{'greedy' if args.greedy else 'sampled'}"
    )
    head = f"{'policy':<10}{'rows':>6}{'accept':>8}{'graded':>8}{'dist-2':>8}{'vendi':>8}{'exp/row':>9}"
    print(head + "   ratios to random: accept / graded / dist-2 / vendi / exp-per-row")
    for name, r in results.items():
        ratios = " / ".join(f"{r[c] / base[c]:.2f}" if base[c] else "n/a" for c in COLUMNS)
        print(
            f"{name:<10}{r['rows']:>6}{r['acceptance']:>8.3f}{r['graded']:>8.2f}{r['distinct2']:>8.3f}"
            f"{r['vendi']:>8.2f}{r['expert_per_row']:>9.2f}   {ratios if name != 'random' else '-'}"
        )
    for name, r in results.items():
        if name == "random":
            continue
        for column, goal in GOALS.items():
            ratio = r[column] / base[column] if base[column] else 0.0
            print(f"{name}: {column} {ratio:.2f}x random ({'meets' if ratio >= goal else 'MISSES'} the {goal}x goal)")
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
