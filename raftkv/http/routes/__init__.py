"""The Starlette app of a worker (``app.create_app``) and its route handlers, grouped
by what they serve: keys, cluster reports, operations, auth management, the OpenAPI
document and the dashboard."""
