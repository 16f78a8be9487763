//! Flags that select what is profiled or drawn.

use super::common::*;

/// The tid of the fixture thread named `name`.
fn tid_named(pid: u32, name: &str) -> u32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the fixture's threads")
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no thread named {name} in {pid}"))
}

#[test]
fn tid_selects_one_thread() {
    let _s = root_session();
    let fixture = Fixture::start(&["park"], "parked");
    let tid = tid_named(fixture.pid(), "parked").to_string();
    let run = waitprof(&["-t", &tid, "-d", "1s", "--per-thread"]);
    let folded = run.folded();
    let thread_frame = format!("parked-{tid}");
    assert!(
        folded
            .iter()
            .all(|(s, _)| s.split(';').nth(1) == Some(thread_frame.as_str())),
        "only thread {tid} is drawn: {folded:?}"
    );
    assert!(run.stderr().contains("1 threads"), "{}", run.stderr());
    let us = attributed_us(&folded, &[&thread_frame, "[futex]"]);
    assert_close("-t parked thread", us * 1000, run.session_ns(), TOLERANCE);
}

#[test]
fn min_block_leaves_short_waits_out_but_counts_them() {
    let _s = root_session();
    // 20 sleeps of 5 ms, below --min-block 20ms; the main thread's join wait is longer
    let run = profile_fixture(&["--min-block", "20ms"], &["sleep", "20", "5"]);
    let folded = run.folded();
    assert!(
        folded.iter().all(|(s, _)| !s.contains("sleeper")),
        "short waits are drawn"
    );
    let stderr = run.stderr();
    let left_out = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("left out by --min-block: "))
        .and_then(|r| r.split(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no --min-block line in:\n{stderr}"));
    assert!(
        left_out >= 20,
        "{left_out} waits left out, expected at least the 20 sleeps"
    );
    // the per-thread totals still hold all of the time
    assert!(run.worst_thread_accounting() >= 99.0);
}
