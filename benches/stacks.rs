//! How complete blocked stacks are on real servers built without frame pointers
//! (Debian's nginx, redis-server and memcached, under load) and on the demo built without
//! them: for offcputime, `waitprof --unwind fp` and waitprof (unwind tables), the share
//! of blocked time whose user stack reaches its thread's entry (`_start`/`main`,
//! `start_thread`, `clone3`) and the median user stack depth (by time). Run as root with
//! `.ci/bench-stacks`; results go to stdout and target/stacks.md (see BENCHMARKS.md).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{free_port, start_nginx, wait_listening, Res};

const WAITPROF: &str = env!("CARGO_BIN_EXE_waitprof");
const SECS: u64 = 5;
const ENTRY: [&str; 7] = [
    "_start",
    "main",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone3",
    "__clone3",
];

/// Blocked time and its stacks: (user frames root first, time).
struct Profile {
    stacks: Vec<(Vec<String>, u64)>,
}

impl Profile {
    fn total(&self) -> u64 {
        self.stacks.iter().map(|(_, v)| v).sum()
    }

    fn complete_share(&self) -> f64 {
        let complete: u64 = self
            .stacks
            .iter()
            .filter(|(f, _)| f.iter().any(|f| ENTRY.contains(&f.as_str())))
            .map(|(_, v)| v)
            .sum();
        100.0 * complete as f64 / self.total().max(1) as f64
    }

    fn median_depth(&self) -> usize {
        let mut d: Vec<(usize, u64)> = self
            .stacks
            .iter()
            .map(|(f, v)| (f.iter().filter(|f| !f.starts_with("[unknown")).count(), *v))
            .collect();
        d.sort_unstable();
        let half = self.total() / 2;
        let mut seen = 0;
        for (depth, v) in d {
            seen += v;
            if seen >= half {
                return depth;
            }
        }
        0
    }
}

/// waitprof's folded lines: user frames are those between the command and the syscall
/// frame (`[futex]_[i]`); run-queue lines and waits with no stack are left out.
fn waitprof_profile(folded: &str) -> Profile {
    let mut stacks = Vec::new();
    for line in folded.lines() {
        let Some((stack, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        if stack.ends_with("[run queue]_[j]")
            || stack.contains("[blocked before attach]")
            || stack.contains("[new thread]")
        {
            continue;
        }
        let user: Vec<String> = stack
            .split(';')
            .skip(1)
            .take_while(|f| !f.ends_with("_[i]"))
            .map(str::to_string)
            .collect();
        stacks.push((user, v));
    }
    Profile { stacks }
}

/// offcputime's output: per stack, kernel frames, then user frames (both leaf first),
/// then `- comm (pid)` and the time. User frames follow the last kernel entry frame.
fn offcputime_profile(out: &str) -> Profile {
    let mut stacks = Vec::new();
    let mut frames: Vec<String> = Vec::new();
    let mut after_comm = false;
    for line in out.lines().map(str::trim) {
        if line.is_empty() {
            frames.clear();
            after_comm = false;
        } else if line.starts_with("- ") || line == "-" || line.starts_with("-  ") {
            after_comm = true;
        } else if after_comm {
            if let Ok(v) = line.parse::<u64>() {
                let entry = frames
                    .iter()
                    .rposition(|f| f.starts_with("entry_SYSCALL") || f.starts_with("asm_"))
                    .map_or(0, |i| i + 1);
                let user: Vec<String> = frames[entry..].iter().rev().cloned().collect();
                stacks.push((user, v));
            }
            frames.clear();
            after_comm = false;
        } else {
            frames.push(line.to_string());
        }
    }
    Profile { stacks }
}

fn run_waitprof(pid: u32, unwind: &str, dir: &Path) -> Res<Profile> {
    let svg = dir.join(format!("stacks-{pid}-{unwind}.svg"));
    let out = Command::new(WAITPROF)
        .args([
            "-p",
            &pid.to_string(),
            "-d",
            &format!("{SECS}s"),
            "--no-wakers",
        ])
        .args(["--unwind", unwind, "-o"])
        .arg(&svg)
        .output()
        .map_err(|e| format!("running waitprof: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "waitprof failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let folded = std::fs::read_to_string(svg.with_extension("folded"))
        .map_err(|e| format!("reading waitprof's folded stacks: {e}"))?;
    Ok(waitprof_profile(&folded))
}

fn run_offcputime(pid: u32) -> Res<Profile> {
    let out = Command::new("offcputime")
        .args(["-p", &pid.to_string(), &SECS.to_string()])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running offcputime: {e}"))?;
    Ok(offcputime_profile(&String::from_utf8_lossy(&out.stdout)))
}

/// A server and the load that keeps it busy while it is profiled.
struct Server {
    name: &'static str,
    child: Child,
    pid: u32,
    load: Box<dyn Fn() -> Res<Child>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(dir: &Path) -> Res<Server> {
    let (child, port) = start_nginx(dir, false)?;
    let pid = child.id();
    Ok(Server {
        name: "nginx (wrk -t1 -c32)",
        child,
        pid,
        load: Box::new(move || {
            Command::new("wrk")
                .args(["-t1", "-c32", &format!("-d{}s", SECS + 3)])
                .arg(format!("http://127.0.0.1:{port}/"))
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting wrk: {e}"))
        }),
    })
}

fn redis() -> Res<Server> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server: {e}"))?;
    let pid = child.id();
    wait_listening(port, "redis-server")?;
    Ok(Server {
        name: "redis-server (redis-benchmark -c 20, get/set)",
        child,
        pid,
        load: Box::new(move || {
            Command::new("timeout")
                .arg((SECS + 3).to_string())
                .args(["redis-benchmark", "-q", "-p", &port.to_string()])
                .args(["-n", "100000000", "-c", "20", "-t", "get,set"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting redis-benchmark: {e}"))
        }),
    })
}

fn memcached() -> Res<Server> {
    let port = free_port()?;
    let child = Command::new("memcached")
        .args([
            "-u",
            "root",
            "-t",
            "4",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .spawn()
        .map_err(|e| format!("starting memcached: {e}"))?;
    let pid = child.id();
    wait_listening(port, "memcached")?;
    Ok(Server {
        name: "memcached -t 4 (8 clients, get/set)",
        child,
        pid,
        load: Box::new(move || {
            // this benchmark again, as the load generator (see main)
            Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                .args([
                    "--memcached-load",
                    &port.to_string(),
                    &(SECS + 3).to_string(),
                ])
                .spawn()
                .map_err(|e| format!("starting the memcached load: {e}"))
        }),
    })
}

/// 8 connections doing set/get round trips until `secs` have passed.
fn memcached_load(port: u16, secs: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                let mut r = BufReader::new(s.try_clone().expect("cloning the socket"));
                let mut line = String::new();
                while !stop.load(Ordering::Relaxed) {
                    let req = format!("set k{i} 0 0 5\r\nhello\r\nget k{i}\r\n");
                    if s.write_all(req.as_bytes()).is_err() {
                        return;
                    }
                    // STORED, VALUE line, data, END
                    for _ in 0..4 {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
}

/// The demo built without frame pointers, in its own target directory.
fn demo_without_frame_pointers() -> Res<Server> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    eprint!("(building the demo without frame pointers) ");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .env("RUSTFLAGS", "-C force-frame-pointers=no")
        .args(["build", "--release", "--bin", "waitprof-demo"])
        .args(["--target-dir", "target/nofp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("building the demo: {e}"))?;
    if !status.success() {
        return Err("building the demo without frame pointers failed".into());
    }
    let mut child = Command::new(root.join("target/nofp/release/waitprof-demo"))
        .args(["--secs", &(3 * (SECS + 2) + 5).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the demo: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(s)) = child.try_wait() {
        return Err(format!("the demo exited: {s}"));
    }
    let pid = child.id();
    Ok(Server {
        name: "waitprof-demo built without frame pointers",
        child,
        pid,
        load: Box::new(|| Command::new("true").spawn().map_err(|e| e.to_string())),
    })
}

/// Starts a server (in the benchmark's temporary directory).
type Start = fn(&Path) -> Res<Server>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memcached-load") {
        let port = args[i + 1].parse().expect("a port");
        let secs = args[i + 2].parse().expect("seconds");
        memcached_load(port, secs);
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the stacks benchmark loads BPF programs: run it as root (.ci/bench-stacks)");
        std::process::exit(2);
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut report = String::new();
    let _ = writeln!(
        report,
        "## Stack completeness, run of {} ({SECS} s per profile)\n\n\
         | target | profiler | blocked time with a stack reaching its entry | median user depth |\n\
         |---|---|---:|---:|",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
    );
    let servers: [(&str, Start); 4] = [
        ("nginx", nginx),
        ("redis", |_| redis()),
        ("memcached", |_| memcached()),
        ("demo", |_| demo_without_frame_pointers()),
    ];
    let mut failed = false;
    for (what, start) in servers {
        eprint!("{what} ");
        let result = (|| -> Res<()> {
            let server = start(dir.path())?;
            for tool in ["offcputime", "waitprof --unwind fp", "waitprof"] {
                let mut load = (server.load)()?;
                std::thread::sleep(Duration::from_millis(500));
                let p = match tool {
                    "offcputime" => run_offcputime(server.pid),
                    "waitprof --unwind fp" => run_waitprof(server.pid, "fp", dir.path()),
                    _ => run_waitprof(server.pid, "dwarf", dir.path()),
                };
                let _ = load.kill();
                let _ = load.wait();
                let p = p?;
                eprint!(".");
                let _ = writeln!(
                    report,
                    "| {} | {tool} | {:.1}% | {} |",
                    server.name,
                    p.complete_share(),
                    p.median_depth()
                );
            }
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("\n{what} failed: {e}");
            let _ = writeln!(
                report,
                "| {what} | FAILED: {} | | |",
                e.trim().replace('\n', " ")
            );
            failed = true;
        }
    }
    eprintln!();
    println!("{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/stacks.md");
    if std::fs::write(&out, &report).is_ok() {
        eprintln!("written to {}", out.display());
    }
    if failed {
        std::process::exit(1);
    }
}
