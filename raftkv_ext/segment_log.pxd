# The segment log's classes, for other Cython modules.
#
# On-disk layout (all integers little-endian):
#
#   segment file "<first index, 20 digits>.seg":
#     header, SEGMENT_HEADER_SIZE bytes:
#       0  magic "RAFTKVSG"      8 bytes
#       8  u32 format version    (1)
#       12 u32 flags             (0)
#       16 u64 first index       (must match the file name)
#       24 u64 prev term         term of entry first_index - 1
#       32 u64 epoch             bumped by reset; older epochs are leftovers
#       40 u32 crc32c of bytes 0..40
#     then records, back to back:
#       u32 payload length | u32 crc32c of payload | payload
#     where the payload is exactly the entry's wire encoding (raftkv_ext.entry).
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef enum:
    SEGMENT_HEADER_SIZE = 44
    RECORD_HEADER_SIZE = 8
    SEGMENT_FORMAT_VERSION = 1


# One sync: prepared with the GIL (which descriptors, fsync or fdatasync), run without it,
# its outcome taken in with it again (SegmentLog.sync, BackgroundSync).
cdef struct _SyncJob:
    int fd
    int dfd
    bint data_only
    uint64_t gen
    int err
    double seconds


cdef class RecoveryReport:
    cdef readonly Py_ssize_t entries
    cdef readonly Py_ssize_t segments
    cdef readonly object truncated_path
    cdef readonly int64_t truncated_offset
    cdef readonly int64_t truncated_bytes
    cdef readonly tuple removed_files


cdef class _Segment:
    cdef readonly uint64_t first
    cdef readonly uint64_t prev_term
    cdef readonly uint64_t epoch
    cdef readonly str path
    # Open descriptor or -1. The active segment's is read-write; a sealed segment's is
    # read-only and opened on demand by readers. The object owns it (closed on dealloc).
    cdef int fd
    # Bytes of the file that hold valid data: the header plus every indexed record.
    cdef int64_t size

    cdef void close_fd(self) noexcept


cdef class SegmentLog:
    cdef str _directory
    cdef int64_t _segment_size
    cdef int _dir_fd
    cdef bint _initialized
    cdef bint _open
    # Set while a mutating call runs; such calls release the GIL around syscalls, so a
    # second mutator from another thread must be refused rather than interleaved.
    cdef bint _busy
    # Why the log refuses writes after a failed fsync or a half-applied truncation; None
    # while healthy.
    cdef object _failure

    # In-memory index of the retained entries first.._last: _terms[k] and _offsets[k]
    # belong to index _first + k; _offsets is the record's byte offset in its segment.
    cdef int64_t _first
    cdef int64_t _last
    cdef uint64_t _prev_term
    cdef uint64_t _epoch
    cdef uint64_t* _terms
    cdef int64_t* _offsets
    cdef Py_ssize_t _capacity

    cdef list _segments
    cdef _Segment _active
    cdef list _open_sealed

    cdef char* _buf
    cdef Py_ssize_t _buf_capacity

    # Durability bookkeeping for sync().
    cdef bint _active_dirty
    cdef bint _dir_dirty
    cdef uint64_t _trunc_gen
    cdef uint64_t _trunc_synced_gen

    cdef RecoveryReport _recovery

    cdef int _check_open(self) except -1
    cdef int _check_writable(self) except -1
    cdef int _reserve(self, Py_ssize_t count) except -1
    cdef uint64_t _term_or_raise(self, int64_t index) except? 0
    cdef Py_ssize_t _segment_for(self, int64_t index)
    cdef int _read_fd(self, _Segment seg) except -1
    cdef int _forget_sealed(self, _Segment seg) except -1
    cdef _Segment _create_segment(self, uint64_t first, uint64_t prev_term, uint64_t epoch)
    cdef int _flush_truncation(self) except -1
    cdef int _sync_prepare(self, _SyncJob* job) except -1
    cdef int _sync_finish(self, _SyncJob* job) except -1
    cdef int _roll(self) except -1
    cdef int _reset(self, int64_t index, uint64_t term) except -1
    cdef int _read_run(self, _Segment seg, int64_t lo, int64_t hi, int64_t end,
                       list out) except -1
    cdef int _check_frame(self, _Segment seg, int64_t off, const unsigned char* p,
                          uint32_t length, int64_t idx) except -1
    cdef int _recover(self) except -1
    cdef int64_t _scan_segment(self, _Segment seg, bint is_last, int64_t expected,
                               RecoveryReport report) except -1
