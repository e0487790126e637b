"""Sentence-embedding models (novelty rewards, Vendi score, near-duplicates): the embedded MiniLM by default."""

from __future__ import annotations

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.refs import resolve_embedding_model


def load_embedder(ref: str = "minilm"):
    """A sentence-transformers model on CPU (the embedded MiniLM by default)."""
    from sentence_transformers import SentenceTransformer

    path = resolve_embedding_model(ref, field="reviewer_embedding_model")
    try:
        return SentenceTransformer(path, device="cpu")
    except OSError as err:
        raise TeamsRLError(f"cannot load embedding model '{ref}': {err}", field="reviewer_embedding_model") from None
