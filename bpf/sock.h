/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Socket reads shared by waitprof.bpf.c (at accept) and sockets.bpf.c (the iterator). */
#ifndef __WAITPROF_SOCK_H
#define __WAITPROF_SOCK_H

#define TCP_LISTEN 10

/* The socket's drop counter (sk_drops_read(): per-NUMA counters where a socket has them). */
static __always_inline __u32 sock_drops(struct sock *sk)
{
	struct numa_drop_counters *ndc = 0;

	if (bpf_core_field_exists(sk->sk_drop_counters))
		ndc = BPF_CORE_READ(sk, sk_drop_counters);
	if (ndc)
		return BPF_CORE_READ(ndc, drops0.counter) + BPF_CORE_READ(ndc, drops1.counter);
	return BPF_CORE_READ(sk, sk_drops.counter);
}

#endif /* __WAITPROF_SOCK_H */
