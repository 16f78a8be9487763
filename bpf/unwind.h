/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The user-stack unwinder: walks the current task's user stack with the unwind tables
 * user space compiled from its files' .eh_frame (src/unwind.rs, layout in waitprof.h), so
 * code built without frame pointers (Debian's glibc, nginx, redis) unwinds completely and
 * the caller of a frameless syscall wrapper is not lost. Code no table covers (a Go
 * binary, JIT code) is walked by frame pointer from there on. Included by waitprof.bpf.c,
 * and by snapshot.bpf.c, which walks other tasks' stacks from a sleepable iterator: it
 * defines WP_UNWIND_OTHER_TASK (only the walk, no current-task entry point) and reads
 * their memory with bpf_copy_from_user_task.
 */
#ifndef __WAITPROF_UNWIND_H
#define __WAITPROF_UNWIND_H

#ifdef WP_UNWIND_OTHER_TASK
#define WP_READ_USER(dst, size, src, st) bpf_copy_from_user_task(dst, size, src, (st)->task, 0)
#else
#define WP_READ_USER(dst, size, src, st) bpf_probe_read_user(dst, size, src)
#endif

/* Sizes are set by user space before load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wp_unwind_row);
} unwind_rows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u32); /* tgid */
	__type(value, struct wp_unwind_proc);
} unwind_procs SEC(".maps");

/*
 * The row found for each return address, remembered per CPU: the same few call sites
 * come back at nearly every switch, and the two binary searches behind a row cost more
 * than reading the frame (about 190 of 250 ns a frame here). Direct-mapped, keyed by the
 * address, the process and its mapping list's generation. A program that interrupts
 * another on the same CPU (a wakeup in an interrupt during a syscall's exit) may write
 * the entry the first is reading: `check` tells a torn entry, which is then not used.
 */
#define WP_UNWIND_MEMO 1024
struct wp_unwind_memo {
	__u64 pc;
	__u64 tag;   /* tgid << 32 | generation */
	__u32 row;
	__u32 check; /* of pc, tag and row */
};

struct wp_unwind_memos {
	struct wp_unwind_memo e[WP_UNWIND_MEMO];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wp_unwind_memos);
} unwind_memo SEC(".maps");

static __always_inline __u32 memo_check(__u64 pc, __u64 tag, __u32 row)
{
	__u64 h = (pc ^ (tag * 0x9e3779b97f4a7c15ULL) ^ ((__u64)row << 17)) * 0xff51afd7ed558ccdULL;

	return (__u32)(h >> 32) | 1;
}

/*
 * The top of the stack, read in one go: the innermost frames' return addresses and saved
 * rbps are usually in it, and one read of it costs about what one read of a word does
 * (about 90 ns here, against 2 or 3 a frame). Up to the end of the page sp is in, which
 * is mapped (a read that faults costs a microsecond). One buffer per scratch slot, as
 * stack_scratch.
 */
#define WP_UNWIND_WINDOW 1024
struct wp_unwind_window {
	__u8 b[WP_UNWIND_WINDOW + 8];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct wp_unwind_window);
} unwind_window SEC(".maps");

struct wp_unwind_state {
	__u64 ip, sp, bp;
	struct wp_stack *buf;
	struct wp_unwind_proc *proc;
	struct wp_unwind_memos *memo; /* NULL: look every row up */
	struct wp_unwind_window *win; /* NULL: read every word */
	__u64 win_lo, win_len;        /* the addresses it holds */
	__u64 tag;                    /* of this process's memo entries */
	struct task_struct *task; /* whose memory is read (WP_UNWIND_OTHER_TASK) */
	__u32 n;         /* frames stored */
	__u32 stop;      /* enum wp_unwind_stop, 0 = reached the outermost frame */
	bool not_mapped; /* some frame was outside every mapping the tables know */
};

#ifndef WP_UNWIND_OTHER_TASK
/* tgids whose tables miss an address their code ran at: user space rereads their maps */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} unwind_wanted SEC(".maps");

/* when the last request went out: at most one per 5 ms, so a stale table costs nothing */
__u64 unwind_wanted_ns = 0;

static __always_inline void unwind_request(__u32 tgid)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 *msg;

	if (now - unwind_wanted_ns < 5000000)
		return;
	unwind_wanted_ns = now;
	msg = bpf_ringbuf_reserve(&unwind_wanted, sizeof(*msg), 0);
	if (!msg)
		return;
	*msg = tgid;
	bpf_ringbuf_submit(msg, BPF_RB_FORCE_WAKEUP);
}

#endif /* !WP_UNWIND_OTHER_TASK */

/*
 * The index of the mapping of a process's table that holds addr, by binary search over
 * the sorted mappings, or -1. A global function: the verifier checks it once, on its own,
 * rather than at every frame of every caller.
 */
__noinline int unwind_map_index(struct wp_unwind_proc *proc, __u64 addr)
{
	__u32 lo = 0, hi, mid;
	struct wp_unwind_map *m;

	if (!proc)
		return -1;
	hi = proc->n;
	if (hi > WP_UNWIND_MAPS)
		hi = WP_UNWIND_MAPS;
	for (int k = 0; k < 8; k++) {
		if (lo >= hi)
			break;
		mid = (lo + hi) / 2;
		m = &proc->m[mid & (WP_UNWIND_MAPS - 1)];
		if (addr < m->start)
			hi = mid;
		else if (addr >= m->end)
			lo = mid + 1;
		else
			return mid & (WP_UNWIND_MAPS - 1);
	}
	return -1;
}

/*
 * The index of the row in force at file address pc among rows [lo, hi): the last at or
 * below it, or -1. Global, as above.
 */
__noinline int unwind_row_index(__u32 lo, __u32 hi, __u64 pc)
{
	struct wp_unwind_row *r;
	__u32 mid;

	if (lo >= hi || pc > 0xffffffffULL)
		return -1;
	/* the answer is in [lo, hi) */
	for (int k = 0; k < 24; k++) {
		if (hi - lo <= 1)
			break;
		mid = lo + (hi - lo) / 2;
		r = bpf_map_lookup_elem(&unwind_rows, &mid);
		if (!r)
			return -1;
		if (r->pc <= pc)
			lo = mid;
		else
			hi = mid;
	}
	r = bpf_map_lookup_elem(&unwind_rows, &lo);
	return r && r->pc <= pc ? (int)lo : -1;
}

/* A word of the stack, from the window when it holds it. 0 = read. */
static __always_inline long read_word(struct wp_unwind_state *st, __u64 addr, __u64 *out)
{
	__u64 off = addr - st->win_lo;

	if (st->win && off <= WP_UNWIND_WINDOW - 8 && off + 8 <= st->win_len) {
		__builtin_memcpy(out, &st->win->b[off & (WP_UNWIND_WINDOW - 1)], sizeof(*out));
		return 0;
	}
	return WP_READ_USER(out, sizeof(*out), (void *)addr, st);
}

/* One frame: store st->ip, then find the caller's ip, sp and bp. 1 = stop. */
static long unwind_step(__u32 i, void *data)
{
	struct wp_unwind_state *st = data;
	struct wp_unwind_memo *memo = 0;
	struct wp_unwind_map *m = 0;
	struct wp_unwind_row *r = 0;
	__u64 lookup, cfa, ra = 0, bp;
	__u32 idx;
	int at;

	if (!st->buf || !st->proc)
		return 1;
	if (i >= WP_MAX_STACK_DEPTH - 1) {
		st->stop = WP_UNW_TRUNCATED;
		return 1;
	}
	st->buf->ips[i] = st->ip;
	st->n = i + 1;
	/* a return address points after its call, maybe past its function's end */
	lookup = i ? st->ip - 1 : st->ip;
	if (st->memo) {
		memo = &st->memo->e[((lookup ^ (lookup >> 21)) * 0x9e3779b97f4a7c15ULL) >> 54];
		if (memo->pc == lookup && memo->tag == st->tag &&
		    memo->check == memo_check(lookup, st->tag, memo->row)) {
			idx = memo->row;
			r = bpf_map_lookup_elem(&unwind_rows, &idx);
			if (r)
				goto found;
		}
	}
	at = unwind_map_index(st->proc, lookup);
	if (at >= 0)
		m = &st->proc->m[at & (WP_UNWIND_MAPS - 1)];
	if (m && m->row_lo < m->row_hi) {
		at = unwind_row_index(m->row_lo, m->row_hi, lookup - m->bias);
		idx = at;
		r = at >= 0 ? bpf_map_lookup_elem(&unwind_rows, &idx) : 0;
		if (r && memo) {
			memo->check = 0;
			memo->pc = lookup;
			memo->tag = st->tag;
			memo->row = idx;
			memo->check = memo_check(lookup, st->tag, idx);
		}
	}
	if (!m || m->row_lo == m->row_hi) {
		/* no table: a frame-pointer step, as a frame-pointer walk would take it */
		if (!m)
			st->not_mapped = true;
		if (!st->bp) /* the outermost frame of frame-pointer code */
			return 1;
		if (st->bp < st->sp || (st->bp & 7) ||
		    read_word(st, st->bp + 8, &ra) || read_word(st, st->bp, &bp)) {
			st->stop = WP_UNW_NOT_MAPPED;
			return 1;
		}
		st->sp = st->bp + 16;
		st->bp = bp;
		st->ip = ra;
		return ra ? 0 : 1;
	}
found:
	if (!r || (r->rule & 15) == WP_CFA_NONE) {
		st->stop = WP_UNW_NO_INFO;
		return 1;
	}
	switch (r->rule & 15) {
	case WP_CFA_RSP:
		cfa = st->sp + r->cfa_off;
		break;
	case WP_CFA_RBP:
		cfa = st->bp + r->cfa_off;
		break;
	case WP_CFA_END:
		return 1;
	default:
		st->stop = WP_UNW_UNSUPPORTED;
		return 1;
	}
	if (read_word(st, cfa - 8, &ra)) {
		st->stop = WP_UNW_UNREADABLE;
		return 1;
	}
	if ((r->rule >> 4) == WP_RBP_AT &&
	    read_word(st, cfa + r->rbp_off8 * 8, &st->bp)) {
		st->stop = WP_UNW_UNREADABLE;
		return 1;
	}
	st->sp = cfa;
	st->ip = ra;
	return ra ? 0 : 1;
}

#ifndef WP_UNWIND_OTHER_TASK
/*
 * Unwinds the current task's user stack into stack_scratch[slot] with its process's
 * tables. Returns the number of addresses stored (the last may be an enum wp_unwind_stop
 * marker), or -1 when the process has no tables (the caller walks frame pointers
 * instead). Global, so the verifier checks it once rather than inside every caller.
 */
__noinline int unwind_user(__u32 slot)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct wp_unwind_state st = {};
	struct pt_regs *regs;
	__u32 zero = 0;

	if (!cfg.dwarf)
		return -1;
	st.buf = bpf_map_lookup_elem(&stack_scratch, &slot);
	st.proc = bpf_map_lookup_elem(&unwind_procs, &tgid);
	st.memo = bpf_map_lookup_elem(&unwind_memo, &zero);
	if (!st.buf)
		return -1;
	if (!st.proc) {
		if (tgid == cfg.tgid)
			unwind_request(tgid);
		return -1;
	}
	st.tag = (__u64)tgid << 32 | st.proc->generation;
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	st.ip = BPF_CORE_READ(regs, ip);
	st.sp = BPF_CORE_READ(regs, sp);
	st.bp = BPF_CORE_READ(regs, bp);
	st.win = bpf_map_lookup_elem(&unwind_window, &slot);
	if (st.win) {
		__u64 len = 4096 - (st.sp & 4095);

		if (len > WP_UNWIND_WINDOW)
			len = WP_UNWIND_WINDOW;
		st.win_lo = st.sp;
		st.win_len = len;
		if (bpf_probe_read_user(st.win->b, len, (void *)st.sp))
			st.win = 0;
	}
	bpf_loop(WP_MAX_STACK_DEPTH, unwind_step, &st, 0);
	stat_add(WP_STAT_UNWIND_DWARF, 1);
	if (st.not_mapped) {
		stat_add(WP_STAT_UNWIND_NOT_MAPPED, 1);
		unwind_request(tgid);
		/* the frames rootward of that code came from frame pointers: say so */
		if (!st.stop)
			st.stop = WP_UNW_OUTSIDE;
	}
	if (st.stop && st.n < WP_MAX_STACK_DEPTH) {
		st.buf->ips[st.n] = st.stop;
		st.n++;
	}
	/*
	 * The stack ends at its first zero (user space reads no further): what an earlier,
	 * deeper stack left past it stays, unhashed and unread. Clearing all of it cost
	 * about 190 ns a stack.
	 */
	if (st.n < WP_MAX_STACK_DEPTH)
		st.buf->ips[st.n] = 0;
	return st.n;
}

#endif /* !WP_UNWIND_OTHER_TASK */

#endif /* __WAITPROF_UNWIND_H */
