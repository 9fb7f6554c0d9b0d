"""The key-value state machine that Raft applies committed entries to, and its commands.

``encode_command`` turns a :class:`Put`, :class:`Delete` or :class:`DeletePrefix` into
the payload of a log entry; :class:`KVStateMachine` applies committed payloads in index
order and answers reads; its snapshot and state hash are deterministic across replicas.
"""

from raftkv.kv.commands import (
    AuthChange,
    Command,
    CommandDecodeError,
    Delete,
    DeletePrefix,
    Put,
    decode_command,
    encode_command,
)
from raftkv.kv.dedup import DEFAULT_MAX_CLIENTS, DEFAULT_MAX_RESULTS, ClientTable
from raftkv.kv.results import ApplyResult, KeyValue, Status
from raftkv.kv.snapshot_format import SnapshotFormatError
from raftkv.kv.state_machine import KVStateMachine, prefix_end

__all__ = [
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_RESULTS",
    "ApplyResult",
    "AuthChange",
    "ClientTable",
    "Command",
    "CommandDecodeError",
    "Delete",
    "DeletePrefix",
    "KVStateMachine",
    "KeyValue",
    "Put",
    "SnapshotFormatError",
    "Status",
    "decode_command",
    "encode_command",
    "prefix_end",
]
