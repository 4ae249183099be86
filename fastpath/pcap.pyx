# cython: language_level=3
"""Classic pcap record scanning and writing, compiled (the module fastpath._pcap).

Only the per-batch loops live here, and two helpers of an output file's writes: the loop
reserving its space ahead of them (SpaceReservation) and the writes of a replay's workers taking
turns without the GIL (WriteTurns); pysrc/fastpath/capture.py owns files, chunks and errors.

Batch layout shared with capture.py: packet i is buf[offsets[i] : offsets[i] + lengths[i]] and the
16 bytes before it are the slot of its pcap record header. A batch read from a classic pcap file
keeps the file's own record headers there (so the writer can reuse their timestamp fields
verbatim); `header_flags` says how those headers are encoded, -1 when the slots hold no header.

Neither loop touches a Python object: the GIL is released, memory is reached through typed
memoryviews, and every read is bounds-checked against the buffer by hand (a damaged capture
must never make us read outside it).
"""
from cpython cimport array
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport memcpy

import array as _array_module
import os

cdef enum:
    # header_flags bits: how a pcap record header is encoded.
    _HDR_BIG_ENDIAN = 1
    _HDR_NANOSECOND = 2
    # scan_records status.
    _SCAN_FULL = 0  # max_packets reached; more complete records may follow in the buffer
    _SCAN_NEED_MORE = 1  # stopped at the end of the data or at a record the buffer cuts
    _SCAN_BAD_RECORD = 2  # the record at `pos` has an impossible captured length
    _RECORD_HEADER = 16
    _VERDICT_DROP = 3  # fastpath.verdicts.Verdict.DROP; DROP and REJECT (4) are left out

cdef extern from *:
    # A literal (not a global) so that / and % by it compile to multiplications.
    """
    #define FASTPATH_NS_PER_S 1000000000ULL
    """
    const uint64_t _NS_PER_S "FASTPATH_NS_PER_S"

HDR_BIG_ENDIAN = _HDR_BIG_ENDIAN
HDR_NANOSECOND = _HDR_NANOSECOND
SCAN_FULL = _SCAN_FULL
SCAN_NEED_MORE = _SCAN_NEED_MORE
SCAN_BAD_RECORD = _SCAN_BAD_RECORD
RECORD_HEADER = _RECORD_HEADER


class TimestampError(OverflowError):
    """A timestamp no pcap record header of the output encoding can hold (build_records).

    `index` is the packet's index in the batch, `timestamp_ns` its timestamp.
    """

    def __init__(self, index, timestamp_ns, nanosecond):
        unit = "nanosecond" if nanosecond else "microsecond"
        super().__init__(f"packet {index}: timestamp {timestamp_ns} ns does not fit a pcap record "
                         f"header (past 2106 by more than its 32-bit {unit} field holds)")
        self.index = index
        self.timestamp_ns = timestamp_ns


cdef array.array _u64_template = _array_module.array("Q")
cdef array.array _u32_template = _array_module.array("I")


cdef inline uint32_t _load32(const uint8_t* p, bint big) noexcept nogil:
    # Byte-by-byte with shifts: host-independent, and compilers turn it into one load (+ bswap).
    if big:
        return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline void _store32(uint8_t* p, uint32_t v, bint big) noexcept nogil:
    if big:
        p[0] = <uint8_t>(v >> 24); p[1] = <uint8_t>(v >> 16); p[2] = <uint8_t>(v >> 8); p[3] = <uint8_t>v
    else:
        p[3] = <uint8_t>(v >> 24); p[2] = <uint8_t>(v >> 16); p[1] = <uint8_t>(v >> 8); p[0] = <uint8_t>v


cdef inline uint64_t _decode_ts(const uint8_t* hdr, int flags) noexcept nogil:
    cdef bint big = (flags & _HDR_BIG_ENDIAN) != 0
    cdef uint64_t sec = _load32(hdr, big)
    cdef uint64_t frac = _load32(hdr + 4, big)
    if flags & _HDR_NANOSECOND:
        return sec * _NS_PER_S + frac
    return sec * _NS_PER_S + frac * 1000


ctypedef struct _Walk:
    Py_ssize_t count                # records indexed so far
    Py_ssize_t pos                  # where the walk stopped
    Py_ssize_t need
    int status


cdef inline void _walk_records(_Walk* w, const uint8_t* base, Py_ssize_t end, bint big,
                               int header_flags, uint32_t max_caplen, Py_ssize_t limit,
                               uint64_t* off_p, uint32_t* len_p, uint32_t* wire_p,
                               uint64_t* ts_p) noexcept nogil:
    """Index records from w.pos on into the arrays at w.count, until w.count reaches `limit`
    (status FULL), the data ends or cuts a record (NEED_MORE), or a record is impossible."""
    cdef Py_ssize_t pos = w.pos, count = w.count
    cdef uint32_t caplen
    cdef const uint8_t* hdr
    w.status = _SCAN_NEED_MORE
    while True:
        if end - pos < _RECORD_HEADER:
            w.need = _RECORD_HEADER
            break
        hdr = base + pos
        caplen = _load32(hdr + 8, big)
        # Checked before completeness: a damaged length must not make the caller buffer GiBs.
        if caplen > max_caplen:
            w.status = _SCAN_BAD_RECORD
            w.need = caplen
            break
        if end - pos - _RECORD_HEADER < <Py_ssize_t>caplen:
            w.need = _RECORD_HEADER + caplen
            break
        if count == limit:
            w.status = _SCAN_FULL
            break
        off_p[count] = <uint64_t>(pos + _RECORD_HEADER)
        len_p[count] = caplen
        wire_p[count] = _load32(hdr + 12, big)
        ts_p[count] = _decode_ts(hdr, header_flags)
        count += 1
        pos += _RECORD_HEADER + caplen
    w.pos = pos
    w.count = count


def scan_records(const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t end, int header_flags,
                 uint32_t max_caplen, Py_ssize_t max_packets, tuple into=None):
    """Index the complete pcap records in buf[start:end], at most max_packets of them.

    Returns (offsets, lengths, wire_lengths, timestamps_ns, pos, status, need): arrays sized to
    the number of records found (offsets point at packet data, the header is at offset - 16);
    pos is where scanning stopped; status is SCAN_*; need is the size in bytes of the record at
    pos (header included; 16 when its header itself is cut) when status is SCAN_NEED_MORE, and
    its captured length when status is SCAN_BAD_RECORD (caplen > max_caplen).

    into: four arrays ('Q', 'I', 'I', 'Q') to fill and return instead of new ones, resized to
    the records found (so none may be exporting its buffer). Their length on entry is taken as
    a guess of the count: a reader passes the arrays of a batch it no longer holds, whose
    memory is then reused instead of allocated again for every chunk.
    """
    if start < 0 or end < start or end > buf.shape[0]:
        raise ValueError(f"scan range [{start}, {end}) outside a buffer of {buf.shape[0]} bytes")
    if max_packets < 1:
        raise ValueError("max_packets must be at least 1")
    # At most one record per 16 bytes: no need to allocate max_packets entries for a small tail.
    cdef Py_ssize_t most = min(max_packets, (end - start) // _RECORD_HEADER)
    cdef array.array offsets, lengths, wire_lengths, timestamps
    cdef Py_ssize_t capacity
    if into is None:
        capacity = most
        offsets = array.clone(_u64_template, capacity, False)
        lengths = array.clone(_u32_template, capacity, False)
        wire_lengths = array.clone(_u32_template, capacity, False)
        timestamps = array.clone(_u64_template, capacity, False)
    else:
        offsets, lengths, wire_lengths, timestamps = into
        if (offsets.ob_descr.typecode != c'Q' or lengths.ob_descr.typecode != c'I'
                or wire_lengths.ob_descr.typecode != c'I' or timestamps.ob_descr.typecode != c'Q'):
            raise TypeError("into: expected arrays of typecodes 'Q', 'I', 'I', 'Q'")
        for held in into:
            _refuse_exported(held)
        capacity = min(most, len(offsets) + len(offsets) // 8 + 64)
    cdef const uint8_t* base = &buf[0] if buf.shape[0] > 0 else NULL
    cdef bint big = (header_flags & _HDR_BIG_ENDIAN) != 0
    cdef _Walk walk
    walk.count = walk.need = 0
    walk.pos = start
    while True:
        if into is not None:
            _resize(offsets, capacity)
            _resize(lengths, capacity)
            _resize(wire_lengths, capacity)
            _resize(timestamps, capacity)
        with nogil:
            _walk_records(&walk, base, end, big, header_flags, max_caplen, capacity,
                          <uint64_t*>offsets.data.as_ulonglongs, <uint32_t*>lengths.data.as_uints,
                          <uint32_t*>wire_lengths.data.as_uints,
                          <uint64_t*>timestamps.data.as_ulonglongs)
        if walk.status != _SCAN_FULL or capacity == most:
            break
        capacity = min(most, 2 * capacity)  # the guess was short: more records follow
    if walk.count < len(offsets):
        _resize(offsets, walk.count)
        _resize(lengths, walk.count)
        _resize(wire_lengths, walk.count)
        _resize(timestamps, walk.count)
    return offsets, lengths, wire_lengths, timestamps, walk.pos, walk.status, walk.need


cdef int _refuse_exported(array.array a) except -1:
    """BufferError if a view of `a` is alive. array.resize (Cython's) does not ask, and would
    leave the view pointing at freed memory; the array's own append refuses."""
    a.append(0)
    a.pop()
    return 0


cdef int _resize(array.array a, Py_ssize_t n) except -1:
    if len(a) != n:
        array.resize(a, n)
    return 0


cdef Py_ssize_t _checked_range(Py_ssize_t n, Py_ssize_t n_lengths, Py_ssize_t n_wire,
                               Py_ssize_t n_timestamps, Py_ssize_t n_verdicts, Py_ssize_t start,
                               Py_ssize_t stop) except -1:
    """The arrays of a batch of n packets agree in length and [start, stop) lies in it; returns
    stop (a negative stop means n)."""
    if n_lengths != n or n_wire != n or n_timestamps != n:
        raise ValueError("offsets, lengths, wire_lengths and timestamps_ns differ in length")
    if n_verdicts != n:
        raise ValueError(f"{n_verdicts} verdicts for {n} packets")
    if stop < 0:
        stop = n
    if start < 0 or start > stop or stop > n:
        raise ValueError(f"packet range [{start}, {stop}) outside a batch of {n}")
    return stop


def build_records(const uint8_t[::1] buf, const uint64_t[::1] offsets, const uint32_t[::1] lengths,
                  const uint32_t[::1] wire_lengths, const uint64_t[::1] timestamps_ns,
                  const uint8_t[::1] verdicts, int batch_flags, int out_flags, bytearray out,
                  Py_ssize_t start=0, Py_ssize_t stop=-1):
    """Write the pcap records of packets start..stop-1 whose verdict is not DROP or REJECT to `out`.

    `verdicts` may be None (keep everything); stop=-1 means the end of the batch. `out` grows
    when too small (it must not be exported meanwhile). Returns (bytes written, packets written).
    A record header is rebuilt from the arrays in the `out_flags` encoding, except its timestamp
    fields: when the batch's header slots use the same encoding (`batch_flags` == `out_flags`)
    and decode to timestamps_ns[i], they are copied verbatim, so a rewritten file keeps even
    non-canonical fields (a microsecond field >= 10**6) byte for byte. Otherwise a timestamp past
    the last second a 32-bit seconds field holds (2106) is carried into the fraction field, as
    such a non-canonical input had it; TimestampError when even that field cannot hold it.
    """
    cdef Py_ssize_t n = offsets.shape[0]
    cdef bint has_verdicts = verdicts is not None
    stop = _checked_range(n, lengths.shape[0], wire_lengths.shape[0], timestamps_ns.shape[0],
                          verdicts.shape[0] if has_verdicts else n, start, stop)
    cdef const uint8_t* src = &buf[0] if buf.shape[0] > 0 else NULL
    cdef uint64_t buf_len = <uint64_t>buf.shape[0]
    cdef Py_ssize_t i, bad = -1, total = 0, kept = 0

    # Pass 1: validate (never copy from outside buf) and size the output.
    with nogil:
        for i in range(start, stop):
            if has_verdicts and verdicts[i] >= _VERDICT_DROP:
                continue
            if offsets[i] > buf_len or lengths[i] > buf_len - offsets[i]:
                bad = i
                break
            total += _RECORD_HEADER + lengths[i]
            kept += 1
    if bad >= 0:
        raise ValueError(f"packet {bad}: [{offsets[bad]}, +{lengths[bad]}) is outside the "
                         f"{buf_len}-byte batch buffer")
    if len(out) < total:
        PyByteArray_Resize(out, total)
    cdef uint8_t* dst = <uint8_t*>PyByteArray_AS_STRING(out)

    # Pass 2: copy.
    cdef bint big = (out_flags & _HDR_BIG_ENDIAN) != 0
    cdef bint nano = (out_flags & _HDR_NANOSECOND) != 0
    cdef bint reuse = batch_flags == out_flags
    cdef uint64_t ts, off, sec, frac
    cdef uint64_t max_u32 = 0xFFFFFFFF
    cdef uint32_t caplen
    cdef Py_ssize_t pos = 0
    with nogil:
        for i in range(start, stop):
            if has_verdicts and verdicts[i] >= _VERDICT_DROP:
                continue
            off = offsets[i]
            caplen = lengths[i]
            ts = timestamps_ns[i]
            if reuse and off >= _RECORD_HEADER and _decode_ts(src + off - _RECORD_HEADER, batch_flags) == ts:
                memcpy(dst + pos, src + off - _RECORD_HEADER, 8)
            else:
                sec = ts // _NS_PER_S
                frac = ts % _NS_PER_S
                if sec > max_u32:
                    # Past 2106: the last second's fraction field takes the rest (what a
                    # non-canonical input record read this way had), if it fits.
                    sec = max_u32
                    frac = ts - sec * _NS_PER_S
                if not nano:
                    frac //= 1000
                if frac > max_u32:
                    bad = i
                    break
                _store32(dst + pos, <uint32_t>sec, big)
                _store32(dst + pos + 4, <uint32_t>frac, big)
            _store32(dst + pos + 8, caplen, big)
            _store32(dst + pos + 12, wire_lengths[i], big)
            if caplen:
                memcpy(dst + pos + _RECORD_HEADER, src + off, caplen)
            pos += _RECORD_HEADER + caplen
    if bad >= 0:
        raise TimestampError(bad, timestamps_ns[bad], nano)
    return pos, kept


def verbatim_span(const uint8_t[::1] buf, const uint64_t[::1] offsets,
                  const uint32_t[::1] lengths, const uint32_t[::1] wire_lengths,
                  const uint64_t[::1] timestamps_ns, const uint8_t[::1] verdicts,
                  int batch_flags, int out_flags, Py_ssize_t start=0, Py_ssize_t stop=-1):
    """(begin, end) when buf[begin:end] is exactly what build_records would write for packets
    start..stop-1, else None.

    That is when none of them is dropped (`verdicts` may be None), their records lie back to
    back in buf, and each header slot holds its record's header in the output encoding (same
    caplen, original length and timestamp as the arrays): a batch read from a pcap file and
    written in its own encoding, nothing dropped. The caller then writes that span of the input
    buffer as it is instead of building a copy. None for an empty range too.
    """
    cdef Py_ssize_t n = offsets.shape[0]
    cdef bint has_verdicts = verdicts is not None
    stop = _checked_range(n, lengths.shape[0], wire_lengths.shape[0], timestamps_ns.shape[0],
                          verdicts.shape[0] if has_verdicts else n, start, stop)
    if start == stop or batch_flags < 0 or batch_flags != out_flags:
        return None
    if offsets[start] < _RECORD_HEADER:
        return None
    cdef const uint8_t* src = &buf[0] if buf.shape[0] > 0 else NULL
    cdef uint64_t buf_len = <uint64_t>buf.shape[0]
    cdef bint big = (out_flags & _HDR_BIG_ENDIAN) != 0
    cdef uint64_t expected = offsets[start], off
    cdef const uint8_t* hdr
    cdef Py_ssize_t i
    cdef bint ok = True
    with nogil:
        for i in range(start, stop):
            off = offsets[i]
            if (off != expected or off > buf_len or lengths[i] > buf_len - off
                    or (has_verdicts and verdicts[i] >= _VERDICT_DROP)):
                ok = False
                break
            hdr = src + off - _RECORD_HEADER
            if (_load32(hdr + 8, big) != lengths[i] or _load32(hdr + 12, big) != wire_lengths[i]
                    or _decode_ts(hdr, out_flags) != timestamps_ns[i]):
                ok = False
                break
            expected = off + lengths[i] + _RECORD_HEADER
    if not ok:
        return None
    return offsets[start] - _RECORD_HEADER, offsets[stop - 1] + lengths[stop - 1]


cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    /* Allocate [offset, offset + length) of fd's file, its size unchanged; 0 or an errno. */
    static int fp_reserve_space(int fd, long long offset, long long length) {
    #if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE)
        return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : errno;
    #else
        (void)fd; (void)offset; (void)length;
        return EOPNOTSUPP;
    #endif
    }
    #define fp_load_flag(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    #define fp_store_flag(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    """
    int fp_reserve_space(int fd, long long offset, long long length) nogil
    int fp_load_flag(int* flag) nogil
    void fp_store_flag(int* flag, int value) nogil


cdef class SpaceReservation:
    """Allocates the space of an open file's first `size` bytes, `step` bytes at a time, on the
    thread that calls run(), until done, refused or cancelled. The file's size is unchanged
    (Linux's fallocate with FALLOC_FL_KEEP_SIZE; elsewhere nothing is reserved): writes later
    fill the reserved space, and truncating the file to its size releases what they did not.

    On tmpfs most of what a write costs is the kernel allocating the file's pages; reserved in
    advance, on a core with nothing else to do, the write only copies. A step at a time so that
    cancel() takes effect within one step (4 MiB: about a millisecond on tmpfs).
    """
    cdef int _fd
    cdef long long _size, _step, _reserved
    cdef int _cancelled, _error

    def __cinit__(self, int fd, long long size, long long step=4 << 20):
        if fd < 0 or size < 0 or step < 1:
            raise ValueError(f"bad reservation: fd {fd}, size {size}, step {step}")
        self._fd, self._size, self._step = fd, size, step

    def run(self) -> None:
        """Reserve, the GIL released, until the whole size is, cancel() is called or the file
        system refuses (`error` then holds the errno: no space, or no support)."""
        cdef long long offset = self._reserved, n
        cdef int error = 0
        with nogil:
            while offset < self._size and not fp_load_flag(&self._cancelled):
                n = min(self._step, self._size - offset)
                error = fp_reserve_space(self._fd, offset, n)
                if error != 0:
                    break
                offset += n
        self._reserved, self._error = offset, error

    def cancel(self) -> None:
        """Have run() stop after the step under way (from any thread)."""
        fp_store_flag(&self._cancelled, 1)

    @property
    def reserved(self) -> int:
        """Bytes reserved from the start of the file (once run() returned)."""
        return self._reserved

    @property
    def error(self) -> int:
        """The errno that stopped run(), 0 if none did."""
        return self._error


cdef extern from *:
    """
    #include <pthread.h>
    #include <time.h>
    #include <unistd.h>
    typedef struct {
        pthread_mutex_t lock;
        pthread_cond_t changed;
        long long next;         /* the item whose turn it is */
        int failed;             /* the run failed: no turn comes any more */
    } fp_turns;

    static void fp_turns_init(fp_turns* t) {
        pthread_mutex_init(&t->lock, NULL);
        pthread_cond_init(&t->changed, NULL);
        t->next = 0;
        t->failed = 0;
    }

    static void fp_turns_destroy(fp_turns* t) {
        pthread_cond_destroy(&t->changed);
        pthread_mutex_destroy(&t->lock);
    }

    /* Wait at most ms milliseconds for item index's turn: 1 when it came, 0 when the time ran
       out, -1 when the run failed first. */
    static int fp_turns_wait(fp_turns* t, long long index, int ms) {
        struct timespec until;
        int result = 0;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)ms * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&t->lock);
        while (!t->failed && t->next != index) {
            if (pthread_cond_timedwait(&t->changed, &t->lock, &until) == ETIMEDOUT) break;
        }
        result = t->failed ? -1 : (t->next == index ? 1 : 0);
        pthread_mutex_unlock(&t->lock);
        return result;
    }

    /* Pass the turn from item index to the next one; `failed`: end the run instead. */
    static void fp_turns_pass(fp_turns* t, long long index, int failed) {
        pthread_mutex_lock(&t->lock);
        if (failed) t->failed = 1;
        else if (t->next == index) t->next = index + 1;
        pthread_cond_broadcast(&t->changed);
        pthread_mutex_unlock(&t->lock);
    }

    /* Write all n bytes; 0 or an errno. */
    static int fp_write_all(int fd, const unsigned char* p, size_t n) {
        while (n > 0) {
            ssize_t done = write(fd, p, n);
            if (done < 0) {
                if (errno == EINTR) continue;
                return errno;
            }
            p += done;
            n -= (size_t)done;
        }
        return 0;
    }

    /* In item index's turn (waiting at most ms), write the n bytes and pass the turn on: 1 when
       written, 0 when the time ran out first, -1 when the run failed (*error: the write's errno,
       0 when an earlier failure ended the run). */
    static int fp_turns_write(fp_turns* t, long long index, int ms, int fd,
                              const unsigned char* p, size_t n, int* error) {
        int turn = fp_turns_wait(t, index, ms);
        *error = 0;
        if (turn <= 0) return turn;
        *error = fp_write_all(fd, p, n);
        fp_turns_pass(t, index, *error != 0);
        return *error ? -1 : 1;
    }
    """
    ctypedef struct fp_turns:
        pass
    void fp_turns_init(fp_turns* turns) nogil
    void fp_turns_destroy(fp_turns* turns) nogil
    int fp_turns_wait(fp_turns* turns, long long index, int ms) nogil
    void fp_turns_pass(fp_turns* turns, long long index, int failed) nogil
    int fp_turns_write(fp_turns* turns, long long index, int ms, int fd, const uint8_t* data,
                       size_t n, int* error) nogil


cdef enum:
    _TURN_WAIT_MS = 50  # a waiting thread looks at pending signals (Ctrl-C) this often


cdef class WriteTurns:
    """Writes of items 0, 1, 2... to one file from several threads, each in its turn: the write
    of item k waits, the GIL released, for item k-1's write to be done, then writes and passes
    the turn on, all before it takes the GIL again. So the turn goes from one thread's write to
    the next one's without either running Python (a replay's workers handing the write over
    through a Python condition waited about 40 us a chunk, mostly for the GIL).

    write() for an item written as one span; wait() and done() around an item written by other
    means (Python writes, flushed before done()). fail() ends the run: every waiter returns
    False, and no turn comes any more.
    """
    cdef fp_turns _turns

    def __cinit__(self):
        fp_turns_init(&self._turns)

    def __dealloc__(self):
        fp_turns_destroy(&self._turns)

    def write(self, long long index, int fd, const uint8_t[::1] data) -> bool:
        """Write all of `data` to `fd` in item index's turn, then pass the turn on: True, or
        False (nothing written) if the run failed first. A failed write fails the run and raises
        OSError."""
        cdef const uint8_t* start = &data[0] if data.shape[0] > 0 else NULL
        cdef size_t n = <size_t>data.shape[0]
        cdef int result, error = 0
        while True:
            with nogil:
                result = fp_turns_write(&self._turns, index, _TURN_WAIT_MS, fd, start, n, &error)
            if result != 0:
                break
            PyErr_CheckSignals()
        if error:
            raise OSError(error, os.strerror(error))
        return result > 0

    def wait(self, long long index) -> bool:
        """Wait for item index's turn (True) or the run's failure (False)."""
        cdef int result
        while True:
            with nogil:
                result = fp_turns_wait(&self._turns, index, _TURN_WAIT_MS)
            if result != 0:
                return result > 0
            PyErr_CheckSignals()

    def done(self, long long index) -> None:
        """Pass the turn from item `index` (whose writes are done) to the next one."""
        fp_turns_pass(&self._turns, index, 0)

    def fail(self) -> None:
        """End the run: waiting writes return False, and so do later ones."""
        fp_turns_pass(&self._turns, -1, 1)
