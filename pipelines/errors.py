"""Errors in what the user gave (paths, run ids, config, policy): reported as one line, never retried."""

from __future__ import annotations

from pydantic import ValidationError


class UserError(ValueError):
    """A mistake in the input, output, run id, config or policy of a run: a retry cannot fix it.

    The CLI prints it as one line (`gristmill: error: ...`) and exits 2; the flow and the in-process
    driver never retry a stage that raised it.
    """


def validation_message(exc: ValidationError) -> str:
    """A pydantic error on one line: `field.path: message; ...`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "value"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def is_user_error(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, is a UserError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
