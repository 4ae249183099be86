"""Pure-Python twin of the compiled core: the readable specification and the differential oracle.

Given the same `Maps`, capacity and packets, `ReferenceEngine` and the compiled
`fastpath._core.Engine` must produce the same verdicts, reasons, counters and bytes. This docstring
is the specification both implement.

Python interface (identical for both engines)
---------------------------------------------
Engine(maps, ct_capacity=DEFAULT_CT_CAPACITY)   ct_capacity >= 1
  .load(maps)      replace frontends/services/backends between batches; conntrack is kept
  .process(...)    one batch, see below (the compiled core releases the GIL inside)
  .counters()      {"verdicts": {name: n}, "reasons": {name: n}, "services": [n for id 1..],
                    "backends": [n for id 1..], "conntrack": {"inserts", "evictions", "expired",
                    "reopened", "non_syn_miss", "insert_failures", "entries"}}
                   (every Verdict/Reason name present, zeros included)
Arrays: offsets array('Q'), lengths array('I'), timestamps_ns array('Q'), verdicts and reasons
array('B') (any writable buffer of those C types works).

Batch interface
---------------
process(buf, offsets, lengths, timestamps_ns, verdicts, reasons, linktype)
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
L3 protocol: 0x0800 IPv4 continues; 0x86DD IPv6 -> PASS_UNSUPPORTED; anything else PASS_NOT_IP.
IPv4 (at offset l3):
  fewer than 20 captured bytes -> DROP_TRUNCATED
  version != 4 or IHL < 5 -> DROP_BAD_IP_HEADER
  IHL*4 past the captured bytes -> DROP_TRUNCATED
  total length < IHL*4 -> DROP_BAD_IP_HEADER
  (total length beyond the captured bytes is a snaplen cut, not an error.)
  fragment (MF set or fragment offset != 0) -> PASS_UNSUPPORTED
  protocol not TCP(6)/UDP(17) -> PASS_UNSUPPORTED
  the L4 region is [l4, l3 + total length) clipped to the captured bytes.
TCP: fewer than 20 bytes in the L4 region -> DROP_TRUNCATED; data offset < 5 or data offset*4 >
  total length - IHL*4 -> DROP_BAD_L4_HEADER. (The options need not be captured.)
UDP: fewer than 8 bytes in the L4 region -> DROP_TRUNCATED; UDP length field < 8 ->
  DROP_BAD_L4_HEADER.
Flags used: SYN = 0x02, ACK = 0x10, FIN = 0x01, RST = 0x04. "Pure SYN" = SYN set and ACK clear.

Hash (selection and conntrack buckets), all arithmetic modulo 2**64:
  fmix64(x): x ^= x >> 33; x *= 0xFF51AFD7ED558CCD; x ^= x >> 33; x *= 0xC4CEB9FE1A85EC53; x ^= x >> 33
  flow_hash(saddr, daddr, sport, dport, proto) =
      fmix64(((saddr << 32) | daddr) ^ fmix64((sport << 24) | (dport << 8) | proto))
  backend choice for a service with n backends: backends[((flow_hash & 0xFFFFFFFF) * n) >> 32]
  where flow_hash is over the packet's own 5-tuple (client, frontend ip, client port,
  frontend port, proto).

Conntrack
---------
A fixed capacity of entries with exact least-recently-used eviction. An entry holds:
  orig tuple  (client ip, frontend ip, client port, frontend port, proto)
  reply tuple (backend ip, client ip, backend port, client port, proto)
  frontend index (the rev-NAT id: which frontend was used), backend id, service id, state,
  last_seen_ns.
States and timeouts: SYN_SENT 60 s, ESTABLISHED 8000 s, CLOSING 10 s, OTHER (UDP) 60 s.
An entry is expired when ts - last_seen_ns > timeout(state) (ts earlier than last_seen is never
expired).

Per TCP/UDP IPv4 packet with key K = (src ip, dst ip, src port, dst port, proto):
 1. Look K up among orig tuples (direction ORIG) and reply tuples (direction REPLY).
 2. Found but expired: delete it (ct_expired += 1) and go on as not found.
 3. Found ORIG, TCP, pure SYN, entry state CLOSING: delete it (ct_reopened += 1), not found.
 4. Found: last_seen = max(last_seen, ts); the entry becomes most recently used; state update
    (TCP only): FIN or RST -> CLOSING; else if REPLY and state SYN_SENT -> ESTABLISHED.
    ORIG: DNAT (dst ip := backend ip, dst port := backend port), reason CT_ESTABLISHED.
    REPLY: REVNAT (src ip := frontend ip, src port := frontend port), reason CT_REPLY.
 5. Not found: frontend lookup (dst ip, dst port, proto). Miss -> PASS_NO_SERVICE.
    Hit, service with no backends -> DROP_NO_BACKEND (no entry created).
    Hit: choose the backend as above. TCP and not pure SYN -> ct_non_syn_miss += 1 (the flow is
    picked up mid-stream, like nf_conntrack's loose mode). Initial state: UDP OTHER; TCP with FIN
    or RST -> CLOSING; pure SYN -> SYN_SENT; other TCP -> ESTABLISHED. If the table holds
    `capacity` entries, the least recently used one is evicted first (ct_evictions += 1).
    Insert (ct_inserts += 1), last_seen = ts, most recently used. DNAT, reason NEW_FLOW.
    A new flow whose reply tuple equals a tuple (orig or reply) of an entry present in the table
    is not inserted: ct_insert_failures += 1, and the packet is still DNATed (reason NEW_FLOW).

Rewrite (RFC 1624 incremental checksums, HC' = ~(~HC + ~m + m'), one 16-bit word at a time)
  IPv4 header checksum: updated for the changed address.
  TCP checksum: updated for the changed address (pseudo-header) and port.
  UDP checksum: 0 stays 0 (no checksum); otherwise updated like TCP, and a result of 0 is
  written as 0xFFFF.
  The checksum field is updated only if it lies within the captured bytes; the header fields
  are always within them (checked by parsing).

Counters
--------
packets per verdict, per reason; per service: packets (DNAT + REVNAT attributed to the entry's
or frontend's service, DROP_NO_BACKEND to the frontend's service); per backend: packets (DNAT and
REVNAT); ct_inserts, ct_evictions, ct_expired, ct_reopened, ct_non_syn_miss, ct_insert_failures;
ct_entries (current).
"""
