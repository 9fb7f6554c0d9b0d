"""The HTTP worker process: a Starlette app that validates client requests and forwards
them to the Raft process over one pipelined Unix-socket connection."""
