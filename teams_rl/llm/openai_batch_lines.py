"""The lines of an OpenAI Batch job's files: the ``custom_id`` that names each request in the input file, and the
output and error files read back, line by line, as the direct route's (response, error) pairs."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from teams_rl.llm.openai_responses import _short

# The route's logger: a warning about a job's answer files names the Batch route, not this helper module.
log = logging.getLogger("teams_rl.llm.openai_batch")

Answer = tuple[Any, str | None]  # (a ChatCompletion, None) or (None, the error), as the direct route's calls give


def _custom_ids(bodies: Sequence[dict], which: Sequence[int] | None = None) -> list[str]:
    """Each line's id: a digest of its body and its rank among equal bodies, so it is unique in the job and the
    same in every run, whatever the order the caller passes the same set of calls in."""
    seen: Counter[str] = Counter()
    ids = []
    for body in bodies:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]
        ids.append(f"{digest}-{seen[digest]}")
        seen[digest] += 1
    return ids if which is None else [ids[i] for i in which]


def _read_lines(text: str, file_id: str) -> dict[str, dict]:
    lines = {}
    for n, raw in enumerate(text.splitlines(), 1):
        try:
            line = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            line = None
            log.warning("line %d of %s is not JSON; its request counts as unanswered", n, file_id)
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            lines.setdefault(line["custom_id"], line)
    return lines


def _answer(line: dict, key: str) -> Answer:
    """One output or error line as the direct route's (response, error): the body, a 200 ``chat.completion``, is
    built by the client's own lenient parser; a failure reads like the direct route's (``http 400: ...``)."""
    from openai.types.chat import ChatCompletion

    error = line.get("error")
    if error:
        code, message = (error.get("code"), error.get("message")) if isinstance(error, dict) else (None, error)
        return None, _short(f"{code}: {message}" if code else message, key)
    response = line.get("response") if isinstance(line.get("response"), dict) else {}
    status, body = response.get("status_code"), response.get("body")
    if status != 200:
        inner = body.get("error") if isinstance(body, dict) else None
        message = inner.get("message") if isinstance(inner, dict) else inner or body
        return None, f"{'rate limited' if status == 429 else f'http {status}'}: {_short(message, key)}"
    if not isinstance(body, dict):
        return None, f"bad response: not a JSON object ({_short(body, key) or 'empty body'})"
    return ChatCompletion.model_construct(**body), None
