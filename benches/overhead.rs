//! The overhead benchmark: waitprof side by side with libbpf-tools' `offcputime` and with
//! no profiler, in one run. Each comparison has two passes over the same workload:
//!
//! - throughput: many short rounds, the tools alternated within each round (the order
//!   rotated), every tool's result divided by the unprofiled result of the same round;
//!   the median of those paired ratios, with their spread, is what the report gives;
//! - cost: with the kernel's BPF statistics on, the CPU time each profiler adds per
//!   event of the workload: its programs' run time plus its own process's CPU time,
//!   over the context switches (or requests) the round produced. Noise moves this much
//!   less than throughput. An empty BPF program on the same hooks gives the floor that
//!   the statistics themselves cost.
//!
//! Reports Markdown (stdout and target/benchmarks.md), the goals judged at the
//! end; BENCHMARKS.md has the results and how to read them.
//!
//! Run as root with `.ci/bench` (installs the peers, then `cargo bench --bench overhead`).
//! WAITPROF_BENCH_ROUNDS (default 15), WAITPROF_BENCH_ROUND_MS (default 1000) and
//! WAITPROF_BENCH_COST_ROUNDS (default 5) size the passes.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libbpf_rs::query::{LinkInfoIter, ProgInfoIter};

const WAITPROF: &str = env!("CARGO_BIN_EXE_waitprof");
const FIXTURE: &str = env!("CARGO_BIN_EXE_waitprof-fixture");

mod common;
use common::{median, wait_rss, Res};

/// One comparison: appends its tables to the report and its verdicts to the goals.
type Step = fn(&mut Report, &Settings, &Path) -> Res<()>;

/// How long the passes run.
struct Settings {
    rounds: usize,
    round_ms: u64,
    cost_rounds: usize,
}

/// The report, and the figures the goals are judged by at the end.
#[derive(Default)]
struct Report {
    text: String,
    /// (comparison, tool) -> median paired ratio to no profiler
    ratio: HashMap<(&'static str, &'static str), f64>,
    /// (comparison, tool, program) -> median ns per run
    per_run: HashMap<(&'static str, &'static str, String), f64>,
    /// (comparison, tool, program) -> median ns of the program's run time per event
    per_event_prog: HashMap<(&'static str, &'static str, String), f64>,
    /// (comparison, tool) -> median ns of CPU per event
    per_event: HashMap<(&'static str, &'static str), f64>,
    /// figures of the session's ends: name -> median
    ends: HashMap<&'static str, f64>,
}

/// A profiler under test, attached to one pid until stopped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Tool {
    None,
    /// The default: wakers recorded.
    Waitprof,
    WaitprofNoWakers,
    /// Frame pointers only: what the unwind tables cost.
    WaitprofFp,
    /// Every switch and wakeup sent to user space too: what the timeline costs.
    WaitprofTimeline,
    /// A program at every syscall's exit, as where the tracked syscalls have no exit
    /// tracepoints of their own (`WAITPROF_SYSCALL_EVENTS` names an empty place).
    WaitprofEveryExit,
    Offcputime,
    /// Empty BPF programs on sched_switch, sched_waking and sys_exit: what the kernel's
    /// statistics (two clock reads a run) and the hook's dispatch cost by themselves.
    Empty,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::None => "no profiler",
            Tool::Waitprof => "waitprof",
            Tool::WaitprofNoWakers => "waitprof --no-wakers",
            Tool::WaitprofFp => "waitprof --unwind fp",
            Tool::WaitprofTimeline => "waitprof --timeline",
            Tool::WaitprofEveryExit => "waitprof, every syscall's exit hooked",
            Tool::Offcputime => "offcputime",
            Tool::Empty => "empty programs (floor)",
        }
    }
}

/// A running profiler: its process (or the empty programs) and the BPF programs it
/// loaded.
struct Attached {
    child: Option<Child>,
    empty: Option<EmptyProgs>,
    progs: Vec<u32>,
    /// Its links (attached hooks) once it is tracing.
    links: Vec<u32>,
    attach: Duration,
}

/// The hooks the floor is measured on, each with its empty program's name.
const FLOOR: [(&str, &str); 3] = [
    ("sched_switch", "empty_switch"),
    ("sched_waking", "empty_waking"),
    ("sys_exit", "empty_sys_exit"),
];

/// A program's name as the kernel keeps it (BPF_OBJ_NAME_LEN, 15 characters).
fn kname(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// Empty raw tracepoint programs (`r0 = 0; exit`), attached while this lives.
struct EmptyProgs(Vec<libc::c_int>);

impl EmptyProgs {
    fn attach() -> Res<EmptyProgs> {
        use libbpf_rs::libbpf_sys as sys;
        // BPF_ALU64 | BPF_MOV | BPF_K with dst r0, imm 0; then BPF_JMP | BPF_EXIT
        let insns: [u64; 2] = [0xb7, 0x95];
        let mut fds = EmptyProgs(Vec::new());
        for (tp, name) in FLOOR {
            let name = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
            let tp_c = std::ffi::CString::new(tp).map_err(|e| e.to_string())?;
            // SAFETY: two valid instructions, NUL-terminated names, default options.
            let prog = unsafe {
                sys::bpf_prog_load(
                    sys::BPF_PROG_TYPE_RAW_TRACEPOINT,
                    name.as_ptr(),
                    c"GPL".as_ptr(),
                    insns.as_ptr().cast(),
                    insns.len() as _,
                    std::ptr::null_mut(),
                )
            };
            if prog < 0 {
                return Err(format!("loading an empty program: error {prog}"));
            }
            fds.0.push(prog);
            // SAFETY: a NUL-terminated tracepoint name and the program just loaded.
            let link = unsafe { sys::bpf_raw_tracepoint_open(tp_c.as_ptr(), prog) };
            if link < 0 {
                return Err(format!("attaching an empty program to {tp}: error {link}"));
            }
            fds.0.push(link);
        }
        Ok(fds)
    }
}

impl Drop for EmptyProgs {
    fn drop(&mut self) {
        for fd in self.0.drain(..).rev() {
            // SAFETY: fds this struct opened and owns.
            unsafe { libc::close(fd) };
        }
    }
}

fn prog_ids() -> HashSet<u32> {
    ProgInfoIter::default().map(|p| p.id).collect()
}

fn link_ids() -> HashSet<u32> {
    LinkInfoIter::default().map(|l| l.id).collect()
}

fn holds_bpf_link(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf_link"))
        })
}

/// Starts `tool` on `pid` and returns once it is tracing.
fn attach(tool: Tool, pid: u32, dir: &Path) -> Res<Option<Attached>> {
    let (before, links_before) = (prog_ids(), link_ids());
    let t = Instant::now();
    let mut child = match tool {
        Tool::None => return Ok(None),
        Tool::Empty => {
            let empty = EmptyProgs::attach()?;
            let progs = prog_ids().difference(&before).copied().collect();
            let links = link_ids().difference(&links_before).copied().collect();
            return Ok(Some(Attached {
                child: None,
                empty: Some(empty),
                progs,
                links,
                attach: t.elapsed(),
            }));
        }
        Tool::Waitprof
        | Tool::WaitprofNoWakers
        | Tool::WaitprofFp
        | Tool::WaitprofTimeline
        | Tool::WaitprofEveryExit => {
            let mut cmd = Command::new(WAITPROF);
            if tool == Tool::WaitprofEveryExit {
                cmd.env("WAITPROF_SYSCALL_EVENTS", "/nonexistent");
            }
            cmd.args(["-p", &pid.to_string(), "-o"])
                .arg(dir.join("bench.svg"))
                .args((tool == Tool::WaitprofNoWakers).then_some("--no-wakers"))
                .args((tool == Tool::WaitprofFp).then_some("--unwind=fp"))
                .args((tool == Tool::WaitprofTimeline).then_some("--timeline"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting waitprof: {e}"))?
        }
        Tool::Offcputime => Command::new("offcputime")
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting offcputime: {e}"))?,
    };
    match child.stderr.take() {
        // waitprof says when it is attached; keep draining its stderr on a thread
        Some(err) => {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut said = false;
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if !said && line.contains("profiling pid") {
                        said = true;
                        let _ = tx.send(());
                    }
                }
            });
            rx.recv_timeout(Duration::from_secs(30))
                .map_err(|_| "waitprof did not start profiling".to_string())?;
        }
        // offcputime (0.26) prints no banner: it is tracing once it holds a BPF link
        None => {
            while !holds_bpf_link(child.id()) {
                if t.elapsed() > Duration::from_secs(30)
                    || child.try_wait().ok().flatten().is_some()
                {
                    return Err(format!("{} did not attach", tool.name()));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
    let attach = t.elapsed();
    let progs = prog_ids().difference(&before).copied().collect();
    let links = link_ids().difference(&links_before).copied().collect();
    Ok(Some(Attached {
        child: Some(child),
        empty: None,
        progs,
        links,
        attach,
    }))
}

/// How long after Ctrl-C a profiler's hooks were detached (its links gone: the kernel
/// runs its programs no more), its programs freed, and it exited.
struct Ended {
    detached: Duration,
    gone: Duration,
    exited: Duration,
}

/// Ctrl-C (or, for the empty programs, closing them), then the times of `Ended`. The
/// kernel frees a program whose link is closed after an RCU grace period, and one on a
/// syscall tracepoint (a faultable one) after an RCU Tasks Trace grace period too.
fn detach(mut a: Attached) -> Res<Ended> {
    let t = Instant::now();
    let mut child = a.child.take();
    match &child {
        // SAFETY: signalling our own child.
        Some(c) => unsafe {
            libc::kill(c.id() as i32, libc::SIGINT);
        },
        None => drop(a.empty.take()),
    }
    let (mut detached, mut gone, mut exited) = (None, None, None);
    while detached.is_none() || gone.is_none() || exited.is_none() {
        if detached.is_none() {
            let now = link_ids();
            if a.links.iter().all(|id| !now.contains(id)) {
                detached = Some(t.elapsed());
            }
        }
        if gone.is_none() {
            let now = prog_ids();
            if a.progs.iter().all(|id| !now.contains(id)) {
                gone = Some(t.elapsed());
            }
        }
        if exited.is_none() {
            match &mut child {
                Some(c) => {
                    if let Some(status) = c.try_wait().map_err(|e| e.to_string())? {
                        if !status.success() {
                            return Err(format!("profiler exited with {status}"));
                        }
                        exited = Some(t.elapsed());
                    }
                }
                None => exited = detached,
            }
        }
        if t.elapsed() > Duration::from_secs(60) {
            if let Some(c) = &mut child {
                let _ = c.kill();
            }
            return Err("profiler did not exit and unload within 60 s of Ctrl-C".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(Ended {
        detached: detached.unwrap_or_default(),
        gone: gone.unwrap_or_default(),
        exited: exited.unwrap_or_default(),
    })
}

/// Sums a per-thread counter over every thread of `pid` now.
fn over_threads(pid: u32, read: impl Fn(&str) -> Option<u64>) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| read(&t.path().to_string_lossy()))
        .sum()
}

/// The context switches of every thread of `pid` so far.
fn switches(pid: u32) -> u64 {
    over_threads(pid, |task| {
        let status = std::fs::read_to_string(format!("{task}/status")).ok()?;
        Some(
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum(),
        )
    })
}

/// Waits until process `pid` uses less than 1% of a CPU over 100 ms (at most 3 s).
fn settle(pid: u32) {
    let t = Instant::now();
    let mut last = cpu_ns(pid);
    while t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_ns(pid);
        if now.saturating_sub(last) < 1_000_000 {
            return;
        }
        last = now;
    }
}

/// The CPU time (ns) every thread of `pid` has had so far (schedstat, ns-exact).
fn cpu_ns(pid: u32) -> u64 {
    over_threads(pid, |task| {
        std::fs::read_to_string(format!("{task}/schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// (name, runs, run time in ns) of each of `ids` now.
fn prog_stats(ids: &[u32]) -> HashMap<u32, (String, u64, u64)> {
    ProgInfoIter::default()
        .filter(|p| ids.contains(&p.id))
        .map(|p| {
            (
                p.id,
                (
                    p.name.to_string_lossy().into_owned(),
                    p.run_cnt,
                    p.run_time_ns,
                ),
            )
        })
        .collect()
}

/// The kernel's BPF run-time statistics, on while this lives.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn on() -> Res<BpfStats> {
        let was = std::fs::read_to_string(Self::PATH).map_err(|e| e.to_string())?;
        std::fs::write(Self::PATH, "1").map_err(|e| format!("enabling BPF statistics: {e}"))?;
        Ok(BpfStats(was.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// The bundled switch storm (`waitprof-fixture pingpong`), run one round at a time.
struct PingPong {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl PingPong {
    fn start(cpus: Option<&str>) -> Res<PingPong> {
        let mut cmd = match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c, FIXTURE]);
                cmd
            }
            None => Command::new(FIXTURE),
        };
        let mut child = cmd
            .arg("pingpong")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the ping-pong: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        match lines.next() {
            Some(Ok(l)) if l == "ready" => {}
            other => return Err(format!("ping-pong did not start: {other:?}")),
        }
        let mut p = PingPong {
            child,
            stdin,
            lines,
        };
        p.round(300)?; // warm up
        Ok(p)
    }

    /// Round trips per second over one round, and the context switches of its threads.
    fn round(&mut self, ms: u64) -> Res<(f64, u64)> {
        let before = switches(self.pid());
        writeln!(self.stdin, "{ms}").map_err(|e| e.to_string())?;
        let line = self
            .lines
            .next()
            .ok_or("ping-pong ended")?
            .map_err(|e| e.to_string())?;
        let events = switches(self.pid()).saturating_sub(before);
        let f: Vec<&str> = line.split_whitespace().collect();
        match (f.get(1), f.get(3)) {
            (Some(ops), Some(ns)) => {
                let (ops, ns): (f64, f64) = (
                    ops.parse().map_err(|_| line.clone())?,
                    ns.parse().map_err(|_| line.clone())?,
                );
                Ok((ops / ns * 1e9, events))
            }
            _ => Err(format!("bad ping-pong line: {line}")),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fixture thread parked forever: a target that does nothing.
struct Parked(Child);

impl Parked {
    fn start() -> Res<Parked> {
        let mut child = Command::new(FIXTURE)
            .arg("park")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the parked fixture: {e}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(Parked(child))
    }

    /// An idle redis-server (a Unix socket only, no persistence): a target with more code to build
    /// unwind tables for (redis, jemalloc, lua, libssl).
    fn redis() -> Res<Parked> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            // with no TCP port it needs somewhere to listen
            .arg(
                std::env::temp_dir()
                    .join(format!("waitprof-bench-redis-{}.sock", std::process::id())),
            )
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting redis-server: {e}"))?;
        // its background threads start with it
        std::thread::sleep(Duration::from_millis(500));
        Ok(Parked(child))
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TOOLS: [Tool; 6] = [
    Tool::None,
    Tool::Waitprof,
    Tool::WaitprofNoWakers,
    Tool::WaitprofEveryExit,
    Tool::WaitprofTimeline,
    Tool::Offcputime,
];

/// The spread of a sample: (first quartile, third quartile, min, max).
fn spread(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| {
        let i = f * (v.len().saturating_sub(1)) as f64;
        let (lo, hi) = (i.floor() as usize, i.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (i - lo as f64)
    };
    (q(0.25), q(0.75), v[0], v[v.len() - 1])
}

/// One pass: alternates `tools` for `rounds` rounds, rotating the order each round so
/// that no tool always runs first; `measure` runs one round and gives its figure and
/// the events it produced. Per tool and round: the figure, and the profiler's CPU time
/// (its programs' run time, its own process's CPU time, ns) with the events, and each
/// program's (runs, run time).
fn pass(
    tools: &[Tool],
    rounds: usize,
    target_pid: u32,
    dir: &Path,
    measure: &mut dyn FnMut() -> Res<(f64, u64)>,
) -> Res<HashMap<Tool, Vec<Measured>>> {
    let mut out: HashMap<Tool, Vec<Measured>> = HashMap::new();
    for r in 0..rounds {
        for i in 0..tools.len() {
            let tool = tools[(i + r) % tools.len()];
            let a = attach(tool, target_pid, dir)?;
            let (ids, pid) = a.as_ref().map_or((Vec::new(), None), |a| {
                (a.progs.clone(), a.child.as_ref().map(|c| c.id()))
            });
            // the profiler's own start-up work that goes on after it attached (waitprof
            // reads the kernel's and the target's symbols while it records) is a cost
            // of starting, measured apart (section 6), not of profiling: wait for it
            if let Some(pid) = pid {
                settle(pid);
            }
            let (p0, c0) = (prog_stats(&ids), pid.map_or(0, cpu_ns));
            let (value, events) = measure()?;
            let (p1, c1) = (prog_stats(&ids), pid.map_or(0, cpu_ns));
            let programs: Vec<(String, u64, u64)> = p1
                .iter()
                .filter_map(|(id, (name, runs, ns))| {
                    let (_, r0, n0) = p0.get(id)?;
                    Some((name.clone(), runs - r0, ns - n0))
                })
                .collect();
            if let Some(a) = a {
                detach(a)?;
            }
            out.entry(tool).or_default().push(Measured {
                value,
                events,
                bpf_ns: programs.iter().map(|p| p.2).sum(),
                own_ns: c1.saturating_sub(c0),
                programs,
            });
        }
        eprint!(".");
    }
    Ok(out)
}

/// What one round of one tool measured.
struct Measured {
    value: f64,
    events: u64,
    bpf_ns: u64,
    own_ns: u64,
    programs: Vec<(String, u64, u64)>,
}

/// The workload of one comparison.
struct Workload<'a> {
    /// the comparison's name, as the goals refer to it
    key: &'static str,
    title: String,
    unit: &'static str,
    /// what the events are: "target context switch", "request"
    event: &'static str,
    target_pid: u32,
    /// the floor is measured too (on hooks that the workload runs)
    floor: bool,
    measure: &'a mut dyn FnMut() -> Res<(f64, u64)>,
}

/// Both passes over one workload, and their tables.
fn compare(report: &mut Report, s: &Settings, dir: &Path, w: Workload) -> Res<()> {
    eprint!("{}: throughput ", w.key);
    let thr = pass(&TOOLS, s.rounds, w.target_pid, dir, w.measure)?;
    eprint!(" cost ");
    let stats = BpfStats::on()?;
    let mut tools: Vec<Tool> = TOOLS[1..].to_vec();
    if w.floor {
        tools.push(Tool::Empty);
    }
    let cost = pass(&tools, s.cost_rounds, w.target_pid, dir, w.measure)?;
    drop(stats);
    eprintln!();

    let text = &mut report.text;
    let _ = writeln!(text, "\n### {}\n", w.title);
    let _ = writeln!(
        text,
        "Throughput: {} alternated rounds of {} ms; the ratio is each round's figure over the \
         same round's unprofiled figure, median [IQR] (min–max). Cost: {} rounds with the kernel's \
         BPF statistics on; CPU time the profiler adds per {}: its programs' run time plus its \
         own process's CPU time, median (min–max).\n",
        s.rounds, s.round_ms, s.cost_rounds, w.event
    );
    let _ = writeln!(
        text,
        "| | median {} | vs no profiler | CPU per {} (ns) | of it BPF | of it user space |",
        w.unit, w.event
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|");
    let base: Vec<f64> = thr[&Tool::None].iter().map(|m| m.value).collect();
    for tool in TOOLS.iter().chain(w.floor.then_some(&Tool::Empty)) {
        let (median_value, ratio_cell) = match thr.get(tool) {
            Some(v) => {
                let values: Vec<f64> = v.iter().map(|m| m.value).collect();
                let ratios: Vec<f64> = values.iter().zip(&base).map(|(v, b)| v / b).collect();
                let (q1, q3, lo, hi) = spread(&ratios);
                let m = median(&ratios);
                report.ratio.insert((w.key, tool.name()), m);
                (
                    format!("{:.0}", median(&values)),
                    if *tool == Tool::None {
                        "1".to_string()
                    } else {
                        format!("**{m:.3}** [{q1:.3}–{q3:.3}] ({lo:.3}–{hi:.3})")
                    },
                )
            }
            None => ("–".into(), "–".into()),
        };
        let cost_cells = match cost.get(tool) {
            Some(v) => {
                let per = |f: &dyn Fn(&Measured) -> u64| -> (f64, f64, f64) {
                    let x: Vec<f64> = v
                        .iter()
                        .map(|m| f(m) as f64 / m.events.max(1) as f64)
                        .collect();
                    let (_, _, lo, hi) = spread(&x);
                    (median(&x), lo, hi)
                };
                let (all, lo, hi) = per(&|m| m.bpf_ns + m.own_ns);
                let (bpf, ..) = per(&|m| m.bpf_ns);
                let (own, ..) = per(&|m| m.own_ns);
                report.per_event.insert((w.key, tool.name()), all);
                format!("**{all:.0}** ({lo:.0}–{hi:.0}) | {bpf:.0} | {own:.0}")
            }
            None => "– | – | –".into(),
        };
        let _ = writeln!(
            text,
            "| {} | {median_value} | {ratio_cell} | {cost_cells} |",
            tool.name()
        );
    }
    // each program's ns per run, median over the cost rounds
    let _ = writeln!(
        text,
        "\n| tool | program | runs per {} | ns per run, median (min–max) |",
        w.event
    );
    let _ = writeln!(text, "|---|---|---:|---:|");
    for tool in &tools {
        type PerProgram = (Vec<f64>, Vec<f64>, Vec<f64>);
        let mut by_name: std::collections::BTreeMap<&str, PerProgram> = Default::default();
        for m in &cost[tool] {
            for (name, runs, ns) in &m.programs {
                if *runs > 0 {
                    let e = by_name.entry(name).or_default();
                    e.0.push(*ns as f64 / *runs as f64);
                    e.1.push(*runs as f64 / m.events.max(1) as f64);
                    e.2.push(*ns as f64 / m.events.max(1) as f64);
                }
            }
        }
        for (name, (ns, runs, per_event)) in by_name {
            let (_, _, lo, hi) = spread(&ns);
            let m = median(&ns);
            report
                .per_run
                .insert((w.key, tool.name(), name.to_string()), m);
            report
                .per_event_prog
                .insert((w.key, tool.name(), name.to_string()), median(&per_event));
            let _ = writeln!(
                text,
                "| {} | {name} | {:.2} | {m:.0} ({lo:.0}–{hi:.0}) |",
                tool.name(),
                median(&runs)
            );
        }
    }
    Ok(())
}

fn switch_storm(report: &mut Report, s: &Settings, dir: &Path) -> Res<()> {
    for (cpus, key, what) in [
        (None, "storm2", "both CPUs (as `perf bench sched pipe`)"),
        (Some("1"), "storm1", "both threads on CPU 1 (worst case)"),
    ] {
        let mut pp = PingPong::start(cpus)?;
        let pid = pp.pid();
        let ms = s.round_ms;
        compare(
            report,
            s,
            dir,
            Workload {
                key,
                title: format!("1. Switch storm, target profiled: {what}"),
                unit: "round trips/s",
                event: "target context switch",
                target_pid: pid,
                floor: key == "storm1",
                measure: &mut || pp.round(ms),
            },
        )?;
    }
    Ok(())
}

fn bystander(report: &mut Report, s: &Settings, dir: &Path) -> Res<()> {
    let parked = Parked::start()?;
    // on one CPU: across two, any profiler speeds the storm up (idle states; BENCHMARKS.md)
    let mut pp = PingPong::start(Some("1"))?;
    let ms = s.round_ms;
    compare(
        report,
        s,
        dir,
        Workload {
            key: "bystander",
            title: "3. Bystander: the switch storm on CPU 1 while the profiler targets another (idle) process"
                .into(),
            unit: "round trips/s",
            event: "bystander context switch",
            target_pid: parked.0.id(),
            floor: true,
            measure: &mut || pp.round(ms),
        },
    )
}

struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path) -> Res<Nginx> {
        let (child, port) = common::start_nginx(dir, true)?;
        Ok(Nginx { child, port })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(report: &mut Report, s: &Settings, dir: &Path) -> Res<()> {
    let nginx = Nginx::start(dir)?;
    common::wrk_rate(nginx.port, 1)?; // warm up
    let secs = (s.round_ms / 1000).max(1) as u32;
    compare(
        report,
        s,
        dir,
        Workload {
            key: "nginx",
            title: format!(
                "2. nginx on 127.0.0.1 (1 worker on CPU 0) driven by `wrk -t1 -c32 -d{secs}s` on CPU 1"
            ),
            unit: "requests/s",
            event: "request",
            target_pid: nginx.child.id(),
            floor: false,
            measure: &mut || {
                let rate = common::wrk_rate(nginx.port, secs)?;
                Ok((rate, (rate * secs as f64) as u64))
            },
        },
    )
}

/// One session of `waitprof -- waitprof-fixture stacks COUNT`: (seconds from the end of
/// recording to the files written, as waitprof reports it; peak RSS in MB; its
/// symbolizing line and the files' sizes).
fn stacks_session(count: u32, dir: &Path) -> Res<(f64, f64, String)> {
    let svg = dir.join(format!("stacks{count}.svg"));
    // new files, as waitprof's default names (stamped with the time) give: replacing the
    // last round's hundreds of megabytes would add the filesystem's freeing of them
    let prefix = format!("stacks{count}.");
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let mut child = Command::new(WAITPROF)
        .args(["--stack-storage-size", "65536", "-o"])
        .arg(&svg)
        .args(["--", FIXTURE, "stacks", &count.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let err = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(err), &mut s);
        s
    });
    let (status, maxrss_kb) = wait_rss(&child)?;
    let text = reader.join().map_err(|_| "reader panicked")?;
    if status != 0 {
        return Err(format!("waitprof failed ({status}):\n{text}"));
    }
    let secs: f64 = text
        .split(" s after the session ended")
        .next()
        .and_then(|l| l.rsplit('(').next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no timing in:\n{text}"))?;
    let mut detail = text
        .lines()
        .find(|l| l.contains("symbolizing"))
        .unwrap_or("")
        .trim()
        .to_string();
    let folded = std::fs::metadata(svg.with_extension("folded")).map_or(0, |m| m.len());
    let svg_len = std::fs::metadata(&svg).map_or(0, |m| m.len());
    let _ = write!(
        detail,
        "; folded file {:.1} MB, SVG {:.1} MB",
        folded as f64 / 1e6,
        svg_len as f64 / 1e6
    );
    Ok((secs, maxrss_kb as f64 / 1024.0, detail))
}

fn large_profile(report: &mut Report, s: &Settings, dir: &Path) -> Res<()> {
    eprint!("session end ");
    let _ = writeln!(
        report.text,
        "\n### 5. Session end: `waitprof --stack-storage-size 65536 -- waitprof-fixture stacks N`\n"
    );
    let _ = writeln!(
        report.text,
        "| distinct stacks | end of recording to files written (s), median (min–max) | peak RSS (MB), median (min–max) | detail |"
    );
    let _ = writeln!(report.text, "|---:|---:|---:|---|");
    for (count, key_s, key_rss) in [
        (40_000, "end40k_s", "end40k_rss"),
        (2_000, "end2k_s", "end2k_rss"),
    ] {
        let (mut written, mut rss, mut detail) = (Vec::new(), Vec::new(), String::new());
        for _ in 0..s.cost_rounds.clamp(3, 5) {
            let (secs, mb, d) = stacks_session(count, dir)?;
            written.push(secs);
            rss.push(mb);
            detail = d;
            eprint!(".");
        }
        let (_, _, wlo, whi) = spread(&written);
        let (_, _, rlo, rhi) = spread(&rss);
        report.ends.insert(key_s, median(&written));
        report.ends.insert(key_rss, median(&rss));
        let _ = writeln!(
            report.text,
            "| {count} | {:.2} ({wlo:.2}–{whi:.2}) | {:.0} ({rlo:.0}–{rhi:.0}) | {detail} |",
            median(&written),
            median(&rss)
        );
    }
    eprintln!();
    Ok(())
}

fn attach_detach(report: &mut Report, s: &Settings, dir: &Path) -> Res<()> {
    eprint!("attach and detach ");
    let rounds = s.rounds.min(9);
    let mut rows = Vec::new();
    type Start = fn() -> Res<Parked>;
    let targets: [(&str, Start); 2] = [
        ("one parked thread (glibc only)", Parked::start),
        ("redis-server", Parked::redis),
    ];
    for (target, start) in targets {
        if target == "redis-server" && which::which("redis-server").is_err() {
            eprint!("(no redis-server) ");
            continue;
        }
        let parked = start()?;
        for tool in [
            Tool::Waitprof,
            Tool::WaitprofEveryExit,
            Tool::Offcputime,
            Tool::Empty,
        ] {
            let (mut at, mut detached, mut gone, mut exit) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let a = attach(tool, parked.0.id(), dir)?.ok_or("no tool")?;
                at.push(a.attach.as_secs_f64() * 1e3);
                std::thread::sleep(Duration::from_millis(200));
                let e = detach(a)?;
                detached.push(e.detached.as_secs_f64() * 1e3);
                gone.push(e.gone.as_secs_f64() * 1e3);
                exit.push(e.exited.as_secs_f64() * 1e3);
                eprint!(".");
            }
            if tool == Tool::Waitprof {
                let redis = target == "redis-server";
                report.ends.insert(
                    if redis { "start_redis_ms" } else { "start_ms" },
                    median(&at),
                );
                if !redis {
                    report.ends.insert("detached_ms", median(&detached));
                    report.ends.insert("gone_ms", median(&gone));
                }
            }
            let cell = |v: &[f64]| {
                let (_, _, lo, hi) = spread(v);
                format!("{:.0} ({lo:.0}–{hi:.0})", median(v))
            };
            rows.push(format!(
                "| {target} | {} | {} | {} | {} | {} |",
                tool.name(),
                cell(&at),
                cell(&detached),
                cell(&gone),
                cell(&exit)
            ));
        }
    }
    eprintln!();
    let _ = writeln!(
        report.text,
        "\n### 6. Attach and detach (ms, median (min–max) of {rounds})\n"
    );
    let _ = writeln!(
        report.text,
        "| target | tool | start to tracing | Ctrl-C to every hook detached | Ctrl-C to every program freed | Ctrl-C to exit |"
    );
    let _ = writeln!(report.text, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(report.text, "{r}");
    }
    Ok(())
}

/// The goals, judged from what this run measured.
fn goals(report: &mut Report) {
    let r = |k: &'static str, t: Tool| report.ratio.get(&(k, t.name())).copied();
    let ns = |k: &'static str, t: Tool, p: &str| {
        report.per_run.get(&(k, t.name(), p.to_string())).copied()
    };
    let e = |k: &'static str| report.ends.get(k).copied();
    let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
    let slow = |x: f64| 1.0 - x;
    let (wp, off) = (Tool::Waitprof, Tool::Offcputime);
    if let (Some(a), Some(b)) = (r("storm2", wp), r("storm2", off)) {
        rows.push((
            "switch storm, both CPUs: slowdown ≤ half of offcputime's".into(),
            format!("{:+.1}% vs {:+.1}%", -slow(a) * 100.0, -slow(b) * 100.0),
            Some(slow(a) <= slow(b).max(0.0) / 2.0),
        ));
    }
    if let (Some(a), Some(b)) = (r("storm1", wp), r("storm1", off)) {
        rows.push((
            "switch storm, one CPU: slowdown ≤ offcputime's".into(),
            format!("{:+.1}% vs {:+.1}%", -slow(a) * 100.0, -slow(b) * 100.0),
            Some(slow(a) <= slow(b).max(0.0)),
        ));
    }
    if let (Some(a), Some(b)) = (r("nginx", wp), r("nginx", off)) {
        rows.push((
            "nginx + wrk: ratio ≥ offcputime's and ≥ 0.98".into(),
            format!("{a:.3} vs {b:.3}"),
            Some(a >= b && a >= 0.98),
        ));
    }
    for (p, (_, empty)) in ["btf_sched_switch", "btf_sched_waking", "btf_sys_exit"]
        .into_iter()
        .zip(FLOOR)
    {
        let floor = ns("bystander", Tool::Empty, empty);
        if let (Some(v), Some(f)) = (ns("bystander", wp, kname(p)), floor) {
            rows.push((
                format!("bystander `{p}`: ≤ 30 ns a run above an empty program"),
                format!("{v:.0} ns, empty {f:.0} ns: {:+.0} ns", v - f),
                Some(v - f <= 30.0),
            ));
        }
    }
    // with the tracked syscalls' own exit tracepoints, a bystander's syscalls run no
    // program at all (the kernel tests a bit)
    // its storm makes two syscalls a switch; the program at the tracked syscalls' exits
    // runs at other tasks' epoll, futex and accept calls, not at these
    if ns("bystander", wp, kname("btf_sys_exit")).is_none() {
        let per_syscall = |t: Tool, p: &str| {
            report
                .per_event_prog
                .get(&("bystander", t.name(), kname(p).to_string()))
                .map(|ns| ns / 2.0)
        };
        let v = per_syscall(wp, "tp_sys_exit_tracked").unwrap_or(0.0);
        let floor = per_syscall(Tool::Empty, "empty_sys_exit");
        rows.push((
            "bystander syscall exits: ≤ 30 ns a syscall above an empty program".into(),
            format!(
                "{v:.1} ns a syscall (a program at the tracked syscalls' exits only), empty program at every exit {:.0} ns",
                floor.unwrap_or(f64::NAN)
            ),
            Some(floor.is_none_or(|f| v - f <= 30.0)),
        ));
    }
    for (p, goal) in [("btf_sched_waking", 1000.0), ("btf_sched_switch", 800.0)] {
        if let Some(v) = ns("storm1", wp, kname(p)) {
            rows.push((
                format!("target `{p}` (one-CPU storm) ≤ {goal:.0} ns"),
                format!("{v:.0} ns"),
                Some(v <= goal),
            ));
        }
    }
    if let (Some(a), Some(b)) = (
        report.per_event.get(&("storm1", wp.name())),
        report.per_event.get(&("storm1", off.name())),
    ) {
        rows.push((
            "CPU per target context switch (one-CPU storm), against offcputime".into(),
            format!("{a:.0} ns vs {b:.0} ns"),
            None,
        ));
    }
    for (k, what, goal, unit) in [
        (
            "end40k_s",
            "40k stacks: end of recording to files written",
            1.0,
            "s",
        ),
        ("end40k_rss", "40k stacks: peak RSS", 150.0, "MB"),
        (
            "end2k_s",
            "2,000 stacks: end of recording to files written",
            0.2,
            "s",
        ),
        (
            "start_ms",
            "start to recording (`-p`, glibc only)",
            150.0,
            "ms",
        ),
        (
            "start_redis_ms",
            "start to recording (`-p` on redis-server)",
            300.0,
            "ms",
        ),
        (
            "detached_ms",
            "Ctrl-C to every hook detached (the kernel runs none of its programs)",
            50.0,
            "ms",
        ),
        (
            "gone_ms",
            "Ctrl-C to every program freed (the kernel frees them after RCU grace periods: see the empty programs' floor)",
            50.0,
            "ms",
        ),
    ] {
        if let Some(v) = e(k) {
            rows.push((
                format!("{what} ≤ {goal} {unit}"),
                format!("{v:.2} {unit}"),
                Some(v <= goal),
            ));
        }
    }
    let _ = writeln!(
        report.text,
        "\n### Goals (issue 13), judged from this run\n"
    );
    let _ = writeln!(report.text, "| goal | measured | |\n|---|---|---|");
    for (goal, got, met) in rows {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "",
        };
        let _ = writeln!(report.text, "| {goal} | {got} | {verdict} |");
    }
}

fn missing_tools() -> Vec<&'static str> {
    ["offcputime", "nginx", "wrk", "taskset"]
        .into_iter()
        .filter(|t| which::which(t).is_err())
        .collect()
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the overhead benchmark loads BPF programs: run it as root (.ci/bench)");
        std::process::exit(2);
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        eprintln!(
            "missing: {}; .ci/bench installs them (libbpf-tools, nginx-light, wrk)",
            missing.join(", ")
        );
        std::process::exit(2);
    }
    let env = |k: &str, default: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(default)
    };
    let settings = Settings {
        rounds: env("WAITPROF_BENCH_ROUNDS", 15),
        round_ms: env("WAITPROF_BENCH_ROUND_MS", 1000) as u64,
        cost_rounds: env("WAITPROF_BENCH_COST_ROUNDS", 5),
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut report = Report::default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        report.text,
        "## Run of {} (kernel {}, {cpus} CPUs; {} throughput rounds of {} ms and {} cost rounds per comparison)",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        kernel.trim(),
        settings.rounds,
        settings.round_ms,
        settings.cost_rounds
    );
    let steps: [(&str, Step); 5] = [
        ("switch storm", switch_storm),
        ("nginx", nginx),
        ("bystander", bystander),
        ("session end", large_profile),
        ("attach/detach", attach_detach),
    ];
    let only = std::env::var("WAITPROF_BENCH_ONLY").unwrap_or_default();
    let mut failed = false;
    for (name, step) in steps {
        if !only.is_empty() && !only.split(',').any(|o| name.contains(o.trim())) {
            continue;
        }
        if let Err(e) = step(&mut report, &settings, dir.path()) {
            eprintln!("\n{name} failed: {e}");
            let _ = writeln!(report.text, "\n{name}: FAILED: {e}");
            failed = true;
        }
    }
    goals(&mut report);
    println!("{}", report.text);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/benchmarks.md");
    if std::fs::write(&out, &report.text).is_ok() {
        eprintln!("written to {}", out.display());
    }
    if failed {
        std::process::exit(1);
    }
}
