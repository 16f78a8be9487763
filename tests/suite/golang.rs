//! Go targets: a stripped binary (`-ldflags=-s -w`: no symbol table, no DWARF) still has
//! its functions named, from .gopclntab; and the runtime's idle threads, whose
//! frame-pointer chains run on through `runtime.mcall` into the goroutine that last ran
//! there, show the scheduler, never a goroutine's code.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use object::{Object, ObjectSection};

use super::common::*;

/// Every Go toolchain on the machine: Debian's `go` (1.19) and the backports' (1.21-1.23,
/// installed by .ci/go-backports), whose runtimes differ in struct layouts and function
/// names. Each test runs against each.
pub(super) fn toolchains() -> &'static [(String, String)] {
    static GOS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    GOS.get_or_init(|| {
        let mut gos = vec!["go".to_string()];
        if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
            let mut more: Vec<String> = dirs
                .flatten()
                .filter(|d| d.file_name().to_string_lossy().starts_with("go-"))
                .map(|d| d.path().join("bin/go").to_string_lossy().into_owned())
                .filter(|p| std::path::Path::new(p).exists())
                .collect();
            more.sort();
            gos.extend(more);
        }
        let mut seen = Vec::new();
        for go in gos {
            let Ok(out) = Command::new(&go).arg("version").output() else {
                continue;
            };
            let version = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("")
                .to_string();
            if !version.is_empty() && !seen.iter().any(|(v, _)| *v == version) {
                seen.push((version, go));
            }
        }
        assert!(
            !seen.is_empty(),
            "no Go toolchain (golang-go: .ci/setup installs it)"
        );
        eprintln!(
            "Go toolchains: {:?}",
            seen.iter().map(|(v, _)| v).collect::<Vec<_>>()
        );
        seen
    })
}

/// Builds the Go fixture (tests/fixtures/gofix) with `GO build ARGS`.
pub(super) fn go_fixture(go: &str, name: &str, args: &[&str]) -> String {
    go_build(go, "gofix", name, args)
}

/// Builds the Go program in tests/fixtures/DIR with `GO build ARGS`, as NAME.
pub(super) fn go_build(go: &str, dir: &str, name: &str, args: &[&str]) -> String {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = tmp.join(name);
    let result = Command::new(go)
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(dir),
        )
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOPATH", tmp.join("gopath"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("running go build");
    assert!(
        result.status.success(),
        "building the Go fixture with {go} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out.to_string_lossy().into_owned()
}

#[test]
fn stripped_go_binary_still_names_its_functions() {
    let _s = root_session();
    for (version, go) in toolchains() {
        let path = &go_fixture(
            go,
            &format!("gofix-{version}-stripped"),
            &["-ldflags=-s -w"],
        );
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
            &format!("{version}, stripped: napper 10 20"),
            us * 1000,
            run.measured_ns(),
            TOLERANCE,
        );
    }
}

/// Checks one profile of the plain fixture: no scheduler wait under a goroutine's code,
/// some of it cut at runtime.mcall. Returns the folded lines.
fn idle_threads_in(fixture: &str, args: &[&str]) -> (Run, Vec<(String, u64)>) {
    let all: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--", fixture, "10", "20"])
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
    for (version, go) in toolchains() {
        let fixture = &go_fixture(go, &format!("gofix-{version}"), &[]);
        idle_threads_in(fixture, &["--unwind", "fp"]);
        let (run, folded) = idle_threads_in(fixture, &[]);
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
        assert_close(
            &format!("{version}: napper 10 20"),
            us * 1000,
            run.measured_ns(),
            TOLERANCE,
        );
    }
}

/// A `.gopclntab` whose function count was patched (the Go runtime never reads it) costs
/// the binary its names, never the session: the time is still there, under unknown
/// frames, and waitprof does not panic or balloon.
#[test]
fn a_crafted_gopclntab_costs_only_its_names() {
    let _s = root_session();
    let (version, go) = &toolchains()[0];
    let path = go_fixture(
        go,
        &format!("gofix-{version}-stripped"),
        &["-ldflags=-s -w"],
    );
    let mut data = std::fs::read(&path).expect("reading the Go fixture");
    let at = {
        let file = object::File::parse(&*data).expect("an ELF file");
        let tab = file.section_by_name(".gopclntab").expect(".gopclntab");
        tab.file_range().expect("in the file").0 as usize
    };
    for (i, nfunc) in [u64::MAX, 1 << 40, 0x0fff_ffff].into_iter().enumerate() {
        data[at + 8..at + 16].copy_from_slice(&nfunc.to_le_bytes());
        let crafted = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gofix-crafted-{i}"));
        std::fs::write(&crafted, &data).unwrap();
        std::fs::set_permissions(
            &crafted,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let run = waitprof(&["--", crafted.to_str().unwrap(), "10", "20"]);
        let stderr = run.stderr();
        assert!(!stderr.contains("panicked"), "nfunc {nfunc:#x}:\n{stderr}");
        let folded = run.folded();
        assert!(
            !folded.iter().any(|(s, _)| s.contains("main.nap")),
            "nfunc {nfunc:#x}: names from a table that lies"
        );
        // the nap's sleeps are there, beside the runtime's own (sysmon sleeps too)
        let us = attributed_us(&folded, &["[nanosleep]"]);
        assert!(
            us * 1000 >= run.measured_ns() * 95 / 100,
            "nfunc {nfunc:#x}: {us} us in nanosleep, the nap measured {} ns",
            run.measured_ns()
        );
    }
}
