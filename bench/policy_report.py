"""The console report of ``bench/policy_vs_random.py``: the synthesis table at the budget, the held-out explore
table (each policy's ratio to random and to the best single action) and the headroom line."""

from __future__ import annotations

from pathlib import Path


def plain_entry(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "interval"}


def _fmt(v, w: int, p: int = 3) -> str:
    return f"{v:>{w}.{p}f}" if isinstance(v, float) else f"{'n/a':>{w}}"


def report(result: dict, args, out: Path) -> None:
    """Print the bench's tables: synthesis at the budget (unless --table-only), the held-out table, the headroom."""
    seeds, single = result["held_out_seeds"], result["best_single_action"]
    if "policies" in result:
        print(
            f"\n{seeds} held-out seeds (fold {args.fold}/{args.folds}), budget {args.budget} expert calls, "
            f"synthesis seeds {args.synth_seeds}, depth {args.depth}; best single action: {single}"
        )
        print(
            f"{'policy':<12}{'rows@B':>7}{'rows/call':>10}{'ratio':>7}{'95% CI':>16}{'vendi@n':>9}{'dist2@n':>8}"
            f"{'neardup':>8}{'H(act)':>7}{'spread':>7}"
        )
        for name, e in result["policies"].items():
            ci = f"[{e['rows_ratio_ci_lo']:.2f}, {e['rows_ratio_ci_hi']:.2f}]"
            print(
                f"{name:<12}{e['rows_at_budget']:>7.1f}{_fmt(e['rows_per_call'], 10)}{_fmt(e['rows_ratio'], 7, 2)}"
                f"{ci:>16}{_fmt(e['vendi_equal_n'], 9, 2)}{_fmt(e['distinct2_equal_n'], 8)}"
                f"{_fmt(e['near_duplicate_rate'], 8)}{_fmt(e['action_entropy'], 7, 2)}{_fmt(e['state_spread'], 7)}"
            )
    held = result.get("held_out_table")
    if held:
        states = next(iter(held.values()))["states"]
        print(
            f"\nheld-out explore table: {states} held-out seeds x every action x "
            f"{result['headroom']['samples_per_cell']} samples, one rewrite step, each policy's exact expectation"
        )
        print(
            f"{'policy':<18}{'keep':>7}{'rows/call':>10}{'ratio':>7}{'95% CI':>16}{'P(<=1)':>8}"
            f"{'vs best1':>9}{'95% CI':>16}{'P(<=1)':>8}"
        )
        for name, e in held.items():
            ci = f"[{e['rows_ratio_ci_lo']:.2f}, {e['rows_ratio_ci_hi']:.2f}]"
            vs = e.get("vs_best_single_ratio")
            vs_ci = f"[{e['vs_best_single_ci_lo']:.2f}, {e['vs_best_single_ci_hi']:.2f}]" if vs is not None else "n/a"
            print(
                f"{name:<18}{_fmt(e['keep_rate'], 7)}{_fmt(e['rows_per_call'], 10)}{_fmt(e['rows_ratio'], 7, 2)}"
                f"{ci:>16}{_fmt(e['share_of_draws_at_or_below_1'], 8)}"
                f"{_fmt(vs, 9, 2)}{vs_ci:>16}{_fmt(e.get('vs_best_single_share_at_or_below_1'), 8)}"
            )
        print(
            "vs best1: rows per call over best_single's on the same cells; best_per_category: each state's action"
            " chosen on the training seeds of its category; NAME_argmax: the policy's most likely action per state"
            " (teams-rl synthesize without --policy_sample)"
        )
    folds = result.get("across_folds")
    if folds:
        cat = folds["best_per_category_vs_best_single"]
        print(
            f"every fold ({cat['seeds']} seeds, each chosen on the other folds): best per category vs best single"
            f" {cat['ratio']:.3f}x [{cat['ci_lo']:.3f}, {cat['ci_hi']:.3f}], P(<=1) {cat['share_at_or_below_1']:.3f}"
        )
    h = result["headroom"]
    cross = h.get("oracle_cross_fit_rows_ratio")
    print(
        f"headroom (explore, {h['states']} states): best single {h['best_single_rows_ratio']:.3f}x, "
        f"best per category {h['best_per_category_rows_ratio']:.3f}x, oracle {h['oracle_rows_ratio']:.3f}x in sample"
        + (f", {cross:.3f}x chosen on other samples" if cross else "")
        + " (vs random)"
    )
    if "policies" in result:
        print(
            "expected reward on the explore table (training seeds): "
            + ", ".join(f"{k} {v['on_explore_table']['expected_reward']:.3f}" for k, v in result["policies"].items())
        )
        print(f"equal n for diversity: {result['equal_n']} rows")
    print(f"wall {result['wall_s']:.0f} s; results in {out / 'results.json'}")
