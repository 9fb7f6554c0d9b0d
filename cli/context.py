"""The command context of kvctl: what every command of one invocation (or of one
``kvctl shell``) shares, made by the ``kvctl`` group from its global options and handed to
each command by :data:`pass_command_context`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from raftkv.client.http_client import Client
from raftkv.wire.tls_contexts import TlsSetupError

from . import output
from .errors import EXIT_USAGE, CommandError

DEFAULT_TIMEOUT = 15.0
# One HTTP request never waits longer than this, so that a hung node is left for the
# next endpoint well before the overall --timeout runs out.
MAX_REQUEST_TIMEOUT = 5.0


@dataclass
class CommandContext:
    """The global options and one client, made on first use."""

    endpoints: list[str]
    json: bool = False
    timeout: float = DEFAULT_TIMEOUT
    in_shell: bool = False
    # HTTPS: the CA of the nodes' certificates, and a client certificate and key for a
    # cluster that requires one.
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # Credentials for a cluster with auth enabled: a user (whose password is asked for
    # when not given) or a token.
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            user, password, token = self._credentials()
            try:
                self._client = Client(
                    self.endpoints,
                    timeout=min(self.timeout, MAX_REQUEST_TIMEOUT),
                    retry_for=self.timeout,
                    cacert=self.cacert,
                    cert=self.cert,
                    key=self.key,
                    user=user,
                    password=password,
                    token=token,
                )
            except TlsSetupError as exc:
                raise CommandError(EXIT_USAGE, f"TLS: {exc}") from None
            except ValueError as exc:
                raise CommandError(EXIT_USAGE, f"--endpoints: {exc}") from None
        return self._client

    def _credentials(self) -> tuple[str | None, str | None, str | None]:
        """(user, password, token); all None lets the client read the environment."""
        if self.token:
            return None, None, self.token
        if self.user and self.password is None:
            self.password = click.prompt(
                f"Password for {self.user}",
                hide_input=True,
                err=True,
                default="",
                show_default=False,
            )
        return self.user, self.password, None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


pass_command_context = click.make_pass_decorator(CommandContext)


def emit(context: CommandContext, document: Any, text: Callable[[], str]) -> None:
    """Print ``document`` as JSON with --json, else the readable ``text()``."""
    if context.json:
        click.echo(output.to_json(document))
    else:
        rendered = text()
        if rendered:
            click.echo(rendered)
