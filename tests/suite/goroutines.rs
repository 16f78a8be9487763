//! The goroutine view of Go programs: goroutines that wait in known functions for known
//! reasons (tests/fixtures/gowaits, which measures its own waits), built with every Go
//! on the machine, with and without symbols and DWARF; the runtime layouts waitprof
//! carries checked against each binary's DWARF and symbol table; and a goroutine list
//! that churns while it is read, which must never yield a stack a goroutine did not have.

use object::{Object, ObjectSymbol};
use waitprof::runtime::go::{binary, offsets, pclntab::GoFuncs};

use super::common::*;
use super::golang::{go_build, toolchains};

/// Sampled time against the fixture's own measurement.
const TOLERANCE: f64 = 0.05;
/// The fixture's phase: its goroutines start together and end together, each within an
/// interval between two sweeps of where the samples say, so the error of a whole-phase
/// wait is at most two intervals in `PHASE_NS`, which the tolerance grows to when the
/// sweeps ran further apart (an unoptimised build sweeps five times slower within the
/// same CPU budget: 120-200 ms apart with `--timeline`), up to 15%.
const PHASE_NS: f64 = 4e9;

fn phase_tolerance(stderr: &str) -> f64 {
    TOLERANCE
        .max(2.0 * sweep_interval_ns(stderr) / PHASE_NS)
        .min(0.15)
}
/// A goroutine created half-way through that sleeps 500 ms then exits: 50 samples at
/// the fastest rate, so one sample either way is 2%. Its start and its end each fall
/// somewhere between two sweeps (its time counted from the first sweep that saw it to
/// the first that did not): the error is at most one interval between sweeps in all,
/// which the tolerance grows to when the sweeps ran further apart (a debug build sweeps
/// several times slower within the same budget: 102 ms apart at most here; in CI on
/// 2026-12-07, 134 ms or more, when a cap of 25% failed a 26.8% error, and 205 ms in
/// another run). The sweeps themselves must come at most LATE_MAX * 500 ms apart: a
/// sampler that stalls fails.
const LATE_TOLERANCE: f64 = 0.10;
const LATE_MAX: f64 = 0.80;
const LATE_NS: f64 = 500e6;

/// The longest interval between sweeps the summary reports ("at most N ms apart").
fn sweep_interval_ns(stderr: &str) -> f64 {
    stderr
        .split(" ms apart")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(0.0, |ms| ms * 1e6)
}

fn gowaits(go: &str, version: &str, stripped: bool) -> String {
    if stripped {
        go_build(
            go,
            "gowaits",
            &format!("gowaits-{version}-s"),
            &["-ldflags=-s -w"],
        )
    } else {
        go_build(go, "gowaits", &format!("gowaits-{version}"), &[])
    }
}

/// The runtime's own samples (1 in 8 goroutine transitions, its mutex time scaled by 8)
/// against the fixture: a wrong offset would read garbage, far outside this; the
/// runtime's sampling and its histogram's quarter-octave buckets account for the rest.
const RUNTIME_TOLERANCE: f64 = 0.25;

/// The number and unit after `key` in the summary's lines on the runtime's own
/// statistics: `41.9 ms`.
fn runtime_line(stderr: &str, key: &str) -> Option<String> {
    let line = stderr
        .lines()
        .skip_while(|l| !l.contains("the runtime's own sample"))
        .take(2)
        .find(|l| l.contains(key))?;
    let rest = &line[line.find(key)? + key.len()..];
    let words: Vec<&str> = rest.split_whitespace().take(2).collect();
    (words.len() == 2).then(|| words.join(" "))
}

/// `NAME_ns=N` from the fixture's `measured ...` line.
fn measured(stdout: &str, name: &str) -> u64 {
    let key = format!("{name}_ns=");
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the fixture printed no {name}:\n{stdout}"))
}

/// Runs waitprof on `fixture ARGS` and returns the run and its goroutine view's lines.
fn profile(fixture: &str, args: &[&str]) -> (Run, Vec<(String, u64)>) {
    let all: Vec<&str> = ["--"]
        .into_iter()
        .chain([fixture])
        .chain(args.iter().copied())
        .collect();
    let run = waitprof(&all);
    assert_eq!(run.code(), Some(0), "waitprof failed:\n{}", run.stderr());
    let path = run.svg.with_extension("goroutines.folded");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no goroutine view ({e}):\n{}", run.stderr()));
    (run, parse_folded(&text))
}

/// With `--timeline` each goroutine is a track (under the goroutines' own), named by its
/// function, with its sampled states as slices, each with its stack: the six pool
/// workers' `chan receive`
/// slices in `main.(*Pool).Get` add up to what the goroutine flame graph gives them
/// (within 1%: the same samples) and to what the fixture measured (±5%); no two slices of
/// a track overlap (protoc decodes the trace, independently of the writer).
#[test]
fn goroutines_are_tracks_on_the_timeline() {
    let _s = root_session();
    let (version, go) = &toolchains()[0];
    let bin = gowaits(go, version, false);
    let run = waitprof(&["--timeline", "--", &bin, "waits", "4000"]);
    assert_eq!(run.code(), Some(0), "waitprof failed:\n{}", run.stderr());
    let text = std::fs::read_to_string(run.svg.with_extension("goroutines.folded"))
        .unwrap_or_else(|e| panic!("no goroutine view ({e}):\n{}", run.stderr()));
    let folded = parse_folded(&text);
    let (slices, _) = super::exports::decode_trace(&run.svg.with_extension("pftrace"));
    let has = |s: &super::exports::TraceSlice, key: &str, what: &str| {
        s.annotations
            .iter()
            .any(|(k, v)| k == key && v.split('\n').any(|f| f == what))
    };
    // Go 1.21 on names a worker by its function; before, by the `go` statement's closure
    let workers: std::collections::BTreeSet<&str> = slices
        .iter()
        .filter(|s| s.thread.starts_with("goroutine ") && has(s, "stack", "main.poolWorker"))
        .map(|s| s.thread.as_str())
        .collect();
    assert_eq!(workers.len(), 6, "the pool's workers: {workers:?}");
    if binary::minor_version(version).is_some_and(|m| m >= 21) {
        assert!(
            workers.iter().all(|w| w.ends_with(": main.poolWorker")),
            "{workers:?}"
        );
    }
    let waits: u64 = slices
        .iter()
        .filter(|s| workers.contains(s.thread.as_str()) && s.name == "chan receive")
        .filter(|s| has(s, "in", "main.(*Pool).Get"))
        .map(|s| s.to - s.from)
        .sum();
    let graph_ns = attributed_us(&folded, &["main.(*Pool).Get", "[chan receive]"]) * 1000;
    assert_close(
        "timeline against the goroutine graph",
        waits,
        graph_ns,
        0.01,
    );
    assert_close(
        "timeline against the fixture",
        waits,
        measured(&run.stdout(), "pool"),
        phase_tolerance(&run.stderr()),
    );
    // the summary counts what the timeline kept of the goroutines
    assert!(
        run.stderr().contains("goroutine spells ("),
        "{}",
        run.stderr()
    );
}

#[test]
fn goroutine_waits_match_what_the_fixture_measured_for_every_go() {
    let _s = root_session();
    for (version, go) in toolchains() {
        let minor: u32 = binary::minor_version(version).expect("a go1.N version");
        for stripped in [false, true] {
            let what =
                |w: &str| format!("{version}{}: {w}", if stripped { " stripped" } else { "" });
            let (run, folded) = profile(&gowaits(go, version, stripped), &["waits", "4000"]);
            let out = run.stdout();
            let stderr = run.stderr();
            assert!(
                stderr.contains(&format!("goroutines ({version};")),
                "the summary does not name {version}:\n{stderr}"
            );
            let from = if stripped {
                "waitprof's table for Go"
            } else {
                "DWARF"
            };
            assert!(
                stderr.contains(&format!("g layout from {from}")),
                "{stderr}"
            );
            // the mutex's wait reason is its own from Go 1.21 on
            let lock = if minor >= 21 {
                "[sync.Mutex.Lock]"
            } else {
                "[semacquire]"
            };
            let phase = phase_tolerance(&stderr);
            assert!(
                sweep_interval_ns(&stderr) <= LATE_MAX * LATE_NS,
                "the sweeps came too far apart:\n{stderr}"
            );
            for (name, frames, tolerance) in [
                (
                    "pool",
                    vec![
                        "runtime.goexit",
                        "main.poolWorker",
                        "main.(*Pool).Get",
                        "runtime.gopark",
                        "[chan receive]",
                    ],
                    phase,
                ),
                (
                    "mutex",
                    vec![
                        "runtime.goexit",
                        "main.lockedWork",
                        "sync.(*Mutex).lockSlow",
                        "runtime.gopark",
                        lock,
                    ],
                    phase,
                ),
                (
                    "chan",
                    vec![
                        "runtime.goexit",
                        "main.consumer",
                        "runtime.chanrecv",
                        "[chan receive]",
                    ],
                    phase,
                ),
                (
                    "select",
                    vec![
                        "runtime.goexit",
                        "main.selector",
                        "runtime.selectgo",
                        "[select]",
                    ],
                    phase,
                ),
                (
                    "net",
                    vec![
                        "runtime.goexit",
                        "main.slowRead",
                        "net.(*conn).Read",
                        "internal/poll.(*FD).Read",
                        "runtime.netpollblock",
                        "[IO wait]",
                    ],
                    phase,
                ),
                (
                    "sleep",
                    vec!["runtime.goexit", "main.napper", "time.Sleep", "[sleep]"],
                    phase,
                ),
                (
                    "late",
                    vec![
                        "runtime.goexit",
                        "main.lateSleeper",
                        "time.Sleep",
                        "[sleep]",
                    ],
                    LATE_TOLERANCE.max(sweep_interval_ns(&stderr) / LATE_NS),
                ),
                // before Go 1.23 a goroutine in a syscall saved no frame pointer: its
                // first frame goes by the function table
                (
                    "syscall",
                    vec![
                        "runtime.goexit",
                        "main.slowSyscall",
                        "syscall.Nanosleep",
                        "[in a syscall]",
                    ],
                    phase,
                ),
            ] {
                let us = attributed_us(&folded, &frames);
                assert_close(&what(name), us * 1000, measured(&out, name), tolerance);
            }
            // the thread view shows whose code blocked the thread: a Go thread in a
            // system call runs on the goroutine's stack
            let thread_us = attributed_us(&run.folded(), &["main.slowSyscall", "[nanosleep]"]);
            assert_close(
                &what("the blocked thread, in the thread view"),
                thread_us * 1000,
                measured(&out, "syscall"),
                TOLERANCE,
            );
            // the thread it blocked is named with it
            assert!(
                stderr.contains("ran goroutine") && stderr.contains("in `main.slowSyscall`"),
                "{stderr}"
            );
            // the findings name the pool and the lock by the program's own functions
            assert!(
                stderr.contains("in `main.(*Pool).Get` (chan receive)"),
                "{stderr}"
            );
            assert!(stderr.contains("in `main.lockedWork`"), "{stderr}");
            // the runtime's own goroutines are idle, never a finding
            let findings = stderr.split("findings (").nth(1).unwrap_or("");
            assert!(
                !findings.contains("`runtime."),
                "a runtime goroutine in the findings:\n{stderr}"
            );
            // a sync.Mutex is named as such, also where Go 1.19 calls the wait semacquire
            assert!(
                findings.contains("`sync.Mutex.Lock` in `main.lockedWork`"),
                "{stderr}"
            );
            // the runtime's own estimate of the mutex wait (Go 1.20 on), from runtime.sched:
            // it needs the symbol table
            let estimate = runtime_line(&stderr, "sync.Mutex and sync.RWMutex: ");
            match (stripped, minor >= 21) {
                (false, true) => assert_close(
                    &what("the runtime's mutex estimate"),
                    parse_duration(&estimate.expect("an estimate")),
                    measured(&out, "mutex"),
                    RUNTIME_TOLERANCE,
                ),
                (false, false) => assert!(estimate.is_none(), "{stderr}"),
                (true, _) => assert!(
                    stderr.contains("latency histogram was not read: a stripped binary"),
                    "{stderr}"
                ),
            }
        }
    }
}

#[test]
fn goroutines_runnable_behind_cpu_bound_ones_at_gomaxprocs_1() {
    let _s = root_session();
    for (version, go) in toolchains() {
        let (run, folded) = profile(&gowaits(go, version, false), &["runnable", "3000"]);
        let us = attributed_us(
            &folded,
            &[
                "runtime.goexit",
                "main.spinner",
                "[runnable: waiting for a P]",
            ],
        );
        // spinners not yet running show as their start only
        let unstarted: u64 = folded
            .iter()
            .filter(|(s, _)| {
                s.ends_with("[runnable: waiting for a P]_[j]") && !s.contains("main.spinner")
            })
            .map(|(_, v)| v)
            .sum();
        assert_close(
            &format!("{version}: runnable"),
            (us + unstarted) * 1000,
            measured(&run.stdout(), "runnable"),
            TOLERANCE,
        );
        let stderr = run.stderr();
        assert!(stderr.contains("runnable for a P"), "no finding:\n{stderr}");
        // the running goroutine's own stack, from the on-CPU samples of its thread (its
        // registers are live on the CPU, where the sweeps cannot read them)
        let running: u64 = folded
            .iter()
            .filter(|(s, _)| s.ends_with("[running]_[j]"))
            .map(|(_, v)| v)
            .sum();
        let spinning = attributed_us(&folded, &["main.spinner", "[running]"]);
        assert!(
            running > 0 && spinning as f64 >= 0.9 * running as f64,
            "{version}: {spinning} of {running} us running is under main.spinner:\n{stderr}"
        );
        assert!(
            stderr.contains("running goroutines' stacks from "),
            "{stderr}"
        );
        // the netpoller: with the P busy, sysmon polls it every 10 ms or so, so no gap
        // between polls comes near a finding (50 ms)
        let netpoller = stderr
            .lines()
            .find(|l| l.trim_start().starts_with("netpoller: "))
            .unwrap_or_else(|| panic!("no netpoller line:\n{stderr}"));
        let polls: u64 = netpoller
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(polls >= 100, "{version}: {netpoller}");
        assert!(!stderr.contains("was not polled for"), "{stderr}");
        // the runtime's own histogram: the bucket of its median holds the fixture's
        let p50 = runtime_line(&stderr, "p50 <= ").expect("the runtime's histogram");
        let (got, want) = (parse_duration(&p50), measured(&run.stdout(), "spell_p50"));
        assert!(
            got as f64 >= want as f64 * 0.8 && got as f64 <= want as f64 * 1.6,
            "{version}: the runtime's p50 (upper bound) {got} ns, the fixture's {want} ns:\n{stderr}"
        );
    }
}

/// Offsets, the goroutine list and the wait reasons that a stripped binary is read with
/// (the table, the code of runtime.allgadd) are what the same binary's DWARF and symbol
/// table say, for every Go on the machine.
#[test]
fn the_runtime_layout_tables_match_each_binarys_dwarf_and_symbols() {
    let _s = serial();
    for (version, go) in toolchains() {
        let path = gowaits(go, version, false);
        let data = std::fs::read(&path).expect("reading the fixture");
        let file = object::File::parse(&*data).expect("an ELF file");
        let minor = binary::minor_version(version).expect("a go1.N version");
        let dwarf = offsets::from_dwarf(&file)
            .expect("DWARF parses")
            .expect("DWARF present");
        assert_eq!(
            offsets::table(minor),
            Some(dwarf),
            "{version}: the table differs from DWARF"
        );
        let allgs = file
            .symbols()
            .find(|s| s.name() == Ok("runtime.allgs"))
            .expect("runtime.allgs in the symbol table")
            .address();
        let funcs = GoFuncs::load(&*data);
        assert_eq!(
            binary::allgs_from_code(&file, funcs.as_ref()),
            Some(allgs),
            "{version}: runtime.allgadd's code gives another address"
        );
        let read = binary::GoBinary::read(&*data).expect("a Go binary");
        assert_eq!(read.version, *version);
        let layout = read.layout.expect("a layout");
        assert_eq!(layout.wait_reasons_from, "runtime.waitReasonStrings");
        let table: Vec<String> = offsets::wait_reasons(minor)
            .expect("a wait reason table")
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(layout.wait_reasons, table, "{version}: wait reasons differ");
        // and stripped, the same from the table and the code
        let stripped = std::fs::read(gowaits(go, version, true)).expect("reading");
        let s = binary::GoBinary::read(&*stripped)
            .expect("a Go binary")
            .layout
            .expect("a layout");
        assert_eq!(
            (s.offsets, s.allgs_from),
            (dwarf, "the code of runtime.allgadd")
        );
    }
}

/// 10,000 goroutines parked in main.parked, a tenth replaced every 10 ms: a sweep reads
/// goroutines as they are created and destroyed. Every stack shown must be one a
/// goroutine of the fixture had: parked in main.parked, or not yet run (its start).
#[test]
fn a_goroutine_list_that_churns_never_gives_a_stack_a_goroutine_did_not_have() {
    let _s = root_session();
    let (version, go) = toolchains().last().expect("a Go");
    let (run, folded) = profile(
        &gowaits(go, version, false),
        &["idle", "3000", "10000", "10"],
    );
    let parked = "main.parked;runtime.chanrecv1;runtime.chanrecv;runtime.gopark;[chan receive]_[j]";
    let mut total = 0;
    for (stack, us) in &folded {
        let Some(at) = stack.find("main.parked") else {
            continue;
        };
        total += us;
        let tail = &stack[at..];
        // a running goroutine's stack comes from an on-CPU sample of its thread: it ran
        // main.parked into the runtime's channel receive
        let running_in_runtime = tail.strip_suffix(";[running]_[j]").is_some_and(|t| {
            t.split(';')
                .skip(1)
                .all(|f| f.starts_with("runtime.") || f.starts_with("[unknown"))
        });
        assert!(
            tail == parked
                || tail == "main.parked;[runnable: waiting for a P]_[j]"
                || tail == "main.parked;[running]_[j]"
                || running_in_runtime,
            "a stack main.parked never had: {stack}\n{}",
            run.stderr()
        );
    }
    assert!(
        total > 1_000_000,
        "only {total} us of main.parked:\n{}",
        run.stderr()
    );
    let stderr = run.stderr();
    let raced = stderr
        .split(" samples taken while the goroutine ran")
        .next()
        .and_then(|r| r.rsplit(' ').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no race count:\n{stderr}"));
    eprintln!("{version}: {raced} samples raced with the runtime, {total} us of main.parked");
}

#[test]
fn no_goroutines_turns_the_view_off() {
    let _s = root_session();
    let (version, go) = toolchains().last().expect("a Go");
    let fixture = gowaits(go, version, false);
    let run = waitprof(&["--no-goroutines", "--", &fixture, "waits", "500"]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
    assert!(!run.svg.with_extension("goroutines.svg").exists());
    assert!(!run.stderr().contains("goroutines ("), "{}", run.stderr());
}
