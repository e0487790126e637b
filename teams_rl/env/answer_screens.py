"""Answer screens: the expert's answer loops (datatrove's Gopher repetition rules), is in the wrong language
(py3langid), or does not address its instruction. Pure functions returning their reason or None; ``screens.Screens``
applies them to batches."""

from __future__ import annotations

import re
from functools import lru_cache

from datatrove.utils.word_tokenizers import WordTokenizer

REPETITIVE = "answer_repetitive"
WRONG_LANGUAGE = "answer_wrong_language"
OFF_TOPIC = "answer_off_topic"


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
