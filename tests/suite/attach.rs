//! Attach methods, profiling an already-running process with -p, and how sessions end.

use std::process::Command;
use std::time::Duration;

use super::common::*;

fn condvar_under(attach: &str) {
    let _s = root_session();
    let run = profile_fixture(&["--attach", attach], &["condvar", "10", "50"]);
    let folded = run.folded();
    assert!(
        run.stderr().contains(&format!("attached with {attach}")),
        "{}",
        run.stderr()
    );
    let us = attributed_us(&folded, &["scenario_condvar", "condvar_waiter", "[futex]"]);
    assert_close(
        &format!("condvar under {attach}"),
        us * 1000,
        run.measured_ns(),
        TOLERANCE,
    );
}

#[test]
fn attach_with_tp_btf() {
    condvar_under("tp_btf");
}

#[test]
fn attach_with_raw_tp() {
    condvar_under("raw_tp");
}

#[test]
fn attach_with_classic_tracepoints() {
    condvar_under("tracepoint");
}

/// A thread blocked since before the session, and still blocked after it, is charged
/// the whole session, with a frame saying why its user stack is unknown.
#[test]
fn thread_blocked_for_the_whole_session() {
    let _s = root_session();
    let fixture = Fixture::start(&["park"], "parked");
    let pid = fixture.pid().to_string();
    let run = waitprof(&["-p", &pid, "-d", "1s", "--per-thread"]);
    let folded = run.folded();
    // blocked before attach and never woken: its stack comes from the start's snapshot
    let us = attributed_us(
        &folded,
        &["parked-", "start_thread", "parked_forever", "[futex]"],
    );
    assert_close("parked thread", us * 1000, run.session_ns(), TOLERANCE);
    assert!(
        !folded
            .iter()
            .any(|(s, _)| s.contains("[blocked before attach]")),
        "a wait without its stack"
    );
    assert!(run.worst_thread_accounting() >= 99.0);
}

/// The target exits before the duration: the session ends then, and its stacks still
/// symbolize although the process is gone.
#[test]
fn target_exits_mid_session() {
    let _s = root_session();
    // 1.5 s of sleeps: attaching (up to a few hundred ms on a busy machine) takes part
    let mut child = Command::new(FIXTURE)
        .args(["sleep", "15", "100"])
        .spawn()
        .expect("fixture");
    let pid = child.id().to_string();
    std::thread::sleep(Duration::from_millis(100));
    let run = waitprof(&["-p", &pid, "-d", "30s"]);
    let _ = child.wait();
    let folded = run.folded();
    assert!(run.stderr().contains("target exited"), "{}", run.stderr());
    assert!(attributed_us(&folded, &["scenario_sleep", "sleeper", "[clock_nanosleep]"]) > 500_000);
}

/// Ctrl-C during collection ends the session normally: the profile is written and no
/// BPF program stays loaded.
#[test]
fn sigint_during_collection_writes_the_profile() {
    let _s = root_session();
    let fixture = Fixture::start(&["park"], "parked");
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("out.svg");
    let mut child = spawn_waitprof(fixture.pid(), &svg);
    let (started, stderr) = watch_stderr(&mut child);
    started
        .recv_timeout(Duration::from_secs(20))
        .expect("waitprof did not start recording");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("waitprof");
    let stderr = stderr.join().expect("the stderr reader");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped by Ctrl-C"), "{stderr}");
    assert!(svg.exists() && svg.with_extension("folded").exists());
    let text = std::fs::read_to_string(&svg).expect("svg");
    assert!(text.trim_end().ends_with("</svg>"), "the SVG is complete");
    assert_programs_unload();
}

/// Ctrl-C at any moment of start-up (checks, load, attach, collection); see
/// `signal_during_start_up`. SIGTERM is swept in reliability.rs.
#[test]
fn sigint_at_any_moment_of_start_up() {
    let _s = root_session();
    signal_during_start_up(libc::SIGINT, &[0, 5, 15, 30, 45, 60, 80, 100, 150, 250]);
}
