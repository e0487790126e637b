"""Dataset diversity metrics as pure functions: distinct-n and the embedding Vendi score."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the unit distinct-n counts."""
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique n-grams over all n-grams in ``texts`` (0 when there are none)."""
    total, seen = 0, set()
    for text in texts:
        tokens = words(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def vendi_score(embeddings) -> float:
    """exp of the Shannon entropy of the eigenvalues of K/n, K the cosine-similarity matrix of the rows.

    1 for n identical items, n for n orthogonal ones: the effective number of distinct items. Computed from the
    d x d matrix X^T X / n, which has the same non-zero eigenvalues as K/n = X X^T / n and stays small for large n.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        return 0.0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms == 0, 1.0, norms)
    gram = x.T @ x if x.shape[1] < x.shape[0] else x @ x.T
    eig = np.linalg.eigvalsh(gram / len(x))
    eig = eig[eig > 1e-12]
    return float(np.exp(-np.sum(eig * np.log(eig))))


def summary_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, min, 10th/50th/90th percentile and max (None when empty)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(x) == 0:
        return {"count": 0, "mean": None, "min": None, "p10": None, "median": None, "p90": None, "max": None}
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return {
        "count": len(x),
        "mean": float(x.mean()),
        "min": float(x.min()),
        "p10": float(p10),
        "median": float(p50),
        "p90": float(p90),
        "max": float(x.max()),
    }


class _WordTokenizer:
    """rouge-score's tokenizer interface over ``words`` (its default drops every non-ASCII letter)."""

    def tokenize(self, text: str) -> list[str]:
        return [w for w in words(text) if w.isalnum()]


def near_duplicates(
    texts: Sequence[str],
    embeddings,
    *,
    rouge_threshold: float = 0.7,
    cosine_threshold: float = 0.9,
    neighbours: int = 50,
) -> dict:
    """Rows with a near twin elsewhere in the set: ROUGE-L F1 above ``rouge_threshold`` (the Self-Instruct filter)
    or embedding cosine above ``cosine_threshold``.

    ROUGE-L is computed against each row's ``neighbours`` most similar rows by embedding, which is every pair for
    sets up to ``neighbours + 1`` rows and keeps large sets near-linear. Returns the rate of each kind, the rate of
    either, and the most similar pairs found.
    """
    from rouge_score.rouge_scorer import RougeScorer
    from tqdm.auto import tqdm

    n = len(texts)
    x = np.asarray(embeddings, dtype=np.float64).reshape(n, -1)
    if n < 2:
        return {"rows": n, "rouge_l_rate": 0.0, "embedding_rate": 0.0, "rate": 0.0, "pairs": []}
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cosine = x @ x.T
    np.fill_diagonal(cosine, -np.inf)
    scorer = RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    candidates = np.argsort(-cosine, axis=1)[:, : min(neighbours, n - 1)]
    pairs = {tuple(sorted((i, int(j)))) for i in range(n) for j in candidates[i]}
    rouge_dup, emb_dup = np.zeros(n, dtype=bool), cosine.max(axis=1) > cosine_threshold
    found = []
    for i, j in tqdm(sorted(pairs), desc="near-duplicates (ROUGE-L)", unit="pair", disable=len(pairs) < 20000):
        rouge = scorer.score(texts[i], texts[j])["rougeL"].fmeasure
        if rouge > rouge_threshold:
            rouge_dup[i] = rouge_dup[j] = True
        if rouge > rouge_threshold or cosine[i, j] > cosine_threshold:
            found.append({"a": i, "b": j, "rouge_l": round(float(rouge), 4), "cosine": round(float(cosine[i, j]), 4)})
    found.sort(key=lambda p: -(p["rouge_l"] + p["cosine"]))
    return {
        "rows": n,
        "rouge_l_rate": float(rouge_dup.mean()),
        "embedding_rate": float(emb_dup.mean()),
        "rate": float((rouge_dup | emb_dup).mean()),
        "pairs": found[:20],
    }
