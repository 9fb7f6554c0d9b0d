"""How a kvctl command fails: its exit codes, and the one-line message for each error.

``kvctl`` itself and ``kvctl shell`` report an error the same way, through
:func:`error_report`.
"""

from __future__ import annotations

from typing import NoReturn

import click

from raftkv.client.http_client import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RaftkvError,
    UnavailableError,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5
EXIT_BAD_REQUEST = 6
EXIT_AUTH = 7
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT death


class CommandError(Exception):
    """An error a command reports with a given exit code and a one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def fail(code: int, message: str) -> NoReturn:
    raise CommandError(code, message)


def error_report(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an error raised by a command."""
    if isinstance(exc, CommandError):
        return exc.code, exc.message
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND, f"not found: {exc.message}"
    if isinstance(exc, ConflictError):
        return EXIT_CONFLICT, f"conflict: {exc.message}"
    if isinstance(exc, UnavailableError):
        message = f"unavailable: {exc.message}"
        if exc.may_have_applied:
            message += " (it may have been applied: check before retrying)"
        return EXIT_UNAVAILABLE, message
    if isinstance(exc, BadRequestError):
        return EXIT_BAD_REQUEST, f"bad request: {exc.message}"
    if isinstance(exc, AuthenticationError):
        return EXIT_AUTH, f"authentication failed: {exc.message}"
    if isinstance(exc, PermissionDeniedError):
        return EXIT_AUTH, f"permission denied: {exc.message}"
    if isinstance(exc, RaftkvError):
        status = f" (HTTP {exc.status})" if exc.status is not None else ""
        return EXIT_ERROR, f"error{status}: {exc.message}"
    if isinstance(exc, click.UsageError):
        return EXIT_USAGE, usage_line(exc)
    if isinstance(exc, click.ClickException):
        return exc.exit_code, exc.format_message()
    if isinstance(exc, click.exceptions.Abort):
        if isinstance(exc.__context__, KeyboardInterrupt):
            return EXIT_INTERRUPTED, "interrupted"
        return EXIT_ERROR, "aborted"
    if isinstance(exc, OSError):
        return EXIT_ERROR, str(exc)
    return EXIT_ERROR, f"unexpected error: {type(exc).__name__}: {exc}"


def is_help_request(exc: click.UsageError) -> bool:
    """A group called without a command (`kvctl members`): click answers with its help."""
    no_args_help = getattr(click.exceptions, "NoArgsIsHelpError", None)
    return no_args_help is not None and isinstance(exc, no_args_help)


def usage_line(exc: click.UsageError) -> str:
    message = exc.format_message().rstrip(".")
    if exc.ctx is None:
        return message
    path = exc.ctx.command_path.strip()
    hint = f"'{path} --help'" if path else "'help'"
    prefix = f"{exc.ctx.info_name}: " if exc.ctx.info_name and exc.ctx.parent else ""
    return f"{prefix}{message} (see {hint})"
