"""Who a request comes from and what it may do: credentials (HTTP Basic or a bearer
token), password hashes, the access tables compiled for fast checks, and the worker's
copy of those tables, kept fresh from the Raft process."""
