# cython: freethreading_compatible = False
"""The compiled dataplane core: Engine owns the maps and runs the per-packet loop without the GIL.

The behaviour is specified in fastpath/reference.py (the pure-Python twin); the two must agree
byte for byte. Policy never lives here: the maps arrive fully decided from fastpath.compiler.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from array import array
from copy import copy

from aligned cimport PREALLOCATED, WRITTEN_WHOLE, table_calloc, table_free, table_realloc
from address cimport Addr, Prefix, addr_eq, addr_v4, fold6, in_prefixes, load_addr6
from affinity cimport (
    AFF_NIL, Affinity, affinity_delete, affinity_find, affinity_free, affinity_init,
    affinity_record, affinity_remap,
)
from conntrack cimport (
    CT_NIL, DIR_ORIG, DIR_REPLY, FLAG_IPV6, FLAG_MASQUERADED, STATE_CLOSING, STATE_ESTABLISHED,
    STATE_OTHER, STATE_SYN_SENT, TRACE_FLAGS, Conntrack, CtAddrs6, CtEntry,
    ct_count_packet, ct_count_pending, ct_delete, ct_enable_ipv6, ct_expired, ct_free,
    ct_guard_allows, ct_guard_init, ct_init, ct_insert, ct_direction, ct_head, ct_layout_ok,
    ct_lookup, ct_next_in_use, ct_slot, ct_touch, ct_tuple_present,
)
from frontends cimport (
    FrontendKey, FrontendMap, FrontendSlot, frontend_key, frontend_map_free, frontend_map_get,
    frontend_map_init, frontend_map_put, frontend_slot,
)
from fragments cimport (
    FRAG_NIL, FragEntry, Fragments, fragments_find, fragments_free, fragments_init,
    fragments_record,
)
from hashing cimport bucket_hash, flow_hash, scale_hash
from ids cimport int_or_zero
from lru cimport LRU_NIL, lru_touch
from nat cimport (
    rewrite_addresses, rewrite_addresses6, translate, translate6, translate_icmp6_error,
    translate_icmp_error,
)
from prefetch cimport prefetch, prefetch_item
from slots cimport fill_slot, new_empty, offset_of, slot_or_attribute
from wire cimport (
    CT_ESTABLISHED, CT_REPLY, DROP_BAD_IP_HEADER, DROP_FLOW_RATE, DROP_UNALLOCATED_SERVICE_IP, DROP_BAD_L4_HEADER, DROP_FRAG_NOT_FOUND,
    DROP_NO_LOCAL_ENDPOINT, DROP_SOURCE_RANGE, DROP_TRUNCATED, ETH_P_IP, ETH_P_IPV6, FRAG_DNAT,
    FRAG_DROP, FRAG_REVNAT, ICMP_ERROR_FORWARD, ICMP_ERROR_REPLY, IPPROTO_TCP, IPPROTO_UDP,
    LINKTYPE_ETHERNET, NEW_FLOW, PARSED, PARSED_FRAGMENT, PARSED_ICMP_ERROR, PASS_FRAGMENT, PASS_NO_SERVICE,
    PASS_NOT_IP, PASS_UNKNOWN_LINK, PASS_UNSUPPORTED, REASON_COUNT, REJECT_NO_ENDPOINT,
    REJECT_UNKNOWN_PORT, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, VERDICT_COUNT, VERDICT_DNAT,
    VERDICT_DROP, VERDICT_PASS, VERDICT_REJECT, VERDICT_REVNAT, Packet, l3_protocol_of_link,
    load16, load32, packet_dst, packet_src, parse_ipv4, parse_ipv6, parse_ports, parse_quoted,
)

from fastpath.gcpause import collection_paused
from fastpath.maps import FRONTEND_KINDS, IPV6, Backend, Frontend, check_service_update
from fastpath.maps import Service as MapService
from fastpath.verdicts import Reason, Verdict

cdef extern from "crc32c.h":
    void fp_crc32c_init() nogil

fp_crc32c_init()
if not ct_layout_ok():
    raise ImportError("fastpath._core: this C compiler laid out a conntrack entry's fields in an "
                      "order the core does not read them in")

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

# Conntrack timeouts per state (Cilium's defaults), in seconds of packet time.
DEFAULT_TIMEOUTS_S = {"syn_sent": 60, "established": 8000, "closing": 10, "other": 60}
# The new-flow rate guard counts in nanoseconds: at most one evicting insert per nanosecond.
MAX_NEW_FLOW_RATE = SECOND_NS


cdef enum:
    KIND_CLUSTER_IP = 1             # frontend kind + 1, as in the trace flags
    # The pipeline of Engine.process, in packets ahead of the one processed: headers fetched
    # HEADER_AHEAD ahead, packets parsed (and their conntrack bucket fetched) PARSE_AHEAD ahead,
    # the bucket's first entry fetched ENTRY_AHEAD ahead. RING holds the parsed packets between.
    # (Headers 16 ahead made the standard batch 1.04x as slow, 48 ahead 1.015x, on the EPYC
    # measured; the other two, at 12 and 6, changed nothing.)
    HEADER_AHEAD = 24
    PARSE_AHEAD = 8
    ENTRY_AHEAD = 4
    # With more conntrack entries in use than a core's L2 holds, those fetches go further out
    # (1,000,000 flows: to memory): the stages are four times as far apart, and a fourth one
    # fetches the second entry of the bucket's chain when the first is another flow's (a third
    # of the lookups in a full table). Not for smaller tables: the extra stage costs a cached
    # one 10-15 %, and at 20,000 flows (1.3 MB) the two pipelines are even. (Half these
    # distances made 1,000,000 flows 10 % slower on the EPYC measured, 25 ns a cached packet.)
    FAR_HEADER_AHEAD = 64
    FAR_PARSE_AHEAD = 32
    FAR_ENTRY_AHEAD = 16
    FAR_NEXT_AHEAD = 8
    FAR_CONNTRACK_BYTES = 2 * 1024 * 1024
    # With a frontend map beyond the caches (over 32,768 frontends), a new flow's lookups
    # are a chain of misses: frontend map slot, frontend, service, the backend's slot. A packet
    # likely to open a flow (a TCP SYN, or a tuple whose conntrack bucket is empty) has each
    # link fetched a stage ahead (its frontend's slot once its bucket is in), the whole
    # pipeline deeper to make room. Packets of tracked flows pay a few tests per stage.
    FAR_MAPS_BYTES = 2 * 1024 * 1024
    MAPS_HEADER_AHEAD = 32
    MAPS_PARSE_AHEAD = 24
    MAPS_ENTRY_AHEAD = 16           # and the frontend map slot of a likely new flow
    FRONTEND_AHEAD = 12
    SERVICE_AHEAD = 8
    BACKEND_SLOT_AHEAD = 4
    RING = 64
    RING_MASK = RING - 1
    SNAT_TRIES = 64
    CACHED_COUNTER_BYTES = 256 * 1024   # per-service and per-backend counters up to this stay
                                        # in a core's L2 cache (512 KiB on the machine measured)
    COUNT_LATER = 8                     # far counters: a packet's are added this many later
    COUNT_LATER_MASK = COUNT_LATER - 1


ctypedef struct LaterCounts:         # Engine.process: service and backend counts not yet added
    uint32_t services[COUNT_LATER]
    uint32_t backends[COUNT_LATER]


ctypedef struct FrontendEntry:
    Addr addr
    uint16_t port
    uint8_t proto
    uint8_t kind                    # KIND_* (FRONTEND_KINDS index + 1)
    uint8_t local_policy
    uint32_t service
    uint32_t first_range            # loadBalancerSourceRanges: ranges[first_range, +n_ranges)
    uint32_t n_ranges


ctypedef struct ServiceEntry:
    uint32_t first_cluster          # slots[first_cluster, +n_cluster): the cluster set
    uint32_t n_cluster
    uint32_t first_local            # slots[first_local, +n_local): the local set
    uint32_t n_local
    uint64_t affinity_timeout_ns    # 0: no session affinity


ctypedef struct ServiceBlock:       # beside ServiceEntry: what only updates and stale flows use
    uint32_t size                   # slots[first_cluster, +size) belong to the service
    uint32_t first_member           # slots[first_member, +member_mask + 1): the backend ids of
    uint32_t member_mask            # any set, open addressing (0: empty), for stale UDP flows


ctypedef struct BackendEntry:
    Addr addr
    uint32_t addr32                 # what conntrack stores: the IPv4 address, or fold6()
    uint16_t port


ctypedef struct Maps:
    FrontendMap frontend_map
    FrontendEntry* frontends
    Prefix* ranges
    ServiceEntry* services          # indexed by service id (0 unused)
    uint32_t* slots                 # every service's block; slots[0] stays 0 (service 0's table)
    BackendEntry* backends          # indexed by backend id (0 unused)
    uint32_t n_services
    uint32_t n_backends
    # Per service id: may a tracked UDP flow of it have a backend that is no member any more?
    # (set when the service loses a member; only then does a tracked UDP packet check it)
    uint8_t* may_flush
    # The node view
    uint32_t primary_ip             # IPv4 masquerade address (0: none)
    Addr primary_ip6                # IPv6 masquerade address,
    bint has_primary_ip6            # when there is one
    Addr* local_ips
    uint32_t n_local_ips
    Prefix* pod_cidrs
    uint32_t n_pod_cidrs
    Prefix* service_cidrs           # ServiceCIDRs: unallocated addresses in them are dropped
    uint32_t n_service_cidrs
    bint pod_cidrs_v4               # pod_cidrs has a prefix of that family
    bint pod_cidrs_v6
    bint masquerade_all
    FrontendMap service_ips         # ClusterIPs, keyed frontend_key(ip, 0, 0)
    FrontendMap frontend_ips        # every frontend address and ClusterIP, same keys
    bint address_first              # a new flow looks its address up there first (see _new_flow)
    bint any_affinity
    bint any_ipv6
    # What only update_service and stale UDP flows use (after the fields every packet reads)
    ServiceBlock* blocks            # indexed by service id (0: no members at all)
    uint32_t n_slots                # in use, garbage included
    uint32_t slots_capacity
    uint32_t garbage_slots          # blocks update_service moved away from (reclaimed by compaction)
    uint32_t backends_capacity      # backends (and the per-backend counters) hold ids 0..capacity


ctypedef struct Parsed:             # a packet parsed ahead of its processing
    Packet pkt
    uint32_t* head                  # a flow's only: ct_head() of its tuple's bucket_hash
    uint8_t ip_status               # parse_ipv4/6: PARSED, PARSED_FRAGMENT or a reason
    uint8_t l4_status               # parse_ports, when ip_status is PARSED
    bint likely_new                 # far maps: its frontend map slot was asked for,
    uint32_t frontend               # and the frontend found there (index + 1; 0: none)


ctypedef struct Outputs:            # Engine.process's per-packet output arrays
    uint8_t* verdicts
    uint8_t* reasons
    uint32_t* services              # the trace: all three or none (NULL)
    uint32_t* backends
    uint8_t* flags


ctypedef struct TraceOut:           # what one packet's trace records
    uint32_t service
    uint32_t backend
    uint8_t flags
    bint counted                    # counted in its conntrack entry already (ct_count_packet)


# The core's own numbering, exported so a test can check it against fastpath.verdicts.
REASON_NUMBERS = {
    "PASS_NOT_IP": PASS_NOT_IP, "PASS_NO_SERVICE": PASS_NO_SERVICE,
    "PASS_UNSUPPORTED": PASS_UNSUPPORTED, "PASS_UNKNOWN_LINK": PASS_UNKNOWN_LINK,
    "NEW_FLOW": NEW_FLOW, "CT_ESTABLISHED": CT_ESTABLISHED, "CT_REPLY": CT_REPLY,
    "DROP_NO_LOCAL_ENDPOINT": DROP_NO_LOCAL_ENDPOINT, "DROP_TRUNCATED": DROP_TRUNCATED,
    "DROP_BAD_IP_HEADER": DROP_BAD_IP_HEADER, "DROP_BAD_L4_HEADER": DROP_BAD_L4_HEADER,
    "REJECT_NO_ENDPOINT": REJECT_NO_ENDPOINT, "REJECT_UNKNOWN_PORT": REJECT_UNKNOWN_PORT,
    "DROP_SOURCE_RANGE": DROP_SOURCE_RANGE, "ICMP_ERROR_FORWARD": ICMP_ERROR_FORWARD,
    "ICMP_ERROR_REPLY": ICMP_ERROR_REPLY, "FRAG_DNAT": FRAG_DNAT, "FRAG_REVNAT": FRAG_REVNAT,
    "FRAG_DROP": FRAG_DROP, "DROP_FRAG_NOT_FOUND": DROP_FRAG_NOT_FOUND,
    "PASS_FRAGMENT": PASS_FRAGMENT, "DROP_FLOW_RATE": DROP_FLOW_RATE,
    "DROP_UNALLOCATED_SERVICE_IP": DROP_UNALLOCATED_SERVICE_IP,
}
VERDICT_NUMBERS = {"PASS": VERDICT_PASS, "DNAT": VERDICT_DNAT, "REVNAT": VERDICT_REVNAT,
                   "DROP": VERDICT_DROP, "REJECT": VERDICT_REJECT}

cdef uint8_t VERDICT_OF[REASON_COUNT]
VERDICT_OF[PASS_NOT_IP] = VERDICT_PASS
VERDICT_OF[PASS_NO_SERVICE] = VERDICT_PASS
VERDICT_OF[PASS_UNSUPPORTED] = VERDICT_PASS
VERDICT_OF[PASS_UNKNOWN_LINK] = VERDICT_PASS
VERDICT_OF[NEW_FLOW] = VERDICT_DNAT
VERDICT_OF[CT_ESTABLISHED] = VERDICT_DNAT
VERDICT_OF[CT_REPLY] = VERDICT_REVNAT
VERDICT_OF[DROP_NO_LOCAL_ENDPOINT] = VERDICT_DROP
VERDICT_OF[DROP_TRUNCATED] = VERDICT_DROP
VERDICT_OF[DROP_BAD_IP_HEADER] = VERDICT_DROP
VERDICT_OF[DROP_BAD_L4_HEADER] = VERDICT_DROP
VERDICT_OF[REJECT_NO_ENDPOINT] = VERDICT_REJECT
VERDICT_OF[REJECT_UNKNOWN_PORT] = VERDICT_REJECT
VERDICT_OF[DROP_SOURCE_RANGE] = VERDICT_DROP
VERDICT_OF[ICMP_ERROR_FORWARD] = VERDICT_DNAT
VERDICT_OF[ICMP_ERROR_REPLY] = VERDICT_REVNAT
VERDICT_OF[FRAG_DNAT] = VERDICT_DNAT
VERDICT_OF[FRAG_REVNAT] = VERDICT_REVNAT
VERDICT_OF[FRAG_DROP] = VERDICT_DROP
VERDICT_OF[DROP_FRAG_NOT_FOUND] = VERDICT_DROP
VERDICT_OF[PASS_FRAGMENT] = VERDICT_PASS
VERDICT_OF[DROP_FLOW_RATE] = VERDICT_DROP
VERDICT_OF[DROP_UNALLOCATED_SERVICE_IP] = VERDICT_DROP


def verdict_of_reason(int reason):
    """The verdict the core gives a reason (for the vocabulary test)."""
    if not 0 <= reason < REASON_COUNT:
        raise ValueError(f"unknown reason {reason}")
    return VERDICT_OF[reason]


cdef void maps_free(Maps* m) noexcept nogil:
    frontend_map_free(&m.frontend_map)
    frontend_map_free(&m.service_ips)
    frontend_map_free(&m.frontend_ips)
    table_free(m.frontends)
    table_free(m.ranges)
    table_free(m.services)
    table_free(m.blocks)
    table_free(m.may_flush)
    table_free(m.slots)
    table_free(m.backends)
    table_free(m.local_ips)
    table_free(m.pod_cidrs)
    table_free(m.service_cidrs)
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


cdef inline uint16_t next_snat_port(uint16_t port) noexcept nogil:
    # Walk the unprivileged range and wrap inside it; privileged ports just count up.
    if port >= 1024:
        return <uint16_t>(1024 + (port - 1024 + 1) % 64512)
    return port + 1


cdef inline bint is_member(const Maps* m, uint32_t service_id, uint32_t backend_id) noexcept nogil:
    """Is the backend in one of the service's sets? (Its member table always has a free slot.)"""
    cdef const ServiceBlock* block = &m.blocks[service_id]
    cdef uint32_t i = member_hash(backend_id) & block.member_mask, found
    while True:
        found = m.slots[block.first_member + i]
        if found == 0:
            return False
        if found == backend_id:
            return True
        i = (i + 1) & block.member_mask


cdef inline uint32_t member_hash(uint32_t backend_id) noexcept nogil:
    cdef uint32_t x = backend_id * <uint32_t>0x9E3779B1
    return x ^ (x >> 16)


_ALL128 = (1 << 128) - 1
_V4_MAPPED = 0xFFFF << 32


cdef Addr _addr(address) except *:
    """A map address (fastpath.maps: IPv4 int, or IPV6 | 128-bit value) as an Addr."""
    cdef Addr a
    if address >= IPV6:
        a.hi = (address >> 64) & 0xFFFFFFFFFFFFFFFF
        a.lo = address & 0xFFFFFFFFFFFFFFFF
        return a
    return addr_v4(address)


cdef Prefix _prefix(network, length) except *:
    cdef Prefix p
    bits = 128 if network >= IPV6 else 32
    if not 0 <= length <= bits:
        raise ValueError(f"prefix length {length} out of range")
    # An IPv4 prefix becomes one inside ::ffff:0:0/96, so it never holds an IPv6 address.
    value = (network & _ALL128) if network >= IPV6 else (_V4_MAPPED | network)
    length += 128 - bits
    mask = _ALL128 ^ ((1 << (128 - length)) - 1)
    p.mask = _addr(IPV6 | mask)
    p.network = _addr(IPV6 | (value & mask))
    p.ipv4 = network < IPV6
    return p


cdef inline FrontendKey _frontend_key_of(const Packet* pkt) noexcept nogil:
    """The frontend map key of a packet's destination: the one _new_flow looks up, so the
    stages that fetch it ahead fetch the same slot."""
    cdef Addr dst = packet_dst(pkt)
    return frontend_key(&dst, pkt.dport, pkt.proto)


cdef inline uint64_t _selection_hash(const Packet* pkt) noexcept nogil:
    """flow_hash of a packet's tuple, which picks a new flow's backend (the conntrack index
    hashes with bucket_hash): for _new_flow, and the stage that fetches its slot ahead."""
    return flow_hash(pkt.saddr, pkt.daddr, pkt.sport, pkt.dport, pkt.proto)


cdef inline uint32_t _first_ref(const Parsed* p) noexcept nogil:
    """The first ref in a parsed packet's conntrack bucket; CT_NIL for an empty bucket or a
    packet that has no flow tuple (its bucket was never looked up)."""
    if p.ip_status == PARSED and p.l4_status == PARSED:
        return p.head[0]
    return CT_NIL


cdef int _parse_network(uint8_t* data, uint32_t caplen, int linktype, Packet* pkt) noexcept nogil:
    """The network layer of a packet on any link: PARSED, PARSED_FRAGMENT or a reason."""
    cdef uint32_t l3_offset = 0
    cdef int status = l3_protocol_of_link(data, caplen, linktype, &l3_offset)
    if status < 0:
        return -status
    if status == ETH_P_IP:
        return parse_ipv4(data + l3_offset, caplen - l3_offset, pkt)
    if status == ETH_P_IPV6:
        return parse_ipv6(data + l3_offset, caplen - l3_offset, pkt)
    return PASS_NOT_IP


# Engine._parse calls it through a pointer, which the C compiler cannot inline: inlined, its
# link types and IPv6 headers need registers that every packet then saves and restores
# (_parse's five pushes and pops a packet became two; paired cold 0.987).
cdef int (*parse_network)(uint8_t*, uint32_t, int, Packet*) noexcept nogil
parse_network = _parse_network


cdef class Engine:
    """The compiled dataplane. See fastpath.reference for the specification of every method."""

    cdef Maps maps
    cdef object py_maps                # the fastpath.maps.Maps loaded, for remapping on load()
    cdef Conntrack ct
    cdef Affinity affinity
    cdef Fragments fragments
    cdef uint64_t reason_packets[REASON_COUNT]   # (a verdict's count: its reasons' sum)
    cdef uint64_t* service_packets     # indexed by service id
    cdef uint64_t* backend_packets     # indexed by backend id

    def __cinit__(self, maps, ct_capacity=DEFAULT_CT_CAPACITY, timeouts_s=None, new_flow_rate=0):
        if not isinstance(ct_capacity, int) or not 1 <= ct_capacity <= 0x7FFFFFFF:
            raise ValueError(f"ct_capacity must be an integer from 1 to 2**31-1, got {ct_capacity!r}")
        if not isinstance(new_flow_rate, int) or not 0 <= new_flow_rate <= MAX_NEW_FLOW_RATE:
            raise ValueError(f"new_flow_rate must be an integer from 0 (off) to {MAX_NEW_FLOW_RATE}, "
                             f"got {new_flow_rate!r}")
        if ct_init(&self.ct, ct_capacity) != 0:
            raise MemoryError(f"cannot allocate a conntrack table of {ct_capacity:,} entries "
                              f"({ct_capacity * sizeof(CtEntry) / 2**30:.1f} GiB)")
        if fragments_init(&self.fragments) != 0:
            raise MemoryError("cannot allocate the fragment table")
        timeouts = dict(DEFAULT_TIMEOUTS_S)
        timeouts.update(timeouts_s or {})
        self.ct.timeout_ns[STATE_SYN_SENT] = int(timeouts["syn_sent"] * SECOND_NS)
        self.ct.timeout_ns[STATE_ESTABLISHED] = int(timeouts["established"] * SECOND_NS)
        self.ct.timeout_ns[STATE_CLOSING] = int(timeouts["closing"] * SECOND_NS)
        self.ct.timeout_ns[STATE_OTHER] = int(timeouts["other"] * SECOND_NS)
        ct_guard_init(&self.ct, new_flow_rate)
        self.load(maps)

    def __dealloc__(self):
        maps_free(&self.maps)
        ct_free(&self.ct)
        affinity_free(&self.affinity)
        fragments_free(&self.fragments)
        table_free(self.service_packets)
        table_free(self.backend_packets)

    @property
    def ct_capacity(self):
        return self.ct.capacity

    # -- maps ----------------------------------------------------------------------------------

    def load(self, maps):
        """Replace the maps between batches. Tracked flows, affinity and counters follow the new
        ids (matched by service name and backend address); a UDP flow whose backend is no member
        of its service any more is forgotten by its next packet."""
        with collection_paused():  # (a big cluster's frozensets and tuples: no cycles among them)
            self._load(maps)

    cdef _load(self, maps):
        cdef Maps m
        cdef uint32_t[::1] new_service_ids, new_backend_ids
        memset(&m, 0, sizeof(Maps))
        try:
            _build_maps(&m, maps)
            if m.any_affinity and self.affinity.entries == NULL:
                if affinity_init(&self.affinity, self.ct.capacity) != 0:
                    raise MemoryError("cannot allocate the session affinity table")
            if m.any_ipv6 and ct_enable_ipv6(&self.ct) != 0:
                raise MemoryError("cannot allocate the IPv6 conntrack addresses")
        except BaseException:
            maps_free(&m)
            raise
        service_ids, backend_ids = _id_mapping(self.py_maps, maps)
        self._remap_counters(service_ids, backend_ids, len(maps.services), len(maps.backends))
        if self.py_maps is not None:
            # (never empty: id 0 is always there)
            new_service_ids, new_backend_ids = array("I", service_ids), array("I", backend_ids)
            self._remap_state(new_service_ids, new_backend_ids)
            _inherit_may_flush(&m, &self.maps, &new_service_ids[0], &new_backend_ids[0])
        maps_free(&self.maps)
        self.maps = m
        # The engine's own lists: update_service() changes them, never the caller's maps.
        self.py_maps = copy(maps)
        self.py_maps.services = list(maps.services)
        self.py_maps.backends = list(maps.backends)

    def update_service(self, service, new_backends=()):
        """Replace one service's backend sets in place between batches, appending new backends;
        no id changes (see "update_service" in fastpath.reference)."""
        new_backends = tuple(new_backends)
        check_service_update(self.py_maps, service, new_backends)
        cdef Maps* m = &self.maps
        cdef uint32_t service_id = service.id
        cdef uint32_t n_backends = m.n_backends + len(new_backends)
        cdef uint32_t needed = _block_size(service)
        cdef ServiceBlock* block = &m.blocks[service_id]
        # Everything that can fail first: a MemoryError leaves the engine as it was.
        if n_backends > m.backends_capacity:
            self._grow_backends(max(n_backends, 2 * m.backends_capacity))
        if needed > block.size and needed > m.slots_capacity - m.n_slots:
            _make_room(m, needed)
        if service.affinity_timeout_s and self.affinity.entries == NULL:
            if affinity_init(&self.affinity, self.ct.capacity) != 0:
                raise MemoryError("cannot allocate the session affinity table")
        for backend in new_backends:
            _set_backend(m, backend.id, backend)
        m.n_backends = n_backends
        if not m.may_flush[service_id] and not _member_ids(self.py_maps.services[service_id - 1]) <= _member_ids(service):
            m.may_flush[service_id] = True  # its tracked UDP flows check their backend from now on
        # (check_service_update has checked every id the sets name: the writes cannot fail)
        if needed <= block.size:
            _write_block(m, service_id, m.services[service_id].first_cluster, service)  # in place
        else:
            m.garbage_slots += block.size
            block.size = needed
            _write_block(m, service_id, m.n_slots, service)
            m.n_slots += needed
        self.py_maps.services[service_id - 1] = service
        self.py_maps.backends.extend(new_backends)

    cdef _grow_backends(self, uint32_t capacity):
        """Room for backend ids up to `capacity`, in the table and the per-backend counters."""
        cdef Maps* m = &self.maps
        cdef BackendEntry* backends = <BackendEntry*>table_realloc(
            m.backends, <size_t>capacity + 1, sizeof(BackendEntry), WRITTEN_WHOLE)
        if backends == NULL:
            raise MemoryError("cannot grow the backend table")
        m.backends = backends
        cdef uint64_t* counts = <uint64_t*>table_realloc(self.backend_packets, <size_t>capacity + 1,
                                                         sizeof(uint64_t), PREALLOCATED)
        if counts == NULL:
            raise MemoryError("cannot grow the backend counters")
        self.backend_packets = counts
        self.ct.backend_packets = counts
        m.backends_capacity = capacity

    cdef _remap_counters(self, list service_ids, list backend_ids, uint32_t n_services,
                         uint32_t n_backends):
        self.service_packets = _remapped(self.service_packets, service_ids, n_services)
        self.backend_packets = _remapped(self.backend_packets, backend_ids, n_backends)
        self.ct.service_packets, self.ct.backend_packets = self.service_packets, self.backend_packets

    cdef _remap_state(self, const uint32_t[::1] service_ids, const uint32_t[::1] backend_ids):
        """Conntrack, fragment and affinity entries follow the new ids (old id -> new id)."""
        cdef uint32_t index, seen = 0
        cdef uint32_t n_service_ids = service_ids.shape[0], n_backend_ids = backend_ids.shape[0]
        cdef CtEntry* e
        cdef FragEntry* fragment
        if _identity(service_ids) and _identity(backend_ids):
            return  # every id keeps its meaning (and a pass over a big table costs milliseconds)
        # Entries follow the ids; stale UDP ones are flushed later, by their own next packet.
        index = 0
        e = ct_next_in_use(&self.ct, &index, &seen)
        while e != NULL:
            e.service = service_ids[e.service] if e.service < n_service_ids else 0
            e.backend = backend_ids[e.backend] if e.backend < n_backend_ids else 0
            e = ct_next_in_use(&self.ct, &index, &seen)
        # Fragment entries keep their verdict and addresses; their ids follow the mapping.
        index = self.fragments.lru.oldest
        while index != LRU_NIL:
            fragment = &self.fragments.entries[index]
            fragment.service = service_ids[fragment.service] if fragment.service < n_service_ids else 0
            fragment.backend = backend_ids[fragment.backend] if fragment.backend < n_backend_ids else 0
            index = fragment.lru.next
        if self.affinity.entries != NULL:
            affinity_remap(&self.affinity, &service_ids[0], n_service_ids)

    # -- the packet loop -----------------------------------------------------------------------

    def process(self, unsigned char[::1] buf not None, const uint64_t[::1] offsets not None,
                const uint32_t[::1] lengths not None, const uint64_t[::1] timestamps_ns not None,
                uint8_t[::1] verdicts not None, uint8_t[::1] reasons not None, int linktype=1,
                uint32_t[::1] services=None, uint32_t[::1] backends=None,
                uint8_t[::1] flags=None):
        """Run one batch: packet i is buf[offsets[i]:offsets[i]+lengths[i]], rewritten in place.
        services/backends/flags, when given, receive the per-packet trace."""
        cdef Py_ssize_t n = offsets.shape[0], i
        if lengths.shape[0] != n or timestamps_ns.shape[0] != n or verdicts.shape[0] != n \
                or reasons.shape[0] != n:
            raise ValueError("lengths, timestamps_ns, verdicts and reasons need one slot per offset")
        cdef bint tracing = services is not None or backends is not None or flags is not None
        if tracing and (services is None or backends is None or flags is None
                        or services.shape[0] != n or backends.shape[0] != n or flags.shape[0] != n):
            raise ValueError("services, backends and flags go together, one slot per packet")
        cdef uint64_t size = buf.shape[0]
        cdef uint8_t* base = &buf[0] if size else NULL
        cdef Py_ssize_t bad = -1
        cdef bint disjoint = True
        cdef uint8_t reason
        cdef TraceOut trace
        cdef Parsed ring[RING]
        cdef Outputs out
        # Counters beyond what stays cached (a million service ports) are asked for when the
        # packet's service and backend are known and added COUNT_LATER packets on, so the
        # fetches overlap with the packets in between; smaller ones stay in cache and are
        # added at once.
        cdef bint far_counters = ((<uint64_t>self.maps.n_services + self.maps.n_backends)
                                  * sizeof(uint64_t) > CACHED_COUNTER_BYTES)
        cdef LaterCounts later
        memset(&later, 0, sizeof(later))
        cdef bint far_conntrack = <uint64_t>self.ct.count * sizeof(CtEntry) > FAR_CONNTRACK_BYTES
        cdef bint far_maps = ((<uint64_t>self.maps.frontend_map.mask + 1) * sizeof(FrontendSlot)
                              > FAR_MAPS_BYTES)
        cdef Py_ssize_t header_ahead = FAR_HEADER_AHEAD if far_conntrack else HEADER_AHEAD
        cdef Py_ssize_t parse_ahead = FAR_PARSE_AHEAD if far_conntrack else PARSE_AHEAD
        cdef Py_ssize_t entry_ahead = FAR_ENTRY_AHEAD if far_conntrack else ENTRY_AHEAD
        if far_maps:  # room for the new-flow stages; a far conntrack's distances are longer still
            header_ahead = max(header_ahead, MAPS_HEADER_AHEAD)
            parse_ahead = max(parse_ahead, MAPS_PARSE_AHEAD)
            entry_ahead = max(entry_ahead, MAPS_ENTRY_AHEAD)
        out.verdicts = &verdicts[0] if n else NULL
        out.reasons = &reasons[0] if n else NULL
        out.services = &services[0] if tracing and n else NULL
        out.backends = &backends[0] if tracing and n else NULL
        out.flags = &flags[0] if tracing and n else NULL
        with nogil:
            for i in range(n):
                if offsets[i] > size or lengths[i] > size - offsets[i]:
                    bad = i
                    break
                if i > 0 and offsets[i] < offsets[i - 1] + lengths[i - 1]:
                    disjoint = False
            if bad < 0 and disjoint:
                # Parsing reads only the packet's own bytes, so packets in order and apart can be
                # parsed ahead: their conntrack buckets and entries are fetched from memory while
                # earlier packets are processed (packet headers further ahead still).
                for i in range(parse_ahead if parse_ahead < n else n):
                    self._parse(base + offsets[i], lengths[i], linktype, &ring[i & RING_MASK])
                for i in range(n):
                    if i + header_ahead < n:
                        prefetch(base + offsets[i + header_ahead])
                        prefetch(base + offsets[i + header_ahead] + 63)
                    if i + parse_ahead < n:
                        self._parse(base + offsets[i + parse_ahead], lengths[i + parse_ahead],
                                    linktype, &ring[(i + parse_ahead) & RING_MASK])
                    if i + entry_ahead < n:
                        self._prefetch_entry(&ring[(i + entry_ahead) & RING_MASK], far_maps)
                    if far_maps:
                        if i + FRONTEND_AHEAD < n:
                            self._prefetch_frontend(&ring[(i + FRONTEND_AHEAD) & RING_MASK])
                        if i + SERVICE_AHEAD < n:
                            self._prefetch_service(&ring[(i + SERVICE_AHEAD) & RING_MASK])
                        if i + BACKEND_SLOT_AHEAD < n:
                            self._prefetch_backend_slot(&ring[(i + BACKEND_SLOT_AHEAD) & RING_MASK])
                    if far_conntrack and i + FAR_NEXT_AHEAD < n:
                        self._prefetch_next_entry(&ring[(i + FAR_NEXT_AHEAD) & RING_MASK])
                    self._account(i, self._packet(&ring[i & RING_MASK], timestamps_ns[i], &trace),
                                  &trace, &out, not far_counters)
                    if far_counters:
                        self._count_later(&later, i, &trace)
                if far_counters:
                    self._count_pending(&later)
            elif bad < 0:
                for i in range(n):
                    self._parse(base + offsets[i], lengths[i], linktype, &ring[0])
                    self._account(i, self._packet(&ring[0], timestamps_ns[i], &trace),
                                  &trace, &out, True)
        if bad >= 0:
            raise ValueError(f"packet {bad} lies outside the buffer "
                             f"(offset {offsets[bad]}, length {lengths[bad]}, buffer {size})")

    cdef inline void _account(self, Py_ssize_t i, uint8_t reason, const TraceOut* trace,
                              Outputs* out, bint count_flow) noexcept nogil:
        """Store packet i's verdict (and trace) and count it; its service and backend only if
        count_flow (else _count_later does)."""
        out.reasons[i] = reason
        out.verdicts[i] = VERDICT_OF[reason]
        self.reason_packets[reason] += 1
        if count_flow and not trace.counted:
            self._count_flow(trace.service, trace.backend)
        if out.services != NULL:
            out.services[i] = trace.service
            out.backends[i] = trace.backend
            out.flags[i] = trace.flags

    cdef inline void _parse(self, uint8_t* data, uint32_t caplen, int linktype,
                            Parsed* p) noexcept nogil:
        """Everything about a packet that does not depend on the engine's state; for a flow,
        its conntrack bucket, asked for."""
        cdef int status
        p.l4_status = 0
        p.likely_new = False
        p.frontend = 0
        # Untagged IPv4 over Ethernet here, as _parse_network would parse it; the rest there.
        if linktype == LINKTYPE_ETHERNET and caplen >= 14 and load16(data + 12) == ETH_P_IP:
            status = parse_ipv4(data + 14, caplen - 14, &p.pkt)
        else:
            status = parse_network(data, caplen, linktype, &p.pkt)
        p.ip_status = <uint8_t>status
        if status != PARSED:
            return
        p.l4_status = <uint8_t>parse_ports(&p.pkt)
        if p.l4_status == PARSED:
            p.head = ct_head(&self.ct, bucket_hash(p.pkt.saddr, p.pkt.daddr, p.pkt.sport,
                                                   p.pkt.dport, p.pkt.proto))
            prefetch(p.head)

    cdef inline void _prefetch_entry(self, Parsed* p, bint far_maps) noexcept nogil:
        """Ask for the first conntrack entry in the packet's bucket (fetched by _parse); with
        far maps, for a packet likely to open a flow, its frontend map slot."""
        if p.ip_status != PARSED or p.l4_status != PARSED:
            return  # no flow tuple: no bucket, no frontend
        cdef uint32_t ref = p.head[0]
        cdef FrontendKey key
        # An empty bucket (a tenth of the standard batch's packets) asks for slot 0 instead:
        # a select, not a branch the predictor would miss (0.984 of the time, paired).
        prefetch(&self.ct.entries[ct_slot(ref | ((ref == CT_NIL) << 1))])
        if far_maps and (ref == CT_NIL or (p.pkt.proto == IPPROTO_TCP
                                           and p.pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN)):
            key = _frontend_key_of(&p.pkt)
            prefetch_item(&self.maps.frontend_map.slots[frontend_slot(&self.maps.frontend_map, &key)],
                          sizeof(FrontendSlot))
            p.likely_new = True

    cdef inline void _prefetch_frontend(self, Parsed* p) noexcept nogil:
        """A likely new flow's frontend (its map slot fetched by _prefetch_entry)."""
        cdef int64_t index
        if p.likely_new:
            index = frontend_map_get(&self.maps.frontend_map, _frontend_key_of(&p.pkt))
            if index >= 0:
                p.frontend = <uint32_t>index + 1
                prefetch_item(&self.maps.frontends[index], sizeof(FrontendEntry))

    cdef inline void _prefetch_service(self, const Parsed* p) noexcept nogil:
        if p.frontend:
            prefetch_item(&self.maps.services[self.maps.frontends[p.frontend - 1].service],
                          sizeof(ServiceEntry))

    cdef inline void _prefetch_backend_slot(self, const Parsed* p) noexcept nogil:
        """The slots _new_flow will pick the backend from, by the flow's hash."""
        cdef const FrontendEntry* frontend
        cdef const ServiceEntry* service
        cdef uint64_t hash
        if p.frontend:
            hash = _selection_hash(&p.pkt)
            frontend = &self.maps.frontends[p.frontend - 1]
            service = &self.maps.services[frontend.service]
            if service.n_cluster:
                prefetch(&self.maps.slots[service.first_cluster + scale_hash(hash, service.n_cluster)])
            if frontend.local_policy and service.n_local:
                prefetch(&self.maps.slots[service.first_local + scale_hash(hash, service.n_local)])

    cdef inline void _prefetch_next_entry(self, const Parsed* p) noexcept nogil:
        """Ask for the second entry in the packet's bucket when the first one (fetched by
        _prefetch_entry) is another flow's. Told apart by source address and port alone, and
        without a branch (whether the first entry is the packet's own is a coin toss to the
        branch predictor): otherwise the first entry is asked for again, already in cache."""
        cdef uint32_t ref = _first_ref(p)
        if ref == CT_NIL:
            return
        cdef uint32_t slot = ct_slot(ref), direction = ct_direction(ref)
        cdef const CtEntry* e = &self.ct.entries[slot]
        cdef uint32_t next = e.chain[direction]
        cdef uint32_t addr = e.backend_addr if direction else e.client_addr
        cdef uint16_t port = e.backend_port if direction else e.client_port
        cdef bint fetch_next = ((addr != p.pkt.saddr) | (port != p.pkt.sport)) & (next != CT_NIL)
        prefetch(&self.ct.entries[ct_slot(next) if fetch_next else slot])

    cdef inline void _count_flow(self, uint32_t service, uint32_t backend) noexcept nogil:
        if service:
            self.service_packets[service] += 1
        if backend:
            self.backend_packets[backend] += 1

    cdef inline void _count_later(self, LaterCounts* later, Py_ssize_t i,
                                  const TraceOut* trace) noexcept nogil:
        """Ask for packet i's service and backend counters, and add the ones asked for
        COUNT_LATER packets ago, whose slot packet i takes."""
        cdef Py_ssize_t slot = i & COUNT_LATER_MASK
        self._count_flow(later.services[slot], later.backends[slot])
        if trace.counted:  # in its conntrack entry: nothing to add later
            later.services[slot] = later.backends[slot] = 0
            return
        later.services[slot] = trace.service
        later.backends[slot] = trace.backend
        if trace.service:
            prefetch(&self.service_packets[trace.service])
        if trace.backend:
            prefetch(&self.backend_packets[trace.backend])

    cdef inline void _count_pending(self, LaterCounts* later) noexcept nogil:
        """Add what _count_later still holds (the last COUNT_LATER packets')."""
        cdef Py_ssize_t slot
        for slot in range(COUNT_LATER):
            self._count_flow(later.services[slot], later.backends[slot])
            later.services[slot] = 0
            later.backends[slot] = 0

    cdef inline uint8_t _packet(self, Parsed* p, uint64_t now, TraceOut* trace) noexcept nogil:
        trace.service = 0
        trace.backend = 0
        trace.flags = 0
        trace.counted = False
        cdef Packet* pkt = &p.pkt
        if p.ip_status == PARSED_FRAGMENT:
            return self._later_fragment(pkt, trace)
        if p.ip_status != PARSED:
            return p.ip_status
        cdef uint8_t reason
        if p.l4_status == PARSED:
            reason = self._flow(pkt, p.head, now, trace)
        elif p.l4_status == PARSED_ICMP_ERROR:
            reason = self._icmp_error(pkt, now, trace)
        else:
            reason = p.l4_status
        # Passed first fragments are remembered too when addressed to a service address (a
        # NodePort's node address, say), so the node's own fragmented traffic passes whole.
        if pkt.first_fragment and (VERDICT_OF[reason] != VERDICT_PASS
                                   or self._to_frontend_address(pkt)):
            self._remember_fragment(pkt, reason, trace)
        return reason

    cdef inline bint _to_frontend_address(self, const Packet* pkt) noexcept nogil:
        """Is the destination a frontend's address or a ClusterIP (any port)?"""
        cdef Addr dst = packet_dst(pkt)
        return frontend_map_get(&self.maps.frontend_ips, frontend_key(&dst, 0, 0)) >= 0

    cdef inline uint8_t _flow(self, Packet* pkt, const uint32_t* head, uint64_t now,
                              TraceOut* trace) noexcept nogil:
        cdef uint32_t ref = ct_lookup(&self.ct, head, pkt.saddr, pkt.daddr, pkt.sport, pkt.dport,
                                      pkt.proto, &pkt.src6 if pkt.ipv6 else NULL,
                                      &pkt.dst6 if pkt.ipv6 else NULL)
        cdef CtEntry* e
        if ref != CT_NIL:
            e = &self.ct.entries[ct_slot(ref)]
            if ct_expired(&self.ct, e, now):
                self.ct.stats.expired += 1
                ct_delete(&self.ct, ct_slot(ref))
            # (the state first: a closing flow is rare, the direction a coin toss)
            elif e.state == STATE_CLOSING and ct_direction(ref) == DIR_ORIG \
                    and pkt.proto == IPPROTO_TCP and pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
                self.ct.stats.reopened += 1
                ct_delete(&self.ct, ct_slot(ref))
            elif pkt.proto == IPPROTO_UDP and self.maps.may_flush[e.service] \
                    and not is_member(&self.maps, e.service, e.backend):
                # Its backend left the service's sets since it was tracked: select again.
                self.ct.stats.flushed += 1
                ct_delete(&self.ct, ct_slot(ref))
            else:
                return self._tracked(pkt, e, ref, now, trace)
        return self._new_flow(pkt, now, trace)

    cdef inline void _remember_fragment(self, Packet* pkt, uint8_t reason,
                                        TraceOut* trace) noexcept nogil:
        """Later fragments of this datagram will get what this first fragment got."""
        cdef Addr src = packet_src(pkt), dst = packet_dst(pkt)
        cdef FragEntry* e = fragments_record(&self.fragments, &src, &dst, pkt.ip_id,
                                             pkt.frag_proto)
        e.verdict = VERDICT_OF[reason]
        if pkt.ipv6:
            e.new_saddr = load_addr6(pkt.l3 + 8)
            e.new_daddr = load_addr6(pkt.l3 + 24)
        else:
            e.new_saddr = addr_v4(load32(pkt.l3 + 12))
            e.new_daddr = addr_v4(load32(pkt.l3 + 16))
        e.service = trace.service
        e.backend = trace.backend
        e.flags = trace.flags

    cdef inline uint8_t _later_fragment(self, Packet* pkt, TraceOut* trace) noexcept nogil:
        cdef Addr src = packet_src(pkt), dst = packet_dst(pkt)
        cdef uint32_t index = fragments_find(&self.fragments, &src, &dst, pkt.ip_id,
                                             pkt.frag_proto)
        if index == FRAG_NIL:
            self.fragments.not_found += 1
            if self._to_frontend_address(pkt):
                return DROP_FRAG_NOT_FOUND  # to a service, but its ports are unknowable
            return PASS_FRAGMENT
        cdef FragEntry* e = &self.fragments.entries[index]
        lru_touch(&self.fragments.lru, index)
        self.fragments.followed += 1
        trace.service = e.service
        trace.backend = e.backend
        trace.flags = e.flags
        if e.verdict == VERDICT_DNAT or e.verdict == VERDICT_REVNAT:
            if pkt.ipv6:
                rewrite_addresses6(pkt.l3, &e.new_saddr, &e.new_daddr)
            else:
                rewrite_addresses(pkt.l3, <uint32_t>e.new_saddr.lo, <uint32_t>e.new_daddr.lo)
            return FRAG_DNAT if e.verdict == VERDICT_DNAT else FRAG_REVNAT
        if e.verdict == VERDICT_PASS:
            return PASS_FRAGMENT        # its first fragment passed: so does the rest
        return FRAG_DROP

    cdef inline uint8_t _icmp_error(self, Packet* pkt, uint64_t now, TraceOut* trace) noexcept nogil:
        """An ICMP error about a tracked flow is translated like the flow's own packets."""
        cdef Packet quoted
        if not parse_quoted(pkt, &quoted):
            return PASS_UNSUPPORTED
        # The quoted packet went the other way: its reversed tuple is the flow's tuple.
        cdef uint32_t ref = ct_lookup(
            &self.ct, ct_head(&self.ct, bucket_hash(quoted.daddr, quoted.saddr, quoted.dport,
                                                  quoted.sport, quoted.proto)),
            quoted.daddr, quoted.saddr, quoted.dport, quoted.sport, quoted.proto,
            &quoted.dst6 if quoted.ipv6 else NULL, &quoted.src6 if quoted.ipv6 else NULL)
        if ref == CT_NIL or ct_expired(&self.ct, &self.ct.entries[ct_slot(ref)], now):
            return PASS_NO_SERVICE
        cdef CtEntry* e = &self.ct.entries[ct_slot(ref)]
        cdef bint masqueraded = (e.flags & FLAG_MASQUERADED) != 0
        trace.service = e.service
        trace.backend = e.backend
        trace.flags = e.flags & TRACE_FLAGS
        if pkt.ipv6:
            self._icmp6_error(pkt, &quoted, e, &self.ct.addrs6[ct_slot(ref)], ct_direction(ref))
        elif ct_direction(ref) == DIR_REPLY:
            # Quoted: a translated forward packet (SNAT/client -> backend); going to the client.
            translate_icmp_error(
                pkt, &quoted, True, e.frontend_addr, e.frontend_port,
                masqueraded, e.client_addr, e.client_port,
                pkt.saddr == e.backend_addr, e.frontend_addr,
                masqueraded and pkt.daddr == e.reply_addr, e.client_addr)
        else:
            # Quoted: a reply as the client saw it (frontend -> client); going to the backend.
            translate_icmp_error(
                pkt, &quoted, masqueraded, e.reply_addr, e.reply_port,
                True, e.backend_addr, e.backend_port,
                masqueraded and pkt.saddr == e.client_addr, e.reply_addr,
                pkt.daddr == e.frontend_addr, e.backend_addr)
        return ICMP_ERROR_REPLY if ct_direction(ref) == DIR_REPLY else ICMP_ERROR_FORWARD

    cdef inline void _icmp6_error(self, Packet* pkt, Packet* quoted, const CtEntry* e,
                                  const CtAddrs6* a, uint32_t direction) noexcept nogil:
        """_icmp_error's translation for ICMPv6 (the same rules, whole IPv6 addresses)."""
        cdef bint masqueraded = (e.flags & FLAG_MASQUERADED) != 0
        if direction == DIR_REPLY:
            translate_icmp6_error(
                pkt, quoted, True, &a.frontend, e.frontend_port,
                masqueraded, &a.client, e.client_port,
                addr_eq(&pkt.src6, &a.backend), &a.frontend,
                masqueraded and addr_eq(&pkt.dst6, &a.reply), &a.client)
        else:
            translate_icmp6_error(
                pkt, quoted, masqueraded, &a.reply, e.reply_port,
                True, &a.backend, e.backend_port,
                masqueraded and addr_eq(&pkt.src6, &a.client), &a.reply,
                addr_eq(&pkt.dst6, &a.frontend), &a.backend)

    cdef inline uint8_t _tracked(self, Packet* pkt, CtEntry* e, uint32_t ref, uint64_t now,
                                 TraceOut* trace) noexcept nogil:
        if now > e.last_seen_ns:
            e.last_seen_ns = now
        ct_touch(&self.ct, ct_slot(ref))
        if pkt.proto == IPPROTO_TCP:
            e.state = tcp_state_after(e.state, pkt.tcp_flags, ct_direction(ref))
        ct_count_packet(&self.ct, e)
        trace.counted = True
        trace.service = e.service
        trace.backend = e.backend
        trace.flags = e.flags & TRACE_FLAGS
        cdef bint masqueraded = (e.flags & FLAG_MASQUERADED) != 0
        cdef const CtAddrs6* a
        if pkt.ipv6:
            a = &self.ct.addrs6[ct_slot(ref)]
            if ct_direction(ref) == DIR_ORIG:
                translate6(pkt, True, &a.backend, e.backend_port, masqueraded, &a.reply, e.reply_port)
                return CT_ESTABLISHED
            translate6(pkt, masqueraded, &a.client, e.client_port, True, &a.frontend, e.frontend_port)
            return CT_REPLY
        if ct_direction(ref) == DIR_ORIG:
            translate(pkt, True, e.backend_addr, e.backend_port,
                      masqueraded, e.reply_addr, e.reply_port)
            return CT_ESTABLISHED
        translate(pkt, masqueraded, e.client_addr, e.client_port,
                  True, e.frontend_addr, e.frontend_port)
        return CT_REPLY

    cdef inline uint8_t _new_flow(self, Packet* pkt, uint64_t now, TraceOut* trace) noexcept nogil:
        cdef Maps* m = &self.maps
        cdef Addr src = packet_src(pkt), dst = packet_dst(pkt)
        # A packet to no service address at all (a pod talking to the outside: a tenth of the
        # standard batch) is told so by one lookup of the address set, not by missing the
        # frontend map and then the ClusterIPs, two probe runs whose ends the branch predictor
        # misses (0.96 of the standard batch's time, paired). Not with the set beyond the
        # caches: a new flow there has its frontend map slot fetched ahead, not the set's.
        if m.address_first and not self._to_frontend_address(pkt):
            return self._no_frontend(&dst)
        cdef int64_t index = frontend_map_get(&m.frontend_map, _frontend_key_of(pkt))
        if index < 0:
            if frontend_map_get(&m.service_ips, frontend_key(&dst, 0, 0)) >= 0:
                return REJECT_UNKNOWN_PORT
            return self._no_frontend(&dst)
        cdef FrontendEntry* frontend = &m.frontends[index]
        cdef ServiceEntry* service = &m.services[frontend.service]
        trace.service = frontend.service
        trace.flags = frontend.kind
        if frontend.n_ranges and not in_prefixes(&src, m.ranges + frontend.first_range,
                                                 frontend.n_ranges):
            return DROP_SOURCE_RANGE
        if service.n_cluster == 0:
            return REJECT_NO_ENDPOINT

        # Which endpoints, and whether to masquerade: kube-proxy's rules by frontend kind, traffic
        # policy and source class (the compiler put each decision's inputs in the maps).
        cdef bint from_pod = in_prefixes(&src, m.pod_cidrs, m.n_pod_cidrs)
        cdef bint detect_local = m.pod_cidrs_v6 if pkt.ipv6 else m.pod_cidrs_v4
        cdef bint use_local, masq
        if frontend.kind == KIND_CLUSTER_IP:
            use_local = frontend.local_policy
            masq = m.masquerade_all or (detect_local and not from_pod)
        elif not frontend.local_policy:
            use_local = False
            masq = True
        elif from_pod:
            use_local = False
            masq = False
        elif self._node_local(&src):
            use_local = False
            masq = True
        else:
            use_local = True
            masq = False
        cdef uint32_t first = service.first_local if use_local else service.first_cluster
        cdef uint32_t count = service.n_local if use_local else service.n_cluster
        if count == 0:
            return DROP_NO_LOCAL_ENDPOINT
        if self.ct.count == self.ct.capacity and not ct_guard_allows(&self.ct, now):
            return DROP_FLOW_RATE

        cdef uint32_t backend_id = 0
        if service.affinity_timeout_ns:
            backend_id = self._affinity_choice(&src, frontend.service, first, count,
                                               service.affinity_timeout_ns, now)
        if backend_id == 0:
            backend_id = m.slots[first + scale_hash(_selection_hash(pkt), count)]
        cdef BackendEntry* backend = &m.backends[backend_id]
        if service.affinity_timeout_ns:
            affinity_record(&self.affinity, &src, frontend.service, &backend.addr,
                            backend.port, now)

        if addr_eq(&backend.addr, &src):
            masq = True                 # hairpin: the endpoint talks to itself via the service
        if masq and not (m.has_primary_ip6 if pkt.ipv6 else m.primary_ip != 0):
            masq = False
            self.ct.stats.snat_unavailable += 1
        # The reply tuple's destination: the client, or the masquerade address and a free port.
        cdef Addr reply_addr = src
        cdef uint32_t reply32 = pkt.saddr
        cdef uint16_t reply_port = pkt.sport
        cdef bint tracked = True
        cdef int tries = 1
        if masq:
            reply_addr = m.primary_ip6 if pkt.ipv6 else addr_v4(m.primary_ip)
            reply32 = fold6(&reply_addr) if pkt.ipv6 else m.primary_ip
            while ct_tuple_present(&self.ct, backend.addr32, reply32, backend.port, reply_port,
                                   pkt.proto, &backend.addr if pkt.ipv6 else NULL,
                                   &reply_addr if pkt.ipv6 else NULL):
                if tries == SNAT_TRIES:
                    self.ct.stats.snat_failures += 1
                    tracked = False
                    break
                reply_port = next_snat_port(reply_port)
                tries += 1

        cdef CtEntry flow
        flow.client_addr = pkt.saddr
        flow.frontend_addr = pkt.daddr
        flow.backend_addr = backend.addr32
        flow.reply_addr = reply32
        flow.client_port = pkt.sport
        flow.frontend_port = pkt.dport
        flow.backend_port = backend.port
        flow.reply_port = reply_port
        flow.proto = pkt.proto
        flow.flags = frontend.kind | (FLAG_MASQUERADED if masq else 0)
        flow.pending = 0  # this packet is counted the usual way (_account)
        flow.service = frontend.service
        flow.backend = backend_id
        flow.last_seen_ns = now
        if pkt.proto == IPPROTO_TCP:
            if pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
                self.ct.stats.non_syn_miss += 1
            flow.state = tcp_initial_state(pkt.tcp_flags)
        else:
            flow.state = STATE_OTHER
        trace.backend = backend_id
        trace.flags = flow.flags
        cdef CtAddrs6 addrs6
        if pkt.ipv6:
            flow.flags |= FLAG_IPV6
            addrs6.client = src
            addrs6.frontend = dst
            addrs6.backend = backend.addr
            addrs6.reply = reply_addr
            if tracked:
                ct_insert(&self.ct, &flow, &addrs6)
            translate6(pkt, True, &backend.addr, backend.port, masq, &reply_addr, reply_port)
        else:
            if tracked:
                ct_insert(&self.ct, &flow, NULL)
            translate(pkt, True, backend.addr32, backend.port, masq, reply32, reply_port)
        return NEW_FLOW

    cdef inline uint8_t _no_frontend(self, const Addr* dst) noexcept nogil:
        """The verdict of a new flow to no frontend and no ClusterIP: dropped inside a
        ServiceCIDR (an address no service has been given), else passed."""
        if in_prefixes(dst, self.maps.service_cidrs, self.maps.n_service_cidrs):
            return DROP_UNALLOCATED_SERVICE_IP
        return PASS_NO_SERVICE

    cdef inline bint _node_local(self, const Addr* addr) noexcept nogil:
        cdef uint32_t i
        for i in range(self.maps.n_local_ips):
            if addr_eq(&self.maps.local_ips[i], addr):
                return True
        return False

    cdef inline uint32_t _affinity_choice(self, const Addr* client, uint32_t service_id,
                                          uint32_t first, uint32_t count, uint64_t timeout,
                                          uint64_t now) noexcept nogil:
        """The backend id the client's affinity entry names, if alive and in the set; else 0."""
        cdef uint32_t index = affinity_find(&self.affinity, client, service_id), k, candidate
        if index == AFF_NIL:
            return 0
        if now > self.affinity.entries[index].last_used_ns \
                and now - self.affinity.entries[index].last_used_ns > timeout:
            self.affinity.expired += 1
            affinity_delete(&self.affinity, index)
            return 0
        for k in range(count):
            candidate = self.maps.slots[first + k]
            if addr_eq(&self.maps.backends[candidate].addr, &self.affinity.entries[index].backend_addr) \
                    and self.maps.backends[candidate].port == self.affinity.entries[index].backend_port:
                return candidate
        return 0

    # -- conveniences --------------------------------------------------------------------------

    def process_packet(self, data, uint64_t ts_ns=0, int linktype=1):
        """One packet in, (Verdict, Reason, bytes after the rewrite) out."""
        from array import array
        buf = bytearray(data)
        verdicts = array("B", [0])
        reasons = array("B", [0])
        self.process(buf, array("Q", [0]), array("I", [len(buf)]), array("Q", [ts_ns]),
                     verdicts, reasons, linktype)
        return Verdict(verdicts[0]), Reason(reasons[0]), bytes(buf)

    cdef void _count_pending_entries(self) noexcept:
        """Add every entry's pending packets to the counters (see ct_count_packet): a pass over
        the table, skipped when no packet was counted in an entry since the last one."""
        cdef uint32_t index = 0, seen = 0
        cdef CtEntry* e
        if not self.ct.counted_in_entries:
            return
        self.ct.counted_in_entries = False
        e = ct_next_in_use(&self.ct, &index, &seen)
        while e != NULL:
            ct_count_pending(&self.ct, e)
            e = ct_next_in_use(&self.ct, &index, &seen)

    def counters(self):
        """Counts since the engine was made (see fastpath.reference for the shape)."""
        cdef uint64_t verdict_packets[VERDICT_COUNT]
        cdef int reason
        self._count_pending_entries()
        s = self.ct.stats
        memset(verdict_packets, 0, sizeof(verdict_packets))
        for reason in range(REASON_COUNT):
            verdict_packets[VERDICT_OF[reason]] += self.reason_packets[reason]
        return {
            "verdicts": {v.name: verdict_packets[v] for v in Verdict},
            "reasons": {r.name: self.reason_packets[r] for r in Reason},
            "services": [self.service_packets[i] for i in range(1, self.maps.n_services + 1)],
            "backends": [self.backend_packets[i] for i in range(1, self.maps.n_backends + 1)],
            "conntrack": {
                "inserts": s.inserts, "evictions": s.evictions, "expired": s.expired,
                "reopened": s.reopened, "non_syn_miss": s.non_syn_miss,
                "insert_failures": s.insert_failures, "flushed": s.flushed,
                "snat_failures": s.snat_failures, "snat_unavailable": s.snat_unavailable,
                "rate_limited": s.rate_limited,
                "entries": self.ct.count,
            },
            "affinity": {
                "evictions": self.affinity.evictions, "expired": self.affinity.expired,
                "entries": self.affinity.lru.count,
            },
            "fragments": {
                "tracked": self.fragments.tracked, "evictions": self.fragments.evictions,
                "followed": self.fragments.followed, "not_found": self.fragments.not_found,
                "entries": self.fragments.lru.count,
            },
        }


# The fields of the maps' objects a load reads (a big cluster's million backends, its hundred
# thousand services and frontends), each from its slot (slots.pxd): in perf, attribute lookups
# were a quarter of loading a 100,000-Service cluster.
cdef type BACKEND = Backend, SERVICE = MapService, FRONTEND = Frontend
cdef Py_ssize_t BACKEND_ID = offset_of(Backend, "id"), BACKEND_IP = offset_of(Backend, "ip")
cdef Py_ssize_t BACKEND_PORT = offset_of(Backend, "port")
cdef Py_ssize_t SERVICE_ID = offset_of(MapService, "id"), SERVICE_BACKENDS = offset_of(MapService, "backends")
cdef Py_ssize_t SERVICE_LOCAL = offset_of(MapService, "local_backends")
cdef Py_ssize_t SERVICE_SERVING = offset_of(MapService, "serving")
cdef Py_ssize_t SERVICE_TIMEOUT = offset_of(MapService, "affinity_timeout_s")
cdef Py_ssize_t SERVICE_NAME = offset_of(MapService, "name"), SERVICE_FAMILY = offset_of(MapService, "family")
cdef Py_ssize_t FRONTEND_IP = offset_of(Frontend, "ip"), FRONTEND_PORT = offset_of(Frontend, "port")
cdef Py_ssize_t FRONTEND_PROTO = offset_of(Frontend, "proto"), FRONTEND_SERVICE = offset_of(Frontend, "service")
cdef Py_ssize_t FRONTEND_KIND = offset_of(Frontend, "kind"), FRONTEND_LOCAL = offset_of(Frontend, "local_policy")
cdef Py_ssize_t FRONTEND_RANGES = offset_of(Frontend, "source_ranges")


cdef inline object backend_field(backend, Py_ssize_t offset, str name):
    return slot_or_attribute(backend, BACKEND, offset, name)


cdef inline object service_field(service, Py_ssize_t offset, str name):
    return slot_or_attribute(service, SERVICE, offset, name)


cdef inline object frontend_field(frontend, Py_ssize_t offset, str name):
    return slot_or_attribute(frontend, FRONTEND, offset, name)


cdef _build_maps(Maps* m, maps):
    """Fill the C maps from a fastpath.maps.Maps (m is freed by the caller on error)."""
    cdef uint32_t n_services = len(maps.services), n_backends = len(maps.backends)
    cdef uint32_t n_frontends = len(maps.frontends)
    cdef list block_sizes = [_block_size(s) for s in maps.services]
    cdef uint32_t n_slots = 1 + sum(block_sizes)
    cdef uint32_t n_ranges = 0
    cdef uint32_t i, range_index = 0
    for frontend in maps.frontends:
        n_ranges += len(frontend_field(frontend, FRONTEND_RANGES, "source_ranges"))
    node = maps.node
    if frontend_map_init(&m.frontend_map, n_frontends) != 0 \
            or frontend_map_init(&m.service_ips, len(node.service_ips)) != 0:
        raise MemoryError("cannot allocate the frontend maps")
    # (The tables a new flow reads at random, frontends, services, slots and backends, are on huge
    # pages when big: see aligned.pxd.)
    m.frontends = <FrontendEntry*>table_calloc(n_frontends + 1, sizeof(FrontendEntry), WRITTEN_WHOLE)
    m.ranges = <Prefix*>table_calloc(n_ranges + 1, sizeof(Prefix), WRITTEN_WHOLE)
    m.services = <ServiceEntry*>table_calloc(n_services + 1, sizeof(ServiceEntry), WRITTEN_WHOLE)
    m.blocks = <ServiceBlock*>table_calloc(n_services + 1, sizeof(ServiceBlock), WRITTEN_WHOLE)
    m.may_flush = <uint8_t*>table_calloc(n_services + 1, sizeof(uint8_t), WRITTEN_WHOLE)
    m.slots = <uint32_t*>table_calloc(n_slots, sizeof(uint32_t), WRITTEN_WHOLE)
    m.backends = <BackendEntry*>table_calloc(n_backends + 1, sizeof(BackendEntry), WRITTEN_WHOLE)
    m.local_ips = <Addr*>table_calloc(len(node.local_ips) + 1, sizeof(Addr), WRITTEN_WHOLE)
    m.pod_cidrs = <Prefix*>table_calloc(len(node.pod_cidrs) + 1, sizeof(Prefix), WRITTEN_WHOLE)
    m.service_cidrs = <Prefix*>table_calloc(len(node.service_cidrs) + 1, sizeof(Prefix), WRITTEN_WHOLE)
    if not (m.frontends and m.ranges and m.services and m.blocks and m.may_flush and m.slots and m.backends
            and m.local_ips and m.pod_cidrs and m.service_cidrs):
        raise MemoryError("cannot allocate the service maps")
    m.n_services = n_services
    m.n_backends = n_backends
    m.backends_capacity = n_backends
    # Every id used as an index is checked here, whatever Maps checked when it was made (its lists
    # can change after, and Maps.unchecked skips that): a bad one gets Maps.check()'s error.
    i = 0
    for backend in maps.backends:
        i += 1
        if int_or_zero(backend_field(backend, BACKEND_ID, "id")) != i:
            _refuse(maps)
        _set_backend(m, i, backend)
    # Service 0 (a flow whose service vanished) has no members: its table is slots[0], empty.
    m.may_flush[0] = True
    m.slots_capacity = n_slots
    m.n_slots = 1
    i = 0
    for service, size in zip(maps.services, block_sizes):
        i += 1
        if int_or_zero(service_field(service, SERVICE_ID, "id")) != i:
            _refuse(maps)
        m.blocks[i].size = size
        if not _write_block(m, i, m.n_slots, service):  # (a set naming an id that is no backend)
            _refuse(maps)
        m.n_slots += size
    cdef Addr address
    cdef FrontendEntry* entry
    cdef int64_t service_id
    for i, frontend in enumerate(maps.frontends):
        entry = &m.frontends[i]
        ip = frontend_field(frontend, FRONTEND_IP, "ip")
        ranges = frontend_field(frontend, FRONTEND_RANGES, "source_ranges")
        service_id = int_or_zero(frontend_field(frontend, FRONTEND_SERVICE, "service"))
        if not 1 <= service_id <= n_services:
            _refuse(maps)
        entry.service = <uint32_t>service_id
        entry.addr = _addr(ip)
        m.any_ipv6 = m.any_ipv6 or ip >= IPV6
        entry.port = frontend_field(frontend, FRONTEND_PORT, "port")
        entry.proto = frontend_field(frontend, FRONTEND_PROTO, "proto")
        entry.kind = FRONTEND_KINDS.index(frontend_field(frontend, FRONTEND_KIND, "kind")) + 1
        entry.local_policy = frontend_field(frontend, FRONTEND_LOCAL, "local_policy")
        entry.first_range = range_index
        entry.n_ranges = len(ranges)
        for network, length in ranges:
            m.ranges[range_index] = _prefix(network, length)
            range_index += 1
        if not frontend_map_put(&m.frontend_map, frontend_key(&entry.addr, entry.port, entry.proto), i):
            raise ValueError(f"duplicate frontend {frontend}")
    m.primary_ip = node.primary_ip
    m.has_primary_ip6 = node.primary_ip6 != 0
    if m.has_primary_ip6:
        m.primary_ip6 = _addr(node.primary_ip6)
    m.masquerade_all = node.masquerade_all
    m.n_local_ips = len(node.local_ips)
    for i, ip in enumerate(node.local_ips):
        m.local_ips[i] = _addr(ip)
    m.n_pod_cidrs = len(node.pod_cidrs)
    for i, (network, length) in enumerate(node.pod_cidrs):
        m.pod_cidrs[i] = _prefix(network, length)
        m.pod_cidrs_v6 = m.pod_cidrs_v6 or network >= IPV6
        m.pod_cidrs_v4 = m.pod_cidrs_v4 or network < IPV6
    m.n_service_cidrs = len(node.service_cidrs)
    for i, (network, length) in enumerate(node.service_cidrs):
        m.service_cidrs[i] = _prefix(network, length)
    if frontend_map_init(&m.frontend_ips, n_frontends + len(node.service_ips)) != 0:
        raise MemoryError("cannot allocate the frontend address set")
    for ip in node.service_ips:
        address = _addr(ip)
        frontend_map_put(&m.service_ips, frontend_key(&address, 0, 0), 0)
        frontend_map_put(&m.frontend_ips, frontend_key(&address, 0, 0), 0)
    for i in range(n_frontends):
        frontend_map_put(&m.frontend_ips, frontend_key(&m.frontends[i].addr, 0, 0), 0)
    m.address_first = (<uint64_t>m.frontend_ips.mask + 1) * sizeof(FrontendSlot) <= FAR_MAPS_BYTES


cdef _refuse(maps):
    """Raise the ValueError Maps.check() raises for `maps`, or a general one."""
    maps.check()
    raise ValueError("maps name an id that is out of range")


cdef _set_backend(Maps* m, uint32_t backend_id, backend):
    """The entry of `backend`, whose id (checked by the caller) is `backend_id`."""
    ip = backend_field(backend, BACKEND_IP, "ip")  # (each field read once: a load reads a million)
    cdef BackendEntry* entry = &m.backends[backend_id]
    entry.addr = _addr(ip)
    entry.addr32 = fold6(&entry.addr) if ip >= IPV6 else ip
    entry.port = backend_field(backend, BACKEND_PORT, "port")


# A service's block of slots: its cluster set, its local set, then a table of its members (the
# backend ids of any set) with at least one free slot, so a lookup always ends. The table is
# sized for every id the sets list, a repeated one counted again: no set of ids is made to
# size it (a load has a hundred thousand services), at worst a table twice as big.

cdef frozenset _member_ids(service):
    return frozenset((*service.backends, *service.local_backends, *service.serving))


cdef uint32_t _table_size(Py_ssize_t members):
    cdef uint32_t size = 1
    while size < 2 * members:
        size <<= 1
    return size


cdef uint32_t _members_listed(cluster, local, serving) except? 0:
    """How many ids the sets list together (the serving set not again when it is the cluster
    set itself, as the compiler makes it when the two are equal)."""
    return len(cluster) + len(local) + (0 if serving is cluster else len(serving))


cdef uint32_t _block_size(service) except? 0:
    cluster = service_field(service, SERVICE_BACKENDS, "backends")
    local = service_field(service, SERVICE_LOCAL, "local_backends")
    serving = service_field(service, SERVICE_SERVING, "serving")
    return len(cluster) + len(local) + _table_size(_members_listed(cluster, local, serving))


cdef bint _write_block(Maps* m, uint32_t service_id, uint32_t start, service) except -1:
    """Lay the service's sets out from slots[start], in its block (blocks[service_id].size
    slots from there). False if a set names an id that is no backend, or the sets do not fit
    the block (the block is then left half written: the caller refuses the maps)."""
    cdef ServiceEntry* entry = &m.services[service_id]
    cdef ServiceBlock* block = &m.blocks[service_id]
    cdef uint32_t slot = start, mask
    cluster = service_field(service, SERVICE_BACKENDS, "backends")
    local = service_field(service, SERVICE_LOCAL, "local_backends")
    serving = service_field(service, SERVICE_SERVING, "serving")
    timeout = service_field(service, SERVICE_TIMEOUT, "affinity_timeout_s")
    mask = _table_size(_members_listed(cluster, local, serving)) - 1
    if <size_t>len(cluster) + len(local) + mask + 1 > block.size:
        return False
    entry.first_cluster = slot
    entry.n_cluster = len(cluster)
    if not _put_ids(m, &slot, cluster):
        return False
    entry.first_local = slot
    entry.n_local = len(local)
    if not _put_ids(m, &slot, local):
        return False
    block.first_member = slot
    block.member_mask = mask
    memset(&m.slots[slot], 0, (mask + 1) * sizeof(uint32_t))
    if not (_add_members(m, slot, mask, cluster) and _add_members(m, slot, mask, local)
            and (serving is cluster or _add_members(m, slot, mask, serving))):
        return False
    entry.affinity_timeout_ns = timeout * SECOND_NS
    m.any_affinity = m.any_affinity or timeout > 0
    return True


cdef bint _put_ids(Maps* m, uint32_t* slot, ids) except -1:
    """Backend ids into consecutive slots from slot[0] (moved past them); False for an id that
    is no backend."""
    cdef int64_t number
    for backend_id in ids:
        number = int_or_zero(backend_id)
        if not 1 <= number <= m.n_backends:
            return False
        m.slots[slot[0]] = <uint32_t>number
        slot[0] += 1
    return True


cdef bint _add_members(Maps* m, uint32_t table, uint32_t mask, ids) except -1:
    """Backend ids into the member table at slots[table] (mask + 1 slots, with room for all of
    them), each once; False for an id that is no backend."""
    cdef int64_t number
    cdef uint32_t i, found
    for backend_id in ids:
        number = int_or_zero(backend_id)
        if not 1 <= number <= m.n_backends:
            return False
        i = member_hash(<uint32_t>number) & mask
        found = m.slots[table + i]
        while found != 0 and found != number:
            i = (i + 1) & mask
            found = m.slots[table + i]
        m.slots[table + i] = <uint32_t>number
    return True


cdef _make_room(Maps* m, uint32_t needed):
    """Room for a block of `needed` slots at m.n_slots: the blocks compacted when more than
    half the slots in use are garbage, else the array grown (so it stays within a few times
    what the services use)."""
    cdef uint32_t live = m.n_slots - m.garbage_slots
    cdef uint32_t capacity, position, service_id
    cdef ServiceEntry* entry
    cdef ServiceBlock* block
    cdef uint32_t* slots
    if m.garbage_slots > m.n_slots // 2:
        capacity = 2 * (live + needed)
        slots = <uint32_t*>table_calloc(capacity, sizeof(uint32_t), WRITTEN_WHOLE)
        if slots == NULL:
            raise MemoryError("cannot compact the service slots")
        position = 1  # slots[0] stays service 0's empty member table
        for service_id in range(1, m.n_services + 1):
            entry, block = &m.services[service_id], &m.blocks[service_id]
            memcpy(&slots[position], &m.slots[entry.first_cluster], block.size * sizeof(uint32_t))
            entry.first_local = entry.first_local - entry.first_cluster + position
            block.first_member = block.first_member - entry.first_cluster + position
            entry.first_cluster = position
            position += block.size
        table_free(m.slots)
        m.slots = slots
        m.n_slots = position
        m.garbage_slots = 0
    else:
        capacity = max(m.n_slots + needed, 2 * m.slots_capacity)
        slots = <uint32_t*>table_realloc(m.slots, capacity, sizeof(uint32_t), WRITTEN_WHOLE)
        if slots == NULL:
            raise MemoryError("cannot grow the service slots")
        m.slots = slots
    m.slots_capacity = capacity


cdef void _inherit_may_flush(Maps* m, const Maps* old, const uint32_t* service_ids,
                             const uint32_t* backend_ids) noexcept nogil:
    """After a load: a new service may hold stale UDP flows when an old one renumbered to it
    might have, or when one of that old service's members is no member of the new one."""
    cdef uint32_t old_id, new_id, i, backend_id
    cdef const ServiceBlock* before
    for old_id in range(1, old.n_services + 1):
        new_id = service_ids[old_id]
        if new_id == 0 or m.may_flush[new_id]:
            continue
        if old.may_flush[old_id]:
            m.may_flush[new_id] = True
            continue
        before = &old.blocks[old_id]
        for i in range(before.member_mask + 1):
            backend_id = old.slots[before.first_member + i]
            if backend_id != 0 and not is_member(m, new_id, backend_ids[backend_id]):
                m.may_flush[new_id] = True
                break


def _id_mapping(old, new):
    """old id -> new id lists (index 0 unused) for services (by name and family) and backends
    (by address)."""
    if old is None:
        return [0], [0]
    # A name or address listed twice maps to its lowest id.
    by_name = {}
    for service in new.services:
        by_name.setdefault(_service_key(service), service_field(service, SERVICE_ID, "id"))
    services = [0] + [by_name.get(_service_key(service), 0) for service in old.services]
    backends = _merged_backend_ids(old.backends, new.backends)
    if backends is None:
        by_address = {}
        for backend in new.backends:
            by_address.setdefault((backend.ip, backend.port), backend.id)
        backends = [0] + [by_address.get((backend.ip, backend.port), 0) for backend in old.backends]
    return services, backends


cdef inline tuple _service_key(service):
    return service_field(service, SERVICE_NAME, "name"), service_field(service, SERVICE_FAMILY, "family")


cdef list _merged_backend_ids(list old, list new):
    """_id_mapping's backend list by a merge of the two lists, for lists in strictly increasing
    (ip, port) order (the compiler's: a million backends mapped without a dict of a million
    tuples); None as soon as either is found in any other order."""
    cdef list mapping = [0] * (len(old) + 1)
    cdef _Walk a = _Walk(old), b = _Walk(new)
    cdef int order
    while a.more() and b.more():
        order = _compare_keys(a.ip, a.port, b.ip, b.port)
        if order == 0:
            mapping[a.at + 1] = backend_field(new[b.at], BACKEND_ID, "id")
        if (order <= 0 and not a.step()) or (order >= 0 and not b.step()):
            return None
    while a.more():  # the rest of either list: still checked for its order
        if not a.step():
            return None
    while b.more():
        if not b.step():
            return None
    return mapping


cdef class _Walk:
    """A walk over backends that should be in strictly increasing (ip, port) order: the ip and
    port of the one at `at`, each read once (no key tuple is made)."""
    cdef list backends
    cdef Py_ssize_t at
    cdef object ip, port

    def __cinit__(self, list backends):
        self.backends, self.at = backends, 0
        if backends:
            self.ip = backend_field(backends[0], BACKEND_IP, "ip")
            self.port = backend_field(backends[0], BACKEND_PORT, "port")

    cdef inline bint more(self):
        return self.at < len(self.backends)

    cdef bint step(self) except -1:
        """To the next backend; False if it is not above the one before (the list is in another
        order)."""
        self.at += 1
        if self.at == len(self.backends):
            return True
        backend = self.backends[self.at]
        ip, port = backend_field(backend, BACKEND_IP, "ip"), backend_field(backend, BACKEND_PORT, "port")
        if _compare_keys(self.ip, self.port, ip, port) >= 0:
            return False
        self.ip, self.port = ip, port
        return True


cdef int _compare_keys(ip_a, port_a, ip_b, port_b) except -2:
    """-1, 0 or 1 as (ip_a, port_a) is below, equal to or above (ip_b, port_b)."""
    if ip_a != ip_b:
        return -1 if ip_a < ip_b else 1
    if port_a != port_b:
        return -1 if port_a < port_b else 1
    return 0


cdef bint _identity(const uint32_t[::1] new_ids) noexcept:
    """Every old id keeps its number (new_ids[i] == i)."""
    cdef uint32_t i
    for i in range(<uint32_t>new_ids.shape[0]):
        if new_ids[i] != i:
            return False
    return True


cdef uint64_t* _remapped(uint64_t* counts, list new_ids, uint32_t new_n) except? NULL:
    """Counters for ids 0..new_n, each old id's count moved to its new id."""
    cdef uint64_t* remapped = <uint64_t*>table_calloc(<size_t>new_n + 1, sizeof(uint64_t), PREALLOCATED)
    if remapped == NULL:
        raise MemoryError("cannot allocate counters")
    cdef Py_ssize_t old_id
    if counts != NULL:
        for old_id in range(1, len(new_ids)):
            if new_ids[old_id]:
                remapped[<uint32_t>new_ids[old_id]] += counts[old_id]
        table_free(counts)
    return remapped


# --------------------------------------------------------------------------------------------
# Map objects from plain columns (fastpath.compactmaps, the compiled-dump cache)

def objects_from_columns(type cls, tuple names, list columns):
    """[cls objects]: object k's field names[j] is columns[j][k], for every slot of `cls` named.
    Each object is made empty and its slots filled, as unpickling fills them (no __init__, no
    __post_init__); 12,000 objects in a fraction of a millisecond, where filling them through
    the slot descriptors from Python took 3. ValueError for columns of unequal lengths,
    TypeError for a name that is not a slot of `cls`."""
    cdef Py_ssize_t count = len(names), n = len(columns[0]) if columns else 0, i, j
    if len(columns) != count or any(type(column) is not list or len(column) != n
                                    for column in columns):
        raise ValueError(f"{cls.__name__}: one list per field, all of one length")
    offsets = [offset_of(cls, name) for name in names]
    objects = [None] * n
    for i in range(n):
        item = new_empty(cls)
        for j in range(count):
            fill_slot(item, <Py_ssize_t>offsets[j], (<list>columns[j])[i])
        objects[i] = item
    return objects
