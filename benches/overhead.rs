//! The overhead benchmark: waitprof side by side with libbpf-tools' `offcputime` and with
//! no profiler, in one run, alternating the three so that drift hits them alike. Reports
//! medians and ratios to the unprofiled baseline as Markdown (stdout and
//! target/benchmarks.md); BENCHMARKS.md has the results and how to read them.
//!
//! Run as root with `.ci/bench` (installs the peers, then `cargo bench --bench overhead`).
//! WAITPROF_BENCH_ROUNDS sets the rounds per comparison (default 5).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libbpf_rs::query::ProgInfoIter;

const WAITPROF: &str = env!("CARGO_BIN_EXE_waitprof");
const FIXTURE: &str = env!("CARGO_BIN_EXE_waitprof-fixture");
const ROUND_MS: u64 = 2000;

mod common;
use common::{median, wait_rss, Res};

/// One comparison: appends its table to the report.
type Step = fn(&mut String, usize, &Path) -> Res<()>;

/// A profiler under test, attached to one pid until stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    None,
    /// The default: wakers recorded.
    Waitprof,
    WaitprofNoWakers,
    /// Frame pointers only: what the unwind tables cost.
    WaitprofFp,
    Offcputime,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::None => "no profiler",
            Tool::Waitprof => "waitprof",
            Tool::WaitprofNoWakers => "waitprof --no-wakers",
            Tool::WaitprofFp => "waitprof --unwind fp",
            Tool::Offcputime => "offcputime",
        }
    }
}

/// A running profiler: its process and the BPF programs it loaded.
struct Attached {
    child: Child,
    progs: Vec<u32>,
    attach: Duration,
}

fn prog_ids() -> HashSet<u32> {
    ProgInfoIter::default().map(|p| p.id).collect()
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
    let before = prog_ids();
    let t = Instant::now();
    let mut child = match tool {
        Tool::None => return Ok(None),
        Tool::Waitprof | Tool::WaitprofNoWakers | Tool::WaitprofFp => Command::new(WAITPROF)
            .args(["-p", &pid.to_string(), "-o"])
            .arg(dir.join("bench.svg"))
            .args((tool == Tool::WaitprofNoWakers).then_some("--no-wakers"))
            .args((tool == Tool::WaitprofFp).then_some("--unwind=fp"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting waitprof: {e}"))?,
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
    Ok(Some(Attached {
        child,
        progs,
        attach,
    }))
}

/// Ctrl-C, then (time until its programs are gone, time until it exited).
fn detach(mut a: Attached) -> Res<(Duration, Duration)> {
    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGINT) };
    let (mut gone, mut exited) = (None, None);
    while gone.is_none() || exited.is_none() {
        if gone.is_none() {
            let now = prog_ids();
            if a.progs.iter().all(|id| !now.contains(id)) {
                gone = Some(t.elapsed());
            }
        }
        if exited.is_none() {
            if let Some(status) = a.child.try_wait().map_err(|e| e.to_string())? {
                if !status.success() {
                    return Err(format!("profiler exited with {status}"));
                }
                exited = Some(t.elapsed());
            }
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = a.child.kill();
            return Err("profiler did not exit and unload within 60 s of Ctrl-C".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((gone.unwrap_or_default(), exited.unwrap_or_default()))
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

    /// Round trips per second over one round.
    fn round(&mut self, ms: u64) -> Res<f64> {
        writeln!(self.stdin, "{ms}").map_err(|e| e.to_string())?;
        let line = self
            .lines
            .next()
            .ok_or("ping-pong ended")?
            .map_err(|e| e.to_string())?;
        let f: Vec<&str> = line.split_whitespace().collect();
        match (f.get(1), f.get(3)) {
            (Some(ops), Some(ns)) => {
                let (ops, ns): (f64, f64) = (
                    ops.parse().map_err(|_| line.clone())?,
                    ns.parse().map_err(|_| line.clone())?,
                );
                Ok(ops / ns * 1e9)
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
}

impl Drop for Parked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TOOLS: [Tool; 5] = [
    Tool::None,
    Tool::Waitprof,
    Tool::WaitprofNoWakers,
    Tool::WaitprofFp,
    Tool::Offcputime,
];

/// Alternates the tools for `rounds` rounds; `measure` runs one round.
fn compare(
    rounds: usize,
    target_pid: u32,
    dir: &Path,
    mut measure: impl FnMut() -> Res<f64>,
) -> Res<HashMap<&'static str, Vec<f64>>> {
    let mut out: HashMap<&'static str, Vec<f64>> = HashMap::new();
    for r in 0..rounds {
        // rotate the order each round so no tool always runs first
        for i in 0..TOOLS.len() {
            let tool = TOOLS[(i + r) % TOOLS.len()];
            let a = attach(tool, target_pid, dir)?;
            let v = measure()?;
            if let Some(a) = a {
                detach(a)?;
            }
            out.entry(tool.name()).or_default().push(v);
        }
        eprint!(".");
    }
    eprintln!();
    Ok(out)
}

fn table(report: &mut String, title: &str, unit: &str, res: &HashMap<&'static str, Vec<f64>>) {
    let base = median(&res[Tool::None.name()]);
    let _ = writeln!(report, "\n### {title}\n");
    let _ = writeln!(
        report,
        "| | median {unit} | vs no profiler | slowdown | runs |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---|");
    for tool in TOOLS {
        let v = &res[tool.name()];
        let m = median(v);
        let runs: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
        let _ = writeln!(
            report,
            "| {} | {m:.0} | {:.3} | {:+.1}% | {} |",
            tool.name(),
            m / base,
            (1.0 - m / base) * 100.0,
            runs.join(" ")
        );
    }
}

fn switch_storm(report: &mut String, rounds: usize, dir: &Path) -> Res<()> {
    for (cpus, what) in [
        (None, "both CPUs (as `perf bench sched pipe`)"),
        (Some("1"), "both threads on CPU 1 (worst case)"),
    ] {
        eprint!("switch storm, {what} ");
        let mut pp = PingPong::start(cpus)?;
        let pid = pp.pid();
        let res = compare(rounds, pid, dir, || pp.round(ROUND_MS))?;
        table(
            report,
            &format!("1. Switch storm, target profiled: {what}"),
            "round trips/s",
            &res,
        );
    }
    Ok(())
}

fn bystander(report: &mut String, rounds: usize, dir: &Path) -> Res<()> {
    eprint!("bystander ");
    let parked = Parked::start()?;
    let mut pp = PingPong::start(None)?;
    let res = compare(rounds, parked.0.id(), dir, || pp.round(ROUND_MS))?;
    table(
        report,
        "3. Bystander: the switch storm while the profiler targets another (idle) process",
        "round trips/s",
        &res,
    );
    Ok(())
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

    /// Requests per second of one bounded wrk run, wrk on CPU 1 (nginx is on CPU 0).
    fn wrk(&self, secs: u32) -> Res<f64> {
        common::wrk_rate(self.port, secs)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(report: &mut String, rounds: usize, dir: &Path) -> Res<()> {
    eprint!("nginx + wrk ");
    let nginx = Nginx::start(dir)?;
    nginx.wrk(1)?; // warm up
    let res = compare(rounds, nginx.child.id(), dir, || nginx.wrk(3))?;
    table(
        report,
        "2. nginx on 127.0.0.1 (1 worker on CPU 0) driven by `wrk -t1 -c32 -d3s` on CPU 1",
        "requests/s",
        &res,
    );
    Ok(())
}

/// ns per run of each program the tool loaded, from the kernel's own BPF statistics.
fn per_event(report: &mut String, dir: &Path) -> Res<()> {
    eprintln!("per-event cost");
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let was = std::fs::read_to_string(stats).map_err(|e| e.to_string())?;
    std::fs::write(stats, "1").map_err(|e| format!("enabling BPF statistics: {e}"))?;
    let result = (|| {
        let _ = writeln!(
            report,
            "\n### 4. Cost per event (kernel.bpf_stats_enabled=1, one {ROUND_MS}-ms round of the switch storm on both CPUs)\n"
        );
        let _ = writeln!(
            report,
            "| tool | program | runs | ns per run | round trips/s |"
        );
        let _ = writeln!(report, "|---|---|---:|---:|---:|");
        let mut pp = PingPong::start(None)?;
        for tool in [
            Tool::Waitprof,
            Tool::WaitprofNoWakers,
            Tool::WaitprofFp,
            Tool::Offcputime,
        ] {
            let a = attach(tool, pp.pid(), dir)?.ok_or("no tool")?;
            let rate = pp.round(ROUND_MS)?;
            let progs: Vec<_> = ProgInfoIter::default()
                .filter(|p| a.progs.contains(&p.id))
                .collect();
            for p in progs {
                let _ = writeln!(
                    report,
                    "| {} | {} | {} | {:.0} | {rate:.0} |",
                    tool.name(),
                    p.name.to_string_lossy(),
                    p.run_cnt,
                    p.run_time_ns as f64 / p.run_cnt.max(1) as f64
                );
            }
            detach(a)?;
        }
        Ok(())
    })();
    let _ = std::fs::write(stats, was.trim());
    result
}

fn large_profile(report: &mut String, rounds: usize, dir: &Path) -> Res<()> {
    eprint!("large profile ");
    let mut written = Vec::new();
    let mut rss = Vec::new();
    let mut detail = String::new();
    for _ in 0..rounds.min(3) {
        let svg = dir.join("large.svg");
        let mut child = Command::new(WAITPROF)
            .args(["--stack-storage-size", "65536", "-o"])
            .arg(&svg)
            .args(["--", FIXTURE, "stacks", "40000"])
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
        if detail.is_empty() {
            detail = text
                .lines()
                .find(|l| l.contains("symbolizing"))
                .unwrap_or("")
                .to_string();
            let folded = std::fs::metadata(svg.with_extension("folded")).map_or(0, |m| m.len());
            let svg_len = std::fs::metadata(&svg).map_or(0, |m| m.len());
            let _ = write!(
                detail,
                "; folded file {:.0} MB, SVG {:.1} MB",
                folded as f64 / 1e6,
                svg_len as f64 / 1e6
            );
        }
        written.push(secs);
        rss.push(maxrss_kb as f64 / 1024.0);
        eprint!(".");
    }
    eprintln!();
    let _ = writeln!(
        report,
        "\n### 5. Large profile: `waitprof --stack-storage-size 65536 -- waitprof-fixture stacks 40000`\n"
    );
    let _ = writeln!(report, "{detail}\n");
    let _ = writeln!(report, "| | median | runs |\n|---|---:|---|");
    let fmt = |v: &[f64], p: usize| {
        v.iter()
            .map(|x| format!("{x:.p$}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        report,
        "| end of session to SVG written (s) | {:.2} | {} |",
        median(&written),
        fmt(&written, 2)
    );
    let _ = writeln!(
        report,
        "| peak RSS of waitprof (MB) | {:.0} | {} |",
        median(&rss),
        fmt(&rss, 0)
    );
    Ok(())
}

fn attach_detach(report: &mut String, rounds: usize, dir: &Path) -> Res<()> {
    eprint!("attach and detach ");
    let parked = Parked::start()?;
    let mut rows = Vec::new();
    for tool in [Tool::Waitprof, Tool::Offcputime] {
        let (mut at, mut gone, mut exit) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let a = attach(tool, parked.0.id(), dir)?.ok_or("no tool")?;
            at.push(a.attach.as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(200));
            let (g, e) = detach(a)?;
            gone.push(g.as_secs_f64() * 1e3);
            exit.push(e.as_secs_f64() * 1e3);
            eprint!(".");
        }
        rows.push(format!(
            "| {} | {:.0} | {:.0} | {:.0} |",
            tool.name(),
            median(&at),
            median(&gone),
            median(&exit)
        ));
    }
    eprintln!();
    let _ = writeln!(
        report,
        "\n### 6. Attach and detach (target: one parked thread; medians of {rounds}, ms)\n"
    );
    let _ = writeln!(
        report,
        "| tool | start to tracing | Ctrl-C to programs unloaded | Ctrl-C to exit |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(report, "{r}");
    }
    Ok(())
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
    let rounds: usize = std::env::var("WAITPROF_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut report = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        report,
        "## Run of {} (kernel {}, {cpus} CPUs, {rounds} rounds per comparison)",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        kernel.trim()
    );
    let steps: [(&str, Step); 5] = [
        ("switch storm", switch_storm),
        ("nginx", nginx),
        ("bystander", bystander),
        ("large profile", large_profile),
        ("attach/detach", attach_detach),
    ];
    let mut failed = false;
    for (i, (name, step)) in steps.iter().enumerate() {
        if let Err(e) = step(&mut report, rounds, dir.path()) {
            eprintln!("\n{name} failed: {e}");
            let _ = writeln!(report, "\n{name}: FAILED: {e}");
            failed = true;
        }
        if i == 2 {
            if let Err(e) = per_event(&mut report, dir.path()) {
                eprintln!("\nper-event cost failed: {e}");
                failed = true;
            }
        }
    }
    println!("{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/benchmarks.md");
    if std::fs::write(&out, &report).is_ok() {
        eprintln!("written to {}", out.display());
    }
    if failed {
        std::process::exit(1);
    }
}
