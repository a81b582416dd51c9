"""Errors that edgec reports to users (exit code 2: bad input or usage)."""


class EdgecError(Exception):
    """A user-facing error: bad model file, unsupported op, budget exceeded, bad option.

    The CLI prints the message and exits with code 2.
    """

    exit_code = 2


class TargetMemoryError(EdgecError):
    """The model (its arena, weights or training memory) does not fit the target's RAM or flash."""
