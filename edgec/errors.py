"""Errors that edgec reports to users (exit code 2: bad input or usage)."""


class EdgecError(Exception):
    """A user-facing error: bad model file, unsupported op, budget exceeded, bad option.

    The CLI prints the message and exits with code 2.
    """

    exit_code = 2
