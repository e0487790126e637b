"""The one exception type for user errors: it carries the file, line and field at fault."""

from __future__ import annotations


class TeamsRLError(Exception):
    """A user error (bad file, bad key, missing model, unreachable server).

    The CLI prints it as one line, ``file:line: field: message``, and exits with code 2.
    Library code raises it; it never prints or exits.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.field = field

    def located(self, file: str | None = None, line: int | None = None) -> TeamsRLError:
        """Fill in the location when the raiser did not know it (e.g. a config key's line)."""
        if self.file is None:
            self.file = file
        if self.line is None:
            self.line = line
        return self

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line is not None else "") + ": "
        what = f"{self.field}: " if self.field else ""
        return f"{where}{what}{self.message}"


class BudgetExhausted(Exception):
    """A role's hard budget (calls or tokens) is spent; the stage stops cleanly and keeps finished rows."""

    def __init__(self, role: str, detail: str):
        super().__init__(f"budget for role '{role}' exhausted: {detail}")
        self.role = role
        self.detail = detail
