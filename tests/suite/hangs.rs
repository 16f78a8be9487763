//! Hangs and deadlocks: threads blocked before waitprof attaches, for the whole session
//! (tests/fixtures/deadlock.c: two threads deadlocked on two mutexes, an acceptor, a
//! poller). Their complete stacks come from the snapshot of off-CPU threads, whatever
//! the build (frame pointers or not) and the attach method; the locks are named by their
//! variables; the finding names the threads, the locks, their holders and the cycle.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::common::*;

fn deadlock_fixture(frame_pointers: bool) -> String {
    let name = if frame_pointers {
        "deadlock-fp"
    } else {
        "deadlock-nofp"
    };
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let fp = if frame_pointers {
        "-fno-omit-frame-pointer"
    } else {
        "-fomit-frame-pointer"
    };
    let result = Command::new("cc")
        .args(["-O2", "-g", "-pthread", fp, "-o"])
        .arg(&out)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/deadlock.c"
        ))
        .output()
        .expect("running cc");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out.to_string_lossy().into_owned()
}

/// The fixture, and the port its acceptor listens on.
struct Deadlocked(Child, u16);

impl Drop for Deadlocked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(path: &str) -> Deadlocked {
    let mut child = Command::new(path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the fixture");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready "), "{line}");
    let port = line
        .trim()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .expect("a port");
    Deadlocked(child, port)
}

#[test]
fn a_deadlock_shows_every_thread_its_lock_and_who_holds_it() {
    let _s = root_session();
    for fp in [false, true] {
        let path = deadlock_fixture(fp);
        for attach in ["auto", "raw_tp"] {
            let what = format!("frame pointers {fp}, --attach {attach}");
            let target = start(&path);
            let pid = target.0.id().to_string();
            let run = waitprof(&["-p", &pid, "-d", "1s", "--attach", attach]);
            let folded = run.folded();
            let stderr = run.stderr();
            let session = run.session_ns();
            for (chain, name) in [
                (
                    &[
                        "start_thread",
                        "take_a_then_b",
                        "pthread_mutex_lock",
                        "[futex]",
                    ][..],
                    "take_a_then_b",
                ),
                (
                    &[
                        "start_thread",
                        "take_b_then_a",
                        "pthread_mutex_lock",
                        "[futex]",
                    ][..],
                    "take_b_then_a",
                ),
                (&["start_thread", "acceptor", "[accept4]"][..], "acceptor"),
                (&["start_thread", "poller", "[epoll_wait]"][..], "poller"),
                (&["main", "pthread_clockjoin", "[futex]"][..], "main"),
            ] {
                let us = attributed_us(&folded, chain);
                assert_close(&format!("{what}: {name}"), us * 1000, session, TOLERANCE);
            }
            assert!(
                !folded
                    .iter()
                    .any(|(s, _)| s.contains("[blocked before attach]")),
                "{what}: a wait without its stack"
            );
            assert!(
                stderr.contains("100.0% of blocked time with a stack reaches its thread's entry"),
                "{what}:\n{stderr}"
            );
            // the locks by their variables' names, and as contention though they were
            // taken before attach
            for lock in ["(a in deadlock-", "(b in deadlock-"] {
                let line = stderr
                    .lines()
                    .find(|l| l.trim_start().starts_with("futex ") && l.contains(lock))
                    .unwrap_or_else(|| panic!("{what}: {lock} not in the objects:\n{stderr}"));
                assert!(
                    line.contains("by 1 thread(s); lock contention"),
                    "{what}: {line}"
                );
            }
            let finding = stderr
                .lines()
                .find(|l| l.contains("waited the whole session"))
                .unwrap_or_else(|| panic!("{what}: no hang finding:\n{stderr}"));
            assert!(
                finding.starts_with("  1. 3 threads waited the whole session"),
                "{what}: {finding}"
            );
            for part in [
                "`take_a_then_b` (worker-ab-",
                "(b in deadlock-",
                "held by worker-ba-",
                "`take_b_then_a` (worker-ba-",
                "held by worker-ab-",
                "a deadlock: worker-",
            ] {
                assert!(
                    finding.contains(part),
                    "{what}: {part:?} missing from {finding}"
                );
            }
            assert!(stderr.contains("still waiting at the end:"), "{stderr}");
            let listener = format!(
                "`acceptor` in accept4 on listener 127.0.0.1:{} (fd ",
                target.1
            );
            assert!(stderr.contains(&listener), "{what}: {listener}\n{stderr}");
            assert!(
                stderr.contains("`poller` in epoll_wait"),
                "{what}:\n{stderr}"
            );
        }
    }
    assert_programs_unload();
}
