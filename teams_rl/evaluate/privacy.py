"""Membership inference as in the paper: does the tuned model find its training rows likelier than rows it never saw?
Each row is scored by its answer's loss and Min-K% probability; ROC AUC near 0.5 means the model leaks little."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from teams_rl.core.errors import TeamsRLError

logger = logging.getLogger(__name__)

# A row to score: {"prompt": [messages], "completion": [messages]} (a chat) or {"text": str} (plain text).
Row = dict


# --- Statistics (pure) ----------------------------------------------------------------------------------------------
def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a random positive scores above a random negative), ties counting half (the Mann-Whitney U statistic)."""
    pos, neg = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    values = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # ranks start at 1; tied values share their mean rank
    ranks = (first_rank + (counts - 1) / 2)[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(positives: Sequence[float], negatives: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates as the threshold falls through every distinct score (from (0,0) to (1,1))."""
    pos, neg = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    fpr = [0.0] + [float((neg >= t).mean()) for t in thresholds]
    tpr = [0.0] + [float((pos >= t).mean()) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def bootstrap_auc(
    positives: Sequence[float], negatives: Sequence[float], *, iters: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """A percentile interval for the AUC, resampling members and non-members separately with a seeded generator."""
    pos, neg = np.asarray(positives, dtype=float), np.asarray(negatives, dtype=float)
    if len(pos) == 0 or len(neg) == 0 or iters <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    aucs = [roc_auc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(iters)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def min_k_score(token_logprobs: Sequence[float], k: float = 0.2) -> float:
    """Mean log-probability of the ``k`` fraction least likely tokens (Min-K% Prob): high for memorised text."""
    lp = np.sort(np.asarray(token_logprobs, dtype=float))
    if len(lp) == 0:
        return float("nan")
    return float(lp[: max(1, math.ceil(k * len(lp)))].mean())


# --- Rows -----------------------------------------------------------------------------------------------------------
def to_pairs(rows: Sequence[Row], tokenizer) -> list[tuple[str, str]]:
    """(context, target) strings: a chat's prompt rendered with the generation prompt, and its answer exactly as
    the template writes it (end-of-turn token included), so the answer is scored the way SFT trained it."""
    template = bool(getattr(tokenizer, "chat_template", None))
    pairs = []
    for row in rows:
        if "text" in row:
            pairs.append(("", row["text"]))
            continue
        prompt, completion = list(row["prompt"]), list(row["completion"])
        if not template:
            pairs.append(("\n".join(m["content"] for m in prompt) + "\n", completion[-1]["content"]))
            continue
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        pairs.append((head, full[len(head) :]) if full.startswith(head) else (head, completion[-1]["content"]))
    return pairs


def read_rows(path: str | Path) -> list[Row]:
    """Rows from a teams-rl dataset folder or a JSON/JSONL file of instruction/input/response, prompt/completion,
    messages or text records."""
    from teams_rl.sft.data import row_to_chat

    path = Path(path)
    file = path / "rows.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise TeamsRLError("member/non-member rows not found (a dataset folder or a JSON/JSONL file)", file=str(path))
    text = file.read_text(encoding="utf-8")
    try:
        records = (
            json.loads(text) if file.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except json.JSONDecodeError as err:
        raise TeamsRLError(f"not JSON/JSONL: {err}", file=str(file)) from None
    rows = []
    for i, rec in enumerate(records):
        chat = {"text": rec["text"]} if "text" in rec else row_to_chat(rec, source=str(file))
        if chat is None:
            raise TeamsRLError(
                "a row needs text, prompt/completion, messages or instruction/response", file=str(file), line=i + 1
            )
        rows.append(chat)
    return rows


def split_from_sft_recipe(recipe: str | Path) -> tuple[list[Row], list[Row]]:
    """Members (the train split) and non-members (the held-out ``test_split_size`` split) exactly as ``teams-rl sft``
    drew them from this recipe: same sources, mixture, seed and split."""
    from teams_rl.sft.args import parse
    from teams_rl.sft.data import Columns, load_mixture

    (script_args, training_args, _, mixture), _ = parse(["--config", str(recipe)])
    columns = Columns(script_args.instruction_column, script_args.input_column, script_args.response_column)
    train, held_out, _ = load_mixture(script_args, mixture, columns, training_args.seed, want_eval=False)
    if held_out is None or len(held_out) == 0:
        raise TeamsRLError(
            "the SFT recipe holds out no rows (test_split_size); give privacy_non_members instead",
            file=str(recipe),
            field="test_split_size",
        )
    return list(train), list(held_out)


def sample_rows(rows: Sequence[Row], limit: int | None, seed: int) -> list[Row]:
    """At most ``limit`` rows, drawn without replacement with a seeded generator (all of them, in order, if fewer)."""
    if limit is None or len(rows) <= limit:
        return list(rows)
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
    return [rows[i] for i in keep]


# --- Scoring --------------------------------------------------------------------------------------------------------
def token_logprobs(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_length: int = 512,
    desc: str = "score",
) -> list[np.ndarray]:
    """Log-probability of every target token given everything before it, per (context, target) pair."""
    import torch
    from tqdm.auto import tqdm

    encoded = []
    for context, target in pairs:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        if not ctx and tokenizer.bos_token_id is not None:
            ctx = [tokenizer.bos_token_id]
        tgt = tokenizer(target, add_special_tokens=False)["input_ids"]
        ids = (ctx + tgt)[-max_length:]
        encoded.append((ids, min(len(tgt), len(ids) - 1)))  # the first token of a row has no context to score it
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    model.eval()
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, unit="batch", leave=False):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (ids, _) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None].to(device))[..., 0]
        for i, (ids, n_target) in enumerate(batch):
            out.append(logprobs[i, len(ids) - 1 - n_target : len(ids) - 1].cpu().numpy())
    return out


def membership_scores(model, tokenizer, pairs: Sequence[tuple[str, str]], *, min_k: float = 0.2, **kwargs) -> dict:
    """Per row, two membership signals where higher means "looks trained on": -loss and the Min-K% log-probability."""
    lps = token_logprobs(model, tokenizer, pairs, **kwargs)
    return {
        "neg_loss": np.array([float(lp.mean()) if len(lp) else float("nan") for lp in lps]),
        "min_k": np.array([min_k_score(lp, min_k) for lp in lps]),
    }


def membership_auc(members: dict, non_members: dict, *, iters: int = 1000, seed: int = 0) -> dict:
    """AUC, bootstrap interval and ROC curve for each signal (members are the positives)."""
    report = {}
    for signal in members:
        pos, neg = members[signal], non_members[signal]
        pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
        fpr, tpr = roc_curve(pos, neg)
        low, high = bootstrap_auc(pos, neg, iters=iters, seed=seed)
        report[signal] = {
            "auc": roc_auc(pos, neg),
            "ci95": [low, high],
            "members": len(pos),
            "non_members": len(neg),
            "mean_member": float(pos.mean()) if len(pos) else None,
            "mean_non_member": float(neg.mean()) if len(neg) else None,
            "roc": {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()},
        }
    return report
