"""Accepting TLS connections so that a failed handshake is logged with who and why.

When a server is created with ``loop.create_server(..., ssl=context)``, the event loop
runs the handshake itself and a failure (a plaintext client, a peer without a
certificate or with one from another CA) never reaches the application: asyncio and
uvloop only mention it in debug mode. An operator then sees a client or a peer that
cannot connect and a server log that says nothing.

``logged_tls_factory`` wraps a protocol factory instead: the server listens in
plaintext, each accepted connection starts TLS at once with ``loop.start_tls``, a
failure is logged in one line (the remote address and the handshake error) before the
connection is dropped, and only a connection whose handshake succeeded is handed to the
real protocol, as if the loop had done the TLS itself.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Final, cast

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "describe_handshake_error", "logged_tls_factory"]

# Long enough for a slow client on a bad link, short enough that connections that never
# finish their handshake cannot pile up.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0


def _format_peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address or "?")


def describe_handshake_error(exc: BaseException) -> str:
    """A short, specific reason for a failed TLS handshake, for a log line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        if reason == "http request":
            return "not TLS: the client sent a plaintext HTTP request"
        if reason in ("wrong version number", "unknown protocol", "packet length too long"):
            return f"not TLS: the other side did not start a TLS handshake ({reason})"
        if reason == "peer did not return a certificate":
            return "the client presented no certificate, and one is required"
        for prefix in ("tlsv13 alert ", "tlsv1 alert ", "sslv3 alert "):
            if reason.startswith(prefix):
                # The other side gave up on the handshake and said why.
                return f"the other side aborted the TLS handshake: {reason[len(prefix) :]}"
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, TimeoutError) or "longer than" in str(exc):
        return "no TLS handshake within the time allowed"
    if isinstance(exc, ConnectionError | EOFError):
        return "the connection closed during the TLS handshake"
    return f"TLS handshake failed: {exc or type(exc).__name__}"


class _TlsAcceptor(asyncio.Protocol):
    """Stands in for the real protocol until the TLS handshake is over."""

    def __init__(
        self,
        make_protocol: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        logger: logging.Logger,
        what: str,
        handshake_timeout: float,
    ) -> None:
        self._make_protocol = make_protocol
        self._context = context
        self._logger = logger
        self._what = what
        self._handshake_timeout = handshake_timeout
        self._inner: asyncio.BaseProtocol | None = None
        # Raw bytes that arrived before the TLS layer took the stream over: the start of
        # the client's handshake, handed to that layer once it is in place.
        self._before_tls: list[bytes] = []
        self._tls_in_place = False
        # Plaintext that arrives after the handshake but before the real protocol is
        # connected (the TLS layer may deliver data before start_tls returns).
        self._early: list[bytes] = []
        self._early_eof = False
        self._lost = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        self._raw = raw
        # Under asyncio this keeps the stream unread until start_tls takes it over;
        # uvloop starts reading after connection_made returns, so data_received may
        # still see the first bytes (kept in _before_tls).
        raw.pause_reading()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._handshake(raw))
        # Callbacks run in order: this one runs right after the task's first step, in
        # which start_tls has put its TLS layer in place.
        loop.call_soon(self._hand_over_bytes_before_tls, raw)

    def _hand_over_bytes_before_tls(self, raw: asyncio.Transport) -> None:
        self._tls_in_place = True
        data = b"".join(self._before_tls)
        self._before_tls.clear()
        tls_layer = raw.get_protocol()
        if not data or tls_layer is self or raw.is_closing():
            return
        # The TLS layer is a buffered protocol in both asyncio and uvloop; feed it
        # through the protocol interface exactly as the transport would have.
        if isinstance(tls_layer, asyncio.BufferedProtocol) or hasattr(tls_layer, "buffer_updated"):
            layer = cast(asyncio.BufferedProtocol, tls_layer)
            view = memoryview(data)
            while view:
                buffer = memoryview(layer.get_buffer(len(view)))
                size = min(len(buffer), len(view))
                buffer[:size] = view[:size]
                layer.buffer_updated(size)
                view = view[size:]
        else:
            cast(asyncio.Protocol, tls_layer).data_received(data)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        peer = _format_peer(raw.get_extra_info("peername"))
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(
                raw,
                self,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except Exception as exc:  # every way a handshake can fail ends here
            self._logger.warning(
                "refused %s connection from %s: %s", self._what, peer, describe_handshake_error(exc)
            )
            raw.abort()
            return
        if secured is None or self._lost:
            raw.abort()
            return
        inner = self._make_protocol()
        self._inner = inner
        inner.connection_made(secured)
        if isinstance(inner, asyncio.Protocol):
            for chunk in self._early:
                inner.data_received(chunk)
            self._early.clear()
            if self._early_eof and not inner.eof_received():
                secured.close()

    def data_received(self, data: bytes) -> None:
        if not self._tls_in_place:
            # Raw bytes from the transport itself (see connection_made).
            self._before_tls.append(data)
            self._raw.pause_reading()
            return
        # From here on the TLS layer calls this with decrypted data.
        inner = self._inner
        if isinstance(inner, asyncio.Protocol):
            inner.data_received(data)
        elif inner is None:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if not self._tls_in_place:
            return None  # gone before the handshake: the transport closes, it fails
        inner = self._inner
        if isinstance(inner, asyncio.Protocol):
            return inner.eof_received()
        self._early_eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def logged_tls_factory(
    make_protocol: Callable[[], asyncio.BaseProtocol],
    context: ssl.SSLContext,
    logger: logging.Logger,
    what: str,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for a plaintext server that makes every connection TLS.

    ``what`` names the kind of connection in the log line ("peer", "HTTPS client").
    """

    def factory() -> asyncio.Protocol:
        return _TlsAcceptor(make_protocol, context, logger, what, handshake_timeout)

    return factory
