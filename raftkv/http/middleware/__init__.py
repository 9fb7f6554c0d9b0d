"""The ASGI middleware around a worker's routes: request metrics, the rate limit, the
authentication and authorization gate, and read-only CORS for the status endpoints."""
