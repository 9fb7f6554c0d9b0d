"""Mutual TLS on the peer links: real TCP on loopback, under asyncio's loop and uvloop.

A node accepts only a peer whose certificate its cluster's CA signed, and only dials a
peer whose certificate does; whoever refuses logs one line saying who and why.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from raftkv.node.transport import PeerTransport
from raftkv.wire.certificates import (
    create_cluster_certs,
    issue,
    load_authority,
    new_authority,
    node_file_names,
    write_pair,
)
from raftkv.wire.peer_tls import PeerTls
from raftkv_ext.codec import PROTOCOL_VERSION, AppendEntriesResponse, Handshake, encode

pytestmark = pytest.mark.timeout(60)

CLUSTER = 11
HOST = "127.0.0.1"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.2, "connect_timeout": 2.0}

Runner = Callable[..., None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(body: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
        async def main() -> None:
            async with asyncio.timeout(timeout):
                await body()

        with asyncio.Runner(loop_factory=factory) as r:
            r.run(main())

    return runner


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's CA and nodes 1-3, plus a node 2 from another CA ("rogue-2") and a
    node 3 whose certificate has expired ("expired-3")."""
    directory = tmp_path_factory.mktemp("certs")
    create_cluster_certs(directory, 3)
    other = new_authority("some other CA")
    write_pair(
        directory / "rogue-2.pem",
        directory / "rogue-2-key.pem",
        *issue(other, "node-2", ["127.0.0.1"], server=True, client=True),
    )
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    write_pair(
        directory / "expired-3.pem",
        directory / "expired-3-key.pem",
        *issue(
            load_authority(directory),
            "node-3",
            ["127.0.0.1"],
            server=True,
            client=True,
            days=1,
            not_before=long_ago,
        ),
    )
    return directory


def tls_of(certs: Path, node_id: int, name: str | None = None) -> PeerTls:
    if name is None:
        cert, key = node_file_names(certs, node_id)
    else:
        cert, key = certs / f"{name}.pem", certs / f"{name}-key.pem"
    return PeerTls(cert, key, certs / "ca.pem")


class Node:
    def __init__(self, node_id: int, tls: PeerTls) -> None:
        self.id = node_id
        self.received: list[Any] = []
        self.log = logging.getLogger(f"test.tls.node{node_id}")
        self.transport = PeerTransport(
            node_id,
            CLUSTER,
            HOST,
            0,
            {},
            self.received.extend,
            lambda peer: None,
            logger=self.log,
            tls=tls,
            **FAST,
        )

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.transport.bound_port)


async def start(nodes: list[Node]) -> None:
    for node in nodes:
        await node.transport.start()
    for node in nodes:
        node.transport.update_peers({n.id: n.address for n in nodes})


async def stop(nodes: list[Node]) -> None:
    for node in nodes:
        await node.transport.stop()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def warnings_of(caplog: pytest.LogCaptureFixture, node: Node) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == node.log.name and r.levelno >= logging.WARNING
    ]


def message(sender: int, recipient: int, index: int) -> AppendEntriesResponse:
    return AppendEntriesResponse(sender, recipient, 1, True, index, round=index)


def test_nodes_of_one_ca_exchange_messages_both_ways(run: Runner, certs: Path) -> None:
    async def body() -> None:
        one, two = Node(1, tls_of(certs, 1)), Node(2, tls_of(certs, 2))
        await start([one, two])
        try:
            one.transport.send([message(1, 2, 5)])
            two.transport.send([message(2, 1, 6)])
            await eventually(lambda: bool(one.received and two.received), "both messages")
            assert [m.index for m in two.received] == [5]
            assert [m.index for m in one.received] == [6]
            stats = one.transport.stats()[2]
            assert stats.connected and stats.inbound_connected
        finally:
            await stop([one, two])

    run(body)


def test_peer_with_a_certificate_of_another_ca_is_refused_by_both_sides(
    run: Runner, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def body() -> None:
        one, rogue = Node(1, tls_of(certs, 1)), Node(2, tls_of(certs, 2, "rogue-2"))
        await start([one, rogue])
        try:
            # The rogue dials node 1 (node 1 refuses its certificate) and node 1 dials
            # the rogue (node 1 does not trust the certificate it is shown).
            rogue.transport.send([message(2, 1, 7)])
            one.transport.send([message(1, 2, 8)])

            def refused_both_ways() -> bool:
                lines = warnings_of(caplog, one)
                inbound = any(
                    line.startswith("refused peer connection from 127.0.0.1:")
                    and "certificate verification failed" in line
                    for line in lines
                )
                outbound = any(
                    line.startswith("cannot reach node 2")
                    and "certificate verification failed" in line
                    for line in lines
                )
                return inbound and outbound

            await eventually(refused_both_ways, "node 1 to log both refusals")
            assert one.received == [] and rogue.received == []
        finally:
            await stop([one, rogue])

    run(body)


def test_expired_certificate_is_refused(
    run: Runner, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        one, stale = Node(1, tls_of(certs, 1)), Node(3, tls_of(certs, 3, "expired-3"))
        await start([one, stale])
        try:
            stale.transport.send([message(3, 1, 9)])

            def logged() -> bool:
                return any(
                    "refused peer connection from" in line and "expired" in line
                    for line in warnings_of(caplog, one)
                )

            await eventually(logged, "node 1 to log the expired certificate")
            assert one.received == []
        finally:
            await stop([one, stale])

    run(body)


def test_peer_without_a_certificate_is_refused_and_logged(
    run: Runner, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        one = Node(1, tls_of(certs, 1))
        await start([one])
        try:
            # Trusts the cluster's CA, so it would accept node 1, but shows no
            # certificate of its own.
            no_cert = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            reader, writer = await asyncio.open_connection(
                HOST, one.address[1], ssl=no_cert, server_hostname=HOST
            )
            writer.write(encode(Handshake(PROTOCOL_VERSION, CLUSTER, 2)))
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5.0)
            writer.close()

            def logged() -> bool:
                return any(
                    "refused peer connection from 127.0.0.1:" in line and "no certificate" in line
                    for line in warnings_of(caplog, one)
                )

            await eventually(logged, "node 1 to log the missing certificate")
        finally:
            await stop([one])

    run(body)


def test_plaintext_peer_is_refused_and_logged(
    run: Runner, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        one = Node(1, tls_of(certs, 1))
        await start([one])
        try:
            reader, writer = await asyncio.open_connection(HOST, one.address[1])
            writer.write(encode(Handshake(PROTOCOL_VERSION, CLUSTER, 2)))
            # No handshake reply ever comes back: the bytes are not TLS.
            try:
                rest = await asyncio.wait_for(reader.read(), 5.0)
            except ConnectionResetError:
                rest = b""
            assert rest == b""
            writer.close()

            def logged() -> bool:
                return any(
                    "refused peer connection from 127.0.0.1:" in line and "not TLS" in line
                    for line in warnings_of(caplog, one)
                )

            await eventually(logged, "node 1 to log the plaintext peer")
            assert one.received == []
        finally:
            await stop([one])

    run(body)
