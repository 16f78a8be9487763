//! The goroutine view in words: time by state and wait reason, the heaviest waits by
//! the program's own code, runnable goroutines, and the findings for Go, ranked by
//! time. Idle goroutines (see `classify`) are counted apart from costly ones.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use super::classify::is_idle;
use crate::model::{GState, GoroutineView};
use crate::profile::Profile;
use crate::symbolize::Symbols;

/// Whether a Go function is the program's own code rather than the standard library's
/// or the runtime's: its package path starts with a domain (`github.com/...`) or is
/// `main`.
pub fn own_code(frame: &str) -> bool {
    let pkg_end = match frame.rfind('/') {
        Some(slash) => frame[slash..].find('.').map(|d| slash + d),
        None => frame.find('.'),
    };
    let Some(end) = pkg_end else {
        return false;
    };
    let pkg = &frame[..end];
    pkg == "main"
        || pkg
            .split('/')
            .next()
            .is_some_and(|first| first.contains('.'))
}

/// The leaf-most frame of the program's own code (root-first frames).
pub fn own_frame(frames: &[Arc<str>]) -> Option<&str> {
    frames.iter().rev().map(|f| &**f).find(|f| own_code(f))
}

fn frames_of(stack: Option<u64>, symbols: &Symbols) -> &[Arc<str>] {
    stack
        .and_then(|id| symbols.user.get(&id))
        .map_or(&[], |f| f.as_slice())
}

/// Where a goroutine is, in words: its own code's leaf-most frame, else its leaf.
fn place(frames: &[Arc<str>]) -> Option<&str> {
    own_frame(frames).or(frames.last().map(|f| &**f))
}

/// A state as the summary names it.
pub fn state_label(state: &GState) -> String {
    match state {
        GState::Waiting(r) => format!("waiting: {r}"),
        GState::Runnable => "runnable (waiting for a P)".to_string(),
        GState::Running => "running".to_string(),
        GState::Syscall => "in a syscall or cgo call".to_string(),
    }
}

/// Time by (state, own frame) of goroutines that were not idle.
struct Heavy {
    ns: u64,
    goroutines: u64,
    /// The lock it waited for, when it waited in `sync.Mutex` or `sync.RWMutex` (Go
    /// before 1.21 gives their waits the reason `semacquire`).
    lock: Option<&'static str>,
}

/// The sync lock a goroutine's frames wait in.
fn lock_of(frames: &[Arc<str>]) -> Option<&'static str> {
    frames.iter().rev().find_map(|f| {
        if f.starts_with("sync.(*Mutex).") {
            Some("sync.Mutex.Lock")
        } else if f.starts_with("sync.(*RWMutex).RLock") {
            Some("sync.RWMutex.RLock")
        } else if f.starts_with("sync.(*RWMutex).") {
            Some("sync.RWMutex.Lock")
        } else {
            None
        }
    })
}

fn secs(ns: u64) -> String {
    crate::analyze::secs(ns)
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A histogram bucket's upper bound: `<= 1.0 ms`.
fn upto(ns: u64) -> String {
    if ns == u64::MAX {
        "beyond the histogram (> 75 h)".to_string()
    } else if ns < 1000 {
        format!("<= {ns} ns")
    } else {
        format!("<= {}", secs(ns))
    }
}

/// The q-quantile of sampled values.
fn quantile(values: &[u64], q: f64) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).checked_sub(1)?;
    v.get(i.min(v.len() - 1)).copied()
}

fn heaviest(profile: &Profile) -> Vec<(GState, String, Heavy)> {
    let mut by: HashMap<(GState, String), Heavy> = HashMap::new();
    for g in &profile.goroutines {
        let frames = profile.goroutine_frames(g);
        if is_idle(&g.state, &frames) || g.state == GState::Running || g.raced {
            continue;
        }
        let place = place(&frames).unwrap_or("[no stack]").to_string();
        let h = by.entry((g.state.clone(), place)).or_insert(Heavy {
            ns: 0,
            goroutines: 0,
            lock: None,
        });
        h.lock = h.lock.or(lock_of(&frames));
        h.ns += g.ns;
        h.goroutines += g.goroutines;
    }
    let mut out: Vec<(GState, String, Heavy)> =
        by.into_iter().map(|((s, p), h)| (s, p, h)).collect();
    out.sort_by(|a, b| b.2.ns.cmp(&a.2.ns).then(a.1.cmp(&b.1)));
    out
}

/// Where the goroutines that ran were started (their start function), heaviest first.
fn running(profile: &Profile) -> Vec<(String, u64)> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for g in profile
        .goroutines
        .iter()
        .filter(|g| g.state == GState::Running)
    {
        let frames = profile.goroutine_frames(g);
        let name = place(&frames).unwrap_or("[unknown]");
        *by.entry(name.to_string()).or_default() += g.ns;
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// The netpoller as the thread level saw it: every epoll call of the target (Go polls
/// one epoll fd), those that blocked and how they ended, and the longest time nothing
/// polled.
#[derive(Clone, Debug, Default)]
pub struct Netpoll {
    pub polls: u64,
    pub blocking: u64,
    pub threads: usize,
    pub with_events: u64,
    pub timed_out: u64,
    pub blocked_ns: u64,
    pub longest_gap_ns: u64,
}

/// The summary's goroutine section: the view's sweeps, and its samples as the typed
/// `profile` holds them.
pub fn write(
    out: &mut String,
    view: &GoroutineView,
    profile: &Profile,
    symbols: &Symbols,
    top: usize,
    thread_name: impl Fn(u32) -> String,
    netpoll: &Netpoll,
) {
    if let Some(why) = &view.missing {
        let _ = writeln!(
            out,
            "  goroutines: a Go program ({}), but its goroutines were not read: {why}",
            view.version
        );
        return;
    }
    let costs = &view.sweep_cpu_ns;
    let _ = writeln!(
        out,
        "  goroutines ({}; sampled from its memory without stopping it, {} sweeps, every {} ms at most {} ms apart; {}):",
        view.version,
        view.sweeps,
        super::goroutines::MIN_PERIOD.as_millis(),
        view.period_max.as_millis().max(super::goroutines::MIN_PERIOD.as_millis()),
        view.how
    );
    let _ = writeln!(
        out,
        "    {} goroutines at most, {} seen; goroutine time by state (sampled: each sample counts the time to the next sweep):",
        view.goroutines_max, view.goroutines_seen
    );
    let total: u64 = profile.goroutines.iter().map(|g| g.ns).sum();
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let (mut idle, mut io_wait) = (0u64, 0u64);
    for g in &profile.goroutines {
        *by_state.entry(state_label(&g.state)).or_default() += g.ns;
        if profile.goroutine_idle(g) {
            idle += g.ns;
        }
        if g.state == GState::Waiting("IO wait".to_string()) {
            io_wait += g.ns;
        }
    }
    let mut states: Vec<(String, u64)> = by_state.into_iter().collect();
    states.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (label, ns) in &states {
        let _ = writeln!(
            out,
            "      {label:<36} {:>10}  {:5.1}%",
            secs(*ns),
            pct(*ns, total)
        );
    }
    let _ = writeln!(
        out,
        "    idle (the runtime's own goroutines, accept loops, idle connections, select {{}}): {} ({:.1}%); IO wait {:.1}% of goroutine time",
        secs(idle),
        pct(idle, total),
        pct(io_wait, total)
    );
    if netpoll.polls > 0 {
        let _ = writeln!(
            out,
            "    netpoller: {} polls by {} thread(s), {:.0}/s ({} returned at once; {} blocked: {} returned events, {} timed out, {} in them); longest gap between polls {}",
            netpoll.polls,
            netpoll.threads,
            crate::analyze::per_second(netpoll.polls, view.session_ns),
            netpoll.polls.saturating_sub(netpoll.blocking),
            netpoll.blocking,
            netpoll.with_events,
            netpoll.timed_out,
            secs(netpoll.blocked_ns),
            secs(netpoll.longest_gap_ns)
        );
    }
    let heavy = heaviest(profile);
    if !heavy.is_empty() && top > 0 {
        let _ = writeln!(
            out,
            "    heaviest waits (not idle), by the program's own code:"
        );
        for (state, place, h) in heavy.iter().take(top) {
            let _ = writeln!(
                out,
                "      {:>10}  {:<28} {} goroutine(s)  {place}",
                secs(h.ns),
                state_label(state),
                h.goroutines
            );
        }
    }
    if !view.in_syscalls.is_empty() && top > 0 {
        let _ = writeln!(
            out,
            "    goroutines in system calls, by the thread that ran them (sampled):"
        );
        for t in view.in_syscalls.iter().take(top) {
            let place = place(frames_of(t.stack, symbols)).unwrap_or("[no stack]");
            let _ = writeln!(
                out,
                "      {:>10}  thread {} ran goroutine {} in `{place}`",
                secs(t.ns),
                thread_name(t.tid),
                t.goid
            );
        }
    }
    if view.runnable_max > 0 {
        let spells = &view.runnable_spells_ns;
        let _ = writeln!(
            out,
            "    runnable (waiting for a P): at most {} at once; {} spells seen, p50 {} p99 {} (as the sweeps saw them: spells shorter than a sweep are missed or rounded up)",
            view.runnable_max,
            spells.len(),
            quantile(spells, 0.5).map_or("-".to_string(), secs),
            quantile(spells, 0.99).map_or("-".to_string(), secs),
        );
    }
    match &view.runtime_sched {
        Some(Ok(r)) => {
            let q = |q: f64| r.quantile(q).map_or("-".to_string(), upto);
            let _ = writeln!(
                out,
                "    the runtime's own sample (runtime.sched, 1 in 8 goroutine transitions): {} waits runnable before running over the session, p50 {} p90 {} p99 {} max {}",
                r.samples(),
                q(0.5),
                q(0.9),
                q(0.99),
                q(1.0)
            );
            if let Some(ns) = r.mutex_wait_ns {
                let _ = writeln!(
                    out,
                    "      and its estimate of the time goroutines waited in sync.Mutex and sync.RWMutex: {}",
                    secs(ns)
                );
            }
        }
        Some(Err(why)) => {
            let _ = writeln!(
                out,
                "    the runtime's own scheduling latency histogram was not read: {why}"
            );
        }
        None => {}
    }
    // per 1000 goroutines: the median over the sweeps that read at least 100
    let per_1000: Vec<u64> = costs
        .iter()
        .filter(|c| c.1 >= 100)
        .map(|c| c.0 * 1000 / c.1)
        .collect();
    let cpu: Vec<u64> = costs.iter().map(|c| c.0).collect();
    let _ = writeln!(
        out,
        "    not seen: {} samples taken while the goroutine ran (no stack), {} g's unreadable, {} sweeps without the goroutine list, {} goroutines beyond the {} read, {} stacks not kept (too many distinct); sweeps cost p50 {} (max {}) of CPU, {} per 1000 goroutines (median), {:.2}% of one CPU over the session{}",
        view.raced,
        view.unreadable_gs,
        view.unreadable_sweeps,
        view.beyond_limit,
        super::goroutines::MAX_GOROUTINES,
        view.stacks_dropped,
        secs(quantile(&cpu, 0.5).unwrap_or(0)),
        secs(cpu.iter().copied().max().unwrap_or(0)),
        quantile(&per_1000, 0.5).map_or("-".to_string(), secs),
        pct(cpu.iter().sum(), view.session_ns),
        match &view.running_from {
            Some(Ok(n)) => format!(
                "; running goroutines' stacks from {n} on-CPU samples of their threads (99 a second per CPU), their time split by those samples"
            ),
            Some(Err(why)) => format!(
                "; a running goroutine is shown by its start function only: {why}"
            ),
            None => String::new(),
        }
    );
}

/// Findings for Go, from the typed `profile`'s goroutine samples and the `view`'s
/// sweeps: (kind, rank in ns, words).
pub fn findings(
    view: &GoroutineView,
    profile: &Profile,
) -> Vec<(crate::analyze::FindingKind, u64, String)> {
    use crate::analyze::FindingKind as F;
    let mut found = Vec::new();
    // worth saying: at least 5% of the goroutine time that was not idle
    let costly: u64 = profile
        .goroutines
        .iter()
        .filter(|g| !profile.goroutine_idle(g))
        .map(|g| g.ns)
        .sum();
    let worth = |ns: u64| costly > 0 && ns * 20 >= costly && ns > 0;
    for (state, place, h) in heaviest(profile).iter().take(4) {
        if !worth(h.ns) {
            continue;
        }
        let (what, text) = match state {
            GState::Waiting(_) if h.lock.is_some() => (
                F::GoroutineLockContention,
                format!(
                    "`{}` in `{place}`: {} over {} goroutines (lock contention)",
                    h.lock.unwrap_or_default(),
                    secs(h.ns),
                    h.goroutines
                ),
            ),
            GState::Waiting(r) => (
                F::GoroutineWait,
                format!(
                    "{} goroutines waited {} in `{place}` ({r})",
                    h.goroutines,
                    secs(h.ns)
                ),
            ),
            GState::Runnable => {
                let ran = running(profile);
                let ran_total: u64 = ran.iter().map(|r| r.1).sum();
                let who = ran
                    .iter()
                    .take(2)
                    .map(|(f, ns)| format!("`{f}` {:.0}%", pct(*ns, ran_total)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let runtime_p99 = match &view.runtime_sched {
                    Some(Ok(r)) => r
                        .quantile(0.99)
                        .map(|p| format!("p99 {} by the runtime's own sample; ", upto(p)))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                (F::GoroutineStarvation, format!(
                    "goroutines waited {} runnable for a P (at most {} at once, {runtime_p99}spells p99 {}, sampled), in `{place}`{}",
                    secs(h.ns),
                    view.runnable_max,
                    quantile(&view.runnable_spells_ns, 0.99).map_or("-".to_string(), secs),
                    if who.is_empty() { String::new() } else { format!("; running meanwhile: {who}") }
                ))
            }
            GState::Syscall => (
                F::GoroutineSyscall,
                format!(
                    "{} goroutines spent {} in system calls in `{place}`",
                    h.goroutines,
                    secs(h.ns)
                ),
            ),
            GState::Running => continue,
        };
        found.push((what, h.ns, text));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_code_is_main_or_a_module_path_never_the_standard_library() {
        for own in [
            "main.main",
            "main.(*Pool).Get",
            "main.main.func1",
            "github.com/acme/svc/db.(*Conn).Query",
            "example.com/x.Run",
        ] {
            assert!(own_code(own), "{own}");
        }
        for std in [
            "net/http.(*conn).serve",
            "net.(*netFD).accept",
            "runtime.gopark",
            "runtime/internal/syscall.Syscall6",
            "internal/poll.(*FD).Read",
            "sync.(*Mutex).lockSlow",
            "time.Sleep",
            "[unknown: not mapped]",
        ] {
            assert!(!own_code(std), "{std}");
        }
    }
}
