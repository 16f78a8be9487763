//! Folding, rendering and the summary are pure: a hand-made profile must always give the
//! same text, byte for byte. `WAITPROF_BLESS=1 cargo test golden` rewrites the files.

use std::collections::HashMap;
use std::path::Path;

use waitprof::fold::{self, FoldOptions};
use waitprof::model::{Collected, EndReason, Kind, Losses, Outcome, Row, StackRef, ThreadTotals};
use waitprof::symbolize::Symbols;
use waitprof::{render, summary};

const MS: u64 = 1_000_000;

/// One row; `stacks` is (user, kernel), `ns` is (blocked, run-queue).
fn row(
    tid: u32,
    kind: Kind,
    syscall: Option<u32>,
    outcome: Outcome,
    stacks: (StackRef, StackRef),
    ns: (u64, u64),
) -> Row {
    let ((ustack, kstack), (blocked_ns, runq_ns)) = (stacks, ns);
    Row {
        tid,
        kind,
        syscall,
        outcome,
        ustack,
        kstack,
        count: 1,
        blocked_ns,
        runq_ns,
    }
}

fn thread(tid: u32, comm: &str, oncpu: u64, blocked: u64, runq: u64) -> ThreadTotals {
    ThreadTotals {
        tid,
        comm: comm.into(),
        start_ns: 0,
        end_ns: oncpu + blocked + runq,
        oncpu_ns: oncpu,
        blocked_ns: blocked,
        runq_ns: runq,
        exited: false,
    }
}

/// A server with an acceptor, an epoll worker and a lock waiter.
fn profile() -> (Collected, Symbols) {
    let collected = Collected {
        pid: 100,
        comm: "server".into(),
        start_ns: 0,
        end_ns: 1000 * MS,
        rows: vec![
            row(
                101,
                Kind::Accept,
                Some(288),
                Outcome::Ok,
                (StackRef::Id(1), StackRef::Id(11)),
                (900 * MS, 2 * MS),
            ),
            row(
                102,
                Kind::Epoll,
                Some(232),
                Outcome::Timeout,
                (StackRef::Id(2), StackRef::Id(12)),
                (700 * MS, 0),
            ),
            row(
                102,
                Kind::Epoll,
                Some(232),
                Outcome::Ok,
                (StackRef::Id(2), StackRef::Id(12)),
                (100 * MS, 50 * MS),
            ),
            row(
                103,
                Kind::Futex,
                Some(202),
                Outcome::Ok,
                (StackRef::Id(3), StackRef::Id(13)),
                (300 * MS, 100 * MS),
            ),
            row(
                103,
                Kind::Other,
                None,
                Outcome::None,
                (StackRef::Id(3), StackRef::Missing(14)),
                (0, 40 * MS),
            ),
            row(
                104,
                Kind::Futex,
                Some(202),
                Outcome::Unfinished,
                (StackRef::BeforeAttach, StackRef::Proc(0)),
                (1000 * MS, 0),
            ),
            // rounds to 0 us: dropped from the folded output
            row(
                104,
                Kind::Other,
                Some(0),
                Outcome::None,
                (StackRef::Id(4), StackRef::Id(99)),
                (400, 0),
            ),
        ],
        stacks: HashMap::new(),
        proc_kstacks: vec![vec![
            "do_syscall_64".into(),
            "futex_wait".into(),
            "schedule".into(),
        ]],
        threads: vec![
            thread(101, "acceptor", 98 * MS, 900 * MS, 2 * MS),
            thread(102, "worker-0", 150 * MS, 800 * MS, 50 * MS),
            thread(103, "worker-1", 460 * MS, 300 * MS, 140 * MS),
            thread(104, "parked", 0, 1000 * MS, 0),
        ],
        losses: Losses {
            ustack_errors: 1,
            no_wakeup_seen: 2,
            ..Losses::default()
        },
        end_reason: Some(EndReason::Duration),
        attach: "tp_btf".into(),
        stopped_at: None,
    };
    let frames = |names: &[&str]| {
        names
            .iter()
            .map(|s| std::sync::Arc::from(*s))
            .collect::<Vec<_>>()
    };
    let symbols = Symbols {
        user: HashMap::from([
            (1, frames(&["main", "serve", "accept_loop"])),
            (2, frames(&["start_thread", "worker_loop", "poll;events"])),
            (3, frames(&["start_thread", "handle", "[unknown]"])),
            (4, frames(&["start_thread", "read_config"])),
        ]),
        kernel: HashMap::from([
            (
                11,
                frames(&["do_syscall_64", "inet_csk_accept", "schedule", "__schedule"]),
            ),
            (
                12,
                frames(&["do_syscall_64", "do_epoll_wait", "schedule", "__schedule"]),
            ),
            (
                13,
                frames(&["do_syscall_64", "futex_wait", "schedule", "__schedule"]),
            ),
        ]),
        unknown_user_frames: 1,
        unknown_kernel_frames: 0,
        truncated_stacks: 0,
    };
    (collected, symbols)
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("WAITPROF_BLESS").is_some() {
        std::fs::write(&path, actual).expect("writing a golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with WAITPROF_BLESS=1", path.display()));
    assert!(
        expected == actual,
        "{name} differs from its golden file (WAITPROF_BLESS=1 to accept):\n{actual}"
    );
}

#[test]
fn golden_folded() {
    let (collected, symbols) = profile();
    let folded = fold::fold(&collected, &symbols, &FoldOptions { per_thread: false });
    golden("server.folded", folded.text());
    let per_thread = fold::fold(&collected, &symbols, &FoldOptions { per_thread: true });
    golden("server-per-thread.folded", per_thread.text());
}

#[test]
fn folded_values_are_microseconds_and_sum_up() {
    let (collected, symbols) = profile();
    let folded = fold::fold(&collected, &symbols, &FoldOptions::default());
    let total_ns: u64 = collected
        .rows
        .iter()
        .map(|r| r.blocked_ns + r.runq_ns)
        .sum();
    // every line is rounded to the nearest microsecond; the 400 ns row disappears
    assert_eq!(folded.total_us(), (total_ns - 400) / 1000);
    let lines: Vec<(&str, u64)> = folded.lines().collect();
    assert!(
        lines
            .windows(2)
            .all(|w| w[0].0.split(';').lt(w[1].0.split(';'))),
        "lines are sorted frame by frame"
    );
    assert!(
        lines.iter().all(|(s, _)| !s.contains("poll;events")),
        "';' in a frame is escaped"
    );
}

#[test]
fn folding_is_deterministic() {
    let (mut collected, symbols) = profile();
    let a = fold::fold(&collected, &symbols, &FoldOptions::default());
    collected.rows.reverse();
    let b = fold::fold(&collected, &symbols, &FoldOptions::default());
    assert_eq!(a, b);
}

#[test]
fn golden_svg() {
    let (collected, symbols) = profile();
    let folded = fold::fold(&collected, &symbols, &FoldOptions::default());
    let svg = render::svg(&folded, "waitprof: server (pid 100), 1.0 s", "golden").expect("svg");
    let svg = String::from_utf8(svg).expect("utf-8");
    assert!(
        svg.contains(">us<") || svg.contains(" us"),
        "counts are in us"
    );
    golden("server.svg", &svg);
}

#[test]
fn empty_profile_is_not_drawn() {
    let (mut collected, symbols) = profile();
    collected.rows.clear();
    let folded = fold::fold(&collected, &symbols, &FoldOptions::default());
    assert!(folded.is_empty());
    assert!(render::svg(&folded, "t", "s").is_err());
}

#[test]
fn golden_summary() {
    let (collected, symbols) = profile();
    golden(
        "server.summary",
        &summary::render(&collected, &symbols, 5, true),
    );
}
