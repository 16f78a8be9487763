// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * waitprof: off-CPU time of one process, split into blocked and run-queue wait,
 * attributed to (thread, kind, syscall, outcome, user stack, kernel stack).
 *
 * The model: every off-CPU interval runs from sched_switch (out) to sched_switch (in).
 * If the thread left the CPU runnable (preempted), all of it is run-queue wait; otherwise
 * it is blocked until sched_waking and run-queue wait after. Inside a tracked syscall
 * (epoll, futex waits, accept) the intervals of one call form an episode, closed at
 * sys_exit where the return value gives its outcome. Everything else is aggregated per
 * interval as kind "other", labelled with the syscall the thread was in.
 *
 * Each hook has three entry points (tp_btf, raw_tp, classic tracepoint) around one
 * shared core; user space loads exactly one flavour (see src/session.rs).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "waitprof.h"
#include "sock.h"

#define PF_EXITING 0x00000004
#define PF_KTHREAD 0x00200000
#define TASK_RUNNING 0
/* Classic sched_switch reports a preempted task with this bit (TASK_REPORT_MAX). */
#define TP_STATE_PREEMPTED 0x100

#define EAGAIN 11
#define EEXIST 17
#define E2BIG 7
#define EINTR 4
#define ETIMEDOUT 110
/* Kernel-internal restart codes that sys_exit can see before signal delivery. */
#define ERESTARTSYS 512
#define ERESTART_RESTARTBLOCK 516

/* futex(2) op without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME */
#define FUTEX_CMD_MASK 127

#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Kernels before 5.14 called task_struct.__state "state". */
struct task_struct___o {
	volatile long state;
} __attribute__((preserve_access_index));

const volatile struct wp_config cfg = {};

/* Set by user space after every program is attached, so all hooks start at one instant. */
__u64 session_start_ns = 0;
/* Set by user space when the session ends: hooks stop recording before maps are read. */
__u64 session_end_ns = 0;
__u64 stats[WP_STAT_COUNT] = {};
const volatile struct wp_enums enums_for_rust = {};
const volatile struct wp_event event_for_rust = {};

/* Sizes are set by user space before load (bpf_map__set_max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct thread_state);
} threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct agg_key);
	__type(value, struct agg_val);
} agg SEC(".maps");

/*
 * Stacks deduplicated by a 64-bit hash of their frames. A STACK_TRACE map would hash into
 * far fewer buckets, and a colliding stack is lost on every later capture; here two
 * different stacks share a key only on a 64-bit collision. Preallocated: without it,
 * bursts of new stacks fail with ENOMEM while the allocator's per-CPU cache refills.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct wp_stack);
} stacks SEC(".maps");

/* Who waited on which object (futex, epoll fd, listening socket): total ns per pair. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct waiter_key);
	__type(value, __u64);
} waiters SEC(".maps");

/* Listening sockets the target accepted on, by inode. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct wp_listener);
} listeners SEC(".maps");

/* On-CPU samples of the target's threads: (thread, user stack) -> samples. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct wp_oncpu_key);
	__type(value, __u64);
} oncpu SEC(".maps");

/*
 * Set by user space once the target is known to run Go: its threads are then sampled on
 * the CPU (oncpu_sample), to tell what its running goroutines run.
 */
__u32 oncpu_on = 0;

/*
 * The target's epoll fds, polled (see wp_poll): those below WP_POLL_FDS_DIRECT by index
 * (an array lookup is a few instructions, a hash lookup a call), the others by hash.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WP_POLL_FDS_DIRECT);
	__type(key, __u32);
	__type(value, struct wp_poll);
} polls_direct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wp_poll);
} polls SEC(".maps");

/*
 * Where a stack is captured before it is hashed; one slot per hook context that captures.
 * sched_switch and sched_waking run with interrupts off, but sys_exit can be interrupted
 * by a wakeup, so each has its own.
 */
#define SCRATCH_SCHED 0
#define SCRATCH_SYS_EXIT 1
#define SCRATCH_WAKING 2
/* the on-CPU sample runs in a timer interrupt, which can strike inside sys_exit */
#define SCRATCH_SAMPLE 3
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct wp_stack);
} stack_scratch SEC(".maps");

#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

/* One 64-bit word into an FNV-1a style hash (stack keys, place signatures). */
static __always_inline __u64 fnv_mix(__u64 h, __u64 word)
{
	return (h ^ word) * FNV64_PRIME;
}

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1);
} exits SEC(".maps");

static __always_inline void stat_add(enum wp_stat which, __u64 v)
{
	if (which < WP_STAT_COUNT)
		__sync_fetch_and_add(&stats[which], v);
}

/* --timeline's events (max_entries set by user space: a page when it is off) */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1);
} timeline SEC(".maps");

static __always_inline struct wp_event *timeline_reserve(__u8 type, __u32 tid, __u64 now)
{
	struct wp_event *ev = bpf_ringbuf_reserve(&timeline, sizeof(*ev), 0);

	if (!ev) {
		stat_add(WP_STAT_TIMELINE_DROPPED, 1);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = type;
	ev->tid = tid;
	ev->ts = now;
	return ev;
}

/* User space is woken only once the buffer is half full: it reads on a timer otherwise. */
static __always_inline void timeline_submit(struct wp_event *ev)
{
	__u64 avail = bpf_ringbuf_query(&timeline, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&timeline, BPF_RB_RING_SIZE);

	bpf_ringbuf_submit(ev, avail > size / 2 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* The value under `key`, inserted as `init` if missing; NULL when the map is full. */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *init)
{
	void *val = bpf_map_lookup_elem(map, key);

	if (val)
		return val;
	/* an -EEXIST here means another CPU inserted it first: the lookup finds it */
	bpf_map_update_elem(map, key, init, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

static __always_inline bool recording(void)
{
	return session_start_ns && !session_end_ns;
}

static __always_inline bool selected(__u32 tgid, __u32 tid)
{
	return tgid == cfg.tgid && (!cfg.tid || tid == cfg.tid);
}

static __always_inline bool kind_enabled(__u8 kind)
{
	return cfg.kinds_mask & (1u << kind);
}

/*
 * The syscall a thread is in, from its user-entry registers. The x86 entry code keeps the
 * syscall number in orig_ax and stores -1 there for interrupts and exceptions, so a
 * non-negative value means "inside this syscall".
 */
static __always_inline __u8 classify(struct pt_regs *regs, __s32 *nr_out)
{
	long nr = -1;
	__u8 class;

	if (regs)
		nr = regs->orig_ax;
	*nr_out = nr < 0 ? -1 : (__s32)nr;
	if (nr < 0 || nr >= WP_MAX_SYSCALL_NR)
		return WP_KIND_OTHER;
	class = cfg.sysclass[nr];
	switch (class) {
	case WP_SYS_EPOLL:
		return WP_KIND_EPOLL;
	case WP_SYS_FUTEX_WAIT:
	case WP_SYS_FUTEX_WAITV:
		return WP_KIND_FUTEX;
	case WP_SYS_ACCEPT:
		return WP_KIND_ACCEPT;
	case WP_SYS_FUTEX_OP: {
		int op = PT_REGS_PARM2_SYSCALL(regs) & FUTEX_CMD_MASK;

		/* wake and requeue operations do not wait on the futex */
		if (op < 32 && (cfg.futex_wait_ops & (1u << op)))
			return WP_KIND_FUTEX;
		return WP_KIND_OTHER;
	}
	default:
		return WP_KIND_OTHER;
	}
}

/*
 * The user registers of `task` (a typed pointer: the current task, or tp_btf's), or of the
 * current task. Like every struct pt_regs * in this file (from bpf_task_pt_regs), a typed
 * kernel pointer: its fields are read by plain loads, where
 * BPF_CORE_READ calls a helper (about 30 ns a read here, a dozen reads a context switch).
 */
static __always_inline struct pt_regs *task_regs_of(struct task_struct *task)
{
	return (struct pt_regs *)bpf_task_pt_regs(task);
}

static __always_inline struct pt_regs *current_regs(void)
{
	return task_regs_of(bpf_get_current_task_btf());
}

/*
 * Whether cfg.preempt_from_rq leads to this CPU's preempt count: 0 = not checked yet,
 * 1 = it held what a context switch holds (preemption off, no interrupt), 2 = it did not,
 * and no waker stack is reused for the rest of the session.
 */
__u32 preempt_count_ok = 0;

#define WP_SOFTIRQ_OFFSET 0x100U
#define WP_SOFTIRQ_MASK 0xff00U
#define WP_HARDIRQ_MASK 0xf0000U
#define WP_NMI_MASK 0xf00000U

/* This CPU's preempt count, reached through the current task's run queue. */
static __always_inline bool this_preempt_count(struct task_struct *cur, __u32 *count)
{
	struct rq *rq;

	if (!cfg.preempt_from_rq || !bpf_core_field_exists(cur->se.cfs_rq) ||
	    !bpf_core_field_exists(struct cfs_rq, rq))
		return false;
	/* plain loads through the typed pointers (see current_regs) */
	rq = cur->se.cfs_rq->rq;
	if (!rq || rq->cpu != (int)bpf_get_smp_processor_id())
		return false;
	return !bpf_probe_read_kernel(count, sizeof(*count), (void *)rq + cfg.preempt_from_rq);
}

/* Checks the preempt count's address once, in a context switch of the target. */
static __always_inline void check_preempt_count(void)
{
	__u32 count;

	if (preempt_count_ok || !cfg.preempt_from_rq)
		return;
	if (!this_preempt_count(bpf_get_current_task_btf(), &count))
		return;
	preempt_count_ok = (count & 0xff) >= 1 && !(count & (WP_SOFTIRQ_MASK | WP_HARDIRQ_MASK |
								 WP_NMI_MASK)) ? 1 : 2;
}

/*
 * A task's state word (__state since 5.14, state before), by plain loads through its
 * typed pointer `t` (see current_regs): in sched_switch, the current task's is prev's,
 * whatever the flavour.
 */
static __always_inline unsigned int task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return t->__state;
	return ((struct task_struct___o *)t)->state;
}

/*
 * Whether a kernel return address is in the interrupt entry code (see wp_config): a
 * stack through it ran in an interrupt. The per-CPU preempt count would say so directly,
 * but a BPF program can only find it where kallsyms lists per-CPU data
 * (CONFIG_KALLSYMS_ALL). 1 or 0, by below(): hash_frames() tests every frame.
 */
static __always_inline __u64 interrupt_entry(__u64 ip)
{
	return below(ip - cfg.irq_entry_lo, cfg.irq_entry_hi - cfg.irq_entry_lo) &
	       ~below(ip - cfg.fault_entry_lo, cfg.fault_entry_hi - cfg.fault_entry_lo);
}

#include "unwind.h"

/*
 * The hash of a captured stack's first n frames. With cut_irq, a kernel stack is cut at
 * its first interrupt entry (see capture_stack_as): a zero follows the entry, where user
 * space stops reading, and *cut is set.
 */
static __always_inline __u64 hash_frames(struct wp_stack *buf, int n, int cut_irq, int *cut)
{
	__u64 want = cut_irq && cfg.irq_entry_hi ? 1 : 0;
	__u64 hash = FNV64_OFFSET, ip;
	int i, c = 0;

	for (i = 0; i < WP_MAX_STACK_DEPTH; i++) {
		if (i >= n)
			break;
		ip = buf->ips[i];
		hash = fnv_mix(hash, ip);
		if (want & interrupt_entry(ip)) {
			c = 1;
			break;
		}
	}
	/* the stack ends at its first zero (user space reads no further, as in unwind_user) */
	if (c && i + 1 < WP_MAX_STACK_DEPTH)
		buf->ips[i + 1] = 0;
	*cut = c;
	return hash;
}

/*
 * The same as a global function: the verifier walks its 127-frame loops once per program
 * instead of once for every inlined capture and every path that reaches it. That pays
 * where a program captures on many paths (sched_switch: 548 -> 282-302 ms to verify,
 * sched_waking 286 -> 138-144 ms), not where it captures once (sys_exit, the on-CPU sample:
 * verifying the function costs more than the inlined loop there).
 */
__noinline __u64 stack_hash(struct wp_stack *buf __arg_nonnull, int n, int cut_irq,
			    int *cut __arg_nonnull)
{
	return hash_frames(buf, n, cut_irq, cut);
}

/*
 * Captures the current stack into the stack table and returns its reference (see
 * enum wp_stack_marker). `slot` keeps a sys_exit capture, which may be preempted, apart
 * from sched_switch's on the same CPU. With `interrupted`, a kernel stack that runs
 * through an interrupt entry is cut there and *interrupted set: what the interrupt
 * landed on is unrelated, and would make every such stack a new one. With `fp_only`, a user
 * stack is walked by frame pointer (bpf_get_stack), not with the target's unwind tables.
 */
static __always_inline __u64 capture_stack_as(void *ctx, bool user, bool fp_only, __u32 slot,
					       bool *interrupted, bool shared_hash)
{
	struct wp_stack *buf = bpf_map_lookup_elem(&stack_scratch, &slot);
	__u64 hash;
	long len, err;
	int n, cut = 0;
	__u64 k;

	if (!buf)
		return WP_STACK_TABLE_FULL;
	/*
	 * A kernel stack starts inside this program, at an address that depends on which
	 * inlined copy of this function runs: skip that frame, or one stack gets several hashes.
	 * The tracing frames below it are the same every time and are trimmed for display.
	 */
	if (user && bpf_get_current_pid_tgid() >> 32 != cfg.tgid) {
		/*
		 * A waker in another process: its unwind tables are not built (the target's
		 * only), and past its first frame a frame-pointer walk reads garbage in code
		 * built without them, a new stack at every walk. Its leaf, marked so, is the
		 * same at every wakeup from one place (and cheaper).
		 */
		buf->ips[0] = current_regs()->ip;
		buf->ips[1] = WP_UNW_OTHER_PROCESS;
		buf->ips[2] = 0;
		len = 2; /* addresses, as unwind_user counts them */
	} else {
		len = user && !fp_only ? unwind_user(slot) : -1;
	}
	if (len >= 0) {
		len = len > WP_MAX_STACK_DEPTH ? sizeof(buf->ips) : len * sizeof(__u64);
	} else {
		len = bpf_get_stack(ctx, buf->ips, sizeof(buf->ips),
				    user ? BPF_F_USER_STACK : (1 & BPF_F_SKIP_FIELD_MASK));
		/* the target's stack, walked by frame pointer only while its tables load */
		k = len / sizeof(__u64);
		asm volatile("" : "+r"(k)); /* keep the bound check on k itself */
		if (user && !fp_only && cfg.dwarf && len > 0 && k < WP_MAX_STACK_DEPTH &&
		    bpf_get_current_pid_tgid() >> 32 == cfg.tgid) {
			buf->ips[k] = WP_UNW_PENDING;
			len += sizeof(__u64);
		}
	}
	if (len <= 0) {
		stat_add(user ? WP_STAT_USTACK_ERR : WP_STAT_KSTACK_ERR, 1);
		return len < 0 ? (__u64)-len : 61 /* ENODATA */;
	}
	n = len / sizeof(__u64);
	hash = shared_hash ? stack_hash(buf, n, interrupted ? 1 : 0, &cut)
			   : hash_frames(buf, n, interrupted ? 1 : 0, &cut);
	if (interrupted)
		*interrupted = cut;
	if (hash < WP_STACK_ID_MIN)
		hash |= 1ULL << 63;
	if (!bpf_map_lookup_elem(&stacks, &hash)) {
		err = bpf_map_update_elem(&stacks, &hash, buf, BPF_NOEXIST);
		if (err == -E2BIG) {
			stat_add(WP_STAT_STACK_TABLE_FULL, 1);
			return WP_STACK_TABLE_FULL;
		}
		/* EEXIST: another CPU stored it first; anything else loses this stack */
		if (err && err != -EEXIST) {
			stat_add(user ? WP_STAT_USTACK_ERR : WP_STAT_KSTACK_ERR, 1);
			return (__u64)-err;
		}
	}
	return hash;
}

static __always_inline __u64 capture_stack(void *ctx, bool user, __u32 slot, bool *interrupted)
{
	return capture_stack_as(ctx, user, false, slot, interrupted, true);
}

/* The file behind a task's fd, or NULL. */
static __always_inline struct file *fd_file(struct task_struct *task, long fd)
{
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	unsigned int max = BPF_CORE_READ(task, files, fdt, max_fds);
	struct file *f = 0;

	if (fd < 0 || fd >= max)
		return 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The socket behind a task's fd, or NULL; *ino gets its inode number. */
static __always_inline struct sock *fd_sock(struct task_struct *task, long fd, __u64 *ino)
{
	struct file *f = fd_file(task, fd);
	struct socket *sock;

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	*ino = BPF_CORE_READ(f, f_inode, i_ino);
	sock = BPF_CORE_READ(f, private_data);
	return sock ? BPF_CORE_READ(sock, sk) : 0;
}

/*
 * What a tracked wait is on: the futex address (the first of futex_waitv's), the epoll
 * fd + 1 (so fd 0 is not "none"), the listening socket's inode. 0 = unknown. `task` may
 * be another task than the current one, whose user memory cannot be read from here.
 */
static __noinline __u64 object_of(struct task_struct *task, struct pt_regs *regs,
				       __u8 kind, __s32 nr, bool current)
{
	__u64 obj = 0, ino = 0;

	if (!regs || nr < 0 || nr >= WP_MAX_SYSCALL_NR)
		return 0;
	switch (kind) {
	case WP_KIND_FUTEX:
		obj = PT_REGS_PARM1_SYSCALL(regs);
		if (cfg.sysclass[nr] == WP_SYS_FUTEX_WAITV) {
			/* struct futex_waitv { u64 val; u64 uaddr; ... }[] */
			if (!current || bpf_probe_read_user(&obj, sizeof(obj), (void *)obj + 8))
				obj = 0;
		}
		return obj;
	case WP_KIND_EPOLL:
		return PT_REGS_PARM1_SYSCALL(regs) + 1;
	case WP_KIND_ACCEPT:
		fd_sock(task, (int)PT_REGS_PARM1_SYSCALL(regs), &ino);
		return ino;
	default:
		return 0;
	}
}

static __always_inline void aggregate(struct thread_state *ts, __u8 outcome, __u64 ustack,
				      __u64 kstack, struct wp_waker *waker, __u64 count,
				      __u64 blocked, __u64 runq)
{
	struct agg_key key = {
		/* a wait that began before attach keeps its thread: user space gives it the
		 * stacks the snapshot of off-CPU threads read at the start */
		.tid = cfg.rows_per_thread || ustack == WP_STACK_BEFORE_ATTACH ? ts->tid : 0,
		.ustack = ustack,
		.kstack = kstack,
		.object = ts->kind == WP_KIND_OTHER ? 0 : ts->object,
		.syscall = (__s16)ts->syscall,
		.kind = ts->kind,
		.outcome = outcome,
	};
	struct agg_val *val, init = {};

	__builtin_memcpy(&key.waker, waker, sizeof(key.waker));
	key.waker.reused = 0;
	if (!cfg.rows_per_thread)
		key.waker.tid = 0;

	if (!kind_enabled(ts->kind))
		return;
	if (blocked + runq < cfg.min_block_ns) {
		stat_add(WP_STAT_BELOW_MIN, 1);
		stat_add(WP_STAT_BELOW_MIN_NS, blocked + runq);
		return;
	}
	val = lookup_or_init(&agg, &key, &init);
	if (!val) {
		stat_add(WP_STAT_AGG_FULL, 1);
		stat_add(WP_STAT_AGG_FULL_NS, blocked + runq);
		return;
	}
	__sync_fetch_and_add(&val->count, count);
	__sync_fetch_and_add(&val->blocked_ns, blocked);
	__sync_fetch_and_add(&val->runq_ns, runq);
}

static __always_inline __u8 outcome_of(__u8 kind, long ret)
{
	if (ret == -EINTR || ret == -ERESTARTSYS || (ret <= -513 && ret >= -ERESTART_RESTARTBLOCK))
		return WP_OUT_INTR;
	if (ret == -ETIMEDOUT)
		return WP_OUT_TIMEOUT;
	if (ret == -EAGAIN)
		return WP_OUT_AGAIN;
	if (ret < 0)
		return WP_OUT_ERROR;
	if (kind == WP_KIND_EPOLL && ret == 0)
		return WP_OUT_TIMEOUT;
	return WP_OUT_OK;
}

/* Counts the thread as a waiter on the episode's object. */
static __noinline void add_waiter(struct thread_state *ts, __u64 ns)
{
	struct waiter_key key = { .object = ts->object, .tid = ts->tid, .kind = ts->kind };
	__u64 *val, zero = 0;

	if (!key.object || !kind_enabled(ts->kind))
		return;
	val = lookup_or_init(&waiters, &key, &zero);
	if (!val) {
		stat_add(WP_STAT_WAITERS_FULL, 1);
		return;
	}
	__sync_fetch_and_add(val, ns);
}

/*
 * log2 of a run-queue wait in microseconds: the histogram slot (runqlat's buckets).
 * Halvings in arithmetic (below(), not `>`, which compiles to a branch): the checker
 * followed each branch's paths through the rest of sched_switch.
 */
static __always_inline __u32 runq_slot(__u64 ns)
{
	__u64 v = ns / 1000, r, shift;

	r = below(0xFFFFFFFF, v) << 5;
	v >>= r;
	shift = below(0xFFFF, v) << 4;
	v >>= shift;
	r |= shift;
	shift = below(0xFF, v) << 3;
	v >>= shift;
	r |= shift;
	shift = below(0xF, v) << 2;
	v >>= shift;
	r |= shift;
	shift = below(0x3, v) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	asm volatile("" : "+r"(r)); /* the checker sees the bound below (it cannot follow the arithmetic) */
	if (r >= WP_RUNQ_SLOTS)
		r = WP_RUNQ_SLOTS - 1;
	return r;
}

/* A new fd's counts start from this (never written): too large for the BPF stack. */
struct wp_poll poll_zero = {};

/* The counts of epoll fd `fd`, if it has any. */
static __always_inline struct wp_poll *poll_find(__u32 fd)
{
	if (fd < WP_POLL_FDS_DIRECT)
		return bpf_map_lookup_elem(&polls_direct, &fd);
	return bpf_map_lookup_elem(&polls, &fd);
}

/* The counts of epoll fd `fd`, made if new. */
static __always_inline struct wp_poll *poll_of(__u32 fd)
{
	struct wp_poll *p;

	if (fd < WP_POLL_FDS_DIRECT)
		return bpf_map_lookup_elem(&polls_direct, &fd);
	p = lookup_or_init(&polls, &fd, &poll_zero);
	if (!p)
		stat_add(WP_STAT_POLLS_FULL, 1);
	return p;
}

static __always_inline void poll_gap(struct wp_poll *p, __u64 now, __u32 tid)
{
	__u64 gap;
	__u32 slot;

	if (!p->last_ns || now <= p->last_ns)
		return;
	gap = now - p->last_ns;
	__sync_fetch_and_add(&p->gaps, 1);
	__sync_fetch_and_add(&p->gap_sum_ns, gap);
	if (gap > p->gap_max_ns) {
		p->gap_max_ns = gap;
		p->gap_max_end_ns = now;
		p->gap_max_tid = tid;
	}
	slot = runq_slot(gap);
	if (slot < WP_RUNQ_SLOTS)
		__sync_fetch_and_add(&p->gap_hist[slot], 1);
}

/* An epoll call on `fd` blocked at `now`: from here the fd is watched, and a gap ends. */
static __always_inline void poll_blocked(struct thread_state *ts, __u32 fd, __u64 now)
{
	struct wp_poll *p = poll_of(fd);

	if (!p)
		return;
	/* read, then added: a fetching add needs BPF ISA v3, which older kernels lack */
	if (!p->watching)
		poll_gap(p, now, ts->tid);
	__sync_fetch_and_add(&p->watching, 1);
	ts->flags |= WP_TF_POLL_WATCHING;
	ts->poll_fd = fd;
}

/* The blocked epoll call of `ts` ended, however it ended (see close_episode). */
static __always_inline void poll_unblocked(struct thread_state *ts, __u64 now)
{
	struct wp_poll *p;

	if (!(ts->flags & WP_TF_POLL_WATCHING))
		return;
	ts->flags &= ~WP_TF_POLL_WATCHING;
	p = poll_find(ts->poll_fd);
	if (!p)
		return;
	__sync_fetch_and_add(&p->watching, -1);
	p->last_ns = now;
}

/*
 * An epoll call on `fd` returned at `now`; `ts` is its thread's state, null when not
 * looked up (the call did not block). False where the fd's counts were full.
 */
static __always_inline bool poll_returned(struct thread_state *ts, __u32 tid, __u32 fd, __u64 now)
{
	bool blocked = ts && (ts->flags & WP_TF_POLL_WATCHING) && ts->poll_fd == fd;
	struct wp_poll *p = poll_of(fd);

	if (!p)
		return false;
	__sync_fetch_and_add(&p->polls, 1);
	if (ts) {
		ts->polls++;
		if (blocked)
			ts->polls_blocking++;
	}
	if (blocked) {
		__sync_fetch_and_add(&p->blocking, 1);
		poll_unblocked(ts, now);
		return true;
	}
	/* a call that did not block ends a gap unless another call watches the fd */
	if (!p->watching)
		poll_gap(p, now, tid);
	p->last_ns = now;
	return true;
}

static __always_inline void close_episode(struct thread_state *ts, __u8 outcome)
{
	aggregate(ts, outcome, ts->ep_ustack, ts->ep_kstack, &ts->ep_waker, 1, ts->ep_blocked_ns,
		  ts->ep_runq_ns);
	add_waiter(ts, ts->ep_blocked_ns + ts->ep_runq_ns);
	ts->flags &= ~WP_TF_IN_EPISODE;
	/* normally ended at sys_exit by poll_returned; here if the exit was not seen */
	poll_unblocked(ts, bpf_ktime_get_ns());
	ts->ep_blocked_ns = 0;
	ts->ep_runq_ns = 0;
}

/* A new thread's state is built here: it is larger than the BPF stack allows. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct thread_state);
} thread_scratch SEC(".maps");

/*
 * The target's thread this CPU last switched in (see wp_running): sys_exit's test that
 * the running thread's switch-in was seen, which spares the thread table's hash lookup at
 * most of the target's syscalls, and at the epoll calls that did not block.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wp_running);
} running_here SEC(".maps");

static __always_inline struct wp_running *running(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&running_here, &zero);
}

/*
 * The epoll returns counted on this CPU for thread `tid`, taken from the note (0 if the
 * note is another thread's: those are added to that thread's state, whose switch-out
 * went unseen).
 */
static __always_inline __u32 take_polls(struct wp_running *r, __u32 tid)
{
	struct thread_state *other;
	__u32 n = r->polls;

	if (!n)
		return 0;
	r->polls = 0;
	if (r->tid == tid)
		return n;
	other = bpf_map_lookup_elem(&threads, &r->tid);
	if (other)
		other->polls += n;
	return 0;
}

/*
 * From now thread `tid` (state `ts`) runs on this CPU, or none of the target's (tid 0,
 * ts null). The polls counted for the one before are added to its state.
 */
static __always_inline void note_running(__u32 tid, struct thread_state *ts)
{
	struct wp_running *r = running();

	if (!r)
		return;
	take_polls(r, 0);
	r->tid = tid;
	r->quiet = ts && !(ts->flags & (WP_TF_IN_EPISODE | WP_TF_POLL_WATCHING));
}

/* Thread `tid` (state `ts`) leaves this CPU, or exits: its polls counted here are added. */
static __always_inline void note_leaving(__u32 tid, struct thread_state *ts)
{
	struct wp_running *r = running();

	if (!r)
		return;
	if (ts)
		ts->polls += take_polls(r, tid);
	r->tid = 0;
	r->quiet = 0;
}

static __always_inline struct thread_state *thread_new(__u32 tid, __u64 start, __u32 flags)
{
	struct thread_state *init, *ts;
	__u32 zero = 0;

	init = bpf_map_lookup_elem(&thread_scratch, &zero);
	if (!init)
		return 0;
	__builtin_memset(init, 0, sizeof(*init));
	init->in_ts = init->out_ts = init->start_ts = start;
	init->cur_ustack = init->cur_kstack = WP_STACK_BEFORE_ATTACH;
	init->ep_ustack = init->ep_kstack = WP_STACK_BEFORE_ATTACH;
	init->syscall = -1;
	init->tid = tid;
	init->flags = flags;
	init->kind = WP_KIND_OTHER;
	if (bpf_map_update_elem(&threads, &tid, init, BPF_NOEXIST)) {
		ts = bpf_map_lookup_elem(&threads, &tid);
		if (!ts)
			stat_add(WP_STAT_THREADS_FULL, 1);
		return ts;
	}
	return bpf_map_lookup_elem(&threads, &tid);
}

/*
 * The current task, thread `tid` of the target, seen for the first time while it runs:
 * on a CPU since the session began, or since it was created (its first switch-in
 * unseen). Null if it is exiting (sched_process_exit already reported it) or no room.
 */
static __always_inline struct thread_state *thread_found_running(struct task_struct *task,
								 __u32 tid)
{
	__u64 since = BPF_CORE_READ(task, start_time);
	struct thread_state *ts;

	if (BPF_CORE_READ(task, flags) & PF_EXITING)
		return 0;
	ts = thread_new(tid, since > session_start_ns ? since : session_start_ns, WP_TF_ON_CPU);
	if (ts)
		bpf_get_current_comm(ts->comm, sizeof(ts->comm));
	return ts;
}

/*
 * The thread is already off-CPU the first time we see it: at a wakeup (it was asleep
 * since before the session) or at a switch-in (it was runnable since before the session,
 * or was created during it). regs may be NULL when the flavour cannot read another
 * task's registers: the syscall is then unknown.
 */
static __always_inline struct thread_state *thread_found_off_cpu(__u32 tid,
								  struct task_struct *task,
								  struct pt_regs *regs,
								  __u64 start_time, bool runnable)
{
	struct thread_state *ts;
	__u64 start = session_start_ns;
	__s32 nr;

	if (start_time > start) {
		/* created during the session: runnable since creation, never blocked */
		ts = thread_new(tid, start_time, WP_TF_RUNNABLE_OUT);
		if (ts) {
			ts->cur_ustack = ts->cur_kstack = WP_STACK_NEW_THREAD;
			ts->exec_out = BPF_CORE_READ(task, se.sum_exec_runtime);
		}
		return ts;
	}
	ts = thread_new(tid, start, WP_TF_BEFORE_ATTACH | (runnable ? WP_TF_RUNNABLE_OUT : 0));
	if (!ts)
		return 0;
	ts->exec_out = BPF_CORE_READ(task, se.sum_exec_runtime);
	ts->kind = classify(regs, &nr);
	ts->syscall = nr;
	if (ts->kind != WP_KIND_OTHER) {
		ts->flags |= WP_TF_IN_EPISODE;
		ts->object = object_of(task, regs, ts->kind, nr, false);
		/* blocked since before the session: the fd was watched all along */
		if (ts->kind == WP_KIND_EPOLL && ts->object)
			poll_blocked(ts, ts->object - 1, start);
	}
	return ts;
}

/*
 * Where a thread that was not preempted goes off-CPU, as a 64-bit signature: its exact
 * user stack, its user registers at kernel entry, the syscall and the task state (which
 * also says whether it yielded runnable). 0 = no signature.
 */
static __always_inline __u64 place_of(struct pt_regs *regs, __u64 ustack, unsigned int state)
{
	__u64 h = FNV64_OFFSET;

	if (!regs || ustack < WP_STACK_ID_MIN)
		return 0;
	h = fnv_mix(h, ustack);
	h = fnv_mix(h, regs->ip);
	h = fnv_mix(h, regs->sp);
	h = fnv_mix(h, regs->bp);
	h = fnv_mix(h, regs->orig_ax);
	h = fnv_mix(h, state);
	return h ? h : 1;
}

/*
 * The user and kernel stacks of a thread going off-CPU. The user stack is always walked:
 * two call paths can reach the same place with the same registers. The kernel stack costs
 * most (an ORC walk, about 2.5 us here against 1.2 us for the user stack) and is set by
 * where in the kernel the thread sleeps, which the place pins down: the same user stack,
 * syscall and task state. So a thread going off-CPU at one of its recent places reuses
 * the kernel stack walked there, walks it again every cfg.recapture_every-th time, and
 * counts it if it differs: the reuse is checked, not assumed. Kernel preemption can strike
 * at any preempt_enable() inside a syscall: a preempted thread is always walked.
 *
 * kstack_at() is the kernel half, place found or not (sig 0: none): a global function,
 * checked once rather than on each of its caller's paths, which the places it may pick
 * multiplied (sched_switch: 92,000 -> 63,000 steps).
 */
__noinline __u64 kstack_at(void *ctx __arg_ctx, struct thread_state *ts __arg_nonnull, __u64 sig,
			  __u32 slot)
{
	struct wp_place *p = 0;
	__u64 kstack;
	__u32 i;

	for (i = 0; sig && i < WP_PLACES; i++) {
		if (ts->places[i].sig == sig) {
			p = &ts->places[i];
			break;
		}
	}
	if (p && ++p->reuses < cfg.recapture_every) {
		stat_add(WP_STAT_KSTACK_REUSED, 1);
		return p->kstack;
	}
	kstack = capture_stack(ctx, false, slot, 0);
	if (p) {
		stat_add(WP_STAT_KSTACK_RECHECKED, 1);
		if (kstack != p->kstack)
			stat_add(WP_STAT_KSTACK_DIFFERED, 1);
	} else if (sig) {
		p = &ts->places[ts->next_place & (WP_PLACES - 1)];
		ts->next_place++;
	}
	if (!p)
		return kstack;
	/* only a real stack is worth reusing, not the reason one is missing */
	p->sig = kstack >= WP_STACK_ID_MIN ? sig : 0;
	p->kstack = kstack;
	p->reuses = 0;
	return kstack;
}

/*
 * The user stack of the target's thread going off-CPU (its user registers `regs`): a walk
 * from the same registers reused where every stack word it read is unchanged (exact: see
 * unwind_reuse), else walked and remembered. --recapture-every 1 walks every time.
 */
static __always_inline __u64 capture_ustack(void *ctx, struct pt_regs *regs, __u32 slot)
{
	bool memo = cfg.recapture_every > 1 && cfg.dwarf;
	__u64 id = memo ? unwind_reuse(slot, cfg.tgid, regs->ip, regs->sp, regs->bp) : 0;

	if (id) {
		stat_add(WP_STAT_USTACK_REUSED, 1);
		return id;
	}
	id = capture_stack(ctx, true, slot, 0);
	if (memo && id >= WP_STACK_ID_MIN)
		unwind_remember(slot, id);
	return id;
}

static __always_inline void stacks_at(void *ctx, struct thread_state *ts, struct pt_regs *regs,
				      unsigned int state, bool preempt, __u32 slot, __u64 *ustack,
				      __u64 *kstack)
{
	__u64 sig = 0;

	*ustack = capture_ustack(ctx, regs, slot);
	if (cfg.recapture_every > 1 && !preempt)
		sig = place_of(regs, *ustack, state);
	*kstack = kstack_at(ctx, ts, sig, slot);
}

/*
 * The thread ran since its last switch-out, but no sched_switch into it reached us: the
 * kernel does not call the tracepoint at every switch (on the VMs waitprof is built on,
 * at none out of the VM agent's threads, which then neither see a wakeup they take in
 * an interrupt), and the syscall-exit program, which closes such an interval when the
 * thread leaves a tracked syscall, misses the others. The scheduler's own count of the
 * time the thread ran, se.sum_exec_runtime (brought up to date for prev before
 * sched_switch), says when it was switched in: the interval is closed there, as if the
 * switch-in had been seen, and that run is counted on-CPU. At the thread's exit too (there
 * is no switch-out to wait for). Out of line: it is rare.
 */
static __always_inline void switch_in(struct thread_state *ts, __u32 tid, __u64 now);

/*
 * A switch-in no sched_switch delivered, put at `at` (counted under `how`: closed at a
 * syscall exit, or at the next switch-out or exit), the timeline's too: the thread runs
 * from there, not from its next switch-out.
 */
static __noinline void switch_in_unseen_at(struct thread_state *ts, __u32 tid, __u64 at,
					   enum wp_stat how)
{
	struct wp_event *ev;

	stat_add(WP_STAT_MISSED_SWITCH_IN, 1);
	stat_add(how, 1);
	switch_in(ts, tid, at);
	if (cfg.timeline && (ev = timeline_reserve(WP_EV_ON, tid, at)))
		timeline_submit(ev);
}

static __always_inline void switched_in_unseen(struct thread_state *ts, __u32 tid, __u64 exec,
					       __u64 now)
{
	__u64 ran = exec > ts->exec_out ? exec - ts->exec_out : 0, span = now - ts->out_ts;

	if (ran > span)
		ran = span;
	switch_in_unseen_at(ts, tid, now - ran, WP_STAT_MISSED_AT_OUT);
	/* it is going off-CPU on this CPU: nothing of it runs here now */
	note_leaving(tid, ts);
	ts->oncpu_ns += ran;
}

/*
 * Thread `tid` of the target goes off-CPU at `now`: prev as the flavour passed it, and
 * `cur`, the same task as a typed pointer. Its state is returned, null if not tracked.
 */
static __always_inline struct thread_state *switch_out(void *ctx, struct task_struct *prev,
						       struct task_struct *cur, __u32 tid,
						       bool preempt, bool runnable, __u64 now)
{
	struct thread_state *ts = bpf_map_lookup_elem(&threads, &tid);
	__u64 ustack, kstack, exec;
	struct pt_regs *regs;
	__u8 kind;
	__s32 nr;

	if (!ts) {
		ts = thread_found_running(prev, tid);
		if (!ts)
			return 0;
	}
	exec = cur->se.sum_exec_runtime;
	if (ts->flags & WP_TF_ON_CPU)
		ts->oncpu_ns += now - ts->in_ts;
	else
		switched_in_unseen(ts, tid, exec, now);
	ts->exec_out = exec;
	ts->flags &= ~(WP_TF_ON_CPU | WP_TF_RUNNABLE_OUT);
	if (runnable)
		ts->flags |= WP_TF_RUNNABLE_OUT;
	ts->out_ts = now;

	regs = task_regs_of(cur);
	kind = classify(regs, &nr);
	if (ts->flags & WP_TF_IN_EPISODE) {
		/* still in the same call: its stacks were taken when it first went off-CPU */
		if (nr == ts->syscall && kind == ts->kind) {
			/* preempted in the call first, blocked in it now: from here it watches */
			if (kind == WP_KIND_EPOLL && !runnable && ts->object &&
			    !(ts->flags & WP_TF_POLL_WATCHING))
				poll_blocked(ts, ts->object - 1, now);
			return ts;
		}
		/* sys_exit was missed (exec, a restarted call): do not merge two calls */
		close_episode(ts, WP_OUT_END_UNSEEN);
	}
	ts->kind = kind;
	ts->syscall = nr;
	if (!kind_enabled(kind)) {
		ts->cur_ustack = ts->cur_kstack = WP_STACK_NOT_CAPTURED;
		return ts;
	}
	stacks_at(ctx, ts, regs, task_state(cur), preempt, SCRATCH_SCHED, &ustack, &kstack);
	if (kind != WP_KIND_OTHER) {
		ts->flags |= WP_TF_IN_EPISODE;
		ts->ep_ustack = ustack;
		ts->ep_kstack = kstack;
		ts->object = object_of(prev, regs, kind, nr, true);
		__builtin_memset(&ts->ep_waker, 0, sizeof(ts->ep_waker));
		/* a call preempted before it blocks does not watch the fd (nor end a gap) */
		if (kind == WP_KIND_EPOLL && ts->object && !runnable)
			poll_blocked(ts, ts->object - 1, now);
	} else {
		ts->cur_ustack = ustack;
		ts->cur_kstack = kstack;
	}
	return ts;
}

/* Thread `tid` (state `ts`) runs on this CPU from `now`, its switch-in seen or recovered. */
static __always_inline void switch_in(struct thread_state *ts, __u32 tid, __u64 now)
{
	struct wp_waker none = {}, *waker = &none;
	bool preempted = ts->flags & WP_TF_RUNNABLE_OUT;
	__u64 blocked = 0, runq, w;
	__u32 slot;

	/* sys_exit's sign that this switch-in was seen */
	note_running(tid, ts);
	if (ts->flags & WP_TF_ON_CPU) {
		/* no switch-out seen: nothing to attribute */
		stat_add(WP_STAT_IN_WHILE_ON_CPU, 1);
		ts->in_ts = now;
		return;
	}
	if (preempted) {
		runq = now - ts->out_ts;
	} else if (ts->waking_ts >= ts->in_ts && ts->waking_ts) {
		/* a wakeup that raced ahead of the switch-out means it never really blocked */
		w = ts->waking_ts;
		if (w < ts->out_ts)
			w = ts->out_ts;
		if (w > now)
			w = now;
		blocked = w - ts->out_ts;
		runq = now - w;
		waker = &ts->waking;
		if (cfg.wakers)
			stat_add(waker->reused ? WP_STAT_WAKER_REUSED_NS : WP_STAT_WAKER_WALKED_NS,
				 blocked);
		ts->runq_woken_ns += runq;
	} else {
		stat_add(WP_STAT_NO_WAKEUP, 1);
		blocked = now - ts->out_ts;
		runq = 0;
		none.ctx = WP_WAKER_UNSEEN;
	}
	ts->blocked_ns += blocked;
	ts->runq_ns += runq;
	slot = runq_slot(runq);
	if (slot < WP_RUNQ_SLOTS)
		ts->runq_hist[slot]++;
	ts->in_ts = now;
	ts->flags |= WP_TF_ON_CPU;
	ts->flags &= ~(WP_TF_RUNNABLE_OUT | WP_TF_BEFORE_ATTACH);
	if (ts->flags & WP_TF_IN_EPISODE) {
		ts->ep_blocked_ns += blocked;
		ts->ep_runq_ns += runq;
		/* an episode is told by the waker that ended its last blocked interval */
		if (!preempted)
			__builtin_memcpy(&ts->ep_waker, waker, sizeof(ts->ep_waker));
	} else {
		aggregate(ts, WP_OUT_NONE, ts->cur_ustack, ts->cur_kstack, waker, 1, blocked, runq);
	}
}

/*
 * Another task's user registers, read only where a thread is first seen off-CPU, not on
 * every event. Only tp_btf may read them (any_task_regs, a constant per entry point, so
 * the other flavours never contain the call); elsewhere the syscall is then unknown.
 */
static __always_inline struct pt_regs *task_regs(struct task_struct *task, bool any_task_regs)
{
	return any_task_regs ? (struct pt_regs *)bpf_task_pt_regs(task) : 0;
}

/* Whether prev, the current task in sched_switch, stays runnable. */
static __always_inline bool task_runnable(struct task_struct *prev, bool preempt)
{
	return preempt || task_state(prev) == TASK_RUNNING;
}

/* The tests' stand-in for a switch-in the kernel does not deliver (cfg.test_drop_switch_ins). */
static __u64 test_switch_ins;

static __always_inline bool dropped_for_test(void)
{
	__u32 every = cfg.test_drop_switch_ins;

	return every && __sync_fetch_and_add(&test_switch_ins, 1) % every == every - 1;
}

/*
 * The shared core of sched_switch. The classic flavour only has pids: it passes
 * next_task = NULL and tgid_known = false, and there a thread first seen while off-CPU
 * is not picked up (user space finds it through /proc instead).
 */
static __always_inline int on_switch(void *ctx, bool preempt, int runnable,
				      struct task_struct *prev, __u64 id,
				      __u32 next_tid, __u32 next_tgid, bool tgid_known,
				      struct task_struct *next_task, bool any_task_regs)
{
	__u64 now;
	struct thread_state *ts;
	bool out, in;

	if (!recording())
		return 0;
	out = selected(id >> 32, (__u32)id);
	in = !tgid_known || selected(next_tgid, next_tid);
	/* nearly every switch on the machine is another process's: leave before the clock */
	if (!out && !in)
		return 0;
	now = bpf_ktime_get_ns();
	if (out)
		check_preempt_count();
	/* runnable < 0: read from prev's state, only for the target's own switch-out */
	if (out) {
		/* prev, typed in every flavour: its fields by plain loads, one helper call */
		struct task_struct *cur = bpf_get_current_task_btf();
		bool still = runnable < 0 ? task_runnable(cur, preempt) : runnable;
		struct wp_event *ev;

		ts = switch_out(ctx, prev, cur, (__u32)id, preempt, still, now);
		note_leaving((__u32)id, ts);
		if (cfg.timeline && ts && (ev = timeline_reserve(WP_EV_OFF, (__u32)id, now))) {
			ev->kind = ts->kind;
			ev->syscall = ts->syscall;
			ev->object = ts->flags & WP_TF_IN_EPISODE ? ts->object : 0;
			ev->runnable = still;
			timeline_submit(ev);
		}
	}
	if (!in || dropped_for_test())
		return 0;
	ts = bpf_map_lookup_elem(&threads, &next_tid);
	if (!ts) {
		/* an exiting thread was already reported by sched_process_exit */
		if (!next_task || (BPF_CORE_READ(next_task, flags) & PF_EXITING))
			return 0;
		ts = thread_found_off_cpu(next_tid, next_task, task_regs(next_task, any_task_regs),
					  BPF_CORE_READ(next_task, start_time), true);
		if (!ts)
			return 0;
		bpf_probe_read_kernel_str(ts->comm, sizeof(ts->comm), next_task->comm);
	}
	switch_in(ts, next_tid, now);
	if (cfg.timeline) {
		struct wp_event *ev = timeline_reserve(WP_EV_ON, next_tid, now);

		if (ev)
			timeline_submit(ev);
	}
	return 0;
}

/*
 * Who is waking the target's thread, in sched_waking on the waker's CPU (sched_wakeup
 * may run on the wakee's), with both its stacks walked. An interrupt (a timer expiring, a
 * packet arriving) has interrupted an unrelated task: only its kernel stack says anything,
 * and the walk tells it by the interrupt entry it runs through. A global function: the
 * verifier checks it once, on its own, rather than on every path of its caller.
 */
__noinline int walk_waker(void *ctx __arg_ctx, struct wp_waker *w __arg_nonnull)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	__u64 id = bpf_get_current_pid_tgid();
	bool interrupted = false;

	w->reused = 0;
	w->kstack = capture_stack(ctx, false, SCRATCH_WAKING, &interrupted);
	if (interrupted) {
		w->ctx = WP_WAKER_INTERRUPT;
		w->tgid = w->tid = 0;
		__builtin_memset(w->comm, 0, sizeof(w->comm));
		w->ustack = WP_STACK_IN_INTERRUPT;
		return 0;
	}
	w->ctx = WP_WAKER_TASK;
	w->tgid = id >> 32;
	w->tid = (__u32)id;
	bpf_get_current_comm(w->comm, sizeof(w->comm));
	if (cur->flags & PF_KTHREAD)
		w->ustack = WP_STACK_KERNEL_THREAD;
	else
		w->ustack = capture_stack(ctx, true, SCRATCH_WAKING, 0);
	return 0;
}

/* A place a thread woke another from, with the waker stacks walked there. */
struct wp_waker_place {
	__u64 ustack;
	__u64 kstack;
	__u32 reuses; /* since the stacks were walked */
	__u32 confirmed; /* the last two walks here found these stacks: they may be reused */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct wp_waker_place);
} waker_places SEC(".maps");

/*
 * The waker of a wakeup. Walking both its stacks costs about 2.5 us, most of it the
 * kernel's, and 12 us for the network receive a loopback sender runs in its send call, so
 * they are walked where they matter: a wakeup that ends a wait of cfg.waker_walk_ns or
 * more, and any wakeup from a hard interrupt (the preempt count says so without a walk),
 * a kernel thread or a place not yet confirmed. A place is a thread in a syscall with the
 * same registers at syscall entry, serving softirq work then (such as that network
 * receive) or not; it is confirmed once two walks in a row there found the same stacks
 * (a loopback connection's first segment takes another kernel path than the rest), and
 * then reuses them, walking again every cfg.recapture_every-th time and counting
 * differences: two call paths can still reach one place with the same registers (softirq
 * work on the exit of an interrupt that came during the call looks like the call's own).
 * A place whose walk differs is walked until two agree again. Only stacks walked in the
 * task's own context are kept: a walk that went through an interrupt's entry is not. The
 * blocked time each kind of wakeup ended is counted (see switch_in), so the summary says
 * how much was walked.
 */
static __always_inline void capture_waker(void *ctx, struct wp_waker *w, __u64 waited)
{
	/* the waker's ids and registers from one helper call */
	struct task_struct *cur = bpf_get_current_task_btf();
	__u64 id = (__u64)cur->tgid << 32 | (__u32)cur->pid, sig = 0;
	struct wp_waker_place *p = 0, init = {};
	struct pt_regs *regs;
	__u32 count;
	bool same;
	long nr;

	if (waited < cfg.waker_walk_ns && cfg.recapture_every > 1 && preempt_count_ok == 1 &&
	    !(cur->flags & PF_KTHREAD) && this_preempt_count(cur, &count) &&
	    !(count & (WP_HARDIRQ_MASK | WP_NMI_MASK))) {
		regs = task_regs_of(cur);
		nr = regs->orig_ax;
		/* nr < 0: in the kernel, not from a syscall (an exception): walk */
		if (nr >= 0) {
			sig = fnv_mix(FNV64_OFFSET, id);
			sig = fnv_mix(sig, regs->ip);
			sig = fnv_mix(sig, regs->sp);
			sig = fnv_mix(sig, regs->bp);
			sig = fnv_mix(sig, nr);
			/* the operation of a multiplexed call (futex's wake or requeue) */
			sig = fnv_mix(sig, PT_REGS_PARM2_SYSCALL(regs));
			/* the call's own wakeup, or softirq work it ran (bh re-enabled) */
			sig = fnv_mix(sig, count & WP_SOFTIRQ_OFFSET);
			sig |= 1;
			p = bpf_map_lookup_elem(&waker_places, &sig);
		}
	}
	if (p && p->confirmed && ++p->reuses < cfg.recapture_every) {
		stat_add(WP_STAT_WAKER_REUSED, 1);
		w->ctx = WP_WAKER_TASK;
		w->tgid = id >> 32;
		w->tid = (__u32)id;
		/* by plain loads through the typed pointer, where the helper costs ~20 ns */
		__builtin_memcpy(w->comm, cur->comm, sizeof(w->comm));
		w->ustack = p->ustack;
		w->kstack = p->kstack;
		w->reused = 1;
		return;
	}
	/* the only call: the walk is the largest code the verifier checks */
	walk_waker(ctx, w);
	if (!sig)
		return;
	same = p && p->ustack == w->ustack && p->kstack == w->kstack && w->ctx == WP_WAKER_TASK;
	if (p && p->confirmed) {
		stat_add(WP_STAT_WAKER_RECHECKED, 1);
		if (!same)
			stat_add(WP_STAT_WAKER_DIFFERED, 1);
	}
	/* only real stacks are worth reusing, not the reason one is missing */
	if (w->ctx != WP_WAKER_TASK || w->ustack < WP_STACK_ID_MIN || w->kstack < WP_STACK_ID_MIN) {
		if (p)
			bpf_map_delete_elem(&waker_places, &sig);
		return;
	}
	if (p) {
		p->ustack = w->ustack;
		p->kstack = w->kstack;
		p->reuses = 0;
		p->confirmed = same;
		return;
	}
	init.ustack = w->ustack;
	init.kstack = w->kstack;
	bpf_map_update_elem(&waker_places, &sig, &init, BPF_ANY);
}

static __always_inline int on_waking(void *ctx, __u32 tid, __u32 tgid, bool tgid_known,
				     struct task_struct *task, bool any_task_regs)
{
	struct thread_state *ts;
	bool fresh = false;
	__u64 now;

	if (!recording() || (tgid_known && !selected(tgid, tid)))
		return 0;
	now = bpf_ktime_get_ns();
	ts = bpf_map_lookup_elem(&threads, &tid);
	if (!ts) {
		fresh = true;
		if (!task || (BPF_CORE_READ(task, flags) & PF_EXITING))
			return 0;
		ts = thread_found_off_cpu(tid, task, task_regs(task, any_task_regs),
					  BPF_CORE_READ(task, start_time), false);
		if (!ts)
			return 0;
		bpf_probe_read_kernel_str(ts->comm, sizeof(ts->comm), task->comm);
	}
	if (cfg.wakers)
		/* a thread first seen now has waited since before the session: walk */
		capture_waker(ctx, &ts->waking,
			      fresh ? ~0ULL : ts->flags & WP_TF_ON_CPU ? 0 : now - ts->out_ts);
	ts->waking_ts = now;
	if (cfg.timeline) {
		struct wp_event *ev = timeline_reserve(WP_EV_WAKE, tid, now);
		__u64 id = bpf_get_current_pid_tgid();

		if (ev) {
			if (cfg.wakers) {
				ev->waker_ctx = ts->waking.ctx;
				ev->waker_tid = ts->waking.tid;
				ev->waker_tgid = ts->waking.tgid;
			} else {
				ev->waker_tid = (__u32)id;
				ev->waker_tgid = id >> 32;
			}
			timeline_submit(ev);
		}
	}
	return 0;
}

/* Samples the listening socket an accept(2) returned from: its queue and drops. */
static __always_inline void sample_listener(struct pt_regs *regs, long ret)
{
	struct wp_listener *l, init = {};
	struct sock *sk;
	__u64 ino = 0;
	__u32 qlen;

	if (ret < 0 && ret != -EAGAIN)
		return;
	sk = fd_sock(bpf_get_current_task_btf(), (int)PT_REGS_PARM1_SYSCALL(regs), &ino);
	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN)
		return;
	/* a connection was taken off the queue just before this */
	qlen = BPF_CORE_READ(sk, sk_ack_backlog) + (ret >= 0);
	l = bpf_map_lookup_elem(&listeners, &ino);
	if (!l) {
		init.family = BPF_CORE_READ(sk, __sk_common.skc_family);
		init.port = BPF_CORE_READ(sk, __sk_common.skc_num);
		if (init.family == 2 /* AF_INET */)
			bpf_probe_read_kernel(init.addr, 4, &sk->__sk_common.skc_rcv_saddr);
		else if (init.family == 10 /* AF_INET6 */)
			bpf_probe_read_kernel(init.addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		init.drops_first = sock_drops(sk);
		/* the socket is read for init only when it is new: not on every accept */
		l = lookup_or_init(&listeners, &ino, &init);
		if (!l) {
			stat_add(WP_STAT_LISTENERS_FULL, 1);
			return;
		}
	}
	l->limit = BPF_CORE_READ(sk, sk_max_ack_backlog);
	__sync_fetch_and_add(&l->accepts, 1);
	__sync_fetch_and_add(&l->qlen_sum, qlen);
	if (qlen >= l->limit)
		__sync_fetch_and_add(&l->at_limit, 1);
	if (qlen > l->qlen_max)
		l->qlen_max = qlen;
	l->drops_last = sock_drops(sk);
}

/*
 * The end of syscall `nr` (as each attach kind reads it most cheaply: a typed load for
 * tp_btf, the tracepoint's own field for classic ones). Normally only the tracked
 * syscalls come here (tp_sys_exit_tracked); where they have no tracepoints of their own,
 * every syscall of the target does, so the registers are fetched only for the two
 * classes that need them.
 */
static __always_inline int on_sys_exit(void *ctx, long nr, long ret)
{
	/* one helper call (about 20 ns here) for the ids and the registers both */
	struct task_struct *cur = bpf_get_current_task_btf();
	__u32 tid = cur->pid;
	struct thread_state *ts;
	struct wp_running *r;
	__u8 class;

	if (!recording() || !selected(cur->tgid, tid))
		return 0;
	if (nr < 0 || nr >= WP_MAX_SYSCALL_NR)
		nr = 0;
	/*
	 * Most of the target's syscalls are not tracked (no episode, no poll, no listener):
	 * with its switch-in seen on this CPU there is nothing to do, and the thread's state
	 * is not looked up (a hash lookup at every syscall of the target)
	 */
	class = cfg.sysclass[nr];
	r = running();
	if (r && r->tid == tid) {
		if (class == WP_SYS_OTHER)
			return 0;
		/*
		 * An epoll call of a thread that was quiet here (nothing tracked open, no fd
		 * watched) did not block: counted on this CPU, the state not looked up. Added
		 * atomically: a take_polls between a load and a store would count twice
		 */
		if (class == WP_SYS_EPOLL && r->quiet) {
			if (poll_returned(0, tid, (__u32)PT_REGS_PARM1_SYSCALL(task_regs_of(cur)),
					  bpf_ktime_get_ns()))
				__sync_fetch_and_add(&r->polls, 1);
			return 0;
		}
	}
	ts = bpf_map_lookup_elem(&threads, &tid);
	if (!ts) {
		/* running since before the session: from here its syscalls take the paths above */
		ts = thread_found_running(cur, tid);
		if (ts)
			note_running(tid, ts);
	}
	if (class == WP_SYS_EPOLL)
		poll_returned(ts, tid, (__u32)PT_REGS_PARM1_SYSCALL(task_regs_of(cur)),
			      bpf_ktime_get_ns());
	if (!ts)
		return 0;
	/*
	 * The thread is running, so it was switched in, but no sched_switch for that reached
	 * us (see switched_in_unseen): close the off-CPU interval here, a few microseconds
	 * late, rather than at its next switch-out.
	 */
	if (!(ts->flags & WP_TF_ON_CPU))
		switch_in_unseen_at(ts, tid, bpf_ktime_get_ns(), WP_STAT_MISSED_RECOVERED);
	if (class == WP_SYS_ACCEPT)
		sample_listener(task_regs_of(cur), ret);
	if (ts->flags & WP_TF_IN_EPISODE) {
		/* blocked since before attach: the user stack is still the one it blocked with */
		if (ts->ep_ustack == WP_STACK_BEFORE_ATTACH)
			ts->ep_ustack =
				capture_stack_as(ctx, true, false, SCRATCH_SYS_EXIT, 0, false);
		close_episode(ts, outcome_of(ts->kind, ret));
	}
	/* with nothing tracked open now, its next epoll returns here need no lookup */
	if (r && r->tid == tid)
		r->quiet = !(ts->flags & (WP_TF_IN_EPISODE | WP_TF_POLL_WATCHING));
	return 0;
}

static __always_inline int on_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid(), now;
	__u32 tid = (__u32)id;
	struct thread_state *ts, *ev;

	if (!recording() || !selected(id >> 32, tid))
		return 0;
	ts = bpf_map_lookup_elem(&threads, &tid);
	if (!ts)
		return 0;
	/* the epoll returns counted on this CPU go out in its exit record */
	note_leaving(tid, ts);
	now = bpf_ktime_get_ns();
	if (ts->flags & WP_TF_ON_CPU)
		ts->oncpu_ns += now - ts->in_ts;
	else
		/*
		 * Its last switch-in went unseen. Its run time is brought up to date only at
		 * ticks and switches: what it ran since the last tick counts as off-CPU
		 */
		switched_in_unseen(ts, tid,
				   BPF_CORE_READ((struct task_struct *)bpf_get_current_task(),
						 se.sum_exec_runtime),
				   now);
	ts->in_ts = now;
	if (ts->flags & WP_TF_IN_EPISODE)
		close_episode(ts, WP_OUT_INTR);
	/* the name it had when first seen may predate exec or pthread_setname_np */
	bpf_get_current_comm(ts->comm, sizeof(ts->comm));
	ev = bpf_ringbuf_reserve(&exits, sizeof(*ev), 0);
	if (ev) {
		__builtin_memcpy(ev, ts, sizeof(*ts));
		ev->exit_ts = now;
		bpf_ringbuf_submit(ev, 0);
	} else {
		stat_add(WP_STAT_EXIT_LOST, 1);
	}
	bpf_map_delete_elem(&threads, &tid);
	return 0;
}

/*
 * A timer tick on a CPU (a cpu-clock perf event, a few per second per CPU): if one of the
 * target's threads runs there, its user stack is counted. A Go program's running
 * goroutines keep their registers on the CPU, where the sweeps cannot read them: these
 * samples say what they run.
 */
SEC("perf_event")
int oncpu_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid(), zero = 0, *n;
	struct wp_oncpu_key key = {};

	if (!oncpu_on || !recording() || !selected(id >> 32, (__u32)id))
		return 0;
	key.tid = (__u32)id;
	/*
	 * By frame pointer, which Go keeps in all its code: the program that samples stays
	 * small (the DWARF unwinder would cost ~170 ms more to verify at start-up)
	 */
	key.ustack = capture_stack_as(ctx, true, true, SCRATCH_SAMPLE, 0, false);
	n = lookup_or_init(&oncpu, &key, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		stat_add(WP_STAT_ONCPU_FULL, 1);
	return 0;
}

/* --- tp_btf: typed arguments, and registers of any task --- */

SEC("tp_btf/sched_switch")
int BPF_PROG(btf_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	/* prev's ids by plain loads: no helper call at the machine's other switches */
	return on_switch(ctx, preempt, -1, prev, (__u64)prev->tgid << 32 | (__u32)prev->pid,
			 next->pid, next->tgid, true, next, true);
}

SEC("tp_btf/sched_waking")
int BPF_PROG(btf_sched_waking, struct task_struct *p)
{
	return on_waking(ctx, p->pid, p->tgid, true, p, true);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(btf_sys_exit, struct pt_regs *regs, long ret)
{
	/* a typed pointer: a plain load, no helper call */
	return on_sys_exit(ctx, regs->orig_ax, ret);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(btf_sched_process_exit)
{
	return on_exit();
}

/* --- raw_tp: untyped arguments; only the current task's registers --- */

SEC("raw_tp/sched_switch")
int BPF_PROG(raw_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return on_switch(ctx, preempt, -1, prev, bpf_get_current_pid_tgid(),
			 BPF_CORE_READ(next, pid), BPF_CORE_READ(next, tgid), true, next, false);
}

SEC("raw_tp/sched_waking")
int BPF_PROG(raw_sched_waking, struct task_struct *p)
{
	return on_waking(ctx, BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid), true, p, false);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(raw_sys_exit, struct pt_regs *regs, long ret)
{
	return on_sys_exit(ctx, current_regs()->orig_ax, ret);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(raw_sched_process_exit)
{
	return on_exit();
}

/* --- classic tracepoints: pids only (needs tracefs) --- */

SEC("tracepoint/sched/sched_switch")
int tp_sched_switch(struct trace_event_raw_sched_switch *ctx)
{
	long state = ctx->prev_state;

	bool preempt = state & TP_STATE_PREEMPTED;

	return on_switch(ctx, preempt, preempt || state == TASK_RUNNING,
			 (struct task_struct *)bpf_get_current_task(), bpf_get_current_pid_tgid(),
			 ctx->next_pid, 0, false, 0, false);
}

SEC("tracepoint/sched/sched_waking")
int tp_sched_waking(struct trace_event_raw_sched_wakeup_template *ctx)
{
	return on_waking(ctx, ctx->pid, 0, false, 0, false);
}

SEC("tracepoint/raw_syscalls/sys_exit")
int tp_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_sys_exit(ctx, ctx->id, ctx->ret);
}

/*
 * The exit of one tracked syscall, attached by user space to each one's own tracepoint
 * (syscalls:sys_exit_NAME), whatever the flavour: the kernel then tests a bit at every
 * other syscall's exit instead of running a program there, on every task of the machine.
 */
SEC("tracepoint")
int tp_sys_exit_tracked(struct syscall_trace_exit *ctx)
{
	return on_sys_exit(ctx, ctx->nr, ctx->ret);
}

SEC("tracepoint/sched/sched_process_exit")
int tp_sched_process_exit(void *ctx)
{
	return on_exit();
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
