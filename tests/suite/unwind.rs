//! Complete user stacks where frame pointers stop: fixtures built without them (C with
//! gcc -fomit-frame-pointer, Rust with force-frame-pointers=no) block through known call
//! chains in a futex, epoll_wait and accept4. With the unwind tables every chain appears
//! whole, in order, from the thread's entry down to the syscall, with the time the
//! fixture measured; with frame pointers only it does not (which shows the fixtures
//! really are frameless).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::common::*;

/// Builds a fixture once per test run, into cargo's temporary directory for tests.
fn built(name: &str, cmd: impl FnOnce(&str) -> Command) -> String {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out_s = out.to_string_lossy().into_owned();
    let mut c = cmd(&out_s);
    let result = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
    assert!(
        result.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out_s
}

fn c_fixture() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        built("nofp-c", |out| {
            let mut c = Command::new("cc");
            c.args(["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-o", out])
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/nofp.c"
                ));
            c
        })
    })
}

fn rust_fixture() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        built("nofp-rust", |out| {
            let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            let mut c = Command::new(rustc);
            c.args(["--edition", "2021", "-O", "-C", "force-frame-pointers=no"])
                .args(["-C", "debuginfo=1", "-o", out])
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/nofp.rs"
                ));
            c
        })
    })
}

/// Profiles `fixture KIND 10 20` (10 waits of 20 ms) and checks that the blocked time
/// under `chain` (root to leaf, in order) is what the fixture measured, ±5%.
/// The fixture is built under the session lock, so no build competes for the CPU with
/// another test's session (its unwind tables load while the fixture warms up).
fn chain_is_whole(fixture: fn() -> &'static str, kind: &str, name: &str, chain: &[&str]) {
    let _s = root_session();
    let run = waitprof(&["--", fixture(), kind, "10", "20"]);
    let folded = run.folded();
    let us = attributed_us(&folded, chain);
    assert_close(
        &format!("{name} {kind} 10 20, whole chain"),
        us * 1000,
        run.measured_ns(),
        TOLERANCE,
    );
    let stderr = run.stderr();
    assert!(
        stderr.contains("user stacks: unwind tables of "),
        "no unwinding line:\n{stderr}"
    );
}

#[test]
fn c_without_frame_pointers_futex() {
    chain_is_whole(
        c_fixture,
        "futex",
        "C",
        &[
            "_start",
            "main",
            "futex_outer",
            "futex_middle",
            "futex_inner",
            "pthread_mutex_lock",
            "__lll_lock_wait",
            "[futex]",
        ],
    );
}

#[test]
fn c_without_frame_pointers_epoll() {
    chain_is_whole(
        c_fixture,
        "epoll",
        "C",
        &[
            "_start",
            "main",
            "epoll_outer",
            "epoll_middle",
            "epoll_inner",
            "epoll_wait",
            "[epoll_wait]",
        ],
    );
}

#[test]
fn c_without_frame_pointers_accept() {
    chain_is_whole(
        c_fixture,
        "accept",
        "C",
        &[
            "_start",
            "main",
            "accept_outer",
            "accept_middle",
            "accept_inner",
            "accept4",
            "[accept4]",
        ],
    );
}

#[test]
fn rust_without_frame_pointers_futex() {
    chain_is_whole(
        rust_fixture,
        "futex",
        "Rust",
        &[
            "_start",
            "nofp::main",
            "nofp::futex_outer",
            "nofp::futex_middle",
            "nofp::futex_inner",
            "lock_contended",
            "futex_wait",
            "[futex]",
        ],
    );
}

#[test]
fn rust_without_frame_pointers_epoll() {
    chain_is_whole(
        rust_fixture,
        "epoll",
        "Rust",
        &[
            "_start",
            "nofp::main",
            "nofp::epoll_outer",
            "nofp::epoll_middle",
            "nofp::epoll_inner",
            "[epoll_wait]",
        ],
    );
}

#[test]
fn rust_without_frame_pointers_accept() {
    chain_is_whole(
        rust_fixture,
        "accept",
        "Rust",
        &[
            "_start",
            "nofp::main",
            "nofp::accept_outer",
            "nofp::accept_middle",
            "nofp::accept_inner",
            "TcpListener>::accept",
            "[accept4]",
        ],
    );
}

/// Frame pointers alone lose the chain: glibc's lock wait has no frame pointer, so the
/// walk cannot find who called it. This is what the tables recover.
#[test]
fn frame_pointers_alone_lose_the_chain() {
    let _s = root_session();
    let run = waitprof(&["--unwind", "fp", "--", c_fixture(), "futex", "10", "20"]);
    let folded = run.folded();
    let blocked: u64 = folded
        .iter()
        .filter(|(s, _)| in_order(s, &["__lll_lock_wait", "[futex]"]))
        .map(|(_, v)| v)
        .sum();
    let whole: u64 = folded
        .iter()
        .filter(|(s, _)| in_order(s, &["futex_inner", "[futex]"]))
        .map(|(_, v)| v)
        .sum();
    assert!(
        blocked * 1000 >= run.measured_ns() * 95 / 100,
        "{blocked} us"
    );
    assert_eq!(whole, 0, "a frame-pointer walk found futex_inner");
    assert!(
        run.stderr().contains("user stacks: frame pointers only"),
        "{}",
        run.stderr()
    );
}

/// A stripped copy of the C fixture, with its debug information apart: by
/// `.gnu_debuglink` beside it, or by build id alone under /usr/lib/debug/.build-id
/// (removed after the test). Both name the chain, which the stripped file alone cannot.
#[test]
fn separate_debug_info_is_found_by_debuglink_and_by_build_id() {
    let _s = root_session();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    // a build id of our own, so that nothing else on the machine has its debug file
    let id: String = (0..20)
        .map(|i| format!("{:02x}", (std::process::id() as usize * 31 + i * 7) % 256))
        .collect();
    let sh = |cmd: &str| {
        let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&format!(
        "cc -O2 -g -fomit-frame-pointer -pthread -Wl,--build-id=0x{id} -o {} {}",
        d("full"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nofp.c")
    ));
    sh(&format!(
        "objcopy --only-keep-debug {f} {dbg} && strip --strip-all -o {link} {f} && \
         objcopy --add-gnu-debuglink={dbg} {link} && strip --strip-all -o {bare} {f}",
        f = d("full"),
        dbg = d("full.debug"),
        link = d("with-debuglink"),
        bare = d("stripped"),
    ));
    let chain = [
        "main",
        "epoll_outer",
        "epoll_middle",
        "epoll_inner",
        "[epoll_wait]",
    ];
    let named = |bin: &str| -> u64 {
        let run = waitprof(&["--", &d(bin), "epoll", "5", "20"]);
        attributed_us(&run.folded(), &["[epoll_wait]"]);
        run.folded()
            .iter()
            .filter(|(s, _)| in_order(s, &chain))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(
        named("stripped"),
        0,
        "the stripped file alone named the chain"
    );
    assert!(
        named("with-debuglink") >= 95_000,
        "not named through .gnu_debuglink"
    );
    /// Removes the installed debug file (and its directory if empty) however the test ends.
    struct Installed(String, String);
    impl Drop for Installed {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.1);
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let build_id_dir = format!("/usr/lib/debug/.build-id/{}", &id[..2]);
    let build_id_file = format!("{build_id_dir}/{}.debug", &id[2..]);
    std::fs::create_dir_all(&build_id_dir).expect("creating the build-id directory");
    let _installed = Installed(build_id_dir, build_id_file.clone());
    std::fs::copy(d("full.debug"), &build_id_file).expect("installing the debug file");
    let by_id = named("stripped");
    assert!(
        by_id >= 95_000,
        "not named through the build id: {by_id} us"
    );
}

/// Frame pointers or not, the frame that called a frameless wrapper is lost to a
/// frame-pointer walk: std's contended lock calls glibc's `syscall()` from
/// `futex_wait`, in the fixture built with frame pointers. The tables recover it.
#[test]
fn caller_of_a_frameless_wrapper_is_recovered_in_frame_pointer_code() {
    let _s = root_session();
    let chain = [
        "mutex_waiter",
        "lock_counter",
        "lock_contended",
        "futex_wait",
        "syscall",
        "[futex]",
    ];
    let run = profile_fixture(&[], &["mutex", "20", "20"]);
    let folded = run.folded();
    // the fixture starts at once: its first waits come before its tables are loaded
    // (or before those of the libraries it maps next), walked by frame pointer and
    // marked so; every other wait has the whole chain
    let us = attributed_us(&folded, &chain);
    let pending: u64 = folded
        .iter()
        .filter(|(s, _)| {
            (s.contains("[unknown: frame pointers only, unwind tables not loaded yet]")
                || s.contains("[unknown: frame pointers from code outside the unwind tables"))
                && in_order(s, &["mutex_waiter", "[futex]"])
        })
        .map(|(_, v)| v)
        .sum();
    eprintln!("whole chain {us} us, before the tables {pending} us");
    assert_close(
        "mutex 20 20 (FP code), whole chain or before the tables",
        (us + pending) * 1000,
        run.measured_ns(),
        TOLERANCE,
    );
    assert!(
        us * 2 >= us + pending,
        "{us} us whole, {pending} us before the tables"
    );
    let fp = profile_fixture(&["--unwind", "fp"], &["mutex", "20", "20"]);
    let lost: u64 = fp
        .folded()
        .iter()
        .filter(|(s, _)| in_order(s, &chain))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(lost, 0, "a frame-pointer walk found futex_wait's frame");
}

/// The summary's `walks reused:` counts: switch-outs whose user stack was a remembered
/// walk's, and those walked again because a word it read had changed; (0, 0) without it.
fn walks_reused(run: &Run) -> (u64, u64) {
    let stderr = run.stderr();
    let Some(line) = stderr.lines().find(|l| l.contains("walks reused:")) else {
        return (0, 0);
    };
    let number_before = |words: &str| -> u64 {
        let head = line.split(words).next().expect("split");
        head.rsplit(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number before {words:?} in {line:?}"))
    };
    (
        number_before(" switch-outs' user stacks"),
        number_before(" were walked again"),
    )
}

/// The distinct call paths (`branch_a`/`branch_b` chains) that the `stacks` fixture's
/// sleeps were seen blocked under.
fn distinct_paths(run: &Run) -> usize {
    let paths: std::collections::HashSet<String> = run
        .folded()
        .iter()
        .filter(|(s, _)| s.contains("stack_leaf"))
        .map(|(s, _)| {
            s.split(';')
                .filter(|f| f.contains("branch_a") || f.contains("branch_b"))
                .map(|f| if f.contains("branch_a") { 'a' } else { 'b' })
                .collect()
        })
        .collect();
    paths.len()
}

/// A switch-out's user stack is a walk remembered from the same registers only where
/// every stack word that walk read is unchanged (bpf/unwind.h, unwind_reuse).
/// - `relay`: two threads block 5,000 times each in `relay_wait`, always from the same
///   registers. Most switch-outs reuse a walk (9,559 of the 10,000 here), the waits keep
///   their time, and that time is all under the whole chain from the thread's entry.
/// - `stacks`: 3,000 sleeps, each through its own call path to the same sleep: the same
///   registers for many paths, a different return address read. Those are walked, and
///   the distinct paths seen are as many as with reuse off (`--recapture-every 1`): at
///   least 98% of the 3,000 (a 20-us sleep whose timer fires before it blocks leaves no
///   stack) and within 1% of each other. Reuse that skipped the check would merge them.
///   The fixture's first wait is 500 ms, so its tables are loaded before the sleeps
///   start: a walk by frame pointer through code no table covers yet is not remembered,
///   and the 3,000 sleeps take only about 100 ms.
#[test]
fn user_stacks_are_reused_only_where_every_word_the_walk_read_is_unchanged() {
    let _s = root_session();
    let relay = profile_fixture(&[], &["relay", "5000"]);
    let (reused, _) = walks_reused(&relay);
    assert!(
        reused >= 8_500,
        "{reused} of 10,000 switch-outs reused a walk:\n{}",
        relay.stderr()
    );
    let folded = relay.folded();
    let read = attributed_us(&folded, &["relay_wait", "[read]"]);
    let whole = attributed_us(
        &folded,
        &["start_thread", "scenario_relay", "relay_wait", "[read]"],
    );
    eprintln!("relay: {reused} walks reused; {whole} of {read} us under the whole chain");
    assert!(
        whole * 100 >= read * 99,
        "{whole} of {read} us in relay_wait under the whole chain"
    );
    assert_relay_waits(&relay, read * 1000);

    let stacks = ["stacks", "3000", "500"];
    let with = profile_fixture(&[], &stacks);
    let without = profile_fixture(&["--recapture-every", "1"], &stacks);
    let (_, changed) = walks_reused(&with);
    let (a, b) = (distinct_paths(&with), distinct_paths(&without));
    eprintln!("stacks: {changed} walked again (a word changed); {a} paths, {b} with reuse off");
    assert!(
        changed >= 2_700,
        "only {changed} sleeps found a remembered walk from their registers:\n{}",
        with.stderr()
    );
    assert_eq!(walks_reused(&without), (0, 0), "--recapture-every 1 reused");
    assert!(
        a >= 2_940 && b >= 2_940 && a.abs_diff(b) <= 30,
        "{a} distinct paths with reuse, {b} without, of 3,000"
    );
}
