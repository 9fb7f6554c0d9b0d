# The replicated log entry and its wire encoding, shared by the codec and the log.
#
# Wire layout (little-endian), also the payload of a log record:
#   u64 index | u64 term | u8 type | u32 data length | data
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef enum:
    ENTRY_HEADER_SIZE = 21

cdef class Entry:
    cdef readonly uint64_t index
    cdef readonly uint64_t term
    cdef readonly uint8_t type
    cdef readonly bytes data

cdef Entry make_entry(uint64_t index, uint64_t term, uint8_t type, bytes data)
cdef Py_ssize_t entry_wire_size(Entry entry)
cdef Py_ssize_t write_entry(Entry entry, char* buf) noexcept
cdef Entry read_entry(const unsigned char* buf, Py_ssize_t available, Py_ssize_t* consumed)
cdef void put_u32(char* buf, uint32_t value) noexcept
cdef void put_u64(char* buf, uint64_t value) noexcept
cdef uint32_t get_u32(const unsigned char* buf) noexcept
cdef uint64_t get_u64(const unsigned char* buf) noexcept
