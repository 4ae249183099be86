// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel reference point of bench_xdp.py: an XDP program doing, for IPv4 TCP/UDP, what
 * fastpath's core does on the standard workload, written the way an eBPF Service load balancer
 * is: a conntrack lookup (an LRU hash map), on a miss a service lookup (a hash map keyed by
 * address, port and protocol), a backend chosen by the same 5-tuple hash and range reduction
 * as fastpath (so both pick the same backend and their outputs can be compared byte for byte),
 * two conntrack entries made (the flow and its reply), then DNAT, or REVNAT for a reply, with
 * the IPv4 and TCP/UDP checksums updated incrementally (RFC 1624).
 *
 * Verdicts: XDP_TX for a translated packet, XDP_PASS for anything else (not IPv4 TCP/UDP, a
 * fragment, no service, a service without backends).
 *
 * Built by benchmarks/kernel_xdp.py with `clang -O2 -target bpf` against libbpf's headers.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define CONNTRACK_ENTRIES (1 << 20) /* two per flow: fastpath's default 524,288 flows */
#define MAX_SERVICES (1 << 20)
#define MAX_MEMBERS (1 << 22)
#define MAX_BACKENDS (1 << 22)

struct tuple {          /* a flow as seen in one direction; addresses and ports in network order */
    __u32 saddr, daddr;
    __u16 sport, dport;
    __u8 proto;
    __u8 pad[3];
};

struct nat {            /* what a conntrack entry rewrites: the destination, or for a reply the source */
    __u32 addr;
    __u16 port;         /* network order */
    __u8 reply;
    __u8 pad;
};

struct frontend {       /* address, port (network order), protocol */
    __u32 addr;
    __u16 port;
    __u8 proto;
    __u8 pad;
};

struct service {        /* the service's backend ids: members[first .. first + count) */
    __u32 first;
    __u32 count;
};

struct backend {
    __u32 addr;
    __u16 port;         /* network order */
    __u16 pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, CONNTRACK_ENTRIES);
    __type(key, struct tuple);
    __type(value, struct nat);
} conntrack SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MAX_SERVICES);
    __type(key, struct frontend);
    __type(value, struct service);
} frontends SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MAX_MEMBERS);
    __type(key, __u32);
    __type(value, __u32);
} members SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MAX_BACKENDS);
    __type(key, __u32);
    __type(value, struct backend);
} backends SEC(".maps");

static __always_inline __u64 fmix64(__u64 x)
{
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    x ^= x >> 33;
    return x;
}

/* fastpath's flow hash: host-order addresses and ports. */
static __always_inline __u64 flow_hash(const struct tuple *t)
{
    __u64 ports = ((__u64)bpf_ntohs(t->sport) << 24) | ((__u64)bpf_ntohs(t->dport) << 8) | t->proto;
    return fmix64((((__u64)bpf_ntohl(t->saddr) << 32) | bpf_ntohl(t->daddr)) ^ fmix64(ports));
}

/* RFC 1624 in host order, as fastpath's checksum.pxd: deltas summed, folded once. */
static __always_inline __u32 csum_delta32(__u32 old, __u32 new)
{
    return ((~old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF);
}

static __always_inline __u32 csum_delta16(__u16 old, __u16 new)
{
    return (__u16)~old + (__u32)new;
}

static __always_inline __u16 csum_apply(__u16 check, __u32 delta)
{
    __u32 s = (__u32)(__u16)~check + delta;
    s = (s & 0xFFFF) + (s >> 16);
    s = (s & 0xFFFF) + (s >> 16);
    return (__u16)~s;
}

SEC("xdp")
int service_lb(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip;
    __u16 *ports, *check;
    struct tuple t = {};
    struct nat *entry, nat;
    __u32 ihl, address_delta, port_delta;
    __u16 l4_check;

    if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || ip->ihl < 5)
        return XDP_PASS;
    if (ip->frag_off & bpf_htons(0x3FFF))   /* a fragment: not this program's work */
        return XDP_PASS;
    if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
        return XDP_PASS;
    ihl = ip->ihl * 4;
    ports = (void *)ip + ihl;
    if (ip->protocol == IPPROTO_TCP) {
        if ((void *)ports + sizeof(struct tcphdr) > data_end)
            return XDP_PASS;
        check = (void *)ports + offsetof(struct tcphdr, check);
    } else {
        if ((void *)ports + sizeof(struct udphdr) > data_end)
            return XDP_PASS;
        check = (void *)ports + offsetof(struct udphdr, check);
    }

    t.saddr = ip->saddr;
    t.daddr = ip->daddr;
    t.sport = ports[0];
    t.dport = ports[1];
    t.proto = ip->protocol;

    entry = bpf_map_lookup_elem(&conntrack, &t);
    if (entry) {
        nat = *entry;
    } else {
        struct frontend f = {.addr = t.daddr, .port = t.dport, .proto = t.proto};
        struct service *svc = bpf_map_lookup_elem(&frontends, &f);
        struct backend *be;
        struct tuple reply;
        __u32 slot, *id;

        if (!svc || svc->count == 0)
            return XDP_PASS;
        slot = svc->first + (__u32)(((flow_hash(&t) & 0xFFFFFFFFULL) * svc->count) >> 32);
        id = bpf_map_lookup_elem(&members, &slot);
        if (!id)
            return XDP_PASS;
        be = bpf_map_lookup_elem(&backends, id);
        if (!be)
            return XDP_PASS;
        nat = (struct nat){.addr = be->addr, .port = be->port, .reply = 0};
        bpf_map_update_elem(&conntrack, &t, &nat, BPF_ANY);
        reply = (struct tuple){.saddr = be->addr, .daddr = t.saddr, .sport = be->port,
                               .dport = t.sport, .proto = t.proto};
        struct nat back = {.addr = t.daddr, .port = t.dport, .reply = 1};
        bpf_map_update_elem(&conntrack, &reply, &back, BPF_ANY);
    }

    if (nat.reply) {         /* REVNAT: the backend's reply leaves as the frontend's */
        address_delta = csum_delta32(bpf_ntohl(ip->saddr), bpf_ntohl(nat.addr));
        port_delta = csum_delta16(bpf_ntohs(ports[0]), bpf_ntohs(nat.port));
        ip->saddr = nat.addr;
        ports[0] = nat.port;
    } else {                    /* DNAT: to the flow's backend */
        address_delta = csum_delta32(bpf_ntohl(ip->daddr), bpf_ntohl(nat.addr));
        port_delta = csum_delta16(bpf_ntohs(ports[1]), bpf_ntohs(nat.port));
        ip->daddr = nat.addr;
        ports[1] = nat.port;
    }
    ip->check = bpf_htons(csum_apply(bpf_ntohs(ip->check), address_delta));
    l4_check = bpf_ntohs(*check);
    if (t.proto == IPPROTO_UDP) {
        if (l4_check == 0)      /* UDP without a checksum stays without one */
            return XDP_TX;
        l4_check = csum_apply(l4_check, address_delta + port_delta);
        *check = bpf_htons(l4_check == 0 ? 0xFFFF : l4_check);
    } else {
        *check = bpf_htons(csum_apply(l4_check, address_delta + port_delta));
    }
    return XDP_TX;
}

SEC("xdp")
int pass(struct xdp_md *ctx)
{
    return XDP_PASS;    /* the test run's own cost per packet */
}

char LICENSE[] SEC("license") = "GPL";
