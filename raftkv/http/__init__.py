"""The HTTP worker process: a Starlette app that validates client requests and forwards
them to the Raft process over one pipelined Unix-socket connection.

Grouped by concern, each group importing only from the ones after it in this list (no
cycles, as docs/architecture.md requires of every package):

- ``worker.py``: the process (``python -m raftkv.http.worker``): flags, the app, uvicorn;
- ``routes/``: the Starlette app and its handlers (keys, cluster reports, operations,
  auth management, OpenAPI, the dashboard) and their one way to the Raft process;
- ``middleware/``: what wraps every request (metrics, rate limit, the auth gate, CORS);
- ``auth/``: who a request comes from and what it may do (credentials, passwords, the
  access tables and the worker's cached copy of them);
- ``serving/``: what the app runs on: settings, the IPC client to the Raft process,
  uvicorn's protocol with connection limits and HTTPS, the ``/kv/{key}`` fast path,
  HTTP to other nodes;
- ``errors.py`` (``ApiError``, the one error type), ``responses.py`` (JSON answers) and
  ``key_route.py`` (how a key is read from a request), shared by all of them.

The static files of the dashboard are package data under ``static/``.
"""
