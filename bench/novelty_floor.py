"""Bench: how much of the headroom rests on near-copies? The explore table's kept rewrites re-scored as if a copy
screen eliminated every rewrite whose embedding novelty (1 - cosine to its parent, the reviewer's ``embedding``
score) is under a floor, for several floors. With a judge mode configured, ``reviewer_min_novelty`` does not
eliminate anything (the judge decides the gain), so today a rewrite that copies its seed can be kept.

    python bench/novelty_floor.py --explore runs/s10k4/explore --out runs/novelty-floor \
        --json bench/results/novelty_floor.json

No LLM call: it reads ``table.jsonl`` and recomputes ``teams_rl.policy.headroom.summarize`` per floor, and the
paired interval over every fold of the best action per category against the best single action. Each re-screened
table is written as an explore folder (``OUT/floor-F/table.jsonl`` and ``summary.json``), which
``bench/policy_vs_random.py --table-only --explore OUT/floor-F`` scores trained policies on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.held_out_table import across_folds
from teams_rl.core.files import atomic_write_text, read_jsonl, write_jsonl
from teams_rl.env.build import select_actions
from teams_rl.env.seeds import BUILTIN, load_seeds, split_seeds
from teams_rl.policy.headroom import summarize


def with_floor(rows: list[dict], floor: float) -> list[dict]:
    """The rows with every kept rewrite under the novelty floor counted as eliminated."""
    return [dict(r, kept=bool(r["kept"]) and (r.get("score_embedding") or 0.0) >= floor) for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--explore", required=True, help="an explore folder (table.jsonl)")
    parser.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.10], help="novelty floors")
    parser.add_argument("--folds", type=int, default=3, help="split_folds of the policy recipe")
    parser.add_argument("--split-seed", type=int, default=0, help="split_seed of the policy recipe")
    parser.add_argument("--out", default="runs/novelty-floor", help="folder for the re-screened explore tables")
    parser.add_argument("--json", default=None, help="also write the results JSON here")
    args = parser.parse_args(argv)

    rows = read_jsonl(Path(args.explore) / "table.jsonl")
    seeds = load_seeds(BUILTIN)
    folds = {
        s.id: f
        for f in range(args.folds)
        for s in split_seeds(seeds, "held_out", folds=args.folds, fold=f, seed=args.split_seed)
    }
    actions = select_actions(None)
    names = [a.name for a in actions]
    held = {f: {s for s, g in folds.items() if g == f} for f in range(args.folds)}
    kept = [r for r in rows if r["kept"]]
    result = {"explore": args.explore, "kept_rewrites": len(kept), "floors": {}}
    print(f"{len(kept)} kept rewrites in {args.explore}")
    print(
        f"{'floor':>6}{'dropped':>9}{'uniform':>9}{'best1 (in sample)':>19}{'best1':>7}{'per cat':>8}{'x-fit':>7}"
        f"{'per cat / best1, every fold':>30}"
    )
    for floor in args.floors:
        screened = with_floor(rows, floor)
        summary = summarize(screened, names, folds)
        folder = Path(args.out) / f"floor-{floor}"
        folder.mkdir(parents=True, exist_ok=True)
        write_jsonl(folder / "table.jsonl", screened)
        atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
        vs_single = across_folds(folder, held, actions)["best_per_category_vs_best_single"]
        dropped = Counter(r["action"] for r in kept if (r.get("score_embedding") or 0.0) < floor)
        ratio = summary["rows_ratio"]
        entry = {
            "dropped": sum(dropped.values()),
            "dropped_by_action": dict(dropped),
            "uniform_keep_rate": summary["uniform_keep_rate"],
            "best_single_action_in_sample": summary["best_single_action_in_sample"],
            "keep_rate_per_action": {a: v["keep_rate"] for a, v in summary["per_action"].items()},
            "rows_ratio": ratio,
            "best_per_category_vs_best_single_every_fold": vs_single,
        }
        result["floors"][str(floor)] = entry
        ci = f"{vs_single['ratio']:.3f} [{vs_single['ci_lo']:.3f}, {vs_single['ci_hi']:.3f}]"
        print(
            f"{floor:>6.2f}{entry['dropped']:>9}{entry['uniform_keep_rate']:>9.3f}"
            f"{entry['best_single_action_in_sample']:>19}{ratio['best_single']:>7.3f}{ratio['best_per_category']:>8.3f}"
            f"{ratio.get('oracle_cross_fit', float('nan')):>7.3f}{ci:>30}"
        )
        print(f"{'':>6}dropped: " + (", ".join(f"{a} {n}" for a, n in dropped.most_common()) or "none"))
    print(
        "best1, per cat, x-fit: rows per expert call vs uniform random on the same re-screened table (best1 and per"
        " cat chosen on the other folds, x-fit: the cross-fit per-state oracle)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
