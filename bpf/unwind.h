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
 * A walk's registers and progress, in a per-CPU map value rather than on the BPF stack:
 * the checker follows values on the stack, and on the stack each frame's ip, stop reason
 * and count made the frame loop a new state to check again (about 160 times a program,
 * 33,000 steps); in a map value they are only numbers, and the loop is checked in a
 * couple of passes. One per scratch slot, as stack_scratch.
 *
 * With them the top of the stack, read in one go: the innermost frames' return addresses
 * and saved rbps are usually in it, and one read of it costs about what one read of a
 * word does (about 90 ns here, against 2 or 3 a frame). Up to the end of the page sp is
 * in, which is mapped (a read that faults costs a microsecond).
 */
#define WP_UNWIND_WINDOW 1024
/* what a walk read, for reusing it (struct wp_ustack_memo): words, bytes from the walk's sp */
#define WP_USTACK_MEMO_WORDS 128
#define WP_USTACK_MEMO_SPAN 16384
struct wp_unwind_walk {
	__u64 ip, sp, bp;
	__u64 win_lo, win_len; /* the addresses win holds (win_len 0: none) */
	__u64 tag;             /* of this process's memo entries; 0: look every row up */
	__u32 n;               /* frames stored */
	__u32 stop;            /* enum wp_unwind_stop, 0 = reached the outermost frame */
	__u32 not_mapped;      /* some frame was outside every mapping the tables know */
	__u32 read_failed;     /* some word could not be read */
	/* where the walk began (its sp is win_lo), and every word it read, in order;
	   nread > WP_USTACK_MEMO_WORDS: more than can be remembered */
	__u64 ip0, bp0;
	__u32 nread;
	__u32 span; /* from win_lo to the end of the farthest word read */
	__u32 off[WP_USTACK_MEMO_WORDS];
	__u64 val[WP_USTACK_MEMO_WORDS];
	/* the walk's window; a reuse's check reads up to WP_USTACK_MEMO_SPAN into it */
	__u8 win[WP_USTACK_MEMO_SPAN + 8];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct wp_unwind_walk);
} unwind_walk SEC(".maps");

/* What the frame loop is handed: pointers only (see struct wp_unwind_walk). */
struct wp_unwind_state {
	struct wp_stack *buf;
	struct wp_unwind_proc *proc;
	struct wp_unwind_walk *w;
	struct task_struct *task; /* whose memory is read (WP_UNWIND_OTHER_TASK) */
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
	struct wp_unwind_map *m;
	__u32 base = 0, len, half;

	if (!proc || !proc->n)
		return -1;
	len = proc->n;
	if (len > WP_UNWIND_MAPS)
		len = WP_UNWIND_MAPS;
	/*
	 * the last mapping starting at or below addr, with the step taken in arithmetic:
	 * a branch on each comparison made the checker follow every path down the search
	 * (7,100 steps a program against 4,400)
	 */
	for (int k = 0; k < 8; k++) {
		half = len / 2;
		m = &proc->m[(base + half) & (WP_UNWIND_MAPS - 1)];
		base += half & -(__u32)(1 - below(addr, m->start));
		len -= half;
	}
	m = &proc->m[base & (WP_UNWIND_MAPS - 1)];
	if (addr < m->start || addr >= m->end)
		return -1;
	return base & (WP_UNWIND_MAPS - 1);
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

/* What unwind_find_row found besides a row's index. */
#define WP_ROW_FP (-1)         /* a mapping without a table: step by frame pointer */
#define WP_ROW_NOT_MAPPED (-2) /* no mapping holds the address: by frame pointer too */
#define WP_ROW_NONE (-3)       /* the table has no row for it */

/*
 * The unwind row in force at address lookup of the process, or one of WP_ROW_*: from
 * this CPU's memo when it holds the address (tag != 0), else by the two binary searches,
 * then remembered. Global, as above: the memo's branches, checked inside the frame loop,
 * cost the verifier more than the rest of the unwinder (its states multiplied with the
 * loop's), and here they are checked once.
 */
__noinline int unwind_find_row(struct wp_unwind_proc *proc, __u64 lookup, __u64 tag)
{
	struct wp_unwind_memo *memo = 0;
	struct wp_unwind_memos *memos;
	struct wp_unwind_map *m;
	__u32 zero = 0;
	int at;

	if (!proc)
		return WP_ROW_NOT_MAPPED;
	memos = tag ? bpf_map_lookup_elem(&unwind_memo, &zero) : 0;
	if (memos) {
		memo = &memos->e[((lookup ^ (lookup >> 21)) * 0x9e3779b97f4a7c15ULL) >> 54];
		if (memo->pc == lookup && memo->tag == tag &&
		    memo->check == memo_check(lookup, tag, memo->row))
			return memo->row & 0x7fffffff;
	}
	at = unwind_map_index(proc, lookup);
	if (at < 0)
		return WP_ROW_NOT_MAPPED;
	m = &proc->m[at & (WP_UNWIND_MAPS - 1)];
	if (m->row_lo >= m->row_hi)
		return WP_ROW_FP;
	at = unwind_row_index(m->row_lo, m->row_hi, lookup - m->bias);
	if (at < 0)
		return WP_ROW_NONE;
	if (memo) {
		memo->check = 0;
		memo->pc = lookup;
		memo->tag = tag;
		memo->row = at;
		memo->check = memo_check(lookup, tag, at);
	}
	return at;
}

/* A word the walk read, noted for reusing the walk (see unwind_reuse). */
static __always_inline void note_read(struct wp_unwind_walk *w, __u64 off, __u64 val)
{
	__u32 i = w->nread;

	/* below the walk's sp (off wrapped), too far, or too many: not remembered */
	if (off > WP_USTACK_MEMO_SPAN - 8 || i >= WP_USTACK_MEMO_WORDS) {
		w->nread = WP_USTACK_MEMO_WORDS + 1;
		return;
	}
	w->off[i] = off;
	w->val[i] = val;
	w->nread = i + 1;
	if (off + 8 > w->span)
		w->span = off + 8;
}

/* A word of the stack, from the window when it holds it. 0 = read. */
static __always_inline long read_word(struct wp_unwind_state *st, struct wp_unwind_walk *w,
				      __u64 addr, __u64 *out)
{
	__u64 off = addr - w->win_lo;
	long err = 0;

	if (off <= WP_UNWIND_WINDOW - 8 && off + 8 <= w->win_len)
		__builtin_memcpy(out, &w->win[off & (WP_UNWIND_WINDOW - 1)], sizeof(*out));
	else
		err = WP_READ_USER(out, sizeof(*out), (void *)addr, st);
	if (err)
		w->read_failed = 1;
	else
		note_read(w, off, *out);
	return err;
}

/* One frame: store the walk's ip, then find the caller's ip, sp and bp. 1 = stop. */
static long unwind_step(__u32 i, void *data)
{
	struct wp_unwind_state *st = data;
	struct wp_unwind_walk *w = st->w;
	struct wp_unwind_row *r = 0;
	__u64 lookup, cfa, ra = 0, bp;
	__u32 idx;
	int at;

	if (!st->buf || !w)
		return 1;
	if (i >= WP_MAX_STACK_DEPTH - 1) {
		w->stop = WP_UNW_TRUNCATED;
		return 1;
	}
	st->buf->ips[i] = w->ip;
	w->n = i + 1;
	/* a return address points after its call, maybe past its function's end */
	lookup = i ? w->ip - 1 : w->ip;
	at = unwind_find_row(st->proc, lookup, w->tag);
	if (at == WP_ROW_FP || at == WP_ROW_NOT_MAPPED) {
		/* no table: a frame-pointer step, as a frame-pointer walk would take it */
		if (at == WP_ROW_NOT_MAPPED)
			w->not_mapped = 1;
		if (!w->bp) /* the outermost frame of frame-pointer code */
			return 1;
		if (w->bp < w->sp || (w->bp & 7) || read_word(st, w, w->bp + 8, &ra) ||
		    read_word(st, w, w->bp, &bp)) {
			w->stop = WP_UNW_NOT_MAPPED;
			return 1;
		}
		w->sp = w->bp + 16;
		w->bp = bp;
		w->ip = ra;
		return ra ? 0 : 1;
	}
	if (at >= 0) {
		idx = at;
		r = bpf_map_lookup_elem(&unwind_rows, &idx);
	}
	if (!r || (r->rule & 15) == WP_CFA_NONE) {
		w->stop = WP_UNW_NO_INFO;
		return 1;
	}
	switch (r->rule & 15) {
	case WP_CFA_RSP:
		cfa = w->sp + r->cfa_off;
		break;
	case WP_CFA_RBP:
		cfa = w->bp + r->cfa_off;
		break;
	case WP_CFA_END:
		return 1;
	default:
		w->stop = WP_UNW_UNSUPPORTED;
		return 1;
	}
	if (read_word(st, w, cfa - 8, &ra)) {
		w->stop = WP_UNW_UNREADABLE;
		return 1;
	}
	if ((r->rule >> 4) == WP_RBP_AT && read_word(st, w, cfa + r->rbp_off8 * 8, &bp)) {
		w->stop = WP_UNW_UNREADABLE;
		return 1;
	}
	if ((r->rule >> 4) == WP_RBP_AT)
		w->bp = bp;
	w->sp = cfa;
	w->ip = ra;
	return ra ? 0 : 1;
}

/*
 * Starts a walk at the user registers ip, sp, bp in w; with a window, the top of the
 * stack is read into it (by the current task: WP_UNWIND_OTHER_TASK walks read word by
 * word).
 */
static __always_inline void unwind_begin(struct wp_unwind_walk *w, __u64 ip, __u64 sp,
					 __u64 bp, __u64 tag, bool window)
{
	__u64 len = 4096 - (sp & 4095);

	w->ip = ip;
	w->sp = sp;
	w->bp = bp;
	w->tag = tag;
	w->n = 0;
	w->stop = 0;
	w->not_mapped = 0;
	w->read_failed = 0;
	w->ip0 = ip;
	w->bp0 = bp;
	w->nread = 0;
	w->span = 0;
	w->win_lo = sp;
	w->win_len = 0;
	if (!window)
		return;
	if (len > WP_UNWIND_WINDOW)
		len = WP_UNWIND_WINDOW;
	/* an unreadable window holds nothing: every word is read on its own */
	if (!bpf_probe_read_user(w->win, len, (void *)sp))
		w->win_len = len;
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
	struct wp_unwind_walk *w;
	struct pt_regs *regs;
	__u32 n, stop;

	if (!cfg.dwarf)
		return -1;
	st.buf = bpf_map_lookup_elem(&stack_scratch, &slot);
	st.proc = bpf_map_lookup_elem(&unwind_procs, &tgid);
	st.w = w = bpf_map_lookup_elem(&unwind_walk, &slot);
	if (!st.buf || !w)
		return -1;
	if (!st.proc) {
		if (tgid == cfg.tgid)
			unwind_request(tgid);
		return -1;
	}
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	unwind_begin(w, regs->ip, regs->sp, regs->bp,
		     (__u64)tgid << 32 | st.proc->generation, true);
	bpf_loop(WP_MAX_STACK_DEPTH, unwind_step, &st, 0);
	stat_add(WP_STAT_UNWIND_DWARF, 1);
	n = w->n;
	stop = w->stop;
	if (w->not_mapped) {
		stat_add(WP_STAT_UNWIND_NOT_MAPPED, 1);
		unwind_request(tgid);
		/* the frames rootward of that code came from frame pointers: say so */
		if (!stop)
			stop = WP_UNW_OUTSIDE;
	}
	if (stop && n < WP_MAX_STACK_DEPTH) {
		st.buf->ips[n] = stop;
		n++;
	}
	/*
	 * The stack ends at its first zero (user space reads no further): what an earlier,
	 * deeper stack left past it stays, unhashed and unread. Clearing all of it cost
	 * about 190 ns a stack.
	 */
	if (n < WP_MAX_STACK_DEPTH)
		st.buf->ips[n] = 0;
	return n;
}

/*
 * Walks remembered for reuse. A walk is a function of where it starts (the user ip, sp
 * and bp), of the tables (the process and their generation) and of the stack words it
 * reads; nothing else. So a walk from the same registers that finds the same values in
 * every word the remembered walk read would store the same frames: its stack is the
 * remembered one, exactly, and is not walked. A thread blocking again and again in one
 * loop (a switch storm, a server's event loop) starts from the same registers every
 * time; each check is one read of the stack's top and a comparison of the words, against
 * a walk's table lookups at every frame (24 frames: about 740 ns here). Two call paths
 * that reach one place with the same registers differ in some return address the walk
 * read, and are both walked (the stacks fixture's 40,000 paths stay apart). Nothing is
 * sampled: a walk that read more than WP_USTACK_MEMO_WORDS words, or farther than
 * WP_USTACK_MEMO_SPAN bytes up the stack, or failed a read, is not remembered.
 *
 * Per CPU and direct-mapped by the registers; used by sched_switch's switch-out alone,
 * which nothing on its CPU interrupts, so no entry is read while it is written.
 */
#define WP_USTACK_MEMO_SLOTS 128
struct wp_ustack_memo {
	__u64 tag; /* tgid << 32 | generation of the tables; 0 = empty */
	__u64 ip, sp, bp;
	__u64 stack; /* the stack id the walk stored */
	__u32 n;     /* the words it read */
	__u32 span;
	__u32 off[WP_USTACK_MEMO_WORDS];
	__u64 val[WP_USTACK_MEMO_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WP_USTACK_MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct wp_ustack_memo);
} ustack_memo SEC(".maps");

static __always_inline __u32 ustack_memo_slot(__u64 ip, __u64 sp)
{
	return ((ip ^ (sp >> 4)) * 0x9e3779b97f4a7c15ULL) >> 57; /* WP_USTACK_MEMO_SLOTS */
}

/*
 * The current task's user stack (process `tgid`, user registers ip, sp and bp, which the
 * caller has at hand: three helper calls fewer) as a walk remembered from the same
 * registers found it, if every word that walk read holds the same value now: its stack
 * id, else 0 (walk it, then unwind_remember). Also marks the slot's walk as not yet made.
 * For DWARF unwinding only (the caller checks cfg.dwarf).
 */
__noinline __u64 unwind_reuse(__u32 slot, __u32 tgid, __u64 ip, __u64 sp, __u64 bp)
{
	struct wp_unwind_proc *proc;
	struct wp_ustack_memo *m;
	struct wp_unwind_walk *w;
	__u32 idx, n, span, i, off;
	__u64 v;

	w = bpf_map_lookup_elem(&unwind_walk, &slot);
	if (!w)
		return 0;
	w->tag = 0;
	proc = bpf_map_lookup_elem(&unwind_procs, &tgid);
	if (!proc)
		return 0;
	idx = ustack_memo_slot(ip, sp);
	m = bpf_map_lookup_elem(&ustack_memo, &idx);
	if (!m || m->tag != ((__u64)tgid << 32 | proc->generation) || m->ip != ip ||
	    m->sp != sp || m->bp != bp)
		return 0;
	n = m->n;
	span = m->span;
	if (n > WP_USTACK_MEMO_WORDS || span > WP_USTACK_MEMO_SPAN)
		return 0;
	if (span && bpf_probe_read_user(w->win, span, (void *)sp))
		return 0;
	for (i = 0; i < WP_USTACK_MEMO_WORDS; i++) {
		if (i >= n)
			break;
		off = m->off[i];
		if (off > WP_USTACK_MEMO_SPAN - 8)
			return 0;
		__builtin_memcpy(&v, &w->win[off & (WP_USTACK_MEMO_SPAN - 1)], sizeof(v));
		if (v != m->val[i]) {
			stat_add(WP_STAT_USTACK_CHANGED, 1);
			return 0;
		}
	}
	return m->stack;
}

/*
 * Remembers the walk just made in this slot (by unwind_user, after unwind_reuse found
 * none) as the one that stored `stack`. Returns 1 when it did (a global function
 * returns a scalar).
 */
__noinline int unwind_remember(__u32 slot, __u64 stack)
{
	struct wp_ustack_memo *m;
	struct wp_unwind_walk *w;
	__u32 idx, n, i;

	w = bpf_map_lookup_elem(&unwind_walk, &slot);
	if (!w || !w->tag)
		return 0;
	n = w->nread;
	if (n > WP_USTACK_MEMO_WORDS || w->read_failed || w->not_mapped) {
		stat_add(WP_STAT_USTACK_UNREMEMBERED, 1);
		return 0;
	}
	idx = ustack_memo_slot(w->ip0, w->win_lo);
	m = bpf_map_lookup_elem(&ustack_memo, &idx);
	if (!m)
		return 0;
	for (i = 0; i < WP_USTACK_MEMO_WORDS; i++) {
		if (i >= n)
			break;
		m->off[i] = w->off[i];
		m->val[i] = w->val[i];
	}
	m->n = n;
	m->span = w->span;
	m->ip = w->ip0;
	m->sp = w->win_lo;
	m->bp = w->bp0;
	m->stack = stack;
	m->tag = w->tag;
	return 1;
}

#endif /* !WP_UNWIND_OTHER_TASK */

#endif /* __WAITPROF_UNWIND_H */
