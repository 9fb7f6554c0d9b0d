# cython: language_level=3
"""Binary codec for every frame raftkv sends: peer messages, handshakes, client frames.

Frame (all integers little-endian, fixed width)::

    u32 length of (type + body) | u8 type | body

Bodies, fixed-width fields first and variable-length fields last, so that one bounds
check covers every fixed field. ``hdr`` is the peer header ``u64 sender | u64 recipient |
u64 term``; ``blob`` is ``u32 length | bytes``; ``flags`` is one byte holding the message's
booleans (bit 0 = the first boolean listed, bit 1 = the second); unknown bits are refused,
so every message has exactly one encoding.

====  ========================  ==========================================================
type  message                   body
====  ========================  ==========================================================
1     AppendEntries             hdr | u64 prev_index | u64 prev_term | u64 commit |
                                u64 round | u32 count | count entries
2     AppendEntriesResponse     hdr | u64 index | u64 hint_index | u64 hint_term |
                                u64 round | flags(success)
3     RequestVote               hdr | u64 last_index | u64 last_term |
                                flags(pre_vote, transfer)
4     RequestVoteResponse       hdr | flags(granted, pre_vote)
5     InstallSnapshot           hdr | u64 snap_index | u64 snap_term | u64 offset |
                                u64 total_size | flags(done) | blob config | blob data
6     InstallSnapshotResponse   hdr | u64 snap_index | u64 offset | flags(success, done)
7     TimeoutNow                hdr
8     ReadIndex                 hdr | blob context
9     ReadIndexResponse         hdr | u64 index | flags(success) | blob context
10    Propose                   hdr | u64 batch_id | u32 count | count blobs
11    ProposeResponse           hdr | u64 batch_id | u64 index | flags(success)
64    Handshake                 u32 MAGIC | u32 version | u64 cluster_id | u64 node_id
65    HandshakeReply            u64 node_id | flags(accepted) | blob reason (UTF-8)
128   ClientRequest             u64 request_id | u64 client_id | u64 seq |
                                u64 first_incomplete |
                                i64 prev_revision | u64 limit | u32 flags |
                                u32 timeout_ms | u8 op | blob key | blob value
129   ClientReply               u64 request_id | u64 index | u64 term | i64 revision |
                                u16 status | blob body
====  ========================  ==========================================================

An entry inside AppendEntries is written by ``raftkv_ext.entry.write_entry``, so its
bytes are exactly the payload of its log record and the leader can ship stored records
without re-encoding them.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_Fast
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from raftkv_ext.entry cimport ENTRY_HEADER_SIZE, Entry, read_entry, write_entry

from raftkv_ext.errors import CodecError


# Fixed-width little-endian loads and stores. memcpy through a local compiles to a
# single (possibly unaligned) move on every mainstream compiler; the byte swap is only
# compiled in on big-endian hosts.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) \\
        && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define RKC_LE16(x) __builtin_bswap16(x)
    #define RKC_LE32(x) __builtin_bswap32(x)
    #define RKC_LE64(x) __builtin_bswap64(x)
    #else
    #define RKC_LE16(x) (x)
    #define RKC_LE32(x) (x)
    #define RKC_LE64(x) (x)
    #endif
    static inline uint16_t rkc_ld16(const unsigned char *p) {
        uint16_t v; memcpy(&v, p, 2); return RKC_LE16(v);
    }
    static inline uint32_t rkc_ld32(const unsigned char *p) {
        uint32_t v; memcpy(&v, p, 4); return RKC_LE32(v);
    }
    static inline uint64_t rkc_ld64(const unsigned char *p) {
        uint64_t v; memcpy(&v, p, 8); return RKC_LE64(v);
    }
    static inline void rkc_st16(char *p, uint16_t v) { v = RKC_LE16(v); memcpy(p, &v, 2); }
    static inline void rkc_st32(char *p, uint32_t v) { v = RKC_LE32(v); memcpy(p, &v, 4); }
    static inline void rkc_st64(char *p, uint64_t v) { v = RKC_LE64(v); memcpy(p, &v, 8); }
    """
    uint16_t rkc_ld16(const unsigned char* p) noexcept nogil
    uint32_t rkc_ld32(const unsigned char* p) noexcept nogil
    uint64_t rkc_ld64(const unsigned char* p) noexcept nogil
    void rkc_st16(char* p, uint16_t v) noexcept nogil
    void rkc_st32(char* p, uint32_t v) noexcept nogil
    void rkc_st64(char* p, uint64_t v) noexcept nogil


# "RFKV" when the little-endian u32 is read as bytes, so a hex dump of a stream shows it.
MAGIC = 0x564B4652
PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
FRAME_HEADER_SIZE = FRAME_HEADER_LEN

cdef uint32_t _MAGIC = 0x564B4652
cdef Py_ssize_t _DEFAULT_MAX = 64 * 1024 * 1024
cdef uint64_t _U32_MAX = 0xFFFFFFFF
# A FrameDecoder frees a buffer grown past this once the frame in it is decoded, so one
# large snapshot chunk does not pin its memory for the life of the connection.
cdef Py_ssize_t _KEEP_CAPACITY = 1024 * 1024

# Sizes of the fixed part of each body (everything up to the first variable field,
# including that field's length or count).
cdef enum:
    _PEER = 24
    _SZ_APPEND = _PEER + 32 + 4
    _SZ_APPEND_RESP = _PEER + 32 + 1
    _SZ_VOTE = _PEER + 16 + 1
    _SZ_VOTE_RESP = _PEER + 1
    _SZ_SNAP = _PEER + 32 + 1 + 4
    _SZ_SNAP_RESP = _PEER + 16 + 1
    _SZ_TIMEOUT = _PEER
    _SZ_READ = _PEER + 4
    _SZ_READ_RESP = _PEER + 8 + 1 + 4
    _SZ_PROPOSE = _PEER + 8 + 4
    _SZ_PROPOSE_RESP = _PEER + 16 + 1
    _SZ_HANDSHAKE = 4 + 4 + 8 + 8
    _SZ_HANDSHAKE_REPLY = 8 + 1 + 4
    _SZ_CLIENT_REQ = 48 + 4 + 4 + 1 + 4
    _SZ_CLIENT_REPLY = 32 + 2 + 4


# ---------------------------------------------------------------------------------------
# Writing. Callers size a body first, allocate once, then these fill it front to back.

cdef inline char* _put8(char* p, uint8_t v) noexcept:
    p[0] = <char>v
    return p + 1


cdef inline char* _put16(char* p, uint16_t v) noexcept:
    rkc_st16(p, v)
    return p + 2


cdef inline char* _put32(char* p, uint32_t v) noexcept:
    rkc_st32(p, v)
    return p + 4


cdef inline char* _put64(char* p, uint64_t v) noexcept:
    rkc_st64(p, v)
    return p + 8


cdef inline char* _put_blob(char* p, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    rkc_st32(p, <uint32_t>n)
    if n:
        memcpy(p + 4, PyBytes_AS_STRING(b), n)
    return p + 4 + n


cdef inline char* _put_peer(PeerMessage m, char* p) noexcept:
    rkc_st64(p, m.sender)
    rkc_st64(p + 8, m.recipient)
    rkc_st64(p + 16, m.term)
    return p + _PEER


cdef Py_ssize_t _blob_size(bytes b, str field) except -1:
    # Cython code may assign None to a bytes attribute; refuse it rather than read the
    # size of None.
    if b is None:
        raise TypeError(f"{field} must be bytes, not None")
    if <uint64_t>PyBytes_GET_SIZE(b) > _U32_MAX:
        raise CodecError(f"{field} of {PyBytes_GET_SIZE(b)} bytes exceeds the 4 GiB field limit")
    return 4 + PyBytes_GET_SIZE(b)


cdef int _finish(char* p, char* start, Py_ssize_t size, MessageBase m) except -1:
    if p - start != size:
        raise RuntimeError(
            f"{type(m).__name__} changed while being encoded ({p - start} of {size} bytes)")
    return 0


cdef Py_ssize_t _entries_size(list entries, str what) except -1:
    cdef Py_ssize_t i, total = 0
    cdef object o
    cdef bytes data
    if <uint64_t>len(entries) > _U32_MAX:
        raise CodecError(f"{what}: {len(entries)} entries do not fit a u32 count")
    for i in range(len(entries)):
        o = entries[i]
        if not isinstance(o, Entry):
            raise TypeError(f"{what}: item {i} is {type(o).__name__}, not Entry")
        data = (<Entry>o).data
        if data is None:
            raise TypeError(f"{what}: entry {i} has no data")
        total += ENTRY_HEADER_SIZE + PyBytes_GET_SIZE(data)
    return total


cdef char* _put_entries(char* p, const char* end, list entries) except NULL:
    # The list is mutable, so do not trust the sizing pass: never write past ``end``.
    cdef Py_ssize_t i
    cdef object o
    cdef Entry e
    for i in range(len(entries)):
        o = entries[i]
        if not isinstance(o, Entry) or (<Entry>o).data is None:
            raise RuntimeError("entries changed while being encoded")
        e = <Entry>o
        if end - p < ENTRY_HEADER_SIZE + PyBytes_GET_SIZE(e.data):
            raise RuntimeError("entries changed while being encoded")
        p += write_entry(e, p)
    return p


cdef list _as_list(object items):
    return items if type(items) is list else list(items)


# ---------------------------------------------------------------------------------------
# Reading. A _Reader walks a body; every read of a fixed part is preceded by one bounds
# check of the whole fixed part, and every variable part is checked on its own.

cdef struct _Reader:
    const unsigned char* p
    Py_ssize_t left


cdef int _need_fixed(_Reader* r, Py_ssize_t n, str what) except -1:
    if r.left < n:
        raise CodecError(
            f"truncated {what} body: {r.left} bytes where at least {n} are needed")
    return 0


cdef inline uint8_t _get8(_Reader* r) noexcept:
    cdef uint8_t v = r.p[0]
    r.p += 1
    r.left -= 1
    return v


cdef inline uint16_t _get16(_Reader* r) noexcept:
    cdef uint16_t v = rkc_ld16(r.p)
    r.p += 2
    r.left -= 2
    return v


cdef inline uint32_t _get32(_Reader* r) noexcept:
    cdef uint32_t v = rkc_ld32(r.p)
    r.p += 4
    r.left -= 4
    return v


cdef inline uint64_t _get64(_Reader* r) noexcept:
    cdef uint64_t v = rkc_ld64(r.p)
    r.p += 8
    r.left -= 8
    return v


cdef inline void _get_peer(PeerMessage m, _Reader* r) noexcept:
    m.sender = _get64(r)
    m.recipient = _get64(r)
    m.term = _get64(r)


cdef int _get_flags(_Reader* r, uint8_t allowed, str what) except -1:
    cdef uint8_t f = _get8(r)
    if f & ~allowed:
        raise CodecError(f"invalid {what} flags 0x{f:02x} (allowed bits 0x{allowed:02x})")
    return f


cdef bytes _get_blob_after_length(_Reader* r, uint32_t n, str what, str field):
    # The length has been read already (it sits in the fixed part of the body).
    cdef bytes b
    if <Py_ssize_t>n > r.left:
        raise CodecError(
            f"{what} {field} length {n} points past the end of the body ({r.left} bytes left)")
    b = PyBytes_FromStringAndSize(<const char*>r.p, n)
    r.p += n
    r.left -= n
    return b


cdef bytes _get_blob(_Reader* r, str what, str field):
    if r.left < 4:
        raise CodecError(
            f"truncated {what} body: {r.left} bytes where the 4-byte {field} length is needed")
    return _get_blob_after_length(r, _get32(r), what, field)


cdef int _expect_end(_Reader* r, str what) except -1:
    if r.left:
        raise CodecError(f"{r.left} trailing bytes after the {what} body")
    return 0


cdef list _get_entries(_Reader* r, uint32_t count, str what):
    cdef Py_ssize_t i, used = 0
    cdef Entry e
    cdef list out
    # Every entry takes at least its header, so a count the body cannot hold is refused
    # before the list is allocated: a hostile count costs nothing.
    if <uint64_t>count * ENTRY_HEADER_SIZE > <uint64_t>r.left:
        raise CodecError(
            f"{what} entry count {count} needs at least {<uint64_t>count * ENTRY_HEADER_SIZE}"
            f" bytes, {r.left} present")
    out = PyList_New(count)
    for i in range(count):
        e = read_entry(r.p, r.left, &used)
        Py_INCREF(e)               # PyList_SET_ITEM steals a reference
        PyList_SET_ITEM(out, i, e)
        r.p += used
        r.left -= used
    return out


cdef list _get_commands(_Reader* r, uint32_t count):
    cdef Py_ssize_t i
    cdef uint32_t n
    cdef bytes b
    cdef list out
    if <uint64_t>count * 4 > <uint64_t>r.left:
        raise CodecError(
            f"Propose command count {count} needs at least {<uint64_t>count * 4} bytes, "
            f"{r.left} present")
    out = PyList_New(count)
    for i in range(count):
        if r.left < 4:
            raise CodecError(
                f"truncated Propose body: {r.left} bytes where the 4-byte length of "
                f"command {i} is needed")
        n = _get32(r)
        if <Py_ssize_t>n > r.left:
            raise CodecError(
                f"Propose command {i} length {n} points past the end of the body "
                f"({r.left} bytes left)")
        b = PyBytes_FromStringAndSize(<const char*>r.p, n)
        Py_INCREF(b)
        PyList_SET_ITEM(out, i, b)
        r.p += n
        r.left -= n
    return out


# ---------------------------------------------------------------------------------------
# Presentation helpers shared by every message's __repr__.

cdef str _short(object v):
    # Reprs end up in logs: keep them bounded however large a message is, and exactly
    # eval-able when nothing had to be cut.
    if isinstance(v, bytes) and len(v) > 32:
        return f"{v[:32]!r}...<{len(v)} bytes>"
    if isinstance(v, str) and len(v) > 80:
        return f"{v[:80]!r}...<{len(v)} chars>"
    if isinstance(v, list):
        if len(v) > 3:
            return f"[{_short(v[0])}, ...{len(v) - 1} more]"
        return "[" + ", ".join([_short(x) for x in v]) + "]"
    return repr(v)


# ---------------------------------------------------------------------------------------
# Messages.

cdef class MessageBase:
    """Base of every message: equality, repr and pickling from the field values."""

    _FIELDS = ()
    TYPE_ID = 0

    cdef uint8_t _type_id(self) noexcept:
        return 0

    cdef Py_ssize_t _body_size(self) except -1:
        raise TypeError(f"{type(self).__name__} is not a concrete message type")

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        raise TypeError(f"{type(self).__name__} is not a concrete message type")

    cdef tuple _values(self):
        return ()

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == (<MessageBase>other)._values()

    def __ne__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() != (<MessageBase>other)._values()

    # Messages hold mutable lists, so they are not hashable.
    __hash__ = None

    def __repr__(self):
        fields = ", ".join(
            [f"{name}={_short(value)}" for name, value in zip(self._FIELDS, self._values())])
        return f"{type(self).__name__}({fields})"

    def __reduce__(self):
        return (type(self), self._values())


cdef class PeerMessage(MessageBase):
    """Base of the Raft peer messages: each names its sender, recipient and term."""


cdef class AppendEntries(PeerMessage):
    """Leader -> follower: entries after (prev_index, prev_term), and the leader's commit."""

    _FIELDS = ("sender", "recipient", "term", "prev_index", "prev_term", "commit",
               "entries", "round")
    TYPE_ID = T_APPEND_ENTRIES

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term,
                 uint64_t prev_index, uint64_t prev_term, uint64_t commit,
                 entries=None, uint64_t round=0):
        cdef list lst = [] if entries is None else _as_list(entries)
        _entries_size(lst, "AppendEntries")      # type-checks every item
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.prev_index = prev_index
        self.prev_term = prev_term
        self.commit = commit
        self.entries = lst
        self.round = round

    cdef uint8_t _type_id(self) noexcept:
        return T_APPEND_ENTRIES

    cdef Py_ssize_t _body_size(self) except -1:
        if self.entries is None:
            raise TypeError("AppendEntries.entries must be a list, not None")
        return _SZ_APPEND + _entries_size(self.entries, "AppendEntries")

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put64(p, self.prev_index)
        p = _put64(p, self.prev_term)
        p = _put64(p, self.commit)
        p = _put64(p, self.round)
        p = _put32(p, <uint32_t>len(self.entries))
        p = _put_entries(p, buf + size, self.entries)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.prev_index, self.prev_term,
                self.commit, self.entries, self.round)


cdef AppendEntries _dec_append_entries(_Reader* r):
    cdef AppendEntries m = AppendEntries.__new__(AppendEntries)
    _need_fixed(r, _SZ_APPEND, "AppendEntries")
    _get_peer(m, r)
    m.prev_index = _get64(r)
    m.prev_term = _get64(r)
    m.commit = _get64(r)
    m.round = _get64(r)
    m.entries = _get_entries(r, _get32(r), "AppendEntries")
    _expect_end(r, "AppendEntries")
    return m


cdef class AppendEntriesResponse(PeerMessage):
    """Follower -> leader: the outcome of an AppendEntries, with a conflict hint."""

    _FIELDS = ("sender", "recipient", "term", "success", "index", "hint_index",
               "hint_term", "round")
    TYPE_ID = T_APPEND_ENTRIES_RESPONSE

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term, bint success,
                 uint64_t index, uint64_t hint_index=0, uint64_t hint_term=0,
                 uint64_t round=0):
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.success = success
        self.index = index
        self.hint_index = hint_index
        self.hint_term = hint_term
        self.round = round

    cdef uint8_t _type_id(self) noexcept:
        return T_APPEND_ENTRIES_RESPONSE

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_APPEND_RESP

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put64(p, self.index)
        p = _put64(p, self.hint_index)
        p = _put64(p, self.hint_term)
        p = _put64(p, self.round)
        p = _put8(p, self.success)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.success, self.index,
                self.hint_index, self.hint_term, self.round)


cdef AppendEntriesResponse _dec_append_entries_response(_Reader* r):
    cdef AppendEntriesResponse m = AppendEntriesResponse.__new__(AppendEntriesResponse)
    cdef uint8_t f
    _need_fixed(r, _SZ_APPEND_RESP, "AppendEntriesResponse")
    _get_peer(m, r)
    m.index = _get64(r)
    m.hint_index = _get64(r)
    m.hint_term = _get64(r)
    m.round = _get64(r)
    f = _get_flags(r, 0x01, "AppendEntriesResponse")
    m.success = f & 1
    _expect_end(r, "AppendEntriesResponse")
    return m


cdef class RequestVote(PeerMessage):
    """Candidate -> voter: a (pre-)vote request for a log ending at (last_index, last_term)."""

    _FIELDS = ("sender", "recipient", "term", "last_index", "last_term", "pre_vote",
               "transfer")
    TYPE_ID = T_REQUEST_VOTE

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term,
                 uint64_t last_index, uint64_t last_term, bint pre_vote=False,
                 bint transfer=False):
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.last_index = last_index
        self.last_term = last_term
        self.pre_vote = pre_vote
        self.transfer = transfer

    cdef uint8_t _type_id(self) noexcept:
        return T_REQUEST_VOTE

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_VOTE

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put64(p, self.last_index)
        p = _put64(p, self.last_term)
        p = _put8(p, <uint8_t>self.pre_vote | (<uint8_t>self.transfer << 1))
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.last_index, self.last_term,
                self.pre_vote, self.transfer)


cdef RequestVote _dec_request_vote(_Reader* r):
    cdef RequestVote m = RequestVote.__new__(RequestVote)
    cdef uint8_t f
    _need_fixed(r, _SZ_VOTE, "RequestVote")
    _get_peer(m, r)
    m.last_index = _get64(r)
    m.last_term = _get64(r)
    f = _get_flags(r, 0x03, "RequestVote")
    m.pre_vote = f & 1
    m.transfer = (f >> 1) & 1
    _expect_end(r, "RequestVote")
    return m


cdef class RequestVoteResponse(PeerMessage):
    """Voter -> candidate: whether the (pre-)vote was granted."""

    _FIELDS = ("sender", "recipient", "term", "granted", "pre_vote")
    TYPE_ID = T_REQUEST_VOTE_RESPONSE

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term, bint granted,
                 bint pre_vote=False):
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.granted = granted
        self.pre_vote = pre_vote

    cdef uint8_t _type_id(self) noexcept:
        return T_REQUEST_VOTE_RESPONSE

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_VOTE_RESP

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put8(p, <uint8_t>self.granted | (<uint8_t>self.pre_vote << 1))
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.granted, self.pre_vote)


cdef RequestVoteResponse _dec_request_vote_response(_Reader* r):
    cdef RequestVoteResponse m = RequestVoteResponse.__new__(RequestVoteResponse)
    cdef uint8_t f
    _need_fixed(r, _SZ_VOTE_RESP, "RequestVoteResponse")
    _get_peer(m, r)
    f = _get_flags(r, 0x03, "RequestVoteResponse")
    m.granted = f & 1
    m.pre_vote = (f >> 1) & 1
    _expect_end(r, "RequestVoteResponse")
    return m


cdef class InstallSnapshot(PeerMessage):
    """One chunk of a snapshot, starting at ``offset`` of ``total_size`` bytes."""

    _FIELDS = ("sender", "recipient", "term", "snap_index", "snap_term", "config",
               "offset", "total_size", "data", "done")
    TYPE_ID = T_INSTALL_SNAPSHOT

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term,
                 uint64_t snap_index, uint64_t snap_term, bytes config not None,
                 uint64_t offset, uint64_t total_size, bytes data not None, bint done):
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.snap_index = snap_index
        self.snap_term = snap_term
        self.config = config
        self.offset = offset
        self.total_size = total_size
        self.data = data
        self.done = done

    cdef uint8_t _type_id(self) noexcept:
        return T_INSTALL_SNAPSHOT

    cdef Py_ssize_t _body_size(self) except -1:
        # The fixed size counts the config length; the data length is counted by
        # _blob_size(data).
        return (_SZ_SNAP - 4 + _blob_size(self.config, "InstallSnapshot.config")
                + _blob_size(self.data, "InstallSnapshot.data"))

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put64(p, self.snap_index)
        p = _put64(p, self.snap_term)
        p = _put64(p, self.offset)
        p = _put64(p, self.total_size)
        p = _put8(p, self.done)
        p = _put_blob(p, self.config)
        p = _put_blob(p, self.data)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.snap_index, self.snap_term,
                self.config, self.offset, self.total_size, self.data, self.done)


cdef InstallSnapshot _dec_install_snapshot(_Reader* r):
    cdef InstallSnapshot m = InstallSnapshot.__new__(InstallSnapshot)
    cdef uint8_t f
    _need_fixed(r, _SZ_SNAP, "InstallSnapshot")
    _get_peer(m, r)
    m.snap_index = _get64(r)
    m.snap_term = _get64(r)
    m.offset = _get64(r)
    m.total_size = _get64(r)
    f = _get_flags(r, 0x01, "InstallSnapshot")
    m.done = f & 1
    m.config = _get_blob_after_length(r, _get32(r), "InstallSnapshot", "config")
    m.data = _get_blob(r, "InstallSnapshot", "data")
    _expect_end(r, "InstallSnapshot")
    return m


cdef class InstallSnapshotResponse(PeerMessage):
    """Follower -> leader: the next snapshot byte expected, or the snapshot installed."""

    _FIELDS = ("sender", "recipient", "term", "snap_index", "offset", "success", "done")
    TYPE_ID = T_INSTALL_SNAPSHOT_RESPONSE

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term,
                 uint64_t snap_index, uint64_t offset, bint success, bint done=False):
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.snap_index = snap_index
        self.offset = offset
        self.success = success
        self.done = done

    cdef uint8_t _type_id(self) noexcept:
        return T_INSTALL_SNAPSHOT_RESPONSE

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_SNAP_RESP

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put64(p, self.snap_index)
        p = _put64(p, self.offset)
        p = _put8(p, <uint8_t>self.success | (<uint8_t>self.done << 1))
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.snap_index, self.offset,
                self.success, self.done)


cdef InstallSnapshotResponse _dec_install_snapshot_response(_Reader* r):
    cdef InstallSnapshotResponse m = InstallSnapshotResponse.__new__(InstallSnapshotResponse)
    cdef uint8_t f
    _need_fixed(r, _SZ_SNAP_RESP, "InstallSnapshotResponse")
    _get_peer(m, r)
    m.snap_index = _get64(r)
    m.offset = _get64(r)
    f = _get_flags(r, 0x03, "InstallSnapshotResponse")
    m.success = f & 1
    m.done = (f >> 1) & 1
    _expect_end(r, "InstallSnapshotResponse")
    return m


cdef class TimeoutNow(PeerMessage):
    """Leader -> transfer target: start an election now."""

    _FIELDS = ("sender", "recipient", "term")
    TYPE_ID = T_TIMEOUT_NOW

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term):
        self.sender = sender
        self.recipient = recipient
        self.term = term

    cdef uint8_t _type_id(self) noexcept:
        return T_TIMEOUT_NOW

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_TIMEOUT

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        return _finish(_put_peer(self, buf), buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term)


cdef TimeoutNow _dec_timeout_now(_Reader* r):
    cdef TimeoutNow m = TimeoutNow.__new__(TimeoutNow)
    _need_fixed(r, _SZ_TIMEOUT, "TimeoutNow")
    _get_peer(m, r)
    _expect_end(r, "TimeoutNow")
    return m


cdef class ReadIndex(PeerMessage):
    """Follower -> leader: ask for a read index for the reads tagged ``context``."""

    _FIELDS = ("sender", "recipient", "term", "context")
    TYPE_ID = T_READ_INDEX

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term,
                 bytes context not None):
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.context = context

    cdef uint8_t _type_id(self) noexcept:
        return T_READ_INDEX

    cdef Py_ssize_t _body_size(self) except -1:
        return _PEER + _blob_size(self.context, "ReadIndex.context")

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put_blob(p, self.context)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.context)


cdef ReadIndex _dec_read_index(_Reader* r):
    cdef ReadIndex m = ReadIndex.__new__(ReadIndex)
    _need_fixed(r, _SZ_READ, "ReadIndex")
    _get_peer(m, r)
    m.context = _get_blob_after_length(r, _get32(r), "ReadIndex", "context")
    _expect_end(r, "ReadIndex")
    return m


cdef class ReadIndexResponse(PeerMessage):
    """Leader -> follower: the read index for the reads tagged ``context``."""

    _FIELDS = ("sender", "recipient", "term", "context", "index", "success")
    TYPE_ID = T_READ_INDEX_RESPONSE

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term,
                 bytes context not None, uint64_t index, bint success):
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.context = context
        self.index = index
        self.success = success

    cdef uint8_t _type_id(self) noexcept:
        return T_READ_INDEX_RESPONSE

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_READ_RESP - 4 + _blob_size(self.context, "ReadIndexResponse.context")

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put64(p, self.index)
        p = _put8(p, self.success)
        p = _put_blob(p, self.context)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.context, self.index,
                self.success)


cdef ReadIndexResponse _dec_read_index_response(_Reader* r):
    cdef ReadIndexResponse m = ReadIndexResponse.__new__(ReadIndexResponse)
    cdef uint8_t f
    _need_fixed(r, _SZ_READ_RESP, "ReadIndexResponse")
    _get_peer(m, r)
    m.index = _get64(r)
    f = _get_flags(r, 0x01, "ReadIndexResponse")
    m.success = f & 1
    m.context = _get_blob_after_length(r, _get32(r), "ReadIndexResponse", "context")
    _expect_end(r, "ReadIndexResponse")
    return m


cdef class Propose(PeerMessage):
    """Follower -> leader: client commands forwarded as one batch."""

    _FIELDS = ("sender", "recipient", "term", "batch_id", "commands")
    TYPE_ID = T_PROPOSE

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term,
                 uint64_t batch_id, commands):
        cdef list lst = _as_list(commands)
        _commands_size(lst)                     # type-checks every item
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.batch_id = batch_id
        self.commands = lst

    cdef uint8_t _type_id(self) noexcept:
        return T_PROPOSE

    cdef Py_ssize_t _body_size(self) except -1:
        if self.commands is None:
            raise TypeError("Propose.commands must be a list, not None")
        return _SZ_PROPOSE + _commands_size(self.commands)

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        cdef const char* end = buf + size
        cdef Py_ssize_t i
        cdef object c
        p = _put64(p, self.batch_id)
        p = _put32(p, <uint32_t>len(self.commands))
        for i in range(len(self.commands)):
            c = self.commands[i]
            # The list is mutable: re-check each item and never write past the end.
            if not PyBytes_Check(c) or end - p < 4 + PyBytes_GET_SIZE(c):
                raise RuntimeError("Propose.commands changed while being encoded")
            p = _put_blob(p, <bytes>c)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.batch_id, self.commands)


cdef Py_ssize_t _commands_size(list commands) except -1:
    cdef Py_ssize_t i, total = 0
    cdef object c
    if <uint64_t>len(commands) > _U32_MAX:
        raise CodecError(f"Propose: {len(commands)} commands do not fit a u32 count")
    for i in range(len(commands)):
        c = commands[i]
        if not PyBytes_Check(c):
            raise TypeError(f"Propose: command {i} is {type(c).__name__}, not bytes")
        if <uint64_t>PyBytes_GET_SIZE(c) > _U32_MAX:
            raise CodecError(f"Propose: command {i} exceeds the 4 GiB field limit")
        total += 4 + PyBytes_GET_SIZE(c)
    return total


cdef Propose _dec_propose(_Reader* r):
    cdef Propose m = Propose.__new__(Propose)
    _need_fixed(r, _SZ_PROPOSE, "Propose")
    _get_peer(m, r)
    m.batch_id = _get64(r)
    m.commands = _get_commands(r, _get32(r))
    _expect_end(r, "Propose")
    return m


cdef class ProposeResponse(PeerMessage):
    """Leader -> follower: the batch was appended from ``index`` on, or refused."""

    _FIELDS = ("sender", "recipient", "term", "batch_id", "index", "success")
    TYPE_ID = T_PROPOSE_RESPONSE

    def __init__(self, uint64_t sender, uint64_t recipient, uint64_t term,
                 uint64_t batch_id, uint64_t index, bint success):
        self.sender = sender
        self.recipient = recipient
        self.term = term
        self.batch_id = batch_id
        self.index = index
        self.success = success

    cdef uint8_t _type_id(self) noexcept:
        return T_PROPOSE_RESPONSE

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_PROPOSE_RESP

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put_peer(self, buf)
        p = _put64(p, self.batch_id)
        p = _put64(p, self.index)
        p = _put8(p, self.success)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.sender, self.recipient, self.term, self.batch_id, self.index,
                self.success)


cdef ProposeResponse _dec_propose_response(_Reader* r):
    cdef ProposeResponse m = ProposeResponse.__new__(ProposeResponse)
    cdef uint8_t f
    _need_fixed(r, _SZ_PROPOSE_RESP, "ProposeResponse")
    _get_peer(m, r)
    m.batch_id = _get64(r)
    m.index = _get64(r)
    f = _get_flags(r, 0x01, "ProposeResponse")
    m.success = f & 1
    _expect_end(r, "ProposeResponse")
    return m


cdef class Handshake(MessageBase):
    """First frame on every connection. The codec writes and checks MAGIC itself; the
    version is decoded whatever it is, so the receiver can refuse it with a reason."""

    _FIELDS = ("version", "cluster_id", "node_id")
    TYPE_ID = T_HANDSHAKE

    def __init__(self, uint32_t version, uint64_t cluster_id, uint64_t node_id):
        self.version = version
        self.cluster_id = cluster_id
        self.node_id = node_id

    cdef uint8_t _type_id(self) noexcept:
        return T_HANDSHAKE

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_HANDSHAKE

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put32(buf, _MAGIC)
        p = _put32(p, self.version)
        p = _put64(p, self.cluster_id)
        p = _put64(p, self.node_id)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.version, self.cluster_id, self.node_id)


cdef Handshake _dec_handshake(_Reader* r):
    cdef Handshake m = Handshake.__new__(Handshake)
    cdef uint32_t magic
    # The magic is checked before the length, so that a stranger speaking another
    # protocol is told "bad magic" rather than "truncated".
    if r.left >= 4:
        magic = rkc_ld32(r.p)
        if magic != _MAGIC:
            raise CodecError(f"bad magic 0x{magic:08x} in Handshake (expected 0x{_MAGIC:08x})")
    _need_fixed(r, _SZ_HANDSHAKE, "Handshake")
    _get32(r)
    m.version = _get32(r)
    m.cluster_id = _get64(r)
    m.node_id = _get64(r)
    _expect_end(r, "Handshake")
    return m


cdef class HandshakeReply(MessageBase):
    """Answer to a Handshake: accepted, or refused with a human-readable reason."""

    _FIELDS = ("accepted", "node_id", "reason")
    TYPE_ID = T_HANDSHAKE_REPLY

    def __init__(self, bint accepted, uint64_t node_id, str reason not None=""):
        # Encoding here rather than in encode() reports an unencodable reason (a lone
        # surrogate) where the message is made, and encodes it only once.
        self._reason_utf8 = reason.encode("utf-8")
        self.accepted = accepted
        self.node_id = node_id
        self.reason = reason

    cdef uint8_t _type_id(self) noexcept:
        return T_HANDSHAKE_REPLY

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_HANDSHAKE_REPLY - 4 + _blob_size(self._reason_utf8, "HandshakeReply.reason")

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put64(buf, self.node_id)
        p = _put8(p, self.accepted)
        p = _put_blob(p, self._reason_utf8)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.accepted, self.node_id, self.reason)


cdef HandshakeReply _dec_handshake_reply(_Reader* r):
    cdef HandshakeReply m = HandshakeReply.__new__(HandshakeReply)
    cdef uint8_t f
    cdef bytes raw
    _need_fixed(r, _SZ_HANDSHAKE_REPLY, "HandshakeReply")
    m.node_id = _get64(r)
    f = _get_flags(r, 0x01, "HandshakeReply")
    m.accepted = f & 1
    raw = _get_blob_after_length(r, _get32(r), "HandshakeReply", "reason")
    _expect_end(r, "HandshakeReply")
    try:
        m.reason = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(
            f"invalid UTF-8 in HandshakeReply reason at byte {exc.start}: {exc.reason}"
        ) from None
    m._reason_utf8 = raw
    return m


cdef class ClientRequest(MessageBase):
    """Worker -> Raft process: one client request."""

    _FIELDS = ("request_id", "op", "key", "value", "client_id", "seq", "prev_revision",
               "limit", "flags", "timeout_ms", "first_incomplete")
    TYPE_ID = T_CLIENT_REQUEST

    def __init__(self, uint64_t request_id, uint8_t op, bytes key not None=b"",
                 bytes value not None=b"", uint64_t client_id=0, uint64_t seq=0,
                 int64_t prev_revision=-1, uint64_t limit=0, uint32_t flags=0,
                 uint32_t timeout_ms=0, uint64_t first_incomplete=0):
        self.request_id = request_id
        self.first_incomplete = first_incomplete
        self.op = op
        self.key = key
        self.value = value
        self.client_id = client_id
        self.seq = seq
        self.prev_revision = prev_revision
        self.limit = limit
        self.flags = flags
        self.timeout_ms = timeout_ms

    cdef uint8_t _type_id(self) noexcept:
        return T_CLIENT_REQUEST

    cdef Py_ssize_t _body_size(self) except -1:
        return (_SZ_CLIENT_REQ - 4 + _blob_size(self.key, "ClientRequest.key")
                + _blob_size(self.value, "ClientRequest.value"))

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put64(buf, self.request_id)
        p = _put64(p, self.client_id)
        p = _put64(p, self.seq)
        p = _put64(p, self.first_incomplete)
        p = _put64(p, <uint64_t>self.prev_revision)
        p = _put64(p, self.limit)
        p = _put32(p, self.flags)
        p = _put32(p, self.timeout_ms)
        p = _put8(p, self.op)
        p = _put_blob(p, self.key)
        p = _put_blob(p, self.value)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.request_id, self.op, self.key, self.value, self.client_id, self.seq,
                self.prev_revision, self.limit, self.flags, self.timeout_ms,
                self.first_incomplete)


cdef ClientRequest _dec_client_request(_Reader* r):
    cdef ClientRequest m = ClientRequest.__new__(ClientRequest)
    _need_fixed(r, _SZ_CLIENT_REQ, "ClientRequest")
    m.request_id = _get64(r)
    m.client_id = _get64(r)
    m.seq = _get64(r)
    m.first_incomplete = _get64(r)
    m.prev_revision = <int64_t>_get64(r)
    m.limit = _get64(r)
    m.flags = _get32(r)
    m.timeout_ms = _get32(r)
    m.op = _get8(r)
    m.key = _get_blob_after_length(r, _get32(r), "ClientRequest", "key")
    m.value = _get_blob(r, "ClientRequest", "value")
    _expect_end(r, "ClientRequest")
    return m


cdef class ClientReply(MessageBase):
    """Raft process -> worker: the outcome of request ``request_id``."""

    _FIELDS = ("request_id", "status", "index", "term", "revision", "body")
    TYPE_ID = T_CLIENT_REPLY

    def __init__(self, uint64_t request_id, uint16_t status, uint64_t index=0,
                 uint64_t term=0, int64_t revision=0, bytes body not None=b""):
        self.request_id = request_id
        self.status = status
        self.index = index
        self.term = term
        self.revision = revision
        self.body = body

    cdef uint8_t _type_id(self) noexcept:
        return T_CLIENT_REPLY

    cdef Py_ssize_t _body_size(self) except -1:
        return _SZ_CLIENT_REPLY - 4 + _blob_size(self.body, "ClientReply.body")

    cdef int _write_body(self, char* buf, Py_ssize_t size) except -1:
        cdef char* p = _put64(buf, self.request_id)
        p = _put64(p, self.index)
        p = _put64(p, self.term)
        p = _put64(p, <uint64_t>self.revision)
        p = _put16(p, self.status)
        p = _put_blob(p, self.body)
        return _finish(p, buf, size, self)

    cdef tuple _values(self):
        return (self.request_id, self.status, self.index, self.term, self.revision,
                self.body)


cdef ClientReply _dec_client_reply(_Reader* r):
    cdef ClientReply m = ClientReply.__new__(ClientReply)
    _need_fixed(r, _SZ_CLIENT_REPLY, "ClientReply")
    m.request_id = _get64(r)
    m.index = _get64(r)
    m.term = _get64(r)
    m.revision = <int64_t>_get64(r)
    m.status = _get16(r)
    m.body = _get_blob_after_length(r, _get32(r), "ClientReply", "body")
    _expect_end(r, "ClientReply")
    return m


MESSAGE_TYPES = {
    cls.TYPE_ID: cls
    for cls in (
        AppendEntries, AppendEntriesResponse, RequestVote, RequestVoteResponse,
        InstallSnapshot, InstallSnapshotResponse, TimeoutNow, ReadIndex,
        ReadIndexResponse, Propose, ProposeResponse, Handshake, HandshakeReply,
        ClientRequest, ClientReply,
    )
}


# ---------------------------------------------------------------------------------------
# Frames.

cdef inline int _check_length(uint32_t length, Py_ssize_t max_frame_size) except -1:
    if length == 0:
        raise CodecError("zero-length frame: a frame holds at least its type byte")
    if <uint64_t>length > <uint64_t>max_frame_size:
        raise CodecError(
            f"frame length {length} exceeds the limit of {max_frame_size} bytes")
    return 0


cdef MessageBase decode_frame_payload(const unsigned char* p, Py_ssize_t n):
    cdef _Reader r
    cdef uint8_t t
    if n < 1:
        raise CodecError("zero-length frame: a frame holds at least its type byte")
    t = p[0]
    r.p = p + 1
    r.left = n - 1
    if t == T_APPEND_ENTRIES:
        return _dec_append_entries(&r)
    elif t == T_APPEND_ENTRIES_RESPONSE:
        return _dec_append_entries_response(&r)
    elif t == T_REQUEST_VOTE:
        return _dec_request_vote(&r)
    elif t == T_REQUEST_VOTE_RESPONSE:
        return _dec_request_vote_response(&r)
    elif t == T_INSTALL_SNAPSHOT:
        return _dec_install_snapshot(&r)
    elif t == T_INSTALL_SNAPSHOT_RESPONSE:
        return _dec_install_snapshot_response(&r)
    elif t == T_TIMEOUT_NOW:
        return _dec_timeout_now(&r)
    elif t == T_READ_INDEX:
        return _dec_read_index(&r)
    elif t == T_READ_INDEX_RESPONSE:
        return _dec_read_index_response(&r)
    elif t == T_PROPOSE:
        return _dec_propose(&r)
    elif t == T_PROPOSE_RESPONSE:
        return _dec_propose_response(&r)
    elif t == T_HANDSHAKE:
        return _dec_handshake(&r)
    elif t == T_HANDSHAKE_REPLY:
        return _dec_handshake_reply(&r)
    elif t == T_CLIENT_REQUEST:
        return _dec_client_request(&r)
    elif t == T_CLIENT_REPLY:
        return _dec_client_reply(&r)
    raise CodecError(f"unknown message type {t}")


cdef inline Py_ssize_t _frame_body_size(MessageBase m) except -1:
    cdef Py_ssize_t body = m._body_size()
    # The length field counts the type byte too and must fit a u32.
    if <uint64_t>body + 1 > _U32_MAX:
        raise CodecError(f"{type(m).__name__} of {body} bytes does not fit in one frame")
    return body


cdef inline int _write_frame(MessageBase m, char* p, Py_ssize_t body) except -1:
    rkc_st32(p, <uint32_t>(body + 1))
    p[4] = <char>m._type_id()
    return m._write_body(p + FRAME_HEADER_LEN, body)


cdef bytes encode_message(MessageBase message):
    cdef Py_ssize_t body = _frame_body_size(message)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, FRAME_HEADER_LEN + body)
    _write_frame(message, PyBytes_AS_STRING(out), body)
    return out


cdef inline MessageBase _as_message(object o):
    if not isinstance(o, MessageBase):
        raise TypeError(f"cannot encode {type(o).__name__}: not a codec message")
    return <MessageBase>o


def encode(message):
    """One whole frame (length, type, body)."""
    return encode_message(_as_message(message))


def encode_batch(messages):
    """Several frames back to back, built in one buffer."""
    cdef object seq = PySequence_Fast(messages, "encode_batch() needs an iterable")
    cdef Py_ssize_t n = len(seq)
    cdef Py_ssize_t i, total = 0
    cdef Py_ssize_t* sizes
    cdef bytes out
    cdef char* p
    if n == 0:
        return b""
    # Body sizes are kept from the sizing pass so AppendEntries is not walked twice.
    sizes = <Py_ssize_t*>PyMem_Realloc(NULL, n * sizeof(Py_ssize_t))
    if sizes == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            sizes[i] = _frame_body_size(_as_message(seq[i]))
            total += FRAME_HEADER_LEN + sizes[i]
        out = PyBytes_FromStringAndSize(NULL, total)
        p = PyBytes_AS_STRING(out)
        for i in range(n):
            _write_frame(<MessageBase>seq[i], p, sizes[i])
            p += FRAME_HEADER_LEN + sizes[i]
    finally:
        PyMem_Free(sizes)
    return out


cdef inline int _check_max(Py_ssize_t max_frame_size) except -1:
    if max_frame_size < 1:
        raise ValueError(f"max_frame_size must be at least 1, not {max_frame_size}")
    return 0


cdef MessageBase _decode_one(const unsigned char* p, Py_ssize_t n, Py_ssize_t max_frame_size):
    cdef uint32_t length
    if n < 4:
        raise CodecError(f"truncated frame header: {n} of 4 bytes")
    length = rkc_ld32(p)
    _check_length(length, max_frame_size)
    if <Py_ssize_t>length > n - 4:
        raise CodecError(f"truncated frame: length says {length} bytes, {n - 4} present")
    if <Py_ssize_t>length < n - 4:
        raise CodecError(f"{n - 4 - length} trailing bytes after the frame")
    return decode_frame_payload(p + 4, length)


def decode(frame, Py_ssize_t max_frame_size=_DEFAULT_MAX):
    """Decode exactly one whole frame; trailing bytes are an error."""
    cdef Py_buffer view
    _check_max(max_frame_size)
    if PyBytes_CheckExact(frame):
        return _decode_one(<const unsigned char*>PyBytes_AS_STRING(frame),
                           PyBytes_GET_SIZE(frame), max_frame_size)
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        return _decode_one(<const unsigned char*>view.buf, view.len, max_frame_size)
    finally:
        PyBuffer_Release(&view)


def encode_entries(entries):
    """The wire encodings of ``entries`` back to back."""
    cdef list lst = _as_list(entries)
    cdef Py_ssize_t size = _entries_size(lst, "encode_entries")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* start = PyBytes_AS_STRING(out)
    cdef char* p = _put_entries(start, start + size, lst)
    if p - start != size:
        raise RuntimeError("entries changed while being encoded")
    return out


cdef list _decode_entries(const unsigned char* p, Py_ssize_t n):
    cdef list out = []
    cdef Py_ssize_t used = 0
    while n > 0:
        out.append(read_entry(p, n, &used))
        p += used
        n -= used
    return out


def decode_entries(buf):
    """Inverse of encode_entries."""
    cdef Py_buffer view
    if PyBytes_CheckExact(buf):
        return _decode_entries(<const unsigned char*>PyBytes_AS_STRING(buf),
                               PyBytes_GET_SIZE(buf))
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        return _decode_entries(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef class FrameDecoder:
    """Streaming decoder: accepts bytes in arbitrary chunks and returns whole messages.

    Whole frames are decoded straight from the caller's chunk; only the unfinished frame
    at the end of a chunk is copied into the decoder's buffer, which grows with the bytes
    actually received (never past the frame's declared length) rather than to the
    declared length up front. A length header above ``max_frame_size`` is refused as
    soon as its four bytes are in, before any of the body is kept.

    After any error the stream position is unknown, so the decoder refuses every later
    feed; frames decoded earlier in the failing feed are dropped with it (the caller
    closes the connection either way).
    """

    cdef Py_ssize_t _max
    cdef unsigned char* _buf
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _len
    cdef str _error

    def __cinit__(self):
        self._max = _DEFAULT_MAX
        self._buf = NULL
        self._cap = 0
        self._len = 0
        self._error = None

    def __init__(self, Py_ssize_t max_frame_size=_DEFAULT_MAX):
        _check_max(max_frame_size)
        self._max = max_frame_size

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def buffered(self):
        """Bytes held that do not yet make a whole frame."""
        return self._len

    @property
    def max_frame_size(self):
        return self._max

    @property
    def poisoned(self):
        """True once a feed has failed; every later feed raises CodecError."""
        return self._error is not None

    def feed(self, data):
        cdef Py_buffer view
        cdef list out = []
        if self._error is not None:
            raise CodecError(f"decoder unusable after an earlier error: {self._error}")
        if PyBytes_CheckExact(data):
            try:
                self._feed(<const unsigned char*>PyBytes_AS_STRING(data),
                           PyBytes_GET_SIZE(data), out)
            except BaseException as exc:
                self._poison(exc)
                raise
            return out
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len, out)
        except BaseException as exc:
            self._poison(exc)
            raise
        finally:
            PyBuffer_Release(&view)
        return out

    cdef void _poison(self, object exc):
        self._error = str(exc) or type(exc).__name__
        self._release()

    cdef void _release(self) noexcept:
        PyMem_Free(self._buf)
        self._buf = NULL
        self._cap = 0
        self._len = 0

    cdef int _reserve(self, Py_ssize_t need, Py_ssize_t limit) except -1:
        # Grow geometrically (amortised O(1) per byte for a frame that trickles in) but
        # never past ``limit``, the size of the frame being assembled.
        cdef Py_ssize_t cap
        cdef void* grown
        if need <= self._cap:
            return 0
        cap = self._cap * 2
        if cap < 256:
            cap = 256
        if cap > limit:
            cap = limit
        if cap < need:
            cap = need
        grown = PyMem_Realloc(self._buf, cap)
        if grown == NULL:
            raise MemoryError()
        self._buf = <unsigned char*>grown
        self._cap = cap
        return 0

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t take, total
        cdef uint32_t length = 0
        if self._len:
            # Finish the frame started by earlier chunks first.
            if self._len < 4:
                take = min(4 - self._len, n)
                if take:
                    memcpy(self._buf + self._len, p, take)
                self._len += take
                p += take
                n -= take
                if self._len < 4:
                    return 0
                _check_length(rkc_ld32(self._buf), self._max)
            length = rkc_ld32(self._buf)
            total = 4 + <Py_ssize_t>length
            take = min(total - self._len, n)
            self._reserve(self._len + take, total)
            if take:
                memcpy(self._buf + self._len, p, take)
            self._len += take
            p += take
            n -= take
            if self._len < total:
                return 0
            self._len = 0
            out.append(decode_frame_payload(self._buf + 4, length))
            if self._cap > _KEEP_CAPACITY:
                self._release()
        while n >= 4:
            length = rkc_ld32(p)
            _check_length(length, self._max)
            if <Py_ssize_t>length > n - 4:
                break
            out.append(decode_frame_payload(p + 4, length))
            p += 4 + <Py_ssize_t>length
            n -= 4 + <Py_ssize_t>length
        if n:
            # An unfinished frame; if its header is complete it was checked above.
            self._reserve(n, 4 + <Py_ssize_t>length if n >= 4 else 4)
            memcpy(self._buf, p, n)
            self._len = n
        return 0
