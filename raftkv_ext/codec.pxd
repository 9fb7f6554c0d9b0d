# The binary codec's message classes and frame helpers, for other Cython modules.
#
# Frame layout (little-endian): u32 length of (type + body) | u8 type | body.
# The body layouts and type ids are documented at the top of codec.pyx.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from raftkv_ext.entry cimport Entry

cdef enum:
    FRAME_HEADER_LEN = 5        # u32 length + u8 type

# Type ids. Peer messages use 1..63, connection set-up 64..127, the worker <-> Raft
# process link 128..255, so a type byte alone says which kind of connection a frame
# belongs on.
cdef enum MessageType:
    T_APPEND_ENTRIES = 1
    T_APPEND_ENTRIES_RESPONSE = 2
    T_REQUEST_VOTE = 3
    T_REQUEST_VOTE_RESPONSE = 4
    T_INSTALL_SNAPSHOT = 5
    T_INSTALL_SNAPSHOT_RESPONSE = 6
    T_TIMEOUT_NOW = 7
    T_READ_INDEX = 8
    T_READ_INDEX_RESPONSE = 9
    T_PROPOSE = 10
    T_PROPOSE_RESPONSE = 11
    T_HANDSHAKE = 64
    T_HANDSHAKE_REPLY = 65
    T_CLIENT_REQUEST = 128
    T_CLIENT_REPLY = 129


cdef class MessageBase:
    # Every message knows its type id, the size of its body and how to write it, so the
    # frame functions can size a whole frame (or batch) before allocating it once.
    cdef uint8_t _type_id(self) noexcept
    cdef Py_ssize_t _body_size(self) except -1
    # Writes exactly ``size`` bytes (the value _body_size returned) at ``buf``.
    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1
    # The field values in __init__ order: drives __eq__, __repr__ and __reduce__.
    cdef tuple _values(self)


cdef class PeerMessage(MessageBase):
    cdef readonly uint64_t sender
    cdef readonly uint64_t recipient
    cdef readonly uint64_t term


cdef class AppendEntries(PeerMessage):
    cdef readonly uint64_t prev_index
    cdef readonly uint64_t prev_term
    cdef readonly uint64_t commit
    cdef readonly list entries
    cdef readonly uint64_t round


cdef class AppendEntriesResponse(PeerMessage):
    cdef readonly bint success
    cdef readonly uint64_t index
    cdef readonly uint64_t hint_index
    cdef readonly uint64_t hint_term
    cdef readonly uint64_t round


cdef class RequestVote(PeerMessage):
    cdef readonly uint64_t last_index
    cdef readonly uint64_t last_term
    cdef readonly bint pre_vote
    cdef readonly bint transfer


cdef class RequestVoteResponse(PeerMessage):
    cdef readonly bint granted
    cdef readonly bint pre_vote


cdef class InstallSnapshot(PeerMessage):
    cdef readonly uint64_t snap_index
    cdef readonly uint64_t snap_term
    cdef readonly bytes config
    cdef readonly uint64_t offset
    cdef readonly uint64_t total_size
    cdef readonly bytes data
    cdef readonly bint done


cdef class InstallSnapshotResponse(PeerMessage):
    cdef readonly uint64_t snap_index
    cdef readonly uint64_t offset
    cdef readonly bint success
    cdef readonly bint done


cdef class TimeoutNow(PeerMessage):
    pass


cdef class ReadIndex(PeerMessage):
    cdef readonly bytes context


cdef class ReadIndexResponse(PeerMessage):
    cdef readonly bytes context
    cdef readonly uint64_t index
    cdef readonly bint success


cdef class Propose(PeerMessage):
    cdef readonly uint64_t batch_id
    cdef readonly list commands


cdef class ProposeResponse(PeerMessage):
    cdef readonly uint64_t batch_id
    cdef readonly uint64_t index
    cdef readonly bint success


cdef class Handshake(MessageBase):
    cdef readonly uint32_t version
    cdef readonly uint64_t cluster_id
    cdef readonly uint64_t node_id


cdef class HandshakeReply(MessageBase):
    cdef readonly bint accepted
    cdef readonly uint64_t node_id
    cdef readonly str reason
    # The UTF-8 form of ``reason``, made once when the message is built or decoded.
    cdef bytes _reason_utf8


cdef class ClientRequest(MessageBase):
    cdef readonly uint64_t request_id
    cdef readonly uint8_t op
    cdef readonly bytes key
    cdef readonly bytes value
    cdef readonly uint64_t client_id
    cdef readonly uint64_t seq
    cdef readonly int64_t prev_revision
    cdef readonly uint64_t limit
    cdef readonly uint32_t flags
    cdef readonly uint32_t timeout_ms
    cdef readonly uint64_t first_incomplete


cdef class ClientReply(MessageBase):
    cdef readonly uint64_t request_id
    cdef readonly uint16_t status
    cdef readonly uint64_t index
    cdef readonly uint64_t term
    cdef readonly int64_t revision
    cdef readonly bytes body


# C-level entry points: the same work as encode()/decode() without Python call overhead.
cdef bytes encode_message(MessageBase message)
# Decodes the frame body that follows the length header: ``n`` bytes, type byte first.
cdef MessageBase decode_frame_payload(const unsigned char* p, Py_ssize_t n)
