//! Analysis: who made the threads wait, and whether it cost anything. `profile` builds
//! its waits with what is here (each wait is classed idle, lock contention or other; each
//! waker and wait object gets a name); `Analysis::of` then reads the typed profile for
//! the totals by kind and class, the wait objects' table, the stacks' coverage and the
//! findings, and the session's other facts (listeners, polls, run-queue threads, the
//! threads still waiting at its end) for the rest. The summary words the analysis and
//! the JSON serialises it; the findings are put in plain words, ranked by time.
//!
//! The classes come from what the kernel saw (how the wait ended) and from the names of
//! the waiting code (a lock acquisition versus a condition wait), so they hold for any
//! program that uses the common lock and condition primitives (glibc, Rust std,
//! parking_lot, Go's runtime). A futex wait in code that uses neither is "other".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::model::{Collected, GState, Kind, Outcome, Row, StackRef, Waiter, Waker, WakerCtx};
use crate::profile::{Profile, Wait};
use crate::symbolize::Symbols;

/// What a blocked interval meant for latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitClass {
    /// Waiting for work: an event loop or accept loop whose wait timed out or is still
    /// waiting, a worker parked on a condition, a timed wait nobody ended.
    Idle,
    /// Waiting for a lock another thread held.
    Contended,
    /// Everything else: events and connections that arrived, sleeps, I/O.
    Other,
}

impl WaitClass {
    /// Its name in the exports (pprof's `class` label; the JSON's `*_ns` keys).
    pub fn key(self) -> &'static str {
        match self {
            WaitClass::Idle => "idle",
            WaitClass::Contended => "lock_contention",
            WaitClass::Other => "other",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            WaitClass::Idle => "idle (waiting for work)",
            WaitClass::Contended => "lock contention",
            WaitClass::Other => "other waits (events, I/O, sleeps)",
        }
    }
}

/// Frames of a lock acquisition's slow path (matched as substrings).
const LOCK_FRAMES: [&str; 17] = [
    "pthread_mutex_lock",
    "Mutex::lock",
    "Mutex<T>::lock",
    "RwLock::read",
    "RwLock::write",
    "RwLock<T>::",
    "pthread_mutex_timedlock",
    "pthread_mutex_clocklock",
    "__lll_lock_wait",
    "pthread_rwlock_rdlock",
    "pthread_rwlock_wrlock",
    "lock_contended",
    "read_contended",
    "write_contended",
    "RawMutex::lock_slow",
    "RawRwLock::lock_",
    "runtime.lock2",
];

/// Frames of a wait for a condition or for work: condition variables, thread parking,
/// semaphores, Go's idle-M sleep.
const PARK_FRAMES: [&str; 10] = [
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "pthread_cond_clockwait",
    "Condvar::wait",
    "condvar::",
    "thread::park",
    "Parker::park",
    "runtime.notesleep",
    "runtime.notetsleep",
    "sem_wait",
];

/// The class of a row's blocked time.
pub fn class_of(row: &Row, symbols: &Symbols) -> WaitClass {
    match (row.kind, row.outcome) {
        (Kind::Epoll | Kind::Accept, Outcome::Timeout | Outcome::Unfinished) => WaitClass::Idle,
        (Kind::Futex, Outcome::Timeout) => WaitClass::Idle,
        (Kind::Futex, _) => futex_class(row.ustack, symbols),
        _ => WaitClass::Other,
    }
}

/// A futex wait's class from its user stack: the leaf-most lock or park frame decides
/// (a condition wait that then retakes its mutex is waiting for the mutex).
fn futex_class(ustack: StackRef, symbols: &Symbols) -> WaitClass {
    let Some(frames) = ustack.id().and_then(|id| symbols.user.get(&id)) else {
        return WaitClass::Other;
    };
    for f in frames.iter().rev() {
        if LOCK_FRAMES.iter().any(|p| f.contains(p)) {
            return WaitClass::Contended;
        }
        if PARK_FRAMES.iter().any(|p| f.contains(p)) {
            return WaitClass::Idle;
        }
    }
    WaitClass::Other
}

/// Frames of libraries and runtimes, skipped when naming the code behind a wait.
const LIBRARY_PREFIXES: [&str; 22] = [
    "std::",
    "core::",
    "alloc::",
    "<",
    "_",
    "[",
    "pthread",
    "syscall",
    "futex",
    "runtime.",
    "runtime/",
    "sync.",
    "internal/",
    "parking_lot",
    "lock_api",
    "start_thread",
    "clone",
    "epoll_",
    "accept4",
    "sem_",
    "libc",
    "lll_",
];

/// The leaf-most frame of a user stack that belongs to the program itself, not to a
/// library or runtime: the function a person would recognise.
pub fn app_frame(frames: &[Arc<str>]) -> Option<&str> {
    // a Go stack: the program's own package (main, or a module path), never the
    // standard library's
    if crate::runtime::go::frames::is_go_stack(frames) {
        return crate::runtime::go::report::own_frame(frames);
    }
    frames
        .iter()
        .rev()
        .map(|f| &**f)
        .find(|f| !LIBRARY_PREFIXES.iter().any(|p| f.starts_with(p)))
}

/// How a waiting stack is named: its own code, else (a Go runtime thread) what the
/// scheduler was doing, else `[unknown code]`.
pub fn waiter_name(frames: &[Arc<str>]) -> String {
    match app_frame(frames) {
        Some(f) => format!("`{f}`"),
        None => match crate::runtime::go::frames::scheduler_place(frames) {
            Some(place) => format!("the Go runtime (`{place}`)"),
            None => "[unknown code]".to_string(),
        },
    }
}

fn kernel_frames(stack: StackRef, symbols: &Symbols) -> &[Arc<str>] {
    stack
        .id()
        .and_then(|id| symbols.kernel.get(&id))
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// What softirq work, if any, a waker's kernel stack shows.
fn softirq_work(kframes: &[Arc<str>]) -> Option<&'static str> {
    let has = |name: &str| kframes.iter().any(|f| f.contains(name));
    if !has("handle_softirqs") && !has("__do_softirq") {
        return None;
    }
    Some(if has("net_rx_action") {
        "network receive"
    } else if has("run_timer") || has("call_timer_fn") {
        "timer"
    } else if has("rcu_core") {
        "RCU"
    } else if has("blk_") {
        "block I/O completion"
    } else {
        "softirq work"
    })
}

/// Whether the waker's own task (its user stack and name) had anything to do with the
/// wakeup: not in an interrupt, nor in softirq work that merely ran in its syscall,
/// except network receive, which a sender on the loopback device runs itself.
pub fn waker_task_relevant(w: &Waker, symbols: &Symbols) -> bool {
    w.ctx == WakerCtx::Task
        && matches!(
            softirq_work(kernel_frames(w.kstack, symbols)),
            None | Some("network receive")
        )
}

fn who(w: &Waker, pid: u32) -> String {
    let tid = if w.tid != 0 {
        format!("-{}", w.tid)
    } else {
        String::new()
    };
    if w.ustack == StackRef::KernelThread {
        format!("kernel thread {}", w.comm)
    } else if w.tgid == pid {
        format!("thread {}{tid}", w.comm)
    } else {
        format!("{}{tid} (pid {})", w.comm, w.tgid)
    }
}

/// Who or what woke a thread, in words: `thread mutex-holder`, `network receive
/// (softirq) in client (pid 42)`, `timer (hard interrupt)`.
pub fn waker_label(w: &Waker, pid: u32, symbols: &Symbols) -> String {
    let kframes = kernel_frames(w.kstack, symbols);
    let softirq = softirq_work(kframes);
    match (w.ctx, softirq) {
        // an off-wake line only has blocked time, so a wait with no waker never ended
        (WakerCtx::None, _) => "nobody: still waiting at the end".to_string(),
        (WakerCtx::Unseen, _) => "wakeup not seen".to_string(),
        (WakerCtx::Interrupt, Some(what)) => format!("{what} (softirq)"),
        (WakerCtx::Interrupt, None) if kframes.iter().any(|f| f.contains("hrtimer")) => {
            "timer (hard interrupt)".to_string()
        }
        (WakerCtx::Interrupt, None) => "hard interrupt".to_string(),
        (WakerCtx::Task, Some(what)) if waker_task_relevant(w, symbols) => {
            format!("{what} (softirq) in {}", who(w, pid))
        }
        (WakerCtx::Task, Some(what)) => format!("{what} (softirq)"),
        (WakerCtx::Task, None) => who(w, pid),
    }
}

/// The waker as the objects table groups it: what woke (the program's own function
/// that did, else the context in words) and, when a thread of the target ran it, that
/// thread's name apart, so one function run by many threads adds up as one waker.
fn waker_group(profile: &Profile, w: &Wait) -> (String, Option<String>) {
    let names = w.waker_ustack.map(|s| profile.names(s)).unwrap_or_default();
    let frame = app_frame(&names);
    let label = &w.waker;
    let thread = label.strip_prefix("thread ").map(str::to_string);
    match (frame, thread) {
        (Some(f), thread @ Some(_)) => (format!("`{f}`"), thread),
        (Some(f), None) => (format!("`{f}` via {label}"), None),
        (None, thread @ Some(_)) => (String::new(), thread),
        (None, None) => (label.clone(), None),
    }
}

/// A waker group in words: `` `release_job` in thread dispatcher ``, `` `take_job` in 3
/// threads ``, `thread worker-0`, `timer (hard interrupt)`.
fn waker_words(what: &str, threads: &BTreeSet<String>) -> String {
    let by = match threads.len() {
        0 => return what.to_string(),
        1 => format!("thread {}", threads.first().map_or("", String::as_str)),
        n => format!("{n} threads"),
    };
    if what.is_empty() {
        by
    } else {
        format!("{what} in {by}")
    }
}

/// Functions a thread starts in: a user stack that reaches one is complete.
const ENTRY_FRAMES: [&str; 10] = [
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "main",
    "start_thread",
    "clone3",
    "__clone3",
    "runtime.goexit",
    "runtime.mstart",
    crate::runtime::go::frames::G0_ROOT,
];

/// How complete the user stacks of the blocked time are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Blocked time with a user stack.
    pub blocked_ns: u64,
    /// Blocked time whose user stack reaches its thread's entry (ENTRY_FRAMES).
    pub complete_ns: u64,
    /// The median user stack depth, in frames, weighted by blocked time.
    pub median_depth: usize,
}

/// Whether a user stack (root first) reaches its thread's entry.
pub fn reaches_entry(frames: &[Arc<str>]) -> bool {
    frames.iter().any(|f| ENTRY_FRAMES.contains(&&**f))
}

pub fn coverage(profile: &Profile) -> Coverage {
    let mut c = Coverage::default();
    let mut depths: Vec<(usize, u64)> = Vec::new();
    // waits whose stack was never taken (blocked since before the session) say nothing
    // of how complete stacks are
    for w in profile
        .waits
        .iter()
        .filter(|w| w.blocked_ns > 0 && w.ustack_walked)
    {
        let frames = profile.names(w.ustack);
        c.blocked_ns += w.blocked_ns;
        if reaches_entry(&frames) {
            c.complete_ns += w.blocked_ns;
        }
        let known = frames.iter().filter(|f| !f.starts_with("[unknown")).count();
        depths.push((known, w.blocked_ns));
    }
    depths.sort_unstable();
    let mut seen = 0;
    for (depth, ns) in depths {
        seen += ns;
        if seen * 2 >= c.blocked_ns {
            c.median_depth = depth;
            break;
        }
    }
    c
}

/// Totals by class: blocked time idle, contended, other; and all run-queue wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub idle: u64,
    pub contended: u64,
    pub other: u64,
    pub runq: u64,
}

/// One kind of wait's time, and its calls by how they ended and by syscall.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindTotals {
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// Episodes (tracked syscalls) or off-CPU intervals (other).
    pub count: u64,
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Blocked + run-queue time by syscall (`None`: not in one).
    pub syscalls: BTreeMap<Option<String>, u64>,
}

/// The profile's off-CPU time by kind and by class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub kinds: BTreeMap<Kind, KindTotals>,
    pub classes: Split,
    /// A Go program's sampled goroutine time by state.
    pub goroutine_states: BTreeMap<GState, u64>,
}

impl Totals {
    pub fn of(profile: &Profile) -> Totals {
        let mut t = Totals::default();
        for w in &profile.waits {
            let k = t.kinds.entry(w.kind).or_default();
            k.blocked_ns += w.blocked_ns;
            k.runq_ns += w.runq_ns;
            k.count += w.count;
            *k.outcomes.entry(w.outcome).or_default() += w.count;
            *k.syscalls.entry(w.syscall.clone()).or_default() += w.blocked_ns + w.runq_ns;
            let c = &mut t.classes;
            match w.class {
                WaitClass::Idle => c.idle += w.blocked_ns,
                WaitClass::Contended => c.contended += w.blocked_ns,
                WaitClass::Other => c.other += w.blocked_ns,
            }
            c.runq += w.runq_ns;
        }
        for g in &profile.goroutines {
            *t.goroutine_states.entry(g.state.clone()).or_default() += g.ns;
        }
        t
    }
}

/// Named shares of a total, heaviest first.
pub type Shares = Vec<(String, u64)>;

fn top_shares(map: HashMap<String, u64>, n: usize) -> Shares {
    let mut v: Shares = map.into_iter().filter(|(_, ns)| *ns > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// One wait object (a futex, an epoll fd, a listening socket) and who waited on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectReport {
    pub kind: Kind,
    pub object: u64,
    /// How the summary names it: `futex 0x7f.. (QUEUE_LOCK in server)`, `epoll fd 5
    /// (watching 3 fds at the end)`, `listener 127.0.0.1:8080`.
    pub name: String,
    /// Blocked + run-queue time of the waits on it.
    pub ns: u64,
    pub blocked_ns: u64,
    pub waits: u64,
    /// Distinct threads that waited on it.
    pub threads: usize,
    /// The heaviest class of its blocked time.
    pub class: WaitClass,
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Where the waiters waited (their own code), and who woke them, by blocked time.
    pub waiters: Shares,
    pub wakers: Shares,
}

/// Every futex, epoll fd and listening socket the target waited on, heaviest first: the
/// profile's waits by object, and the threads that waited on each (`waiters`, the
/// kernel's pairs, since waits of threads that share rows do not name them).
pub fn objects(profile: &Profile, waiters: &[Waiter]) -> Vec<ObjectReport> {
    #[derive(Default)]
    struct Acc {
        name: String,
        ns: u64,
        blocked: u64,
        waits: u64,
        class: HashMap<WaitClass, u64>,
        outcomes: BTreeMap<Outcome, u64>,
        waiters: HashMap<String, u64>,
        wakers: HashMap<String, (u64, BTreeSet<String>)>,
    }
    let mut acc: HashMap<(Kind, u64), Acc> = HashMap::new();
    for w in profile.waits.iter().filter(|w| w.object_id != 0) {
        let a = acc.entry((w.kind, w.object_id)).or_default();
        if a.name.is_empty() {
            a.name = w.object.clone().unwrap_or_default();
        }
        a.ns += w.blocked_ns + w.runq_ns;
        a.blocked += w.blocked_ns;
        a.waits += w.count;
        *a.class.entry(w.class).or_default() += w.blocked_ns;
        *a.outcomes.entry(w.outcome).or_default() += w.count;
        let waiter = if w.ustack_walked {
            waiter_name(&profile.names(w.ustack))
        } else {
            "[unknown code]".to_string()
        };
        *a.waiters.entry(waiter).or_default() += w.blocked_ns;
        if w.blocked_ns > 0 && w.woken {
            let (what, thread) = waker_group(profile, w);
            let k = a.wakers.entry(what).or_default();
            k.0 += w.blocked_ns;
            k.1.extend(thread);
        }
    }
    let mut threads: HashMap<(Kind, u64), HashSet<u32>> = HashMap::new();
    for w in waiters {
        threads.entry((w.kind, w.object)).or_default().insert(w.tid);
    }
    // a wait that never ended (the whole session, or before attach) left no waiter pair:
    // its row still names its thread
    for w in profile
        .waits
        .iter()
        .filter(|w| w.object_id != 0 && w.tid != 0)
    {
        threads
            .entry((w.kind, w.object_id))
            .or_default()
            .insert(w.tid);
    }
    let mut out: Vec<ObjectReport> = acc
        .into_iter()
        .map(|((kind, object), a)| ObjectReport {
            kind,
            object,
            name: a.name,
            ns: a.ns,
            blocked_ns: a.blocked,
            waits: a.waits,
            threads: threads.get(&(kind, object)).map_or(0, HashSet::len),
            class: a
                .class
                .into_iter()
                .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
                .map_or(WaitClass::Other, |(c, _)| c),
            outcomes: a.outcomes,
            waiters: top_shares(a.waiters, 3),
            wakers: top_shares(
                a.wakers
                    .into_iter()
                    .map(|(what, (ns, threads))| (waker_words(&what, &threads), ns))
                    .collect(),
                3,
            ),
        })
        .collect();
    out.sort_by(|a, b| b.ns.cmp(&a.ns).then(a.object.cmp(&b.object)));
    out
}

/// How the object `object` of a wait of kind `kind` is named: `futex 0x7f.. (QUEUE_LOCK
/// in server)`, `epoll fd 5 (watching 3 fds at the end)`, `listener 127.0.0.1:8080`.
pub fn object_label(kind: Kind, object: u64, collected: &Collected, symbols: &Symbols) -> String {
    match kind {
        Kind::Futex => match symbols.objects.get(&object) {
            Some(place) => format!("futex {object:#x} ({place})"),
            None => format!("futex {object:#x}"),
        },
        Kind::Epoll => {
            let fd = object.saturating_sub(1);
            match collected.epoll_watch.get(&(fd as u32)) {
                Some(n) => format!("epoll fd {fd} (watching {n} fds at the end)"),
                None => format!("epoll fd {fd}"),
            }
        }
        Kind::Accept => match collected.listeners.iter().find(|l| l.inode == object) {
            Some(l) => format!("listener {}", listener_name(l)),
            None => format!("listening socket inode {object}"),
        },
        Kind::Other => format!("object {object:#x}"),
    }
}

/// A thread as the summary names it: `comm-tid`, or the bare tid of a thread the session
/// never saw.
pub fn thread_label(collected: &Collected, tid: u32) -> String {
    match collected.threads.iter().find(|t| t.tid == tid) {
        Some(t) => format!("{}-{tid}", t.comm),
        None => tid.to_string(),
    }
}

pub fn listener_name(l: &crate::model::Listener) -> String {
    match l.addr {
        Some(a) => a.to_string(),
        None => format!("socket inode {}", l.inode),
    }
}

/// One thread's run-queue waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunqReport {
    pub tid: u32,
    pub comm: String,
    pub waits: u64,
    pub ns: u64,
    pub woken_ns: u64,
    pub hist: Vec<u64>,
}

/// Threads by run-queue wait, heaviest first.
pub fn runq_threads(collected: &Collected) -> Vec<RunqReport> {
    let mut out: Vec<RunqReport> = collected
        .threads
        .iter()
        .filter(|t| t.runq_ns > 0)
        .map(|t| RunqReport {
            tid: t.tid,
            comm: t.comm.clone(),
            waits: t.runq_hist.iter().sum(),
            ns: t.runq_ns,
            woken_ns: t.runq_woken_ns,
            hist: t.runq_hist.clone(),
        })
        .collect();
    out.sort_by(|a, b| b.ns.cmp(&a.ns).then(a.tid.cmp(&b.tid)));
    out
}

/// The upper bound of log2 bucket `slot` in ns (slot 0 holds 0 and 1 us).
pub fn slot_upper_ns(slot: usize) -> u64 {
    (2u64 << slot) * 1000
}

/// The bucket upper bound below which a fraction `q` of the waits fall, in ns.
pub fn quantile_ns(hist: &[u64], q: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (slot, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(slot_upper_ns(slot));
        }
    }
    Some(slot_upper_ns(hist.len() - 1))
}

pub fn secs(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} us", s * 1e6)
    }
}

/// `count` events over `ns` as a rate per second (0 for no time).
pub fn per_second(count: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        count as f64 * 1e9 / ns as f64
    }
}

/// `part` as a percentage of `whole` (0 when there is no whole).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A gap between polls of an epoll fd this long is a finding: an event loop (or Go's
/// netpoller, which sysmon polls at least every 10 ms when the Ps are busy) that left
/// ready events unseen for that long.
const POLL_GAP_FINDING_NS: u64 = 50_000_000;

/// Listener problems rank above any time: a dropped connection is a failed request.
const RANK_DROPS: u64 = u64::MAX;

fn threads(n: usize) -> String {
    if n == 1 {
        "1 thread".to_string()
    } else {
        format!("{n} threads")
    }
}

/// Who woke an object's waits, for a finding: the heaviest waker, and the next one as
/// well when it ended a fifth of the blocked time or more (a lock's holder and the
/// waiters handing it on, say).
fn woken_words(wakers: &Shares, blocked_ns: u64) -> String {
    let share = |(w, ns): &(String, u64)| format!("{w} ({:.0}%)", pct(*ns, blocked_ns));
    match wakers.as_slice() {
        [] => String::new(),
        [first, second, ..] if second.1 * 5 >= blocked_ns => {
            format!(", woken by {} and {}", share(first), share(second))
        }
        [first, ..] => format!(", mostly woken by {}", share(first)),
    }
}

/// A thread still off-CPU at the end of the session, as the end's snapshot saw it.
pub struct StillWaiting<'c> {
    pub thread: &'c crate::model::Blocked,
    /// Its own code that waits (libraries skipped), or `[unknown code]`.
    pub function: String,
    pub syscall: String,
    /// Off-CPU since before the session started.
    pub whole_session: bool,
    /// What it waits on, named as in the objects table (a futex's variable).
    pub object: Option<String>,
    /// The thread holding the lock it waits on (tid, name).
    pub holder: Option<(u32, String)>,
    /// Its class, from its stack: a lock, a condition (idle), or other.
    pub class: WaitClass,
}

impl StillWaiting<'_> {
    /// How it waits: `in futex on futex 0x… (a in server), held by worker-12`.
    pub fn how(&self) -> String {
        let on = self
            .object
            .as_ref()
            .map(|o| format!(" on {o}"))
            .unwrap_or_default();
        let held = self
            .holder
            .as_ref()
            .map(|(tid, comm)| format!(", held by {comm}-{tid}"))
            .unwrap_or_default();
        format!("in {}{on}{held}", self.syscall)
    }
}

/// The threads still waiting at the end, longest first.
pub fn still_waiting<'c>(collected: &'c Collected, symbols: &Symbols) -> Vec<StillWaiting<'c>> {
    let session = collected.end_ns.saturating_sub(collected.start_ns);
    let at_end = &collected.snapshots.at_end;
    let mut out: Vec<StillWaiting> = at_end
        .values()
        .map(|b| {
            let function = b
                .ustack_id
                .and_then(|id| symbols.user.get(&id))
                .and_then(|f| app_frame(f))
                .map(|f| format!("`{f}`"))
                .unwrap_or_else(|| "[unknown code]".to_string());
            let kind = b.syscall.map(|nr| crate::syscalls::kind_of(nr, b.args[1]));
            let object = match kind {
                Some(Kind::Futex) => Some(match symbols.objects.get(&b.args[0]) {
                    Some(place) => format!("futex {:#x} ({place})", b.args[0]),
                    None => format!("futex {:#x}", b.args[0]),
                }),
                Some(Kind::Epoll) => Some(format!("epoll fd {}", b.args[0])),
                Some(Kind::Accept) => Some(match b.listener {
                    Some(addr) => format!("listener {addr} (fd {})", b.args[0]),
                    None => format!("socket fd {}", b.args[0]),
                }),
                _ => None,
            };
            StillWaiting {
                thread: b,
                function,
                syscall: b
                    .syscall
                    .map_or("no syscall".to_string(), crate::syscalls::name),
                class: match (kind, b.ustack_id) {
                    (Some(Kind::Futex), Some(id)) => futex_class(StackRef::Id(id), symbols),
                    (Some(Kind::Epoll | Kind::Accept), _) => WaitClass::Idle,
                    _ => WaitClass::Other,
                },
                whole_session: b.off_cpu_ns.is_some_and(|ns| ns >= session)
                    && collected.snapshots.at_start.get(&b.tid).map(|s| s.syscall)
                        == Some(b.syscall),
                object,
                holder: b.holder.map(|tid| {
                    let comm = at_end
                        .get(&tid)
                        .map(|h| h.comm.clone())
                        .or_else(|| {
                            collected
                                .threads
                                .iter()
                                .find(|t| t.tid == tid)
                                .map(|t| t.comm.clone())
                        })
                        .unwrap_or_default();
                    (tid, comm)
                }),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.thread
            .off_cpu_ns
            .cmp(&a.thread.off_cpu_ns)
            .then(a.thread.tid.cmp(&b.thread.tid))
    });
    out
}

/// A chain of lock holders that comes back to where it started: each thread waits for a
/// lock the next one holds. The tids in order, the first repeated at the end.
fn holder_cycle(waiting: &[StillWaiting], from: u32) -> Option<Vec<u32>> {
    let mut chain = vec![from];
    let mut at = from;
    for _ in 0..waiting.len() {
        let next = waiting
            .iter()
            .find(|w| w.thread.tid == at)?
            .holder
            .as_ref()?
            .0;
        chain.push(next);
        if next == from {
            return Some(chain);
        }
        if chain[..chain.len() - 1].contains(&next) {
            return None;
        }
        at = next;
    }
    None
}

/// The finding for threads that waited the whole session on a lock (or another futex
/// that is not an idle condition): a hang, and a deadlock when their lock holders form a
/// cycle. Threads that wait alike (a pool behind one lock) are counted, not listed.
fn hang_finding(collected: &Collected, waiting: &[StillWaiting]) -> Option<String> {
    let whole: Vec<&StillWaiting> = waiting
        .iter()
        .filter(|w| w.whole_session && w.syscall == "futex" && w.class != WaitClass::Idle)
        .collect();
    if whole.is_empty() {
        return None;
    }
    let who = |tid: u32, comm: &str| format!("{comm}-{tid}");
    // (how they wait, the threads waiting so)
    let mut alike: Vec<(String, Vec<String>)> = Vec::new();
    for w in &whole {
        let how = format!("waits {}", w.how());
        let thread = format!("{} ({})", w.function, who(w.thread.tid, &w.thread.comm));
        match alike.iter_mut().find(|(h, _)| *h == how) {
            Some((_, threads)) => threads.push(thread),
            None => alike.push((how, vec![thread])),
        }
    }
    let each: Vec<String> = alike
        .iter()
        .map(|(how, t)| match t.as_slice() {
            [one] => format!("{one} {how}"),
            [first, ..] => format!("{} threads such as {first} {how}", t.len()),
            [] => String::new(),
        })
        .collect();
    let comm_of = |tid: u32| {
        waiting
            .iter()
            .find(|w| w.thread.tid == tid)
            .map_or(String::new(), |w| w.thread.comm.clone())
    };
    let cycle = whole
        .iter()
        .find_map(|w| holder_cycle(waiting, w.thread.tid))
        .map(|c| {
            let names: Vec<String> = c.iter().map(|&t| who(t, &comm_of(t))).collect();
            format!("; a deadlock: {}", names.join(" -> "))
        })
        .unwrap_or_default();
    Some(format!(
        "{} waited the whole session ({}): {}{cycle}",
        threads(whole.len()),
        secs(collected.end_ns.saturating_sub(collected.start_ns)),
        each.join("; ")
    ))
}

/// A finding about time needs at least this much of it: 1 ms, and 1% of all off-CPU time.
fn worth_a_finding(ns: u64, off_cpu: u64) -> bool {
    ns >= 1_000_000 && ns * 100 >= off_cpu
}

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Threads that waited the whole session, or in a cycle.
    Hang,
    /// A listener's accept queue reached its limit.
    AcceptOverflow,
    /// A futex waited on by threads that held it in turn.
    LockContention,
    /// An object waited on with nothing to do: not a latency cost.
    Idle,
    /// Any other object waited on long (an epoll fd, a listener, a futex).
    WaitObject,
    /// Threads runnable with no CPU.
    CpuStarvation,
    /// An epoll fd nobody polled for long.
    PollGap,
    /// A Go program's goroutines: parked, runnable for a P, in system calls.
    GoroutineWait,
    GoroutineLockContention,
    GoroutineStarvation,
    GoroutineSyscall,
}

/// One finding: its kind, the time that ranks it, what it is about, and its words.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub what: FindingKind,
    /// The time it is about (ns); None for what outranks any time (a hang, dropped
    /// connections).
    pub ns: Option<u64>,
    /// The one thing it is about, named as the summary names it (`futex 0x.. (LOCK in
    /// server)`, `listener 0.0.0.0:80`, `epoll fd 5`), if it is about one.
    pub subject: Option<String>,
    /// The finding in words, as the summary prints it.
    pub text: String,
}

impl Finding {
    fn new(what: FindingKind, ns: u64, subject: Option<String>, text: String) -> Finding {
        Finding {
            what,
            ns: (ns != RANK_DROPS).then_some(ns),
            subject,
            text,
        }
    }

    fn rank(&self) -> u64 {
        self.ns.unwrap_or(RANK_DROPS)
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The session's analysis, made once: what the summary words and the JSON serialises.
pub struct Analysis {
    /// The typed profile's time by kind and by class.
    pub totals: Totals,
    pub objects: Vec<ObjectReport>,
    pub runq: Vec<RunqReport>,
    /// How complete the user stacks of the blocked time are.
    pub coverage: Coverage,
    pub findings: Vec<Finding>,
}

impl Analysis {
    /// The analysis of a session, whose typed `profile` was built from `collected`.
    pub fn of(collected: &Collected, symbols: &Symbols, profile: &Profile) -> Analysis {
        let totals = Totals::of(profile);
        let objects = objects(profile, &collected.waiters);
        let runq = runq_threads(collected);
        let coverage = coverage(profile);
        let findings = findings(collected, symbols, profile, &totals, &objects, &runq);
        Analysis {
            totals,
            objects,
            runq,
            coverage,
            findings,
        }
    }
}

/// The session's findings, most important first: from the typed profile's `totals`,
/// wait `objects` and goroutine samples, the `runq` threads, and what the session saw
/// besides waits (listeners, polls, the threads still waiting at its end).
pub fn findings(
    collected: &Collected,
    symbols: &Symbols,
    profile: &Profile,
    totals: &Totals,
    objects: &[ObjectReport],
    runq: &[RunqReport],
) -> Vec<Finding> {
    let mut found: Vec<Finding> = Vec::new();
    // a hang outranks everything: nothing else happens while threads wait for good
    if let Some(h) = hang_finding(collected, &still_waiting(collected, symbols)) {
        found.push(Finding::new(FindingKind::Hang, RANK_DROPS, None, h));
    }
    let off_cpu: u64 = totals
        .kinds
        .values()
        .map(|k| k.blocked_ns + k.runq_ns)
        .sum();
    for l in &collected.listeners {
        if l.drops == 0 && l.at_limit == 0 {
            continue;
        }
        found.push(Finding::new(
            FindingKind::AcceptOverflow,
            RANK_DROPS,
            Some(format!("listener {}", listener_name(l))),
            format!(
                "listener {}: the accept queue reached its limit of {} in {} of {} accepts; \
                 {} connections dropped (accept queue overflow) {}",
                listener_name(l),
                l.limit,
                l.at_limit,
                l.accepts,
                l.drops,
                l.drops_span.describe()
            ),
        ));
    }
    // a Go program's idle threads (parked Ms, the netpoller, sysmon) are the runtime
    // waiting for work: its goroutines say where the program waits
    let go = collected.goroutines.is_some();
    for r in objects {
        if !worth_a_finding(r.ns, off_cpu) || (go && r.class == WaitClass::Idle) {
            continue;
        }
        let name = r.name.clone();
        let woken = woken_words(&r.wakers, r.blocked_ns);
        let (what, text) = match (r.kind, r.class) {
            (Kind::Futex, WaitClass::Contended) => (
                FindingKind::LockContention,
                format!(
                    "{name}: lock contention, {} waited by {} in {} waits{woken}",
                    secs(r.ns),
                    threads(r.threads),
                    r.waits
                ),
            ),
            (_, WaitClass::Idle) => (
                FindingKind::Idle,
                format!(
                    "{name}: idle, {} waited by {} with nothing to do ({}); not a latency cost",
                    secs(r.ns),
                    threads(r.threads),
                    outcome_words(r)
                ),
            ),
            _ => (
                FindingKind::WaitObject,
                format!(
                    "{name}: {} waited by {} ({}){woken}",
                    secs(r.ns),
                    threads(r.threads),
                    outcome_words(r)
                ),
            ),
        };
        found.push(Finding::new(what, r.blocked_ns, Some(name), text));
    }
    let total: u64 = runq.iter().map(|r| r.ns).sum();
    if worth_a_finding(total, off_cpu) {
        let woken: u64 = runq.iter().map(|r| r.woken_ns).sum();
        let mut hist = vec![0u64; runq.first().map_or(0, |r| r.hist.len())];
        for r in runq {
            for (a, b) in hist.iter_mut().zip(&r.hist) {
                *a += b;
            }
        }
        let p99 = quantile_ns(&hist, 0.99).map_or(String::new(), |ns| {
            format!(
                " (p99 of {} waits under {})",
                hist.iter().sum::<u64>(),
                secs(ns)
            )
        });
        let worst = &runq[0];
        found.push(Finding::new(
            FindingKind::CpuStarvation,
            total,
            None,
            format!(
                "{} waited {} for a CPU{}: {} after a wakeup, {} after preemption{p99}; \
                 most: {}-{} ({})",
                threads(runq.len()),
                secs(total),
                if collected.goroutines.is_some() {
                    " (the kernel's run queue; goroutines waiting for a P are counted apart)"
                } else {
                    ""
                },
                secs(woken),
                secs(total - woken.min(total)),
                worst.comm,
                worst.tid,
                secs(worst.ns)
            ),
        ));
    }
    for p in collected
        .polls
        .iter()
        .filter(|p| p.gap_max_ns >= POLL_GAP_FINDING_NS)
    {
        let q99 = quantile_ns(&p.gap_hist, 0.99).map_or("-".to_string(), secs);
        let who = if go {
            format!("the netpoller (epoll fd {})", p.fd)
        } else {
            format!("epoll fd {}", p.fd)
        };
        found.push(Finding::new(
            FindingKind::PollGap,
            p.gap_max_ns,
            Some(format!("epoll fd {}", p.fd)),
            format!(
                "{who} was not polled for {} (until +{}, when {} polled it; {} gaps, p99 under {q99}): \
                 an event that became ready waited that long before anyone looked",
                secs(p.gap_max_ns),
                secs(p.gap_max_end_ns.saturating_sub(collected.start_ns)),
                thread_label(collected, p.gap_max_tid),
                p.gaps
            ),
        ));
    }
    if let Some(view) = &collected.goroutines {
        found.extend(
            crate::runtime::go::report::findings(view, profile)
                .into_iter()
                .map(|(what, ns, text)| Finding::new(what, ns, None, text)),
        );
    }
    found.sort_by(|a, b| b.rank().cmp(&a.rank()).then(a.text.cmp(&b.text)));
    found
}

fn outcome_words(r: &ObjectReport) -> String {
    r.outcomes
        .iter()
        .filter(|(o, _)| !o.describe(r.kind).is_empty())
        .map(|(o, n)| format!("{n} {}", o.describe(r.kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waker_run_by_many_threads_adds_up_and_a_second_waker_is_named() {
        let threads = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            waker_words("`take_job`", &threads(&["worker-0", "worker-1"])),
            "`take_job` in 2 threads"
        );
        assert_eq!(
            waker_words("`release_job`", &threads(&["dispatcher"])),
            "`release_job` in thread dispatcher"
        );
        assert_eq!(waker_words("", &threads(&["w"])), "thread w");
        assert_eq!(waker_words("timer", &BTreeSet::new()), "timer");
        let shares = |v: &[(&str, u64)]| -> Shares {
            v.iter().map(|(w, ns)| (w.to_string(), *ns)).collect()
        };
        // the second waker is named from a fifth of the blocked time on
        assert_eq!(
            woken_words(&shares(&[("a", 67), ("b", 33)]), 100),
            ", woken by a (67%) and b (33%)"
        );
        assert_eq!(
            woken_words(&shares(&[("a", 81), ("b", 19)]), 100),
            ", mostly woken by a (81%)"
        );
        assert_eq!(woken_words(&Vec::new(), 100), "");
    }

    fn frames(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    fn futex_row(outcome: Outcome, stack: &[&str], symbols: &mut Symbols) -> Row {
        let id = 5000 + symbols.user.len() as u64;
        symbols.user.insert(id, frames(stack));
        Row {
            tid: 1,
            kind: Kind::Futex,
            syscall: Some(202),
            outcome,
            ustack: StackRef::Id(id),
            kstack: StackRef::NoWaker,
            count: 1,
            blocked_ns: 1,
            runq_ns: 0,
            object: 0x1000,
            waker: Waker::default(),
        }
    }

    #[test]
    fn futex_waits_are_classed_by_their_leaf_most_lock_or_park_frame() {
        let mut s = Symbols::default();
        let lock = futex_row(
            Outcome::Ok,
            &["main", "worker", "pthread_mutex_lock", "__lll_lock_wait"],
            &mut s,
        );
        let cond = futex_row(
            Outcome::Ok,
            &[
                "main",
                "pool",
                "pthread_cond_wait",
                "__futex_abstimed_wait_common",
            ],
            &mut s,
        );
        // a condition wait that, once woken, waits to retake its mutex
        let retake = futex_row(
            Outcome::Ok,
            &["main", "Condvar::wait", "lock_contended", "futex_wait"],
            &mut s,
        );
        let timed_out = futex_row(Outcome::Timeout, &["main", "lock_contended"], &mut s);
        let unknown = futex_row(Outcome::Ok, &["main", "my_futex_loop", "syscall"], &mut s);
        assert_eq!(class_of(&lock, &s), WaitClass::Contended);
        assert_eq!(class_of(&cond, &s), WaitClass::Idle);
        assert_eq!(class_of(&retake, &s), WaitClass::Contended);
        assert_eq!(class_of(&timed_out, &s), WaitClass::Idle);
        assert_eq!(class_of(&unknown, &s), WaitClass::Other);
    }

    #[test]
    fn the_app_frame_skips_libraries_and_runtimes() {
        let f = frames(&[
            "_start",
            "main",
            "server::release_job",
            "std::sync::Mutex::unlock",
            "syscall",
        ]);
        assert_eq!(app_frame(&f), Some("server::release_job"));
        assert_eq!(app_frame(&frames(&["_start", "__libc_start_main"])), None);
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        // 98 waits under 2 us, one in [4, 8) ms, one in [8, 16) ms
        let mut hist = vec![0u64; 28];
        hist[0] = 98;
        hist[12] = 1;
        hist[13] = 1;
        assert_eq!(quantile_ns(&hist, 0.5), Some(2_000));
        assert_eq!(quantile_ns(&hist, 0.99), Some(8_192_000));
        assert_eq!(quantile_ns(&hist, 1.0), Some(16_384_000));
        assert_eq!(quantile_ns(&[0; 28], 0.99), None);
    }
}
