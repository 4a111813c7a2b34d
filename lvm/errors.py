"""The one exception type for bad input to lvm, and the integer-argument check shared by all."""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """Bad input from a user: it names the argument (or file), the value, and what is accepted.

    The CLI prints its message and exits with status 2; any other exception
    escaping lvm is a bug and keeps its traceback. A subclass of ValueError,
    so ``except ValueError`` keeps working.
    """


def check_int(argument: str, value: object, *, minimum: int = 0, none: bool = False) -> int | None:
    """``value`` as an int: a Python or numpy integer (never a bool) >= ``minimum``.

    ``none=True`` lets None through. Anything else is an InputError naming the
    argument, the value and what is accepted (so 1.7 is refused, not truncated).
    """
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise InputError(f"{argument}={value!r} is invalid; accepted: {'None or ' if none else ''}{what}")
    return int(value)


def one_line(e: BaseException) -> str:
    """An exception as one line for a message: its type and its message's first line (TorchScript
    and pickle errors run to many lines)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0].strip()}" if lines else type(e).__name__
