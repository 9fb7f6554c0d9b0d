"""The HTTP worker process: a Starlette app that validates client requests and forwards
them to the Raft process over one pipelined Unix-socket connection.

Grouped by concern, each group importing only from the ones after it in this list (no
cycles, as docs/architecture.md requires of every package):

- ``worker.py``: the process (``python -m raftkv.http.worker``): flags, the app, uvicorn;
- ``routes/``: the Starlette app and its handlers (keys, cluster reports, operations,
  auth management, OpenAPI, the dashboard), their one way to the Raft process, and the
  hot key path that answers ``/kv/{key}`` from the protocol with the same handlers;
- ``middleware/``: what wraps every request (metrics, rate limit, the auth gate, CORS);
- ``auth/``: who a request comes from and what it may do (credentials, passwords, the
  access tables and the worker's cached copy of them);
- ``serving/``: what the app runs on: settings, the IPC client to the Raft process,
  uvicorn's protocol with connection limits and HTTPS, HTTP to other nodes;
- ``errors.py`` (``ApiError``, the one error type), ``responses.py`` (JSON answers,
  ``Answer``), ``key_route.py`` (how a key is read from a request) and
  ``key_request.py`` (what the key routes read, however the request came in), shared
  by all of them.

The static files of the dashboard are package data under ``static/``.
"""
