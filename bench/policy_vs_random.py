"""Bench: does a trained instructor get more rows per expert call than uniform-random Evol-Instruct?

Every policy drives the shipped synthesis recipe (same expert, reviewer, screens and token limits) on the held-out
fold of the stratified split, under the same expert-call budget, for several synthesis seeds. Per policy it prints
rows kept at the budget, rows per expert call with a paired bootstrap 95% interval of the ratio to random (the seed
instruction is the unit, summed over the synthesis seeds), Vendi and distinct-2 at an equal row count, the
near-duplicate rate, the action entropy and the per-state spread of P(action | state) on held-out states. Beside
it, the headroom from ``teams-rl explore``: what the best single action and the per-state oracle would gain.

    teams-rl explore --config recipes/smollm2-135m/policy/config_ppo.yaml
    teams-rl train-policy --config recipes/smollm2-135m/policy/config_ppo.yaml
    python bench/policy_vs_random.py --explore runs/smollm2-135m-ppo/explore \\
        --policy ppo=runs/smollm2-135m-ppo/policy --json bench/results/policy_vs_random.json

Baselines always included: ``random``, ``untrained`` (the instructor before training: its action head is zero, so
it is uniform by construction; it checks that nothing else in the instructor path changes the rows) and
``best_single`` (the one action with the best keep rate on the training folds of the explore table). The held-out
table also scores ``best_per_category`` (each state's action is the best one on the training seeds of its category:
what reading only the instruction's category transfers to held-out seeds) and each trained policy as
``NAME_argmax`` (its most likely action per state: how ``teams-rl synthesize`` uses a policy without
``--policy_sample``), and gives every policy's ratio to ``best_single`` with its own paired interval. The
held-out table's helpers are in ``bench/held_out_table.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teams_rl.core.entry import prepare_process

prepare_process()  # before torch is imported: the CPU thread setting and the warning filters

from bench.held_out_table import (
    ARGMAX,
    PER_CATEGORY,
    across_folds,
    best_single,
    depth0_table,
    on_held_out_table,
    policy_of,
    probs_on,
)
from bench.policy_report import plain_entry, report
from teams_rl.core.files import read_jsonl
from teams_rl.core.layout import LEDGER_FILE
from teams_rl.env.build import SeedArguments, select_seeds
from teams_rl.env.environment import State
from teams_rl.evaluate.compare import (
    action_entropy,
    diversity_at_n,
    near_duplicate_rate,
    per_seed_yield,
    plot_ratios,
    state_spread,
)
from teams_rl.evaluate.intervals import paired_bootstrap_rate_ratio
from teams_rl.llm.embeddings import load_embedder
from teams_rl.synthesize.run import main as synthesize

RECIPE = ROOT / "recipes/smollm2-135m/synthesize/config_random.yaml"


def split_args(args) -> list[str]:
    return [
        "--split",
        "held_out",
        "--split_folds",
        str(args.folds),
        "--split_fold",
        str(args.fold),
        "--split_seed",
        str(args.split_seed),
    ]


def run(name: str, ref: str, synth_seed: int, args, extra: list[str]) -> dict:
    out = Path(args.out) / name / f"seed-{synth_seed}"
    argv = [
        "--config",
        str(RECIPE),
        *split_args(args),
        "--max_seeds",
        "100000",
        "--output_dir",
        str(out),
        "--seed",
        str(synth_seed),
        "--policy",
        ref,
        "--depth",
        str(args.depth),
        "--chunk_size",
        "4",
        "--expert_max_calls",
        str(args.budget),
        "--expert_max_new_tokens",
        str(args.answer_tokens),
        "--drop_truncated_responses",  # answers are cut short for speed: the rewrite, the policy's choice, is
        "false",  # what is counted, not whether a 96-token answer finished
        "--overwrite",  # a rerun with other flags re-measures: the old dataset moves to superseded/, the ledger stays
        "true",
        *extra,
    ]
    if args.rewrite_tokens:
        argv += ["--rewrite_max_new_tokens", str(args.rewrite_tokens)]
    if ref != "random":
        argv += ["--policy_sample", "true"]  # draw from the policy (seeded per row), as it acts in the pipeline
    began = time.perf_counter()
    summary = synthesize(argv)
    rows = read_jsonl(out / "dataset" / "rows.jsonl")
    rejected = read_jsonl(out / "dataset" / "rejected.jsonl")
    per_seed_rows, per_seed_calls = per_seed_yield(rows, rejected)
    actions = [r["actions"][-1] for r in rows] + [r["action"] for r in rejected]
    expert = sum(c["new"] + c["cached"] for c in summary["calls"] if c["role"] == "expert")
    return {
        "rows": len(rows),
        "expert_calls": expert,
        "stopped": bool(summary["stopped"]),
        "per_seed_rows": per_seed_rows,
        "per_seed_calls": per_seed_calls,
        "instructions": [r["instruction"] for r in rows],
        "actions": actions,
        "eliminated": summary["eliminated"],
        "wall_s": round(time.perf_counter() - began, 1),
    }


def spread_of(ref: str, states: list[State], actions) -> float | None:
    if ref == "random" or ref.startswith("action:"):
        return 0.0
    probs = policy_of(ref).probabilities(states)
    return float(state_spread(probs.numpy() if hasattr(probs, "numpy") else probs))


def on_table(ref: str, explore: Path, actions, held: set[str]) -> dict:
    """Expected reward and keep rate of a policy on the explore table's depth-0 states of the training seeds."""
    from teams_rl.policy.headroom import expected_reward

    rows = [r for r in depth0_table(explore) if r["seed_id"] not in held]
    states = sorted({r["state"] for r in rows})
    return expected_reward(rows, probs_on(ref, states, [a.name for a in actions]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", action="append", default=[], metavar="NAME=FOLDER", help="a trained policy")
    parser.add_argument("--explore", required=True, help="the policy run's explore folder (table.jsonl, summary)")
    parser.add_argument(
        "--untrained", default="smollm2-135m", help="instructor model for the untrained baseline ('' skips it)"
    )
    parser.add_argument("--budget", type=int, default=60, help="expert calls per policy and synthesis seed")
    parser.add_argument("--synth-seeds", type=int, nargs="+", default=[1, 2, 3], help="synthesis run seeds")
    parser.add_argument("--depth", type=int, default=2, help="evolution steps per seed (default 2)")
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=96,
        help="expert answer length (default 96; a cut answer still counts as a row here)",
    )
    parser.add_argument(
        "--rewrite-tokens", type=int, default=None, help="rewrite_max_new_tokens (default: the recipe's)"
    )
    parser.add_argument("--folds", type=int, default=3, help="split_folds of the policy recipe")
    parser.add_argument("--fold", type=int, default=0, help="the held-out fold (split_fold)")
    parser.add_argument("--split-seed", type=int, default=0, help="split_seed of the policy recipe")
    parser.add_argument("--out", default="runs/bench-policy", help="folder for the per-policy runs")
    parser.add_argument("--json", default=None, help="also write the results JSON here")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="skip the synthesis runs: only the held-out explore table's comparison (minutes, not hours)",
    )
    args = parser.parse_args(argv)
    if not args.table_only:
        # a budget caps what a run folder's ledger has spent, so a run folder used before has less (or none) left
        used = sorted(str(f.parent) for f in Path(args.out).glob(f"*/seed-*/{LEDGER_FILE}"))
        if used:
            parser.error(
                f"--out {args.out} holds earlier synthesis runs ({used[0]}, ...) whose ledgers count "
                "against the budget: pass a new --out"
            )
    began = time.perf_counter()

    seed_args = SeedArguments(
        dataset_name="builtin",
        split="held_out",
        split_folds=args.folds,
        split_fold=args.fold,
        split_seed=args.split_seed,
    )
    seeds = select_seeds(seed_args)
    held = {s.id for s in seeds}
    explore = Path(args.explore)
    single = best_single(explore, held)
    policies: dict[str, tuple[str, list[str]]] = {
        "random": ("random", []),
        "best_single": ("random", ["--actions", single]),
    }
    if args.untrained:
        from teams_rl.env.build import select_actions
        from teams_rl.policy.instructor import write_untrained_policy

        folder = write_untrained_policy(Path(args.out) / "untrained-policy", args.untrained, select_actions(None))
        policies["untrained"] = (str(folder), [])
    trained: list[str] = []
    for item in args.policy:
        name, sep, ref = item.partition("=")
        if not sep:
            parser.error(f"--policy takes NAME=FOLDER, got {item!r}")
        policies[name] = (ref, [])
        trained.append(name)

    from teams_rl.env.build import select_actions

    actions = select_actions(None)
    refs = {name: f"action:{single}" if name == "best_single" else ref for name, (ref, _) in policies.items()}
    held_refs = {"random": "random", "best_single": refs["best_single"], "best_per_category": PER_CATEGORY, **refs}
    held_refs |= {f"{name}_argmax": f"{ARGMAX}{policies[name][0]}" for name in trained}
    held_table = on_held_out_table(held_refs, explore, actions, held)
    headroom = json.loads((explore / "summary.json").read_text(encoding="utf-8"))
    result = {
        "held_out_seeds": len(seeds),
        "fold": f"{args.fold}/{args.folds}",
        "best_single_action": single,
        "headroom": {
            "best_single_rows_ratio": headroom["rows_ratio"]["best_single"],
            "best_per_category_rows_ratio": headroom["rows_ratio"]["best_per_category"],
            "oracle_rows_ratio": headroom["rows_ratio"]["oracle"],
            "oracle_cross_fit_rows_ratio": headroom["rows_ratio"].get("oracle_cross_fit"),
            "uniform_keep_rate": headroom["uniform_keep_rate"],
            "states": headroom["states"],
            "samples_per_cell": headroom.get("samples_per_cell"),
        },
    }
    if held_table is not None:
        result["held_out_table"] = {k: plain_entry(v) for k, v in held_table.items()}
    folds = {f: {s.id for s in select_seeds(dataclasses.replace(seed_args, split_fold=f))} for f in range(args.folds)}
    result["across_folds"] = across_folds(explore, folds, actions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        table = synthesis_table(policies, refs, seeds, args, explore, actions, held)
        result.update(
            budget_expert_calls=args.budget,
            synthesis_seeds=args.synth_seeds,
            depth=args.depth,
            equal_n=table.pop("_equal_n"),
            policies={k: plain_entry(v) for k, v in table.items()},
        )
        plot_ratios(
            {k: v["interval"] for k, v in table.items() if k != "random"},
            out / "policy_vs_random.png",
            f"Rows per expert call vs random ({len(seeds)} held-out seeds x {len(args.synth_seeds)} seeds)",
        )
    if held_table is not None:
        plot_ratios(
            {k: v["interval"] for k, v in held_table.items() if k != "random"},
            out / "held_out_table.png",
            f"Rows per expert call vs random, held-out explore table ({len(seeds)} seeds, one step)",
        )
    result["wall_s"] = round(time.perf_counter() - began, 1)
    text = json.dumps(result, indent=2) + "\n"
    (out / "results.json").write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text, encoding="utf-8")
    report(result, args, out)
    return 0


def synthesis_table(policies, refs, seeds, args, explore: Path, actions, held: set[str]) -> dict:
    """Run every policy through synthesis at the budget for each synthesis seed; the per-policy measurements."""
    runs = {
        name: [run(name, ref, k, args, extra) for k in args.synth_seeds] for name, (ref, extra) in policies.items()
    }
    embedder = load_embedder("minilm")

    def embed(texts):
        return embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    def summed(name: str, key: str) -> dict[str, float]:
        total: dict[str, float] = defaultdict(float)
        for r in runs[name]:
            for seed_id, v in r[key].items():
                total[seed_id] += v
        return {s: total.get(s, 0.0) for s in held}

    n_equal = min(sum(len(r["instructions"]) for r in rs) for rs in runs.values())
    states = [State.from_seed(s) for s in seeds]
    table: dict = {}
    for name, rs in runs.items():
        texts = [t for r in rs for t in r["instructions"]]
        ratio = paired_bootstrap_rate_ratio(
            summed(name, "per_seed_rows"),
            summed(name, "per_seed_calls"),
            summed("random", "per_seed_rows"),
            summed("random", "per_seed_calls"),
        )
        div = diversity_at_n(texts, n_equal, embed=embed) if n_equal else {"vendi": None, "distinct_2": None}
        table[name] = {
            "rows_at_budget": sum(r["rows"] for r in rs) / len(rs),
            "rows_per_call": sum(r["rows"] for r in rs) / max(1, sum(r["expert_calls"] for r in rs)),
            "rows_ratio": ratio.estimate,
            "rows_ratio_ci_lo": ratio.lo,
            "rows_ratio_ci_hi": ratio.hi,
            "share_of_draws_at_or_below_1": ratio.share_below_one,
            "vendi_equal_n": div["vendi"],
            "distinct2_equal_n": div["distinct_2"],
            "near_duplicate_rate": near_duplicate_rate(texts, embed) if texts else None,
            "action_entropy": action_entropy([a for r in rs for a in r["actions"]], len(actions)),
            "state_spread": spread_of(refs[name], states, actions),
            "on_explore_table": on_table(refs[name], explore, actions, held),
            "eliminated": dict(sum((Counter(r["eliminated"]) for r in rs), Counter())),
            "wall_s": sum(r["wall_s"] for r in rs),
            "interval": ratio,
        }
    base_vendi = table["random"]["vendi_equal_n"]
    for entry in table.values():
        v = entry["vendi_equal_n"]
        entry["vendi_ratio_equal_n"] = v / base_vendi if v is not None and base_vendi else None
    table["_equal_n"] = n_equal
    return table


if __name__ == "__main__":
    raise SystemExit(main())
