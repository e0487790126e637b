"""Screens: elimination rules for what a reader rejects at once in a synthesized dataset, beyond the paper's rules.

Rewrite screens: the rewriter answered instead of rewriting, drifted off the seed's task, or shrank its parent.
Response screens: the answer loops, is in the wrong language, or does not address its instruction. Each rule is a
pure function returning its reason (a module constant) or None; :class:`Screens` applies them to batches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from datatrove.utils.word_tokenizers import WordTokenizer

ANSWERED = "answered"
DRIFTED = "drifted"
SHRUNK = "shrunk"
REPETITIVE = "answer_repetitive"
WRONG_LANGUAGE = "answer_wrong_language"
OFF_TOPIC = "answer_off_topic"
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


# ---------------------------------------------------------------- responses


class RegexWordTokenizer(WordTokenizer):
    """datatrove word tokenizer without spacy: words are runs of letters and digits, sentences end in .!? or a line."""

    _WORD_RE = re.compile(r"\w+(?:['’]\w+)*")
    _SENTENCE_RE = re.compile(r"\S[^\n]*?(?:[.!?]+(?=\s|$)|(?=\n)|$)")

    def __init__(self, language: str = "en"):
        super().__init__(language)

    def word_tokenize(self, text: str) -> list[str]:
        return self._WORD_RE.findall(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._SENTENCE_RE.finditer(text)]

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[start:end] for start, end in self.span_tokenize(text)]

    def __eq__(self, other: object) -> bool:  # datatrove lru_caches on the tokenizer: equal ones share entries
        return type(other) is type(self) and other.language == self.language

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.language))


@lru_cache(maxsize=1)
def _repetition_filter():
    from datatrove.pipeline.filters import GopherRepetitionFilter

    # Gopher's limits were set for web pages; on answers of a few lines these misfire:
    # - top_n_grams counts the most common n-gram even when it occurs once, so any 4-gram of a 20-word answer is
    #   over 16% of it ("- 1 cup flour / - 1 cup sugar", SQL naming a column twice): off.
    # - a refrain once repeated is 20-25% of a short poem's characters, over dup_line_char_frac /
    #   dup_para_char_frac (0.2) and dup_n_grams (0.15-0.10): all three become 0.3, the share Gopher's line and
    #   paragraph count limits use. A loop the model cannot stop ("so that it is fully set, so that ...") is 40-90%.
    return GopherRepetitionFilter(
        dup_line_char_frac=0.3,
        dup_para_char_frac=0.3,
        top_n_grams=(),
        dup_n_grams=tuple((n, 0.3) for n in range(5, 11)),
        language=RegexWordTokenizer(),
    )


def repetitive(response: str) -> str | None:
    """``REPETITIVE`` when datatrove's Gopher repetition filter (tuned for short texts) drops the response."""
    from datatrove.data import Document

    if not response.strip():
        return None  # empty replies are the stop-words rule's
    return None if _repetition_filter().filter(Document(text=response, id="")) is True else REPETITIVE


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


_CODE_RE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.S)
_LETTERS_RE = re.compile(r"[^\W\d_]+")
_LANGUAGE_NAMES = {
    "ar": "arabic", "cs": "czech", "da": "danish", "de": "german", "el": "greek", "en": "english", "es": "spanish",
    "fi": "finnish", "fr": "french", "he": "hebrew", "hi": "hindi", "id": "indonesian", "it": "italian",
    "ja": "japanese", "ko": "korean", "la": "latin", "nl": "dutch", "no": "norwegian", "pl": "polish",
    "pt": "portuguese", "ru": "russian", "sv": "swedish", "tr": "turkish", "uk": "ukrainian", "vi": "vietnamese",
    "zh": "chinese",
}  # fmt: skip


def detect_language(text: str) -> tuple[str, float]:
    """py3langid's ``(language, normalized probability)`` for the text without its code blocks and inline code."""
    return _identifier().classify(_CODE_RE.sub(" ", text))


def wrong_language(
    instruction: str, response: str, expected: str | None = "en", min_words: int = 8, min_prob: float = 0.9
) -> str | None:
    """``WRONG_LANGUAGE`` when a response of ``min_words``+ words (code aside) is, with probability ``min_prob``+,
    in another language than ``expected`` (None, "" or "none" disables), unless the instruction asks for a
    translation, names that language or is written in it."""
    if not expected or expected.lower() == "none" or len(_LETTERS_RE.findall(_CODE_RE.sub(" ", response))) < min_words:
        return None
    language, prob = detect_language(response)
    if language == expected or prob < min_prob:
        return None
    words = set(_LETTERS_RE.findall(instruction.lower()))
    if any(w.startswith("translat") for w in words) or _LANGUAGE_NAMES.get(language, language) in words:
        return None
    return None if detect_language(instruction)[0] == language else WRONG_LANGUAGE


def off_topic(similarity: float, min_relevance: float = 0.10) -> str | None:
    """``OFF_TOPIC`` when the instruction-vs-response cosine similarity is below ``min_relevance`` (0 disables)."""
    return OFF_TOPIC if min_relevance > 0 and similarity < min_relevance else None


# ---------------------------------------------------------------- batches


@dataclass
class ScreenArguments:
    """Which screens run and their thresholds (a threshold of 0 turns its rule off)."""

    screen_answered: bool = field(
        default=True, metadata={"help": "Drop rewrites without a request cue (the rewriter answered)."}
    )
    screen_min_similarity: float = field(
        default=0.35,
        metadata={"help": "In-depth actions: rewrite-vs-seed embedding similarity needed (drifted); 0 disables."},
    )
    screen_breadth_min_similarity: float = field(
        default=0.15, metadata={"help": "in_breadth: rewrite-vs-seed similarity needed (drifted); 0 disables."}
    )
    screen_min_length_ratio: float = field(
        default=0.8,
        metadata={"help": "In-depth actions: rewrite words needed, as a share of the parent's (shrunk); 0 disables."},
    )
    screen_repetition: bool = field(
        default=True, metadata={"help": "Drop answers the Gopher repetition filter rejects (loops)."}
    )
    screen_language: str | None = field(
        default="en", metadata={"help": "Language answers must be in (py3langid code); empty or none disables."}
    )
    screen_min_relevance: float = field(
        default=0.10, metadata={"help": "Instruction-vs-answer embedding similarity needed (off topic); 0 disables."}
    )


class Screens:
    """The screens over batches. Rewrites: answered, shrunk, drifted; responses: repetitive, wrong_language,
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
                and (a.screen_breadth_min_similarity if action == BREADTH else a.screen_min_similarity) > 0
            ]
            sims = self._similarities([(items[i][2], items[i][0]) for i in todo])
            for i, sim in zip(todo, sims, strict=True):
                reasons[i] = drifted(sim, items[i][3], a.screen_min_similarity, a.screen_breadth_min_similarity)
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
