// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * A snapshot of every thread of the target that is off-CPU right now: a sleepable task
 * iterator reads each one's user registers (bpf_task_pt_regs), walks its user stack with
 * the profiler's unwind tables (shared with waitprof.bpf.c's object: user space hands
 * their fds over before load) reading the thread's own memory (bpf_copy_from_user_task),
 * and takes its kernel stack. User space runs it at the session's start and end, so a
 * thread blocked since before attach (a deadlock, an idle acceptor) has its full stacks.
 * Its own object: a kernel without sleepable iterators still runs the profiler.
 */
#define WP_UNWIND_OTHER_TASK
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "waitprof.h"
#include "unwind.h"

#define TASK_RUNNING 0

const volatile __u32 target_tgid = 0;
/* Not used by the program: makes the skeleton export the record's type to Rust. */
const volatile struct wp_snapshot snapshot_for_rust = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wp_snapshot);
} snapshot_scratch SEC(".maps");

/* No mappings: a process without tables is walked by frame pointer (--unwind fp). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wp_unwind_proc);
} no_tables SEC(".maps");

SEC("iter.s/task")
int off_cpu_threads(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task, *me;
	struct wp_unwind_state st = {};
	struct wp_snapshot *s;
	struct pt_regs *regs;
	__u32 zero = 0, tgid, n, stop;
	long klen;

	if (!task)
		return 0;
	tgid = task->tgid;
	if (tgid != target_tgid || task->__state == TASK_RUNNING)
		return 0;
	s = bpf_map_lookup_elem(&snapshot_scratch, &zero);
	if (!s)
		return 0;
	s->tid = task->pid;
	s->state = task->__state;
	bpf_probe_read_kernel_str(s->comm, sizeof(s->comm), task->comm);
	s->last_ran = task->sched_info.last_arrival;
	me = bpf_get_current_task_btf();
	s->now = me->sched_info.last_arrival;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	s->syscall = BPF_CORE_READ(regs, orig_ax);
	s->args[0] = BPF_CORE_READ(regs, di);
	s->args[1] = BPF_CORE_READ(regs, si);
	s->args[2] = BPF_CORE_READ(regs, dx);
	s->args[3] = BPF_CORE_READ(regs, r10);
	s->args[4] = BPF_CORE_READ(regs, r8);
	s->args[5] = BPF_CORE_READ(regs, r9);

	st.buf = &s->ustack;
	st.task = task;
	st.w = bpf_map_lookup_elem(&unwind_walk, &zero);
	if (!st.w)
		return 0;
	st.proc = bpf_map_lookup_elem(&unwind_procs, &tgid);
	bool tables = st.proc != 0;
	if (!st.proc)
		st.proc = bpf_map_lookup_elem(&no_tables, &zero);
	unwind_begin(st.w, BPF_CORE_READ(regs, ip), BPF_CORE_READ(regs, sp),
		     BPF_CORE_READ(regs, bp), 0, false);
	bpf_loop(WP_MAX_STACK_DEPTH, unwind_step, &st, 0);
	n = st.w->n;
	stop = st.w->stop;
	/* frames rootward of code outside the tables came from frame pointers: say so */
	if (tables && st.w->not_mapped && !stop)
		stop = WP_UNW_OUTSIDE;
	if (stop && n < WP_MAX_STACK_DEPTH) {
		s->ustack.ips[n & (WP_MAX_STACK_DEPTH - 1)] = stop;
		n++;
	}
	s->ulen = n;
	klen = bpf_get_task_stack(task, s->kstack.ips, sizeof(s->kstack.ips), 0);
	s->klen = klen > 0 ? klen / sizeof(__u64) : 0;
	bpf_seq_write(ctx->meta->seq, s, sizeof(*s));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
