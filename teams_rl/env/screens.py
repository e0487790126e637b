"""Screens: elimination rules for what a reader rejects at once in a synthesized dataset, beyond the paper's rules.

Rewrite screens: the rewriter answered instead of rewriting, copied its parent or the seed (no information gain
a reader would see, whatever the judge says), drifted off the seed's task, or shrank its parent.
Response screens: the answer loops, is in the wrong language, or does not address its instruction. Each rule is a
pure function returning its reason (a module constant) or None; :class:`Screens` applies them to batches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from teams_rl.core.bounds import UNIT, at_least, bounded
from teams_rl.env.answer_screens import (  # the answer screens, re-exported: one import for every screen
    OFF_TOPIC,
    REPETITIVE,
    WRONG_LANGUAGE,
    RegexWordTokenizer,
    detect_language,
    off_topic,
    repetitive,
    wrong_language,
)

__all__ = [
    "ANSWERED",
    "COPIED",
    "DRIFTED",
    "OFF_TOPIC",
    "REPETITIVE",
    "SHRUNK",
    "WRONG_LANGUAGE",
    "RegexWordTokenizer",
    "ScreenArguments",
    "Screens",
    "answered",
    "copied",
    "detect_language",
    "drifted",
    "has_request_cue",
    "off_topic",
    "repetitive",
    "shrunk",
    "shows_an_answer",
    "wrong_language",
]

ANSWERED = "answered"
COPIED = "copied"
DRIFTED = "drifted"
SHRUNK = "shrunk"
BREADTH = "in_breadth"  # the one action that writes a new prompt instead of growing its parent

# ---------------------------------------------------------------- answered

# Base-form verbs that open a request. Verbs that also open the steps of an answer ("add", "mix", "stretch",
# "check", "use", "walk") are left out on purpose: "Stretch your arms for 30 seconds." is an answer.
_TASK_VERB_TEXT = (
    "write rewrite rephrase paraphrase compose draft craft edit revise proofread correct fix debug refactor implement "
    "code program translate convert transform format describe explain discuss outline summarize summarise detail "
    "elaborate expand clarify define interpret illustrate demonstrate show tell narrate recount depict portray list "
    "name give provide offer share state specify mention cite enumerate create generate make produce design develop "
    "build construct devise invent brainstorm formulate propose suggest recommend advise plan prepare schedule "
    "organize organise arrange structure compare contrast classify categorize categorise group rank sort match label "
    "calculate compute solve find determine estimate predict derive prove verify evaluate assess analyze analyse "
    "examine investigate explore research review critique rate judge measure count simplify identify highlight "
    "extract pick choose select decide argue justify persuade convince defend imagine consider suppose assume "
    "pretend picture envision think reflect infer deduce help answer respond reply complete continue finish draw "
    "sketch plot chart map model simulate optimize improve teach guide read act role-play trace forecast send email "
    "invite introduce announce greet thank apologize apologise welcome pitch sell promote advertise"
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TASK_VERBS = _words(_TASK_VERB_TEXT)
_FILLERS = _words("please kindly now then also first next finally lastly briefly carefully and so")
# A sentence opened by one of these is a lead-in ("In 150 words, ...", "As a nutritionist, ..."): look after its comma.
_LEAD_INS = _words(
    "in using given based as with for from after before without assuming considering taking keeping drawing "
    "acting if when while on at by starting imagining pretending"
)
_WH = _words("how what which why who whom whose")
_AUX = _words("is are was were do does did can could will would should has have had may might must")
_INPUT_BLOCK_RE = re.compile(r"^[ \t]*[#*]*[ \t]*input[ \t]*[#*]*[ \t]*:", re.I | re.M)
_SEGMENT_RE = re.compile(r"\n+|(?<=[.!?])\s+|[:;]\s")  # lines, sentences, clauses after ":" or ";"
_MARKUP_RE = re.compile(r"^(?:[\s>#*_`\"'“”‘’(\[•·–—-]|\d+[.)](?=\s))+")
_TOKEN_RE = re.compile(r"[\w'’-]+|[^\w\s]")
_REQUEST_RE = re.compile(
    r"\b(?:can|could|would|will)\s+you\b|\byour\s+(?:task|job|goal|assignment|challenge|mission)\b|\bhelp\s+me\b"
    r"|\byou\s+are\s+(?:asked|required|tasked|expected|invited)\s+(?:to|with)\b"
    r"|\b(?:task|goal|job|aim|challenge|assignment)\s+(?:is|will\s+be)\s+to\b"
    r"|\bi\s+(?:need|want|would\s+like|'d\s+like)\s+(?:you|a|an|some|help|to\s+(?:know|learn|understand))\b",
    re.I,
)
_YOU_MUST_RE = re.compile(r"\byou\s+(?:must|need\s+to|should|have\s+to|will\s+need\s+to)\s+([\w-]+)", re.I)


def _opens_request(segment: str) -> bool:
    """The segment opens with a task verb or a question word, after fillers ("please", "then") and lead-ins."""
    tokens = _TOKEN_RE.findall(_MARKUP_RE.sub("", segment).replace("*", "").replace("__", "").lower())
    i = 0
    while i < len(tokens):
        word, after = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if word in _FILLERS:
            i += 2 if after == "," else 1
        elif word in _TASK_VERBS:
            return after not in (":", "of") and not (word == "make" and after == "sure")
        elif word in _WH or (word in ("when", "where") and after in _AUX):
            return True
        elif word in _LEAD_INS and "," in tokens[i:]:
            i = tokens.index(",", i) + 1
        else:
            return False
    return False


def has_request_cue(text: str) -> bool:
    """True when the instruction part (before any ``Input:`` block) reads as a request, not as an answer."""
    text = text.replace("’", "'")
    match = _INPUT_BLOCK_RE.search(text)
    text = text[: match.start()] if match else text
    if "?" in text or _REQUEST_RE.search(text):
        return True
    if any(m.group(1).lower() in _TASK_VERBS for m in _YOU_MUST_RE.finditer(text)):
        return True
    return any(_opens_request(s) for s in _SEGMENT_RE.split(text) if s.strip())


# Signs that the rewriter wrote (part of) an answer, whatever request it also wrote: an answer section, a reply that
# opens with a list item or with code (SQL keywords in capitals, a fence), or a bare yes/no as its last line.
_ANSWER_SECTION_RE = re.compile(
    r"^[ \t]*[#*]*[ \t]*(?:output|answer|response|solution|result)[ \t]*[#*]*[ \t]*:", re.I | re.M
)
_OPENS_WITH_ITEM_RE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S")
_OPENS_WITH_CODE_RE = re.compile(r"^\s*(?:```|(?:SELECT|CREATE|INSERT|UPDATE|DELETE|WITH|DROP|ALTER)\b)")
_LAST_LINE_VERDICT_RE = re.compile(r"\n\s*(?:yes|no|true|false)[.!]?\s*$", re.I)


def shows_an_answer(rewrite: str) -> bool:
    """True when the rewrite carries an answer: "Output:"/"Answer:" sections, a reply that opens with a list item
    that is no request ("1. Start with the feet."), or with code, or a last line that is a bare yes/no. (The
    ``Input:`` block is the instruction's context.)"""
    match = _INPUT_BLOCK_RE.search(rewrite)
    head = rewrite[: match.start()] if match else rewrite
    return bool(
        _ANSWER_SECTION_RE.search(rewrite)
        or (_OPENS_WITH_ITEM_RE.match(head) and not _opens_request(head.strip().splitlines()[0]))
        or _OPENS_WITH_CODE_RE.match(head)
        or _LAST_LINE_VERDICT_RE.search(rewrite)
    )


def answered(rewrite: str) -> str | None:
    """``ANSWERED`` when the rewrite has no request cue ("The output will be 30.", "15 minutes of brisk walking.")
    or shows an answer beside its request ("...lighthouse.\n\nOutput:\nThe island...", "1. Start with...")."""
    return None if has_request_cue(rewrite) and not shows_an_answer(rewrite) else ANSWERED


def copied(similarity: float, min_novelty: float = 0.05) -> str | None:
    """``COPIED`` when the rewrite's novelty (1 - its highest cosine similarity to the parent or the seed) is below
    ``min_novelty`` (0 disables): a paraphrase or a copy that the small judge may still call a gain."""
    return COPIED if min_novelty > 0 and 1.0 - similarity < min_novelty else None


def drifted(
    similarity: float, action: str, min_similarity: float = 0.35, breadth_min_similarity: float = 0.15
) -> str | None:
    """``DRIFTED`` when the rewrite-vs-seed cosine similarity is below the action's threshold (0 disables)."""
    threshold = breadth_min_similarity if action == BREADTH else min_similarity
    return DRIFTED if threshold > 0 and similarity < threshold else None


def shrunk(parent: str, rewrite: str, action: str, min_ratio: float = 0.8) -> str | None:
    """``SHRUNK`` when an in-depth rewrite has fewer than ``min_ratio`` x its parent's words (0 disables)."""
    if min_ratio <= 0 or action == BREADTH:
        return None
    return SHRUNK if len(rewrite.split()) < min_ratio * len(parent.split()) else None


# ---------------------------------------------------------------- batches


@bounded()
@dataclass
class ScreenArguments:
    """Which screens run and their thresholds (a threshold of 0 turns its rule off)."""

    screen_answered: bool = field(
        default=True, metadata={"help": "Drop rewrites without a request cue (the rewriter answered)."}
    )
    screen_min_novelty: float = field(
        default=0.05,
        metadata={
            "bound": UNIT,
            "help": "Rewrite novelty needed: 1 - its embedding similarity to the parent or the seed (copied); 0 "
            "disables.",
        },
    )
    screen_min_similarity: float = field(
        default=0.35,
        metadata={
            "bound": UNIT,
            "help": "In-depth actions: rewrite-vs-seed embedding similarity needed (drifted); 0 disables.",
        },
    )
    screen_breadth_min_similarity: float = field(
        default=0.15,
        metadata={"bound": UNIT, "help": "in_breadth: rewrite-vs-seed similarity needed (drifted); 0 disables."},
    )
    screen_min_length_ratio: float = field(
        default=0.8,
        metadata={
            "bound": at_least(0),
            "help": "In-depth actions: rewrite words needed, as a share of the parent's (shrunk); 0 disables.",
        },
    )
    screen_repetition: bool = field(
        default=True, metadata={"help": "Drop answers the Gopher repetition filter rejects (loops)."}
    )
    screen_language: str | None = field(
        default="en", metadata={"help": "Language answers must be in (py3langid code); empty or none disables."}
    )
    screen_min_relevance: float = field(
        default=0.10,
        metadata={"bound": UNIT, "help": "Instruction-vs-answer embedding similarity needed (off topic); 0 disables."},
    )


class Screens:
    """The screens over batches. Rewrites: answered, shrunk, copied, drifted; responses: repetitive, wrong_language,
    off_topic (text rules first, then the embedding ones). Each item gets its first failing reason or None.

    ``embedder`` is a sentence-transformers-like model; each batch makes at most one ``encode`` call, over the
    distinct texts of the items the text rules kept. With ``embedder=None`` the similarity rules are skipped.
    """

    def __init__(self, args: ScreenArguments, embedder=None):
        self.args = args
        self.embedder = embedder

    def _similarities(self, pairs: list[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))
        vectors = self.embedder.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        row = {t: i for i, t in enumerate(texts)}
        return [float(vectors[row[a]] @ vectors[row[b]]) for a, b in pairs]

    def rewrites(self, items: Sequence[tuple[str, str, str, str]]) -> list[str | None]:
        """Reasons for ``(seed_text, parent_text, rewrite_text, action_name)`` items."""
        a = self.args
        reasons = [
            (answered(rewrite) if a.screen_answered else None)
            or shrunk(parent, rewrite, action, a.screen_min_length_ratio)
            for _, parent, rewrite, action in items
        ]
        if self.embedder is not None:
            todo = [
                i
                for i, (_, _, _, action) in enumerate(items)
                if reasons[i] is None
                and (
                    a.screen_min_novelty > 0
                    or (a.screen_breadth_min_similarity if action == BREADTH else a.screen_min_similarity) > 0
                )
            ]
            # one encode call: each rewrite against its seed (drifted, copied) and its parent (copied)
            pairs = [(items[i][2], items[i][k]) for i in todo for k in (0, 1)]
            sims = self._similarities(pairs)
            for n, i in enumerate(todo):
                to_seed, to_parent = sims[2 * n], sims[2 * n + 1]
                reasons[i] = copied(max(to_seed, to_parent), a.screen_min_novelty) or drifted(
                    to_seed, items[i][3], a.screen_min_similarity, a.screen_breadth_min_similarity
                )
        return reasons

    def responses(self, items: Sequence[tuple[str, str]]) -> list[str | None]:
        """Reasons for ``(instruction_text, response_text)`` items (the instruction with its input)."""
        a = self.args
        reasons = [
            (repetitive(response) if a.screen_repetition else None)
            or wrong_language(instruction, response, a.screen_language)
            for instruction, response in items
        ]
        if self.embedder is not None and a.screen_min_relevance > 0:
            todo = [i for i, r in enumerate(reasons) if r is None]
            sims = self._similarities([items[i] for i in todo])
            for i, sim in zip(todo, sims, strict=True):
                reasons[i] = off_topic(sim, a.screen_min_relevance)
        return reasons
