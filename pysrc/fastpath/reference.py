"""Pure-Python twin of the compiled core: the readable specification and the differential oracle.

Given the same `Maps`, capacity and packets, `ReferenceEngine` and the compiled
`fastpath._core.Engine` must produce the same verdicts, reasons, counters and bytes. This docstring
is the specification both implement.

Python interface (identical for both engines)
---------------------------------------------
Engine(maps, ct_capacity=DEFAULT_CT_CAPACITY, timeouts_s=None, new_flow_rate=0)
                   ct_capacity >= 1; new_flow_rate 0 (guard off) .. 10**9 (see step d2)
  .load(maps)      replace frontends/services/backends between batches (see "load(maps)");
                   a prefix length outside 0..32 (IPv4) or 0..128 (IPv6) in source_ranges,
                   node.pod_cidrs or node.service_cidrs, or an id out of place or naming
                   nothing (a backend's or service's id not its position + 1, a set's backend
                   id or a frontend's service id out of range: Maps.check()'s error, whatever
                   was changed after the Maps was made) -> ValueError
  .update_service(service, new_backends=())
                   replace one service's backend sets in place between batches, no id changing
                   (see "update_service")
  .process(...)    one batch, see below (the compiled core releases the GIL inside)
  .counters()      {"verdicts": {name: n}, "reasons": {name: n}, "services": [n for id 1..],
                    "backends": [n for id 1..], "conntrack": {...}, "affinity": {...},
                    "fragments": {...}}
                   (every Verdict/Reason name present, zeros included)
Arrays: offsets array('Q'), lengths array('I'), timestamps_ns array('Q'), verdicts and reasons
array('B'), trace services and backends array('I'), flags array('B') (any writable buffer of those
C types works).

Batch interface
---------------
process(buf, offsets, lengths, timestamps_ns, verdicts, reasons, linktype,
        services=None, backends=None, flags=None)
  buf: writable bytes-like holding packets; packet i is buf[offsets[i] : offsets[i] + lengths[i]]
  (lengths are captured lengths). Packets are rewritten in place. verdicts[i] / reasons[i] receive
  a `Verdict` / `Reason` number. timestamps_ns[i] is the packet time in ns since the epoch.

Parsing (never reads outside the packet's captured bytes)
----------------------------------------------------------
Link types (pcap LINKTYPE_*):
  1 Ethernet: 14-byte header; then while the ethertype is 0x8100, 0x88A8 or 0x9100, skip a 4-byte
    tag (the inner ethertype is the tag's last 2 bytes). Header (incl. tags) past the captured
    bytes -> DROP_TRUNCATED.
  113 Linux cooked v1: 16-byte header, protocol at bytes 14-15.
  276 Linux cooked v2: 20-byte header, protocol at bytes 0-1.
  0 BSD loopback/NULL: 4-byte address family in either byte order; 2 means IPv4,
    24, 28 or 30 mean IPv6; anything else -> PASS_NOT_IP.
  101 and 228 raw IP: no L2 header; the IP version nibble decides (4 -> IPv4, 6 -> IPv6,
    else PASS_NOT_IP; an empty packet -> DROP_TRUNCATED).
  any other link type -> PASS_UNKNOWN_LINK.
  Short cooked/NULL headers -> DROP_TRUNCATED.
L3 protocol: 0x0800 IPv4 and 0x86DD IPv6 continue (see "IPv6" for the latter); anything else
PASS_NOT_IP.
IPv4 (at offset l3):
  fewer than 20 captured bytes -> DROP_TRUNCATED
  version != 4 or IHL < 5 -> DROP_BAD_IP_HEADER
  IHL*4 past the captured bytes -> DROP_TRUNCATED
  total length < IHL*4 -> DROP_BAD_IP_HEADER
  (total length beyond the captured bytes is a snaplen cut, not an error.)
  later fragment (fragment offset != 0) -> see "IPv4 fragments" (no transport header parsed)
  protocol not TCP(6)/UDP(17)/SCTP(132)/ICMP(1) -> PASS_UNSUPPORTED
  the L4 region is [l4, l3 + total length) clipped to the captured bytes.
TCP: fewer than 20 bytes in the L4 region -> DROP_TRUNCATED; data offset < 5 or data offset*4 >
  total length - IHL*4 -> DROP_BAD_L4_HEADER. (The options need not be captured.)
UDP: fewer than 8 bytes in the L4 region -> DROP_TRUNCATED; UDP length field < 8 ->
  DROP_BAD_L4_HEADER.
SCTP: fewer than 12 bytes (the common header) in the L4 region -> DROP_TRUNCATED. Ports at
  bytes 0-1 and 2-3 as for TCP/UDP. Conntrack treats SCTP like UDP (state OTHER, the "other"
  timeout), but SCTP flows are never flushed (only UDP ones, step 3b).
Flags used: SYN = 0x02, ACK = 0x10, FIN = 0x01, RST = 0x04. "Pure SYN" = SYN set and ACK clear.

Hashes (selection, conntrack buckets), all arithmetic modulo 2**64:
  fmix64(x): x ^= x >> 33; x *= 0xFF51AFD7ED558CCD; x ^= x >> 33; x *= 0xC4CEB9FE1A85EC53; x ^= x >> 33
  flow_hash(saddr, daddr, sport, dport, proto) =
      fmix64(((fold(saddr) << 32) | fold(daddr)) ^ fmix64((sport << 24) | (dport << 8) | proto))
  bucket_hash(saddr, daddr, sport, dport, proto) (the conntrack index's; never selects) =
      x = (((fold(saddr) << 32) | fold(daddr)) ^ ((sport << 24) | (dport << 8) | proto) * 0x9E3779B97F4A7C15)
          * 0xD6E8FEB86659FD93;  x ^ (x >> 32)
  fold(a) = a for IPv4; for IPv6 the XOR of the four big-endian 32-bit words of the 128-bit
  address (so IPv4 hashing is unchanged; conntrack tuples still compare whole addresses).
  backend choice for a service with n backends: backends[((flow_hash & 0xFFFFFFFF) * n) >> 32]
  where flow_hash is over the packet's own 5-tuple (client, frontend ip, client port,
  frontend port, proto).

Conntrack
---------
A fixed pool of `capacity` slots (0 to capacity - 1) with CLOCK (second-chance) eviction, an
approximation of least-recently-used order. An entry holds:
  orig tuple  (client ip, frontend ip, client port, frontend port, proto)
  reply tuple (backend ip, reply-dst ip, backend port, reply-dst port, proto) where reply-dst is
              the SNAT address and port when the flow is masqueraded, else the client's
  snat ip/port (0 when not masqueraded), frontend kind, service id, backend id, state,
  last_seen_ns, its slot, and a `referenced` bit.
Slots: a new entry takes its home slot when that is free: ((bucket_hash(orig tuple) >> 32) *
capacity) >> 32, the slot whose cache line also holds the orig tuple's hash bucket, so a lookup
of the orig tuple reads one line. Else it takes the most recently freed slot still free (deleting
an entry frees its slot; slots freed at or above the "never used" mark below are not remembered),
else the lowest free slot at or above the never-used mark (which starts at 0 and moves past the
slot handed out). It starts unreferenced. A packet of a tracked flow (step 4) sets the
bit. Eviction (a new flow into a table holding `capacity` entries, so every slot is in use): a
hand, at slot 0 when the engine is made, looks at the entry in its slot and moves on one slot
(after capacity - 1 comes 0); a referenced entry loses its bit and the hand goes on, the first
unreferenced one is evicted. The new entry then takes that slot, right behind the hand: a full
turn of the hand passes before it can be evicted, and a flow with packets in that turn is passed
over once more. (Exact LRU would need a list relinked by every packet, two more cache lines
written per packet.)
States and timeouts: SYN_SENT 60 s, ESTABLISHED 8000 s, CLOSING 10 s, OTHER (UDP) 60 s
(overridable per engine: timeouts_s={"syn_sent", "established", "closing", "other"}).
An entry is expired when ts - last_seen_ns > timeout(state) (ts earlier than last_seen is never
expired).

Per TCP/UDP IPv4 packet with key K = (src ip, dst ip, src port, dst port, proto):
 1. Look K up among orig tuples (direction ORIG) and reply tuples (direction REPLY).
 2. Found but expired: delete it (ct_expired += 1) and go on as not found.
 3. Found ORIG, TCP, pure SYN, entry state CLOSING: delete it (ct_reopened += 1), not found.
 3b. Found (either direction), UDP, and the entry's backend id is no member of its service: in
    none of the service's backends, local_backends and serving (an entry whose service id is 0
    has no members). Its backend stopped serving since the flow was tracked (load() or
    update_service() changed the sets): delete the entry (ct_flushed += 1) and go on as not
    found, so an ORIG packet selects again and a reply is handled like any untracked packet.
    TCP and SCTP entries are never flushed: a terminating backend drains, and a vanished one
    keeps its flows as in kube-proxy. (The sets a new flow may be sent to count too, so a flow
    to a ready endpoint that is not serving, as with publishNotReadyAddresses, stays. Members
    are those when the packet arrives: a backend that left and came back since keeps its flow.)
 4. Found: last_seen = max(last_seen, ts); the entry is referenced; state update
    (TCP only): FIN or RST -> CLOSING; else if REPLY and state SYN_SENT -> ESTABLISHED.
    ORIG: DNAT (dst := backend ip/port; and src := snat ip/port when masqueraded), reason
    CT_ESTABLISHED.
    REPLY: REVNAT (src := frontend ip/port; and dst := client ip/port when masqueraded), reason
    CT_REPLY.
 5. Not found: a new flow, see "New flows". Only a packet that ends in NEW_FLOW creates state.

New flows (policy is in the maps; the core follows these steps in this order)
--------------------------------------------------------------------------------
 a. Frontend lookup (dst ip, dst port, proto). Miss: dst in node.service_ips ->
    REJECT_UNKNOWN_PORT; else dst in a node.service_cidrs prefix (an address of the service
    CIDRs no service has) -> DROP_UNALLOCATED_SERVICE_IP (trace zeros); else PASS_NO_SERVICE.
 b. The frontend has source_ranges and src ip is in none of them -> DROP_SOURCE_RANGE.
    (src is in (network, length) when their top `length` bits are equal; length 0: every src.)
 c. The service's cluster set (Service.backends) is empty -> REJECT_NO_ENDPOINT.
 d. Source class: "pod" when src ip is in a node.pod_cidrs prefix; "node" when src ip is one of
    node.local_ips (and not pod); else "other". Set and masquerade:
      ClusterIP frontend: set = local_backends if local_policy else backends;
                          masq = node.masquerade_all or (node.pod_cidrs holds a prefix of
                          the packet's family and class is not pod).
      other kinds, local_policy false: set = backends, masq = true.
      other kinds, local_policy true: pod -> backends, no masq; node -> backends, masq;
                          other -> local_backends, no masq (the client IP is preserved).
    The set is empty -> DROP_NO_LOCAL_ENDPOINT.
 d2. New-flow rate guard (new_flow_rate R > 0; off by default, as in kube-proxy): when
    conntrack holds `capacity` entries (a new flow would evict one), the guard must allow it.
    The guard is a token bucket in ns of packet time: cost = 10**9 // R, allowance starts at
    10**9 with last = 0; on each check, if ts > last: allowance = min(10**9, allowance + ts -
    last), last = ts; then allowance >= cost -> allowance -= cost, allowed; otherwise
    DROP_FLOW_RATE (ct_rate_limited += 1; trace: service and kind, backend 0). So a flood of
    new flows into a full table evicts at most R entries per second (plus one second's burst)
    and established flows stay; with free room nothing is limited. A check is made (and
    allowance taken) even when the flow then ends up not inserted (h, i).
 e. Session affinity (Service.affinity_timeout_s > 0): look up (src ip, service id) in the
    affinity table. An entry older than the timeout (ts - last_used_ns > timeout) is deleted
    (affinity_expired += 1; timeout = affinity_timeout_s * 10**9 ns). A live entry whose backend
    (ip, port) is in the set chooses the set's first backend with that (ip, port); otherwise
    choose by hash. Then the entry is written (backend, last_used_ns = ts) and becomes
    most recently used; a full table (capacity = ct capacity) evicts its least recently used
    entry first (affinity_evictions += 1).
    Without affinity: backend = set[((flow_hash(K) & 0xFFFFFFFF) * len(set)) >> 32].
 f. Hairpin: the chosen backend's ip equals src ip -> masq = true.
 g. masq and node.primary_ip == 0 -> masq = false (nothing to masquerade to; counted in
    snat_unavailable).
 h. SNAT port (masq only): start from the client port p; while the reply tuple (backend ip,
    primary ip, backend port, p, proto) is present in conntrack, p = 1024 + (p - 1024 + 1) %
    64512 for p >= 1024, p + 1 below 1024; at most 64 tries (64 values of p checked, the
    client port first), then give up (snat_failures += 1): the packet is still translated with
    the last p tried and nothing is inserted (step i still counts non_syn_miss; no insert
    failure, no eviction). "Present" (here and in i): equal to the orig or reply tuple of an
    entry in the table, expired or not.
 i. TCP and not pure SYN -> ct_non_syn_miss += 1. Initial state: UDP OTHER; TCP with FIN or RST
    -> CLOSING; pure SYN -> SYN_SENT; other TCP -> ESTABLISHED. Insert: the reply tuple present
    in the table (without masq) -> not inserted, ct_insert_failures += 1; otherwise evict an
    entry by CLOCK if the table holds `capacity` entries (ct_evictions += 1), insert
    (ct_inserts += 1), last_seen = ts, unreferenced.
 j. DNAT (+ SNAT when masq), reason NEW_FLOW.

REJECT packets are not rewritten and are left out of the output; the caller inserts the reply
built by fastpath.icmp.port_unreachable right after them.

load(maps): between batches
---------------------------
Old ids are mapped to new ones by name (services by (Service.name, Service.family), backends by
(ip, port); the lowest new id with that key); ids with no counterpart become 0. Conntrack, affinity and fragment
entries, and the per-service and per-backend counters, follow the mapping (a counter whose id has
no counterpart is dropped; counters of old ids mapped to one new id add up; a fragment entry
keeps its verdict and addresses, so later fragments still follow their first one). Affinity
entries whose service has no counterpart are deleted (uncounted); of two affinity entries mapped
to one key the most recently used stays. LRU orders, conntrack slots, bits and the hand are kept.
Nothing is deleted at load: a UDP entry whose backend is no member of its (new) service any more
is flushed by its own next packet (step 3b), so load() costs nothing per tracked flow beyond the
renumbering. Until then such an entry is an entry like any other: it ages, can be evicted, is
"present" for steps h and i, and ICMP errors about it are still translated.

update_service(service, new_backends=()): between batches
----------------------------------------------------------
Replaces the backends, local_backends, serving and affinity_timeout_s of the loaded service
with id service.id, which must have the same name and family, after appending new_backends to
the backend table (ids len(backends) + 1, ... in order). Nothing else changes: no id is
renumbered, so conntrack, affinity and fragment entries and every counter stay valid (a new
backend's counter starts at 0), and a backend left in no set stays in the table, unused, until
the next load(). New flows choose from the new sets at once; a tracked UDP flow whose backend
left the service's sets is flushed by its next packet (step 3b), as after load(); TCP drains.
Anything fastpath.maps.check_service_update refuses (an unknown service id, another name or
family, a new backend out of sequence or with a bad address or port, an unknown backend id or
one of the other family) -> ValueError, before anything changes.

IPv4 fragments
--------------
A packet is a fragment when MF is set or its fragment offset is not 0.
First fragment (offset 0, MF set): parsed and processed exactly like an unfragmented packet (its
  L4 region is the fragment's payload; so an SCTP first fragment whose own payload is all
  captured has its CRC32c recomputed over that payload alone). After its verdict (including a
  drop for a bad or cut transport header: any first fragment whose IPv4 header passed), when
  it is not PASS, or when it is PASS and daddr is the address of a frontend or one of
  node.service_ips (so the node's own fragmented traffic to such an address passes whole,
  instead of its later fragments being dropped as DROP_FRAG_NOT_FOUND), the fragment table
  records key (saddr, daddr, IP id, proto) — the addresses
  as received, before any rewrite — -> (verdict, saddr and daddr after the rewrite, service id,
  backend id, trace flags). An existing entry with that key is overwritten. The entry becomes
  most recently used; a full table (capacity FRAG_CAPACITY = 8192) first evicts its least
  recently used entry (fragments.evictions += 1). fragments.tracked += 1 per record.
Later fragment (offset != 0): only the IPv4 header is parsed (the same header checks as any
  IPv4 packet; the protocol may be anything). Look up (saddr, daddr, IP id, proto):
  - found: the entry becomes most recently used; fragments.followed += 1; its service/backend
    are counted and traced like a tracked packet. Verdict DNAT -> rewrite saddr/daddr to the
    entry's (IPv4 header checksum updated incrementally; destination first, then source),
    reason FRAG_DNAT; REVNAT -> the same, reason FRAG_REVNAT; PASS -> PASS_FRAGMENT
    (untouched); DROP or REJECT -> reason FRAG_DROP (no ICMP reply: only the first fragment is
    answered).
  - not found: fragments.not_found += 1; daddr is the address of any frontend or one of
    node.service_ips -> DROP_FRAG_NOT_FOUND (its ports are unknowable, so it cannot be routed);
    otherwise PASS_FRAGMENT (untouched).
  Fragments never touch conntrack.

ICMP errors about tracked flows
-------------------------------
IPv4 protocol 1. The L4 region has fewer than 8 bytes -> DROP_TRUNCATED. Types other than 3
(destination unreachable), 11 (time exceeded) and 12 (parameter problem) -> PASS_UNSUPPORTED
(as before). For an error, the quoted packet starts at L4 byte 8 and its captured bytes end where
the error's L4 region ends. It must pass the IPv4 header checks (at least 20 captured bytes,
version 4, IHL >= 5, IHL*4 captured, total length >= IHL*4), have protocol TCP/UDP/SCTP, be no
later fragment (offset 0), and its own L4 region [quoted l4, quoted l3 + quoted total length)
clipped to the captured bytes must hold at least 4 bytes (the ports); otherwise
PASS_UNSUPPORTED. ("Captured" below, for the quoted checksums, means inside that region.)
Let the quoted tuple be (qs, qd, qsp, qdp, proto). Look up the reversed tuple (qd, qs, qdp, qsp,
proto) in conntrack WITHOUT changing anything (no LRU touch, no last_seen update, no state
change; an expired entry counts as not found and is not deleted):
  - matches an entry's reply tuple (the quoted packet is a translated forward packet: client or
    SNAT address -> backend; the error travels towards the client): quoted destination
    (qd, qdp) := (frontend ip, frontend port); if masqueraded, quoted source (qs, qsp) :=
    (client ip, client port). Outer source := frontend ip if it equals the backend ip (the
    endpoint itself answered); outer destination := client ip if masqueraded and it equals the
    SNAT ip. Verdict REVNAT, reason ICMP_ERROR_REPLY.
  - matches an entry's orig tuple (the quoted packet is a reply as the client saw it:
    frontend -> client; the error travels from the client side): quoted source (qs, qsp) :=
    (backend ip, backend port); if masqueraded, quoted destination (qd, qdp) := (SNAT ip, SNAT
    port). Outer destination := backend ip if it equals the frontend ip; outer source := SNAT ip
    if masqueraded and it equals the client ip. Verdict DNAT, reason ICMP_ERROR_FORWARD.
  - no match: PASS_NO_SERVICE.
  Attributed (counters and trace) to the entry's service and backend, with its flags.
Checksums, all incremental: the quoted IPv4 header checksum for the quoted address changes;
the quoted TCP checksum (quoted L4 bytes 16-17) or UDP checksum (bytes 6-7; 0 stays 0, a result
of 0 becomes 0xFFFF) for the quoted address and port changes, only when those 2 bytes are
captured; a quoted SCTP CRC is left alone; the outer IPv4 header checksum for the outer address
changes; the ICMP checksum for every 16-bit word of the ICMP message that changed (quoted
addresses, ports, quoted IP checksum, quoted L4 checksum). Order of the quoted changes:
destination address and port, then source address and port, then the checksums. An outer
address is rewritten (and enters the outer checksum) only when its condition above holds; the
quoted fields named above are always rewritten (even to the same value).

New reasons (append to Reason):
  14 ICMP_ERROR_FORWARD (DNAT)   15 ICMP_ERROR_REPLY (REVNAT)
  16 FRAG_DNAT (DNAT)            17 FRAG_REVNAT (REVNAT)           18 FRAG_DROP (DROP)
  19 DROP_FRAG_NOT_FOUND (DROP)  20 PASS_FRAGMENT (PASS)
PASS_UNSUPPORTED keeps covering non-TCP/UDP/SCTP/ICMP protocols and non-error ICMP.
counters(): new section "fragments": {"tracked", "evictions", "followed", "not_found", "entries"}.

Rewrite (RFC 1624 incremental checksums, HC' = ~(~HC + ~m + m'), one 16-bit word at a time)
  For each changed address then its port (destination first, then source): IPv4 header
  checksum for the address; TCP/UDP checksum for the address (pseudo-header) and the port.
  Every word of a rewritten field is updated, even one whose value does not change.
  UDP checksum: 0 stays 0 (no checksum); otherwise updated like TCP, and a result of 0 is
  written as 0xFFFF (after all updates of the packet).
  SCTP: the IPv4 header checksum as above; the CRC32c (Castagnoli, reflected, initial value and
  final xor 0xFFFFFFFF, stored least significant byte first at L4 bytes 8-11) is recomputed over
  the whole SCTP packet [l4, l3 + total length) with the checksum field as zero, after the
  ports are rewritten, if the whole packet was captured; a snaplen-cut SCTP packet keeps its
  old CRC (it cannot be recomputed from part of the packet).

IPv6
----
Addresses: an IPv6 address is the map integer IPV6 | its 128-bit value (fastpath.maps), so it
never equals an IPv4 address; every table (frontends, node.service_ips, node.local_ips,
conntrack tuples, affinity clients, fragment keys) compares whole addresses, family included.
A prefix (network, length) contains only addresses of its own family: for IPv6 the top `length`
of the 128 bits are equal (0..128). Everything not said here is as for IPv4, with these
substitutions: the masquerade address of an IPv6 flow is node.primary_ip6 (0: none, counted in
snat_unavailable as for IPv4); ICMP is ICMPv6.
Header (at offset l3, `captured` = bytes captured from l3 on):
  fewer than 40 captured bytes -> DROP_TRUNCATED
  version != 6 -> DROP_BAD_IP_HEADER
  source or destination in ::ffff:0:0/96 (IPv4-mapped: never on the wire) -> DROP_BAD_IP_HEADER
  the datagram ends at end = 40 + payload length (bytes 4-5); beyond the captured bytes is a
  snaplen cut, not an error.
Extension headers: nh = byte 6, off = 40. While nh is 0 (hop-by-hop), 43 (routing),
  60 (destination options), 44 (fragment) or 51 (AH):
    at most 8 extension headers are walked: a 9th -> PASS_UNSUPPORTED
    off + 8 > captured -> DROP_TRUNCATED (every such header is at least 8 bytes)
    its length: fragment 8; AH (byte 1 + 2) * 4; the others (byte 1 + 1) * 8 (AH is only
      walked over: a translated packet's AH no longer verifies, as with any NAT)
    off + length > end -> DROP_BAD_IP_HEADER
    routing header with segments left (byte 3) != 0 -> PASS_UNSUPPORTED: the packet is not at
      its final destination, and its transport checksum covers the routing header's last
      address, not the destination field a rewrite would change
    fragment header (a second one in the chain -> DROP_BAD_IP_HEADER): offset = bytes 2-3 >> 3,
      M = byte 3 & 1, id = bytes 4-7 (32 bits), its nh = byte 0. offset != 0 -> a later fragment
      (see below; nothing after the fragment header is parsed). offset 0 and M set -> a first
      fragment with key proto = this header's nh. offset 0, M clear (an atomic fragment, RFC
      6946) -> not a fragment.
    nh = byte 0 of the header; off += length.
  Then proto = nh; proto not TCP(6)/UDP(17)/SCTP(132)/ICMPv6(58) -> PASS_UNSUPPORTED. The L4
  region is [l3 + off, l3 + end) clipped to the captured bytes (empty when off is past them).
Transport: as for IPv4, plus: UDP with checksum 0 -> DROP_BAD_L4_HEADER (RFC 8200 8.1 forbids
  it over IPv6), checked after the UDP length. ICMPv6: fewer than 8 bytes in the L4 region ->
  DROP_TRUNCATED; types 1 (destination unreachable), 2 (packet too big), 3 (time exceeded) and
  4 (parameter problem) are errors; other types -> PASS_UNSUPPORTED.
Rewrite: no IP header checksum. The TCP/UDP checksum covers the addresses through the IPv6
  pseudo-header: every 16-bit word (8 per address) of a rewritten address enters it, with the
  port, as for IPv4. SCTP: the CRC32c is recomputed over [l4, l3 + end) when all of it is
  captured, as for IPv4.
Fragments: the table is shared with IPv4 (one capacity). The key is (saddr, daddr, id, proto)
  with the 32-bit id and the fragment header's nh. A first fragment is processed like an
  unfragmented packet and recorded under the IPv4 rules, where "whose IPv4 header passed" means
  whose IPv6 header and whole extension header chain passed the checks above (a first fragment
  whose chain fails after its fragment header is not recorded; one whose protocol is then not
  TCP/UDP/SCTP/ICMPv6 is a PASS_UNSUPPORTED first fragment, as for IPv4). A later fragment looks
  its key up like an IPv4 later fragment; FRAG_DNAT/FRAG_REVNAT rewrite the two addresses
  (destination, then source; there is no checksum to update: the transport checksum travels in
  the first fragment).
ICMPv6 errors about tracked flows: the quoted packet starts at L4 byte 8 and its captured bytes
  end where the error's L4 region ends. It must pass the IPv6 header checks above (40 captured
  bytes, version 6, no IPv4-mapped address), its extension headers are walked by the same rules
  against its own payload length, and it must be TCP/UDP/SCTP, not a later fragment, with at
  least 4 bytes (the ports) in its L4 region; otherwise (any failure, including a quote of the
  other IP version, both ways) PASS_UNSUPPORTED. (Its L4 region: from the end of its extension
  headers to its own l3 + 40 + payload length, clipped to the quote's captured bytes.) Lookup,
  verdicts, reasons, the address rules and the quoted TCP/UDP checksum updates are those of IPv4
  (a quoted UDP checksum 0 stays 0). There is no IP header checksum, quoted or outer. The ICMPv6
  checksum covers the outer pseudo-header too: it is updated, one word at a time, for every word
  of the rewritten quoted fields in the IPv4 order (destination address (8 words) and port,
  source address and port, then the quoted L4 checksum), then for every word of each rewritten
  outer address (destination, then source).
REJECT of an IPv6 packet: the reply is an ICMPv6 destination unreachable, code 4 (port
  unreachable), built by fastpath.icmp.port_unreachable.

Per-packet trace (optional arrays given to process)
----------------------------------------------------
services[i]: the service id the packet was attributed to (0: none); backends[i]: the backend id
(0: none); flags[i]: bits 0-2 frontend kind + 1 (ClusterIP 1, NodePort 2, LoadBalancer 3,
ExternalIP 4; 0: no frontend), bit 3: masqueraded. NEW_FLOW, CT_* and DROP_NO_LOCAL_ENDPOINT,
DROP_SOURCE_RANGE, REJECT_NO_ENDPOINT fill what they know; ICMP_ERROR_* give the conntrack
entry's, FRAG_DNAT/FRAG_REVNAT/FRAG_DROP the first fragment's (whatever it got, zeros included);
other reasons give zeros. (CT_* give the entry's ids and kind, 0 for an id without counterpart
after load(); the three drops/rejects give the frontend's service and kind, backend 0 and bit 3
clear: bit 3 is set only on translated packets of a masqueraded flow.) Each array may be given or
None independently.

Counters
--------
packets per verdict, per reason; per service: packets attributed to it (as in the trace); per
backend: packets DNATed or REVNATed to/from it; conntrack: inserts, evictions, expired,
reopened, non_syn_miss, insert_failures, flushed, snat_failures, snat_unavailable,
rate_limited, entries (current); affinity: evictions, expired, entries (current); fragments:
tracked, evictions, followed, not_found, entries (current).
"""
from __future__ import annotations

from array import array
from collections import OrderedDict
from copy import copy
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from fastpath.maps import (
    DEFAULT_CT_CAPACITY,
    IPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Backend,
    Maps,
    NodeView,
    Service,
    address_bits,
    check_service_update,
    family_of,
    ids_in_place,
    in_prefix,
)
from fastpath.verdicts import (
    TRACE_MASQUERADED,
    VERDICT_OF_REASON,
    FrontendKind,
    Reason,
    Verdict,
)

__all__ = [
    "DEFAULT_CT_CAPACITY",
    "CT_SYN_SENT",
    "CT_ESTABLISHED",
    "CT_CLOSING",
    "CT_OTHER",
    "CT_TIMEOUT_KEYS",
    "DEFAULT_TIMEOUTS_S",
    "fmix64",
    "fold_address",
    "flow_hash",
    "bucket_hash",
    "conntrack_home",
    "crc32c",
    "select_backend",
    "ConntrackEntry",
    "AffinityEntry",
    "ReferenceEngine",
    "SNAT_TRIES",
    "next_snat_port",
    "FRAG_CAPACITY",
    "FragmentEntry",
    "MAX_NEW_FLOW_RATE",
]

MASK16 = 0xFFFF
MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

# Link types (pcap LINKTYPE_*).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_ETHERTYPES = frozenset((0x8100, 0x88A8, 0x9100))
NULL_AF_INET = 2
NULL_AF_INET6 = frozenset((24, 28, 30))

PROTO_ICMP = 1
PROTO_ICMPV6 = 58
# ICMP errors that quote the packet they are about: destination unreachable, time exceeded,
# parameter problem; ICMPv6: destination unreachable, packet too big, time exceeded, parameter
# problem. The ICMP protocol of each IP version and its error types:
ICMP_ERROR_TYPES = frozenset((3, 11, 12))
ICMPV6_ERROR_TYPES = frozenset((1, 2, 3, 4))
ICMP_OF_VERSION = {4: (PROTO_ICMP, ICMP_ERROR_TYPES), 6: (PROTO_ICMPV6, ICMPV6_ERROR_TYPES)}

# IPv6: the fixed header, the extension headers walked (RFC 8200 4.1) and how many at most.
IPV6_HEADER_LEN = 40
IPV6_HOP_BY_HOP = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_AH = 51
IPV6_DEST_OPTS = 60
IPV6_EXTENSION_HEADERS = frozenset((IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AH, IPV6_DEST_OPTS))
MAX_EXTENSION_HEADERS = 8

# Where an IP header keeps its source and destination addresses, and how long they are.
ADDRESS_POSITIONS = {4: (12, 16), 6: (8, 24)}
ADDRESS_BYTES = {4: 4, 6: 16}

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

# Conntrack states and their timeouts.
CT_SYN_SENT = 0
CT_ESTABLISHED = 1
CT_CLOSING = 2
CT_OTHER = 3
_SECOND_NS = 1_000_000_000
# Defaults (Cilium's), overridable per engine with timeouts_s={"established": ..., ...}.
DEFAULT_TIMEOUTS_S = {"syn_sent": 60, "established": 8000, "closing": 10, "other": 60}
CT_TIMEOUT_KEYS = {
    CT_SYN_SENT: "syn_sent",
    CT_ESTABLISHED: "established",
    CT_CLOSING: "closing",
    CT_OTHER: "other",
}
CT_STATE_NAMES = {
    CT_SYN_SENT: "SYN_SENT",
    CT_ESTABLISHED: "ESTABLISHED",
    CT_CLOSING: "CLOSING",
    CT_OTHER: "OTHER",
}

CT_COUNTER_NAMES = (
    "inserts",
    "evictions",
    "expired",
    "reopened",
    "non_syn_miss",
    "insert_failures",
    "flushed",
    "snat_failures",
    "snat_unavailable",
    "rate_limited",
)
AFFINITY_COUNTER_NAMES = ("evictions", "expired")
FRAGMENT_COUNTER_NAMES = ("tracked", "evictions", "followed", "not_found")

# How many datagrams the fragment table remembers (least recently used evicted first).
FRAG_CAPACITY = 8192

# The new-flow rate guard (step d2): new_flow_rate is 0 (off) up to one new flow per ns.
MAX_NEW_FLOW_RATE = 10**9

# Masquerade: how many SNAT ports a new flow tries, and the range the walk wraps around in.
SNAT_TRIES = 64
SNAT_PORT_LOW = 1024
SNAT_PORT_SPAN = 65536 - SNAT_PORT_LOW  # 64512

# Source classes of a new flow (step d).
SOURCE_POD = 0
SOURCE_NODE = 1
SOURCE_OTHER = 2

# A 5-tuple: (src ip, dst ip, src port, dst port, proto).
Tuple5 = tuple[int, int, int, int, int]


# --------------------------------------------------------------------------- hash and selection


def fmix64(x: int) -> int:
    """The 64-bit finaliser of MurmurHash3, modulo 2**64."""
    x &= MASK64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & MASK64
    x ^= x >> 33
    return x


def fold_address(address: int) -> int:
    """A map address in 32 bits for the hash: IPv4 as is; IPv6 the XOR of the four big-endian
    32-bit words of its 128-bit value."""
    if address < IPV6:
        return address
    folded = 0
    for shift in (96, 64, 32, 0):
        folded ^= (address >> shift) & MASK32
    return folded


def flow_hash(saddr: int, daddr: int, sport: int, dport: int, proto: int) -> int:
    """64-bit hash of a 5-tuple (map addresses folded to 32 bits, ports 16-bit, proto 8-bit)."""
    ports = (sport << 24) | (dport << 8) | proto
    return fmix64((((fold_address(saddr) << 32) | fold_address(daddr)) ^ fmix64(ports)) & MASK64)


def bucket_hash(saddr: int, daddr: int, sport: int, dport: int, proto: int) -> int:
    """64-bit hash of a 5-tuple for the conntrack index (home slots): one multiply-xorshift."""
    ports = (sport << 24) | (dport << 8) | proto
    x = ((fold_address(saddr) << 32) | fold_address(daddr)) ^ ((ports * 0x9E3779B97F4A7C15) & MASK64)
    x = (x * 0xD6E8FEB86659FD93) & MASK64
    return x ^ (x >> 32)


def select_backend(
    service_backends: Sequence[int], saddr: int, daddr: int, sport: int, dport: int, proto: int
) -> int:
    """The backend id a new flow with this 5-tuple selects among `service_backends`.

    Raises ValueError when there are no backends (the engine drops such packets before selecting).
    """
    n = len(service_backends)
    if n == 0:
        raise ValueError("select_backend: the service has no backends")
    h = flow_hash(saddr, daddr, sport, dport, proto)
    return service_backends[((h & MASK32) * n) >> 32]


# --------------------------------------------------------------------------- checksums


def _fold(total: int) -> int:
    """End-around carry: fold a non-negative sum into 16 bits."""
    while total > MASK16:
        total = (total & MASK16) + (total >> 16)
    return total


def _csum_update_word(hc: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for one 16-bit word: HC' = ~(~HC + ~m + m')."""
    return ~_fold((~hc & MASK16) + (~old & MASK16) + new) & MASK16


def _csum_update_words(hc: int, old_words: Sequence[int], new_words: Sequence[int]) -> int:
    for old, new in zip(old_words, new_words):
        hc = _csum_update_word(hc, old, new)
    return hc


def _get16(buf: memoryview, pos: int) -> int:
    return (buf[pos] << 8) | buf[pos + 1]


def _put16(buf: memoryview, pos: int, value: int) -> None:
    buf[pos] = (value >> 8) & 0xFF
    buf[pos + 1] = value & 0xFF


def _get32(buf: memoryview, pos: int) -> int:
    return (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]


# Addresses in packets: IPv4 4 bytes, IPv6 16 bytes, both read and written as map addresses
# (fastpath.maps: an IPv6 address carries the IPV6 tag above its 128 bits).


def _get_address(buf: memoryview, pos: int, version: int) -> int:
    if version == 4:
        return _get32(buf, pos)
    return IPV6 | int.from_bytes(buf[pos : pos + 16], "big")


def _address_words(address: int, version: int) -> tuple[int, ...]:
    """The 16-bit words of an address as the packet carries them (2 for IPv4, 8 for IPv6)."""
    count = ADDRESS_BYTES[version] // 2
    return tuple((address >> (16 * (count - 1 - i))) & MASK16 for i in range(count))


def _set_address(
    buf: memoryview, pos: int, version: int, address: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Write a map address into the packet; (old words, new words) for the checksum updates."""
    size = ADDRESS_BYTES[version]
    old_words = _address_words(_get_address(buf, pos, version), version)
    value = address & ((1 << (8 * size)) - 1)  # without the IPV6 tag
    buf[pos : pos + size] = value.to_bytes(size, "big")
    return old_words, _address_words(value, version)


def _set_port(buf: memoryview, pos: int, port: int) -> tuple[tuple[int], tuple[int]]:
    """Write a port; (old word, new word) for the checksum updates."""
    old = _get16(buf, pos)
    _put16(buf, pos, port)
    return (old,), (port,)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (CRC32C_POLY_REFLECTED if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


# CRC32c (Castagnoli), bit-reflected: polynomial 0x1EDC6F41 reversed.
CRC32C_POLY_REFLECTED = 0x82F63B78
_CRC32C_TABLE = _crc32c_table()


def crc32c(data: Any) -> int:
    """CRC32c of `data` (initial value and final xor 0xFFFFFFFF, reflected; "123456789" gives
    0xE3069283). SCTP stores it least significant byte first."""
    crc = MASK32
    table = _CRC32C_TABLE
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ MASK32


# --------------------------------------------------------------------------- conntrack


@dataclass(slots=True)
class ConntrackEntry:
    """One tracked flow (twin only: the compiled core keeps the same fields in a C array)."""

    orig: Tuple5  # (client ip, frontend ip, client port, frontend port, proto)
    # (backend ip, reply-dst ip, backend port, reply-dst port, proto); reply-dst is the SNAT
    # address and port of a masqueraded flow, else the client's.
    reply: Tuple5
    snat_ip: int  # node.primary_ip (IPv6 flows: primary_ip6) when masqueraded, else 0
    snat_port: int  # 0 when not masqueraded
    kind: int  # FrontendKind of the frontend the flow came in through
    service: int  # Service.id (0: no counterpart after load())
    backend: int  # Backend.id (0: no counterpart after load())
    state: int
    last_seen_ns: int
    slot: int = -1  # where the table keeps it (CLOCK's hand walks the slots)
    referenced: bool = False  # CLOCK's bit: a packet of the flow since the hand last passed

    @property
    def masqueraded(self) -> bool:
        return self.snat_ip != 0


class _Conntrack:
    """Fixed pool of `capacity` slots with CLOCK eviction and two indexes (orig tuple, reply tuple).

    `slots` maps each slot in use to its entry. Free slots below `never_used` are in `free`, the
    most recently freed last (an ordered set); free slots from `never_used` on are in no list.
    `hand` is the next slot eviction looks at. `by_orig` and `by_reply` map a tuple to its entry.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slots: dict[int, ConntrackEntry] = {}
        self.free: dict[int, None] = {}
        self.never_used = 0
        self.hand = 0
        self.by_orig: dict[Tuple5, ConntrackEntry] = {}
        self.by_reply: dict[Tuple5, ConntrackEntry] = {}

    def __len__(self) -> int:
        return len(self.by_orig)

    def entries(self) -> list[ConntrackEntry]:
        """The entries in slot order."""
        return [self.slots[slot] for slot in sorted(self.slots)]

    def lookup(self, key: Tuple5) -> tuple[ConntrackEntry | None, bool]:
        """(entry, is_reply). Orig tuples are searched first.

        Only an entry whose own orig and reply tuples are equal can match both (insertion rejects
        a reply tuple equal to another entry's tuple); it is then seen in the ORIG direction.
        """
        entry = self.by_orig.get(key)
        if entry is not None:
            return entry, False
        entry = self.by_reply.get(key)
        if entry is not None:
            return entry, True
        return None, False

    def touch(self, entry: ConntrackEntry) -> None:
        entry.referenced = True

    def delete(self, entry: ConntrackEntry) -> None:
        del self.slots[entry.slot]
        if entry.slot < self.never_used:
            self.free[entry.slot] = None
        del self.by_orig[entry.orig]
        del self.by_reply[entry.reply]

    def present(self, flow: Tuple5) -> bool:
        """`flow` is the orig or the reply tuple of an entry in the table (expired or not)."""
        return flow in self.by_orig or flow in self.by_reply

    def evict(self) -> ConntrackEntry:
        """CLOCK on a full table: from the hand on, referenced entries lose their bit and are
        passed; the first unreferenced one is deleted. The hand stops just after it."""
        while True:
            entry = self.slots[self.hand]  # a full table has every slot in use
            self.hand = (self.hand + 1) % self.capacity
            if not entry.referenced:
                self.delete(entry)
                return entry
            entry.referenced = False

    def insert(self, entry: ConntrackEntry) -> None:
        """Into its home slot if free, else the most recently freed slot, else the lowest free
        one from the never-used mark on; unreferenced."""
        home = conntrack_home(entry.orig, self.capacity)
        if home not in self.slots:
            slot = home
            self.free.pop(home, None)
        elif self.free:
            slot = self.free.popitem()[0]
        else:
            while self.never_used in self.slots:
                self.never_used += 1
            slot = self.never_used
            self.never_used += 1
        entry.slot = slot
        self.slots[slot] = entry
        entry.referenced = False
        self.by_orig[entry.orig] = entry
        self.by_reply[entry.reply] = entry


def conntrack_home(orig: Tuple5, capacity: int) -> int:
    """The slot a new entry takes when it is free: where the orig tuple's hash bucket is."""
    return ((bucket_hash(*orig) >> 32) * capacity) >> 32


@dataclass(slots=True)
class AffinityEntry:
    """One ClientIP session affinity entry, keyed by (client ip, service id) (twin only)."""

    client: int
    service: int
    backend: int  # Backend.id (0: no counterpart after load())
    last_used_ns: int


class _Affinity:
    """Fixed-capacity (client ip, service id) -> AffinityEntry table with exact LRU eviction."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lru: OrderedDict[tuple[int, int], AffinityEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.lru)


@dataclass(slots=True)
class FragmentEntry:
    """What the first fragment of a datagram got, for its later fragments (twin only).

    Keyed by (saddr, daddr, IP id, proto) of the first fragment as received (IPv6: the fragment
    header's 32-bit id and next header)."""

    verdict: Verdict  # PASS only for a passed first fragment to a service address
    new_saddr: int  # the first fragment's addresses after its rewrite
    new_daddr: int
    service: int  # its trace: service id, backend id, flags
    backend: int
    flags: int


FragmentKey = tuple[int, int, int, int]


class _FlowRateGuard:
    """Step d2: a token bucket in ns of packet time, refilled up to one second's worth; each
    new flow into a full conntrack table costs 10**9 // new_flow_rate ns of allowance."""

    def __init__(self, new_flow_rate: int) -> None:
        self.cost_ns = _SECOND_NS // new_flow_rate if new_flow_rate else 0  # 0: the guard is off
        self.allowance_ns = _SECOND_NS
        self.last_ns = 0

    def allows(self, ts: int) -> bool:
        if self.cost_ns == 0:
            return True
        if ts > self.last_ns:
            self.allowance_ns = min(_SECOND_NS, self.allowance_ns + ts - self.last_ns)
            self.last_ns = ts
        if self.allowance_ns >= self.cost_ns:
            self.allowance_ns -= self.cost_ns
            return True
        return False


def next_snat_port(port: int) -> int:
    """The SNAT port tried after `port` (step h): wraps within 1024..65535, climbs below 1024."""
    if port >= SNAT_PORT_LOW:
        return SNAT_PORT_LOW + (port - SNAT_PORT_LOW + 1) % SNAT_PORT_SPAN
    return port + 1


def _in_any_prefix(addr: int, prefixes: Sequence[tuple[int, int]]) -> bool:
    return any(in_prefix(addr, network, length) for network, length in prefixes)


def _id_mapping(old_keys: Sequence[Any], new_keys: Sequence[Any]) -> list[int]:
    """mapping[old id] = the lowest new id with the same key, 0 if none (mapping[0] = 0)."""
    first: dict[Any, int] = {}
    for new_id, key in enumerate(new_keys, start=1):
        first.setdefault(key, new_id)
    return [0] + [first.get(key, 0) for key in old_keys]


def _members(service: Service) -> frozenset[int]:
    """The backend ids of any of the service's sets: those its tracked UDP flows may keep."""
    return frozenset((*service.backends, *service.local_backends, *service.serving))


def _remapped_counts(counts: Sequence[int], mapping: Sequence[int], size: int) -> list[int]:
    result = [0] * size
    for old_id, count in enumerate(counts, start=1):
        new_id = mapping[old_id]
        if new_id:
            result[new_id - 1] += count
    return result


# --------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _IP:
    """An IPv4 header, or an IPv6 header with its extension headers, that passed the checks
    (positions within the packet)."""

    version: int  # 4 or 6
    l3: int
    l4: int  # IPv4: l3 + IHL*4; IPv6: after the extension headers
    ip_end: int  # l3 + total length (IPv6: 40 + payload length): may lie past the captured bytes
    l4_end: int  # the L4 region is [l4, l4_end): up to ip_end, clipped to the captured bytes
    proto: int  # the transport protocol (a later IPv6 fragment: its fragment header's nh)
    saddr: int  # map addresses (fastpath.maps)
    daddr: int
    more_fragments: bool
    fragment_offset: int
    # The fragment table's key parts: IPv4 the IP id and protocol; IPv6 the fragment header's
    # 32-bit id and next header (0 and the protocol without a fragment header).
    fragment_id: int
    fragment_proto: int

    @property
    def fragment_key(self) -> FragmentKey:
        return (self.saddr, self.daddr, self.fragment_id, self.fragment_proto)


@dataclass(slots=True)
class _Parsed:
    """Where the IP and L4 headers of a TCP/UDP/SCTP packet are (positions within the packet)."""

    version: int  # 4 or 6
    l3: int
    l4: int
    ip_end: int  # the datagram's end: may lie past the captured bytes (a snaplen cut)
    proto: int
    saddr: int
    daddr: int
    sport: int
    dport: int
    tcp_flags: int


def _parse_link(buf: memoryview, linktype: int) -> tuple[int, int] | Reason:
    """(ethertype, offset of the L3 header), or the `Reason` processing ends with."""
    end = len(buf)
    if linktype == LINKTYPE_ETHERNET:
        if end < 14:
            return Reason.DROP_TRUNCATED
        ethertype = _get16(buf, 12)
        l3 = 14
        while ethertype in VLAN_ETHERTYPES:
            if l3 + 4 > end:
                return Reason.DROP_TRUNCATED
            ethertype = _get16(buf, l3 + 2)
            l3 += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        if end < 16:
            return Reason.DROP_TRUNCATED
        ethertype = _get16(buf, 14)
        l3 = 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if end < 20:
            return Reason.DROP_TRUNCATED
        ethertype = _get16(buf, 0)
        l3 = 20
    elif linktype == LINKTYPE_NULL:
        if end < 4:
            return Reason.DROP_TRUNCATED
        big = _get32(buf, 0)
        little = buf[0] | (buf[1] << 8) | (buf[2] << 16) | (buf[3] << 24)
        if NULL_AF_INET in (big, little):
            ethertype = ETHERTYPE_IPV4
        elif big in NULL_AF_INET6 or little in NULL_AF_INET6:
            ethertype = ETHERTYPE_IPV6
        else:
            return Reason.PASS_NOT_IP
        l3 = 4
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        if end < 1:
            return Reason.DROP_TRUNCATED
        version = buf[0] >> 4
        if version == 4:
            ethertype = ETHERTYPE_IPV4
        elif version == 6:
            ethertype = ETHERTYPE_IPV6
        else:
            return Reason.PASS_NOT_IP
        l3 = 0
    else:
        return Reason.PASS_UNKNOWN_LINK
    return ethertype, l3


def _parse_ipv4(buf: memoryview, l3: int, end: int) -> _IP | Reason:
    """Check the IPv4 header at `l3` of a region whose captured bytes end at `end` (the packet's
    end, or for a quoted packet the end of the ICMP error's L4 region)."""
    if end - l3 < 20:
        return Reason.DROP_TRUNCATED
    version = buf[l3] >> 4
    ihl = buf[l3] & 0x0F
    if version != 4 or ihl < 5:
        return Reason.DROP_BAD_IP_HEADER
    ip_header_len = ihl * 4
    if l3 + ip_header_len > end:
        return Reason.DROP_TRUNCATED
    total_length = _get16(buf, l3 + 2)
    if total_length < ip_header_len:
        return Reason.DROP_BAD_IP_HEADER
    frag = _get16(buf, l3 + 6)
    proto = buf[l3 + 9]
    return _IP(
        version=4,
        l3=l3,
        l4=l3 + ip_header_len,
        ip_end=l3 + total_length,
        l4_end=min(l3 + total_length, end),  # >= l4: total length >= IHL*4, header captured
        proto=proto,
        saddr=_get32(buf, l3 + 12),
        daddr=_get32(buf, l3 + 16),
        more_fragments=bool(frag & 0x2000),
        fragment_offset=frag & 0x1FFF,
        fragment_id=_get16(buf, l3 + 4),
        fragment_proto=proto,
    )


def _is_ipv4_mapped(address: int) -> bool:
    """In ::ffff:0:0/96 (an IPv6 map address)."""
    return (address & (IPV6 - 1)) >> 32 == 0xFFFF


@dataclass(slots=True)
class _FragmentHeader:
    """An IPv6 fragment header's fields."""

    offset: int  # in 8-byte units
    more: bool  # M
    ident: int  # 32 bits
    next_header: int


@dataclass(slots=True)
class _ExtensionHeaders:
    """The result of walking an IPv6 header's extension headers."""

    off: int  # from l3: where the transport header starts (a later fragment: after its
    # fragment header, where nothing is parsed)
    proto: int  # the last next header (a later fragment: its fragment header's)
    fragment: _FragmentHeader | None


def _extension_header_length(buf: memoryview, pos: int, next_header: int) -> int:
    if next_header == IPV6_FRAGMENT:
        return 8
    if next_header == IPV6_AH:
        return (buf[pos + 1] + 2) * 4  # RFC 4302: in 4-byte units, minus 2
    return (buf[pos + 1] + 1) * 8  # hop-by-hop, routing, destination options: 8-byte units, minus 1


def _walk_extension_headers(
    buf: memoryview, l3: int, captured: int, end: int
) -> _ExtensionHeaders | Reason:
    """Walk the extension headers after an IPv6 header at `l3` (`captured` bytes from l3 on; the
    datagram ends at l3 + `end`), see "IPv6" in the module docstring."""
    next_header = buf[l3 + 6]
    off = IPV6_HEADER_LEN
    fragment: _FragmentHeader | None = None
    walked = 0
    while next_header in IPV6_EXTENSION_HEADERS:
        if walked == MAX_EXTENSION_HEADERS:
            return Reason.PASS_UNSUPPORTED
        walked += 1
        if off + 8 > captured:
            return Reason.DROP_TRUNCATED
        pos = l3 + off
        length = _extension_header_length(buf, pos, next_header)
        if off + length > end:
            return Reason.DROP_BAD_IP_HEADER
        if next_header == IPV6_ROUTING and buf[pos + 3] != 0:
            return Reason.PASS_UNSUPPORTED  # segments left: not at its final destination yet
        if next_header == IPV6_FRAGMENT:
            if fragment is not None:
                return Reason.DROP_BAD_IP_HEADER  # a second fragment header
            fragment = _FragmentHeader(
                offset=_get16(buf, pos + 2) >> 3,
                more=bool(buf[pos + 3] & 1),
                ident=_get32(buf, pos + 4),
                next_header=buf[pos],
            )
            if fragment.offset != 0:
                # A later fragment: what follows its fragment header is not parsed.
                return _ExtensionHeaders(off + length, fragment.next_header, fragment)
        next_header = buf[pos]
        off += length
    return _ExtensionHeaders(off, next_header, fragment)


def _parse_ipv6(buf: memoryview, l3: int, end: int) -> _IP | Reason:
    """Check the IPv6 header at `l3` and walk its extension headers (captured bytes end at `end`,
    as for _parse_ipv4)."""
    captured = end - l3
    if captured < IPV6_HEADER_LEN:
        return Reason.DROP_TRUNCATED
    if buf[l3] >> 4 != 6:
        return Reason.DROP_BAD_IP_HEADER
    saddr = _get_address(buf, l3 + 8, 6)
    daddr = _get_address(buf, l3 + 24, 6)
    if _is_ipv4_mapped(saddr) or _is_ipv4_mapped(daddr):
        return Reason.DROP_BAD_IP_HEADER  # never on the wire
    datagram_end = IPV6_HEADER_LEN + _get16(buf, l3 + 4)
    walk = _walk_extension_headers(buf, l3, captured, datagram_end)
    if isinstance(walk, Reason):
        return walk
    fragment = walk.fragment
    # An atomic fragment (offset 0, M clear: RFC 6946) is not a fragment.
    is_fragment = fragment is not None and (fragment.offset != 0 or fragment.more)
    l4 = l3 + walk.off
    return _IP(
        version=6,
        l3=l3,
        l4=l4,
        ip_end=l3 + datagram_end,
        l4_end=max(l4, min(l3 + datagram_end, end)),  # empty when l4 is past the captured bytes
        proto=walk.proto,
        saddr=saddr,
        daddr=daddr,
        more_fragments=is_fragment and fragment.more,
        fragment_offset=fragment.offset if is_fragment else 0,
        fragment_id=fragment.ident if is_fragment else 0,
        fragment_proto=fragment.next_header if is_fragment else walk.proto,
    )


def _parse_ip(buf: memoryview, l3: int, end: int, version: int) -> _IP | Reason:
    return _parse_ipv4(buf, l3, end) if version == 4 else _parse_ipv6(buf, l3, end)


def _parse(buf: memoryview, linktype: int) -> _IP | Reason:
    """Parse one packet up to its IP header (IPv6: and its extension headers); `buf` is exactly
    its captured bytes, so an out-of-bounds read raises. Returns a `Reason` when processing ends
    here."""
    link = _parse_link(buf, linktype)
    if isinstance(link, Reason):
        return link
    ethertype, l3 = link
    if ethertype == ETHERTYPE_IPV4:
        return _parse_ipv4(buf, l3, len(buf))
    if ethertype == ETHERTYPE_IPV6:
        return _parse_ipv6(buf, l3, len(buf))
    return Reason.PASS_NOT_IP


def _parse_transport(buf: memoryview, ip: _IP) -> _Parsed | Reason | None:
    """The transport header of a packet with fragment offset 0: the header positions of a
    TCP/UDP/SCTP packet, None for an ICMP (IPv6: ICMPv6) error (see _parse_quoted), or a
    `Reason`."""
    proto, l4 = ip.proto, ip.l4
    l4_len = ip.l4_end - l4
    icmp_proto, icmp_error_types = ICMP_OF_VERSION[ip.version]
    if proto == PROTO_TCP:
        if l4_len < 20:
            return Reason.DROP_TRUNCATED
        data_offset = buf[l4 + 12] >> 4
        if data_offset < 5 or data_offset * 4 > ip.ip_end - l4:
            return Reason.DROP_BAD_L4_HEADER
        flags = buf[l4 + 13]
    elif proto == PROTO_SCTP:
        if l4_len < 12:  # the common header: ports, verification tag, checksum
            return Reason.DROP_TRUNCATED
        flags = 0
    elif proto == PROTO_UDP:
        if l4_len < 8:
            return Reason.DROP_TRUNCATED
        if _get16(buf, l4 + 4) < 8:
            return Reason.DROP_BAD_L4_HEADER
        if ip.version == 6 and _get16(buf, l4 + 6) == 0:
            return Reason.DROP_BAD_L4_HEADER  # RFC 8200 8.1: no "no checksum" over IPv6
        flags = 0
    elif proto == icmp_proto:
        if l4_len < 8:
            return Reason.DROP_TRUNCATED
        if buf[l4] in icmp_error_types:
            return None
        return Reason.PASS_UNSUPPORTED  # echo, echo reply, redirect, ...: not translated
    else:
        return Reason.PASS_UNSUPPORTED
    return _Parsed(
        version=ip.version,
        l3=ip.l3,
        l4=l4,
        ip_end=ip.ip_end,
        proto=proto,
        saddr=ip.saddr,
        daddr=ip.daddr,
        sport=_get16(buf, l4),
        dport=_get16(buf, l4 + 2),
        tcp_flags=flags,
    )


def _parse_quoted(buf: memoryview, icmp: _IP) -> tuple[_IP, int, int] | None:
    """The packet an ICMP error quotes (from its L4 byte 8 on): (its IP header, source port,
    destination port), or None when the quote is unusable (see "ICMP errors" and "IPv6" in the
    module docstring): it must be of the error's own IP version. The quote's captured bytes end
    where the error's L4 region ends."""
    quoted = _parse_ip(buf, icmp.l4 + 8, icmp.l4_end, icmp.version)
    if isinstance(quoted, Reason) or quoted.fragment_offset != 0:
        return None
    if quoted.proto not in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
        return None
    if quoted.l4_end - quoted.l4 < 4:
        return None
    return quoted, _get16(buf, quoted.l4), _get16(buf, quoted.l4 + 2)


# --------------------------------------------------------------------------- rewrite


def _rewrite(
    buf: memoryview,
    p: _Parsed,
    *,
    dst: tuple[int, int] | None = None,
    src: tuple[int, int] | None = None,
) -> None:
    """Rewrite the destination and/or source (ip, port) of a parsed packet, destination first.

    Every 16-bit word of a rewritten field goes through the RFC 1624 update, changed or not, in
    the order: destination address, destination port, source address, source port; an address
    enters the IPv4 header checksum (IPv6 has none) and the TCP/UDP checksum (the pseudo-header:
    2 words per IPv4 address, 8 per IPv6 address), a port only the latter. A UDP checksum of 0
    stays 0; a UDP result of 0 is written as 0xFFFF once, after all updates. SCTP has no
    pseudo-header checksum: its CRC32c is recomputed over the whole SCTP packet once the ports
    are written, when all of it was captured.
    """
    has_ip_csum = p.version == 4
    is_sctp = p.proto == PROTO_SCTP
    ip_csum_pos = p.l3 + 10
    l4_csum_pos = p.l4 + (16 if p.proto == PROTO_TCP else 6)
    ip_csum = _get16(buf, ip_csum_pos) if has_ip_csum else 0
    l4_csum = 0 if is_sctp else _get16(buf, l4_csum_pos)
    # UDP: 0 means "no checksum"; SCTP: no incremental update (CRC32c below).
    update_l4 = p.proto == PROTO_TCP or (p.proto == PROTO_UDP and l4_csum != 0)
    src_pos, dst_pos = ADDRESS_POSITIONS[p.version]
    for new, addr_pos, port_pos in ((dst, p.l3 + dst_pos, p.l4 + 2), (src, p.l3 + src_pos, p.l4)):
        if new is None:
            continue
        new_ip, new_port = new
        old_ip_words, new_ip_words = _set_address(buf, addr_pos, p.version, new_ip)
        old_port, new_port_word = _set_port(buf, port_pos, new_port)
        if has_ip_csum:
            ip_csum = _csum_update_words(ip_csum, old_ip_words, new_ip_words)
        if update_l4:
            l4_csum = _csum_update_words(l4_csum, old_ip_words + old_port, new_ip_words + new_port_word)
    if has_ip_csum:
        _put16(buf, ip_csum_pos, ip_csum)
    if is_sctp:
        # A snaplen-cut packet keeps its old CRC: it cannot be recomputed from part of the packet.
        if p.ip_end <= len(buf):
            crc_pos = p.l4 + 8
            buf[crc_pos : crc_pos + 4] = bytes(4)
            crc = crc32c(buf[p.l4 : p.ip_end])
            buf[crc_pos : crc_pos + 4] = crc.to_bytes(4, "little")
        return
    if update_l4 and p.proto == PROTO_UDP and l4_csum == 0:
        l4_csum = 0xFFFF
    _put16(buf, l4_csum_pos, l4_csum)


def _rewrite_icmp_error(
    buf: memoryview,
    outer: _IP,
    quoted: _IP,
    *,
    quoted_dst: tuple[int, int] | None,
    quoted_src: tuple[int, int] | None,
    outer_dst: int | None,
    outer_src: int | None,
) -> None:
    """Translate an ICMP (ICMPv6) error and the packet it quotes (of the same IP version), every
    checksum updated incrementally.

    Quoted fields, in order: destination address and port, source address and port (each
    given one rewritten, changed or not); then the quoted IPv4 header checksum (always
    written; IPv6 has none) and the quoted TCP/UDP checksum (when captured; UDP 0 stays 0, a
    result of 0 is written as 0xFFFF). The ICMP checksum covers the quote byte for byte: every
    16-bit word written inside the quote goes through its update. Then the outer addresses
    given (destination, source): through the outer IPv4 header checksum, or for IPv6 through
    the ICMPv6 checksum (its pseudo-header holds them), after the quote's words.
    """
    icmp_csum_pos = outer.l4 + 2
    icmp_csum = _get16(buf, icmp_csum_pos)
    quoted_has_ip_csum = quoted.version == 4
    qip_csum_pos = quoted.l3 + 10
    qip_csum = _get16(buf, qip_csum_pos) if quoted_has_ip_csum else 0
    captured = quoted.l4_end - quoted.l4
    ql4_csum_pos = None
    if quoted.proto == PROTO_TCP and captured >= 18:
        ql4_csum_pos = quoted.l4 + 16
    elif quoted.proto == PROTO_UDP and captured >= 8 and _get16(buf, quoted.l4 + 6) != 0:
        ql4_csum_pos = quoted.l4 + 6
    # (A quoted SCTP CRC covers the whole original packet: a quote cannot fix it.)
    ql4_csum = 0 if ql4_csum_pos is None else _get16(buf, ql4_csum_pos)

    src_pos, dst_pos = ADDRESS_POSITIONS[quoted.version]
    for new, addr_pos, port_pos in ((quoted_dst, quoted.l3 + dst_pos, quoted.l4 + 2),
                                    (quoted_src, quoted.l3 + src_pos, quoted.l4)):
        if new is None:
            continue
        new_ip, new_port = new
        old_ip_words, new_ip_words = _set_address(buf, addr_pos, quoted.version, new_ip)
        old_port, new_port_word = _set_port(buf, port_pos, new_port)
        if quoted_has_ip_csum:
            qip_csum = _csum_update_words(qip_csum, old_ip_words, new_ip_words)
        if ql4_csum_pos is not None:
            ql4_csum = _csum_update_words(ql4_csum, old_ip_words + old_port, new_ip_words + new_port_word)
        icmp_csum = _csum_update_words(icmp_csum, old_ip_words + old_port, new_ip_words + new_port_word)

    if quoted_has_ip_csum:
        icmp_csum = _csum_update_word(icmp_csum, _get16(buf, qip_csum_pos), qip_csum)
        _put16(buf, qip_csum_pos, qip_csum)
    if ql4_csum_pos is not None:
        if quoted.proto == PROTO_UDP and ql4_csum == 0:
            ql4_csum = 0xFFFF
        icmp_csum = _csum_update_word(icmp_csum, _get16(buf, ql4_csum_pos), ql4_csum)
        _put16(buf, ql4_csum_pos, ql4_csum)

    outer_has_ip_csum = outer.version == 4
    ip_csum = _get16(buf, outer.l3 + 10) if outer_has_ip_csum else 0
    src_pos, dst_pos = ADDRESS_POSITIONS[outer.version]
    for new_addr, pos in ((outer_dst, outer.l3 + dst_pos), (outer_src, outer.l3 + src_pos)):
        if new_addr is None:
            continue
        old_words, new_words = _set_address(buf, pos, outer.version, new_addr)
        if outer_has_ip_csum:
            ip_csum = _csum_update_words(ip_csum, old_words, new_words)
        else:
            icmp_csum = _csum_update_words(icmp_csum, old_words, new_words)  # pseudo-header
    _put16(buf, icmp_csum_pos, icmp_csum)
    if outer_has_ip_csum:
        _put16(buf, outer.l3 + 10, ip_csum)


def _rewrite_fragment_addresses(buf: memoryview, ip: _IP, new_daddr: int, new_saddr: int) -> None:
    """A later fragment follows its first: both addresses, destination first, every word through
    the IPv4 header checksum (IPv6 has none; the transport checksum is in the first fragment)."""
    has_ip_csum = ip.version == 4
    ip_csum = _get16(buf, ip.l3 + 10) if has_ip_csum else 0
    src_pos, dst_pos = ADDRESS_POSITIONS[ip.version]
    for pos, new_addr in ((ip.l3 + dst_pos, new_daddr), (ip.l3 + src_pos, new_saddr)):
        old_words, new_words = _set_address(buf, pos, ip.version, new_addr)
        if has_ip_csum:
            ip_csum = _csum_update_words(ip_csum, old_words, new_words)
    if has_ip_csum:
        _put16(buf, ip.l3 + 10, ip_csum)


# --------------------------------------------------------------------------- engine


def _writable_bytes(buf: Any) -> memoryview:
    view = memoryview(buf)
    if view.readonly:
        raise TypeError("process: buf must be writable")
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


def _check_prefixes(prefixes: Sequence[tuple[int, int]], where: str) -> None:
    """Prefix lengths are 0..32 for IPv4 networks, 0..128 for IPv6 ones."""
    for network, length in prefixes:
        bits = address_bits(network)
        if not 0 <= length <= bits:
            raise ValueError(f"{where}: prefix length {length} of {network:#x} is outside 0..{bits}")


def _masquerade_address(node: NodeView, version: int) -> int:
    """The SNAT address of a flow of this IP version (0: none)."""
    return node.primary_ip if version == 4 else node.primary_ip6


# (reason, trace service id, trace backend id, trace flags) of one packet.
_Outcome = tuple[Reason, int, int, int]


class ReferenceEngine:
    """The readable twin of `fastpath._core.Engine` (see the module docstring)."""

    def __init__(
        self,
        maps: Maps,
        ct_capacity: int = DEFAULT_CT_CAPACITY,
        timeouts_s: Mapping[str, float] | None = None,
        new_flow_rate: int = 0,
    ) -> None:
        if int(ct_capacity) < 1:
            raise ValueError(f"ct_capacity must be >= 1, got {ct_capacity}")
        if not isinstance(new_flow_rate, int) or not 0 <= new_flow_rate <= MAX_NEW_FLOW_RATE:
            raise ValueError(f"new_flow_rate must be an integer from 0 (off) to {MAX_NEW_FLOW_RATE}, "
                             f"got {new_flow_rate!r}")
        self._guard = _FlowRateGuard(new_flow_rate)
        self._ct = _Conntrack(int(ct_capacity))
        self._affinity = _Affinity(int(ct_capacity))
        seconds = {**DEFAULT_TIMEOUTS_S, **(timeouts_s or {})}
        self._timeout_ns = {
            state: int(seconds[name] * _SECOND_NS) for state, name in CT_TIMEOUT_KEYS.items()
        }
        self._verdict_counts = [0] * len(Verdict)
        self._reason_counts = [0] * len(Reason)
        self._ct_counts = dict.fromkeys(CT_COUNTER_NAMES, 0)
        self._affinity_counts = dict.fromkeys(AFFINITY_COUNTER_NAMES, 0)
        # Later fragments follow their first fragment: least recently used first.
        self._fragments: OrderedDict[FragmentKey, FragmentEntry] = OrderedDict()
        self._fragment_counts = dict.fromkeys(FRAGMENT_COUNTER_NAMES, 0)
        self._maps: Maps | None = None
        self._service_counts: list[int] = []
        self._backend_counts: list[int] = []
        self.load(maps)

    # -- maps ------------------------------------------------------------------------------------

    def load(self, maps: Maps) -> None:
        """Replace frontends/services/backends (see "load(maps)" in the module docstring).

        Conntrack and affinity entries and all counters are kept; per-id state follows the ids
        by name (services: by name and family). Raises ValueError (before changing anything) for a
        prefix length outside 0..32 (IPv4) or 0..128 (IPv6), or for an id out of place or range.
        """
        if not ids_in_place(maps):
            maps.check()
            raise ValueError("maps name an id that is out of range")
        for frontend in maps.frontends:
            _check_prefixes(frontend.source_ranges, f"frontend {frontend}: source_ranges")
        _check_prefixes(maps.node.pod_cidrs, "node.pod_cidrs")
        _check_prefixes(maps.node.service_cidrs, "node.service_cidrs")

        old = self._maps
        if old is None:
            service_map = backend_map = [0]
        else:
            service_map = _id_mapping([(s.name, s.family) for s in old.services],
                                      [(s.name, s.family) for s in maps.services])
            backend_map = _id_mapping([(b.ip, b.port) for b in old.backends],
                                      [(b.ip, b.port) for b in maps.backends])
        self._service_counts = _remapped_counts(self._service_counts, service_map, len(maps.services))
        self._backend_counts = _remapped_counts(self._backend_counts, backend_map, len(maps.backends))

        # Conntrack entries follow the ids (their tuples, and so their translation, stay).
        for entry in self._ct.entries():
            entry.service = service_map[entry.service] if entry.service < len(service_map) else 0
            entry.backend = backend_map[entry.backend] if entry.backend < len(backend_map) else 0

        # Affinity entries follow the ids; those of vanished services go; on a key collision the
        # more recently used entry stays (iteration is least recently used first).
        remapped: OrderedDict[tuple[int, int], AffinityEntry] = OrderedDict()
        for sticky in self._affinity.lru.values():
            sticky.service = service_map[sticky.service] if sticky.service < len(service_map) else 0
            sticky.backend = backend_map[sticky.backend] if sticky.backend < len(backend_map) else 0
            if sticky.service == 0:
                continue
            key = (sticky.client, sticky.service)
            remapped.pop(key, None)
            remapped[key] = sticky
        self._affinity.lru = remapped

        # Fragment entries follow the ids like conntrack entries (their translation stays).
        for remembered in self._fragments.values():
            service, backend = remembered.service, remembered.backend
            remembered.service = service_map[service] if service < len(service_map) else 0
            remembered.backend = backend_map[backend] if backend < len(backend_map) else 0

        frontends: dict[tuple[int, int, int], Any] = {}
        for frontend in maps.frontends:
            frontends.setdefault((frontend.ip, frontend.port, frontend.proto), frontend)
        # The engine's own lists: update_service() changes them, never the caller's maps.
        self._maps = copy(maps)
        self._maps.services = list(maps.services)
        self._maps.backends = list(maps.backends)
        # Per service id (0: none), the backend ids a tracked UDP flow may keep (step 3b).
        self._members = [frozenset()] + [_members(service) for service in maps.services]
        self._frontends = frontends
        self._service_ips = frozenset(maps.node.service_ips)
        # Where a later fragment without its first one cannot go untranslated.
        self._frontend_ips = self._service_ips | {frontend.ip for frontend in maps.frontends}
        self._local_ips = frozenset(maps.node.local_ips)
        self._pod_cidr_families = frozenset(family_of(network) for network, _ in maps.node.pod_cidrs)

    def update_service(self, service: Service, new_backends: Sequence[Backend] = ()) -> None:
        """Replace one service's backend sets in place (see "update_service" in the module
        docstring); ValueError before any change for what check_service_update refuses."""
        maps = self._maps
        assert maps is not None
        new_backends = tuple(new_backends)
        check_service_update(maps, service, new_backends)
        maps.backends.extend(new_backends)
        self._backend_counts.extend([0] * len(new_backends))
        maps.services[service.id - 1] = service
        self._members[service.id] = _members(service)

    # -- batches ---------------------------------------------------------------------------------

    def process(
        self,
        buf: Any,
        offsets: Any,
        lengths: Any,
        timestamps_ns: Any,
        verdicts: Any,
        reasons: Any,
        linktype: int,
        services: Any = None,
        backends: Any = None,
        flags: Any = None,
    ) -> None:
        """Process one batch in place (see "Batch interface" in the module docstring).

        The batch size is len(offsets); the other arrays (the trace arrays when given) must have
        the same length and every packet must lie inside buf, else ValueError before any packet
        is processed.
        """
        data = _writable_bytes(buf)
        offsets_v = memoryview(offsets)
        lengths_v = memoryview(lengths)
        stamps_v = memoryview(timestamps_ns)
        verdicts_v = memoryview(verdicts)
        reasons_v = memoryview(reasons)
        trace = [None if t is None else memoryview(t) for t in (services, backends, flags)]
        services_v, backends_v, flags_v = trace
        for name, view in (("verdicts", verdicts_v), ("reasons", reasons_v), ("services", services_v),
                           ("backends", backends_v), ("flags", flags_v)):
            if view is not None and view.readonly:
                raise TypeError(f"process: {name} must be writable")
        count = len(offsets_v)
        for name, view in (
            ("lengths", lengths_v),
            ("timestamps_ns", stamps_v),
            ("verdicts", verdicts_v),
            ("reasons", reasons_v),
            ("services", services_v),
            ("backends", backends_v),
            ("flags", flags_v),
        ):
            if view is not None and len(view) != count:
                raise ValueError(f"process: {name} has {len(view)} items, offsets has {count}")
        size = len(data)
        for i in range(count):
            if offsets_v[i] + lengths_v[i] > size:
                raise ValueError(
                    f"process: packet {i} [{offsets_v[i]}, {offsets_v[i] + lengths_v[i]})"
                    f" lies outside the {size}-byte buffer"
                )
        for i in range(count):
            start = offsets_v[i]
            # A zero-copy view of exactly the packet's captured bytes: writes go to buf, and
            # a read outside the packet would raise IndexError instead of going unnoticed.
            packet = data[start : start + lengths_v[i]]
            reason, service_id, backend_id, trace_flags = self._process_one(packet, stamps_v[i], linktype)
            verdict = VERDICT_OF_REASON[reason]
            verdicts_v[i] = int(verdict)
            reasons_v[i] = int(reason)
            if services_v is not None:
                services_v[i] = service_id
            if backends_v is not None:
                backends_v[i] = backend_id
            if flags_v is not None:
                flags_v[i] = trace_flags
            self._verdict_counts[verdict] += 1
            self._reason_counts[reason] += 1
            # Per-id counters follow the trace (translated packets are the only ones with a backend).
            if service_id:
                self._service_counts[service_id - 1] += 1
            if backend_id:
                self._backend_counts[backend_id - 1] += 1

    def process_packet(self, data: bytes, ts_ns: int, linktype: int = 1) -> tuple[Verdict, Reason, bytes]:
        """Process one packet; returns (verdict, reason, the packet's bytes after rewriting)."""
        verdict, reason, out, _ = self.trace_packet(data, ts_ns, linktype)
        return verdict, reason, out

    def trace_packet(
        self, data: bytes, ts_ns: int, linktype: int = 1
    ) -> tuple[Verdict, Reason, bytes, tuple[int, int, int]]:
        """Twin only: like process_packet, plus the trace (service id, backend id, flags)."""
        buf = bytearray(data)
        verdicts, reasons = array("B", [0]), array("B", [0])
        services, backends, flags = array("I", [0]), array("I", [0]), array("B", [0])
        offsets, lengths, stamps = array("Q", [0]), array("I", [len(buf)]), array("Q", [ts_ns])
        self.process(buf, offsets, lengths, stamps, verdicts, reasons, linktype, services, backends, flags)
        return Verdict(verdicts[0]), Reason(reasons[0]), bytes(buf), (services[0], backends[0], flags[0])

    def _process_one(self, buf: memoryview, ts: int, linktype: int) -> _Outcome:
        ip = _parse(buf, linktype)
        if isinstance(ip, Reason):
            return ip, 0, 0, 0
        if ip.fragment_offset != 0:
            return self._later_fragment(buf, ip)
        outcome = self._datagram(buf, ip, ts)
        # Passed first fragments are remembered too when addressed to a service address (a
        # NodePort's node address, say), so the node's own fragmented traffic passes whole.
        if ip.more_fragments and (VERDICT_OF_REASON[outcome[0]] is not Verdict.PASS
                                  or ip.daddr in self._frontend_ips):
            self._remember_fragment(buf, ip, outcome)
        return outcome

    def _datagram(self, buf: memoryview, ip: _IP, ts: int) -> _Outcome:
        """A packet with fragment offset 0: unfragmented, or the first fragment of a datagram."""
        parsed = _parse_transport(buf, ip)
        if parsed is None:
            return self._icmp_error(buf, ip, ts)
        if isinstance(parsed, Reason):
            return parsed, 0, 0, 0
        return self._flow(buf, parsed, ts)

    # -- fragments -------------------------------------------------------------------------------

    def _remember_fragment(self, buf: memoryview, ip: _IP, outcome: _Outcome) -> None:
        """Later fragments of this datagram will get what this first fragment got."""
        reason, service_id, backend_id, trace_flags = outcome
        key = ip.fragment_key  # the addresses as received
        src_pos, dst_pos = ADDRESS_POSITIONS[ip.version]
        table = self._fragments
        self._fragment_counts["tracked"] += 1
        if key in table:
            table.move_to_end(key)
        elif len(table) >= FRAG_CAPACITY:
            table.popitem(last=False)
            self._fragment_counts["evictions"] += 1
        table[key] = FragmentEntry(
            verdict=VERDICT_OF_REASON[reason],
            new_saddr=_get_address(buf, ip.l3 + src_pos, ip.version),  # after the rewrite
            new_daddr=_get_address(buf, ip.l3 + dst_pos, ip.version),
            service=service_id,
            backend=backend_id,
            flags=trace_flags,
        )

    def _later_fragment(self, buf: memoryview, ip: _IP) -> _Outcome:
        key = ip.fragment_key
        entry = self._fragments.get(key)
        if entry is None:
            self._fragment_counts["not_found"] += 1
            if ip.daddr in self._frontend_ips:
                return Reason.DROP_FRAG_NOT_FOUND, 0, 0, 0  # to a service: its ports are unknowable
            return Reason.PASS_FRAGMENT, 0, 0, 0
        self._fragments.move_to_end(key)
        self._fragment_counts["followed"] += 1
        if entry.verdict is Verdict.DNAT or entry.verdict is Verdict.REVNAT:
            _rewrite_fragment_addresses(buf, ip, entry.new_daddr, entry.new_saddr)
            reason = Reason.FRAG_DNAT if entry.verdict is Verdict.DNAT else Reason.FRAG_REVNAT
        elif entry.verdict is Verdict.PASS:
            reason = Reason.PASS_FRAGMENT  # its first fragment passed: so does the rest
        else:
            reason = Reason.FRAG_DROP  # dropped or rejected first fragment (only it is answered)
        return reason, entry.service, entry.backend, entry.flags

    # -- ICMP errors -----------------------------------------------------------------------------

    def _icmp_error(self, buf: memoryview, ip: _IP, ts: int) -> _Outcome:
        """An ICMP (ICMPv6) error about a tracked flow, translated through the packet it quotes."""
        quote = _parse_quoted(buf, ip)
        if quote is None:
            return Reason.PASS_UNSUPPORTED, 0, 0, 0
        q, qsport, qdport = quote
        # The quoted packet went the other way: its reversed tuple is one of the flow's tuples.
        # Nothing in the table changes (no LRU touch, no last_seen, no state, no deletion).
        entry, is_reply = self._ct.lookup((q.daddr, q.saddr, qdport, qsport, q.proto))
        if entry is None or ts - entry.last_seen_ns > self._timeout_ns[entry.state]:
            return Reason.PASS_NO_SERVICE, 0, 0, 0
        masq = entry.masqueraded
        client_ip, frontend_ip, client_port, frontend_port, _ = entry.orig
        backend_ip, _, backend_port, _, _ = entry.reply
        outer_src: int | None = None
        outer_dst: int | None = None
        quoted_dst: tuple[int, int] | None
        quoted_src: tuple[int, int] | None
        if is_reply:
            # Quoted: a translated forward packet (client or SNAT -> backend); to the client.
            quoted_dst = (frontend_ip, frontend_port)
            quoted_src = (client_ip, client_port) if masq else None
            if ip.saddr == backend_ip:
                outer_src = frontend_ip  # the endpoint itself answered
            if masq and ip.daddr == entry.snat_ip:
                outer_dst = client_ip
            reason = Reason.ICMP_ERROR_REPLY
        else:
            # Quoted: a reply as the client saw it (frontend -> client); to the backend.
            quoted_dst = (entry.snat_ip, entry.snat_port) if masq else None
            quoted_src = (backend_ip, backend_port)
            if ip.daddr == frontend_ip:
                outer_dst = backend_ip
            if masq and ip.saddr == client_ip:
                outer_src = entry.snat_ip
            reason = Reason.ICMP_ERROR_FORWARD
        _rewrite_icmp_error(buf, ip, q, quoted_dst=quoted_dst, quoted_src=quoted_src,
                            outer_dst=outer_dst, outer_src=outer_src)
        return reason, entry.service, entry.backend, entry.kind | (TRACE_MASQUERADED if masq else 0)

    # -- TCP, UDP, SCTP --------------------------------------------------------------------------

    def _flow(self, buf: memoryview, p: _Parsed, ts: int) -> _Outcome:
        """Steps 1-5 of "Per TCP/UDP IPv4 packet" in the module docstring (IPv6 alike)."""
        key: Tuple5 = (p.saddr, p.daddr, p.sport, p.dport, p.proto)
        is_tcp = p.proto == PROTO_TCP
        fin_or_rst = is_tcp and bool(p.tcp_flags & (TCP_FIN | TCP_RST))
        pure_syn = is_tcp and (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN
        ct = self._ct

        # 1. Conntrack lookup.
        entry, is_reply = ct.lookup(key)
        # 2. Expired entries are deleted and the packet goes on as a miss (a timestamp earlier
        #    than last_seen gives a negative age: never expired).
        if entry is not None and ts - entry.last_seen_ns > self._timeout_ns[entry.state]:
            ct.delete(entry)
            self._ct_counts["expired"] += 1
            entry = None
        # 3. A pure SYN reopens a closing flow: forget it and select again.
        if entry is not None and not is_reply and pure_syn and entry.state == CT_CLOSING:
            ct.delete(entry)
            self._ct_counts["reopened"] += 1
            entry = None
        # 3b. A UDP flow whose backend left its service's sets is forgotten: it selects again.
        if entry is not None and p.proto == PROTO_UDP and entry.backend not in self._members[entry.service]:
            ct.delete(entry)
            self._ct_counts["flushed"] += 1
            entry = None

        # 4. Tracked flow.
        if entry is not None:
            entry.last_seen_ns = max(entry.last_seen_ns, ts)
            ct.touch(entry)
            if is_tcp:
                if fin_or_rst:
                    entry.state = CT_CLOSING
                elif is_reply and entry.state == CT_SYN_SENT:
                    entry.state = CT_ESTABLISHED
            masq = entry.masqueraded
            trace_flags = entry.kind | (TRACE_MASQUERADED if masq else 0)
            client_ip, frontend_ip, client_port, frontend_port, _ = entry.orig
            if is_reply:
                _rewrite(buf, p, dst=(client_ip, client_port) if masq else None,
                         src=(frontend_ip, frontend_port))
                return Reason.CT_REPLY, entry.service, entry.backend, trace_flags
            backend_ip, snat_ip, backend_port, snat_port, _ = entry.reply
            _rewrite(buf, p, dst=(backend_ip, backend_port), src=(snat_ip, snat_port) if masq else None)
            return Reason.CT_ESTABLISHED, entry.service, entry.backend, trace_flags

        # 5. New flow.
        return self._new_flow(buf, p, key, ts, pure_syn, fin_or_rst)

    def _new_flow(
        self, buf: memoryview, p: _Parsed, key: Tuple5, ts: int, pure_syn: bool, fin_or_rst: bool
    ) -> _Outcome:
        """Steps a-j of "New flows" in the module docstring."""
        maps = self._maps
        assert maps is not None
        node = maps.node
        is_tcp = p.proto == PROTO_TCP

        # a. Frontend lookup.
        frontend = self._frontends.get((p.daddr, p.dport, p.proto))
        if frontend is None:
            if p.daddr in self._service_ips:
                return Reason.REJECT_UNKNOWN_PORT, 0, 0, 0
            if _in_any_prefix(p.daddr, node.service_cidrs):
                return Reason.DROP_UNALLOCATED_SERVICE_IP, 0, 0, 0
            return Reason.PASS_NO_SERVICE, 0, 0, 0
        service_id = frontend.service
        service = maps.services[service_id - 1]
        kind = int(FrontendKind[frontend.kind])

        # b. loadBalancerSourceRanges.
        if frontend.source_ranges and not _in_any_prefix(p.saddr, frontend.source_ranges):
            return Reason.DROP_SOURCE_RANGE, service_id, 0, kind
        # c. No usable endpoint anywhere.
        if not service.backends:
            return Reason.REJECT_NO_ENDPOINT, service_id, 0, kind

        # d. Source class, then which set and whether to masquerade.
        if _in_any_prefix(p.saddr, node.pod_cidrs):
            source = SOURCE_POD
        elif p.saddr in self._local_ips:
            source = SOURCE_NODE
        else:
            source = SOURCE_OTHER
        candidates: tuple[int, ...]
        if kind == FrontendKind.ClusterIP:
            candidates = service.local_backends if frontend.local_policy else service.backends
            # (Non-pod sources are known only where a pod CIDR of the packet's family is.)
            detect_local = p.version in self._pod_cidr_families
            masq = node.masquerade_all or (detect_local and source != SOURCE_POD)
        elif not frontend.local_policy:
            candidates, masq = service.backends, True
        elif source == SOURCE_POD:
            candidates, masq = service.backends, False
        elif source == SOURCE_NODE:
            candidates, masq = service.backends, True
        else:
            candidates, masq = service.local_backends, False
        if not candidates:
            return Reason.DROP_NO_LOCAL_ENDPOINT, service_id, 0, kind
        # d2. A flood of new flows into a full table may evict only so many tracked flows.
        if len(self._ct) >= self._ct.capacity and not self._guard.allows(ts):
            self._ct_counts["rate_limited"] += 1
            return Reason.DROP_FLOW_RATE, service_id, 0, kind

        # e. Backend selection (session affinity first).
        backend_id = self._select(service, candidates, key, ts)
        backend = maps.backends[backend_id - 1]
        # f. Hairpin.
        if backend.ip == p.saddr:
            masq = True
        # g. Nothing to masquerade to (IPv6 flows masquerade to node.primary_ip6).
        masquerade_ip = _masquerade_address(node, p.version)
        if masq and masquerade_ip == 0:
            masq = False
            self._ct_counts["snat_unavailable"] += 1

        # h. SNAT port.
        ct = self._ct
        insert = True
        if masq:
            snat_ip, snat_port = masquerade_ip, p.sport
            for attempt in range(SNAT_TRIES):
                if not ct.present((backend.ip, snat_ip, backend.port, snat_port, p.proto)):
                    break
                if attempt == SNAT_TRIES - 1:
                    self._ct_counts["snat_failures"] += 1
                    insert = False
                else:
                    snat_port = next_snat_port(snat_port)
            reply: Tuple5 = (backend.ip, snat_ip, backend.port, snat_port, p.proto)
        else:
            snat_ip = snat_port = 0
            reply = (backend.ip, p.saddr, backend.port, p.sport, p.proto)

        # i. Conntrack entry.
        if is_tcp and not pure_syn:
            self._ct_counts["non_syn_miss"] += 1
        if not is_tcp:
            state = CT_OTHER
        elif fin_or_rst:
            state = CT_CLOSING
        elif pure_syn:
            state = CT_SYN_SENT
        else:
            state = CT_ESTABLISHED
        if insert:
            if not masq and ct.present(reply):
                # Checked before eviction: a failed insert evicts nothing.
                self._ct_counts["insert_failures"] += 1
            else:
                if len(ct) >= ct.capacity:
                    ct.evict()
                    self._ct_counts["evictions"] += 1
                ct.insert(
                    ConntrackEntry(
                        orig=key,
                        reply=reply,
                        snat_ip=snat_ip,
                        snat_port=snat_port,
                        kind=kind,
                        service=service_id,
                        backend=backend_id,
                        state=state,
                        last_seen_ns=ts,
                    )
                )
                self._ct_counts["inserts"] += 1

        # j. DNAT (+ SNAT).
        _rewrite(buf, p, dst=(backend.ip, backend.port), src=(snat_ip, snat_port) if masq else None)
        return Reason.NEW_FLOW, service_id, backend_id, kind | (TRACE_MASQUERADED if masq else 0)

    def _select(self, service: Service, candidates: Sequence[int], key: Tuple5, ts: int) -> int:
        """Step e: the backend id a new flow goes to, and the affinity table's update."""
        if service.affinity_timeout_s <= 0:
            return select_backend(candidates, *key)
        maps = self._maps
        assert maps is not None
        table = self._affinity
        affinity_key = (key[0], service.id)
        entry = table.lru.get(affinity_key)
        if entry is not None and ts - entry.last_used_ns > service.affinity_timeout_s * _SECOND_NS:
            del table.lru[affinity_key]
            self._affinity_counts["expired"] += 1
            entry = None
        chosen = 0
        if entry is not None and entry.backend:
            remembered = maps.backends[entry.backend - 1]
            for candidate in candidates:
                b = maps.backends[candidate - 1]
                if (b.ip, b.port) == (remembered.ip, remembered.port):
                    chosen = candidate
                    break
        if not chosen:
            chosen = select_backend(candidates, *key)
        if entry is not None:
            entry.backend = chosen
            entry.last_used_ns = ts
            table.lru.move_to_end(affinity_key)
        else:
            if len(table) >= table.capacity:
                table.lru.popitem(last=False)
                self._affinity_counts["evictions"] += 1
            table.lru[affinity_key] = AffinityEntry(key[0], service.id, chosen, ts)
        return chosen

    # -- observation -----------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """All counters (see "Counters" in the module docstring); a fresh dict each call."""
        conntrack = dict(self._ct_counts)
        conntrack["entries"] = len(self._ct)
        affinity = dict(self._affinity_counts)
        affinity["entries"] = len(self._affinity)
        fragments = dict(self._fragment_counts)
        fragments["entries"] = len(self._fragments)
        return {
            "verdicts": {v.name: self._verdict_counts[v] for v in Verdict},
            "reasons": {r.name: self._reason_counts[r] for r in Reason},
            "services": list(self._service_counts),
            "backends": list(self._backend_counts),
            "conntrack": conntrack,
            "affinity": affinity,
            "fragments": fragments,
        }

    def conntrack_entries(self) -> list[ConntrackEntry]:
        """Twin only (for tests): copies of the entries, in slot order."""
        return [replace(e) for e in self._ct.entries()]

    def affinity_entries(self) -> list[AffinityEntry]:
        """Twin only (for tests): copies of the affinity entries, least recently used first."""
        return [replace(e) for e in self._affinity.lru.values()]

    def fragment_entries(self) -> list[tuple[FragmentKey, FragmentEntry]]:
        """Twin only (for tests): (key, copy of the entry) pairs, least recently used first."""
        return [(key, replace(e)) for key, e in self._fragments.items()]
