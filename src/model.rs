//! The data that flows through the pipeline: what collection read out of the kernel
//! (`Collected`), in terms that no longer depend on the BPF skeleton.

use std::collections::HashMap;

use crate::bpf;

/// What a thread waited in. The three tracked families are broken out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Epoll,
    Futex,
    Accept,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Epoll, Kind::Futex, Kind::Accept, Kind::Other];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Epoll => "epoll",
            Kind::Futex => "futex",
            Kind::Accept => "accept",
            Kind::Other => "other",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn from_raw(raw: u8) -> Kind {
        match bpf::wp_kind(raw.into()) {
            bpf::wp_kind::WP_KIND_EPOLL => Kind::Epoll,
            bpf::wp_kind::WP_KIND_FUTEX => Kind::Futex,
            bpf::wp_kind::WP_KIND_ACCEPT => Kind::Accept,
            _ => Kind::Other,
        }
    }

    /// The bit of this kind in the BPF config's `kinds_mask`.
    pub fn mask_bit(self) -> u32 {
        let raw = match self {
            Kind::Epoll => bpf::wp_kind::WP_KIND_EPOLL,
            Kind::Futex => bpf::wp_kind::WP_KIND_FUTEX,
            Kind::Accept => bpf::wp_kind::WP_KIND_ACCEPT,
            Kind::Other => bpf::wp_kind::WP_KIND_OTHER,
        };
        1 << raw.0
    }
}

/// How a tracked syscall ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    None,
    Ok,
    Timeout,
    Again,
    Interrupted,
    Error,
    Unfinished,
    /// The call ended without its return being seen (an exec, a restarted call).
    EndUnseen,
}

impl Outcome {
    /// Its name in the exports (the JSON's keys, pprof's `outcome` label).
    pub fn key(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Again => "eagain",
            Outcome::Interrupted => "interrupted",
            Outcome::Error => "error",
            Outcome::Unfinished => "still_waiting",
            Outcome::EndUnseen => "end_unseen",
        }
    }

    pub fn from_raw(raw: u8) -> Outcome {
        match bpf::wp_outcome(raw.into()) {
            bpf::wp_outcome::WP_OUT_OK => Outcome::Ok,
            bpf::wp_outcome::WP_OUT_TIMEOUT => Outcome::Timeout,
            bpf::wp_outcome::WP_OUT_AGAIN => Outcome::Again,
            bpf::wp_outcome::WP_OUT_INTR => Outcome::Interrupted,
            bpf::wp_outcome::WP_OUT_ERROR => Outcome::Error,
            bpf::wp_outcome::WP_OUT_UNFINISHED => Outcome::Unfinished,
            bpf::wp_outcome::WP_OUT_END_UNSEEN => Outcome::EndUnseen,
            _ => Outcome::None,
        }
    }

    /// Words for the summary; what "ok" means depends on the kind.
    pub fn describe(self, kind: Kind) -> &'static str {
        match (self, kind) {
            (Outcome::Ok, Kind::Epoll) => "returned events",
            (Outcome::Ok, Kind::Futex) => "woken",
            (Outcome::Ok, Kind::Accept) => "got a connection",
            (Outcome::Ok, Kind::Other) | (Outcome::None, _) => "",
            (Outcome::Timeout, _) => "timed out",
            (Outcome::Again, _) => "EAGAIN",
            (Outcome::Interrupted, _) => "interrupted",
            (Outcome::Error, _) => "error",
            (Outcome::Unfinished, _) => "still waiting at the end",
            (Outcome::EndUnseen, _) => "ended unseen (exec or restarted call)",
        }
    }
}

/// A stack as the kernel recorded it: its key in the stack table, or why there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackRef {
    Id(u64),
    /// The thread was already blocked when the session started.
    BeforeAttach,
    /// Its kind was filtered out (`--kinds`), so no stack was taken.
    NotCaptured,
    /// The stack table was full (`--stack-storage-size`).
    TableFull,
    /// A thread created during the session, waiting for its first run.
    NewThread,
    /// bpf_get_stack failed with this errno (EFAULT: no user stack, ...).
    Missing(u32),
    /// A kernel stack read from /proc for a thread the hooks never saw: an index into
    /// `Collected::proc_kstacks`.
    Proc(u32),
    /// A waker's user stack when the wakeup ran in a hard interrupt.
    InInterrupt,
    /// A waker's user stack when the waker is a kernel thread.
    KernelThread,
    /// No waker: the thread was preempted, or wakers were not recorded.
    NoWaker,
}

impl StackRef {
    pub fn from_raw(raw: u64) -> StackRef {
        use bpf::wp_stack_marker as m;
        match raw {
            r if r >= u64::from(m::WP_STACK_ID_MIN.0) => StackRef::Id(r),
            r if r == u64::from(m::WP_STACK_BEFORE_ATTACH.0) => StackRef::BeforeAttach,
            r if r == u64::from(m::WP_STACK_NOT_CAPTURED.0) => StackRef::NotCaptured,
            r if r == u64::from(m::WP_STACK_TABLE_FULL.0) => StackRef::TableFull,
            r if r == u64::from(m::WP_STACK_NEW_THREAD.0) => StackRef::NewThread,
            r if r == u64::from(m::WP_STACK_IN_INTERRUPT.0) => StackRef::InInterrupt,
            r if r == u64::from(m::WP_STACK_KERNEL_THREAD.0) => StackRef::KernelThread,
            r if r == u64::from(m::WP_STACK_NO_WAKER.0) => StackRef::NoWaker,
            errno => StackRef::Missing(errno as u32),
        }
    }

    /// The stack table key, if this is a recorded stack.
    pub fn id(self) -> Option<u64> {
        match self {
            StackRef::Id(id) => Some(id),
            _ => None,
        }
    }
}

/// The context a wakeup ran in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WakerCtx {
    /// Not woken: preempted, or never woke during the session, or wakers are off.
    None,
    /// A thread: in a syscall (with the softirqs it ran there), or a kernel thread.
    Task,
    /// An interrupt, or the softirqs run on its way out: whatever task it interrupted
    /// had nothing to do with it.
    Interrupt,
    /// It woke, but no wakeup reached the hooks.
    Unseen,
}

impl WakerCtx {
    pub fn from_raw(raw: u8) -> WakerCtx {
        use bpf::wp_waker_ctx as c;
        match c(raw.into()) {
            c::WP_WAKER_TASK => WakerCtx::Task,
            c::WP_WAKER_INTERRUPT => WakerCtx::Interrupt,
            c::WP_WAKER_UNSEEN => WakerCtx::Unseen,
            _ => WakerCtx::None,
        }
    }
}

/// Who ended a blocked interval, as sched_waking saw it on the waker's CPU.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Waker {
    pub ctx: WakerCtx,
    /// The running task (its process and thread; the thread only with --per-thread).
    /// Empty for an interrupt, which interrupts an unrelated task.
    pub tgid: u32,
    pub tid: u32,
    pub comm: String,
    pub ustack: StackRef,
    pub kstack: StackRef,
}

impl Default for Waker {
    fn default() -> Waker {
        Waker {
            ctx: WakerCtx::None,
            tgid: 0,
            tid: 0,
            comm: String::new(),
            ustack: StackRef::NoWaker,
            kstack: StackRef::NoWaker,
        }
    }
}

/// One aggregated row of the profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub tid: u32,
    pub kind: Kind,
    /// The syscall the thread was in, when it was in one.
    pub syscall: Option<u32>,
    pub outcome: Outcome,
    pub ustack: StackRef,
    pub kstack: StackRef,
    /// Episodes (tracked syscalls) or off-CPU intervals (other).
    pub count: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// What the wait was on: futex address, epoll fd + 1, listening socket inode; 0 = none.
    pub object: u64,
    /// Who woke it (for an episode: the wakeup that ended its last blocked interval).
    pub waker: Waker,
}

/// Where one thread's time went during the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadTotals {
    pub tid: u32,
    pub comm: String,
    /// The part of the session the thread existed for (ns, CLOCK_MONOTONIC).
    pub start_ns: u64,
    pub end_ns: u64,
    pub oncpu_ns: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// The part of the run-queue wait that followed a wakeup (not a preemption).
    pub runq_woken_ns: u64,
    /// Run-queue waits, counted per log2 bucket of microseconds (slot 0: under 2 us).
    pub runq_hist: Vec<u64>,
    /// epoll calls that returned, and those of them that blocked.
    pub polls: u64,
    pub polls_blocking: u64,
    pub exited: bool,
}

impl ThreadTotals {
    pub fn lifetime_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
    pub fn accounted_ns(&self) -> u64 {
        self.oncpu_ns + self.blocked_ns + self.runq_ns
    }
}

/// What the session could not see, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Losses {
    pub rows_dropped: u64,
    pub rows_dropped_ns: u64,
    pub threads_untracked: u64,
    pub ustack_errors: u64,
    pub kstack_errors: u64,
    pub stack_table_full: u64,
    pub exit_records_lost: u64,
    pub no_wakeup_seen: u64,
    /// Switch-ins of a thread already on a CPU (its switch-out was not seen).
    pub switch_in_while_on_cpu: u64,
    /// Threads that ran with no switch-in seen; how many of those were closed at a
    /// syscall exit, and how many at the next switch-out or the thread's exit (switched
    /// in as long before it as the kernel's run time of the thread grew).
    pub missed_switch_ins: u64,
    pub missed_switch_ins_recovered: u64,
    pub missed_switch_ins_closed_at_switch_out: u64,
    /// Hook runs the kernel skipped because the program was already running on that CPU.
    pub recursion_misses: u64,
    pub below_min_block: u64,
    pub below_min_block_ns: u64,
    /// Off-CPU intervals at a known place that reused the kernel stack walked there; how
    /// many walked it again to check, and how many of those found another kernel stack.
    pub kstacks_reused: u64,
    pub kstacks_rechecked: u64,
    pub kstacks_differed: u64,
    /// (object, thread) pairs not counted because the waiter map was full.
    pub waiters_dropped: u64,
    /// Listening sockets not sampled because the listener map was full.
    pub listeners_dropped: u64,
    /// epoll fds whose polls were not counted because the poll map was full.
    pub polls_dropped: u64,
    /// On-CPU samples not counted because their map was full.
    pub oncpu_dropped: u64,
    /// User stacks unwound with the unwind tables, and those of them that ran through
    /// code no table covered (walked on by frame pointer).
    pub ustacks_unwound: u64,
    pub ustacks_through_unmapped: u64,
    /// Switch-outs whose user stack was the one a walk from the same registers had stored,
    /// every stack word that walk read being unchanged (exact: not walked); those where a
    /// word had changed (walked); and walks too deep or far to remember for that.
    pub ustacks_reused: u64,
    pub ustacks_changed: u64,
    pub ustacks_unremembered: u64,
    /// Wakeups whose waker stacks were reused from the same place (not walked), how many
    /// walked them again to check and how many of those found others; and the blocked
    /// time ended by wakeups whose waker stacks were walked, and by those reused.
    pub waker_stacks_reused: u64,
    pub waker_stacks_rechecked: u64,
    pub waker_stacks_differed: u64,
    pub waker_walked_ns: u64,
    pub waker_reused_ns: u64,
    /// `--timeline` events the kernel could not send (its ring buffer full).
    pub timeline_dropped: u64,
    /// Why no waker stack could be reused (every waker was walked), if so.
    pub waker_reuse_off: Option<&'static str>,
}

/// One thread's total wait on one object (futex, epoll fd, listening socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub kind: Kind,
    pub object: u64,
    pub tid: u32,
    pub ns: u64,
}

/// A listening socket the target accepted on, and its accept queue during the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    pub inode: u64,
    /// Local address (None for a non-IP socket).
    pub addr: Option<std::net::SocketAddr>,
    /// accept(2) returns sampled, connections and EAGAINs.
    pub accepts: u64,
    /// Queue length when an accept found it: sum (for the mean), maximum, and how many
    /// calls found it at its limit.
    pub qlen_sum: u64,
    pub qlen_max: u32,
    pub at_limit: u64,
    /// The accept queue's limit (listen()'s backlog, capped by net.core.somaxconn).
    pub limit: u32,
    /// Connections the socket dropped (its sk_drops: accept-queue overflows), and over
    /// which span that is known.
    pub drops: u64,
    pub drops_span: DropsSpan,
}

/// One epoll fd of the target, polled: how often, and the gaps when nothing watched it
/// (from the end of one epoll call to the start of the next, while no call on it was
/// blocked). Exact: every call is counted in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Poll {
    pub fd: u32,
    pub polls: u64,
    /// Calls that blocked (left the CPU) before they returned.
    pub blocking: u64,
    pub gaps: u64,
    pub gap_sum_ns: u64,
    pub gap_max_ns: u64,
    /// When the longest gap ended (CLOCK_MONOTONIC), and the thread that ended it.
    pub gap_max_end_ns: u64,
    pub gap_max_tid: u32,
    /// Gaps per log2 bucket of microseconds, as the run-queue histograms.
    pub gap_hist: Vec<u64>,
    /// A gap still open at the end of the session (nothing polled since the last call).
    pub open_gap_ns: u64,
}

impl Poll {
    /// The longest gap, counting one still open at the end.
    pub fn longest_ns(&self) -> u64 {
        self.gap_max_ns.max(self.open_gap_ns)
    }
}

/// How much of the session a listener's drop count covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropsSpan {
    /// The whole session: read at its start (or the socket is newer) and at its end.
    #[default]
    Session,
    /// From the first to the last accept of the session, where the counter was read: the
    /// socket was gone at the end, or the kernel has no TCP socket iterator.
    Accepts,
}

impl DropsSpan {
    pub fn describe(self) -> &'static str {
        match self {
            DropsSpan::Session => "during the session",
            DropsSpan::Accepts => "between the first and last accept",
        }
    }
}

/// One line of /proc/PID/maps: where a futex lives, which file an address is in, which
/// files need unwind tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// The file or pseudo-file (`[heap]`, `[stack]`); empty for anonymous memory.
    pub path: String,
    /// Mapped executable (`x` in its permissions).
    pub executable: bool,
    /// `dev:inode`, which names the file across paths and processes (inode 0: no file).
    pub file: String,
}

impl Mapping {
    /// `start-end perms offset dev inode path` into a Mapping.
    pub fn parse(line: &str) -> Option<Mapping> {
        let mut f = line.split_whitespace();
        let (start, end) = f.next()?.split_once('-')?;
        let perms = f.next()?;
        let offset = f.next()?;
        let (dev, inode) = (f.next()?, f.next()?);
        Some(Mapping {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            offset: u64::from_str_radix(offset, 16).ok()?,
            path: crate::text::printable(&f.collect::<Vec<_>>().join(" ")).into_owned(),
            executable: perms.contains('x'),
            file: format!("{dev}:{inode}"),
        })
    }

    /// Every mapping of process `pid`.
    pub fn read_all(pid: u32) -> std::io::Result<Vec<Mapping>> {
        use std::io::Read;
        // bounded: 64 MiB is far more than the kernel's limit of 65530 mappings needs
        let mut data = Vec::new();
        std::fs::File::open(format!("/proc/{pid}/maps"))?
            .take(64 << 20)
            .read_to_end(&mut data)?;
        Ok(String::from_utf8_lossy(&data)
            .lines()
            .filter_map(Mapping::parse)
            .collect())
    }

    /// Backed by a file (not anonymous memory, the heap, a stack or the vdso).
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/') && !self.file.ends_with(":0")
    }
}

/// One thread off-CPU at a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocked {
    pub tid: u32,
    pub comm: String,
    /// The task state word (1 sleeping, 2 uninterruptible, ...).
    pub state: u32,
    pub syscall: Option<u32>,
    pub args: [u64; 6],
    /// User frames, leaf first, as the kernel's stacks are stored (the last may be an
    /// unwinder's stop marker).
    pub ustack: Vec<u64>,
    pub kstack: Vec<u64>,
    /// How long it had been off-CPU: from when it last got a CPU (an upper bound, by the
    /// scheduler's clock), if the kernel keeps it.
    pub off_cpu_ns: Option<u64>,
    /// The stacks' keys among the profile's stacks, once collection registered them.
    pub ustack_id: Option<u64>,
    pub kstack_id: Option<u64>,
    /// For a futex wait on a lock whose word names its owner (glibc's `__owner`, a PI
    /// futex's tid): the thread holding it.
    pub holder: Option<u32>,
    /// For an accept: the listening socket's address.
    pub listener: Option<std::net::SocketAddr>,
}

/// What the snapshots of off-CPU threads saw, or why there were none.
#[derive(Clone, Debug, Default)]
pub struct Snapshots {
    /// None: taken; else why not (a kernel without sleepable task iterators).
    pub missing: Option<String>,
    pub at_start: HashMap<u32, Blocked>,
    pub at_end: HashMap<u32, Blocked>,
    /// How long the start's took, and how many threads the process had then.
    pub took: std::time::Duration,
    /// Rows whose stacks came from the start's snapshot (blocked before attach).
    pub rows_filled: usize,
}

/// Why collection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    Duration,
    Interrupted,
    TargetExited(Option<i32>),
}

/// Everything collection read out of the kernel, before symbolization.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    pub pid: u32,
    pub comm: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub rows: Vec<Row>,
    /// Stack id -> instruction pointers, leaf first, as the kernel stores them.
    pub stacks: HashMap<u64, Vec<u64>>,
    /// Kernel stacks (symbol names, root first) read from /proc/PID/task/TID/stack.
    pub proc_kstacks: Vec<Vec<String>>,
    pub threads: Vec<ThreadTotals>,
    pub losses: Losses,
    pub end_reason: Option<EndReason>,
    /// The attach method that was used.
    pub attach: String,
    /// How syscall exits were hooked, in words (`the exits of 8 tracked syscalls`).
    pub syscall_exits: Option<String>,
    /// When the session stopped recording, to report how long the writing took.
    pub stopped_at: Option<std::time::Instant>,
    pub waiters: Vec<Waiter>,
    pub listeners: Vec<Listener>,
    /// The target's epoll fds, polled: heaviest gap first.
    pub polls: Vec<Poll>,
    /// On-CPU samples of the target's threads (taken for a Go program only).
    pub oncpu: Vec<OnCpu>,
    /// epoll fd -> how many fds it watched at the end (from /proc/PID/fdinfo).
    pub epoll_watch: HashMap<u32, usize>,
    /// Whether wakers were recorded (`--no-wakers` turns them off): without them, no
    /// wait says who ended it.
    pub wakers: bool,
    /// Off-CPU threads at the start and the end, with their stacks.
    pub snapshots: Snapshots,
    /// The namespaces the target does not share with waitprof (`mount`, `pid`).
    pub other_namespaces: Vec<&'static str>,
    /// Where waitprof kept its own threads off the target's CPUs, in words.
    pub cpus: Option<String>,
    /// What the unwind tables covered; None = frame pointers only (`--unwind fp`).
    pub unwind: Option<crate::unwind::UnwindReport>,
    /// A Go program's goroutines, sampled; None for other programs (or
    /// `--no-goroutines`).
    pub goroutines: Option<GoroutineView>,
    /// Every switch and wakeup of the target's threads (`--timeline`).
    pub timeline: Option<Timeline>,
}

/// One switch or wakeup of a target thread (`--timeline`), CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineEvent {
    pub ts: u64,
    pub tid: u32,
    pub what: TimelineWhat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelineWhat {
    /// Switched out: blocked in `syscall` (on `object`, as a row's), or preempted.
    Off {
        kind: Kind,
        syscall: Option<u32>,
        object: u64,
        preempted: bool,
    },
    On,
    /// Woken, by a task (`waker_tid` of `waker_tgid`) or an interrupt (`ctx`).
    Wake {
        ctx: WakerCtx,
        waker_tid: u32,
        waker_tgid: u32,
    },
}

/// The timeline's events, in time order, and what it lost.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub events: Vec<TimelineEvent>,
    /// Events the kernel could not send (its ring buffer full).
    pub dropped_in_kernel: u64,
    /// Events beyond the most kept (`collect::TIMELINE_MAX_EVENTS`).
    pub dropped_beyond_limit: u64,
    /// Wakers were recorded (their context and thread), or only the running task.
    pub wakers: bool,
}

/// A goroutine's state, as the Go runtime keeps it (`g.atomicstatus`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GState {
    /// Parked, for the runtime's wait reason (`IO wait`, `chan receive`, ...).
    Waiting(String),
    /// Ready to run, waiting for a P.
    Runnable,
    Running,
    /// In a system call (or cgo call), on its own thread.
    Syscall,
}

impl GState {
    /// The flame graph's frame for it, above the goroutine's stack.
    pub fn frame(&self) -> String {
        match self {
            GState::Waiting(r) => format!("[{r}]"),
            GState::Runnable => "[runnable: waiting for a P]".to_string(),
            GState::Running => "[running]".to_string(),
            GState::Syscall => "[in a syscall]".to_string(),
        }
    }
}

/// Sampled time of goroutines in one state with one stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoroutineRow {
    pub state: GState,
    /// Its stack among the profile's stacks (leaf first); None when it changed while
    /// it was read (`raced`).
    pub stack: Option<u64>,
    pub raced: bool,
    /// Sampled time: each sample counts the time to the next sweep.
    pub ns: u64,
    pub samples: u64,
    /// Distinct goroutines (by goid) among the samples.
    pub goroutines: u64,
}

/// A goroutine in a system call on one thread (from `g.m.procid`), sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoroutineThread {
    pub tid: u32,
    pub goid: u64,
    pub stack: Option<u64>,
    pub ns: u64,
}

/// The Go runtime's own scheduler statistics over the session (`runtime.sched`, read at
/// the start and the end): the runtime's sample, not waitprof's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeSched {
    /// How long goroutines waited runnable before they ran (`timeToRun`): (from ns, to
    /// ns, count) of each bucket that counted any, shortest first.
    pub time_to_run: Vec<(u64, u64, u64)>,
    /// Waits longer than the histogram holds (2^48 ns).
    pub overflow: u64,
    /// The runtime's estimate of time waited in `sync.Mutex` and `sync.RWMutex`
    /// (`totalMutexWaitTime`, Go 1.20 and later).
    pub mutex_wait_ns: Option<u64>,
}

/// On-CPU samples of one thread at one user stack (`oncpu_sample`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnCpu {
    pub tid: u32,
    pub ustack: StackRef,
    pub samples: u64,
}

/// What the goroutine sampler saw of a Go program.
#[derive(Clone, Debug, Default)]
pub struct GoroutineView {
    /// The Go version the binary was built by (`go1.21.13`).
    pub version: String,
    /// How the goroutines were read (where the layout and the list came from).
    pub how: String,
    /// None: goroutines were read; else why not.
    pub missing: Option<String>,
    pub rows: Vec<GoroutineRow>,
    pub sweeps: u64,
    /// Goroutine samples taken (one per goroutine per sweep).
    pub samples: u64,
    /// The longest time between two sweeps, as they ran (the rate adapts to the sweeps'
    /// cost, and a busy machine can delay them).
    pub period_max: std::time::Duration,
    /// CPU time of each sweep, and the goroutines it read.
    pub sweep_cpu_ns: Vec<(u64, u64)>,
    pub goroutines_max: u64,
    pub goroutines_seen: u64,
    /// Samples whose goroutine changed while its stack was read (they keep no stack).
    pub raced: u64,
    /// `g`s that could not be read, and sweeps whose goroutine list could not be.
    pub unreadable_gs: u64,
    pub unreadable_sweeps: u64,
    /// Goroutines beyond the most read in one sweep.
    pub beyond_limit: u64,
    /// Samples that kept no stack because too many distinct stacks were kept already.
    pub stacks_dropped: u64,
    /// Goroutines runnable at once, at most, and at each sweep (time, count).
    pub runnable_max: u64,
    pub runnable_series: Vec<(u64, u32)>,
    /// How long each spell of a goroutine runnable lasted, as the sweeps saw it.
    pub runnable_spells_ns: Vec<u64>,
    /// Goroutines seen in system calls, by the thread that ran them.
    pub in_syscalls: Vec<GoroutineThread>,
    /// The program exited during the session.
    pub target_gone: bool,
    /// The time the sweeps covered.
    pub session_ns: u64,
    /// The runtime's own statistics over the session, or why they were not read.
    pub runtime_sched: Option<Result<RuntimeSched, String>>,
    /// Where `runtime.goexit` is in the target (the root of every goroutine's stack).
    pub goexit: Option<(u64, u64)>,
    /// The on-CPU samples that gave the running goroutines their stacks, or why the
    /// running goroutines show their start function only (None: none ran).
    pub running_from: Option<Result<u64, String>>,
    /// Each goroutine's states over the session, with `--timeline`.
    pub spells: Option<GoroutineSpells>,
}

/// Each goroutine's states over the session, as the sweeps saw them (`--timeline`).
#[derive(Clone, Debug, Default)]
pub struct GoroutineSpells {
    /// In the order they ended.
    pub spells: Vec<GoroutineSpell>,
    /// Spells beyond the most kept.
    pub dropped: u64,
}

/// A goroutine in one state at one stack, from the sweep that first saw it so to the
/// first that saw it otherwise (sampled: its ends are a sweep interval wide).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoroutineSpell {
    pub goid: u64,
    pub from_ns: u64,
    pub to_ns: u64,
    pub state: GState,
    /// Its stack among the profile's stacks; None when it ran while it was read (`raced`).
    pub stack: Option<u64>,
    pub raced: bool,
}
