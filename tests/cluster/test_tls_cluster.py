"""A real 3-node TLS cluster: mutual TLS between the kvnode processes, HTTPS (and TLS on
the native port) for clients; strangers are refused and the refusing node says why."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from raftkv.client.http_client import Client, UnavailableError
from raftkv.client.native import AsyncNativeClient
from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until
from raftkv.wire.certificates import issue, new_authority, write_pair
from raftkv.wire.tls_contexts import client_context
from raftkv_ext.codec import PROTOCOL_VERSION, Handshake, encode

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("tls"), 3, tls=True, native=True) as running:
        yield running


def wait_for_log(cluster: LocalCluster, node_id: int, *needles: str) -> str:
    """The first line of node ``node_id``'s log that contains every needle."""
    found: list[str] = []

    def logged() -> bool:
        for line in cluster.nodes[node_id].log_text().splitlines():
            if all(needle in line for needle in needles):
                found.append(line)
                return True
        return False

    wait_until(logged, 15.0, what=f"node {node_id} to log {needles}")
    return found[0]


def test_elects_takes_writes_over_https_and_replicates(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    urls = [cluster.url(n) for n in cluster.nodes]
    assert all(url.startswith("https://") for url in urls)
    with Client(urls, cacert=cluster.ca_file) as client:
        written = client.put("tls/greeting", "hello over https")
        assert written.revision > 0
        assert client.get("tls/greeting").value == b"hello over https"
    for node_id in cluster.nodes:
        # Stale reads answer from each node's own state: the write reached all three.
        def replicated(node_id: int = node_id) -> bool:
            answer = cluster.get(node_id, "tls/greeting", consistency="stale")
            return answer.status_code == 200 and answer.content == b"hello over https"

        wait_until(replicated, 15.0, what=f"node {node_id} to have the write")
    for line in ("listening for peers on", "(mutual TLS)"):
        assert line in cluster.nodes[leader].log_text()
    assert "serving HTTPS on" in cluster.nodes[leader].log_text()


def test_follower_asks_the_leader_and_forwards_operations_over_https(
    cluster: LocalCluster,
) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    own = cluster.client.get(f"{cluster.url(follower)}/cluster/status", params={"local": "true"})
    assert own.status_code == 200 and own.json()["role"] == "follower"
    # Without ?local the follower fetches the leader's view over https.
    asked = cluster.status(follower)
    assert asked["role"] == "leader" and asked["nodeId"] == leader
    # An operation only the leader can do, sent to a follower, is passed on over https.
    snapshot = cluster.client.post(f"{cluster.url(follower)}/cluster/snapshot")
    assert snapshot.status_code == 200, snapshot.text


def test_plaintext_http_to_the_https_port_gets_no_answer_and_is_logged(
    cluster: LocalCluster,
) -> None:
    node = cluster.nodes[1]
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
        port = sock.getsockname()[1]
    line = wait_for_log(cluster, 1, f"refused HTTPS client connection from 127.0.0.1:{port}")
    assert "plaintext HTTP request" in line


def test_a_client_that_does_not_trust_the_ca_fails_verification(cluster: LocalCluster) -> None:
    url = cluster.url(1)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/health", timeout=5.0)
    with (
        Client([url], retry_for=0.5) as client,
        pytest.raises(UnavailableError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get("tls/greeting")
    # The client's refusal reaches the node as an alert, which it logs.
    wait_for_log(cluster, 1, "refused HTTPS client connection from 127.0.0.1:", "unknown ca")


async def _dial_peer_port(port: int, context: ssl.SSLContext) -> bytes:
    """Dial a node's peer port with TLS, send a handshake as node 2, and read what
    comes back before the connection ends."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    writer.write(encode(Handshake(PROTOCOL_VERSION, 0, 2)))
    try:
        return await asyncio.wait_for(reader.read(), 10.0)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


def test_peers_without_a_certificate_of_the_cluster_are_refused_and_logged(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    other = new_authority("another cluster's CA")
    rogue_cert, rogue_key = tmp_path / "rogue.pem", tmp_path / "rogue-key.pem"
    write_pair(
        rogue_cert,
        rogue_key,
        *issue(other, "node-2", ["127.0.0.1"], server=True, client=True),
    )
    port = cluster.nodes[1].rpc_port
    # Trusts the cluster's CA (so it gets as far as showing its own certificate), but
    # its certificate comes from another CA.
    rogue = client_context(cluster.ca_file, rogue_cert, rogue_key)
    assert asyncio.run(_dial_peer_port(port, rogue)) == b""
    line = wait_for_log(cluster, 1, "refused peer connection from 127.0.0.1:")
    assert "certificate verification failed" in line
    # And one that shows no certificate at all.
    assert asyncio.run(_dial_peer_port(port, client_context(cluster.ca_file))) == b""
    wait_for_log(cluster, 1, "refused peer connection from", "presented no certificate")
    # The cluster itself is unharmed.
    assert cluster.leader() in cluster.nodes


def test_native_port_serves_the_same_tls(cluster: LocalCluster) -> None:
    host, port = cluster.client_addr(cluster.leader())

    async def body() -> bytes:
        async with AsyncNativeClient(host, port, ssl=client_context(cluster.ca_file)) as native:
            await native.put("tls/native", b"over tls")
            return (await native.get("tls/native")).value

    assert asyncio.run(body()) == b"over tls"
    wait_for_log(cluster, cluster.leader(), "serving native clients on")


def test_a_new_node_joins_over_https(cluster: LocalCluster) -> None:
    new_id = cluster.add_node()

    def member() -> bool:
        try:
            nodes = cluster.client.get(f"{cluster.url(cluster.leader())}/cluster/nodes").json()
        except httpx.HTTPError:
            return False
        return any(node["id"] == new_id for node in nodes["nodes"])

    wait_until(member, 60.0, what=f"node {new_id} to become a member")
    cluster.wait_ready(60.0)


def test_https_that_demands_client_certificates(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, tls_client_certs=True) as cluster:
        leader = cluster.leader()
        follower = cluster.followers()[0]
        # The follower presents its own certificate to the leader's HTTPS port.
        assert cluster.status(follower)["nodeId"] == leader
        key, cert = cluster.client_cert_files[1], cluster.client_cert_files[0]
        with Client([cluster.url(follower)], cacert=cluster.ca_file, cert=cert, key=key) as c:
            c.put("tls/mtls", "with a client certificate")
        without = client_context(cluster.ca_file)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{cluster.url(follower)}/health", verify=without, timeout=5.0)
        wait_for_log(
            cluster, follower, "refused HTTPS client connection from", "presented no certificate"
        )
