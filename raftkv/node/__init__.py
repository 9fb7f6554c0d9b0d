"""The Raft process: driver (the ready loop), peer transport, IPC server, supervisor."""
