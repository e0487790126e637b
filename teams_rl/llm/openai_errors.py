"""What a failed call to an OpenAI-compatible server tells the backends: the server's own error message, how long
its Retry-After asks them to wait and whether anything answered at all, plus the two exceptions a failure travels
in (a 200 whose body is not JSON; an error that stops the whole batch). Shared by the direct and Batch routes."""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

from teams_rl.core.errors import TeamsRLError
from teams_rl.llm.openai_responses import _short


class _NotJSON(Exception):
    """A 200 whose body is not JSON at all (a proxy's HTML page): the client hands it back as text."""


class _Fatal(Exception):
    """Carries a TeamsRLError out of one request so the whole batch stops (the server is unusable, not flaky)."""

    def __init__(self, error: TeamsRLError):
        super().__init__(error.message)
        self.error = error


def _is_unreachable(exc: Exception) -> bool:
    """Connection refused or DNS failure: nothing answered, as opposed to a connection that broke mid-request."""
    # By name: the client may wrap httpx2's or legacy httpx's ConnectError, depending on what is installed.
    return type(exc.__cause__).__name__ == "ConnectError"


def _cause_name(exc: Exception) -> str:
    return type(exc.__cause__ or exc).__name__


def _status_message(exc: Any, key: str) -> str:
    """The server's own error message, short: the openai client put the inner ``error`` object in ``body``.

    Scrubbed before it is cut, so a key that straddles the cut cannot leave its first characters behind."""
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else body
    return _short(message if message else exc.message, key)


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None when absent or bad."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if divisor == 1.0 else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None
