"""HTTP from one node's worker to another node: the scheme and TLS to use.

A follower asks the leader for its view of the cluster and passes on operations only the
leader can carry out. When this node serves HTTPS, every node of the cluster does (they
are configured alike), so these requests use https and verify the other node's
certificate with the CA the node was given; when the other node demands client
certificates, this node presents its own.
"""

from __future__ import annotations

import httpx

from raftkv.http.serving.settings import WorkerSettings
from raftkv.wire.tls_contexts import client_context

__all__ = ["node_url", "peer_http_client"]


def node_url(settings: WorkerSettings, address: str, path: str) -> str:
    """The URL of ``path`` on the node whose HTTP address is ``address`` (host:port)."""
    scheme = "https" if settings.tls_cert_file is not None else "http"
    return f"{scheme}://{address}{path}"


def peer_http_client(settings: WorkerSettings, timeout: float | None) -> httpx.AsyncClient:
    if settings.tls_cert_file is None:
        return httpx.AsyncClient(timeout=timeout)
    present_own = settings.tls_client_ca_file is not None
    context = client_context(
        settings.outbound_ca_file,
        settings.tls_cert_file if present_own else None,
        settings.tls_key_file if present_own else None,
    )
    return httpx.AsyncClient(timeout=timeout, verify=context)
