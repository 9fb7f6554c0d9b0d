"""What both ends of a connection share: the frame protocol between the workers, native
clients and the Raft process, write sessions and their headers, limits, the status↔error
table, sockets and TLS contexts (docs/architecture.md, "Layers")."""
