"""How the command line ends on a user's mistake: one line, exit code 2, nothing written."""

from __future__ import annotations

import errno

import click


class UserError(click.ClickException):
    """A user's mistake (a bad value, file, path or query): one ``Error: ...`` line, exit code 2.

    Unlike ``click.UsageError`` it prints no usage block: the message names
    the field, file or path and the allowed values.

    Raises:
        Nothing on construction; click shows it and exits with code 2 when raised.
    """

    exit_code = 2

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


def store_error(error: OSError) -> click.ClickException:
    """A run store that cannot be written: the user's choice of root (exit 2), or a full disk (exit 1).

    Raises:
        Nothing (it returns the exception for the caller to raise).
    """
    from .store import describe_os_error

    message = getattr(error, "message", None) or describe_os_error(getattr(error, "filename", None) or "", error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return click.ClickException(" ".join(message.split()))
    return UserError(message)
