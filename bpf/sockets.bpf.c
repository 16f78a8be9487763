// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Every listening TCP socket's accept queue and drop counter, read on demand: user space
 * runs this iterator at the start and the end of a session, so a listener's drops are
 * counted over the whole session, not only between the accepts waitprof.bpf.c samples.
 * Its own object: a kernel without TCP iterators still runs everything else.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "waitprof.h"
#include "sock.h"

/* Not used by the program: makes the skeleton export the record's type to Rust. */
const volatile struct wp_listen_sample sample_for_rust = {};

SEC("iter/tcp")
int listening_sockets(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct wp_listen_sample s = {};
	struct sock *sk;

	if (!skc || BPF_CORE_READ(skc, skc_state) != TCP_LISTEN)
		return 0;
	sk = (struct sock *)skc;
	s.inode = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
	s.drops = sock_drops(sk);
	s.qlen = BPF_CORE_READ(sk, sk_ack_backlog);
	s.limit = BPF_CORE_READ(sk, sk_max_ack_backlog);
	bpf_seq_write(ctx->meta->seq, &s, sizeof(s));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
