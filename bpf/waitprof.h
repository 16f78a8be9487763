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
	/* futex_waitv(2): always a wait, on several futexes (the first one names it) */
	WP_SYS_FUTEX_WAITV = 5,
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
	WP_OUT_END_UNSEEN = 7, /* ended without a sys_exit seen (exec, a restarted call) */
};

/*
 * A stack reference is a 64-bit hash of the frames, the key of the stack table (never
 * below WP_STACK_ID_MIN), or one of these markers saying why there is no stack. Any
 * other value below WP_STACK_ID_MIN is the errno bpf_get_stack() failed with.
 */
enum wp_stack_marker {
	/* the thread was already blocked when the session started: never seen blocking */
	WP_STACK_BEFORE_ATTACH = 4000,
	WP_STACK_NOT_CAPTURED = 4001, /* the kind is filtered out by --kinds */
	WP_STACK_TABLE_FULL = 4002,   /* the stack table had no room for a new stack */
	WP_STACK_NEW_THREAD = 4003,   /* created during the session, waiting for its first run */
	/* waker stacks: a hard interrupt has no user stack of its own */
	WP_STACK_IN_INTERRUPT = 4004,
	WP_STACK_KERNEL_THREAD = 4005, /* the waker is a kernel thread: no user stack */
	WP_STACK_NO_WAKER = 4006,      /* nobody woke it: preempted, or wakers are off */
	WP_STACK_ID_MIN = 4096,
};

/*
 * One captured stack: instruction pointers, leaf first, ending at the first zero (or at
 * WP_MAX_STACK_DEPTH); what follows that zero is not part of it.
 */
struct wp_stack {
	__u64 ips[WP_MAX_STACK_DEPTH];
};

/* Per-thread flags (thread_state.flags). */
enum wp_thread_flag {
	WP_TF_ON_CPU = 1 << 0,        /* running now; in_ts is when it got the CPU */
	WP_TF_RUNNABLE_OUT = 1 << 1,  /* switched out while runnable (preempted) */
	WP_TF_IN_EPISODE = 1 << 2,    /* inside a tracked syscall that has blocked */
	WP_TF_BEFORE_ATTACH = 1 << 3, /* first seen already off-CPU */
	WP_TF_POLL_WATCHING = 1 << 4, /* blocked in an epoll call, counted in its wp_poll.watching */
};

/* Where a wakeup came from (wp_waker.ctx). */
enum wp_waker_ctx {
	WP_WAKER_NONE = 0, /* not woken: preempted, never woke, or wakers are off */
	WP_WAKER_TASK = 1, /* a thread: in a syscall (softirqs it ran included), or a kthread */
	/* an interrupt, or the softirqs run on its way out (timer expiry, network receive) */
	WP_WAKER_INTERRUPT = 2,
	WP_WAKER_UNSEEN = 3, /* it woke, but no sched_waking reached us */
};

/*
 * Who woke a thread, captured in sched_waking on the waker's CPU. tgid and comm are the
 * running task's; in an interrupt they would be whoever was interrupted, so they are
 * left empty there.
 */
struct wp_waker {
	__u64 ustack;
	__u64 kstack;
	__u32 tgid;
	__u32 tid;
	char comm[WP_COMM_LEN];
	__u8 ctx; /* enum wp_waker_ctx */
	/* 1 = its stacks are the ones walked at the same place before, not walked now
	   (never part of an agg_key: see aggregate) */
	__u8 reused;
	__u8 __pad[6];
};
_Static_assert(sizeof(struct wp_waker) == 48, "wp_waker layout changed");

/* Run-queue waits per thread, as a log2 histogram of microseconds (slot 0: < 2 us). */
#define WP_RUNQ_SLOTS 28

/*
 * Places a thread goes off-CPU at, remembered per thread with the kernel stack captured
 * there: a loop alternates between a few (a worker's wait for work and its lock; a waker
 * that yields to the thread it woke).
 */
#define WP_PLACES 4

struct wp_place {
	__u64 sig;    /* 0 = empty */
	__u64 kstack;
	__u32 reuses; /* since the kernel stack was captured */
	__u32 __pad;
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
	__u64 cur_ustack;
	__u64 cur_kstack;
	/* the open episode: one call of a tracked syscall that blocked */
	__u64 ep_blocked_ns;
	__u64 ep_runq_ns;
	__u64 ep_ustack;
	__u64 ep_kstack;
	__s32 syscall; /* syscall nr at the last switch-out, -1 when not in a syscall */
	__u32 tid;
	__u32 flags;
	__u8 kind; /* enum wp_kind of the last switch-out */
	__u8 __pad[3];
	char comm[WP_COMM_LEN];
	__u64 exit_ts; /* set only in the record sent when the thread exits */
	/* the last places it went off-CPU at (see place_of), and the stacks captured there */
	struct wp_place places[WP_PLACES];
	__u32 next_place; /* the slot a new place replaces, round robin */
	__u32 __pad2;
	/* the wait object of the last switch-out (see agg_key.object) */
	__u64 object;
	/* the last sched_waking of this thread, and the waker of the open episode (its last
	   blocked interval's) */
	struct wp_waker waking;
	struct wp_waker ep_waker;
	__u64 runq_woken_ns; /* the part of runq_ns that followed a wakeup (not a preemption) */
	__u32 runq_hist[WP_RUNQ_SLOTS];
	/* epoll calls that returned, and how many of them blocked (see wp_poll) */
	__u32 polls;
	__u32 polls_blocking;
	__u32 poll_fd; /* the epoll fd of the blocked call it counts as watching */
	__u32 __pad3;
	/* the kernel's run time of the task (se.sum_exec_runtime) at its last switch-out, or
	   when first seen off-CPU: how long it ran when a switch-in went unseen */
	__u64 exec_out;
};
_Static_assert(sizeof(struct thread_state) == 152 + 24 * WP_PLACES + 8 + 96 + 8 + 4 * WP_RUNQ_SLOTS + 16 + 8,
	       "thread_state layout changed: keep it packed");

/*
 * The aggregation key: one row of the profile. The waker is the one that ended the
 * interval (for an episode, its last blocked interval); its thread id only with
 * --per-thread, so wakers that come and go do not multiply rows.
 */
struct agg_key {
	__u64 ustack;
	__u64 kstack;
	/* what the thread waited on: futex address, epoll fd, listening socket's inode */
	__u64 object;
	__u32 tid;
	__s16 syscall;
	__u8 kind;    /* enum wp_kind */
	__u8 outcome; /* enum wp_outcome */
	struct wp_waker waker;
};
_Static_assert(sizeof(struct agg_key) == 32 + 48, "agg_key must have no padding: it is hashed");

struct agg_val {
	__u64 count; /* episodes (tracked syscalls) or off-CPU intervals (other) */
	__u64 blocked_ns;
	__u64 runq_ns;
};
_Static_assert(sizeof(struct agg_val) == 24, "agg_val layout changed");

/* Threads that waited on one object: who, and how long (futex, epoll, accept). */
struct waiter_key {
	__u64 object;
	__u32 tid;
	__u8 kind;
	__u8 __pad[3];
};
_Static_assert(sizeof(struct waiter_key) == 16, "waiter_key must have no padding: it is hashed");

/*
 * A listening socket the target accepted on, sampled at every accept(2) return. The
 * queue length is the accept queue when the call found it (one more than what is left
 * after a successful accept); drops are the socket's own counter (sk_drops), which
 * counts accept-queue overflows, so first and last bound the drops between samples.
 */
struct wp_listener {
	__u64 accepts;   /* calls sampled (connections and EAGAINs) */
	__u64 qlen_sum;
	__u64 at_limit;  /* calls that found the queue at its limit */
	__u32 qlen_max;
	__u32 limit;     /* sk_max_ack_backlog: the listen() backlog, capped by somaxconn */
	__u32 drops_first;
	__u32 drops_last;
	__u16 family;    /* AF_INET, AF_INET6, AF_UNIX */
	__u16 port;      /* host byte order */
	__u8 addr[16];   /* IPv4 in the first 4 bytes */
	__u32 __pad;
};
_Static_assert(sizeof(struct wp_listener) == 64, "wp_listener layout changed");

/*
 * One epoll fd of the target, polled: how often, and the gaps between polls. A gap runs
 * from the end of one epoll call on the fd to the start of the next, while no call on it
 * is blocked (a blocked call watches the fd: events wake it). For an event loop, or Go's
 * netpoller, a gap is how long a ready event could wait before anyone looked. The start
 * of a call that does not block is its exit, a few microseconds late. Updated without a
 * lock from every CPU: two calls that end at the same instant can miscount one gap.
 */
struct wp_poll {
	__u64 polls;          /* epoll calls that returned */
	__u64 blocking;       /* ... of which blocked */
	__u64 last_ns;        /* the end of the last call, or the start of a blocked one */
	__u64 gaps;
	__u64 gap_sum_ns;
	__u64 gap_max_ns;
	__u64 gap_max_end_ns; /* when the longest gap ended */
	__u32 gap_max_tid;    /* the thread whose call ended it */
	__u32 watching;       /* calls blocked on it now */
	__u32 gap_hist[WP_RUNQ_SLOTS]; /* log2 us, as the run-queue histograms */
};
_Static_assert(sizeof(struct wp_poll) == 64 + 4 * WP_RUNQ_SLOTS, "wp_poll layout changed");

/* The epoll fds below this are counted in an array indexed by fd, the rest in a hash. */
#define WP_POLL_FDS_DIRECT 1024

/*
 * The target's thread running on a CPU (one per CPU), as sched_switch saw it switch in;
 * tid 0 once it switched out. `quiet`: it is in no tracked call and watches no epoll fd,
 * so an epoll call of it that returns now did not block, and sys_exit counts that return
 * in `polls` without looking the thread's state up. Those polls are added to its state at
 * its switch-out or exit, or by user space at the session's end.
 */
struct wp_running {
	__u32 tid;
	__u32 polls;
	__u32 quiet;
	__u32 __pad;
};

/* One (thread, user stack) of the on-CPU samples. */
struct wp_oncpu_key {
	__u64 ustack;
	__u32 tid;
	__u32 __pad;
};

/* One listening TCP socket, as sockets.bpf.c's iterator reports it. */
struct wp_listen_sample {
	__u64 inode;
	__u32 drops; /* sk_drops */
	__u32 qlen;  /* sk_ack_backlog */
	__u32 limit; /* sk_max_ack_backlog */
	__u32 __pad;
};
_Static_assert(sizeof(struct wp_listen_sample) == 24, "wp_listen_sample layout changed");

/* What the program could not record, counted instead of lost silently. */
enum wp_stat {
	WP_STAT_AGG_FULL = 0,      /* aggregation map full: a row was dropped */
	WP_STAT_AGG_FULL_NS,       /* ... and the off-CPU time it carried */
	WP_STAT_THREADS_FULL,      /* thread map full: a thread went untracked */
	WP_STAT_USTACK_ERR,        /* user stack capture failed */
	WP_STAT_KSTACK_ERR,        /* kernel stack capture failed */
	WP_STAT_STACK_TABLE_FULL,  /* stack table full: a new stack was not stored */
	WP_STAT_EXIT_LOST,         /* ring buffer full: a thread's exit record was lost */
	WP_STAT_NO_WAKEUP,         /* woke without a sched_waking we saw: counted as blocked */
	WP_STAT_IN_WHILE_ON_CPU,   /* a switch-in for a thread already on a CPU */
	WP_STAT_MISSED_SWITCH_IN,  /* a thread ran with no switch-in seen */
	WP_STAT_MISSED_RECOVERED,  /* ... of which closed at sys_exit */
	WP_STAT_BELOW_MIN,         /* intervals or episodes shorter than --min-block */
	WP_STAT_BELOW_MIN_NS,
	WP_STAT_KSTACK_REUSED,     /* off-CPU at a known place: kernel stack reused, not walked */
	WP_STAT_KSTACK_RECHECKED,  /* ... walked again anyway, to check the reuse */
	WP_STAT_KSTACK_DIFFERED,   /* ... and found different: the reuse there had been wrong */
	WP_STAT_WAITERS_FULL,      /* waiter map full: a (object, thread) pair was not counted */
	WP_STAT_LISTENERS_FULL,    /* listener map full: a listening socket was not sampled */
	WP_STAT_POLLS_FULL,        /* poll map full: an epoll fd's polls were not counted */
	WP_STAT_ONCPU_FULL,        /* on-CPU sample map full: a sample was not counted */
	WP_STAT_UNWIND_DWARF,      /* user stacks unwound with the target's unwind tables */
	WP_STAT_UNWIND_NOT_MAPPED, /* ... that reached code no table covers (walked by frame pointer) */
	WP_STAT_WAKER_REUSED,      /* a wakeup's waker stacks reused from its place (wp_waker_place) */
	WP_STAT_WAKER_RECHECKED,   /* ... walked again anyway, to check the reuse */
	WP_STAT_WAKER_DIFFERED,    /* ... and found different */
	WP_STAT_WAKER_WALKED_NS,   /* blocked time ended by a wakeup whose waker stacks were walked */
	WP_STAT_WAKER_REUSED_NS,   /* ... whose waker stacks were reused */
	WP_STAT_TIMELINE_DROPPED,  /* --timeline: events lost, the ring buffer full */
	WP_STAT_MISSED_AT_OUT,     /* ... of the unseen switch-ins, closed at the next switch-out or exit */
	WP_STAT_USTACK_REUSED,     /* a switch-out's user stack: a walk from the same registers reused */
	WP_STAT_USTACK_CHANGED,    /* ... found with a stack word changed since: walked */
	WP_STAT_USTACK_UNREMEMBERED, /* ... walked, not remembered: too deep or far, through code no table covers, a read failed */
	WP_STAT_COUNT,
};

/* --timeline: the events a thread's states over the session are rebuilt from */
enum wp_event_type {
	WP_EV_OFF = 1,  /* switched out: blocked, or preempted (still runnable) */
	WP_EV_ON = 2,   /* switched in */
	WP_EV_WAKE = 3, /* woken (sched_waking, on the waker's CPU) */
};

struct wp_event {
	__u64 ts;
	__u64 object;     /* WP_EV_OFF: what it waits on, as a row's object; 0 = nothing known */
	__u32 tid;
	__u32 waker_tid;  /* WP_EV_WAKE: the task that woke it (0 in an interrupt) */
	__u32 waker_tgid;
	__s32 syscall;    /* WP_EV_OFF: the syscall it is in, -1 = none */
	__u8 type;        /* enum wp_event_type */
	__u8 kind;        /* WP_EV_OFF: enum wp_kind */
	__u8 runnable;    /* WP_EV_OFF: preempted, not blocked */
	__u8 waker_ctx;   /* WP_EV_WAKE: enum wp_waker_ctx; WP_WAKER_NONE = not recorded */
	__u32 __pad;
};

/* All tunables, written by user space between open and load. Zero means "off"/"all". */
struct wp_config {
	__u32 tgid;         /* the target process */
	__u32 tid;          /* only this thread, 0 = every thread */
	__u64 min_block_ns; /* rows shorter than this are counted, not aggregated */
	__u32 kinds_mask;   /* bit (1 << wp_kind) set = aggregate that kind */
	__u32 futex_wait_ops; /* bit (1 << (op & 127)) set = that futex(2) op waits */
	/* a reused kernel stack is walked again every Nth time; 1 = always walk */
	__u32 recapture_every;
	/* 1 = a row per thread (--per-thread); 0 = threads share rows, so a stream of
	   short-lived threads does not fill the aggregation map */
	__u32 rows_per_thread;
	/* 1 = capture the waker (stacks, thread, context) at every wakeup of the target */
	__u32 wakers;
	/* 1 = unwind the target's user stacks with its unwind tables where they are loaded */
	__u32 dwarf;
	/* 1 = send every switch and wakeup of the target's threads to the timeline ring buffer */
	__u32 timeline;
	/*
	 * A wakeup that ends a wait this long or longer always has its waker's stacks walked;
	 * a shorter one, from a thread in a syscall at a place seen before, reuses them (see
	 * capture_waker). 0 = always walk.
	 */
	__u64 waker_walk_ns;
	/*
	 * Where this CPU's preempt count is, from its run queue: the offset of __preempt_count
	 * minus that of runqueues in the kernel's per-CPU section (vmlinux BTF). It tells a
	 * wakeup in an interrupt from one in a syscall without walking the kernel stack.
	 * 0 = unknown: every waker is walked.
	 */
	__s64 preempt_from_rq;
	/*
	 * A kernel return address in [irq_entry_lo, irq_entry_hi) but not in the page-fault
	 * entry [fault_entry_lo, fault_entry_hi) means the stack runs through an interrupt
	 * (/proc/kallsyms' __irqentry_text_start/end, asm_exc_page_fault). 0 = unknown.
	 */
	__u64 irq_entry_lo;
	__u64 irq_entry_hi;
	__u64 fault_entry_lo;
	__u64 fault_entry_hi;
	/*
	 * Tests only: every Nth switch-in of the target is ignored, as if the kernel had not
	 * delivered it (see switched_in_unseen). 0 = none: the verifier prunes the test.
	 */
	__u32 test_drop_switch_ins;
	__u32 __pad;
	__u8 sysclass[WP_MAX_SYSCALL_NR]; /* enum wp_sysclass per syscall number */
};

/*
 * DWARF unwinding (src/unwind.rs prepares the tables). Every executable file the target
 * maps has its .eh_frame compiled into rows sorted by address, all files' rows in one
 * array: a row says, from its pc up to the next row's, how to find the canonical frame
 * address (CFA: the caller's stack pointer) and where the caller's rbp was saved. The
 * return address is always at CFA - 8 (x86-64). A process's executable mappings, sorted
 * by address, say which rows cover each.
 */
#define WP_UNWIND_MAPS 128

enum wp_cfa {
	WP_CFA_NONE = 0,        /* no FDE covers this pc */
	WP_CFA_RSP = 1,         /* CFA = rsp + cfa_off */
	WP_CFA_RBP = 2,         /* CFA = rbp + cfa_off */
	WP_CFA_END = 3,         /* the return address is undefined: the outermost frame */
	WP_CFA_UNSUPPORTED = 4, /* a DWARF expression or another register: not followed */
};

enum wp_rbp {
	WP_RBP_SAME = 0, /* the caller's rbp is this frame's */
	WP_RBP_AT = 1,   /* saved at CFA + rbp_off */
};

/* 8 bytes: an array of 2^20 rows takes 8 MiB */
struct wp_unwind_row {
	__u32 pc; /* the file's virtual address, where this rule starts */
	__s16 cfa_off;
	__s8 rbp_off8; /* rbp_off / 8 */
	__u8 rule;     /* enum wp_cfa in bits 0-3, enum wp_rbp in bits 4-7 */
};
_Static_assert(sizeof(struct wp_unwind_row) == 8, "wp_unwind_row layout changed");

struct wp_unwind_map {
	__u64 start, end; /* the mapping's addresses */
	__u64 bias;       /* address - bias = the file's virtual address */
	__u32 row_lo, row_hi; /* its file's rows; row_lo == row_hi: none */
};
_Static_assert(sizeof(struct wp_unwind_map) == 32, "wp_unwind_map layout changed");

struct wp_unwind_proc {
	__u32 n; /* mappings in use, sorted by start */
	/* changes whenever user space replaces the value: what the unwinder remembered of
	   an older one (struct wp_unwind_memo) no longer counts */
	__u32 generation;
	struct wp_unwind_map m[WP_UNWIND_MAPS];
};

/*
 * A user stack unwound with the tables that stops short of its outermost frame ends in one
 * of these pseudo-addresses (no code lives below 64 KiB), so that stacks cut for different
 * reasons stay apart and user space can say why.
 */
enum wp_unwind_stop {
	WP_UNW_TRUNCATED = 1,   /* deeper than WP_MAX_STACK_DEPTH */
	WP_UNW_NO_INFO = 2,     /* the file has no unwind entry for this address */
	WP_UNW_UNREADABLE = 3,  /* the stack memory could not be read (paged out) */
	WP_UNW_UNSUPPORTED = 4, /* an unwind rule waitprof does not follow (a DWARF expression) */
	WP_UNW_NOT_MAPPED = 5,  /* code no table covers, and its frame pointer led nowhere */
	WP_UNW_PENDING = 6,     /* walked by frame pointer: the tables were not loaded yet */
	WP_UNW_OUTSIDE = 7,     /* walked by frame pointer from code outside the tables */
	WP_UNW_OTHER_PROCESS = 8, /* (user space) a waker in another process: leaf only */
	WP_UNW_STOP_MAX = 15,
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
	enum wp_event_type event_type;
	enum wp_stack_marker stack_marker;
	enum wp_thread_flag thread_flag;
	enum wp_waker_ctx waker_ctx;
	enum wp_cfa cfa;
	enum wp_rbp rbp;
	enum wp_unwind_stop unwind_stop;
};

/*
 * One thread of the target that is off-CPU when a snapshot is taken (bpf/snapshot.bpf.c):
 * its syscall and arguments, its complete user stack (the same unwinder and tables as
 * live stacks, reading the thread's memory) and its kernel stack. Read by user space from
 * the iterator, at the session's start and end.
 */
struct wp_snapshot {
	__u32 tid;
	__u32 state;        /* task state word: sleeping (1), uninterruptible (2), ... */
	__s64 syscall;      /* orig_ax: -1 outside a syscall */
	__u64 args[6];      /* the syscall's arguments */
	__u64 last_ran;     /* sched_info.last_arrival: when it last got a CPU (rq clock) */
	__u64 now;          /* the iterating task's last_arrival: the same clock, about now */
	__u32 ulen, klen;   /* frames in ustack (the last may be a wp_unwind_stop) and kstack */
	char comm[16];
	struct wp_stack ustack;
	struct wp_stack kstack;
};
_Static_assert(sizeof(struct wp_snapshot) == 104 + 2 * 8 * WP_MAX_STACK_DEPTH,
	       "wp_snapshot layout");

/*
 * 1 when a < b (unsigned), in arithmetic: `a < b` compiles to a branch, and the checker
 * follows both ways of each branch through the rest of the program. (Shared by both
 * objects' programs, not a type.)
 */
static __always_inline __u64 below(__u64 a, __u64 b)
{
	/* the borrow out of a - b */
	return ((~a & b) | (~(a ^ b) & (a - b))) >> 63;
}

#endif /* __WAITPROF_H */
