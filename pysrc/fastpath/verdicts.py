"""Per-packet verdicts and reasons: the stable vocabulary shared by the core, the twin, traces and stats.

The numbers are part of the core's ABI (fastpath/core.pyx mirrors them; a test checks they agree).
Names are stable: scripts match on them, so never renumber or rename, only append.
"""
from __future__ import annotations

import enum


class Verdict(enum.IntEnum):
    """What happened to a packet, in XDP terms."""

    PASS = 0  # left untouched (not service traffic, or traffic the dataplane does not translate)
    DNAT = 1  # client -> frontend, rewritten to client -> backend (XDP_TX)
    REVNAT = 2  # backend -> client reply, rewritten to frontend -> client (XDP_TX)
    DROP = 3  # dropped; left out of the output capture
    REJECT = 4  # dropped, and an ICMP port unreachable goes back to the client (like kube-proxy)


class Reason(enum.IntEnum):
    """Why a packet got its verdict (Cilium-style stable names, counted per reason)."""

    PASS_NOT_IP = 0  # L3 protocol is not IP (ARP, LLDP, ...)
    PASS_NO_SERVICE = 1  # IP, but neither a frontend nor a tracked flow
    PASS_UNSUPPORTED = 2  # IP traffic the core does not translate (IPv6, other protocols, ICMP non-errors)
    PASS_UNKNOWN_LINK = 3  # the capture's link type has no parser
    NEW_FLOW = 4  # first packet of a flow: backend selected, conntrack entry created (DNAT)
    CT_ESTABLISHED = 5  # forward packet of a tracked flow (DNAT)
    CT_REPLY = 6  # reply of a tracked flow (REVNAT)
    DROP_NO_LOCAL_ENDPOINT = 7  # Local traffic policy and no endpoint on this node
    DROP_TRUNCATED = 8  # L2/IP/L4 headers extend past the captured bytes
    DROP_BAD_IP_HEADER = 9  # IPv4 version/IHL/total length inconsistent
    DROP_BAD_L4_HEADER = 10  # TCP data offset < 5 or past the IP payload, UDP length < 8
    REJECT_NO_ENDPOINT = 11  # the service port has no usable endpoint anywhere
    REJECT_UNKNOWN_PORT = 12  # a ClusterIP, on a port/protocol none of its services has
    DROP_SOURCE_RANGE = 13  # source outside the LoadBalancer's loadBalancerSourceRanges
    ICMP_ERROR_FORWARD = 14  # ICMP error from the client side about a tracked flow (DNAT)
    ICMP_ERROR_REPLY = 15  # ICMP error from the backend side about a tracked flow (REVNAT)
    FRAG_DNAT = 16  # later fragment of a datagram whose first fragment was DNATed
    FRAG_REVNAT = 17  # later fragment of a datagram whose first fragment was REVNATed
    FRAG_DROP = 18  # later fragment of a datagram whose first fragment was dropped or rejected
    DROP_FRAG_NOT_FOUND = 19  # later fragment to a service address, its first fragment unseen
    PASS_FRAGMENT = 20  # later fragment, first fragment unseen, not to a service address
    DROP_FLOW_RATE = 21  # new flow refused: conntrack full and the new-flow rate guard spent
    DROP_UNALLOCATED_SERVICE_IP = 22  # to an address in a service CIDR that no service has


VERDICT_OF_REASON: dict[Reason, Verdict] = {
    Reason.PASS_NOT_IP: Verdict.PASS,
    Reason.PASS_NO_SERVICE: Verdict.PASS,
    Reason.PASS_UNSUPPORTED: Verdict.PASS,
    Reason.PASS_UNKNOWN_LINK: Verdict.PASS,
    Reason.NEW_FLOW: Verdict.DNAT,
    Reason.CT_ESTABLISHED: Verdict.DNAT,
    Reason.CT_REPLY: Verdict.REVNAT,
    Reason.DROP_NO_LOCAL_ENDPOINT: Verdict.DROP,
    Reason.DROP_TRUNCATED: Verdict.DROP,
    Reason.DROP_BAD_IP_HEADER: Verdict.DROP,
    Reason.DROP_BAD_L4_HEADER: Verdict.DROP,
    Reason.REJECT_NO_ENDPOINT: Verdict.REJECT,
    Reason.REJECT_UNKNOWN_PORT: Verdict.REJECT,
    Reason.DROP_SOURCE_RANGE: Verdict.DROP,
    Reason.ICMP_ERROR_FORWARD: Verdict.DNAT,
    Reason.ICMP_ERROR_REPLY: Verdict.REVNAT,
    Reason.FRAG_DNAT: Verdict.DNAT,
    Reason.FRAG_REVNAT: Verdict.REVNAT,
    Reason.FRAG_DROP: Verdict.DROP,
    Reason.DROP_FRAG_NOT_FOUND: Verdict.DROP,
    Reason.PASS_FRAGMENT: Verdict.PASS,
    Reason.DROP_FLOW_RATE: Verdict.DROP,
    Reason.DROP_UNALLOCATED_SERVICE_IP: Verdict.DROP,
}


class FrontendKind(enum.IntEnum):
    """Trace flag values (bits 0-2 of a trace flag byte); 0 means no frontend."""

    ClusterIP = 1
    NodePort = 2
    LoadBalancer = 3
    ExternalIP = 4


TRACE_MASQUERADED = 0x08  # trace flag bit: the flow is SNATed to the node's address
