//! Bad input: one clear line, a non-zero exit, no panic, and nothing written.

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::common::*;

fn assert_error(run: &Run, code: i32, message: &str) {
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(code), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains(message),
        "expected {message:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "waitprof panicked:\n{stderr}");
    assert!(!run.svg.exists(), "nothing is written on error");
}

#[test]
fn not_root() {
    let run = waitprof_with(
        |cmd| {
            cmd.uid(65534).gid(65534);
        },
        &["-p", "1", "-d", "1s"],
    );
    assert_error(&run, 2, "must run as root");
    assert!(run.stderr().contains("sudo"), "{}", run.stderr());
}

#[test]
fn no_such_pid() {
    let _s = root_session();
    assert_error(
        &waitprof(&["-p", "4194000", "-d", "1s"]),
        2,
        "no process with pid 4194000",
    );
}

#[test]
fn kernel_thread() {
    let _s = root_session();
    // pid 2 is kthreadd
    assert_error(&waitprof(&["-p", "2", "-d", "1s"]), 2, "is a kernel thread");
}

#[test]
fn thread_of_another_process() {
    let _s = root_session();
    let me = std::process::id().to_string();
    assert_error(
        &waitprof(&["-p", "1", "-t", &me, "-d", "1s"]),
        2,
        "is not a thread of process 1",
    );
}

/// A short session with the environment variable `name` set to `value`, which must end
/// with exit 2 and `message`.
fn refused_with_env(name: &str, value: &str, message: &str) -> Run {
    let _s = root_session();
    let run = waitprof_with_env(name, value, &["-d", "1s", "--", FIXTURE, "sleep", "1", "1"]);
    assert_error(&run, 2, message);
    run
}

#[test]
fn kernel_without_btf() {
    let run = refused_with_env(
        "WAITPROF_KERNEL_BTF",
        "/nonexistent/btf/vmlinux",
        "this kernel has no BTF",
    );
    assert!(
        run.stderr().contains("CONFIG_DEBUG_INFO_BTF"),
        "{}",
        run.stderr()
    );
}

/// The tests' switch-in setting with a typo is refused, not taken as off.
#[test]
fn unreadable_test_setting_is_refused() {
    refused_with_env(
        "WAITPROF_TEST_DROP_SWITCH_INS",
        "every other",
        "WAITPROF_TEST_DROP_SWITCH_INS=\"every other\" is not a number",
    );
}

#[test]
fn oversized_tables_are_refused_by_name() {
    let _s = root_session();
    // over what the flag allows: refused before anything is loaded
    let run = profile_fixture(
        &["--max-threads", "4294967295", "-d", "1s"],
        &["sleep", "1", "1"],
    );
    assert_error(
        &run,
        2,
        "--max-threads 4294967295 is too large: at most 1048576",
    );
    // allowed, but more than the kernel will give this memory cgroup (200 MB): the
    // kernel's refusal names the table and its flag, not every attach method
    let cgroup = std::path::Path::new("/sys/fs/cgroup/memory/waitprof-test-tables");
    std::fs::create_dir_all(cgroup)
        .expect("a cgroup v1 memory controller at /sys/fs/cgroup/memory");
    std::fs::write(cgroup.join("memory.limit_in_bytes"), "200M")
        .expect("setting the cgroup's limit");
    let procs = cgroup.join("cgroup.procs");
    let run = waitprof_with(
        |cmd| {
            let procs = procs.clone();
            // SAFETY: only a write to a file between fork and exec
            unsafe {
                cmd.pre_exec(move || std::fs::write(&procs, "0"));
            }
        },
        &[
            "--stack-storage-size",
            "1048576",
            "-d",
            "1s",
            "--",
            FIXTURE,
            "sleep",
            "1",
            "1",
        ],
    );
    let _ = std::fs::remove_dir(cgroup);
    assert_error(
        &run,
        2,
        "the kernel refused to create the table stacks with 1048576 entries (--stack-storage-size)",
    );
    assert!(
        !run.stderr().contains("no attach method works"),
        "{}",
        run.stderr()
    );
    assert_programs_unload();
}

#[test]
fn nothing_blocked_writes_no_svg() {
    let _s = root_session();
    // only accept waits are drawn, and the fixture never accepts
    let run = profile_fixture(&["--kinds", "accept"], &["condvar", "2", "20"]);
    assert_error(&run, 1, "nothing to draw");
    assert!(!run.folded_path.exists());
}

/// The target is gone before waitprof attaches (it exited and nobody reaped it yet).
#[test]
fn pid_gone_before_attach() {
    let _s = root_session();
    let mut child = Command::new("true").spawn().expect("true");
    let pid = child.id().to_string();
    wait_until(
        "the child to exit",
        std::time::Duration::from_secs(5),
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")),
    );
    let run = waitprof(&["-p", &pid, "-d", "1s"]);
    assert_error(&run, 2, &format!("process {pid} has already exited"));
    let _ = child.wait();
}

#[test]
fn command_not_found() {
    let _s = root_session();
    let run = waitprof(&["-d", "1s", "--", "/nonexistent/server"]);
    assert_error(&run, 2, "command not found: /nonexistent/server");
}

#[test]
fn unwritable_output() {
    let _s = root_session();
    let out = Command::new(WAITPROF)
        .args([
            "-d",
            "1s",
            "-o",
            "/proc/waitprof/out.svg",
            "--",
            FIXTURE,
            "sleep",
            "1",
            "1",
        ])
        .output()
        .expect("waitprof");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot create the output directory /proc/waitprof"),
        "{stderr}"
    );
}

#[test]
fn bad_flags() {
    for (args, message) in [
        (
            &["-p", "1", "-d", "0"][..],
            "duration must be greater than zero",
        ),
        (&["-p", "1", "--duration=-2s"][..], "must not be negative"),
        (&["-p", "1", "--kinds", "disk"][..], "unknown kind \"disk\""),
        (&[][..], "nothing to profile"),
        (&["-p", "abc"][..], "invalid value 'abc'"),
        (&["-p", "-3"][..], "unexpected argument '-3'"),
        (
            &["-p", "1", "--max-rows", "0"][..],
            "--max-rows must be at least 1",
        ),
        (
            &["-p", "1", "--recapture-every", "0"][..],
            "--recapture-every must be at least 1",
        ),
    ] {
        let run = waitprof(args);
        assert_error(&run, 2, message);
    }
}
