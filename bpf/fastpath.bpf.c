// SPDX-License-Identifier: MIT
// mplb's kernel fast path: a tc ingress (clsact, direct action) program that NATs the packets of flows the
// TypeScript engine has decided and no longer needs to see, and leaves them to the kernel to route. Everything
// else (no entry, SYN/FIN/RST, non-DSS MPTCP options, anything it cannot parse) goes on unchanged: the kernel
// routes it into mplb's TUN and the engine decides as it always did. The map is written only by mplb
// (src/fastpath/); layouts are mirrored in src/fastpath/layout.ts.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Key: the packet's own 4-tuple as it arrives (network byte order, IPv4 in word 0, other words 0). */
struct fp_key {
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__be16 sport;
	__be16 dport;
	__be32 saddr[4];
	__be32 daddr[4];
};

#define FP_DIR_DST 0 /* client -> VIP: rewrite the destination to the backend */
#define FP_DIR_SRC 1 /* backend -> client: rewrite the source to the VIP */
#define FP_F_MPTCP 1 /* an MPTCP subflow: segments with MPTCP options other than DSS go to the engine */

struct fp_value {
	__be32 addr[4]; /* new address */
	__be16 port;    /* new port */
	__u8 dir;
	__u8 flags;
	__u32 stat;         /* slot in mplb_backend_stats (backend index * 2 + direction), or FP_NO_STAT */
	__u64 last_seen_ns; /* bpf_ktime_get_ns() of the last packet NATed here; read by mplb's idle expiry */
};

enum fp_counter {
	FP_C_PACKETS = 0,    /* NATed here */
	FP_C_BYTES,          /* their skb->len */
	FP_C_PASS_NOT_TCP,   /* not IPv4/IPv6 TCP, a fragment, or IPv6 extension headers */
	FP_C_PASS_NO_ENTRY,  /* TCP with no map entry */
	FP_C_PASS_CONTROL,   /* FIN or RST of a mapped flow */
	FP_C_PASS_MPTCP,     /* a mapped MPTCP subflow's segment with an option the engine reads */
	FP_C_PASS_MALFORMED, /* headers or options the program cannot read safely */
	FP_C_SYN_STALE,      /* a SYN on a mapped 4-tuple: the entry is stale (port reuse), deleted */
	FP_C_ERRORS,         /* a rewrite helper failed: packet dropped (never seen) */
	FP_C_REDIRECTED,     /* of FP_C_PACKETS: forwarded by the program itself (FIB answer complete) */
	FP_C_PASS_TTL,       /* a mapped flow's packet with TTL/hop limit <= 1: the kernel answers it (time exceeded) */
	FP_C_COUNT,
};

/* Preallocated (no BPF_F_NO_PREALLOC): an insert or delete takes an element from a per-CPU free list instead of the
 * kernel's allocator, which halves the map writer's cost per connection; the memory (about 120 bytes per entry) is
 * taken at start. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* set by the loader: 2 x fastpath.maxFlows */
	__type(key, struct fp_key);
	__type(value, struct fp_value);
} mplb_flows SEC(".maps");

/* Per backend and direction, what was NATed here: the engine adds it to its own per-backend counters (those packets
 * never reach it). Slots as the engine numbers its backends; mirrored in src/fastpath/layout.ts. */
#define FP_STAT_SLOTS 16384
#define FP_NO_STAT 0xffffffffu
struct fp_stat {
	__u64 packets;
	__u64 bytes; /* IP bytes (skb->len without the Ethernet header), as the engine counts them */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_STAT_SLOTS);
	__type(key, __u32);
	__type(value, struct fp_stat);
} mplb_backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} mplb_counters SEC(".maps");

/* Counts, and passes the packet on unchanged: TC_ACT_UNSPEC lets later filters (another instance's) run,
 * and with none left the kernel handles the packet as if no program were attached. */
static __always_inline int count(__u32 c, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&mplb_counters, &c);
	if (v)
		*v += n; /* per-CPU slot: no atomics needed */
	return TC_ACT_UNSPEC;
}

#define ETH_LEN 14
#define AF_INET 2
#define AF_INET6 10
/* The idle expiry reads last-seen times in milliseconds against timeouts of seconds: writing the shared entry on
 * every packet would only bounce its cache line between CPUs. */
#define LAST_SEEN_EVERY_NS (1ULL << 24) /* about 17 ms */
#define TCPOPT_MPTCP 30
#define MPTCP_SUB_DSS 2
#define MAX_OPT_BYTES 40 /* RFC 9293 3.1: data offset is 4 bits, so at most 60 - 20 option bytes */

/* The option walk's state: bpf_loop() verifies its callback once, whatever the number of options. */
struct opt_walk {
	__u8 o[64]; /* the options, zeros after them (a zero is "end of option list") */
	__u32 n;    /* option bytes */
	__u32 i;    /* where the next option starts */
	int verdict; /* 0: nothing for the engine, 1: an MPTCP option other than DSS, 2: malformed */
};

/* One option per call; returns 1 to stop the walk. */
static long opt_step(__u32 k, struct opt_walk *w)
{
	__u32 i = w->i;
	if (i >= w->n || i >= MAX_OPT_BYTES)
		return 1;
	__u8 kind = w->o[i & 63];
	if (kind == 0) /* end of option list */
		return 1;
	if (kind == 1) { /* NOP */
		w->i = i + 1;
		return 0;
	}
	__u8 len = w->o[(i + 1) & 63];
	/* RFC 9293 3.1: an option's length counts its kind and length bytes; one that leaves the header is bad. */
	if (len < 2 || i + len > w->n) {
		w->verdict = 2;
		return 1;
	}
	if (kind == TCPOPT_MPTCP) {
		/* RFC 8684 3.3: DSS is subtype 2; every other subtype (keys, ADD_ADDR, MP_PRIO, MP_FAIL,
		 * MP_FASTCLOSE, MP_TCPRST) is something the engine may act on. */
		if (len < 3) {
			w->verdict = 2;
			return 1;
		}
		if ((w->o[(i + 2) & 63] >> 4) != MPTCP_SUB_DSS) {
			w->verdict = 1;
			return 1;
		}
	}
	w->i = i + len;
	return 0;
}

/* True when the options are exactly NOP, NOP, timestamps (kind 8, length 10), one DSS (RFC 8684 3.3: MPTCP kind 30,
 * subtype 2) and at most 3 bytes of NOP or end-of-list padding: what Linux puts on an MPTCP data or ACK segment. */
static __always_inline int dss_after_timestamps(const struct opt_walk *w)
{
	const __u8 *o = w->o;
	__u32 n = w->n;
	if (n < 16 || o[0] != 1 || o[1] != 1 || o[2] != 8 || o[3] != 10 || o[12] != TCPOPT_MPTCP)
		return 0;
	__u32 len = o[13];
	if (len < 4 || (o[14] >> 4) != MPTCP_SUB_DSS || 12 + len > n)
		return 0;
	__u32 rest = n - 12 - len;
	if (rest > 3)
		return 0;
	for (__u32 j = 0; j < 3; j++) {
		if (j >= rest)
			break;
		__u8 b = o[(12 + len + j) & 63];
		if (b > 1) /* not NOP (1) or end of option list (0) */
			return 0;
	}
	return 1;
}

SEC("tc")
int mplb_fastpath(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct fp_key key = {};
	__u32 l4off, ip_csum_off = 0, saddr_off, daddr_off, alen;
	struct bpf_fib_lookup fib = {};
	__u8 ttl, tos;

	if ((void *)(eth + 1) > data_end)
		return count(FP_C_PASS_NOT_TCP, 1);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return count(FP_C_PASS_MALFORMED, 1);
		if (ip->ihl < 5)
			return count(FP_C_PASS_MALFORMED, 1);
		/* Fragments (MF or an offset) are the engine's: only the first would carry the ports. */
		if (ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(0x3fff)) != 0)
			return count(FP_C_PASS_NOT_TCP, 1);
		key.family = 4;
		ttl = ip->ttl;
		tos = ip->tos;
		key.saddr[0] = ip->saddr;
		key.daddr[0] = ip->daddr;
		l4off = ETH_LEN + ip->ihl * 4;
		ip_csum_off = ETH_LEN + 10;
		saddr_off = ETH_LEN + 12;
		daddr_off = ETH_LEN + 16;
		alen = 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return count(FP_C_PASS_MALFORMED, 1);
		/* Extension headers: the engine walks them (bounded); here only TCP right after the header. */
		if (ip6->nexthdr != IPPROTO_TCP)
			return count(FP_C_PASS_NOT_TCP, 1);
		key.family = 6;
		ttl = ip6->hop_limit;
		tos = 0;
		__builtin_memcpy(key.saddr, &ip6->saddr, 16);
		__builtin_memcpy(key.daddr, &ip6->daddr, 16);
		l4off = ETH_LEN + sizeof(struct ipv6hdr);
		saddr_off = ETH_LEN + 8;
		daddr_off = ETH_LEN + 24;
		alen = 16;
	} else {
		return count(FP_C_PASS_NOT_TCP, 1);
	}
	if (l4off > ETH_LEN + 60)
		return count(FP_C_PASS_MALFORMED, 1);
	struct tcphdr *tcp = data + l4off;
	if ((void *)(tcp + 1) > data_end)
		return count(FP_C_PASS_MALFORMED, 1);
	key.sport = tcp->source;
	key.dport = tcp->dest;
	struct fp_value *val = bpf_map_lookup_elem(&mplb_flows, &key);
	if (!val)
		return count(FP_C_PASS_NO_ENTRY, 1);
	if (tcp->syn) {
		/* A SYN on a mapped 4-tuple is a new connection reusing the port: the engine decides it afresh,
		 * and the old entry must not catch the new flow's later segments. */
		bpf_map_delete_elem(&mplb_flows, &key);
		return count(FP_C_SYN_STALE, 1);
	}
	/* The engine tracks the close (FIN timeouts, RST linger, MP_FASTCLOSE with a RST in RFC 8684 3.5). */
	if (tcp->fin || tcp->rst)
		return count(FP_C_PASS_CONTROL, 1);
	/* RFC 1812 5.3.1: a router that would forward a packet whose TTL is now zero discards it and sends time
	 * exceeded; left alone, the kernel does both, quoting the packet as the client sent it. */
	if (ttl <= 1)
		return count(FP_C_PASS_TTL, 1);
	__u32 doff = tcp->doff * 4;
	if (doff < 20)
		return count(FP_C_PASS_MALFORMED, 1);
	if (val->flags & FP_F_MPTCP) {
		__u32 n = doff - 20;
		if (n > MAX_OPT_BYTES)
			return count(FP_C_PASS_MALFORMED, 1);
		if (n > 0) {
			struct opt_walk w = {};
			/* bpf_skb_load_bytes reads the paged part too, so options outside the linear head are fine. */
			if (bpf_skb_load_bytes(skb, l4off + 20, w.o, n) < 0)
				return count(FP_C_PASS_MALFORMED, 1);
			w.n = n;
			/* Linux's own layout (NOP NOP timestamps, then one DSS and at most 3 bytes of NOP/EOL padding)
			 * is recognised inline; anything else is walked option by option. */
			if (!dss_after_timestamps(&w))
				bpf_loop(MAX_OPT_BYTES, opt_step, &w, 0);
			if (w.verdict == 1)
				return count(FP_C_PASS_MPTCP, 1);
			if (w.verdict == 2)
				return count(FP_C_PASS_MALFORMED, 1);
		}
	}

	/* NAT in place. Checksums (RFC 1624 incremental update) through the kernel's helpers, which are right for
	 * every ip_summed: with CHECKSUM_PARTIAL (GSO from a local stack over veth) only the pseudo-header part of
	 * the TCP field changes, and BPF_F_PSEUDO_HDR also keeps a CHECKSUM_COMPLETE skb->csum right. */
	__u32 a_off = val->dir == FP_DIR_DST ? daddr_off : saddr_off;
	__u32 p_off = l4off + (val->dir == FP_DIR_DST ? 2 : 0);
	__u32 c_off = l4off + 16;
	/* Old values from the key (the packet's own), so nothing below reads the packet directly. */
	__be16 old_port = val->dir == FP_DIR_DST ? key.dport : key.sport;
	__be16 new_port = val->port;
	__be32 new_addr[4];
	__builtin_memcpy(new_addr, val->addr, 16);
	__be32 *old_addr = val->dir == FP_DIR_DST ? key.daddr : key.saddr;
	__u64 now = bpf_ktime_get_ns();
	if (now - val->last_seen_ns >= LAST_SEEN_EVERY_NS)
		val->last_seen_ns = now;
	if (alen == 4) {
		if (bpf_skb_store_bytes(skb, a_off, &new_addr[0], 4, 0) < 0 ||
		    bpf_l3_csum_replace(skb, ip_csum_off, old_addr[0], new_addr[0], 4) < 0 ||
		    bpf_l4_csum_replace(skb, c_off, old_addr[0], new_addr[0], BPF_F_PSEUDO_HDR | 4) < 0)
			goto fail;
	} else {
		__s64 diff = bpf_csum_diff(old_addr, 16, new_addr, 16, 0);
		if (diff < 0 || bpf_skb_store_bytes(skb, a_off, new_addr, 16, 0) < 0 ||
		    bpf_l4_csum_replace(skb, c_off, 0, (__u32)diff, BPF_F_PSEUDO_HDR) < 0)
			goto fail;
	}
	if (old_port != new_port) {
		if (bpf_skb_store_bytes(skb, p_off, &new_port, 2, 0) < 0 ||
		    bpf_l4_csum_replace(skb, c_off, old_port, new_port, 2) < 0)
			goto fail;
	}
	/* The flow hash was computed over the old tuple. */
	bpf_set_hash_invalid(skb);
	count(FP_C_PACKETS, 1);
	count(FP_C_BYTES, skb->len);
	__u32 slot = val->stat;
	if (slot != FP_NO_STAT) {
		struct fp_stat *st = bpf_map_lookup_elem(&mplb_backend_stats, &slot);
		if (st) { /* per-CPU slot: no atomics needed */
			st->packets += 1;
			st->bytes += skb->len - ETH_LEN;
		}
	}

	/* Forward it here when the FIB has a complete answer (route, neighbour, and the packet fits the device, GSO
	 * included: tot_len 0 asks for the skb check), as Cilium's host routing does: the kernel's IP receive,
	 * netfilter and forward paths are skipped, the egress device's qdisc is not (bpf_redirect to egress runs
	 * it, so rate limits hold). Any other answer: the kernel routes the NATed packet as it would anyway. */
	fib.ifindex = skb->ingress_ifindex;
	fib.l4_protocol = IPPROTO_TCP;
	fib.sport = val->dir == FP_DIR_SRC ? new_port : key.sport;
	fib.dport = val->dir == FP_DIR_DST ? new_port : key.dport;
	if (alen == 4) {
		fib.family = AF_INET;
		fib.tos = tos;
		fib.ipv4_src = val->dir == FP_DIR_SRC ? new_addr[0] : key.saddr[0];
		fib.ipv4_dst = val->dir == FP_DIR_DST ? new_addr[0] : key.daddr[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, val->dir == FP_DIR_SRC ? new_addr : key.saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, val->dir == FP_DIR_DST ? new_addr : key.daddr, 16);
	}
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	/* A router decrements the TTL (RFC 1812 5.3.1) / hop limit (RFC 8200 3); checked above to be > 1. */
	__u8 new_ttl = ttl - 1;
	if (alen == 4) {
		__be16 old_w = bpf_htons(((__u16)ttl << 8) | IPPROTO_TCP), new_w = bpf_htons(((__u16)new_ttl << 8) | IPPROTO_TCP);
		if (bpf_skb_store_bytes(skb, ETH_LEN + 8, &new_ttl, 1, 0) < 0 ||
		    bpf_l3_csum_replace(skb, ip_csum_off, old_w, new_w, 2) < 0)
			goto fail;
	} else if (bpf_skb_store_bytes(skb, ETH_LEN + 7, &new_ttl, 1, 0) < 0) {
		goto fail;
	}
	/* Both MACs in one write: the FIB gives them as smac, dmac; the Ethernet header wants dmac, smac. */
	__u8 macs[2 * ETH_ALEN];
	__builtin_memcpy(macs, fib.dmac, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, fib.smac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		goto fail;
	count(FP_C_REDIRECTED, 1);
	return bpf_redirect(fib.ifindex, 0);
fail:
	count(FP_C_ERRORS, 1);
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
