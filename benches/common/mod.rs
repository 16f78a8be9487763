//! What the benchmarks share: starting a server on a free loopback port (nginx among
//! them) and waiting until it listens, driving it with wrk, medians, and a child's peak
//! memory.

// each benchmark uses part of this
#![allow(dead_code)]

pub mod rss;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, String>;

/// A loopback port nobody listens on now.
pub fn free_port() -> Res<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Waits (up to 10 s) until something accepts connections on the loopback `port`.
pub fn wait_listening(port: u16, what: &str) -> Res<()> {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!("{what} did not start listening"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// nginx as one process (no master, one worker; on CPU 0 with `pin`), answering
/// `hello` on a free loopback port, its files in `dir`. Returns it and its port once it
/// listens.
pub fn start_nginx(dir: &Path, pin: bool) -> Res<(Child, u16)> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1;{affinity}\n\
             pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }} }}\n",
            affinity = if pin { " worker_cpu_affinity 01;" } else { "" },
            d = dir.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting nginx: {e}"))?;
    wait_listening(port, "nginx")?;
    Ok((child, port))
}

/// The median; NaN for no values.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Requests per second of one bounded `wrk -t1 -c32` run against the loopback `port`,
/// wrk on CPU 1 (the servers measured run on CPU 0).
pub fn wrk_rate(port: u16, secs: u32) -> Res<f64> {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c32"])
        .arg(format!("-d{secs}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

/// Reaps a child and returns its status and peak RSS (KiB, `rss::watch_peak_kb`, from
/// when this is called until it exits).
pub fn wait_rss(child: &Child) -> Res<(i32, u64)> {
    let pid = child.id() as i32;
    let peak = rss::watch_peak_kb(child.id());
    let mut status = 0;
    // SAFETY: waits for our own child; status is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok((status, peak))
}
