# cython: language_level=3
"""The segment log: Raft's durable log as a directory of append-only segment files.

The file layout is described in segment_log.pxd. The rules that keep it trustworthy:

* A batch of entries is encoded into one buffer and written with one pwrite; sync() is one
  fdatasync of the active segment, run with the GIL released.
* Segment files appear atomically: the header is written to "<name>.tmp", fsynced and
  renamed, then the directory is fsynced. A ".seg" file therefore always has a complete
  header, and a damaged header is corruption, never a crash artefact.
* Before a new segment is created the previous one is fdatasynced, so only the last
  segment can end in a torn write.
* A truncation is made durable (fsync) before anything is written over it, so a crash
  cannot combine the old file size with new bytes, which would look like corruption in
  the middle of the last segment rather than a torn tail.
* reset() writes the new segment with a higher epoch before deleting the old ones; if a
  crash interrupts the deletion, recovery deletes the segments of older epochs.
* On open, only the tail of the last segment may be damaged in the ways a torn write
  damages it; that tail is cut off and reported. A torn write leaves a correct prefix of
  what was written, so a final record only counts as torn if its length agrees with the
  entry header inside it (when that header is there); a damaged length is corruption.
  Anything else raises LogCorruptionError naming the file and byte offset. Nothing is
  ever skipped silently.
* Records and headers are checksummed with CRC32C.
"""

import logging
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromUnsignedLongLong
from cpython.sequence cimport (
    PySequence_Fast,
    PySequence_Fast_GET_ITEM,
    PySequence_Fast_GET_SIZE,
)
from libc.errno cimport EINTR, EIO, errno
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, dup, fdatasync, fsync, ftruncate, pread, pwrite, read, write

from raftkv_ext.entry cimport (
    ENTRY_HEADER_SIZE,
    Entry,
    entry_wire_size,
    get_u32,
    get_u64,
    put_u32,
    put_u64,
    read_entry,
    write_entry,
)

from raftkv.storage.log_store import LogIndexError
from raftkv_ext.errors import CodecError, LogCorruptionError


# CRC32C (Castagnoli), the checksum of records and headers. It is computed with the SSE4.2
# crc32 instruction when the CPU has it (many times faster than a table on the short
# payloads of a log), and with a slicing-by-8 table otherwise.
cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include <string.h>

    static uint32_t rkv_crc32c_table[8][256];
    static int rkv_crc32c_use_hw = 0;

    static uint32_t rkv_crc32c_sw(uint32_t crc, const unsigned char *p, size_t n) {
        const uint32_t (*t)[256] = (const uint32_t (*)[256])rkv_crc32c_table;
        crc = ~crc;
        while (n >= 8) {
            /* Explicit byte loads keep this independent of the host's byte order. */
            uint32_t lo = crc ^ ((uint32_t)p[0] | ((uint32_t)p[1] << 8)
                                 | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
            uint32_t hi = (uint32_t)p[4] | ((uint32_t)p[5] << 8)
                          | ((uint32_t)p[6] << 16) | ((uint32_t)p[7] << 24);
            crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF]
                  ^ t[4][lo >> 24] ^ t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF]
                  ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
            p += 8;
            n -= 8;
        }
        while (n--) {
            crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        }
        return ~crc;
    }

    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #define RKV_HAVE_HW_CRC32C 1
    __attribute__((target("sse4.2")))
    static uint32_t rkv_crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
        uint64_t c = (uint32_t)~crc;
        while (n >= 8) {
            uint64_t word;
            memcpy(&word, p, 8);
            c = __builtin_ia32_crc32di(c, word);
            p += 8;
            n -= 8;
        }
        uint32_t c32 = (uint32_t)c;
        while (n--) {
            c32 = __builtin_ia32_crc32qi(c32, *p++);
        }
        return ~c32;
    }
    #else
    #define RKV_HAVE_HW_CRC32C 0
    static uint32_t rkv_crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
        return rkv_crc32c_sw(crc, p, n);
    }
    #endif

    static void rkv_crc32c_init(void) {
        uint32_t i, c;
        int k;
        for (i = 0; i < 256; i++) {
            c = i;
            for (k = 0; k < 8; k++) {
                c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
            }
            rkv_crc32c_table[0][i] = c;
        }
        for (i = 0; i < 256; i++) {
            c = rkv_crc32c_table[0][i];
            for (k = 1; k < 8; k++) {
                c = rkv_crc32c_table[0][c & 0xFF] ^ (c >> 8);
                rkv_crc32c_table[k][i] = c;
            }
        }
    #if RKV_HAVE_HW_CRC32C
        __builtin_cpu_init();
        rkv_crc32c_use_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    #endif
    }

    static inline uint32_t rkv_crc32c(uint32_t crc, const unsigned char *p, size_t n) {
        return rkv_crc32c_use_hw ? rkv_crc32c_hw(crc, p, n) : rkv_crc32c_sw(crc, p, n);
    }
    """
    void rkv_crc32c_init() noexcept
    int rkv_crc32c_use_hw
    uint32_t rkv_crc32c(uint32_t crc, const unsigned char* p, size_t n) noexcept nogil
    uint32_t rkv_crc32c_sw(uint32_t crc, const unsigned char* p, size_t n) noexcept nogil


rkv_crc32c_init()


DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
SEGMENT_HEADER_BYTES = SEGMENT_HEADER_SIZE
RECORD_HEADER_BYTES = RECORD_HEADER_SIZE

_log = logging.getLogger("raftkv.storage")

cdef bytes _MAGIC = b"RAFTKVSG"
cdef str _SUFFIX = ".seg"
cdef str _TMP_SUFFIX = ".seg.tmp"
cdef int _NAME_DIGITS = 20
# Sealed segments keep a read descriptor open after a read, so that replication reading
# a lagging follower's range does not reopen the file per call; a few suffice.
cdef Py_ssize_t _MAX_OPEN_SEALED = 8
# The write buffer is kept between appends up to this size; a bigger batch gets a
# one-off buffer so a single huge append does not pin memory for the log's lifetime.
cdef Py_ssize_t _KEEP_BUFFER = 4 * 1024 * 1024
cdef uint64_t _MAX_PAYLOAD = 0xFFFFFFFF


cdef inline uint32_t _crc(const unsigned char* data, Py_ssize_t n) noexcept nogil:
    return rkv_crc32c(0, data, <size_t>n)


def crc32c(const unsigned char[:] data not None, uint32_t value=0):
    """CRC32C of data, continuing from value (the checksum of the bytes before it)."""
    if data.shape[0] == 0:
        return value
    return rkv_crc32c(value, &data[0], <size_t>data.shape[0])


def _crc32c_software(const unsigned char[:] data not None, uint32_t value=0):
    """The table-driven CRC32C, whatever the CPU offers (so tests can check both)."""
    if data.shape[0] == 0:
        return value
    return rkv_crc32c_sw(value, &data[0], <size_t>data.shape[0])


CRC32C_HARDWARE = bool(rkv_crc32c_use_hw)


cdef int64_t _as_index(object value) except? -1:
    """An index argument as int64, clamping huge values so range checks reject them."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow > 0:
        return INT64_MAX
    if overflow < 0:
        return INT64_MIN
    return v


cdef str _segment_name(uint64_t first):
    return f"{first:0{_NAME_DIGITS}d}{_SUFFIX}"


cdef bytes _encode_header(uint64_t first, uint64_t prev_term, uint64_t epoch):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, SEGMENT_HEADER_SIZE)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(_MAGIC), 8)
    put_u32(p + 8, SEGMENT_FORMAT_VERSION)
    put_u32(p + 12, 0)
    put_u64(p + 16, first)
    put_u64(p + 24, prev_term)
    put_u64(p + 32, epoch)
    put_u32(p + 40, _crc(<const unsigned char*>p, 40))
    return out


cdef int _raise_errno(int err, str what, object path) except -1:
    raise OSError(err, f"{what}: {os.strerror(err)}", path)


cdef int _pwrite_all(int fd, const char* buf, Py_ssize_t n, int64_t offset) noexcept nogil:
    """Write all n bytes at offset, looping over partial writes; 0 or an errno."""
    cdef Py_ssize_t done
    while n > 0:
        done = pwrite(fd, buf, <size_t>n, offset)
        if done < 0:
            if errno == EINTR:
                continue
            return errno
        if done == 0:
            return EIO
        buf += done
        n -= done
        offset += done
    return 0


cdef Py_ssize_t _pread_all(int fd, char* buf, Py_ssize_t n, int64_t offset) noexcept nogil:
    """Read up to n bytes at offset, looping until n or end of file; the count or -errno."""
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t got
    while total < n:
        got = pread(fd, buf + total, <size_t>(n - total), offset + total)
        if got < 0:
            if errno == EINTR:
                continue
            return -errno
        if got == 0:
            break
        total += got
    return total


cdef bint _all_zero(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] != 0:
            return False
    return True


cdef void _sync_run(_SyncJob* job) noexcept nogil:
    """The system calls of a sync, on the descriptors ``_sync_prepare`` duplicated (and
    closes them): no Python object is touched, so it runs without the GIL."""
    cdef timespec started, ended
    cdef int rc
    clock_gettime(CLOCK_MONOTONIC, &started)
    if job.data_only:
        rc = fdatasync(job.fd)
    else:
        rc = fsync(job.fd)
    if rc != 0:
        job.err = errno
    elif job.dfd >= 0 and fsync(job.dfd) != 0:
        job.err = errno
    close(job.fd)
    if job.dfd >= 0:
        close(job.dfd)
    clock_gettime(CLOCK_MONOTONIC, &ended)
    job.seconds = (ended.tv_sec - started.tv_sec) + (ended.tv_nsec - started.tv_nsec) * 1e-9


cdef int _fsync_fd(int fd, bint data_only) except -1:
    """fsync/fdatasync with the GIL released; raises OSError."""
    cdef int rc
    cdef int err = 0
    with nogil:
        if data_only:
            rc = fdatasync(fd)
        else:
            rc = fsync(fd)
        if rc != 0:
            err = errno
    if err:
        _raise_errno(err, "fsync failed", None)
    return 0


cdef class RecoveryReport:
    """What opening the log found: how many entries, and any torn tail it cut off."""

    def __cinit__(self):
        self.truncated_path = None
        self.removed_files = ()

    def __repr__(self):
        return (f"RecoveryReport(entries={self.entries}, segments={self.segments}, "
                f"truncated_path={self.truncated_path!r}, "
                f"truncated_offset={self.truncated_offset}, "
                f"truncated_bytes={self.truncated_bytes}, "
                f"removed_files={self.removed_files!r})")


cdef class _Segment:
    """One segment file: its header fields, its valid size and (maybe) an open fd."""

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        self.close_fd()

    cdef void close_fd(self) noexcept:
        cdef int fd = self.fd
        if fd >= 0:
            self.fd = -1
            # A close error cannot lose data here: everything that must be durable was
            # fsynced explicitly, and the kernel releases the descriptor regardless.
            close(fd)


cdef _Segment _read_header(str path, uint64_t named_first):
    """Open a segment file and validate its header against its name."""
    cdef _Segment seg = _Segment.__new__(_Segment)
    cdef unsigned char header[SEGMENT_HEADER_SIZE]
    cdef Py_ssize_t got
    cdef uint32_t version
    seg.path = path
    seg.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with nogil:
        got = _pread_all(seg.fd, <char*>header, SEGMENT_HEADER_SIZE, 0)
    if got < 0:
        _raise_errno(<int>-got, "cannot read segment header", path)
    # Headers are written to a temporary file, fsynced and renamed into place, so a
    # short or damaged header cannot come from a crash: it is corruption.
    if got < SEGMENT_HEADER_SIZE:
        raise LogCorruptionError(path, 0, f"truncated segment header ({got} of "
                                          f"{SEGMENT_HEADER_SIZE} bytes)")
    if memcmp(header, PyBytes_AS_STRING(_MAGIC), 8) != 0:
        raise LogCorruptionError(path, 0, "not a segment file (bad magic)")
    if _crc(header, 40) != get_u32(header + 40):
        raise LogCorruptionError(path, 0, "segment header checksum mismatch")
    version = get_u32(header + 8)
    if version != SEGMENT_FORMAT_VERSION:
        raise LogCorruptionError(path, 0, f"unsupported segment format version {version}")
    seg.first = get_u64(header + 16)
    seg.prev_term = get_u64(header + 24)
    seg.epoch = get_u64(header + 32)
    if seg.first != named_first:
        raise LogCorruptionError(
            path, 0, f"header says first index {seg.first} but the file name says "
                     f"{named_first}")
    if seg.first == 0 or seg.first > <uint64_t>INT64_MAX:
        raise LogCorruptionError(path, 0, f"invalid first index {seg.first}")
    seg.size = SEGMENT_HEADER_SIZE
    return seg


cdef class SegmentLog:
    """Raft's log as a directory of segment files; see the module docstring.

    Mutating calls (append, truncate_after, compact, reset, close) must come from one
    thread at a time; a second concurrent mutator gets RuntimeError. sync() may run in
    another thread while the owner keeps appending and reading: it syncs everything
    appended before it was called.
    """

    def __cinit__(self):
        self._dir_fd = -1
        self._first = 1
        self._last = 0
        self._segments = []
        self._open_sealed = []
        self._failure = None

    def __dealloc__(self):
        # Segments own their descriptors and close them when they are freed.
        if self._dir_fd >= 0:
            close(self._dir_fd)
            self._dir_fd = -1
        free(self._terms)
        self._terms = NULL
        free(self._offsets)
        self._offsets = NULL
        free(self._buf)
        self._buf = NULL

    def __init__(self, directory, segment_size=DEFAULT_SEGMENT_SIZE):
        if self._initialized:
            raise RuntimeError("SegmentLog.__init__ called twice")
        self._initialized = True
        cdef int64_t size = _as_index(segment_size)
        if size <= 0:
            raise ValueError(f"segment_size must be positive, got {segment_size!r}")
        self._segment_size = size
        path = os.fspath(directory)
        if not isinstance(path, str):
            raise TypeError("directory must be a str path")
        self._directory = path
        created = not os.path.isdir(self._directory)
        os.makedirs(self._directory, 0o700, exist_ok=True)
        if created:
            # makedirs' mode goes through the umask; set it exactly. An existing
            # directory keeps its mode: that is the operator's choice.
            os.chmod(self._directory, 0o700)
            # Make the new directory's own entry durable in its parent.
            parent = os.open(os.path.dirname(os.path.abspath(self._directory)),
                             os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(parent)
            finally:
                os.close(parent)
        self._dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._recover()
        self._open = True

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if not self._open:
            return f"<SegmentLog {self._directory!r} closed>"
        return (f"<SegmentLog {self._directory!r} first={self._first} last={self._last} "
                f"segments={len(self._segments)}>")

    # -- state checks ----------------------------------------------------------------

    cdef int _check_open(self) except -1:
        if not self._open:
            raise ValueError("operation on a closed SegmentLog")
        return 0

    cdef int _check_writable(self) except -1:
        if not self._open:
            raise ValueError("operation on a closed SegmentLog")
        if self._busy:
            raise RuntimeError("SegmentLog is being modified by another thread")
        if self._failure is not None:
            raise OSError(EIO, f"SegmentLog is unusable until reopened: {self._failure}",
                          self._directory)
        return 0

    # -- properties ------------------------------------------------------------------

    @property
    def directory(self):
        return self._directory

    @property
    def recovery(self):
        self._check_open()
        return self._recovery

    @property
    def first_index(self):
        self._check_open()
        return self._first

    @property
    def last_index(self):
        self._check_open()
        return self._last

    @property
    def segment_count(self):
        self._check_open()
        return len(self._segments)

    # -- reads -----------------------------------------------------------------------

    def term(self, index):
        """Term of entry ``index`` (first_index - 1 <= index <= last_index, or 0)."""
        cdef int64_t i = _as_index(index)
        # Closing sets first > last, so a closed log always takes the checked path.
        if self._first <= i <= self._last:
            return PyLong_FromUnsignedLongLong(self._terms[i - self._first])
        return PyLong_FromUnsignedLongLong(self._term_or_raise(i))

    def terms(self, lo, hi):
        """Terms of entries lo .. hi-1, each under the same rules as term()."""
        cdef int64_t a = _as_index(lo)
        cdef int64_t b = _as_index(hi)
        cdef int64_t i
        self._check_open()
        if a >= b:
            return []
        if a < 0 or b - 1 > self._last:
            raise LogIndexError(f"terms({lo}, {hi}): log holds {self._first}..{self._last}")
        out = []
        i = a
        while i < b and i < self._first:
            out.append(self._term_or_raise(i))
            i += 1
        while i < b:
            out.append(PyLong_FromUnsignedLongLong(self._terms[i - self._first]))
            i += 1
        return out

    cdef uint64_t _term_or_raise(self, int64_t index) except? 0:
        self._check_open()
        if self._first <= index <= self._last:
            return self._terms[index - self._first]
        if index == self._first - 1:
            return self._prev_term
        if index == 0:
            return 0
        raise LogIndexError(f"index {index} is outside the log "
                            f"(terms known for {self._first - 1}..{self._last})")

    def entries(self, lo, hi, max_bytes=0):
        """Entries lo <= index < hi, stopping before max_bytes of wire size (>= 1 entry)."""
        cdef int64_t a = _as_index(lo)
        cdef int64_t b = _as_index(hi)
        cdef int64_t budget = _as_index(max_bytes)
        cdef int64_t total = 0, k, j, run_end, seg_last, rec_end, end
        cdef Py_ssize_t s, nsegs
        cdef bint stop = False
        cdef _Segment seg
        cdef list out = []
        self._check_open()
        if a >= b:
            return out
        if a < self._first or b > self._last + 1:
            raise LogIndexError(f"entries({lo}, {hi}): log holds {self._first}..{self._last}")
        nsegs = len(self._segments)
        s = self._segment_for(a)
        k = a
        while k < b and not stop:
            seg = <_Segment>self._segments[s]
            if s + 1 < nsegs:
                seg_last = <int64_t>(<_Segment>self._segments[s + 1]).first - 1
            else:
                seg_last = self._last
            run_end = b - 1 if b - 1 < seg_last else seg_last
            # Decide how much of this segment's run fits the budget from the in-memory
            # offsets alone, then read the whole run with one pread.
            j = k
            end = self._offsets[k - self._first]
            while j <= run_end:
                if j < seg_last:
                    rec_end = self._offsets[j + 1 - self._first]
                else:
                    rec_end = seg.size
                if (budget > 0 and total + (rec_end - end - RECORD_HEADER_SIZE) > budget
                        and (len(out) > 0 or j > k)):
                    stop = True
                    break
                total += rec_end - end - RECORD_HEADER_SIZE
                end = rec_end
                j += 1
            if j > k:
                self._read_run(seg, k, j, end, out)
            k = j
            s += 1
        return out

    cdef Py_ssize_t _segment_for(self, int64_t index):
        """Position of the last segment whose first index is <= index."""
        cdef list segs = self._segments
        cdef Py_ssize_t lo = 0, hi = len(segs) - 1, mid
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if <int64_t>(<_Segment>segs[mid]).first <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo

    cdef int _read_fd(self, _Segment seg) except -1:
        if seg.fd >= 0:
            return seg.fd
        seg.fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        self._open_sealed.append(seg)
        if len(self._open_sealed) > _MAX_OPEN_SEALED:
            (<_Segment>self._open_sealed.pop(0)).close_fd()
        return seg.fd

    cdef int _forget_sealed(self, _Segment seg) except -1:
        try:
            self._open_sealed.remove(seg)
        except ValueError:
            pass
        return 0

    cdef int _read_run(self, _Segment seg, int64_t lo, int64_t hi, int64_t end,
                       list out) except -1:
        """Read records lo .. hi-1 of seg (ending at byte end) and append their entries."""
        cdef int64_t start = self._offsets[lo - self._first]
        cdef Py_ssize_t n = end - start
        cdef Py_ssize_t got, consumed = 0
        cdef int fd = self._read_fd(seg)
        cdef char* buf = <char*>malloc(n if n > 0 else 1)
        cdef const unsigned char* p
        cdef int64_t idx, local, rec_end
        cdef uint32_t length
        cdef Entry entry
        if buf == NULL:
            raise MemoryError()
        try:
            # Page-cache reads are short, and keeping the GIL means no other thread can
            # close this descriptor while the read runs.
            got = _pread_all(fd, buf, n, start)
            if got < 0:
                _raise_errno(<int>-got, "cannot read segment", seg.path)
            if got < n:
                raise LogCorruptionError(seg.path, start + got,
                                         "segment file is shorter than its index says")
            for idx in range(lo, hi):
                local = self._offsets[idx - self._first] - start
                rec_end = (self._offsets[idx + 1 - self._first] - start if idx + 1 < hi
                           else n)
                p = <const unsigned char*>buf + local
                length = get_u32(p)
                if <int64_t>length + RECORD_HEADER_SIZE != rec_end - local:
                    raise LogCorruptionError(seg.path, start + local,
                                             "record length changed since the log was opened")
                if _crc(p + RECORD_HEADER_SIZE, length) != get_u32(p + 4):
                    raise LogCorruptionError(seg.path, start + local, "checksum mismatch")
                try:
                    entry = read_entry(p + RECORD_HEADER_SIZE, length, &consumed)
                except CodecError as exc:
                    raise LogCorruptionError(seg.path, start + local,
                                             f"undecodable entry: {exc}") from exc
                if consumed != length or <int64_t>entry.index != idx:
                    raise LogCorruptionError(seg.path, start + local,
                                             f"expected entry {idx}, found {entry.index}")
                out.append(entry)
        finally:
            free(buf)
        return 0

    # -- writes ----------------------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t count) except -1:
        """Make room in the term and offset arrays for count entries."""
        cdef Py_ssize_t cap
        cdef void* grown
        if count <= self._capacity:
            return 0
        cap = self._capacity * 2
        if cap < count:
            cap = count
        if cap < 1024:
            cap = 1024
        grown = realloc(self._terms, cap * sizeof(uint64_t))
        if grown == NULL:
            raise MemoryError()
        self._terms = <uint64_t*>grown
        grown = realloc(self._offsets, cap * sizeof(int64_t))
        if grown == NULL:
            raise MemoryError()
        self._offsets = <int64_t*>grown
        self._capacity = cap
        return 0

    def append(self, entries):
        """Append entries continuing at last_index + 1, in one write. Durable after sync()."""
        cdef object seq
        cdef Py_ssize_t n, k, count
        cdef int64_t total = 0, base, pos
        cdef uint64_t wire
        cdef Entry e
        cdef char* buf
        cdef char* p
        cdef Py_ssize_t plen
        cdef int fd, err
        cdef bint own_buffer = False
        self._check_writable()
        seq = PySequence_Fast(entries, "entries must be a sequence of Entry")
        n = PySequence_Fast_GET_SIZE(seq)
        if n == 0:
            return
        base = self._last + 1
        # Validate the whole batch before touching the file.
        for k in range(n):
            obj = <object>PySequence_Fast_GET_ITEM(seq, k)
            if not isinstance(obj, Entry):
                raise TypeError(f"entries[{k}] is {type(obj).__name__}, not Entry")
            e = <Entry>obj
            if e.index != <uint64_t>(base + k):
                raise ValueError(f"entries[{k}] has index {e.index}, expected {base + k}: "
                                 f"entries must continue at last_index + 1")
            wire = <uint64_t>entry_wire_size(e)
            if wire > _MAX_PAYLOAD:
                raise ValueError(f"entry {e.index} is {wire} bytes; a record holds < 4 GiB")
            total += RECORD_HEADER_SIZE + <int64_t>wire
        self._busy = True
        try:
            self._flush_truncation()
            if (self._active.size >= self._segment_size
                    and self._last >= <int64_t>self._active.first):
                self._roll()
            count = self._last - self._first + 1
            self._reserve(count + n)
            if total <= self._buf_capacity:
                buf = self._buf
            elif total <= _KEEP_BUFFER:
                buf = <char*>realloc(self._buf, total)
                if buf == NULL:
                    raise MemoryError()
                self._buf = buf
                self._buf_capacity = total
            else:
                buf = <char*>malloc(total)
                if buf == NULL:
                    raise MemoryError()
                own_buffer = True
            try:
                # Encode every record straight into the buffer and fill the index arrays
                # past _last, where they stay invisible until the write succeeds.
                p = buf
                pos = self._active.size
                for k in range(n):
                    e = <Entry>PySequence_Fast_GET_ITEM(seq, k)
                    plen = write_entry(e, p + RECORD_HEADER_SIZE)
                    put_u32(p, <uint32_t>plen)
                    put_u32(p + 4, _crc(<const unsigned char*>p + RECORD_HEADER_SIZE, plen))
                    self._terms[count + k] = e.term
                    self._offsets[count + k] = pos + (p - buf)
                    p += RECORD_HEADER_SIZE + plen
                fd = self._active.fd
                pos = self._active.size
                with nogil:
                    err = _pwrite_all(fd, buf, total, pos)
                if err:
                    # Cut off whatever part of the batch reached the file, so the next
                    # append starts at a record boundary.
                    if ftruncate(fd, pos) != 0:
                        self._failure = (f"a failed write left a partial batch in "
                                         f"{self._active.path}")
                    _raise_errno(err, "cannot write log segment", self._active.path)
            finally:
                if own_buffer:
                    free(buf)
            self._active.size = pos + total
            self._last += n
            self._active_dirty = True
        finally:
            self._busy = False

    def sync(self):
        """Make every append and truncation so far durable: one fdatasync, GIL released."""
        cdef _SyncJob job
        self._sync_prepare(&job)
        with nogil:
            _sync_run(&job)
        self._sync_finish(&job)

    cdef int _sync_prepare(self, _SyncJob* job) except -1:
        """The part of a sync that needs the log: which descriptors, and how. Everything
        written before this call is covered by the sync it prepares."""
        cdef int err
        self._check_open()
        if self._failure is not None:
            raise OSError(EIO, f"SegmentLog is unusable until reopened: {self._failure}",
                          self._directory)
        job.gen = self._trunc_gen
        # After a truncation the file size must be made durable, which fdatasync is not
        # guaranteed to do for a shrink; use fsync then.
        job.data_only = job.gen == self._trunc_synced_gen
        job.err = 0
        job.dfd = -1
        # Work on duplicates: another thread may roll or close the log while this one
        # waits on the disk, and must not be able to close (and reuse) our descriptor.
        job.fd = dup(self._active.fd)
        if job.fd < 0:
            _raise_errno(errno, "dup failed", self._active.path)
        if self._dir_dirty:
            job.dfd = dup(self._dir_fd)
            if job.dfd < 0:
                err = errno
                close(job.fd)
                _raise_errno(err, "dup failed", self._directory)
        self._dir_dirty = False
        self._active_dirty = False
        return 0

    cdef int _sync_finish(self, _SyncJob* job) except -1:
        """Take in the outcome of a sync that ``_sync_run`` carried out."""
        if job.err:
            # After a failed fsync the kernel may have dropped the dirty pages; nothing
            # written so far can be trusted to be on disk, so refuse further writes.
            self._failure = f"fsync failed: {os.strerror(job.err)}"
            _raise_errno(job.err, "cannot sync log", self._directory)
        if job.gen > self._trunc_synced_gen:
            self._trunc_synced_gen = job.gen
        return 0

    cdef int _flush_truncation(self) except -1:
        """Make a pending truncation durable before new data is written over it.

        Otherwise a crash could keep the old file size but the new bytes, leaving a
        damaged record in the middle of the last segment instead of a torn tail.
        """
        cdef uint64_t gen = self._trunc_gen
        if gen != self._trunc_synced_gen:
            _fsync_fd(self._active.fd, False)
            if gen > self._trunc_synced_gen:
                self._trunc_synced_gen = gen
        return 0

    cdef _Segment _create_segment(self, uint64_t first, uint64_t prev_term, uint64_t epoch):
        """Create a segment atomically (tmp file, fsync, rename, dir fsync); fd stays open."""
        cdef str path = os.path.join(self._directory, _segment_name(first))
        cdef str tmp = path + ".tmp"
        cdef bytes header = _encode_header(first, prev_term, epoch)
        cdef _Segment seg = _Segment.__new__(_Segment)
        seg.path = path
        seg.first = first
        seg.prev_term = prev_term
        seg.epoch = epoch
        seg.size = SEGMENT_HEADER_SIZE
        # The log holds user data: private to the node's user (0600), whatever the umask.
        seg.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(seg.fd, 0o600)
            view = memoryview(header)
            while view:
                view = view[os.write(seg.fd, view):]
            os.fsync(seg.fd)
            os.rename(tmp, path)
        except BaseException:
            seg.close_fd()
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.fsync(self._dir_fd)
        return seg

    cdef int _roll(self) except -1:
        """Seal the active segment and start a new one at last_index + 1."""
        cdef _Segment old = self._active
        cdef _Segment new
        # sync() only covers the active segment, so the one being sealed must be made
        # durable now; this also means only the last segment can ever hold a torn write.
        if self._active_dirty:
            _fsync_fd(old.fd, True)
            self._active_dirty = False
        new = self._create_segment(<uint64_t>(self._last + 1),
                                   self._term_or_raise(self._last), self._epoch)
        self._segments.append(new)
        self._active = new
        # The old descriptor stays open for readers (entries are usually read soon after
        # they are written), under the same cap as other sealed segments.
        self._open_sealed.append(old)
        if len(self._open_sealed) > _MAX_OPEN_SEALED:
            (<_Segment>self._open_sealed.pop(0)).close_fd()
        return 0

    def truncate_after(self, index):
        """Drop every entry above index (a conflicting suffix). Durable after sync()."""
        cdef int64_t i = _as_index(index)
        cdef Py_ssize_t s
        cdef _Segment keep, seg
        cdef int64_t new_size
        cdef int fd_rw = -1
        self._check_writable()
        if i >= self._last:
            return
        if i < self._first - 1:
            raise LogIndexError(f"cannot truncate after {i}: entries up to "
                                f"{self._first - 1} are compacted")
        self._busy = True
        try:
            s = self._segment_for(i + 1)
            keep = <_Segment>self._segments[s]
            new_size = self._offsets[i + 1 - self._first]
            doomed = self._segments[s + 1:]
            if keep is not self._active:
                fd_rw = os.open(keep.path, os.O_RDWR | os.O_CLOEXEC)
            try:
                # The in-memory state changes first, so readers never see entries whose
                # files are going away; a failure below leaves memory and disk disagreeing,
                # so it disables further writes until the log is reopened.
                del self._segments[s + 1:]
                self._last = i
                if fd_rw >= 0:
                    self._forget_sealed(keep)
                    keep.close_fd()
                    keep.fd = fd_rw
                    fd_rw = -1
                    self._active = keep
                for seg in reversed(doomed):
                    self._forget_sealed(seg)
                    seg.close_fd()
                    os.unlink(seg.path)
                if doomed:
                    # Later segments must be gone for good before the kept one shrinks, or
                    # a crash could leave a gap between them.
                    os.fsync(self._dir_fd)
                if ftruncate(keep.fd, new_size) != 0:
                    _raise_errno(errno, "cannot truncate segment", keep.path)
                keep.size = new_size
                self._trunc_gen += 1
            except BaseException as exc:
                self._failure = f"truncate_after({i}) failed half-way: {exc}"
                raise
        finally:
            if fd_rw >= 0:
                close(fd_rw)
            self._busy = False

    def compact(self, index, term):
        """Delete whole segments whose entries are all <= index (covered by a snapshot)."""
        cdef int64_t i = _as_index(index)
        cdef int64_t t = _as_index(term)
        cdef Py_ssize_t k, nsegs
        cdef int64_t new_first
        cdef _Segment active
        self._check_writable()
        if i < 0 or t < 0 or i >= INT64_MAX - 1 or (i == 0 and t != 0):
            raise ValueError(f"compact({index}, {term}): index and term must be >= 0, "
                             "and index 0 has term 0")
        active = self._active
        if i >= self._last:
            if not (self._last < <int64_t>active.first and <int64_t>active.first == i + 1
                    and active.prev_term == <uint64_t>t):
                # Every entry is covered: start afresh after the snapshot.
                self._busy = True
                try:
                    self._reset(i, <uint64_t>t)
                finally:
                    self._busy = False
                return
            # The empty active segment already starts right after the snapshot; only the
            # segments before it go.
            k = len(self._segments) - 1
        else:
            if i < self._first:
                return
            nsegs = len(self._segments)
            k = 0
            while k + 1 < nsegs and <int64_t>(<_Segment>self._segments[k + 1]).first - 1 <= i:
                k += 1
        if k == 0:
            return
        self._busy = True
        try:
            doomed = self._segments[:k]
            new_first = <int64_t>(<_Segment>self._segments[k]).first
            if new_first - self._first > 0 and self._last >= new_first:
                memmove(self._terms, self._terms + (new_first - self._first),
                        (self._last - new_first + 1) * sizeof(uint64_t))
                memmove(self._offsets, self._offsets + (new_first - self._first),
                        (self._last - new_first + 1) * sizeof(int64_t))
            self._first = new_first
            self._prev_term = (<_Segment>self._segments[k]).prev_term
            del self._segments[:k]
            self._dir_dirty = True
            # Oldest first: a crash part-way leaves a contiguous suffix of segments.
            first_error = None
            for seg in doomed:
                self._forget_sealed(<_Segment>seg)
                (<_Segment>seg).close_fd()
                try:
                    os.unlink((<_Segment>seg).path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    # The file reappears as a prefix on the next open, which is harmless;
                    # report it but keep the log usable.
                    if first_error is None:
                        first_error = exc
            if first_error is not None:
                raise first_error
        finally:
            self._busy = False

    def reset(self, index, term):
        """Drop every entry: the log now starts after a snapshot at (index, term)."""
        cdef int64_t i = _as_index(index)
        cdef int64_t t = _as_index(term)
        self._check_writable()
        if i < 0 or t < 0 or i >= INT64_MAX - 1 or (i == 0 and t != 0):
            raise ValueError(f"reset({index}, {term}): index and term must be >= 0, "
                             "and index 0 has term 0")
        self._busy = True
        try:
            self._reset(i, <uint64_t>t)
        finally:
            self._busy = False

    cdef int _reset(self, int64_t index, uint64_t term) except -1:
        cdef _Segment new = self._create_segment(<uint64_t>(index + 1), term,
                                                 self._epoch + 1)
        cdef list old = self._segments
        # The new segment (with a higher epoch) is durable before any old one is
        # deleted; if a crash interrupts the deletions, recovery finishes them.
        self._segments = [new]
        self._active = new
        self._epoch += 1
        self._first = index + 1
        self._last = index
        self._prev_term = term
        self._active_dirty = False
        self._trunc_synced_gen = self._trunc_gen
        self._dir_dirty = True
        self._open_sealed = []
        first_error = None
        for seg in old:
            (<_Segment>seg).close_fd()
            if (<_Segment>seg).path == new.path:
                continue  # replaced by the rename
            try:
                os.unlink((<_Segment>seg).path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error
        return 0

    def close(self):
        """Release files. Unsynced data may be lost. Closing twice is harmless."""
        if not self._open:
            return
        if self._busy:
            raise RuntimeError("SegmentLog is being modified by another thread")
        self._open = False
        for seg in self._segments:
            (<_Segment>seg).close_fd()
        for seg in self._open_sealed:
            (<_Segment>seg).close_fd()
        self._segments = []
        self._open_sealed = []
        self._active = None
        if self._dir_fd >= 0:
            close(self._dir_fd)
            self._dir_fd = -1
        self._first = 1
        self._last = 0
        free(self._terms)
        self._terms = NULL
        free(self._offsets)
        self._offsets = NULL
        self._capacity = 0
        free(self._buf)
        self._buf = NULL
        self._buf_capacity = 0

    # -- recovery --------------------------------------------------------------------

    cdef int _recover(self) except -1:
        cdef RecoveryReport report = RecoveryReport.__new__(RecoveryReport)
        cdef list found = []
        cdef list segs
        cdef list removed = []
        cdef _Segment seg
        cdef Py_ssize_t j, nsegs
        cdef int64_t expected = 0, end
        cdef uint64_t max_epoch = 0
        for name in sorted(os.listdir(self._directory)):
            path = os.path.join(self._directory, name)
            if name.endswith(_TMP_SUFFIX):
                # A segment whose creation did not finish; it never held entries.
                os.unlink(path)
                removed.append(path)
                continue
            if not name.endswith(_SUFFIX):
                continue
            stem = name[:-len(_SUFFIX)]
            if len(stem) != _NAME_DIGITS or stem.strip("0123456789"):
                raise LogCorruptionError(path, 0, "not a segment file name (expected "
                                                  f"{_NAME_DIGITS} digits + {_SUFFIX})")
            found.append((int(stem), path))
        found.sort()
        segs = [_read_header(path, first) for first, path in found]
        for seg in segs:
            if seg.epoch > max_epoch:
                max_epoch = seg.epoch
        kept = []
        for seg in segs:
            if seg.epoch < max_epoch:
                # Left over from a reset that a crash interrupted after the new segment
                # was durable; the reset had already superseded these entries.
                _log.warning("segment log %s: removing %s, superseded by a reset (epoch %d "
                             "< %d)", self._directory, seg.path, seg.epoch, max_epoch)
                seg.close_fd()
                os.unlink(seg.path)
                removed.append(seg.path)
            else:
                kept.append(seg)
        segs = kept
        if removed:
            os.fsync(self._dir_fd)
        self._epoch = max_epoch
        report.removed_files = tuple(removed)

        if not segs:
            seg = self._create_segment(1, 0, 0)
            self._segments = [seg]
            self._active = seg
            self._first = 1
            self._last = 0
            self._prev_term = 0
            report.segments = 1
            self._recovery = report
            return 0

        nsegs = len(segs)
        for j in range(nsegs):
            seg = <_Segment>segs[j]
            if j == 0:
                self._first = <int64_t>seg.first
                self._prev_term = seg.prev_term
                self._last = self._first - 1
                expected = self._first
            else:
                if <int64_t>seg.first != expected:
                    raise LogCorruptionError(
                        seg.path, 0, f"index gap: segment starts at {seg.first} but the "
                                     f"previous one ends at {expected - 1}")
                if (expected - 1 >= self._first
                        and seg.prev_term != self._terms[expected - 1 - self._first]):
                    raise LogCorruptionError(
                        seg.path, 0, f"header says entry {expected - 1} has term "
                                     f"{seg.prev_term} but the previous segment says "
                                     f"{self._terms[expected - 1 - self._first]}")
            expected = self._scan_segment(seg, j == nsegs - 1, expected, report)
            self._last = expected - 1
            if j < nsegs - 1:
                seg.close_fd()
        self._segments = segs
        self._active = <_Segment>segs[nsegs - 1]
        # The scan opened the last segment read-only; writes need read-write.
        self._active.close_fd()
        self._active.fd = os.open(self._active.path, os.O_RDWR | os.O_CLOEXEC)
        if report.truncated_path is not None:
            if ftruncate(self._active.fd, self._active.size) != 0:
                _raise_errno(errno, "cannot cut torn tail", self._active.path)
            # The cut must be durable before anything is appended over it.
            _fsync_fd(self._active.fd, False)
        report.entries = self._last - self._first + 1
        report.segments = nsegs
        self._recovery = report
        return 0

    cdef int64_t _scan_segment(self, _Segment seg, bint is_last, int64_t expected,
                               RecoveryReport report) except -1:
        """Index every record of seg; return the index after its last entry.

        Only the tail of the last segment may end the way a torn write ends; that tail is
        recorded in report (and cut by the caller). Everything else that is wrong raises.
        """
        cdef int64_t size = os.fstat(seg.fd).st_size
        cdef char* raw
        cdef const unsigned char* buf
        cdef const unsigned char* p
        cdef Py_ssize_t got
        cdef int64_t off = SEGMENT_HEADER_SIZE, rem
        cdef uint32_t length
        cdef int64_t idx = expected
        cdef str torn = None
        raw = <char*>malloc(size if size > 0 else 1)
        if raw == NULL:
            raise MemoryError()
        buf = <const unsigned char*>raw
        try:
            with nogil:
                got = _pread_all(seg.fd, raw, size, 0)
            if got < 0:
                _raise_errno(<int>-got, "cannot read segment", seg.path)
            size = got
            while off < size:
                rem = size - off
                p = buf + off
                if rem < RECORD_HEADER_SIZE:
                    torn = f"incomplete record header ({rem} of {RECORD_HEADER_SIZE} bytes)"
                    break
                length = get_u32(p)
                if length < ENTRY_HEADER_SIZE:
                    if _all_zero(p, rem):
                        # Some file systems extend a file with zeros when a crash beats
                        # the data to disk.
                        torn = "zero-filled tail"
                        break
                    raise LogCorruptionError(seg.path, off, f"record length {length} is "
                                                            "smaller than an entry header")
                if rem - RECORD_HEADER_SIZE < length:
                    # A torn write leaves a correct prefix of the record. If the entry's
                    # own header made it, it must agree with the record length; if not,
                    # the length is damaged, not torn.
                    if rem - RECORD_HEADER_SIZE >= ENTRY_HEADER_SIZE:
                        self._check_frame(seg, off, p, length, idx)
                    torn = (f"record payload is {rem - RECORD_HEADER_SIZE} of {length} "
                            "bytes")
                    break
                if _crc(p + RECORD_HEADER_SIZE, length) != get_u32(p + 4):
                    if off + RECORD_HEADER_SIZE + length == size:
                        self._check_frame(seg, off, p, length, idx)
                        torn = "checksum mismatch in the final record"
                        break
                    raise LogCorruptionError(seg.path, off, "checksum mismatch")
                self._check_frame(seg, off, p, length, idx)
                if idx - self._first >= self._capacity:
                    self._reserve(idx - self._first + 1)
                self._terms[idx - self._first] = get_u64(p + RECORD_HEADER_SIZE + 8)
                self._offsets[idx - self._first] = off
                idx += 1
                off += RECORD_HEADER_SIZE + length
        finally:
            free(raw)
        if torn is not None:
            if not is_last:
                raise LogCorruptionError(seg.path, off, f"truncated record in a sealed "
                                                        f"segment: {torn}")
            report.truncated_path = seg.path
            report.truncated_offset = off
            report.truncated_bytes = size - off
            _log.warning("segment log %s: cutting torn tail of %s at byte %d (%d bytes: %s)",
                         self._directory, seg.path, off, size - off, torn)
        seg.size = off
        return idx

    cdef int _check_frame(self, _Segment seg, int64_t off, const unsigned char* p,
                          uint32_t length, int64_t idx) except -1:
        """The record's length and the entry header inside it must agree."""
        cdef const unsigned char* payload = p + RECORD_HEADER_SIZE
        cdef uint64_t data_len = get_u32(payload + 17)
        cdef uint64_t found = get_u64(payload)
        if data_len + ENTRY_HEADER_SIZE != length:
            raise LogCorruptionError(seg.path, off, f"record length {length} disagrees with "
                                                    f"its entry ({data_len} data bytes)")
        if found != <uint64_t>idx:
            raise LogCorruptionError(seg.path, off, f"index gap: expected entry {idx}, "
                                                    f"found {found}")
        return 0


cdef extern from "<semaphore.h>" nogil:
    ctypedef struct sem_t:
        pass
    int sem_init(sem_t* sem, int pshared, unsigned int value)
    int sem_wait(sem_t* sem)
    int sem_post(sem_t* sem)
    int sem_destroy(sem_t* sem)


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_CLOEXEC
        EFD_NONBLOCK


cdef extern from "<errno.h>" nogil:
    enum:
        EAGAIN


cdef class BackgroundSync:
    """A log's syncs on a thread that never holds the GIL.

    ``start`` (on the event loop's thread) prepares a sync of everything written so far
    and wakes the thread, which runs the fdatasync and then makes ``fileno()`` readable;
    the loop then calls ``finish``, which returns the sync's duration or raises its
    error, as ``SegmentLog.sync`` would have. The thread's whole loop runs without the
    GIL, so a sync never waits for the interpreter, and the event loop is neither
    interrupted nor handed a future from another thread: a sync costs one semaphore
    post and one eventfd read on the loop's side (an executor's round trip costs several
    times that, and the thread takes the GIL from the loop twice per sync).

    Run ``run`` on a thread of its own; ``stop`` ends it (after the sync under way).
    One sync at a time.
    """

    cdef SegmentLog _log
    cdef sem_t _wake
    cdef bint _sem_ready
    cdef int _event_fd
    # Written by ``start`` before the semaphore is posted, by the thread before the
    # eventfd is written, read by the other side only after those: never at once.
    cdef _SyncJob _job
    cdef bint _pending
    cdef bint _stopping

    def __cinit__(self, SegmentLog log not None):
        self._log = log
        self._event_fd = -1
        if sem_init(&self._wake, 0, 0) != 0:
            _raise_errno(errno, "cannot create a semaphore", None)
        self._sem_ready = True
        self._event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self._event_fd < 0:
            _raise_errno(errno, "cannot create an eventfd", None)

    def __dealloc__(self):
        if self._event_fd >= 0:
            close(self._event_fd)
        if self._sem_ready:
            sem_destroy(&self._wake)

    def fileno(self):
        """Readable once a sync started by ``start`` is done (watch it with the loop)."""
        return self._event_fd

    @property
    def running(self):
        """Whether a sync was started and not finished yet."""
        return self._pending

    def run(self):
        """The thread's body: wait for ``start``, sync, signal; until ``stop``."""
        with nogil:
            self._serve()

    cdef void _serve(self) noexcept nogil:
        cdef uint64_t one = 1
        while True:
            while sem_wait(&self._wake) != 0:
                pass  # EINTR: wait again
            if self._stopping:
                return
            _sync_run(&self._job)
            while write(self._event_fd, &one, sizeof(one)) < 0 and errno == EINTR:
                pass

    def start(self):
        """Begin a sync of everything the log has written so far. Raises what
        ``SegmentLog.sync`` raises before its system calls (a closed or failed log)."""
        if self._pending:
            raise RuntimeError("a sync is already running")
        if self._stopping:
            raise RuntimeError("the sync thread is stopped")
        self._log._sync_prepare(&self._job)
        self._pending = True
        sem_post(&self._wake)

    def finish(self):
        """After ``fileno()`` became readable: the duration of the sync in seconds, or
        None if it is not done yet. Raises OSError if the sync failed (and the log is
        then unusable until reopened, as after a failed ``SegmentLog.sync``)."""
        cdef uint64_t count = 0
        cdef Py_ssize_t got
        if not self._pending:
            return None
        got = read(self._event_fd, &count, sizeof(count))
        if got < 0:
            if errno == EAGAIN or errno == EINTR:
                return None
            _raise_errno(errno, "cannot read the sync thread's eventfd", None)
        self._pending = False
        self._log._sync_finish(&self._job)
        return self._job.seconds

    def stop(self):
        """Make ``run`` return once the sync under way (if any) is done."""
        self._stopping = True
        sem_post(&self._wake)
