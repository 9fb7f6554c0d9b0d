"""The routes that report on the node and the cluster: ``/health``, ``/cluster/status``,
``/cluster/nodes`` and ``/metrics``.

The Raft process writes the status and node reports as JSON; a follower knows only its
own side of replication, so by default it asks the leader for the report and falls back
to its own. ``/metrics`` is the Raft process's metrics followed by the workers'.
"""

from __future__ import annotations

import logging

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response

from raftkv.http.errors import ApiError
from raftkv.http.middleware.metrics import CONTENT_TYPE, HttpMetrics
from raftkv.http.responses import JSON_MEDIA_TYPE, RETRY_LATER, json_response
from raftkv.http.routes.raft_calls import RaftCalls, reply_message
from raftkv.http.serving.peer_http import node_url, peer_http_client
from raftkv.wire.protocol import Flag, Op, ReplyStatus

__all__ = ["ClusterRoutes"]

log = logging.getLogger(__name__)


class ClusterRoutes:
    """The handlers; ``close`` releases the HTTP client used to ask the leader."""

    def __init__(self, raft: RaftCalls, metrics: HttpMetrics) -> None:
        self._raft = raft
        self._metrics = metrics
        self._peer_http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._peer_http is not None:
            await self._peer_http.aclose()

    async def cluster_status(self, request: Request) -> Response:
        return await self._forward_json(request, Op.STATUS)

    async def cluster_nodes(self, request: Request) -> Response:
        return await self._forward_json(request, Op.NODES)

    async def _forward_json(self, request: Request, op: Op) -> Response:
        want_hash = request.query_params.get("hash") in ("1", "true")
        flags = Flag.STATE_HASH if want_hash else 0
        raft = self._raft
        reply = await raft.call(raft.request(op, flags=flags), write=False)
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=False)
        if request.query_params.get("local") not in ("1", "true") and not want_hash:
            from_leader = await self._ask_leader(request, reply.body)
            if from_leader is not None:
                return Response(from_leader, 200, media_type=JSON_MEDIA_TYPE)
        return Response(reply.body, 200, media_type=JSON_MEDIA_TYPE)

    async def _ask_leader(self, request: Request, local_body: bytes) -> bytes | None:
        """A follower knows only its own side of replication; the leader knows every
        follower's progress, so ask it (and fall back to the local view)."""
        try:
            local = orjson.loads(local_body)
        except orjson.JSONDecodeError:
            return None
        leader_addr = local.get("leaderHttpAddr") if isinstance(local, dict) else None
        if local.get("role") == "leader" or not isinstance(leader_addr, str):
            return None
        settings = self._raft.settings
        if self._peer_http is None:
            self._peer_http = peer_http_client(settings, timeout=1.0)
        try:
            # The caller's credentials go along: the leader checks them as well.
            # The first header, as the gate and the rate limiter read it.
            authorization = request.headers.get("authorization")
            passed = {} if authorization is None else {"authorization": authorization}
            answer = await self._peer_http.get(
                node_url(settings, leader_addr, request.url.path),
                params={"local": "true"},
                headers=passed,
            )
        except httpx.HTTPError as exc:
            # Once per status request (a dashboard polls): detail, not an event. The
            # answer itself shows it, being this node's own view.
            log.debug("could not ask the leader at %s: %s", leader_addr, exc)
            return None
        return answer.content if answer.status_code == 200 else None

    async def health(self, request: Request) -> Response:
        raft = self._raft
        node_id = raft.settings.node_id
        try:
            reply = await raft.call(raft.request(Op.STATUS), write=False)
        except ApiError as exc:
            return json_response(
                {
                    "status": "raft process unreachable",
                    "node_id": node_id,
                    "leader": None,
                    "error": exc.message,
                },
                503,
                dict(RETRY_LATER),
            )
        if reply.status != ReplyStatus.OK:
            return json_response(
                {
                    "status": "unavailable",
                    "node_id": node_id,
                    "leader": None,
                    "error": reply_message(reply, f"status {reply.status}"),
                },
                503,
                dict(RETRY_LATER),
            )
        try:
            status = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            status = None
        if not isinstance(status, dict):
            raise ApiError(500, "malformed status reply from the Raft process")
        if node_id is None and isinstance(status.get("node_id"), int):
            node_id = status["node_id"]
        leader = status.get("leader")
        if isinstance(leader, int) and not isinstance(leader, bool) and leader > 0:
            return json_response({"status": "ok", "node_id": node_id, "leader": leader})
        return json_response(
            {"status": "no leader", "node_id": node_id, "leader": None},
            503,
            dict(RETRY_LATER),
        )

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: the Raft process's text, then the workers'. When the Raft
        process does not answer the scrape fails (an error answer): a node without its
        Raft process is down, and a failed scrape says so."""
        raft = self._raft
        reply = await raft.call(raft.request(Op.METRICS), write=False)
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=False)
        return Response(reply.body + self._metrics.exposition(), 200, media_type=CONTENT_TYPE)
