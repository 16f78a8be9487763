//! Folding, rendering and the summary are pure: a hand-made profile must always give the
//! same text, byte for byte. `WAITPROF_BLESS=1 cargo test golden` rewrites the files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use waitprof::export::flamegraph;
use waitprof::fold::{self, FoldOptions, View};
use waitprof::model::{Collected, EndReason, Kind, Listener, Losses, Outcome, Row, StackRef};
use waitprof::model::{GState, GoroutineRow, GoroutineThread, GoroutineView};
use waitprof::model::{ThreadTotals, Waiter, Waker, WakerCtx};
use waitprof::summary;
use waitprof::symbolize::Symbols;
use waitprof::unwind::UnwindReport;

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
        object: 0,
        waker: Waker::default(),
    }
}

/// `row` woken by `waker`, waiting on `object`.
fn woken(row: Row, object: u64, waker: Waker) -> Row {
    Row {
        object,
        waker,
        ..row
    }
}

fn waker(ctx: WakerCtx, comm: &str, stacks: (StackRef, StackRef)) -> Waker {
    Waker {
        ctx,
        tgid: if comm.is_empty() { 0 } else { 100 },
        tid: 0,
        comm: comm.into(),
        ustack: stacks.0,
        kstack: stacks.1,
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
        runq_woken_ns: runq / 2,
        // half the waits under 2 us, a quarter in [8, 16) us, a quarter in [1, 2) ms
        runq_hist: [[4u64, 0, 0, 2, 0, 0, 0, 0, 0, 0, 2].as_slice(), &[0; 17]].concat(),
        // the epoll worker polls: 2 calls blocked, 58 returned at once
        polls: if comm == "worker-0" { 60 } else { 0 },
        polls_blocking: if comm == "worker-0" { 2 } else { 0 },
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
            woken(
                row(
                    101,
                    Kind::Accept,
                    Some(288),
                    Outcome::Ok,
                    (StackRef::Id(1), StackRef::Id(11)),
                    (900 * MS, 2 * MS),
                ),
                7001,
                waker(
                    WakerCtx::Interrupt,
                    "",
                    (StackRef::InInterrupt, StackRef::Id(16)),
                ),
            ),
            woken(
                row(
                    102,
                    Kind::Epoll,
                    Some(232),
                    Outcome::Timeout,
                    (StackRef::Id(2), StackRef::Id(12)),
                    (700 * MS, 0),
                ),
                4,
                waker(
                    WakerCtx::Interrupt,
                    "",
                    (StackRef::InInterrupt, StackRef::Id(17)),
                ),
            ),
            woken(
                row(
                    102,
                    Kind::Epoll,
                    Some(232),
                    Outcome::Ok,
                    (StackRef::Id(2), StackRef::Id(12)),
                    (100 * MS, 50 * MS),
                ),
                4,
                waker(
                    WakerCtx::Interrupt,
                    "",
                    (StackRef::InInterrupt, StackRef::Id(16)),
                ),
            ),
            woken(
                row(
                    103,
                    Kind::Futex,
                    Some(202),
                    Outcome::Ok,
                    (StackRef::Id(3), StackRef::Id(13)),
                    (300 * MS, 100 * MS),
                ),
                0x5000,
                waker(
                    WakerCtx::Task,
                    "worker-0",
                    (StackRef::Id(5), StackRef::Id(15)),
                ),
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
        syscall_exits: None,
        stopped_at: None,
        waiters: vec![
            Waiter {
                kind: Kind::Futex,
                object: 0x5000,
                tid: 103,
                ns: 400 * MS,
            },
            Waiter {
                kind: Kind::Epoll,
                object: 4,
                tid: 102,
                ns: 850 * MS,
            },
            Waiter {
                kind: Kind::Accept,
                object: 7001,
                tid: 101,
                ns: 902 * MS,
            },
        ],
        listeners: vec![Listener {
            inode: 7001,
            addr: Some("0.0.0.0:8080".parse().expect("an address")),
            accepts: 40,
            qlen_sum: 100,
            qlen_max: 9,
            at_limit: 6,
            limit: 8,
            drops: 12,
            drops_span: waitprof::model::DropsSpan::Accepts,
        }],
        // 59 gaps: 50 under 1 ms, 8 of 8-16 ms, one of 120 ms (a finding)
        polls: vec![waitprof::model::Poll {
            fd: 3,
            polls: 60,
            blocking: 2,
            gaps: 59,
            gap_sum_ns: 200 * MS,
            gap_max_ns: 120 * MS,
            gap_max_end_ns: 700 * MS,
            gap_max_tid: 102,
            gap_hist: [
                [0u64, 0, 0, 0, 0, 0, 0, 0, 0, 50, 0, 0, 0, 8, 0, 0, 1].as_slice(),
                &[0; 11],
            ]
            .concat(),
            open_gap_ns: 0,
        }],
        oncpu: Vec::new(),
        epoll_watch: HashMap::from([(3, 2)]),
        wakers: true,
        other_namespaces: Vec::new(),
        cpus: None,
        snapshots: Default::default(),
        unwind: Some(UnwindReport {
            files: 3,
            rows: 41_000,
            capacity: 1 << 20,
            without: vec![("/usr/lib/server/plugin.so".into(), "no .eh_frame".into())],
            build_time: std::time::Duration::from_millis(12),
            refreshes: 1,
        }),
        goroutines: None,
        timeline: None,
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
            (
                3,
                frames(&["start_thread", "handle", "[unknown: stripped]"]),
            ),
            (4, frames(&["start_thread", "read_config"])),
            (
                5,
                frames(&[
                    "start_thread",
                    "worker_loop",
                    "release_job",
                    "__lll_unlock_wake",
                ]),
            ),
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
            (
                15,
                frames(&["do_syscall_64", "futex_wake", "wake_up_q", "try_to_wake_up"]),
            ),
            (
                16,
                frames(&[
                    "asm_common_interrupt",
                    "irq_exit_rcu",
                    "handle_softirqs",
                    "net_rx_action",
                    "tcp_v4_rcv",
                    "sock_def_readable",
                    "try_to_wake_up",
                ]),
            ),
            (
                17,
                frames(&[
                    "asm_sysvec_apic_timer_interrupt",
                    "hrtimer_interrupt",
                    "hrtimer_wakeup",
                    "try_to_wake_up",
                ]),
            ),
        ]),
        unknown_user_frames: 1,
        unknown_kernel_frames: 0,
        truncated_stacks: 0,
        unknown_why: BTreeMap::from([("stripped", 1)]),
        objects: HashMap::from([(0x5000, "queue_lock in server".to_string())]),
        unreadable_files: Vec::new(),
        sites: Default::default(),
    };
    (collected, with_sites(symbols))
}

/// Where the acceptor's frames came from, as the symbolizer keeps it: `accept_loop`
/// inlined into `serve` at one address of the server binary (with source lines), and
/// its kernel stack in the kernel.
fn with_sites(mut symbols: Symbols) -> Symbols {
    use std::sync::Arc;
    use waitprof::symbolize::{Code, Site, KERNEL_CODE};
    let server = Arc::new(Code {
        path: "/usr/bin/server".into(),
        start: 0x5555_0000_1000,
        end: 0x5555_0000_9000,
        offset: 0x1000,
        build_id: Some("c0ffee".into()),
    });
    let kernel = Arc::new(Code {
        path: KERNEL_CODE.into(),
        start: 0xffff_8000_0000_0000,
        end: u64::MAX,
        offset: 0,
        build_id: None,
    });
    let user: Vec<(u64, Option<&str>, u32, bool)> = vec![
        (0x5555_0000_1100, Some("server.c"), 12, false),
        (0x5555_0000_2200, Some("server.c"), 40, false),
        (0x5555_0000_2200, Some("loop.h"), 7, true),
    ];
    let frames = symbols.user[&1].clone();
    for (name, (addr, file, line, inlined)) in frames.iter().zip(user) {
        let site = Site {
            addr,
            file: file.map(Arc::from),
            line,
            inlined,
            code: Some(server.clone()),
        };
        symbols.sites.insert(name, site);
    }
    let frames = symbols.kernel[&11].clone();
    for (i, name) in frames.iter().enumerate() {
        let site = Site {
            addr: 0xffff_ffff_8100_0000 + 0x100 * i as u64,
            file: None,
            line: 0,
            inlined: false,
            code: Some(kernel.clone()),
        };
        symbols.sites.insert(name, site);
    }
    symbols
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
    let view = |view, per_thread, hide_idle| {
        let opts = FoldOptions {
            per_thread,
            hide_idle,
            view,
        };
        fold::fold(&collected, &symbols, &opts)
    };
    golden("server.folded", &view(View::Main, false, false).text());
    golden(
        "server-per-thread.folded",
        &view(View::Main, true, false).text(),
    );
    golden(
        "server-hide-idle.folded",
        &view(View::Main, false, true).text(),
    );
    golden(
        "server.offwake.folded",
        &view(View::OffWake, false, false).text(),
    );
    golden(
        "server.runq.folded",
        &view(View::RunQueue, false, false).text(),
    );
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
    let lines: Vec<(String, u64)> = folded.lines().collect();
    assert!(
        lines.windows(2).all(|w| w[0].0 < w[1].0),
        "lines are sorted as text, as inferno checks"
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
    let svg = flamegraph::svg(&folded, "waitprof: server (pid 100), 1.0 s", "golden").expect("svg");
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
    assert!(flamegraph::svg(&folded, "t", "s").is_err());
}

#[test]
fn golden_summary() {
    let (collected, symbols) = profile();
    let profile = waitprof::profile::Profile::build(&collected, &symbols);
    golden(
        "server.summary",
        &summary::render(
            &collected,
            &symbols,
            &profile,
            &waitprof::analyze::Analysis::of(&collected, &symbols, &profile),
            5,
            true,
        ),
    );
}

/// A Go service's goroutines: a pool, a lock (as Go 1.19 names it), an accept loop and a
/// GC worker (idle), runnable goroutines behind a CPU-bound one, one in a system call,
/// and a sample that raced with the runtime.
/// A pprof profile as text, every id resolved: its sample types, mappings and samples
/// (values, labels by key, locations leaf first with their lines innermost first).
fn pprof_text(gz: &[u8]) -> String {
    use std::fmt::Write;
    let p = waitprof::export::pprof::decode(gz).expect("a gzipped profile.proto message");
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!(s(0), "", "string 0 is empty");
    let mut t = String::new();
    let types: Vec<String> = p
        .sample_type
        .iter()
        .map(|v| format!("{}/{}", s(v.r#type), s(v.unit)))
        .collect();
    let _ = writeln!(
        t,
        "types: {} (default {})",
        types.join(" "),
        s(p.default_sample_type)
    );
    for c in &p.comment {
        let _ = writeln!(t, "comment: {}", s(*c));
    }
    let _ = writeln!(t, "duration: {} ns", p.duration_nanos);
    for m in &p.mapping {
        let _ = writeln!(
            t,
            "mapping {}: {:#x}-{:#x} @{:#x} {} build id {:?} functions {} files {} lines {} inline {}",
            m.id,
            m.memory_start,
            m.memory_limit,
            m.file_offset,
            s(m.filename),
            s(m.build_id),
            m.has_functions,
            m.has_filenames,
            m.has_line_numbers,
            m.has_inline_frames
        );
    }
    let function = |id: u64| p.function.iter().find(|f| f.id == id).expect("a function");
    for sample in &p.sample {
        let mut labels: Vec<String> = sample
            .label
            .iter()
            .map(|l| match l.str {
                0 => format!("{}={}", s(l.key), l.num),
                v => format!("{}={}", s(l.key), s(v)),
            })
            .collect();
        labels.sort();
        let _ = writeln!(t, "sample {:?} {}", sample.value, labels.join(" "));
        for id in &sample.location_id {
            let l = p.location.iter().find(|l| l.id == *id).expect("a location");
            let lines: Vec<String> = l
                .line
                .iter()
                .map(|line| {
                    let f = function(line.function_id);
                    match f.filename {
                        0 => s(f.name).to_string(),
                        file => format!("{} {}:{}", s(f.name), s(file), line.line),
                    }
                })
                .collect();
            let _ = writeln!(
                t,
                "  {:#x} m{} {}",
                l.address,
                l.mapping_id,
                lines.join(" | ")
            );
        }
    }
    t
}

/// The sum of one sample type's values.
fn pprof_total(gz: &[u8], index: usize) -> i64 {
    let p = waitprof::export::pprof::decode(gz).expect("a gzipped profile.proto message");
    p.sample.iter().map(|s| s.value[index]).sum()
}

/// The Perfetto trace of a fixed timeline, decoded and resolved to text: tracks, then
/// each event with its time, track, name, flows and annotations.
#[test]
fn golden_timeline() {
    use waitprof::model::{Timeline, TimelineEvent, TimelineWhat};
    let (mut collected, symbols) = profile();
    let off = |ts, tid, kind, syscall, object, preempted| TimelineEvent {
        ts: ts * MS,
        tid,
        what: TimelineWhat::Off {
            kind,
            syscall,
            object,
            preempted,
        },
    };
    let on = |ts, tid| TimelineEvent {
        ts: ts * MS,
        tid,
        what: TimelineWhat::On,
    };
    let wake = |ts, tid, ctx, waker_tid, waker_tgid| TimelineEvent {
        ts: ts * MS,
        tid,
        what: TimelineWhat::Wake {
            ctx,
            waker_tid,
            waker_tgid,
        },
    };
    collected.timeline = Some(Timeline {
        events: vec![
            // worker-1 blocks on the queue lock; worker-0 releases it and wakes it
            off(100, 103, Kind::Futex, Some(202), 0x5000, false),
            wake(400, 103, WakerCtx::Task, 102, 100),
            on(410, 103),
            // worker-0 sleeps in epoll; an interrupt wakes it
            off(420, 102, Kind::Epoll, Some(232), 4, false),
            wake(600, 102, WakerCtx::Interrupt, 0, 0),
            on(602, 102),
            // the acceptor is preempted, and runs again
            off(700, 101, Kind::Other, None, 0, true),
            on(705, 101),
        ],
        dropped_in_kernel: 3,
        dropped_beyond_limit: 0,
        wakers: true,
    });
    let profile = waitprof::profile::Profile::build(&collected, &symbols);
    let bytes = waitprof::export::perfetto::trace(&collected, &symbols, &profile).expect("a trace");
    golden("server.timeline.txt", &timeline_text(&bytes));
}

/// A trace decoded and resolved to text: tracks, then each event with its time, track,
/// name, flows and annotations.
fn timeline_text(bytes: &[u8]) -> String {
    use prost::Message;
    use std::fmt::Write;
    let trace = perfetto_trace_proto::Trace::decode(bytes).expect("a Trace message");
    let mut t = String::new();
    for p in &trace.packet {
        match &p.data {
            Some(perfetto_trace_proto::trace_packet::Data::TrackDescriptor(d)) => {
                let _ = writeln!(
                    t,
                    "track {} parent {:?} name {:?} process {:?} thread {:?}",
                    d.uuid.unwrap_or(0),
                    d.parent_uuid,
                    d.static_or_dynamic_name,
                    d.process.as_ref().map(|p| (p.pid, p.process_name.clone())),
                    d.thread
                        .as_ref()
                        .map(|t| (t.pid, t.tid, t.thread_name.clone()))
                );
            }
            Some(perfetto_trace_proto::trace_packet::Data::TrackEvent(e)) => {
                if let Some(i) = &p.interned_data {
                    for n in &i.event_names {
                        let _ = writeln!(t, "  interned {:?} = {:?}", n.iid, n.name);
                    }
                }
                let name = match &e.name_field {
                    Some(perfetto_trace_proto::track_event::NameField::Name(n)) => n.clone(),
                    Some(perfetto_trace_proto::track_event::NameField::NameIid(i)) => {
                        format!("#{i}")
                    }
                    _ => String::new(),
                };
                let annotations: Vec<String> = e
                    .debug_annotations
                    .iter()
                    .map(|a| format!("{:?}={:?}", a.name_field, a.value))
                    .collect();
                let sequence = match p.optional_trusted_packet_sequence_id {
                    Some(perfetto_trace_proto::trace_packet::OptionalTrustedPacketSequenceId::TrustedPacketSequenceId(s)) => s,
                    None => 0,
                };
                let _ = writeln!(
                    t,
                    "seq {sequence} flags {:?} {} {} type {:?} {name:?} flows {:?} ends {:?} {}",
                    p.sequence_flags,
                    p.timestamp.unwrap_or(0),
                    e.track_uuid.unwrap_or(0),
                    e.r#type,
                    e.flow_ids,
                    e.terminating_flow_ids,
                    annotations.join(" ")
                );
            }
            _ => {}
        }
    }
    t
}

/// A Go program's goroutines on the timeline: a track each under one parent, named by
/// the goroutine's function, with its sampled states as slices (function and stack
/// annotated); a raced sample's spell keeps its marker stack.
#[test]
fn golden_goroutine_timeline() {
    use waitprof::model::{GoroutineSpell, GoroutineSpells, Timeline};
    let (mut collected, symbols) = go_profile();
    collected.timeline = Some(Timeline {
        events: Vec::new(),
        dropped_in_kernel: 0,
        dropped_beyond_limit: 0,
        wakers: true,
    });
    let spell = |goid, from: u64, to: u64, state: GState, stack: Option<u64>| GoroutineSpell {
        goid,
        from_ns: collected.start_ns + from * MS,
        to_ns: collected.start_ns + to * MS,
        state,
        stack,
        raced: stack.is_none(),
    };
    let waiting = |r: &str| GState::Waiting(r.to_string());
    let spells = vec![
        spell(18, 0, 40, waiting("chan receive"), Some(1 << 63 | 1)),
        spell(18, 40, 50, GState::Runnable, Some(1 << 63 | 5)),
        spell(19, 0, 30, waiting("semacquire"), Some(1 << 63 | 2)),
        spell(18, 50, 70, waiting("chan receive"), Some(1 << 63 | 1)),
        spell(19, 30, 40, waiting("chan receive"), None),
        spell(1, 0, 1000, waiting("IO wait"), Some(1 << 63 | 3)),
    ];
    collected.goroutines.as_mut().expect("a Go profile").spells =
        Some(GoroutineSpells { spells, dropped: 2 });
    let profile = waitprof::profile::Profile::build(&collected, &symbols);
    let bytes = waitprof::export::perfetto::trace(&collected, &symbols, &profile).expect("a trace");
    let text = timeline_text(&bytes);
    golden("go.timeline.txt", &text);
    // every spell is one slice on its goroutine's track, and what was dropped is said
    for (goid, slices) in [(18, 3), (19, 2), (1, 1)] {
        let track = (1u64 << 62) + 1 + goid;
        let begins = text
            .lines()
            .filter(|l| l.contains(&format!(" {track} type Some(1)")))
            .count();
        assert_eq!(begins, slices, "goroutine {goid}:\n{text}");
    }
    assert!(text.contains("goroutine 18: main.handle"), "{text}");
    assert!(text.contains("2 spells beyond the most kept"), "{text}");
}

#[test]
fn golden_json() {
    use waitprof::analyze;
    use waitprof::export::json;
    for (name, (collected, symbols)) in [("server.json", profile()), ("go.json", go_profile())] {
        let profile = waitprof::profile::Profile::build(&collected, &symbols);
        let analysis = analyze::Analysis::of(&collected, &symbols, &profile);
        let text = json::to_vec(&json::summary(&collected, &symbols, &analysis)).expect("JSON");
        let text = String::from_utf8(text).expect("utf-8");
        golden(name, &text);
        // the summary's findings, in its words and order
        let summary = summary::render(&collected, &symbols, &profile, &analysis, 5, false);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        for (i, f) in v["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .take(8)
            .enumerate()
        {
            let line = format!("  {}. {}\n", i + 1, f["text"].as_str().expect("text"));
            assert!(summary.contains(&line), "{line} not in:\n{summary}");
        }
    }
}

#[test]
fn golden_pprof() {
    use waitprof::export::pprof::{encode, PprofOptions};
    use waitprof::profile::Profile;
    let (collected, symbols) = profile();
    let profile = Profile::build(&collected, &symbols);
    let opts = PprofOptions::default();
    let main = encode(&profile, View::Main, &opts)
        .expect("encoded")
        .expect("a profile");
    golden("server.pprof.txt", &pprof_text(&main));
    let offwake = encode(&profile, View::OffWake, &opts)
        .expect("encoded")
        .expect("a profile");
    golden("server.offwake.pprof.txt", &pprof_text(&offwake));
    assert!(encode(&profile, View::RunQueue, &opts)
        .expect("encoded")
        .is_none());
    // the same time as the rows, to the nanosecond, and as the folded file (rounded to
    // a microsecond a line)
    let blocked: u64 = collected.rows.iter().map(|r| r.blocked_ns).sum();
    let runq: u64 = collected.rows.iter().map(|r| r.runq_ns).sum();
    assert_eq!(pprof_total(&main, 0), (blocked + runq) as i64);
    assert_eq!(pprof_total(&main, 1), blocked as i64);
    assert_eq!(pprof_total(&main, 2), runq as i64);
    assert_eq!(pprof_total(&offwake, 0), blocked as i64);
    let folded = fold::fold(&collected, &symbols, &FoldOptions::default());
    assert!(pprof_total(&main, 0).abs_diff(folded.total_us() as i64 * 1000) <= 500 * 8);
    // --hide-idle leaves out what its flame graph does
    let hide = PprofOptions {
        hide_idle: true,
        ..PprofOptions::default()
    };
    let hidden = encode(&profile, View::Main, &hide)
        .expect("encoded")
        .expect("a profile");
    let folded = fold::fold(
        &collected,
        &symbols,
        &FoldOptions {
            hide_idle: true,
            ..FoldOptions::default()
        },
    );
    assert!(pprof_total(&hidden, 0).abs_diff(folded.total_us() as i64 * 1000) <= 500 * 8);
    assert!(pprof_total(&hidden, 0) < pprof_total(&main, 0));
    // the same input gives the same bytes
    assert_eq!(
        main,
        encode(&profile, View::Main, &opts)
            .expect("encoded")
            .expect("a profile")
    );
}

fn go_profile() -> (Collected, Symbols) {
    let (mut collected, mut symbols) = profile();
    let frames = |names: &[&str]| {
        names
            .iter()
            .map(|s| std::sync::Arc::from(*s))
            .collect::<Vec<_>>()
    };
    let stacks: [(u64, &[&str]); 7] = [
        (
            1 << 63 | 1,
            &[
                "runtime.goexit",
                "main.handle",
                "main.(*Pool).Get",
                "runtime.chanrecv1",
                "runtime.gopark",
            ],
        ),
        (
            1 << 63 | 2,
            &[
                "runtime.goexit",
                "main.handle",
                "main.update",
                "sync.(*Mutex).lockSlow",
                "sync.runtime_SemacquireMutex",
                "runtime.gopark",
            ],
        ),
        (
            1 << 63 | 3,
            &[
                "runtime.goexit",
                "main.main",
                "net/http.(*Server).Serve",
                "net.(*netFD).accept",
                "runtime.gopark",
            ],
        ),
        (
            1 << 63 | 4,
            &["runtime.goexit", "runtime.gcBgMarkWorker", "runtime.gopark"],
        ),
        (
            1 << 63 | 5,
            &["runtime.goexit", "main.handle", "main.render"],
        ),
        (1 << 63 | 6, &["main.hashLoop"]),
        (
            1 << 63 | 7,
            &[
                "runtime.goexit",
                "main.handle",
                "os.(*File).Sync",
                "syscall.Syscall",
            ],
        ),
    ];
    for (id, names) in stacks {
        symbols.user.insert(id, frames(names));
    }
    let row = |state: GState, stack: Option<u64>, ms: u64, goroutines: u64| GoroutineRow {
        state,
        stack,
        raced: stack.is_none(),
        ns: ms * MS,
        samples: ms / 10,
        goroutines,
    };
    let waiting = |r: &str| GState::Waiting(r.to_string());
    collected.goroutines = Some(GoroutineView {
        version: "go1.19.8".into(),
        how: "g layout from DWARF, goroutine list from the symbol table, wait reasons from runtime.waitReasonStrings".into(),
        rows: vec![
            row(waiting("chan receive"), Some(1 << 63 | 1), 4100, 412),
            row(waiting("semacquire"), Some(1 << 63 | 2), 3200, 96),
            row(waiting("IO wait"), Some(1 << 63 | 3), 1000, 1),
            row(waiting("GC worker (idle)"), Some(1 << 63 | 4), 2000, 2),
            row(GState::Runnable, Some(1 << 63 | 5), 1300, 40),
            row(GState::Running, Some(1 << 63 | 6), 2000, 2),
            row(GState::Syscall, Some(1 << 63 | 7), 300, 1),
            row(waiting("chan receive"), None, 20, 2),
        ],
        sweeps: 100,
        samples: 55_600,
        period_max: std::time::Duration::from_millis(10),
        sweep_cpu_ns: vec![(150_000, 556); 100],
        goroutines_max: 556,
        goroutines_seen: 600,
        raced: 2,
        runnable_max: 12,
        runnable_spells_ns: (1..=100).map(|i| i * MS / 4).collect(),
        in_syscalls: vec![GoroutineThread {
            tid: 102,
            goid: 77,
            stack: Some(1 << 63 | 7),
            ns: 300 * MS,
        }],
        session_ns: 1000 * MS,
        runtime_sched: Some(Ok(waitprof::model::RuntimeSched {
            time_to_run: vec![(40_960, 49_152, 30), (8 << 20, 10 << 20, 9), (12 << 20, 14 << 20, 1)],
            overflow: 0,
            mutex_wait_ns: Some(3_100 * MS),
        })),
        running_from: Some(Ok(198)),
        ..Default::default()
    });
    (collected, symbols)
}

#[test]
fn golden_goroutines() {
    let (collected, symbols) = go_profile();
    let view = |hide_idle| {
        fold::fold(
            &collected,
            &symbols,
            &FoldOptions {
                per_thread: false,
                hide_idle,
                view: View::Goroutines,
            },
        )
    };
    golden("go.goroutines.folded", &view(false).text());
    // idle goroutines (the accept loop, the GC worker) leave the graph with --hide-idle
    let hidden = view(true);
    assert!(!hidden.text().contains("gcBgMarkWorker") && !hidden.text().contains("accept"));
    assert_eq!(view(false).total_us() - hidden.total_us(), 3_000_000);
    let profile = waitprof::profile::Profile::build(&collected, &symbols);
    golden(
        "go.summary",
        &summary::render(
            &collected,
            &symbols,
            &profile,
            &waitprof::analyze::Analysis::of(&collected, &symbols, &profile),
            5,
            false,
        ),
    );
    let pprof = |hide_idle| {
        let opts = waitprof::export::pprof::PprofOptions {
            hide_idle,
            start_unix_ns: None,
        };
        waitprof::export::pprof::encode(&profile, View::Goroutines, &opts)
            .expect("encoded")
            .expect("a profile")
    };
    golden("go.goroutines.pprof.txt", &pprof_text(&pprof(false)));
    let (all, shown) = (pprof_total(&pprof(false), 0), pprof_total(&pprof(true), 0));
    assert_eq!(all - shown, 3_000_000_000, "idle goroutines left out");
    let sampled: u64 = collected
        .goroutines
        .as_ref()
        .map_or(0, |g| g.rows.iter().map(|r| r.ns).sum());
    assert_eq!(all, sampled as i64);
}
