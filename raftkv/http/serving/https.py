"""HTTPS for the worker: uvicorn's HTTP protocol behind a logged TLS handshake.

uvicorn can do TLS itself (it passes ``ssl=`` to ``create_server``, for an adopted
socket too), but then the event loop runs the handshake and a plaintext client or a
client without the required certificate is dropped without a word in the log. Instead
the worker gives uvicorn a protocol factory that runs the handshake itself
(raftkv/wire/tls_accept.py), logs a failure with the client's address and the reason, and
hands a secured connection to uvicorn's ordinary httptools protocol, which sees an
``https`` connection as if uvicorn had set it up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from raftkv.http.serving.settings import WorkerSettings
from raftkv.wire.tls_accept import logged_tls_factory
from raftkv.wire.tls_contexts import server_context

__all__ = ["https_protocol"]


def https_protocol(
    settings: WorkerSettings,
    logger: logging.Logger,
    inner: type[HttpToolsProtocol] = HttpToolsProtocol,
) -> type[asyncio.Protocol] | None:
    """What to give ``uvicorn.Config(http=...)`` for HTTPS; None when HTTPS is off.
    ``inner`` is the HTTP protocol run over TLS (the worker's, with its limits).
    Raises ``TlsSetupError`` when the certificate files cannot be used."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = server_context(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )

    def make_protocol(**uvicorn_arguments: Any) -> asyncio.Protocol:
        # uvicorn calls its protocol class with keyword arguments (config, server state,
        # app state, loop); a function that takes the same arguments works as well.
        def http() -> asyncio.Protocol:
            return inner(**uvicorn_arguments)

        return logged_tls_factory(http, context, logger, "HTTPS client")()

    return cast(type[asyncio.Protocol], make_protocol)
