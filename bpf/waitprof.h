/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Types that cross between the BPF side (waitprof.bpf.c) and user space.
 * Rust gets them from the generated skeleton; nothing here is copied by hand.
 * Internal-only state stays in the .bpf.c.
 */
#ifndef __WAITPROF_H
#define __WAITPROF_H

#define WP_COMM_LEN 16
/* Syscall numbers below this get a class from user space; higher ones are "other". */
#define WP_MAX_SYSCALL_NR 512
/* Depth of one captured stack; the kernel's own perf_event_max_stack default. */
#define WP_MAX_STACK_DEPTH 127

/* What a thread waited in. The three tracked families are broken out; the rest is "other". */
enum wp_kind {
	WP_KIND_EPOLL = 0,
	WP_KIND_FUTEX = 1,
	WP_KIND_ACCEPT = 2,
	WP_KIND_OTHER = 3,
	WP_KIND_COUNT = 4,
};

/* How user space classifies each syscall number (config.sysclass). */
enum wp_sysclass {
	WP_SYS_OTHER = 0,
	WP_SYS_EPOLL = 1,
	/* futex(2): a wait only for the wait/lock operations, decided from the op argument */
	WP_SYS_FUTEX_OP = 2,
	/* futex_wait(2), futex_waitv(2): always a wait */
	WP_SYS_FUTEX_WAIT = 3,
	WP_SYS_ACCEPT = 4,
};

/* How a tracked syscall ended, from its return value at sys_exit. */
enum wp_outcome {
	WP_OUT_NONE = 0,       /* not a tracked syscall */
	WP_OUT_OK = 1,         /* epoll: events; futex: woken; accept: a connection */
	WP_OUT_TIMEOUT = 2,    /* epoll returned 0, futex -ETIMEDOUT */
	WP_OUT_AGAIN = 3,      /* futex -EAGAIN, accept -EAGAIN */
	WP_OUT_INTR = 4,       /* interrupted by a signal, or the thread was killed */
	WP_OUT_ERROR = 5,      /* any other error */
	WP_OUT_UNFINISHED = 6, /* still inside the syscall when the session ended */
};

/*
 * Stack ids are bpf_get_stackid() results: >= 0 is an id in the stack map, a negative
 * errno says why there is no stack. This one is ours: the thread was already blocked
 * when the session started, so the stack at the moment it blocked was never seen.
 */
enum wp_stack_marker {
	WP_STACK_BEFORE_ATTACH = -1000,
	WP_STACK_NOT_CAPTURED = -1001, /* the kind is filtered out by --kinds */
};

/* Per-thread flags (thread_state.flags). */
enum wp_thread_flag {
	WP_TF_ON_CPU = 1 << 0,        /* running now; in_ts is when it got the CPU */
	WP_TF_RUNNABLE_OUT = 1 << 1,  /* switched out while runnable (preempted) */
	WP_TF_IN_EPISODE = 1 << 2,    /* inside a tracked syscall that has blocked */
	WP_TF_BEFORE_ATTACH = 1 << 3, /* first seen already off-CPU */
};

/* Everything the program knows about one thread of the target; keyed by tid. */
struct thread_state {
	__u64 in_ts;      /* last switch-in (or session start) */
	__u64 out_ts;     /* last switch-out (or session start) */
	__u64 waking_ts;  /* last sched_waking of this thread */
	__u64 start_ts;   /* session start, or thread creation if later */
	__u64 oncpu_ns;   /* totals over the session */
	__u64 blocked_ns;
	__u64 runq_ns;
	/* the current off-CPU interval, when not inside an episode */
	__s32 cur_ustack;
	__s32 cur_kstack;
	/* the open episode: one call of a tracked syscall that blocked */
	__u64 ep_blocked_ns;
	__u64 ep_runq_ns;
	__s32 ep_ustack;
	__s32 ep_kstack;
	__s32 syscall; /* syscall nr at the last switch-out, -1 when not in a syscall */
	__u32 tid;
	__u32 flags;
	__u8 kind; /* enum wp_kind of the last switch-out */
	__u8 __pad[3];
	char comm[WP_COMM_LEN];
	__u64 exit_ts; /* set only in the record sent when the thread exits */
};
_Static_assert(sizeof(struct thread_state) == 128, "thread_state layout changed: keep it packed");

/* The aggregation key: one row of the profile. */
struct agg_key {
	__u32 tid;
	__s32 ustack;
	__s32 kstack;
	__s16 syscall;
	__u8 kind;    /* enum wp_kind */
	__u8 outcome; /* enum wp_outcome */
};
_Static_assert(sizeof(struct agg_key) == 16, "agg_key must have no padding: it is hashed");

struct agg_val {
	__u64 count; /* episodes (tracked syscalls) or off-CPU intervals (other) */
	__u64 blocked_ns;
	__u64 runq_ns;
};
_Static_assert(sizeof(struct agg_val) == 24, "agg_val layout changed");

/* What the program could not record, counted instead of lost silently. */
enum wp_stat {
	WP_STAT_AGG_FULL = 0,      /* aggregation map full: a row was dropped */
	WP_STAT_AGG_FULL_NS,       /* ... and the off-CPU time it carried */
	WP_STAT_THREADS_FULL,      /* thread map full: a thread went untracked */
	WP_STAT_USTACK_ERR,        /* user stack capture failed */
	WP_STAT_KSTACK_ERR,        /* kernel stack capture failed */
	WP_STAT_STACK_COLLISION,   /* stack map bucket taken by another stack (-EEXIST) */
	WP_STAT_EXIT_LOST,         /* ring buffer full: a thread's exit record was lost */
	WP_STAT_NO_WAKEUP,         /* woke without a sched_waking we saw: counted as blocked */
	WP_STAT_BELOW_MIN,         /* intervals or episodes shorter than --min-block */
	WP_STAT_BELOW_MIN_NS,
	WP_STAT_COUNT,
};

/* All tunables, written by user space between open and load. Zero means "off"/"all". */
struct wp_config {
	__u32 tgid;         /* the target process */
	__u32 tid;          /* only this thread, 0 = every thread */
	__u64 min_block_ns; /* rows shorter than this are counted, not aggregated */
	__u32 kinds_mask;   /* bit (1 << wp_kind) set = aggregate that kind */
	__u32 futex_wait_ops; /* bit (1 << (op & 127)) set = that futex(2) op waits */
	__u8 sysclass[WP_MAX_SYSCALL_NR]; /* enum wp_sysclass per syscall number */
};

/*
 * Not used by the program: one global of this type makes the skeleton export every enum
 * above to Rust, so user space never copies a constant by hand.
 */
struct wp_enums {
	enum wp_kind kind;
	enum wp_sysclass sysclass;
	enum wp_outcome outcome;
	enum wp_stat stat;
	enum wp_stack_marker stack_marker;
	enum wp_thread_flag thread_flag;
};

#endif /* __WAITPROF_H */
