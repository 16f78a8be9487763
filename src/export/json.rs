//! JSON (`--json PATH`, `-` for stdout): the summary's facts for scripts and CI, from
//! the same analysis the summary words. The schema is `waitprof.summary/1`: fields are
//! added, never renamed or removed, within a version. Times are integer nanoseconds
//! (`_ns`), counts integers; names that come from the target are as printable as the
//! summary prints them. README's "JSON" section documents each field.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::analyze::{self, Finding};
use crate::model::{Collected, EndReason, Kind, Losses};
use crate::symbolize::Symbols;
use crate::text::printable;

pub const SCHEMA: &str = "waitprof.summary/1";

#[derive(Serialize)]
pub struct Summary<'a> {
    pub schema: &'static str,
    pub target: Target,
    pub session: Session,
    /// Every thread's time over the session, added up.
    pub thread_time: ThreadTime,
    /// Off-CPU time (blocked + run-queue) by kind of wait, in `Kind::ALL`'s order.
    pub kinds: Vec<KindTotals>,
    /// Blocked time by class, and run-queue wait.
    pub classes: Classes,
    /// Every futex, epoll fd and listening socket waited on, heaviest first.
    pub objects: Vec<Object>,
    pub listeners: Vec<Listener>,
    pub epoll_fds: Vec<EpollFd>,
    /// Threads by run-queue wait, heaviest first, with their histograms.
    pub run_queue: Vec<RunQueue>,
    pub threads: Vec<Thread>,
    /// Most important first, as the summary lists them.
    pub findings: &'a [Finding],
    pub not_seen: NotSeen<'a>,
    /// What is sampled rather than exact.
    pub sampled: Vec<&'static str>,
    pub goroutines: Option<Goroutines>,
    /// `--timeline`: the events recorded and lost; null without it.
    pub timeline: Option<TimelineCounts>,
}

#[derive(Serialize)]
pub struct TimelineCounts {
    pub events: usize,
    pub dropped_in_kernel: u64,
    pub dropped_beyond_limit: u64,
    /// A Go program's goroutine spells (sampled states) kept and dropped; null for
    /// other programs.
    pub goroutine_spells: Option<usize>,
    pub goroutine_spells_dropped: Option<u64>,
}

#[derive(Serialize)]
pub struct Target {
    pub comm: String,
    pub pid: u32,
    /// The namespaces it does not share with waitprof (`mount`, `pid`).
    pub other_namespaces: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct Session {
    pub duration_ns: u64,
    /// `duration`, `interrupted`, `target_exited` or `unknown`.
    pub ended_by: &'static str,
    pub exit_status: Option<i32>,
    /// How the hooks were attached (`tp_btf`, `raw_tp`, `tracepoint`).
    pub attach: String,
    /// How syscall exits were hooked: `the exits of N tracked syscalls` (their own
    /// tracepoints), or `every syscall's exit (WHY)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall_exits: Option<String>,
    pub wakers: bool,
}

#[derive(Serialize)]
pub struct ThreadTime {
    pub on_cpu_ns: u64,
    pub blocked_ns: u64,
    pub run_queue_ns: u64,
}

#[derive(Serialize)]
pub struct KindTotals {
    pub kind: &'static str,
    pub blocked_ns: u64,
    pub run_queue_ns: u64,
    /// Calls (epoll, futex, accept) or off-CPU intervals (other).
    pub count: u64,
    /// Count per outcome: `ok`, `timeout`, `eagain`, `interrupted`, `error`,
    /// `still_waiting`, `end_unseen`, `none`.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Off-CPU time per syscall (`futex`, `clock_nanosleep`, `none`).
    pub syscalls: BTreeMap<String, u64>,
}

#[derive(Serialize)]
pub struct Classes {
    pub idle_ns: u64,
    pub lock_contention_ns: u64,
    pub other_ns: u64,
    pub run_queue_ns: u64,
}

#[derive(Serialize)]
pub struct Share {
    pub name: String,
    pub blocked_ns: u64,
}

#[derive(Serialize)]
pub struct Object {
    pub kind: &'static str,
    /// The futex address, epoll fd + 1, or socket inode.
    pub id: u64,
    pub name: String,
    pub off_cpu_ns: u64,
    pub blocked_ns: u64,
    pub waits: u64,
    pub threads: usize,
    /// `idle`, `lock_contention` or `other`: the heaviest class of its blocked time.
    pub class: &'static str,
    pub outcomes: BTreeMap<&'static str, u64>,
    /// The three heaviest places that waited, and wakers, by blocked time.
    pub waiters: Vec<Share>,
    pub wakers: Vec<Share>,
}

#[derive(Serialize)]
pub struct Listener {
    pub name: String,
    pub inode: u64,
    pub accepts: u64,
    pub queue_max: u32,
    pub queue_limit: u32,
    pub accepts_at_limit: u64,
    pub drops: u64,
}

#[derive(Serialize)]
pub struct EpollFd {
    pub fd: u32,
    pub polls: u64,
    pub blocking: u64,
    pub gaps: u64,
    /// The longest time no call polled it (counting one still open at the end).
    pub longest_gap_ns: u64,
    pub gap_p99_below_ns: Option<u64>,
}

#[derive(Serialize)]
pub struct Bucket {
    /// Waits shorter than this (and at least the bucket below's bound).
    pub below_ns: u64,
    pub count: u64,
}

#[derive(Serialize)]
pub struct RunQueue {
    pub tid: u32,
    pub comm: String,
    pub waits: u64,
    pub ns: u64,
    pub after_wakeup_ns: u64,
    pub p50_below_ns: Option<u64>,
    pub p99_below_ns: Option<u64>,
    /// The buckets that counted any wait, shortest first.
    pub histogram: Vec<Bucket>,
}

#[derive(Serialize)]
pub struct Thread {
    pub tid: u32,
    pub comm: String,
    pub on_cpu_ns: u64,
    pub blocked_ns: u64,
    pub run_queue_ns: u64,
    pub exited: bool,
}

#[derive(Serialize)]
pub struct NotSeen<'a> {
    /// The kernel side's counters, named as in the source (`model::Losses`).
    pub counters: &'a Losses,
    pub truncated_stacks: usize,
    pub unknown_user_frames: usize,
    pub unknown_kernel_frames: usize,
    /// Unknown user frames by why.
    pub unknown_why: &'a BTreeMap<&'static str, usize>,
    /// The target's files that could not be read, and why.
    pub unreadable_files: Vec<UnreadableFile>,
}

#[derive(Serialize)]
pub struct UnreadableFile {
    pub path: String,
    pub why: String,
}

#[derive(Serialize)]
pub struct Goroutines {
    pub go_version: String,
    /// Why goroutines were not read, if they were not.
    pub missing: Option<String>,
    pub sweeps: u64,
    pub samples: u64,
    pub goroutines_max: u64,
    pub goroutines_seen: u64,
    pub runnable_max: u64,
    /// Sampled time by state: the runtime's wait reason, `runnable`, `running`, `syscall`.
    pub states_ns: BTreeMap<String, u64>,
    pub raced_samples: u64,
    pub unreadable_gs: u64,
}

fn histogram(hist: &[u64]) -> Vec<Bucket> {
    hist.iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(slot, &count)| Bucket {
            below_ns: analyze::slot_upper_ns(slot),
            count,
        })
        .collect()
}

/// The session's facts, from its `analysis` (`analyze::Analysis::of`), which the
/// summary words too.
pub fn summary<'a>(
    collected: &'a Collected,
    symbols: &'a Symbols,
    analysis: &'a analyze::Analysis,
) -> Summary<'a> {
    let findings = &analysis.findings;
    let session_ns = collected.end_ns.saturating_sub(collected.start_ns);
    let spells = collected
        .goroutines
        .as_ref()
        .and_then(|g| g.spells.as_ref());
    let (ended_by, exit_status) = match &collected.end_reason {
        Some(EndReason::Duration) => ("duration", None),
        Some(EndReason::Interrupted) => ("interrupted", None),
        Some(EndReason::TargetExited(code)) => ("target_exited", *code),
        None => ("unknown", None),
    };
    let kinds: Vec<KindTotals> = Kind::ALL
        .iter()
        .map(|k| {
            let t = analysis.totals.kinds.get(k).cloned().unwrap_or_default();
            KindTotals {
                kind: k.name(),
                blocked_ns: t.blocked_ns,
                run_queue_ns: t.runq_ns,
                count: t.count,
                outcomes: t.outcomes.iter().fold(BTreeMap::new(), |mut m, (o, n)| {
                    *m.entry(o.key()).or_default() += n;
                    m
                }),
                syscalls: t
                    .syscalls
                    .into_iter()
                    .map(|(s, ns)| (s.unwrap_or_else(|| "none".to_string()), ns))
                    .collect(),
            }
        })
        .collect();
    let split = analysis.totals.classes;
    let shares = |s: &analyze::Shares| {
        s.iter()
            .map(|(name, ns)| Share {
                name: name.clone(),
                blocked_ns: *ns,
            })
            .collect()
    };
    let objects = analysis
        .objects
        .iter()
        .map(|r| Object {
            kind: r.kind.name(),
            id: r.object,
            name: r.name.clone(),
            off_cpu_ns: r.ns,
            blocked_ns: r.blocked_ns,
            waits: r.waits,
            threads: r.threads,
            class: r.class.key(),
            outcomes: r.outcomes.iter().map(|(o, n)| (o.key(), *n)).collect(),
            waiters: shares(&r.waiters),
            wakers: shares(&r.wakers),
        })
        .collect();
    let (oncpu, blocked, runq) = collected.threads.iter().fold((0, 0, 0), |(a, b, c), t| {
        (a + t.oncpu_ns, b + t.blocked_ns, c + t.runq_ns)
    });
    let mut sampled = Vec::new();
    if collected.goroutines.is_some() {
        sampled.push("goroutines");
    }
    if collected.losses.kstacks_reused > 0 {
        sampled.push("kernel stacks at a known place (reused, rechecked)");
    }
    if collected.losses.waker_stacks_reused > 0 {
        sampled.push("waker stacks at a known place (reused, rechecked)");
    }
    Summary {
        schema: SCHEMA,
        target: Target {
            comm: printable(&collected.comm).into_owned(),
            pid: collected.pid,
            other_namespaces: collected.other_namespaces.clone(),
        },
        session: Session {
            duration_ns: session_ns,
            ended_by,
            exit_status,
            attach: collected.attach.clone(),
            syscall_exits: collected.syscall_exits.clone(),
            wakers: collected.wakers,
        },
        thread_time: ThreadTime {
            on_cpu_ns: oncpu,
            blocked_ns: blocked,
            run_queue_ns: runq,
        },
        kinds,
        classes: Classes {
            idle_ns: split.idle,
            lock_contention_ns: split.contended,
            other_ns: split.other,
            run_queue_ns: split.runq,
        },
        objects,
        listeners: collected
            .listeners
            .iter()
            .map(|l| Listener {
                name: analyze::listener_name(l),
                inode: l.inode,
                accepts: l.accepts,
                queue_max: l.qlen_max,
                queue_limit: l.limit,
                accepts_at_limit: l.at_limit,
                drops: l.drops,
            })
            .collect(),
        epoll_fds: collected
            .polls
            .iter()
            .map(|p| EpollFd {
                fd: p.fd,
                polls: p.polls,
                blocking: p.blocking,
                gaps: p.gaps,
                longest_gap_ns: p.longest_ns(),
                gap_p99_below_ns: analyze::quantile_ns(&p.gap_hist, 0.99),
            })
            .collect(),
        run_queue: analysis
            .runq
            .iter()
            .map(|r| RunQueue {
                tid: r.tid,
                comm: printable(&r.comm).into_owned(),
                waits: r.waits,
                ns: r.ns,
                after_wakeup_ns: r.woken_ns,
                p50_below_ns: analyze::quantile_ns(&r.hist, 0.5),
                p99_below_ns: analyze::quantile_ns(&r.hist, 0.99),
                histogram: histogram(&r.hist),
            })
            .collect(),
        threads: collected
            .threads
            .iter()
            .map(|t| Thread {
                tid: t.tid,
                comm: printable(&t.comm).into_owned(),
                on_cpu_ns: t.oncpu_ns,
                blocked_ns: t.blocked_ns,
                run_queue_ns: t.runq_ns,
                exited: t.exited,
            })
            .collect(),
        findings,
        not_seen: NotSeen {
            counters: &collected.losses,
            truncated_stacks: symbols.truncated_stacks,
            unknown_user_frames: symbols.unknown_user_frames,
            unknown_kernel_frames: symbols.unknown_kernel_frames,
            unknown_why: &symbols.unknown_why,
            unreadable_files: symbols
                .unreadable_files
                .iter()
                .map(|(path, why)| UnreadableFile {
                    path: printable(path).into_owned(),
                    why: why.clone(),
                })
                .collect(),
        },
        sampled,
        goroutines: collected.goroutines.as_ref().map(|g| {
            let mut states_ns: BTreeMap<String, u64> = BTreeMap::new();
            for (state, ns) in &analysis.totals.goroutine_states {
                *states_ns.entry(fold_state(state)).or_default() += ns;
            }
            Goroutines {
                go_version: printable(&g.version).into_owned(),
                missing: g.missing.clone(),
                sweeps: g.sweeps,
                samples: g.samples,
                goroutines_max: g.goroutines_max,
                goroutines_seen: g.goroutines_seen,
                runnable_max: g.runnable_max,
                states_ns,
                raced_samples: g.raced,
                unreadable_gs: g.unreadable_gs,
            }
        }),
        timeline: collected.timeline.as_ref().map(|t| TimelineCounts {
            events: t.events.len(),
            dropped_in_kernel: t.dropped_in_kernel,
            dropped_beyond_limit: t.dropped_beyond_limit,
            goroutine_spells: spells.map(|s| s.spells.len()),
            goroutine_spells_dropped: spells.map(|s| s.dropped),
        }),
    }
}

fn fold_state(state: &crate::model::GState) -> String {
    use crate::model::GState;
    match state {
        GState::Waiting(r) => printable(r).into_owned(),
        GState::Runnable => "runnable".into(),
        GState::Running => "running".into(),
        GState::Syscall => "syscall".into(),
    }
}

/// The summary as JSON text, pretty-printed, with a final newline.
pub fn to_vec(summary: &Summary<'_>) -> anyhow::Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(summary)?;
    out.push(b'\n');
    Ok(out)
}
