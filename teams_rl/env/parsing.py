"""Pure parsers for LLM replies: judge verdicts, 1-10 grades, rewritten instructions, and the elimination rules.

Nothing here does I/O; every function takes the raw text a model returned.
"""

from __future__ import annotations

import json
import re

INPUT_LABEL = "Input:"  # a rewrite is "<instruction>\n\nInput:\n<input>" when it carries an input

# ---------------------------------------------------------------- judgement

# Longer phrases first, so "not equal" wins over "equal" and "not different" over "different".
_VERDICTS: tuple[tuple[str, bool], ...] = (
    (r"not\s+different", False),
    (r"no\s+different", False),
    (r"not\s+(?:the\s+)?same", True),
    (r"not\s+equal", True),
    (r"not\s+identical", True),
    (r"unequal", True),
    (r"different", True),
    (r"differs?", True),
    (r"yes", True),
    (r"true", True),
    (r"equal", False),
    (r"same", False),
    (r"identical", False),
    (r"no", False),
    (r"false", False),
)
_VERDICT_RE = re.compile(r"\b(?:" + "|".join(f"({p})" for p, _ in _VERDICTS) + r")\b")
_STRONG = {"yes", "no", "true", "false"}
# "Answer: ...", and "Yes or No: ..." when a model echoes the question's format before answering
_LABEL_RE = re.compile(
    r"^\s*(?:(?:final\s+)?(?:answer|verdict|judge?ment|decision|result|output|response)"
    r"|yes\s*(?:or|/)\s*no)\s*[:=-]\s*"
)
_JSON_KEYS = (
    "answer",
    "verdict",
    "judgement",
    "judgment",
    "decision",
    "result",
    "label",
    "output",
    "score",
    "rating",
    "grade",
    "value",
)


def _json_value(text: str) -> object | None:
    """The first meaningful value of a JSON object (or a bare JSON scalar) inside ``text``; None if none."""
    match = re.search(r"\{.*\}", text, re.S)
    candidate = match.group(0) if match else text.strip()
    try:
        obj = json.loads(candidate)
    except (ValueError, TypeError):
        return None
    if isinstance(obj, dict):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for key in _JSON_KEYS:
            if key in lowered:
                return lowered[key]
        return next(iter(obj.values())) if len(obj) == 1 else None
    return obj if isinstance(obj, (str, int, float, bool)) else None


def parse_judgement(text: str) -> bool | None:
    """Yes-like ("yes", "not equal", "different", ``{"answer": "yes"}``) -> True; no-like -> False.

    A verdict word that opens the reply and is followed by punctuation ("**Yes**, because ...") decides
    even if the explanation mentions the other side; otherwise mixed signals ("yes or no") give None.
    """
    value = _json_value(text)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value
    clean = re.sub(r"[*_`#>\"'“”]", " ", text.lower())
    clean = _LABEL_RE.sub("", clean.strip()).strip()
    if clean in ("y", "n"):
        return clean == "y"
    hits = []  # (start, end, word, polarity)
    for m in _VERDICT_RE.finditer(clean):
        idx = next(i for i, g in enumerate(m.groups()) if g is not None)
        hits.append((m.start(), m.end(), m.group(0), _VERDICTS[idx][1]))
    if not hits:
        return None
    polarities = {h[3] for h in hits}
    if len(polarities) == 1:
        return polarities.pop()
    start, end, _, lead = hits[0]
    delimited = start == 0 and re.match(r"\s*(?:[,.:;!\n]|\s[-—–]\s|$)", clean[end:]) is not None
    opposite_strong = any(h[2] in _STRONG and h[3] != lead for h in hits[1:])
    return lead if delimited and not opposite_strong else None


# ---------------------------------------------------------------- grade

_NUMBER = r"(?<![\d.])(-?\d+(?:\.\d+)?)"
_NUMBER_WORDS = "zero one two three four five six seven eight nine ten"
_WORDS = {w: i for i, w in enumerate(_NUMBER_WORDS.split())}
_SCALE_RE = re.compile(
    r"(?:scale|range)\s+(?:of\s+|from\s+)?\d+\s*(?:to|-|–)\s*\d+|\bfrom\s+\d+\s+to\s+\d+|"
    r"\(\s*\d+\s*(?:-|–|to)\s*\d+\s*\)"
)
_LABEL = r"\b(?:score|rating|rated?|grade|give\s+it|give\s+this|deserves?|assigns?)\b[^\d\n]{0,30}?"
_LABELLED_DIGIT_RE = re.compile(_LABEL + _NUMBER)
_LABELLED_WORD_RE = re.compile(_LABEL + r"\b(" + "|".join(_WORDS) + r")\b")
_ANY_RE = re.compile(_NUMBER + r"(?:\s*(?:/|out\s+of)\s*\d+(?:\.\d+)?)?")
_DENOMINATOR_RE = re.compile(r"(?:/|\bout\s+of)\s*$")  # "out of 10, I'd give 7": the 10 is not the grade


def _bare_scale_re(low: int, high: int) -> re.Pattern:
    """The scale written bare, as in "Score 1-10: 7" or "On a 0-10 scale": its ends are not grades."""
    return re.compile(rf"(?<![\d.])(?:0|{low})\s*(?:-|–|—|to)\s*{high}(?![\d.])")


def parse_grade(text: str, low: int = 1, high: int = 10) -> float | None:
    """The grade in ``[low, high]`` a reply gives: "7", "Score: 8/10" (-> 8), "I'd give it a 6.", ``{"score": 9}``.

    A number after a label (score, rating, give it ...) wins; else the first in-range number that is not a
    denominator ("/10", "out of 10") or part of "on a scale of 1 to 10". None when no number is in range.
    """

    def ok(x: float) -> float | None:
        return float(x) if low <= x <= high else None

    value = _json_value(text)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ok(value)
    if isinstance(value, str):
        text = value
    clean = _bare_scale_re(low, high).sub(" ", _SCALE_RE.sub(" ", text.lower()))
    for m in _LABELLED_DIGIT_RE.finditer(clean):
        if (got := ok(float(m.group(1)))) is not None:
            return got
    for m in _LABELLED_WORD_RE.finditer(clean):
        if (got := ok(_WORDS[m.group(1)])) is not None:
            return got
    for m in _ANY_RE.finditer(clean):
        if _DENOMINATOR_RE.search(clean[: m.start()]):
            continue
        if (got := ok(float(m.group(1)))) is not None:
            return got
    return None


# ---------------------------------------------------------------- rewrite

_FENCE_RE = re.compile(r"^```[\w-]*[ \t]*\n(.*)\n```$", re.S)
_KEYWORDS = r"(?:rewritten|revised|rewrite|updated|evolved|modified|harder|improved|version|prompt|instruction)"
_PREAMBLE_RE = re.compile(
    r"^[#*\s]*(?:(?:sure|certainly|of course|okay|ok|absolutely|great)\b[!.,]*\s*)?(?:"
    # "Here is the rewritten instruction:" / "Here's a harder version." (then a line break)
    r"here(?:'s|’s|\s+is|\s+are)\b[^:\n]*?\b" + _KEYWORDS + r"\b[^:\n]*?[#*\s]*(?::[#*]*|[.!]?[ \t]*(?=\n))"
    # "#Rewritten Prompt#:", "**New instruction:**", "Instruction (harder):"
    r"|(?:the\s+|my\s+|a\s+)?(?:(?:rewritten|revised|new|updated|evolved|modified|harder|created|given)\s+)?"
    r"(?:prompt|instruction|question|task)\b(?:\s*\([^)\n]{0,30}\))?[#*\s]*:[#*]*"
    r")[ \t]*\n?",
    re.I,
)
_GREETING_RE = re.compile(r"^(?:sure|certainly|of course|okay|ok|absolutely)[!.,]*[ \t]*(?:\n|$)", re.I)
_TRAILER_RE = re.compile(
    r"\n\s*(?:i\s+hope\s+this\s+helps|hope\s+this\s+helps|let\s+me\s+know|feel\s+free)\b[^\n]*$", re.I
)
_INPUT_RE = re.compile(r"^[ \t]*[#*]*[ \t]*input[ \t]*[#*]*[ \t]*:[#*]*[ \t]*", re.I | re.M)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’"}


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and text[-1] not in text[1:-1]:
        return text[1:-1].strip()
    return text


def parse_rewrite(text: str) -> tuple[str, str]:
    """Split a rewriter reply into ``(instruction, input)``, dropping the chatter a small model wraps it in.

    Removes a leading "Sure!" / "Here is the rewritten instruction:" / "#Rewritten Prompt#:" label, a trailing
    "I hope this helps", and quotes or a code fence wrapping the whole reply. The first line that starts with
    ``Input:`` begins the input. Anything else is kept as it is.
    """
    text = text.strip()
    for _ in range(4):  # labels can stack: "Sure!\n\nRewritten instruction:\n..."
        before = text
        fence = _FENCE_RE.match(text)
        text = fence.group(1).strip() if fence else text
        text = _unquote(_TRAILER_RE.sub("", text).strip())
        text = _GREETING_RE.sub("", text).strip()
        stripped = _PREAMBLE_RE.sub("", text, count=1).strip()
        text = stripped if stripped else text
        if text == before:
            break
    match = _INPUT_RE.search(text)
    if not match:
        return _unquote(text), ""
    return _unquote(text[: match.start()]), text[match.end() :].strip()


def format_rewrite(instruction: str, input: str = "") -> str:
    """The inverse of :func:`parse_rewrite`: the instruction, then an ``Input:`` block when there is an input."""
    instruction, input = instruction.strip(), input.strip()
    return f"{instruction}\n\n{INPUT_LABEL}\n{input}" if input else instruction


# ---------------------------------------------------------------- elimination rules

# "sorry" anywhere (the paper's rule); "I cannot" / "as an AI" only where they open a sentence or follow "but",
# so instructions such as "Explain why I can't sleep" or "As an AI researcher would, ..." are not refusals.
_REFUSAL_RE = re.compile(
    r"\bsorry\b|(?:^|[.!?:;\n]|\b(?:but|however|unfortunately|sadly)\b)[\s,]*"
    r"(?:i\s+(?:cannot|can't|can\s+not)\b|as\s+an\s+ai(?:\s+(?:language\s+model|model|assistant))?\s*(?:,|\bi\b))",
    re.I,
)
_STOPWORD_TEXT = (
    "a an the and or but if then else of to in on at by for with from as is are was were be been being am do does "
    "did have has had i me my we our you your he she it its they them their this that these those there here what "
    "which who whom how why when where not no yes so too very can will would should could may might must just "
    "about into over under up down out off again more most some any all each both few other such only own same "
    "than s t don doesn didn isn aren wasn weren ok okay"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_TEMPLATE_WORDS = (
    "given prompt",
    "rewritten prompt",
    "#rewritten",
    "rewritten instruction",
    "original instruction",
    "the prompt above",
    "original prompt",
    "created prompt",
    "#given prompt",
    "#created prompt",
)


def is_refusal(text: str, max_words: int = 80) -> bool:
    """A short reply that apologises or declines ("sorry", "I cannot", "I can't", "as an AI")."""
    text = text.replace("’", "'")
    return len(text.split()) < max_words and _REFUSAL_RE.search(text) is not None


def is_only_punct_or_stopwords(text: str) -> bool:
    """True when the text has no content word (empty, punctuation, or only words like "the", "and", "it")."""
    words = re.findall(r"[a-z0-9]+", text.lower().replace("’", "'"))
    return all(w in _STOPWORDS for w in words)


def copies_template_words(text: str) -> bool:
    """True when the text leaks the prompt's scaffolding ("Given Prompt", "#Rewritten", "original instruction")."""
    lowered = re.sub(r"[*_]+", "", text.lower())
    lowered = re.sub(r"\s+", " ", lowered)
    return any(phrase in lowered for phrase in _TEMPLATE_WORDS)
