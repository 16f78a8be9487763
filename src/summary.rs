//! The summary printed at the end of every session: where the threads' time went, by
//! kind and outcome, whether each thread's time adds up, the heaviest stacks, and
//! everything the session could not see. Pure: it formats what it is given.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::analyze::{self, pct, secs, ObjectReport, RunqReport, WaitClass};
use crate::fold;
use crate::model::{Collected, EndReason, Kind, Outcome};
use crate::profile::Profile;
use crate::symbolize::Symbols;

/// How many wait objects, and threads with run-queue histograms, the summary lists.
const TOP_OBJECTS: usize = 5;
const TOP_RUNQ_THREADS: usize = 3;

/// The lowest and highest ratio of accounted time to lifetime over all threads, in
/// percent: 100% means on-CPU + blocked + run-queue covers the thread's whole time in
/// the session.
pub fn accounting_range(collected: &Collected) -> Option<(f64, f64)> {
    let ratios: Vec<f64> = collected
        .threads
        .iter()
        .filter(|t| t.lifetime_ns() > 0)
        .map(|t| pct(t.accounted_ns(), t.lifetime_ns()))
        .collect();
    let min = ratios.iter().copied().reduce(f64::min)?;
    let max = ratios.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// The summary, in words, of the session, its typed `profile` and its `analysis`
/// (`analyze::Analysis::of`).
pub fn render(
    collected: &Collected,
    symbols: &Symbols,
    profile: &Profile,
    analysis: &analyze::Analysis,
    top: usize,
    per_thread: bool,
) -> String {
    let mut out = String::new();
    let session_ns = collected.end_ns.saturating_sub(collected.start_ns);
    let exited = collected.threads.iter().filter(|t| t.exited).count();
    let ended = match &collected.end_reason {
        Some(EndReason::Duration) => "duration reached".to_string(),
        Some(EndReason::Interrupted) => "stopped by Ctrl-C".to_string(),
        Some(EndReason::TargetExited(Some(code))) => format!("target exited (status {code})"),
        Some(EndReason::TargetExited(None)) => "target exited".to_string(),
        None => "unknown".to_string(),
    };
    let _ = writeln!(
        out,
        "waitprof: {} (pid {}), session {}, {} threads ({exited} exited), attached with {}{}; {ended}",
        collected.comm,
        collected.pid,
        secs(session_ns),
        collected.threads.len(),
        collected.attach,
        collected
            .syscall_exits
            .as_ref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    if let Some(cpus) = &collected.cpus {
        let _ = writeln!(out, "  {cpus}");
    }
    if !collected.other_namespaces.is_empty() {
        let _ = writeln!(
            out,
            "  the target runs in another {} namespace (a container): its files were read as it sees them",
            collected.other_namespaces.join(" and ")
        );
    }

    let (oncpu, blocked, runq) = collected.threads.iter().fold((0, 0, 0), |(a, b, c), t| {
        (a + t.oncpu_ns, b + t.blocked_ns, c + t.runq_ns)
    });
    let all = oncpu + blocked + runq;
    let _ = writeln!(out, "  thread time {} in all:", secs(all));
    for (label, v) in [
        ("on-CPU", oncpu),
        ("blocked", blocked),
        ("run-queue wait", runq),
    ] {
        let _ = writeln!(out, "    {label:<15} {:>10}  {:5.1}%", secs(v), pct(v, all));
    }

    let kinds = &analysis.totals.kinds;
    let _ = writeln!(out, "  off-CPU by kind (blocked + run-queue wait):");
    for kind in Kind::ALL {
        let Some(k) = kinds.get(&kind) else {
            let _ = writeln!(out, "    {:<7} none", kind.name());
            continue;
        };
        let mut detail: Vec<String> = k
            .outcomes
            .iter()
            .filter(|(o, _)| !o.describe(kind).is_empty())
            .map(|(o, n)| format!("{n} {}", o.describe(kind)))
            .collect();
        if kind == Kind::Other {
            let mut by: Vec<(String, u64)> = k
                .syscalls
                .iter()
                .map(|(s, ns)| (fold::syscall_frame_named(s.as_deref()), *ns))
                .collect();
            by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            detail = by
                .iter()
                .take(4)
                .map(|(s, ns)| format!("{s} {}", secs(*ns)))
                .collect();
        }
        let unit = if kind == Kind::Other {
            "waits"
        } else {
            "calls"
        };
        let _ = writeln!(
            out,
            "    {:<7} {:>10} (blocked {}, run-queue {}), {} {unit}{}{}",
            kind.name(),
            secs(k.blocked_ns + k.runq_ns),
            secs(k.blocked_ns),
            secs(k.runq_ns),
            k.count,
            if detail.is_empty() { "" } else { ": " },
            detail.join(", ")
        );
    }

    let split = analysis.totals.classes;
    let off = split.idle + split.contended + split.other + split.runq;
    let _ = writeln!(
        out,
        "  idle or costly (blocked time by class, then run-queue wait):"
    );
    for (label, v) in [
        (WaitClass::Idle.describe(), split.idle),
        (WaitClass::Contended.describe(), split.contended),
        (WaitClass::Other.describe(), split.other),
        ("run-queue wait (runnable, no CPU)", split.runq),
    ] {
        let _ = writeln!(out, "    {label:<36} {:>10}  {:5.1}%", secs(v), pct(v, off));
    }
    let analyze::Analysis {
        objects,
        runq,
        findings,
        ..
    } = analysis;
    objects_section(&mut out, objects);
    listeners_section(&mut out, collected);
    polls_section(&mut out, collected);
    runq_section(&mut out, runq, per_thread);

    match accounting_range(collected) {
        Some((min, max)) => {
            let _ = writeln!(
                out,
                "  per-thread check: on-CPU + blocked + run-queue = {min:.1}%..{max:.1}% of each thread's time in the session"
            );
        }
        None => {
            let _ = writeln!(out, "  per-thread check: no thread was seen");
        }
    }
    if per_thread {
        let mut threads = collected.threads.clone();
        threads.sort_by_key(|t| std::cmp::Reverse(t.blocked_ns + t.runq_ns));
        let _ = writeln!(out, "  threads:");
        for t in &threads {
            let _ = writeln!(
                out,
                "    {:>7} {:<16} on-CPU {:>10}  blocked {:>10}  run-queue {:>10}{}",
                t.tid,
                t.comm,
                secs(t.oncpu_ns),
                secs(t.blocked_ns),
                secs(t.runq_ns),
                if t.exited { "  (exited)" } else { "" }
            );
        }
    }

    // heaviest (user stack, syscall) pairs: what the program was doing when it waited,
    // by its own code first (the last frames of a stack are library wrappers)
    let mut stacks: HashMap<String, u64> = HashMap::new();
    for w in profile.waits.iter().filter(|w| w.blocked_ns > 0) {
        let f: Vec<Arc<str>> = profile
            .stack(w.ustack)
            .map(|frame| frame.name.clone())
            .collect();
        let user = if f.is_empty() {
            "[missed user stack]".to_string()
        } else {
            let start = f.len().saturating_sub(2);
            let tail = f[start..].join(" > ");
            match analyze::app_frame(&f) {
                Some(own) if !f[start..].iter().any(|t| &**t == own) => {
                    format!("{own} > .. > {tail}")
                }
                _ => tail,
            }
        };
        let syscall = fold::syscall_frame_named(w.syscall.as_deref());
        *stacks.entry(format!("{user} > {syscall}")).or_default() += w.blocked_ns;
    }
    let total_off: u64 = stacks.values().sum();
    // what rounds to nothing says nothing
    stacks.retain(|_, ns| *ns >= 500);
    let mut stacks: Vec<(String, u64)> = stacks.into_iter().collect();
    stacks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if !stacks.is_empty() && top > 0 {
        let _ = writeln!(
            out,
            "  top waits (blocked time; own code > .. > last user frames > syscall):"
        );
        for (s, ns) in stacks.iter().take(top) {
            let _ = writeln!(
                out,
                "    {:5.1}% {:>10}  {s}",
                pct(*ns, total_off),
                secs(*ns)
            );
        }
    }

    let l = &collected.losses;
    let _ = writeln!(
        out,
        "  not seen: {} rows dropped ({} of waits; aggregation map full), {} threads untracked, \
         {} user / {} kernel stacks lost, {} stacks not stored (stack table full), {} truncated stacks, \
         {} user / {} kernel frames unknown, {} exit records lost, {} wakeups unseen (counted as blocked), \
         {} switch-ins unseen ({} closed at syscall exit, {} at the next switch-out or exit), \
         {} switch-outs unseen, \
         {} hook runs skipped by the kernel (recursion)",
        l.rows_dropped,
        secs(l.rows_dropped_ns),
        l.threads_untracked,
        l.ustack_errors,
        l.kstack_errors,
        l.stack_table_full,
        symbols.truncated_stacks,
        symbols.unknown_user_frames,
        symbols.unknown_kernel_frames,
        l.exit_records_lost,
        l.no_wakeup_seen,
        l.missed_switch_ins,
        l.missed_switch_ins_recovered,
        l.missed_switch_ins_closed_at_switch_out,
        l.switch_in_while_on_cpu,
        l.recursion_misses,
    );
    if !collected.wakers {
        let _ = writeln!(
            out,
            "  wakers: not recorded (--no-wakers): no wait says who ended it"
        );
    } else {
        write_waker_walks(&mut out, l);
    }
    if let Some(t) = &collected.timeline {
        let _ = writeln!(
            out,
            "  timeline: {} events (every switch and wakeup of the target's threads), {} lost (the kernel's ring buffer full), {} beyond the {} kept",
            t.events.len(),
            t.dropped_in_kernel,
            t.dropped_beyond_limit,
            crate::collect::TIMELINE_MAX_EVENTS
        );
        if let Some(spells) = collected
            .goroutines
            .as_ref()
            .and_then(|g| g.spells.as_ref())
        {
            let goroutines: std::collections::HashSet<u64> =
                spells.spells.iter().map(|s| s.goid).collect();
            let _ = writeln!(
                out,
                "    and goroutine spells ({} of {} goroutines, sampled: each from the sweep that saw a state to the first that saw another), {} beyond the {} kept",
                spells.spells.len(),
                goroutines.len(),
                spells.dropped,
                crate::runtime::go::goroutines::MAX_TIMELINE_SPELLS
            );
        }
    }
    write_unwinding(&mut out, collected, symbols, &analysis.coverage);
    write_snapshots(&mut out, collected, symbols);
    if let Some(view) = &collected.goroutines {
        let thread_name = |tid: u32| analyze::thread_label(collected, tid);
        // the netpoller, as the threads' epoll calls show it: Go polls one epoll fd
        let mut netpoll = crate::runtime::go::report::Netpoll::default();
        if let Some(epoll) = kinds.get(&Kind::Epoll) {
            let calls = |o| epoll.outcomes.get(&o).copied().unwrap_or(0);
            netpoll.blocked_ns = epoll.blocked_ns;
            netpoll.with_events = calls(Outcome::Ok);
            netpoll.timed_out = calls(Outcome::Timeout);
        }
        for p in &collected.polls {
            netpoll.polls += p.polls;
            netpoll.blocking += p.blocking;
            netpoll.longest_gap_ns = netpoll.longest_gap_ns.max(p.longest_ns());
        }
        netpoll.threads = collected.threads.iter().filter(|t| t.polls > 0).count();
        crate::runtime::go::report::write(
            &mut out,
            view,
            profile,
            symbols,
            top,
            thread_name,
            &netpoll,
        );
    }
    if l.waiters_dropped + l.listeners_dropped + l.polls_dropped + l.oncpu_dropped > 0 {
        let _ = writeln!(
            out,
            "  not counted: {} (object, thread) waiter pairs (waiter map full), {} listening sockets (listener map full), {} epoll calls on fds beyond the {} counted above fd 1023 (poll map full), {} on-CPU samples (their map full)",
            l.waiters_dropped, l.listeners_dropped, l.polls_dropped, crate::session::MAX_POLLED_FDS, l.oncpu_dropped
        );
    }
    if l.kstacks_reused > 0 {
        let _ = writeln!(
            out,
            "  kernel stacks reused at a known place: {}; walked again to check {} times, {} differed",
            l.kstacks_reused, l.kstacks_rechecked, l.kstacks_differed
        );
    }
    if l.below_min_block > 0 {
        let _ = writeln!(
            out,
            "  left out by --min-block: {} waits, {}",
            l.below_min_block,
            secs(l.below_min_block_ns)
        );
    }
    if findings.is_empty() {
        let _ = writeln!(
            out,
            "findings: none (no lock, listener or CPU starvation stood out)"
        );
    } else {
        let _ = writeln!(out, "findings (most important first):");
        for (i, f) in findings.iter().take(8).enumerate() {
            let _ = writeln!(out, "  {}. {f}", i + 1);
        }
    }
    out
}

/// The futexes, epoll fds and listening sockets waited on longest, with who waited
/// and who woke them.
fn objects_section(out: &mut String, objects: &[ObjectReport]) {
    if objects.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  waited on (futex address, epoll fd, listening socket; heaviest first):"
    );
    let shares = |v: &analyze::Shares, whole: u64| {
        v.iter()
            .map(|(name, ns)| format!("{name} {:.0}%", pct(*ns, whole)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for r in objects.iter().take(TOP_OBJECTS) {
        let _ = writeln!(
            out,
            "    {}: {}, {} waits by {} thread(s); {}",
            r.name,
            secs(r.ns),
            r.waits,
            r.threads,
            r.class.describe()
        );
        if !r.waiters.is_empty() {
            let _ = writeln!(
                out,
                "      waiting in: {}",
                shares(&r.waiters, r.blocked_ns)
            );
        }
        if !r.wakers.is_empty() {
            let _ = writeln!(out, "      woken by:   {}", shares(&r.wakers, r.blocked_ns));
        }
    }
    if objects.len() > TOP_OBJECTS {
        let _ = writeln!(out, "    ... and {} more", objects.len() - TOP_OBJECTS);
    }
}

fn listeners_section(out: &mut String, collected: &Collected) {
    if collected.listeners.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  listening sockets (accept queue when accept(2) found it):"
    );
    for l in &collected.listeners {
        let mean = if l.accepts == 0 {
            0.0
        } else {
            l.qlen_sum as f64 / l.accepts as f64
        };
        let _ = writeln!(
            out,
            "    {}: {} accepts; queue mean {mean:.1}, max {} of limit {}, at its limit in {} accepts; \
             {} connections dropped (accept queue overflow) {}",
            analyze::listener_name(l),
            l.accepts,
            l.qlen_max,
            l.limit,
            l.at_limit,
            l.drops,
            l.drops_span.describe()
        );
    }
}

/// How many epoll fds the summary lists.
const TOP_POLLS: usize = 5;

/// The target's epoll fds: how often each was polled, and the longest time nobody did.
fn polls_section(out: &mut String, collected: &Collected) {
    if collected.polls.is_empty() {
        return;
    }
    let session_ns = collected.end_ns.saturating_sub(collected.start_ns);
    let _ = writeln!(
        out,
        "  epoll fds polled (every call counted; a gap: no call on the fd waiting or returning, so a ready event waited; longest first):"
    );
    for p in collected.polls.iter().take(TOP_POLLS) {
        let q = |q| analyze::quantile_ns(&p.gap_hist, q).map_or("-".to_string(), secs);
        let longest = if p.gap_max_ns == 0 {
            "no gap".to_string()
        } else {
            format!(
                "longest {} (ended at +{} by {})",
                secs(p.gap_max_ns),
                secs(p.gap_max_end_ns.saturating_sub(collected.start_ns)),
                analyze::thread_label(collected, p.gap_max_tid)
            )
        };
        let _ = writeln!(
            out,
            "    epoll fd {}: {} polls ({:.0}/s; {} blocked, {} returned at once); {} gaps, p50 < {}, p99 < {}, {longest}{}",
            p.fd,
            p.polls,
            analyze::per_second(p.polls, session_ns),
            p.blocking,
            p.polls.saturating_sub(p.blocking),
            p.gaps,
            q(0.5),
            q(0.99),
            if p.open_gap_ns > 0 {
                format!("; not polled since {} before the end", secs(p.open_gap_ns))
            } else {
                String::new()
            }
        );
    }
    if collected.polls.len() > TOP_POLLS {
        let _ = writeln!(
            out,
            "    ... and {} more epoll fds",
            collected.polls.len() - TOP_POLLS
        );
    }
    let pollers: Vec<&crate::model::ThreadTotals> = {
        let mut v: Vec<_> = collected.threads.iter().filter(|t| t.polls > 0).collect();
        v.sort_by(|a, b| b.polls.cmp(&a.polls).then(a.tid.cmp(&b.tid)));
        v
    };
    if !pollers.is_empty() {
        let names: Vec<String> = pollers
            .iter()
            .take(TOP_POLLS)
            .map(|t| {
                format!(
                    "{}-{} {} ({} blocked)",
                    t.comm, t.tid, t.polls, t.polls_blocking
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "    polled by {} thread(s): {}{}",
            pollers.len(),
            names.join(", "),
            if pollers.len() > TOP_POLLS {
                ", ..."
            } else {
                ""
            }
        );
    }
}

/// Run-queue waits per thread: the threads that waited most, runqlat's histogram for the
/// first; with --per-thread, every thread and every histogram.
fn runq_section(out: &mut String, threads: &[RunqReport], per_thread: bool) {
    if threads.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  run-queue waits per thread (from a wakeup or preemption until it ran):"
    );
    let shown = if per_thread {
        threads.len()
    } else {
        TOP_RUNQ_THREADS
    };
    for (i, t) in threads.iter().take(shown).enumerate() {
        let q = |p| analyze::quantile_ns(&t.hist, p).map_or("-".to_string(), secs);
        let _ = writeln!(
            out,
            "    {}-{}: {} waits, {} ({} after a wakeup); p50 < {}, p99 < {}",
            t.comm,
            t.tid,
            t.waits,
            secs(t.ns),
            secs(t.woken_ns),
            q(0.5),
            q(0.99)
        );
        if i == 0 || per_thread {
            histogram(out, &t.hist);
        }
    }
    if threads.len() > shown {
        let _ = writeln!(out, "    ... and {} more threads", threads.len() - shown);
    }
}

/// A log2 histogram as runqlat prints it.
fn histogram(out: &mut String, hist: &[u64]) {
    let Some(last) = hist.iter().rposition(|&n| n > 0) else {
        return;
    };
    let max = hist.iter().copied().max().unwrap_or(1).max(1);
    let _ = writeln!(out, "      {:>21} : {:<8} distribution", "usecs", "count");
    for (slot, &n) in hist.iter().enumerate().take(last + 1) {
        let low = if slot == 0 { 0 } else { 1u64 << slot };
        let high = (2u64 << slot) - 1;
        let bar = "*".repeat((n * 40).div_ceil(max) as usize);
        let _ = writeln!(out, "      {low:>10} -> {high:<8} : {n:<8} |{bar:<40}|");
    }
}

/// How the user stacks were walked, how complete they are, and why frames are missing.
/// How much of the woken time has waker stacks walked at its wakeup, and how much reused
/// from the same place: the reused ones are a sample, and the summary says so.
fn write_waker_walks(out: &mut String, l: &crate::model::Losses) {
    let woken = l.waker_walked_ns + l.waker_reused_ns;
    if woken == 0 {
        return;
    }
    let walked = 100.0 * l.waker_walked_ns as f64 / woken as f64;
    let line = match l.waker_reuse_off {
        Some(why) => format!("walked at every wakeup ({why})"),
        None => format!(
            "walked at every wakeup that ended a wait of {} or more, came from a hard interrupt, a kernel thread or a place not yet confirmed (two walks in a row agreeing): {walked:.1}% of the blocked time a wakeup ended; the other {} wakeups, {:.1}% of that time, reused the stacks walked at the same place: a sample (walked again to check {} times, {} differed)",
            analyze::secs(crate::session::WAKER_WALK.as_nanos() as u64),
            l.waker_stacks_reused,
            100.0 - walked,
            l.waker_stacks_rechecked,
            l.waker_stacks_differed
        ),
    };
    let _ = writeln!(out, "  waker stacks: {line}");
}

fn write_unwinding(
    out: &mut String,
    collected: &Collected,
    symbols: &Symbols,
    c: &analyze::Coverage,
) {
    let how = match &collected.unwind {
        None => "frame pointers only (--unwind fp)".to_string(),
        Some(u) => format!(
            "unwind tables of {} files ({} of {} rows, built in {:.0} ms{}), frame pointers \
             where none cover the code",
            u.files,
            u.rows,
            u.capacity,
            u.build_time.as_secs_f64() * 1e3,
            match u.refreshes {
                0 => String::new(),
                n => format!("; reloaded {n}x for new code"),
            }
        ),
    };
    let _ = writeln!(
        out,
        "  user stacks: {how}; {:.1}% of blocked time with a stack reaches its thread's \
         entry (main, start_thread, clone3); median depth {} frames",
        pct(c.complete_ns, c.blocked_ns),
        c.median_depth
    );
    let l = &collected.losses;
    if l.ustacks_reused + l.ustacks_changed + l.ustacks_unremembered > 0 {
        let _ = writeln!(
            out,
            "    walks reused: {} switch-outs' user stacks were the one a walk from the same \
             registers found, every stack word it read unchanged (exact, not sampled); {} were \
             walked again, a word having changed{}",
            l.ustacks_reused,
            l.ustacks_changed,
            match l.ustacks_unremembered {
                0 => String::new(),
                n => format!(
                    "; {n} walks not remembered (over 128 words or 16 KiB of stack, through \
                     code no table covers, or a word unreadable)"
                ),
            }
        );
    }
    if let Some(u) = &collected.unwind {
        if !u.without.is_empty() {
            let _ = writeln!(out, "    no unwind table: {}", files_and_why(&u.without));
        }
    }
    if !symbols.unknown_why.is_empty() {
        let list: Vec<String> = symbols
            .unknown_why
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        let _ = writeln!(out, "    unknown user frames: {}", list.join(", "));
    }
    if !symbols.unreadable_files.is_empty() {
        let _ = writeln!(
            out,
            "    files not read (their frames are unknown): {}",
            files_and_why(&symbols.unreadable_files)
        );
    }
}

/// The first five files of a list with the reason for each, and how many more.
fn files_and_why(files: &[(String, String)]) -> String {
    let list: Vec<String> = files
        .iter()
        .take(5)
        .map(|(path, why)| format!("{path} ({why})"))
        .collect();
    match files.len().saturating_sub(5) {
        0 => list.join(", "),
        more => format!("{} and {more} more", list.join(", ")),
    }
}

/// How the threads off-CPU at the start and the end were seen, and the threads still
/// waiting at the end.
fn write_snapshots(out: &mut String, collected: &Collected, symbols: &Symbols) {
    let s = &collected.snapshots;
    if let Some(why) = &s.missing {
        let _ = writeln!(
            out,
            "  threads blocked since before attach: no snapshot ({why}); their user stacks show [blocked before attach]"
        );
        return;
    }
    // how long the waits in flight at the start had already lasted (the kernel's last
    // arrival on a CPU: an upper bound)
    let before = s
        .at_start
        .values()
        .filter_map(|b| b.off_cpu_ns.map(|ns| (ns, b)))
        .max_by_key(|(ns, b)| (*ns, std::cmp::Reverse(b.tid)))
        .map(|(ns, b)| {
            format!(
                "; the longest, {}-{}, had been off-CPU for {} before the start",
                b.comm,
                b.tid,
                secs(ns)
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  off-CPU threads read by a task iterator (iter.s/task, {:.1} ms): {} at the start ({} waits in flight got their stacks{before}), {} at the end",
        s.took.as_secs_f64() * 1e3,
        s.at_start.len(),
        s.rows_filled,
        s.at_end.len()
    );
    let waiting = analyze::still_waiting(collected, symbols);
    if waiting.is_empty() {
        return;
    }
    let _ = writeln!(out, "  still waiting at the end:");
    const SHOWN: usize = 20;
    for w in waiting.iter().take(SHOWN) {
        let since = match (w.whole_session, w.thread.off_cpu_ns) {
            (true, Some(ns)) => format!("the whole session, off-CPU for {}", secs(ns)),
            (_, Some(ns)) => format!("off-CPU for {}", secs(ns)),
            (_, None) => "for an unknown time".to_string(),
        };
        let _ = writeln!(
            out,
            "    {}-{}: {} {}; {since}",
            w.thread.comm,
            w.thread.tid,
            w.function,
            w.how()
        );
    }
    if waiting.len() > SHOWN {
        let _ = writeln!(out, "    and {} more threads", waiting.len() - SHOWN);
    }
}
