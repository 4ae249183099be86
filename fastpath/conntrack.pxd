# Connection tracking: a fixed pool of slots, each entry reachable by its original tuple
# (client -> frontend) and its reply tuple (backend -> client) through one chained hash index,
# with CLOCK (second-chance) eviction: an approximation of least-recently-used order that keeps
# no list, so a packet of a tracked flow writes only its own entry.
#
# The table is one array of 64-byte, cache-line-aligned entries. The hash index lives in it:
# entry i also holds the chain heads of buckets 3i, 3i+1 and 3i+2, so there are three buckets
# per entry (1.5 per tuple: a full table's chains average 2/3 of a ref, and a lookup walks past
# another flow's entry, an extra cache miss, about a third of the time) and no separate bucket
# array. Memory is 64 bytes per entry, all told.
#
# A new entry takes its home slot when that is free: the entry whose line holds its orig tuple's
# bucket, which it then keeps at the front of the chain, so a lookup of the flow's forward
# packets reads one cache line instead of two (60 % of the entries of a table filled to 80 %
# find their home free). Else it takes a freed slot (a doubly linked free list, so a home slot
# on it comes off in place), else the lowest one never handed out.
#
# A tracked flow's packets are counted in its entry (`pending`, a byte the entry's line has
# spare) rather than in the engine's per-service and per-backend counters, a random line each
# when there are a million services; every 256 packets, and when the entry is deleted or the
# counters are read, the count goes to those counters.
#
# A chain link is a "ref": (slot + 1) * 2 + direction, so one bucket walk answers both "is this a
# known flow?" and "is this a reply?" for a packet, and 0 (CT_NIL) is the end of a chain: the
# zeroed table is an empty index.
#
# IPv4 and IPv6 flows share the pool. An IPv6 entry holds the 32-bit folds of its addresses (for
# hashing and a quick compare) and its whole addresses in a side array at the same slot, so an
# IPv4 entry stays one cache line.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from address cimport Addr, addr_eq
from aligned cimport PREALLOCATED, table_calloc, table_free
from hashing cimport bucket_hash

cdef enum:
    CT_NIL = 0                      # no ref: the end of a chain, an empty bucket
    CT_NO_SLOT = 0xFFFFFFFF         # no slot: the ends of the free list
    DIR_ORIG = 0
    DIR_REPLY = 1

cdef enum:
    STATE_FREE = 0
    STATE_SYN_SENT = 1
    STATE_ESTABLISHED = 2
    STATE_CLOSING = 3
    STATE_OTHER = 4
    STATE_COUNT = 5


cdef enum:
    FLAG_KIND_MASK = 0x07           # frontend kind + 1, as in the trace flags
    FLAG_MASQUERADED = 0x08
    FLAG_IPV6 = 0x10                # not trace flags: masked off before they reach the trace
    FLAG_REFERENCED = 0x20          # CLOCK's bit: a packet of the flow since the hand last passed
    TRACE_FLAGS = 0x0F


ctypedef struct CtEntry:            # 64 bytes, a cache line, aligned
    uint64_t last_seen_ns
    # Each direction's tuple: two adjacent addresses, then (below) two adjacent ports, at
    # 2 * direction from the first (ct_matches reads them so; ct_layout_ok checks it).
    uint32_t client_addr            # original tuple: client -> frontend
    uint32_t frontend_addr
    uint32_t backend_addr           # reply tuple: backend -> reply address (SNAT or client)
    uint32_t reply_addr             # (IPv6: fold6() of each; the addresses are in addrs6)
    uint16_t client_port
    uint16_t frontend_port
    uint16_t backend_port
    uint16_t reply_port
    uint8_t proto
    uint8_t state
    uint8_t flags                   # FLAG_KIND_MASK | FLAG_MASQUERADED | FLAG_IPV6 | FLAG_REFERENCED
    uint8_t pending                 # packets of the flow not yet added to the engine's counters
                                    # (ct_count_packet: the padding byte before `service`)
    uint32_t service                # ids for the per-service and per-backend counters
    uint32_t backend
    uint32_t chain[2]               # next ref in the bucket chain, per direction (a free slot
                                    # on the free list: its next and previous slots on it)
    uint32_t heads[3]               # not this entry's: the heads of buckets 3i, 3i+1, 3i+2


ctypedef struct CtAddrs6:           # an IPv6 entry's addresses, beside it
    Addr client
    Addr frontend
    Addr backend
    Addr reply


ctypedef struct CtStats:
    uint64_t inserts
    uint64_t evictions
    uint64_t expired
    uint64_t reopened
    uint64_t non_syn_miss
    uint64_t insert_failures
    uint64_t flushed
    uint64_t snat_failures
    uint64_t snat_unavailable
    uint64_t rate_limited


cdef enum:
    GUARD_WINDOW_NS = 1000000000    # the guard saves up at most one second of allowance


ctypedef struct FlowRateGuard:      # a token bucket in nanoseconds of packet time
    uint64_t cost_ns                # allowance one evicting insert takes (0: guard off)
    uint64_t allowance_ns
    uint64_t last_ns


ctypedef struct Conntrack:
    CtEntry* entries                # a table (aligned.pxd)
    CtAddrs6* addrs6                # NULL until IPv6 frontends are loaded
    uint32_t capacity
    uint32_t count
    uint32_t never_used             # the free list holds the free slots below this; a slot
                                    # from here on is free when its state is STATE_FREE
    uint32_t used_end               # slots [used_end, capacity) were never handed out
    uint32_t free_top               # the most recently freed slot on the free list (a free
                                    # slot's chain[0]: the next on it, chain[1]: the one before)
    uint32_t hand                   # CLOCK's hand: the next slot eviction looks at
    uint64_t* service_packets       # the engine's per-service and per-backend counters, where
    uint64_t* backend_packets       # entries' pending packets go (NULL: none yet)
    bint counted_in_entries         # a packet was counted in an entry since the last pass
    uint64_t timeout_ns[STATE_COUNT]
    FlowRateGuard guard
    CtStats stats


cdef inline int ct_init(Conntrack* ct, uint32_t capacity) noexcept nogil:
    ct.entries = <CtEntry*>table_calloc(capacity, sizeof(CtEntry), PREALLOCATED)
    if ct.entries == NULL:
        return -1
    ct.addrs6 = NULL
    ct.capacity = capacity
    ct.count = 0
    ct.never_used = 0
    ct.used_end = 0
    ct.free_top = CT_NO_SLOT
    ct.hand = 0
    ct.service_packets = NULL
    ct.backend_packets = NULL
    ct.counted_in_entries = False
    return 0


cdef inline void ct_free(Conntrack* ct) noexcept nogil:
    table_free(ct.entries)
    table_free(ct.addrs6)
    ct.entries = NULL
    ct.addrs6 = NULL


cdef inline int ct_enable_ipv6(Conntrack* ct) noexcept nogil:
    """Allocate the IPv6 side array, when the first IPv6 frontends are loaded."""
    if ct.addrs6 == NULL:
        ct.addrs6 = <CtAddrs6*>table_calloc(ct.capacity, sizeof(CtAddrs6), PREALLOCATED)
        if ct.addrs6 == NULL:
            return -1
    return 0


cdef inline uint32_t ct_slot(uint32_t ref) noexcept nogil:
    return (ref >> 1) - 1


cdef inline uint32_t ct_direction(uint32_t ref) noexcept nogil:
    return ref & 1


cdef inline uint32_t ct_home(const Conntrack* ct, uint64_t hash) noexcept nogil:
    """The slot whose entry holds the chain head of the hash's bucket (see ct_head)."""
    return <uint32_t>(((hash >> 32) * ct.capacity) >> 32)


cdef inline uint32_t* ct_head(const Conntrack* ct, uint64_t hash) noexcept nogil:
    """The chain head of the hash's bucket: the high 32 bits pick the entry holding it and bits
    16-31 one of its three heads, each by multiply-shift."""
    return &ct.entries[ct_home(ct, hash)].heads[(((hash >> 16) & 0xFFFF) * 3) >> 16]


cdef inline bint ct_layout_ok() noexcept nogil:
    """The tuples' addresses and ports follow each other as ct_matches reads them."""
    cdef CtEntry e
    return (<char*>&e.reply_addr - <char*>&e.client_addr == 3 * sizeof(uint32_t)
            and <char*>&e.frontend_addr - <char*>&e.client_addr == sizeof(uint32_t)
            and <char*>&e.backend_addr - <char*>&e.client_addr == 2 * sizeof(uint32_t)
            and <char*>&e.frontend_port - <char*>&e.client_port == sizeof(uint16_t)
            and <char*>&e.backend_port - <char*>&e.client_port == 2 * sizeof(uint16_t)
            and <char*>&e.reply_port - <char*>&e.client_port == 3 * sizeof(uint16_t))


cdef inline uint64_t ct_pair64(uint32_t first, uint32_t second) noexcept nogil:
    """Two adjacent 32-bit fields as one 64-bit word, as memory holds them (either byte order)."""
    cdef uint32_t pair[2]
    cdef uint64_t word
    pair[0] = first
    pair[1] = second
    memcpy(&word, pair, 8)
    return word


cdef inline uint32_t ct_pair32(uint16_t first, uint16_t second) noexcept nogil:
    cdef uint16_t pair[2]
    cdef uint32_t word
    pair[0] = first
    pair[1] = second
    memcpy(&word, pair, 4)
    return word


cdef inline bint ct_matches(const Conntrack* ct, uint32_t index, uint32_t direction,
                            uint32_t saddr, uint32_t daddr, uint16_t sport, uint16_t dport,
                            uint8_t proto, const Addr* src6, const Addr* dst6) noexcept nogil:
    """src6/dst6: the tuple's IPv6 addresses (saddr/daddr are their folds), NULL for IPv4.
    The direction's two addresses are compared as one word, its two ports as another, and
    picked by the direction's number rather than a branch on it (whether a packet is a reply
    is a coin toss to the branch predictor)."""
    cdef const CtEntry* e = &ct.entries[index]
    cdef uint64_t addrs
    cdef uint32_t ports
    memcpy(&addrs, &(&e.client_addr)[2 * direction], 8)
    memcpy(&ports, &(&e.client_port)[2 * direction], 4)
    cdef bint same = ((addrs == ct_pair64(saddr, daddr)) & (ports == ct_pair32(sport, dport))
                      & (e.proto == proto) & (((e.flags & FLAG_IPV6) != 0) == (src6 != NULL)))
    if not same or src6 == NULL:
        return same
    cdef const CtAddrs6* a = &ct.addrs6[index]
    if direction == DIR_ORIG:
        return addr_eq(&a.client, src6) and addr_eq(&a.frontend, dst6)
    return addr_eq(&a.backend, src6) and addr_eq(&a.reply, dst6)


cdef inline uint32_t ct_lookup(const Conntrack* ct, const uint32_t* head, uint32_t saddr,
                               uint32_t daddr, uint16_t sport, uint16_t dport, uint8_t proto,
                               const Addr* src6, const Addr* dst6) noexcept nogil:
    """The ref whose tuple equals the packet's, or CT_NIL. head: ct_head() of the tuple's hash."""
    cdef uint32_t ref = head[0]
    while ref != CT_NIL:
        if ct_matches(ct, ct_slot(ref), ct_direction(ref), saddr, daddr, sport, dport, proto,
                      src6, dst6):
            return ref
        ref = ct.entries[ct_slot(ref)].chain[ct_direction(ref)]
    return CT_NIL


cdef inline uint64_t ct_tuple_hash(const CtEntry* e, uint32_t direction) noexcept nogil:
    if direction == DIR_ORIG:
        return bucket_hash(e.client_addr, e.frontend_addr, e.client_port, e.frontend_port, e.proto)
    return bucket_hash(e.backend_addr, e.reply_addr, e.backend_port, e.reply_port, e.proto)


cdef inline void ct_chain_link(Conntrack* ct, uint32_t index, uint32_t direction) noexcept nogil:
    """Put the tuple first in its bucket's chain, or second when the first is another entry in
    the slot that holds the bucket: that one is found without reading another cache line, and
    stays so. (An entry's own reply tuple, linked just before, never counts: an entry whose two
    tuples are equal answers as ORIG.)"""
    cdef uint64_t hash = ct_tuple_hash(&ct.entries[index], direction)
    cdef uint32_t* link = ct_head(ct, hash)
    cdef uint32_t home = ct_home(ct, hash)
    if link[0] != CT_NIL and ct_slot(link[0]) == home and home != index:
        link = &ct.entries[ct_slot(link[0])].chain[ct_direction(link[0])]
    ct.entries[index].chain[direction] = link[0]
    link[0] = (index + 1) * 2 + direction


cdef inline void ct_chain_unlink(Conntrack* ct, uint32_t index, uint32_t direction) noexcept nogil:
    cdef uint32_t target = (index + 1) * 2 + direction
    cdef uint32_t* link = ct_head(ct, ct_tuple_hash(&ct.entries[index], direction))
    while link[0] != CT_NIL:
        if link[0] == target:
            link[0] = ct.entries[index].chain[direction]
            return
        link = &ct.entries[ct_slot(link[0])].chain[ct_direction(link[0])]


cdef inline void ct_touch(Conntrack* ct, uint32_t index) noexcept nogil:
    """A packet of the flow: the hand passes it over once more."""
    ct.entries[index].flags |= FLAG_REFERENCED


cdef inline void ct_add_to_counters(Conntrack* ct, const CtEntry* e, uint64_t packets) noexcept nogil:
    """Add packets of the entry's flow to its service's and backend's counters (id 0: none)."""
    if ct.service_packets == NULL:
        return
    if e.service:
        ct.service_packets[e.service] += packets
    if e.backend:
        ct.backend_packets[e.backend] += packets


cdef inline void ct_count_pending(Conntrack* ct, CtEntry* e) noexcept nogil:
    """Add the entry's pending packets to the counters."""
    if e.pending:
        ct_add_to_counters(ct, e, e.pending)
        e.pending = 0


cdef inline void ct_count_packet(Conntrack* ct, CtEntry* e) noexcept nogil:
    """Count a packet of the flow in its own entry, whose line the packet has in cache anyway:
    with a million services their counters are a random line each. Every 256 packets go to the
    counters at once (the byte wraps); the rest when the entry is deleted or the counters read."""
    e.pending += 1
    ct.counted_in_entries = True
    if e.pending == 0:
        ct_add_to_counters(ct, e, 256)


cdef inline void ct_delete(Conntrack* ct, uint32_t index) noexcept nogil:
    """Forget the entry, its pending packets counted; its slot goes on top of the free list
    (unless it is above never_used, where a free slot is known by its state alone)."""
    cdef CtEntry* e = &ct.entries[index]
    ct_count_pending(ct, e)
    ct_chain_unlink(ct, index, DIR_ORIG)
    ct_chain_unlink(ct, index, DIR_REPLY)
    e.state = STATE_FREE
    e.flags = 0
    ct.count -= 1
    if index >= ct.never_used:
        return
    e.chain[0] = ct.free_top
    e.chain[1] = CT_NO_SLOT
    if ct.free_top != CT_NO_SLOT:
        ct.entries[ct.free_top].chain[1] = index
    ct.free_top = index


cdef inline void ct_evict(Conntrack* ct) noexcept nogil:
    """CLOCK: from the hand on, clear the bit of each referenced entry and evict the first one
    without it. Only called on a full table, so every slot holds an entry."""
    cdef CtEntry* e
    while True:
        e = &ct.entries[ct.hand]
        ct.hand = ct.hand + 1 if ct.hand + 1 < ct.capacity else 0
        if e.flags & FLAG_REFERENCED:
            e.flags &= ~FLAG_REFERENCED
        else:
            ct_delete(ct, <uint32_t>(e - ct.entries))
            return


cdef inline uint32_t ct_take(Conntrack* ct, uint32_t home) noexcept nogil:
    """A free slot: `home` if it is free, else the most recently freed one on the free list,
    else the lowest free one from never_used on. A flow in its home slot is found by reading one
    cache line: its bucket's head and its entry share it."""
    cdef uint32_t index = home
    cdef CtEntry* e = &ct.entries[home]
    if e.state == STATE_FREE:
        if home < ct.never_used:  # on the free list: unlink it
            if e.chain[1] == CT_NO_SLOT:
                ct.free_top = e.chain[0]
            else:
                ct.entries[e.chain[1]].chain[0] = e.chain[0]
            if e.chain[0] != CT_NO_SLOT:
                ct.entries[e.chain[0]].chain[1] = e.chain[1]
    elif ct.free_top != CT_NO_SLOT:
        index = ct.free_top
        ct.free_top = ct.entries[index].chain[0]
        if ct.free_top != CT_NO_SLOT:
            ct.entries[ct.free_top].chain[1] = CT_NO_SLOT
    else:
        # Home slots taken above never_used are passed over (a table with room has a free
        # slot up there when the free list is empty).
        while ct.entries[ct.never_used].state != STATE_FREE:
            ct.never_used += 1
        index = ct.never_used
        ct.never_used += 1
    if index >= ct.used_end:
        ct.used_end = index + 1
    ct.count += 1
    return index


cdef inline CtEntry* ct_next_in_use(Conntrack* ct, uint32_t* index, uint32_t* seen) noexcept nogil:
    """The next entry in use from slot index[0] on (index[0] moves past it), NULL after the last
    one: start both at 0 to pass over every tracked entry (the pass ends once `seen` has counted
    them all; entries sit anywhere below used_end)."""
    cdef CtEntry* e
    while index[0] < ct.used_end and seen[0] < ct.count:
        e = &ct.entries[index[0]]
        index[0] += 1
        if e.state != STATE_FREE:
            seen[0] += 1
            return e
    return NULL


cdef inline bint ct_expired(const Conntrack* ct, const CtEntry* e, uint64_t now_ns) noexcept nogil:
    # Capture timestamps may step backwards: an earlier packet never expires an entry.
    return now_ns > e.last_seen_ns and now_ns - e.last_seen_ns > ct.timeout_ns[e.state]


cdef inline bint ct_tuple_present(const Conntrack* ct, uint32_t saddr, uint32_t daddr,
                                  uint16_t sport, uint16_t dport, uint8_t proto,
                                  const Addr* src6, const Addr* dst6) noexcept nogil:
    cdef const uint32_t* head = ct_head(ct, bucket_hash(saddr, daddr, sport, dport, proto))
    return ct_lookup(ct, head, saddr, daddr, sport, dport, proto, src6, dst6) != CT_NIL

cdef inline void ct_guard_init(Conntrack* ct, uint64_t new_flows_per_second) noexcept nogil:
    ct.guard.cost_ns = GUARD_WINDOW_NS // new_flows_per_second if new_flows_per_second else 0
    ct.guard.allowance_ns = GUARD_WINDOW_NS
    ct.guard.last_ns = 0


cdef inline bint ct_guard_allows(Conntrack* ct, uint64_t now) noexcept nogil:
    """The new-flow rate guard: may a new flow evict an entry of the full table now? At most
    the configured rate of such evictions per second of packet time (a burst of one second's
    worth), so a flood of new flows cannot churn established ones out of the table."""
    cdef FlowRateGuard* g = &ct.guard
    if g.cost_ns == 0:
        return True
    if now > g.last_ns:
        if now - g.last_ns >= GUARD_WINDOW_NS - g.allowance_ns:
            g.allowance_ns = GUARD_WINDOW_NS
        else:
            g.allowance_ns += now - g.last_ns
        g.last_ns = now
    if g.allowance_ns >= g.cost_ns:
        g.allowance_ns -= g.cost_ns
        return True
    ct.stats.rate_limited += 1
    return False


cdef inline bint ct_insert(Conntrack* ct, const CtEntry* flow,
                           const CtAddrs6* addrs6) noexcept nogil:
    """Track a new flow (addrs6: its IPv6 addresses, NULL for IPv4). Fails (False) when its
    reply tuple is already a tracked tuple."""
    if ct_tuple_present(ct, flow.backend_addr, flow.reply_addr, flow.backend_port,
                        flow.reply_port, flow.proto,
                        &addrs6.backend if addrs6 != NULL else NULL,
                        &addrs6.reply if addrs6 != NULL else NULL):
        ct.stats.insert_failures += 1
        return False
    if ct.count == ct.capacity:
        ct.stats.evictions += 1
        ct_evict(ct)
    cdef uint32_t index = ct_take(ct, ct_home(ct, ct_tuple_hash(flow, DIR_ORIG)))
    cdef CtEntry* e = &ct.entries[index]
    # The slot's bucket heads belong to the index, not to the flow: keep them.
    cdef uint32_t heads0 = e.heads[0], heads1 = e.heads[1], heads2 = e.heads[2]
    e[0] = flow[0]
    e.heads[0] = heads0
    e.heads[1] = heads1
    e.heads[2] = heads2
    e.flags &= ~FLAG_REFERENCED
    if addrs6 != NULL:
        ct.addrs6[index] = addrs6[0]
    # Reply first: chains are LIFO, so an entry whose two tuples are equal answers as ORIG.
    ct_chain_link(ct, index, DIR_REPLY)
    ct_chain_link(ct, index, DIR_ORIG)
    ct.stats.inserts += 1
    return True
