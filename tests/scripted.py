"""Scripted LLMs for synthesis tests: deterministic replies from the request's seed, no model."""

import math

from teams_rl.llm.scripted import ScriptedBackend


def expert_reply(req) -> str:
    if req.messages[0]["role"] == "system":  # an action prompt: answer with a rewrite
        return f"Describe topic number {req.seed % 997} in three detailed steps with one concrete example."
    return (
        "Here is a careful answer that walks through the question step by step, gives the reasoning, "
        f"and ends with a short summary of the key points (variant {req.seed % 13})."
    )


def reviewer_scorer(req) -> list[float]:
    yes = 0.8 if req.seed % 3 else 0.2  # about a third of rewrites judged "no gain"
    return [math.log(yes), math.log(1 - yes)]


def make_backend() -> ScriptedBackend:
    return ScriptedBackend(expert_reply, reviewer_scorer, model_id="scripted")
