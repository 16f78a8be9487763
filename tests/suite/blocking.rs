//! waitprof profiles fixtures that block in known functions for known times; the time it
//! attributes to those functions must match what the fixture measured itself, and the
//! functions must appear in the stack in order.

use super::common::*;

/// Profiles `fixture_args`, then checks the off-CPU time under `frames` (root to leaf)
/// against the fixture's own measurement of those calls, and that at least 90% of it is
/// in `syscall`. The rest is preemption inside the same functions but outside the
/// syscall, which the fixture's wall-clock measurement includes too.
fn check(fixture_args: &[&str], frames: &[&str], syscall: &str) -> Run {
    let run = profile_fixture(&[], fixture_args);
    let folded = run.folded();
    let under = attributed_us(&folded, frames);
    let in_syscall = attributed_us(&folded, &[frames, &[syscall]].concat());
    assert_close(
        &fixture_args.join(" "),
        under * 1000,
        run.measured_ns(),
        TOLERANCE,
    );
    assert!(
        in_syscall as f64 >= 0.9 * under as f64,
        "only {in_syscall} of {under} us under {frames:?} is in {syscall}"
    );
    let worst = run.worst_thread_accounting();
    assert!(
        worst >= 99.0,
        "a thread's time does not add up: {worst}% of its lifetime"
    );
    run
}

#[test]
fn futex_condvar_wait_with_timeout() {
    let _s = root_session();
    let run = check(
        &["condvar", "20", "50"],
        &[
            "scenario_condvar",
            "condvar_waiter",
            "Condvar::wait_timeout",
        ],
        "[futex]",
    );
    // the 20 waits time out: nobody notifies the condition variable
    let futex = run.kind_line("futex");
    assert!(futex.contains("20 timed out"), "futex outcome: {futex}");
}

#[test]
fn futex_contended_mutex() {
    let _s = root_session();
    let run = check(
        &["mutex", "20", "50"],
        &["scenario_mutex", "mutex_waiter"],
        "[futex]",
    );
    // the holder sleeps while it holds the lock: that is kind "other", not futex
    let folded = run.folded();
    assert!(attributed_us(&folded, &["mutex_holder", "[clock_nanosleep]"]) > 900_000);
}

#[test]
fn epoll_wait_timing_out() {
    let _s = root_session();
    let run = check(
        &["epoll", "20", "50"],
        &["scenario_epoll", "epoll_waiter"],
        "[epoll_wait]",
    );
    let epoll = run.kind_line("epoll");
    assert!(epoll.contains("20 timed out"), "epoll outcome: {epoll}");
}

#[test]
fn accept4_until_a_client_connects() {
    let _s = root_session();
    let run = check(
        &["accept", "10", "100"],
        &["scenario_accept", "accept_loop"],
        "[accept4]",
    );
    let accept = run.kind_line("accept");
    assert!(
        accept.contains("10 got a connection"),
        "accept outcome: {accept}"
    );
}

#[test]
fn nanosleep_is_kind_other() {
    let _s = root_session();
    let run = check(
        &["sleep", "20", "50"],
        &["scenario_sleep", "sleeper"],
        "[clock_nanosleep]",
    );
    let other = run.kind_line("other");
    assert!(other.contains("[clock_nanosleep]"), "other: {other}");
}

#[test]
fn cpu_bound_threads_wait_in_the_run_queue() {
    let _s = root_session();
    // three spinners pinned to one CPU: each runs about a third of the time
    let run = profile_fixture(&["--per-thread"], &["spin", "3", "1500"]);
    let folded = run.folded();
    let runq_us: u64 = folded
        .iter()
        .filter(|(s, _)| s.contains(";spinner-") && s.ends_with("[run queue]_[j]"))
        .map(|(_, v)| v)
        .sum();
    assert_close(
        "spin 3 1500 (run-queue wait)",
        runq_us * 1000,
        run.measured_ns(),
        TOLERANCE,
    );
    // the stacks are the spinners' own: at least 95% of that time is under scenario_spin
    // (a thread preempted before it entered its closure has only thread-start frames)
    let with_scenario = attributed_us(&folded, &["spinner-", "scenario_spin", "[run queue]"]);
    assert!(
        with_scenario as f64 >= 0.95 * runq_us as f64,
        "only {with_scenario} of {runq_us} us of run-queue wait is under scenario_spin"
    );
    assert!(run.worst_thread_accounting() >= 99.0);
}

/// The polls of the one epoll fd the summary lists, as (the fd's count, the count of the
/// one thread that polled it): `epoll fd N: P polls (...; B blocked, ...)` and
/// `polled by 1 thread(s): NAME-TID P (B blocked)`, blocked calls checked to be 0.
fn spin_polls(stderr: &str) -> (u64, u64) {
    let fd = stderr
        .lines()
        .skip_while(|l| !l.starts_with("  epoll fds polled"))
        .nth(1)
        .unwrap_or_else(|| panic!("no epoll fd polled:\n{stderr}"));
    let thread = stderr
        .lines()
        .find_map(|l| l.strip_prefix("    polled by 1 thread(s): poller-"))
        .unwrap_or_else(|| panic!("not one poller thread:\n{stderr}"));
    let number = |s: &str, after: &str| -> u64 {
        s.split(after)
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {after:?} in {s:?}"))
    };
    assert!(
        fd.contains("; 0 blocked, ") && thread.ends_with(" (0 blocked)"),
        "{stderr}"
    );
    (number(fd, ": "), number(thread, " "))
}

/// An event loop that never blocks: its epoll calls' returns are counted on the CPU it
/// runs on, its state not looked up (bpf: wp_running), and still reach its thread
/// exactly: at its exit (a launched fixture, 50,000 polls), and at the end of a `-p`
/// session (1 s) while it still runs, perhaps never switched out or in while profiled
/// (its first return then creates its state; before, its polls went uncounted until its
/// first switch-out).
#[test]
fn epoll_returns_that_did_not_block_are_counted_for_their_thread() {
    let _s = root_session();
    let run = profile_fixture(&[], &["spinpoll", "50000"]);
    assert_eq!(
        spin_polls(&run.stderr()),
        (50_000, 50_000),
        "{}",
        run.stderr()
    );
    let fixture = Fixture::start(&["spinpoll", "0"], "polling");
    let run = waitprof(&["-p", &fixture.pid().to_string(), "-d", "1s"]);
    let (fd, thread) = spin_polls(&run.stderr());
    eprintln!("-p for 1 s: {fd} polls of the fd, {thread} of the thread");
    assert!(
        fd >= 10_000 && thread == fd,
        "{fd} polls of the fd, {thread} of the thread"
    );
}

/// An event loop polls an epoll fd 40 times, every fourth poll blocking 10 ms, with 20 ms
/// of work after each poll and 100 ms after the middle one: every poll is counted (exact,
/// in the kernel), and the longest gap between polls is the fixture's own measurement.
#[test]
fn epoll_polls_and_the_longest_gap_between_them_are_counted() {
    let _s = root_session();
    let run = profile_fixture(&[], &["evloop", "40", "20"]);
    let stderr = run.stderr();
    let line = stderr
        .lines()
        .skip_while(|l| !l.starts_with("  epoll fds polled"))
        .nth(1)
        .unwrap_or_else(|| panic!("no epoll fd polled:\n{stderr}"));
    assert!(
        line.contains(": 40 polls (")
            && line.contains("; 10 blocked, 30 returned at once); 39 gaps,"),
        "{line}"
    );
    let longest = line
        .split("longest ")
        .nth(1)
        .and_then(|r| r.split(" (ended").next())
        .unwrap_or_else(|| panic!("no longest gap: {line}"));
    assert_close(
        "the longest gap between polls",
        parse_duration(longest),
        run.measured_ns(),
        TOLERANCE,
    );
    assert!(line.contains(" by event-loop-"), "{line}");
    assert!(
        stderr.contains("polled by 1 thread(s): event-loop-")
            && stderr.contains(" 40 (10 blocked)"),
        "{stderr}"
    );
    let findings = stderr.split("findings (").nth(1).unwrap_or("");
    assert!(
        findings.contains("was not polled for"),
        "no finding for the gap:\n{stderr}"
    );
}
