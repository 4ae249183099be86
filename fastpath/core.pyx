# cython: freethreading_compatible = False
"""The compiled dataplane core: Engine owns the maps and runs the per-packet loop without the GIL.

The behaviour is specified in fastpath/reference.py (the pure-Python twin); the two must agree
byte for byte. Policy never lives here: the maps arrive fully decided from fastpath.compiler.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from conntrack cimport (
    CT_NIL, DIR_ORIG, DIR_REPLY, STATE_CLOSING, STATE_ESTABLISHED, STATE_OTHER, STATE_SYN_SENT,
    Conntrack, CtEntry, ct_delete, ct_expired, ct_free, ct_init, ct_insert, ct_lookup, ct_touch,
)
from frontends cimport (
    FrontendMap, frontend_key, frontend_map_free, frontend_map_get, frontend_map_init,
    frontend_map_put,
)
from hashing cimport flow_hash, scale_hash
from nat cimport dnat, reverse_nat
from wire cimport (
    CT_ESTABLISHED, CT_REPLY, DROP_BAD_IP_HEADER, DROP_BAD_L4_HEADER, DROP_NO_BACKEND,
    DROP_TRUNCATED, IPPROTO_TCP, NEW_FLOW, PARSED, PASS_NO_SERVICE, PASS_NOT_IP, PASS_UNKNOWN_LINK,
    PASS_UNSUPPORTED, REASON_COUNT, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, VERDICT_COUNT, VERDICT_DNAT,
    VERDICT_DROP, VERDICT_PASS, VERDICT_REVNAT, Packet, parse_packet,
)

from fastpath.verdicts import Reason, Verdict

cdef extern from *:
    """
    #ifndef FASTPATH_DEBUG
    #define FASTPATH_DEBUG 0
    #endif
    """
    const int FASTPATH_DEBUG

# True when built with FASTPATH_DEBUG=1 (bounds checks on, no optimisation).
DEBUG_BUILD = bool(FASTPATH_DEBUG)

DEFAULT_CT_CAPACITY = 1 << 19
SECOND_NS = 1_000_000_000

# Conntrack timeouts per state (Cilium's defaults), in nanoseconds of packet time.
DEFAULT_TIMEOUTS_S = {"syn_sent": 60, "established": 8000, "closing": 10, "other": 60}


ctypedef struct FrontendEntry:
    uint32_t addr
    uint16_t port
    uint8_t proto
    uint32_t service


ctypedef struct ServiceEntry:
    uint32_t first_slot             # this service's backend ids are slots[first_slot, +count)
    uint32_t count


ctypedef struct BackendEntry:
    uint32_t addr
    uint16_t port


ctypedef struct Maps:
    FrontendMap frontend_map
    FrontendEntry* frontends
    ServiceEntry* services          # indexed by service id (0 unused)
    uint32_t* slots
    BackendEntry* backends          # indexed by backend id (0 unused)
    uint32_t n_services
    uint32_t n_backends


# The core's own numbering, exported so a test can check it against fastpath.verdicts.
REASON_NUMBERS = {
    "PASS_NOT_IP": PASS_NOT_IP, "PASS_NO_SERVICE": PASS_NO_SERVICE,
    "PASS_UNSUPPORTED": PASS_UNSUPPORTED, "PASS_UNKNOWN_LINK": PASS_UNKNOWN_LINK,
    "NEW_FLOW": NEW_FLOW, "CT_ESTABLISHED": CT_ESTABLISHED, "CT_REPLY": CT_REPLY,
    "DROP_NO_BACKEND": DROP_NO_BACKEND, "DROP_TRUNCATED": DROP_TRUNCATED,
    "DROP_BAD_IP_HEADER": DROP_BAD_IP_HEADER, "DROP_BAD_L4_HEADER": DROP_BAD_L4_HEADER,
}
VERDICT_NUMBERS = {"PASS": VERDICT_PASS, "DNAT": VERDICT_DNAT, "REVNAT": VERDICT_REVNAT,
                   "DROP": VERDICT_DROP}

cdef uint8_t VERDICT_OF[REASON_COUNT]
VERDICT_OF[PASS_NOT_IP] = VERDICT_PASS
VERDICT_OF[PASS_NO_SERVICE] = VERDICT_PASS
VERDICT_OF[PASS_UNSUPPORTED] = VERDICT_PASS
VERDICT_OF[PASS_UNKNOWN_LINK] = VERDICT_PASS
VERDICT_OF[NEW_FLOW] = VERDICT_DNAT
VERDICT_OF[CT_ESTABLISHED] = VERDICT_DNAT
VERDICT_OF[CT_REPLY] = VERDICT_REVNAT
VERDICT_OF[DROP_NO_BACKEND] = VERDICT_DROP
VERDICT_OF[DROP_TRUNCATED] = VERDICT_DROP
VERDICT_OF[DROP_BAD_IP_HEADER] = VERDICT_DROP
VERDICT_OF[DROP_BAD_L4_HEADER] = VERDICT_DROP


def verdict_of_reason(int reason):
    """The verdict the core gives a reason (for the vocabulary test)."""
    if not 0 <= reason < REASON_COUNT:
        raise ValueError(f"unknown reason {reason}")
    return VERDICT_OF[reason]


cdef void maps_free(Maps* m) noexcept nogil:
    frontend_map_free(&m.frontend_map)
    free(m.frontends)
    free(m.services)
    free(m.slots)
    free(m.backends)
    memset(m, 0, sizeof(Maps))


cdef inline uint8_t tcp_state_after(uint8_t state, uint8_t flags, uint32_t direction) noexcept nogil:
    if flags & (TCP_FIN | TCP_RST):
        return STATE_CLOSING
    if direction == DIR_REPLY and state == STATE_SYN_SENT:
        return STATE_ESTABLISHED
    return state


cdef inline uint8_t tcp_initial_state(uint8_t flags) noexcept nogil:
    if flags & (TCP_FIN | TCP_RST):
        return STATE_CLOSING
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
        return STATE_SYN_SENT
    return STATE_ESTABLISHED


cdef class Engine:
    """The compiled dataplane. See fastpath.reference for the specification of every method."""

    cdef Maps maps
    cdef Conntrack ct
    cdef uint64_t verdict_packets[VERDICT_COUNT]
    cdef uint64_t reason_packets[REASON_COUNT]
    cdef uint64_t* service_packets     # indexed by service id
    cdef uint64_t* backend_packets     # indexed by backend id
    cdef uint32_t counter_services
    cdef uint32_t counter_backends

    def __cinit__(self, maps, ct_capacity=DEFAULT_CT_CAPACITY, timeouts_s=None):
        if not isinstance(ct_capacity, int) or not 1 <= ct_capacity <= 0x7FFFFFFF:
            raise ValueError(f"ct_capacity must be an integer from 1 to 2**31-1, got {ct_capacity!r}")
        if ct_init(&self.ct, ct_capacity) != 0:
            raise MemoryError(f"cannot allocate a conntrack table of {ct_capacity} entries")
        timeouts = dict(DEFAULT_TIMEOUTS_S)
        timeouts.update(timeouts_s or {})
        self.ct.timeout_ns[STATE_SYN_SENT] = int(timeouts["syn_sent"] * SECOND_NS)
        self.ct.timeout_ns[STATE_ESTABLISHED] = int(timeouts["established"] * SECOND_NS)
        self.ct.timeout_ns[STATE_CLOSING] = int(timeouts["closing"] * SECOND_NS)
        self.ct.timeout_ns[STATE_OTHER] = int(timeouts["other"] * SECOND_NS)
        self.load(maps)

    def __dealloc__(self):
        maps_free(&self.maps)
        ct_free(&self.ct)
        free(self.service_packets)
        free(self.backend_packets)

    @property
    def ct_capacity(self):
        return self.ct.capacity

    def load(self, maps):
        """Replace frontends, services and backends (between batches); conntrack is kept."""
        cdef Maps m
        memset(&m, 0, sizeof(Maps))
        cdef uint32_t n_services = len(maps.services), n_backends = len(maps.backends)
        cdef uint32_t n_frontends = len(maps.frontends)
        cdef uint32_t n_slots = sum(len(s.backends) for s in maps.services)
        cdef uint32_t i, slot = 0
        try:
            if frontend_map_init(&m.frontend_map, n_frontends) != 0:
                raise MemoryError("cannot allocate the frontend map")
            m.frontends = <FrontendEntry*>calloc(n_frontends + 1, sizeof(FrontendEntry))
            m.services = <ServiceEntry*>calloc(n_services + 1, sizeof(ServiceEntry))
            m.slots = <uint32_t*>calloc(n_slots + 1, sizeof(uint32_t))
            m.backends = <BackendEntry*>calloc(n_backends + 1, sizeof(BackendEntry))
            if not (m.frontends and m.services and m.slots and m.backends):
                raise MemoryError("cannot allocate the service maps")
            m.n_services = n_services
            m.n_backends = n_backends
            for backend in maps.backends:
                m.backends[backend.id].addr = backend.ip
                m.backends[backend.id].port = backend.port
            for service in maps.services:
                m.services[service.id].first_slot = slot
                m.services[service.id].count = len(service.backends)
                for backend_id in service.backends:
                    m.slots[slot] = backend_id
                    slot += 1
            for i, frontend in enumerate(maps.frontends):
                m.frontends[i].addr = frontend.ip
                m.frontends[i].port = frontend.port
                m.frontends[i].proto = frontend.proto
                m.frontends[i].service = frontend.service
                if not frontend_map_put(&m.frontend_map,
                                        frontend_key(frontend.ip, frontend.port, frontend.proto), i):
                    raise ValueError(f"duplicate frontend {frontend}")
        except BaseException:
            maps_free(&m)
            raise
        self._resize_counters(n_services, n_backends)
        maps_free(&self.maps)
        self.maps = m

    cdef _resize_counters(self, uint32_t n_services, uint32_t n_backends):
        # Ids are stable across recompiles of the same objects, so counts carry over by id.
        self.service_packets = _resized(self.service_packets, self.counter_services, n_services)
        self.counter_services = n_services
        self.backend_packets = _resized(self.backend_packets, self.counter_backends, n_backends)
        self.counter_backends = n_backends

    def process(self, unsigned char[::1] buf not None, const uint64_t[::1] offsets not None,
                const uint32_t[::1] lengths not None, const uint64_t[::1] timestamps_ns not None,
                uint8_t[::1] verdicts not None, uint8_t[::1] reasons not None, int linktype=1):
        """Run one batch: packet i is buf[offsets[i]:offsets[i]+lengths[i]], rewritten in place."""
        cdef Py_ssize_t n = offsets.shape[0], i
        if lengths.shape[0] < n or timestamps_ns.shape[0] < n or verdicts.shape[0] < n \
                or reasons.shape[0] < n:
            raise ValueError("lengths, timestamps_ns, verdicts and reasons need one slot per offset")
        cdef uint64_t size = buf.shape[0]
        cdef uint8_t* base = &buf[0] if size else NULL
        cdef Py_ssize_t bad = -1
        cdef uint8_t reason
        with nogil:
            for i in range(n):
                if offsets[i] > size or lengths[i] > size - offsets[i]:
                    bad = i
                    break
            if bad < 0:
                for i in range(n):
                    reason = self._packet(base + offsets[i], lengths[i], timestamps_ns[i], linktype)
                    reasons[i] = reason
                    verdicts[i] = VERDICT_OF[reason]
                    self.reason_packets[reason] += 1
                    self.verdict_packets[VERDICT_OF[reason]] += 1
        if bad >= 0:
            raise ValueError(f"packet {bad} lies outside the buffer "
                             f"(offset {offsets[bad]}, length {lengths[bad]}, buffer {size})")

    cdef inline uint8_t _packet(self, uint8_t* data, uint32_t caplen, uint64_t now,
                                int linktype) noexcept nogil:
        cdef Packet pkt
        cdef int parsed = parse_packet(data, caplen, linktype, &pkt)
        if parsed != PARSED:
            return <uint8_t>parsed
        cdef uint64_t hash = flow_hash(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto)
        cdef uint32_t ref = ct_lookup(&self.ct, hash, pkt.saddr, pkt.daddr, pkt.sport, pkt.dport,
                                      pkt.proto)
        cdef CtEntry* e
        if ref != CT_NIL:
            e = &self.ct.entries[ref >> 1]
            if ct_expired(&self.ct, e, now):
                self.ct.stats.expired += 1
                ct_delete(&self.ct, ref >> 1)
            elif (ref & 1) == DIR_ORIG and pkt.proto == IPPROTO_TCP and e.state == STATE_CLOSING \
                    and pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
                self.ct.stats.reopened += 1
                ct_delete(&self.ct, ref >> 1)
            else:
                return self._tracked(&pkt, e, ref, now)
        return self._new_flow(&pkt, hash, now)

    cdef inline uint8_t _tracked(self, Packet* pkt, CtEntry* e, uint32_t ref,
                                 uint64_t now) noexcept nogil:
        if now > e.last_seen_ns:
            e.last_seen_ns = now
        ct_touch(&self.ct, ref >> 1)
        if pkt.proto == IPPROTO_TCP:
            e.state = tcp_state_after(e.state, pkt.tcp_flags, ref & 1)
        self._count(e.service, e.backend)
        if (ref & 1) == DIR_ORIG:
            dnat(pkt, e.backend_addr, e.backend_port)
            return CT_ESTABLISHED
        reverse_nat(pkt, e.frontend_addr, e.frontend_port)
        return CT_REPLY

    cdef inline uint8_t _new_flow(self, Packet* pkt, uint64_t hash, uint64_t now) noexcept nogil:
        cdef int64_t index = frontend_map_get(&self.maps.frontend_map,
                                              frontend_key(pkt.daddr, pkt.dport, pkt.proto))
        if index < 0:
            return PASS_NO_SERVICE
        cdef uint32_t service_id = self.maps.frontends[index].service
        cdef ServiceEntry* service = &self.maps.services[service_id]
        if service.count == 0:
            self._count(service_id, 0)
            return DROP_NO_BACKEND
        cdef uint32_t backend_id = self.maps.slots[service.first_slot + scale_hash(hash, service.count)]
        cdef BackendEntry* backend = &self.maps.backends[backend_id]
        cdef CtEntry flow
        flow.client_addr = pkt.saddr
        flow.frontend_addr = pkt.daddr
        flow.backend_addr = backend.addr
        flow.client_port = pkt.sport
        flow.frontend_port = pkt.dport
        flow.backend_port = backend.port
        flow.proto = pkt.proto
        flow.service = service_id
        flow.backend = backend_id
        flow.last_seen_ns = now
        if pkt.proto == IPPROTO_TCP:
            if pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
                self.ct.stats.non_syn_miss += 1
            flow.state = tcp_initial_state(pkt.tcp_flags)
        else:
            flow.state = STATE_OTHER
        ct_insert(&self.ct, &flow)
        self._count(service_id, backend_id)
        dnat(pkt, backend.addr, backend.port)
        return NEW_FLOW

    cdef inline void _count(self, uint32_t service_id, uint32_t backend_id) noexcept nogil:
        if service_id <= self.counter_services:
            self.service_packets[service_id] += 1
        if backend_id and backend_id <= self.counter_backends:
            self.backend_packets[backend_id] += 1

    def process_packet(self, data, uint64_t ts_ns=0, int linktype=1):
        """One packet in, (Verdict, Reason, bytes after the rewrite) out."""
        from array import array
        buf = bytearray(data)
        verdicts = array("B", [0])
        reasons = array("B", [0])
        self.process(buf, array("Q", [0]), array("I", [len(buf)]), array("Q", [ts_ns]),
                     verdicts, reasons, linktype)
        return Verdict(verdicts[0]), Reason(reasons[0]), bytes(buf)

    def counters(self):
        """Counts since the engine was made (see fastpath.reference for the shape)."""
        s = self.ct.stats
        return {
            "verdicts": {v.name: self.verdict_packets[v] for v in Verdict},
            "reasons": {r.name: self.reason_packets[r] for r in Reason},
            "services": [self.service_packets[i] for i in range(1, self.maps.n_services + 1)],
            "backends": [self.backend_packets[i] for i in range(1, self.maps.n_backends + 1)],
            "conntrack": {
                "inserts": s.inserts, "evictions": s.evictions, "expired": s.expired,
                "reopened": s.reopened, "non_syn_miss": s.non_syn_miss,
                "insert_failures": s.insert_failures, "entries": self.ct.count,
            },
        }


cdef uint64_t* _resized(uint64_t* counts, uint32_t old_n, uint32_t new_n) except? NULL:
    """A counter array for ids 0..new_n keeping the counts of ids both arrays have."""
    cdef uint64_t* resized = <uint64_t*>calloc(<size_t>new_n + 1, sizeof(uint64_t))
    if resized == NULL:
        raise MemoryError("cannot allocate counters")
    cdef uint32_t i
    if counts != NULL:
        for i in range(min(old_n, new_n) + 1):
            resized[i] = counts[i]
        free(counts)
    return resized
