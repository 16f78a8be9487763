//! What the goroutine view costs a Go service: a Go HTTP server (tests/fixtures/gohttp,
//! on CPU 0) under `wrk -t1 -c32` (on CPU 1), with 100 and with 10,000 goroutines,
//! profiled by waitprof with the goroutine view on (the default) and off
//! (`--no-goroutines`), and not profiled, alternated round by round with the order
//! rotated. Reports each median with its min–max, the ratio of on to off, and what
//! the sweeps cost as waitprof's own summary counts it. Run by `.ci/bench-goroutines`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;
use common::{median, wait_rss, Res};

const WAITPROF: &str = env!("CARGO_BIN_EXE_waitprof");
const ROUND_SECS: u32 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Off,
    On,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "no profiler",
            Mode::Off => "waitprof --no-goroutines",
            Mode::On => "waitprof (goroutine view on)",
        }
    }
}

const MODES: [Mode; 3] = [Mode::None, Mode::Off, Mode::On];

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// The first and third quartiles (nearest rank).
fn quartiles(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.25), at(0.75))
}

/// Builds tests/fixtures/`name` with the newest Go on the machine.
fn build(dir: &Path, name: &str) -> Res<PathBuf> {
    let mut gos: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .map_err(|e| e.to_string())?
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("go-"))
        .map(|d| d.path().join("bin/go"))
        .filter(|p| p.exists())
        .collect();
    gos.sort();
    let go = gos.pop().unwrap_or_else(|| PathBuf::from("go"));
    let out = dir.join(name);
    let status = Command::new(&go)
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .env("GOCACHE", dir.join("gocache"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .status()
        .map_err(|e| format!("running {}: {e}", go.display()))?;
    if !status.success() {
        return Err(format!(
            "building the Go server with {} failed",
            go.display()
        ));
    }
    Ok(out)
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(bin: &Path, goroutines: usize) -> Res<Server> {
        let mut child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(bin)
            .arg(goroutines.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the Go server: {e}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("the server said {line:?}"))?;
        common::wait_listening(port, "the Go server")?;
        Ok(Server { child, port })
    }

    fn wrk(&self, secs: u32) -> Res<f64> {
        common::wrk_rate(self.port, secs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One round: the profiler attached (or not) for the whole wrk run; returns the rate and
/// waitprof's summary.
/// A process's CPU time so far (user + system), in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Res<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after = stat.rsplit_once(')').ok_or("no comm in stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // after the comm: state is field 3, utime 14 and stime 15
    let tick = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(tick(14) + tick(15))
}

/// One round: the profiler attached (or not) for the whole wrk run; returns the rate,
/// the server's CPU time per request (µs), and waitprof's summary.
fn round(mode: Mode, server: &Server, dir: &Path) -> Res<(f64, f64, String)> {
    let mut child = match mode {
        Mode::None => None,
        _ => {
            let mut c = Command::new(WAITPROF);
            c.args(["-p", &server.child.id().to_string(), "-o"])
                .arg(dir.join("bench.svg"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if mode == Mode::Off {
                c.arg("--no-goroutines");
            }
            let mut child = c.spawn().map_err(|e| format!("starting waitprof: {e}"))?;
            let mut err = BufReader::new(child.stderr.take().ok_or("no stderr")?);
            let mut said = String::new();
            loop {
                let mut line = String::new();
                if err.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err(format!("waitprof did not start:\n{said}"));
                }
                said.push_str(&line);
                if line.contains("profiling pid") {
                    break;
                }
            }
            Some((child, err))
        }
    };
    let before = cpu_ticks(server.child.id())?;
    let rate = server.wrk(ROUND_SECS)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = cpu_ticks(server.child.id())?.saturating_sub(before) as f64 / hz;
    let cpu_per_request_us = cpu_s * 1e6 / (rate * f64::from(ROUND_SECS)).max(1.0);
    let mut summary = String::new();
    if let Some((c, mut err)) = child.take() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        err.read_to_string(&mut summary)
            .map_err(|e| e.to_string())?;
        let mut c = c;
        let status = c.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("waitprof exited with {status}:\n{summary}"));
        }
    }
    Ok((rate, cpu_per_request_us, summary))
}

/// 1,000 to 100,000 parked goroutines (tests/fixtures/gowaits idle), profiled from their
/// start to their end (6 s): the sweeps, their cost, waitprof's peak memory, and the
/// goroutine time found in main.parked against what the fixture had (COUNT × 6 s); then
/// the same with `--timeline` (each goroutine's spells kept, and the trace written), and
/// 10,000 goroutines of which 10% are replaced every 10 ms (every sweep sees new ones).
fn scale(report: &mut String, dir: &Path) -> Res<()> {
    eprintln!("scale");
    let bin = build(dir, "gowaits")?;
    let _ = writeln!(
        report,
        "\n### Scale: COUNT goroutines parked for 6 s (`waitprof [--timeline] -- gowaits idle 6000 COUNT CHURN`)\n\n| goroutines | churn (% replaced every 10 ms) | flags | main.parked found / expected | waitprof peak RSS | end of session to files written | trace | sweeps and their cost (waitprof's summary) |\n|---:|---:|---|---:|---:|---:|---:|---|"
    );
    let runs = [1_000u64, 10_000, 100_000]
        .into_iter()
        .flat_map(|n| [(n, 0, false), (n, 0, true)])
        .chain([(10_000, 10, false), (10_000, 10, true)]);
    for (n, churn, timeline) in runs {
        let out = dir.join(format!("scale-{n}-{churn}-{timeline}.svg"));
        let mut child = Command::new(WAITPROF)
            .args(timeline.then_some("--timeline"))
            .arg("-o")
            .arg(&out)
            .arg("--")
            .arg(&bin)
            .args(["idle", "6000", &n.to_string(), &churn.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting waitprof: {e}"))?;
        let mut err = child.stderr.take().ok_or("no stderr")?;
        // read on a thread: wait_rss watches the peak while waitprof runs
        let reader = std::thread::spawn(move || {
            let mut summary = String::new();
            err.read_to_string(&mut summary).map(|_| summary)
        });
        let (status, rss_kib) = wait_rss(&child)?;
        let summary = reader
            .join()
            .map_err(|_| "reader panicked")?
            .map_err(|e| e.to_string())?;
        if status != 0 {
            return Err(format!("waitprof exited with {status}:\n{summary}"));
        }
        let folded = std::fs::read_to_string(out.with_extension("goroutines.folded"))
            .map_err(|e| format!("no goroutine view: {e}\n{summary}"))?;
        let parked_us: u64 = folded
            .lines()
            .filter(|l| l.contains("main.parked"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        let expected_us = n * 6_000_000;
        let trace = match std::fs::metadata(out.with_extension("pftrace")) {
            Ok(m) => format!("{:.1} MB", m.len() as f64 / 1e6),
            Err(_) => "–".to_string(),
        };
        let spells = summary
            .split("goroutine spells (")
            .nth(1)
            .and_then(|s| s.split(" of ").next())
            .map_or(String::new(), |n| format!(", {n} goroutine spells"));
        let _ = writeln!(
            report,
            "| {n} | {churn} | {} | {:.3} | {:.0} MB | {} | {trace}{spells} | {} |",
            if timeline { "--timeline" } else { "" },
            parked_us as f64 / expected_us as f64,
            rss_kib as f64 / 1024.0,
            written_after(&summary),
            sweep_cost(&summary)
        );
    }
    Ok(())
}

/// How long after the session the files were written, as waitprof says it (`0.42 s`).
fn written_after(summary: &str) -> String {
    summary
        .split(" s after the session ended")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .filter(|s| s.len() < 12)
        .map_or("?".to_string(), |s| format!("{s} s"))
}

/// The sweeps' cost from a summary: its "sweeps cost" clause and the sweep count.
fn sweep_cost(summary: &str) -> String {
    let sweeps = summary
        .split(" sweeps, every")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .unwrap_or("?");
    let cost = summary
        .split("sweeps cost ")
        .nth(1)
        .and_then(|s| s.split("; a running").next())
        .map(|s| s.lines().next().unwrap_or(""))
        .unwrap_or("not found");
    let most = summary
        .split(" goroutines at most")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .unwrap_or("?");
    format!("{sweeps} sweeps of up to {most} goroutines; cost {cost}")
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the goroutine benchmark loads BPF programs: run it as root (.ci/bench-goroutines)"
        );
        std::process::exit(2);
    }
    for tool in ["wrk", "taskset"] {
        if which::which(tool).is_err() {
            eprintln!("missing: {tool}; .ci/bench-goroutines installs it");
            std::process::exit(2);
        }
    }
    let rounds: usize = std::env::var("WAITPROF_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bin = match build(dir.path(), "gohttp") {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut report = String::new();
    let _ = writeln!(
        report,
        "## Goroutine view: run of {} ({rounds} rounds of {ROUND_SECS} s per mode, order rotated)",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    let mut failed = false;
    for goroutines in [100usize, 10_000] {
        eprint!("Go HTTP server with {goroutines} parked goroutines ");
        let result = (|| -> Res<()> {
            let server = Server::start(&bin, goroutines)?;
            server.wrk(1)?; // warm up
            let mut rates: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
            let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
            let mut costs = Vec::new();
            for r in 0..rounds {
                for i in 0..MODES.len() {
                    let k = (i + r) % MODES.len();
                    let (rate, per_request, summary) = round(MODES[k], &server, dir.path())?;
                    rates[k].push(rate);
                    cpu[k].push(per_request);
                    if MODES[k] == Mode::On {
                        costs.push(sweep_cost(&summary));
                    }
                }
                eprint!(".");
            }
            eprintln!();
            let _ = writeln!(
                report,
                "\n### {goroutines} parked goroutines (+ 32 connections)\n\n| | median requests/s | min–max | vs no profiler | server CPU µs per request, median (min–max) | runs |\n|---|---:|---:|---:|---:|---|"
            );
            let base = median(&rates[0]);
            for (k, mode) in MODES.iter().enumerate() {
                let (lo, hi) = spread(&rates[k]);
                let runs: Vec<String> = rates[k].iter().map(|x| format!("{x:.0}")).collect();
                let (clo, chi) = spread(&cpu[k]);
                let _ = writeln!(
                    report,
                    "| {} | {:.0} | {lo:.0}–{hi:.0} | {:.3} | {:.2} ({clo:.2}–{chi:.2}) | {} |",
                    mode.name(),
                    median(&rates[k]),
                    median(&rates[k]) / base,
                    median(&cpu[k]),
                    runs.join(" ")
                );
            }
            // on / off, round by round (the same round's neighbours), and overall
            let ratios: Vec<f64> = rates[2]
                .iter()
                .zip(&rates[1])
                .map(|(on, off)| on / off)
                .collect();
            let (lo, hi) = spread(&ratios);
            let (q1, q3) = quartiles(&ratios);
            let cpu_ratios: Vec<f64> = cpu[1]
                .iter()
                .zip(&cpu[2])
                .map(|(off, on)| off / on)
                .collect();
            let (c1, c3) = quartiles(&cpu_ratios);
            let _ = writeln!(
                report,
                "\ngoroutine view on / off: median of medians {:.3}; per round {:.3} (IQR {q1:.3}–{q3:.3}, min {lo:.3}, max {hi:.3}); server CPU per request off / on, per round {:.3} (IQR {c1:.3}–{c3:.3})\n",
                median(&rates[2]) / median(&rates[1]),
                median(&ratios),
                median(&cpu_ratios)
            );
            let _ = writeln!(
                report,
                "sweeps (waitprof's summary, each round with the view on):\n"
            );
            for c in costs {
                let _ = writeln!(report, "- {c}");
            }
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("\nfailed: {e}");
            let _ = writeln!(report, "\n{goroutines} goroutines: FAILED: {e}");
            failed = true;
        }
    }
    if let Err(e) = scale(&mut report, dir.path()) {
        eprintln!("\nscale failed: {e}");
        let _ = writeln!(report, "\nscale: FAILED: {e}");
        failed = true;
    }
    println!("{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/goroutines.md");
    if std::fs::write(&out, &report).is_ok() {
        eprintln!("written to {}", out.display());
    }
    if failed {
        std::process::exit(1);
    }
}
