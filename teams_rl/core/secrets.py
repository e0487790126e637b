"""Secrets never leave the process in clear: one masking function for every log line, saved recipe, card,
``hub.json``, ledger row and error line.

What is masked (each replaced by ``***``):

- credentials in a URL (``https://user:key@host/v1`` -> ``https://***@host/v1``);
- the values of the environment variables that hold keys: the ones a recipe names (``<role>_api_key_env``, default
  ``OPENAI_API_KEY``; see ``register_env``), ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` and the saved Hub token, and
  any variable named like a key (``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``);
- common key shapes: ``sk-...`` (OpenAI, Anthropic), ``hf_...`` (Hugging Face), ``Bearer ...``, ``Basic ...``
  (HTTP clients turn a URL's ``user:password@`` into it, and servers echo it back), and ``api_key=...`` /
  ``"password": "..."`` pairs.

``mask`` applies all three, for our own text (logs, errors, configs, cards). ``mask_known`` applies only the first
two, for data a model wrote (rows, cached answers): a shape rule there could change an honest answer that shows an
example key, while the real key's exact value never belongs in one.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import sys
import traceback
import urllib.parse
import warnings
from collections.abc import Sequence
from pathlib import Path

MASK = "***"

# Variables read on every call (the environment may change while a process runs, as tests do).
_KEY_ENVS: set[str] = {"OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
_VALUES: set[str] = set()  # secrets registered by value (a password found in a base_url)
_KEY_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
_MIN_SECRET = 8  # shorter values ("EMPTY", "1") are not secrets and would mask ordinary words

_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
_SHAPES = (
    # an OpenAI / Anthropic key: sk-, sk-proj-, sk-ant-...; one digit at least, so "sk-learn-style" is no key
    (re.compile(r"\bsk-(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{16,}"), MASK),
    (re.compile(r"\bhf_(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{20,}"), MASK),  # a Hugging Face token
    (re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}"), f"Bearer {MASK}"),
    # api_key=..., "access_token": "...", password: ... (not api_key_env, max_new_tokens or pad_token)
    (
        re.compile(
            r"(?i)\b((?:api|access|auth|refresh|secret)[_-]?(?:key|token)|client[_-]?secret|password|passwd)"
            r"(['\"]?\s*[:=]\s*['\"]?)(?!\*\*\*)([^\s'\"&,;}]{6,})"
        ),
        rf"\1\2{MASK}",
    ),
)


def register_env(*names: str | None) -> None:
    """Also mask the values of these environment variables (a recipe's ``<role>_api_key_env``)."""
    _KEY_ENVS.update(n for n in names if n)


def register(*values: str | None) -> None:
    """Also mask these exact values (e.g. the password of a ``base_url``)."""
    _VALUES.update(v for v in values if v and len(v) >= _MIN_SECRET)


def register_url(url: str | None) -> None:
    """Register the password of ``user:password@`` in ``url`` (the URL form itself is masked anyway)."""
    if not url or "@" not in url:
        return
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return
    password = urllib.parse.unquote(parts.password or "")
    register(parts.password, password or None)
    if parts.username is not None and password:  # the Authorization: Basic header an HTTP client makes of it
        register(base64.b64encode(f"{urllib.parse.unquote(parts.username)}:{password}".encode()).decode())


def _hub_token() -> str | None:
    """The token ``hf auth login`` saved (read directly: no huggingface_hub import for a log line)."""
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "token"
    )
    try:
        stat = os.stat(path)
    except OSError:
        return None
    cached = _TOKEN_CACHE.get(path)
    if cached is None or cached[0] != stat.st_mtime_ns:
        try:
            token = Path(path).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            token = None
        _TOKEN_CACHE[path] = cached = (stat.st_mtime_ns, token)
    return cached[1]


_TOKEN_CACHE: dict[str, tuple[int, str | None]] = {}


def secret_values() -> list[str]:
    """Every secret known by value now, longest first (so a key that contains another is masked whole)."""
    found = set(_VALUES)
    for name, value in os.environ.items():
        if (name in _KEY_ENVS or _KEY_NAME.search(name)) and len(value) >= _MIN_SECRET and value != "EMPTY":
            found.add(value)
    token = _hub_token()
    if token and len(token) >= _MIN_SECRET:
        found.add(token)
    return sorted(found, key=len, reverse=True)


def mask_known(text: str, values: Sequence[str] | None = None) -> str:
    """``text`` with URL credentials and every secret known by value masked (no shape rules). ``values``: the
    result of ``secret_values()`` when the caller masks many texts at once."""
    if not text:
        return text
    if "@" in text:
        text = _URL_CREDENTIALS.sub(rf"\1{MASK}@", text)
    for value in secret_values() if values is None else values:
        if value in text:
            text = text.replace(value, MASK)
    return text


_BASIC = re.compile(r"\bBasic\s+([A-Za-z0-9+/]{8,}={0,2})")


def _basic(match: re.Match) -> str:
    """``Basic <base64 of user:password>`` -> ``Basic ***``; "Basic arithmetic" is no base64 of a pair."""
    try:
        decoded = base64.b64decode(match.group(1), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return match.group(0)
    return f"Basic {MASK}" if ":" in decoded else match.group(0)


def mask(text: str, values: Sequence[str] | None = None) -> str:
    """``text`` with URL credentials, every known secret and every key-shaped string masked."""
    if not text:
        return text
    text = mask_known(text, values)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return _BASIC.sub(_basic, text) if "Basic" in text else text


def mask_data(obj, *, known_only: bool = False, values: Sequence[str] | None = None):
    """A copy of JSON-like data (dicts, lists, tuples, strings) with every string masked; keys stay as they are.
    ``known_only``: ``mask_known`` (for what a model wrote) instead of ``mask``."""
    fn = mask_known if known_only else mask
    values = secret_values() if values is None else values

    def walk(item):
        if isinstance(item, str):
            return fn(item, values)
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, tuple):
            walked = [walk(v) for v in item]
            return type(item)(*walked) if hasattr(item, "_fields") else type(item)(walked)
        return item

    return walk(obj)


class SecretFilter(logging.Filter):
    """Masks each record's message, arguments and traceback text; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_teams_rl_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return True
        record.msg, record.args = mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        record._teams_rl_masked = True
        return True


FILTER = SecretFilter()
_installed = False


def install() -> None:
    """Mask every log record of every logger (ours and libraries', whatever their handlers: the filter runs as each
    record is made, and sits on the root logger's handlers for records made elsewhere), warnings and an uncaught
    exception's traceback. Once per process; later calls only add the filter to new root handlers."""
    global _installed
    for handler in logging.getLogger().handlers:
        if FILTER not in handler.filters:
            handler.addFilter(FILTER)
    if _installed:
        return
    _installed = True
    factory = logging.getLogRecordFactory()

    def masked_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        FILTER.filter(record)
        return record

    logging.setLogRecordFactory(masked_record)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda *a, **k: mask(formatwarning(*a, **k))
    if sys.excepthook is sys.__excepthook__:

        def excepthook(kind, value, tb) -> None:
            sys.stderr.write(mask("".join(traceback.format_exception(kind, value, tb))))

        sys.excepthook = excepthook
