"""The expert's answers to a chunk's kept rewrites (``answer_kept``): one seeded request per kept instruction,
screened by the paper's response rules (``screen_answer``) and then the reader's screens, into dataset rows with
full lineage; and the rejected row of a transition eliminated at either stage (``rejected_row``)."""

from __future__ import annotations

from teams_rl.env.chat import to_messages
from teams_rl.env.environment import EMPTY, LLM_ERROR, REFUSAL, TRUNCATED, Transition, derive_seed
from teams_rl.env.parsing import format_rewrite, is_only_punct_or_stopwords, is_refusal
from teams_rl.env.screens import Screens
from teams_rl.llm.base import GenerationRequest
from teams_rl.llm.factory import sampling_from
from teams_rl.synthesize.args import SynthesisArguments


def answer_kept(
    client, kept: list[Transition], expert: dict, args: SynthesisArguments, lineage: dict, screens: Screens
):
    """The expert answers each kept instruction; the paper's response rules, then the reader's screens (repetition,
    language, relevance), eliminate bad answers."""
    sampling = sampling_from(expert)
    requests = [
        GenerationRequest(
            to_messages(t.next_state.instruction, t.next_state.input),
            sampling,
            seed=derive_seed(args.seed, t.state.seed_id, t.state.step, "answer"),
        )
        for t in kept
    ]
    rows, rejected = [], []
    results = client.generate(requests)
    reasons = [screen_answer(result, args.drop_truncated_responses) for result in results]
    passed = [i for i, r in enumerate(reasons) if r is None]
    verdicts = screens.responses(
        [(format_rewrite(kept[i].next_state.instruction, kept[i].next_state.input), results[i].text) for i in passed]
    )
    for i, verdict in zip(passed, verdicts, strict=True):
        reasons[i] = verdict
    for t, result, reason in zip(kept, results, reasons, strict=True):
        if reason is not None:
            rejected.append(rejected_row(t, stage="answer", reason=reason, text=result.text))
            continue
        s = t.next_state
        rows.append(
            {
                "id": f"{s.seed_id}/{s.step}",
                "seed_id": s.seed_id,
                "instruction": s.instruction,
                "input": s.input,
                "response": result.text,
                "depth": s.depth,
                "step": s.step,
                "actions": list(s.actions),
                "parent_instruction": t.state.instruction,
                "reward": t.reward,
                "gain": t.review.gain,
                **{f"score_{m}": v for m, v in t.review.scores.items()},
                "review_parse_failures": t.review.parse_failures,
                "rewrite_finish_reason": t.finish_reason,
                "response_finish_reason": result.finish_reason,
                **lineage,
            }
        )
    return rows, rejected


def screen_answer(result, drop_truncated: bool) -> str | None:
    """The paper's response rules: a short refusal, or nothing but punctuation and stop words."""
    if not result.ok:
        return LLM_ERROR
    if is_only_punct_or_stopwords(result.text):
        return f"answer_{EMPTY}"
    if is_refusal(result.text):
        return f"answer_{REFUSAL}"
    if drop_truncated and result.finish_reason == "length":
        return f"answer_{TRUNCATED}"
    return None


def rejected_row(t: Transition, stage: str = "rewrite", reason: str | None = None, text: str | None = None) -> dict:
    return {
        "id": f"{t.state.seed_id}/{t.state.step + 1}",
        "seed_id": t.state.seed_id,
        "step": t.state.step + 1,
        "stage": stage,
        "reason": reason or t.eliminated,
        "action": t.action,
        "parent_instruction": t.state.instruction,
        "text": t.raw if text is None else text,
        "scores": t.review.scores if t.review else None,
    }
