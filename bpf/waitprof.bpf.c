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

#define PF_EXITING 0x00000004
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

/* Where a stack is captured before it is hashed; one slot per hook context that captures. */
#define SCRATCH_SCHED 0
#define SCRATCH_SYS_EXIT 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
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
		nr = BPF_CORE_READ(regs, orig_ax);
	*nr_out = nr < 0 ? -1 : (__s32)nr;
	if (nr < 0 || nr >= WP_MAX_SYSCALL_NR)
		return WP_KIND_OTHER;
	class = cfg.sysclass[nr];
	switch (class) {
	case WP_SYS_EPOLL:
		return WP_KIND_EPOLL;
	case WP_SYS_FUTEX_WAIT:
		return WP_KIND_FUTEX;
	case WP_SYS_ACCEPT:
		return WP_KIND_ACCEPT;
	case WP_SYS_FUTEX_OP: {
		int op = PT_REGS_PARM2_CORE_SYSCALL(regs) & FUTEX_CMD_MASK;

		/* wake and requeue operations do not wait on the futex */
		if (op < 32 && (cfg.futex_wait_ops & (1u << op)))
			return WP_KIND_FUTEX;
		return WP_KIND_OTHER;
	}
	default:
		return WP_KIND_OTHER;
	}
}

static __always_inline struct pt_regs *current_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* The task's state word: __state since 5.14, state before. */
static __always_inline unsigned int task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___o *)t, state);
}

/*
 * Captures the current stack into the stack table and returns its reference (see
 * enum wp_stack_marker). `slot` keeps a sys_exit capture, which may be preempted, apart
 * from sched_switch's on the same CPU.
 */
static __always_inline __u64 capture_stack(void *ctx, bool user, __u32 slot)
{
	struct wp_stack *buf = bpf_map_lookup_elem(&stack_scratch, &slot);
	__u64 hash = FNV64_OFFSET;
	long len, err;
	int i, n;

	if (!buf)
		return WP_STACK_TABLE_FULL;
	/*
	 * A kernel stack starts inside this program, at an address that depends on which
	 * inlined copy of this function runs: skip that frame, or one stack gets several hashes.
	 * The tracing frames below it are the same every time and are trimmed for display.
	 */
	len = bpf_get_stack(ctx, buf->ips, sizeof(buf->ips),
			    user ? BPF_F_USER_STACK : (1 & BPF_F_SKIP_FIELD_MASK));
	if (len <= 0) {
		stat_add(user ? WP_STAT_USTACK_ERR : WP_STAT_KSTACK_ERR, 1);
		return len < 0 ? (__u64)-len : 61 /* ENODATA */;
	}
	n = len / sizeof(__u64);
	for (i = 0; i < WP_MAX_STACK_DEPTH; i++) {
		if (i >= n)
			break;
		hash = fnv_mix(hash, buf->ips[i]);
	}
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

static __always_inline void aggregate(struct thread_state *ts, __u8 outcome, __u64 ustack,
				      __u64 kstack, __u64 count, __u64 blocked, __u64 runq)
{
	struct agg_key key = {
		.tid = cfg.rows_per_thread ? ts->tid : 0,
		.ustack = ustack,
		.kstack = kstack,
		.syscall = (__s16)ts->syscall,
		.kind = ts->kind,
		.outcome = outcome,
	};
	struct agg_val *val, init = {};

	if (!kind_enabled(ts->kind))
		return;
	if (blocked + runq < cfg.min_block_ns) {
		stat_add(WP_STAT_BELOW_MIN, 1);
		stat_add(WP_STAT_BELOW_MIN_NS, blocked + runq);
		return;
	}
	val = bpf_map_lookup_elem(&agg, &key);
	if (!val) {
		/* an -EEXIST here means another CPU inserted it first: the lookup finds it */
		bpf_map_update_elem(&agg, &key, &init, BPF_NOEXIST);
		val = bpf_map_lookup_elem(&agg, &key);
		if (!val) {
			stat_add(WP_STAT_AGG_FULL, 1);
			stat_add(WP_STAT_AGG_FULL_NS, blocked + runq);
			return;
		}
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

static __always_inline void close_episode(struct thread_state *ts, __u8 outcome)
{
	aggregate(ts, outcome, ts->ep_ustack, ts->ep_kstack, 1, ts->ep_blocked_ns, ts->ep_runq_ns);
	ts->flags &= ~WP_TF_IN_EPISODE;
	ts->ep_blocked_ns = 0;
	ts->ep_runq_ns = 0;
}

static __always_inline struct thread_state *thread_new(__u32 tid, __u64 start, __u32 flags)
{
	struct thread_state init = {
		.in_ts = start,
		.out_ts = start,
		.start_ts = start,
		.cur_ustack = WP_STACK_BEFORE_ATTACH,
		.cur_kstack = WP_STACK_BEFORE_ATTACH,
		.ep_ustack = WP_STACK_BEFORE_ATTACH,
		.ep_kstack = WP_STACK_BEFORE_ATTACH,
		.syscall = -1,
		.tid = tid,
		.flags = flags,
		.kind = WP_KIND_OTHER,
	};
	struct thread_state *ts;

	if (bpf_map_update_elem(&threads, &tid, &init, BPF_NOEXIST)) {
		ts = bpf_map_lookup_elem(&threads, &tid);
		if (!ts)
			stat_add(WP_STAT_THREADS_FULL, 1);
		return ts;
	}
	return bpf_map_lookup_elem(&threads, &tid);
}

/*
 * The thread is already off-CPU the first time we see it: at a wakeup (it was asleep
 * since before the session) or at a switch-in (it was runnable since before the session,
 * or was created during it). regs may be NULL when the flavour cannot read another
 * task's registers: the syscall is then unknown.
 */
static __always_inline struct thread_state *thread_found_off_cpu(__u32 tid, struct pt_regs *regs,
								  __u64 start_time, bool runnable)
{
	struct thread_state *ts;
	__u64 start = session_start_ns;
	__s32 nr;

	if (start_time > start) {
		/* created during the session: runnable since creation, never blocked */
		ts = thread_new(tid, start_time, WP_TF_RUNNABLE_OUT);
		if (ts)
			ts->cur_ustack = ts->cur_kstack = WP_STACK_NEW_THREAD;
		return ts;
	}
	ts = thread_new(tid, start, WP_TF_BEFORE_ATTACH | (runnable ? WP_TF_RUNNABLE_OUT : 0));
	if (!ts)
		return 0;
	ts->kind = classify(regs, &nr);
	ts->syscall = nr;
	if (ts->kind != WP_KIND_OTHER)
		ts->flags |= WP_TF_IN_EPISODE;
	return ts;
}

/*
 * Where a thread that was not preempted goes off-CPU, as a 64-bit signature: its exact
 * user stack, its user registers at kernel entry, the syscall and the task state (which
 * also says whether it yielded runnable). 0 = no signature.
 */
static __always_inline __u64 place_of(struct task_struct *prev, struct pt_regs *regs,
				      __u64 ustack)
{
	__u64 h = FNV64_OFFSET;

	if (!regs || ustack < WP_STACK_ID_MIN)
		return 0;
	h = fnv_mix(h, ustack);
	h = fnv_mix(h, BPF_CORE_READ(regs, ip));
	h = fnv_mix(h, BPF_CORE_READ(regs, sp));
	h = fnv_mix(h, BPF_CORE_READ(regs, bp));
	h = fnv_mix(h, BPF_CORE_READ(regs, orig_ax));
	h = fnv_mix(h, task_state(prev));
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
 */
static __always_inline void stacks_at(void *ctx, struct thread_state *ts,
				      struct task_struct *prev, struct pt_regs *regs, bool preempt,
				      __u64 *ustack, __u64 *kstack)
{
	struct wp_place *p = 0;
	__u64 sig = 0;
	__u32 i;

	*ustack = capture_stack(ctx, true, SCRATCH_SCHED);
	if (cfg.recapture_every > 1 && !preempt)
		sig = place_of(prev, regs, *ustack);
	for (i = 0; sig && i < WP_PLACES; i++) {
		if (ts->places[i].sig == sig) {
			p = &ts->places[i];
			break;
		}
	}
	if (p && ++p->reuses < cfg.recapture_every) {
		stat_add(WP_STAT_KSTACK_REUSED, 1);
		*kstack = p->kstack;
		return;
	}
	*kstack = capture_stack(ctx, false, SCRATCH_SCHED);
	if (p) {
		stat_add(WP_STAT_KSTACK_RECHECKED, 1);
		if (*kstack != p->kstack)
			stat_add(WP_STAT_KSTACK_DIFFERED, 1);
	} else if (sig) {
		p = &ts->places[ts->next_place & (WP_PLACES - 1)];
		ts->next_place++;
	}
	if (!p)
		return;
	/* only a real stack is worth reusing, not the reason one is missing */
	p->sig = *kstack >= WP_STACK_ID_MIN ? sig : 0;
	p->kstack = *kstack;
	p->reuses = 0;
}

static __always_inline void switch_out(void *ctx, struct task_struct *prev, __u32 tid,
				       bool preempt, bool runnable, __u64 now)
{
	struct thread_state *ts = bpf_map_lookup_elem(&threads, &tid);
	__u64 ustack, kstack;
	struct pt_regs *regs;
	__u8 kind;
	__s32 nr;

	if (!ts) {
		/* an exiting thread was already reported by sched_process_exit */
		if (BPF_CORE_READ(prev, flags) & PF_EXITING)
			return;
		ts = thread_new(tid, session_start_ns, WP_TF_ON_CPU);
		if (!ts)
			return;
		bpf_get_current_comm(ts->comm, sizeof(ts->comm));
	}
	if (ts->flags & WP_TF_ON_CPU)
		ts->oncpu_ns += now - ts->in_ts;
	else
		/* it ran since its last switch-out, but no switch-in reached us: that interval is lost */
		stat_add(WP_STAT_MISSED_SWITCH_IN, 1);
	ts->flags &= ~(WP_TF_ON_CPU | WP_TF_RUNNABLE_OUT);
	if (runnable)
		ts->flags |= WP_TF_RUNNABLE_OUT;
	ts->out_ts = now;

	regs = current_regs();
	kind = classify(regs, &nr);
	if (ts->flags & WP_TF_IN_EPISODE) {
		/* still in the same call: its stacks were taken when it first blocked */
		if (nr == ts->syscall && kind == ts->kind)
			return;
		/* sys_exit was missed (exec, or a record lost): do not merge two calls */
		close_episode(ts, WP_OUT_UNFINISHED);
	}
	ts->kind = kind;
	ts->syscall = nr;
	if (!kind_enabled(kind)) {
		ts->cur_ustack = ts->cur_kstack = WP_STACK_NOT_CAPTURED;
		return;
	}
	stacks_at(ctx, ts, prev, regs, preempt, &ustack, &kstack);
	if (kind != WP_KIND_OTHER) {
		ts->flags |= WP_TF_IN_EPISODE;
		ts->ep_ustack = ustack;
		ts->ep_kstack = kstack;
	} else {
		ts->cur_ustack = ustack;
		ts->cur_kstack = kstack;
	}
}

static __always_inline void switch_in(struct thread_state *ts, __u64 now)
{
	__u64 blocked = 0, runq, w;

	if (ts->flags & WP_TF_ON_CPU) {
		/* no switch-out seen: nothing to attribute */
		stat_add(WP_STAT_IN_WHILE_ON_CPU, 1);
		ts->in_ts = now;
		return;
	}
	if (ts->flags & WP_TF_RUNNABLE_OUT) {
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
	} else {
		stat_add(WP_STAT_NO_WAKEUP, 1);
		blocked = now - ts->out_ts;
		runq = 0;
	}
	ts->blocked_ns += blocked;
	ts->runq_ns += runq;
	ts->in_ts = now;
	ts->flags |= WP_TF_ON_CPU;
	ts->flags &= ~(WP_TF_RUNNABLE_OUT | WP_TF_BEFORE_ATTACH);
	if (ts->flags & WP_TF_IN_EPISODE) {
		ts->ep_blocked_ns += blocked;
		ts->ep_runq_ns += runq;
	} else {
		aggregate(ts, WP_OUT_NONE, ts->cur_ustack, ts->cur_kstack, 1, blocked, runq);
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

/*
 * The shared core of sched_switch. The classic flavour only has pids: it passes
 * next_task = NULL and tgid_known = false, and there a thread first seen while off-CPU
 * is not picked up (user space finds it through /proc instead).
 */
static __always_inline int on_switch(void *ctx, bool preempt, bool runnable,
				      struct task_struct *prev,
				      __u32 next_tid, __u32 next_tgid, bool tgid_known,
				      struct task_struct *next_task, bool any_task_regs)
{
	__u64 id = bpf_get_current_pid_tgid(), now;
	struct thread_state *ts;

	if (!recording())
		return 0;
	now = bpf_ktime_get_ns();
	if (selected(id >> 32, (__u32)id))
		switch_out(ctx, prev, (__u32)id, preempt, runnable, now);
	if (tgid_known && !selected(next_tgid, next_tid))
		return 0;
	ts = bpf_map_lookup_elem(&threads, &next_tid);
	if (!ts) {
		/* an exiting thread was already reported by sched_process_exit */
		if (!next_task || (BPF_CORE_READ(next_task, flags) & PF_EXITING))
			return 0;
		ts = thread_found_off_cpu(next_tid, task_regs(next_task, any_task_regs),
					  BPF_CORE_READ(next_task, start_time), true);
		if (!ts)
			return 0;
		bpf_probe_read_kernel_str(ts->comm, sizeof(ts->comm), next_task->comm);
	}
	switch_in(ts, now);
	return 0;
}

static __always_inline int on_waking(__u32 tid, __u32 tgid, bool tgid_known,
				     struct task_struct *task, bool any_task_regs)
{
	struct thread_state *ts;
	__u64 now;

	if (!recording() || (tgid_known && !selected(tgid, tid)))
		return 0;
	now = bpf_ktime_get_ns();
	ts = bpf_map_lookup_elem(&threads, &tid);
	if (!ts) {
		if (!task || (BPF_CORE_READ(task, flags) & PF_EXITING))
			return 0;
		ts = thread_found_off_cpu(tid, task_regs(task, any_task_regs),
					  BPF_CORE_READ(task, start_time), false);
		if (!ts)
			return 0;
		bpf_probe_read_kernel_str(ts->comm, sizeof(ts->comm), task->comm);
	}
	ts->waking_ts = now;
	return 0;
}

static __always_inline int on_sys_exit(void *ctx, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct thread_state *ts;

	if (!recording() || !selected(id >> 32, tid))
		return 0;
	ts = bpf_map_lookup_elem(&threads, &tid);
	if (!ts)
		return 0;
	/*
	 * The thread is running, so it was switched in. Rarely (about once in a thousand
	 * waits with every CPU saturated) no sched_switch for that reaches us: close the
	 * off-CPU interval here, a few microseconds late, instead of losing it.
	 */
	if (!(ts->flags & WP_TF_ON_CPU)) {
		stat_add(WP_STAT_MISSED_SWITCH_IN, 1);
		stat_add(WP_STAT_MISSED_RECOVERED, 1);
		switch_in(ts, bpf_ktime_get_ns());
	}
	if (!(ts->flags & WP_TF_IN_EPISODE))
		return 0;
	/* blocked since before attach: the user stack is still the one it blocked with */
	if (ts->ep_ustack == WP_STACK_BEFORE_ATTACH)
		ts->ep_ustack = capture_stack(ctx, true, SCRATCH_SYS_EXIT);
	close_episode(ts, outcome_of(ts->kind, ret));
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
	now = bpf_ktime_get_ns();
	if (ts->flags & WP_TF_ON_CPU) {
		ts->oncpu_ns += now - ts->in_ts;
		ts->in_ts = now;
	}
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

static __always_inline bool task_runnable(bool preempt, struct task_struct *prev)
{
	return preempt || task_state(prev) == TASK_RUNNING;
}

/* --- tp_btf: typed arguments, and registers of any task --- */

SEC("tp_btf/sched_switch")
int BPF_PROG(btf_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return on_switch(ctx, preempt, task_runnable(preempt, prev), prev, next->pid, next->tgid, true,
			 next, true);
}

SEC("tp_btf/sched_waking")
int BPF_PROG(btf_sched_waking, struct task_struct *p)
{
	return on_waking(p->pid, p->tgid, true, p, true);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(btf_sys_exit, struct pt_regs *regs, long ret)
{
	return on_sys_exit(ctx, ret);
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
	return on_switch(ctx, preempt, task_runnable(preempt, prev), prev, BPF_CORE_READ(next, pid),
			 BPF_CORE_READ(next, tgid), true, next, false);
}

SEC("raw_tp/sched_waking")
int BPF_PROG(raw_sched_waking, struct task_struct *p)
{
	return on_waking(BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid), true, p, false);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(raw_sys_exit, struct pt_regs *regs, long ret)
{
	return on_sys_exit(ctx, ret);
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
			 (struct task_struct *)bpf_get_current_task(), ctx->next_pid, 0, false, 0, false);
}

SEC("tracepoint/sched/sched_waking")
int tp_sched_waking(struct trace_event_raw_sched_wakeup_template *ctx)
{
	return on_waking(ctx->pid, 0, false, 0, false);
}

SEC("tracepoint/raw_syscalls/sys_exit")
int tp_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_sys_exit(ctx, ctx->ret);
}

SEC("tracepoint/sched/sched_process_exit")
int tp_sched_process_exit(void *ctx)
{
	return on_exit();
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
