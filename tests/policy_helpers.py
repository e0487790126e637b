"""A training setup with scripted LLMs whose reward prefers one action, for policy-training tests."""

import json
import math
from pathlib import Path

from teams_rl.env.actions import load_actions
from teams_rl.env.build import EnvArguments, ReviewArguments, ReviewerArguments, SeedArguments
from teams_rl.llm.factory import BackendPool
from teams_rl.llm.scripted import ScriptedBackend
from teams_rl.policy.train import PolicyArguments, RewriterArguments, build_setup

ACTIONS = load_actions()


def action_of(messages) -> str:
    """Which action's prompt this rewriter request was rendered from (by the template's fixed opening)."""
    last = messages[-1]["content"]
    for action in ACTIONS:
        opening = action.template.split("{")[0].strip()
        if opening and last.startswith(opening):
            return action.name
    raise AssertionError(f"no action template matches: {last[:80]!r}")


def rewriter_reply(req) -> str:
    action = action_of(req.messages)
    return f"Write about topic {req.seed % 991} with the {action.replace('_', ' ')} treatment and two examples."


def make_scorer(preferred: str):
    """Judge P(Yes) = 0.95 for rewrites made by ``preferred``, else 0.05 (eliminated as no gain: reward 0)."""
    marker = f"the {preferred.replace('_', ' ')} treatment"

    def scorer(req) -> list[float]:
        p = 0.95 if marker in req.messages[-1]["content"] else 0.05
        return [math.log(p), math.log(1 - p)]

    return scorer


def write_seeds(folder: Path, n: int = 8) -> Path:
    path = folder / "seeds.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"p{i:02d}", "instruction": f"Explain subject {i} simply."}) + "\n" for i in range(n)
        ),
        encoding="utf-8",
    )
    return path


def make_setup(
    tmp_path: Path,
    monkeypatch,
    preferred: str = "deepen",
    instructor_model: str | None = None,
    depth: int = 1,
    n_seeds: int = 8,
    **policy_kwargs,
):
    """A ``TrainingSetup`` on scripted rewriter/reviewer backends; returns (setup, rewriter_backend)."""
    backend = ScriptedBackend(rewriter_reply, make_scorer(preferred), model_id="scripted")
    monkeypatch.setattr(BackendPool, "get", lambda self, settings, role: backend)
    seeds = SeedArguments(dataset_name=str(write_seeds(tmp_path, n_seeds)))
    policy_args = PolicyArguments(depth=depth, **policy_kwargs)
    rewriter = RewriterArguments(rewriter_model="scripted")
    setup = build_setup(
        tmp_path / "run",
        7,
        instructor_model,
        seeds,
        policy_args,
        rewriter,
        ReviewerArguments(),
        ReviewArguments(reviewer_modes="judge_logprob:1"),
        text_screens_only(),
    )
    return setup, backend


def text_screens_only(**kwargs) -> EnvArguments:
    """The shared env settings with the embedding screens off: scripted rewrites are not about their seeds."""
    off = {
        "screen_min_novelty": 0.0,
        "screen_min_similarity": 0.0,
        "screen_breadth_min_similarity": 0.0,
        "screen_min_relevance": 0.0,
    }
    return EnvArguments(**{**off, **kwargs})
