"""The one exception type for bad input to lvm."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from a user: it names the argument (or file), the value, and what is accepted.

    The CLI prints its message and exits with status 2; any other exception
    escaping lvm is a bug and keeps its traceback. A subclass of ValueError,
    so ``except ValueError`` keeps working.
    """
