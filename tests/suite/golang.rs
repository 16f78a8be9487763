//! Go targets: a stripped binary (`-ldflags=-s -w`: no symbol table, no DWARF) still has
//! its functions named, from .gopclntab; and the runtime's idle threads, whose
//! frame-pointer chains run on through `runtime.mcall` into the goroutine that last ran
//! there, show the scheduler, never a goroutine's code.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use object::Object;

use super::common::*;

/// Builds the Go fixture (tests/fixtures/gofix) once per test run with `go build ARGS`.
fn go_fixture(name: &str, args: &[&str]) -> String {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = tmp.join(name);
    let result = Command::new("go")
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gofix"))
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOPATH", tmp.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("running go build (golang-go: .ci/setup installs it)");
    assert!(
        result.status.success(),
        "building the Go fixture failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out.to_string_lossy().into_owned()
}

fn stripped() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| go_fixture("gofix-stripped", &["-ldflags=-s -w"]))
}

fn plain() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| go_fixture("gofix", &[]))
}

#[test]
fn stripped_go_binary_still_names_its_functions() {
    let _s = root_session();
    let path = stripped();
    let data = std::fs::read(path).expect("reading the Go fixture");
    let file = object::File::parse(&*data).expect("an ELF file");
    assert!(
        file.symbols().next().is_none() && file.section_by_name(".debug_frame").is_none(),
        "the fixture is not stripped"
    );
    let run = waitprof(&["--", path, "10", "20"]);
    let folded = run.folded();
    let us = attributed_us(
        &folded,
        &["main.main", "main.napper", "main.nap", "[nanosleep]"],
    );
    assert_close(
        "stripped Go napper 10 20",
        us * 1000,
        run.measured_ns(),
        TOLERANCE,
    );
}

/// Checks one profile of the plain fixture: no scheduler wait under a goroutine's code,
/// some of it cut at runtime.mcall. Returns the folded lines.
fn idle_threads_in(args: &[&str]) -> (Run, Vec<(String, u64)>) {
    let all: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--", plain(), "10", "20"])
        .collect();
    let run = waitprof(&all);
    let folded = run.folded();
    let runtime_waits: Vec<&(String, u64)> = folded
        .iter()
        .filter(|(s, _)| s.contains(";[futex]_[i]") || s.contains(";[epoll_pwait]_[i]"))
        .collect();
    let total: u64 = runtime_waits.iter().map(|(_, v)| v).sum();
    assert!(
        total > 100_000,
        "only {total} us in futex and epoll:\n{folded:#?}"
    );
    for (s, v) in &runtime_waits {
        assert!(
            !s.split(';').any(|f| f.starts_with("main.")),
            "{args:?}: {v} us of the scheduler's waiting attributed to a goroutine: {s}"
        );
    }
    let cut = attributed_us(
        &folded,
        &["[go scheduler (g0)]", "runtime.mcall", "[futex]"],
    );
    assert!(cut > 0, "no futex wait cut at runtime.mcall:\n{folded:#?}");
    (run, folded)
}

/// With frame pointers only, the chains of idle threads run on into goroutines (300 ms of
/// this fixture's futex waits, without the cut): the cut must stop them. With the unwind
/// tables (Go's .debug_frame), the walk itself ends at runtime.mcall; and the goroutine's
/// own system call is complete and its own.
#[test]
fn go_idle_threads_show_no_goroutine_code() {
    let _s = root_session();
    idle_threads_in(&["--unwind", "fp"]);
    let (run, folded) = idle_threads_in(&[]);
    let us = attributed_us(
        &folded,
        &[
            "runtime.goexit",
            "main.main",
            "main.napper",
            "main.nap",
            "syscall.Nanosleep",
            "[nanosleep]",
        ],
    );
    assert_close("Go napper 10 20", us * 1000, run.measured_ns(), TOLERANCE);
}
