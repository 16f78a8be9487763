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

/// Without the tracked syscalls' own exit tracepoints (an empty directory stands for
/// them), the flavour's program runs at every syscall's exit: the waits, and the
/// outcomes their exits give (ten timed-out condvar waits and one woken), are the same.
#[test]
fn without_syscall_tracepoints_every_syscall_exit_is_hooked() {
    let _s = root_session();
    let empty = tempfile::tempdir().expect("a temporary directory");
    let events = empty.path().to_str().expect("a UTF-8 path");
    let mut outcomes = Vec::new();
    for env in [None, Some(events)] {
        let run = waitprof_with(
            |cmd| {
                if let Some(dir) = env {
                    cmd.env("WAITPROF_SYSCALL_EVENTS", dir);
                }
            },
            &["--", FIXTURE, "condvar", "10", "50"],
        );
        let err = run.stderr();
        let hook = match env {
            None => "attached with tp_btf (the exits of 8 tracked syscalls)",
            Some(_) => {
                "attached with tp_btf (every syscall's exit (no syscall exit tracepoints under"
            }
        };
        assert!(err.contains(hook), "{err}");
        let folded = run.folded();
        let us = attributed_us(&folded, &["scenario_condvar", "condvar_waiter", "[futex]"]);
        assert_close("condvar", us * 1000, run.measured_ns(), TOLERANCE);
        let line = err
            .lines()
            .find(|l| l.trim_start().starts_with("futex "))
            .unwrap_or_else(|| panic!("no futex line in:\n{err}"))
            .to_string();
        outcomes.push(line.split_once("calls: ").map(|(_, o)| o.to_string()));
    }
    assert!(
        outcomes.iter().all(|o| o
            .as_deref()
            .is_some_and(|o| o.contains("1 woken") && o.contains("10 timed out"))),
        "{outcomes:?}"
    );
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
    // 3 s of sleeps: starting (about 0.9 s in a debug build, more on a busy machine)
    // takes part, and at least 0.5 s must remain
    let mut child = Command::new(FIXTURE)
        .args(["sleep", "30", "100"])
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

/// A target confined to CPU 0 (as `taskset -c 0` does): every thread of waitprof runs on
/// the other CPUs for the whole session, so its own work takes no CPU time from it.
#[test]
fn waitprof_keeps_off_the_cpus_a_pinned_target_is_confined_to() {
    let _s = root_session();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: one CPU, nowhere else to run");
        return;
    }
    let fixture = Fixture::start(&["park"], "parked");
    for task in std::fs::read_dir(format!("/proc/{}/task", fixture.pid())).expect("tasks") {
        let tid: i32 = task
            .expect("a task")
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("a tid");
        // SAFETY: a zeroed cpu_set_t is empty; CPU 0 is within it; tid is the fixture's.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set),
                0,
                "pinning the fixture"
            );
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_waitprof(fixture.pid(), &dir.path().join("out.svg"));
    let (started, stderr) = watch_stderr(&mut child);
    started
        .recv_timeout(Duration::from_secs(20))
        .expect("waitprof did not start recording");
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", child.id())).expect("tasks") {
        let path = task.expect("a task").path();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        threads.push((name.trim().to_string(), allowed));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("waitprof");
    let stderr = stderr.join().expect("the stderr reader");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(threads.len() >= 2, "{threads:?}");
    for (name, allowed) in &threads {
        let cpus: Vec<&str> = allowed.split(',').collect();
        assert!(
            !cpus.iter().any(|c| *c == "0" || c.starts_with("0-")),
            "waitprof thread {name} may run on CPU 0: {allowed}"
        );
    }
    assert!(
        stderr.contains("the target may run on CPU 0 only: waitprof ran on CPU 1"),
        "{stderr}"
    );
}
