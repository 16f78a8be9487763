//! The bundled demo workload: a small TCP server that waits in all the ways waitprof
//! breaks out, with its own load generator, so `waitprof -- waitprof-demo` shows them all.
//!
//! - an acceptor thread blocks in accept4 until a client connects;
//! - worker threads wait in epoll_wait for requests on their connections;
//! - each request takes a shared lock held while "updating stats" (futex contention);
//! - it then queues a job for a pool of job runners parked on a condition variable;
//! - client threads send requests with think time between them (nanosleep: kind other).
//!
//! `waitprof-demo [--secs N] [--workers N] [--clients N]`; it exits after N seconds
//! (default 8) or on SIGTERM.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use anyhow::{bail, Context, Result};
use std::thread;
use std::time::{Duration, Instant};

struct Shared {
    stats: Mutex<u64>,
    jobs: Mutex<VecDeque<u64>>,
    job_ready: Condvar,
    done: AtomicBool,
    served: AtomicU64,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .with_context(|| format!("spawning the demo thread {name}"))
}

/// Locks, ignoring poisoning: one panicked demo thread should not take the others down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for connections and hands each one to a worker's epoll set.
#[inline(never)]
fn accept_loop(listener: TcpListener, epfds: Vec<i32>, shared: Arc<Shared>) {
    for (i, conn) in listener.incoming().enumerate() {
        if shared.done.load(Ordering::Relaxed) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let fd = conn.into_raw_fd();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: registering a socket we own in a valid epoll set.
        unsafe { libc::epoll_ctl(epfds[i % epfds.len()], libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
}

/// Burns a little CPU, as real request handling would.
#[inline(never)]
fn compute(rounds: u64) -> u64 {
    (0..rounds).fold(1u64, |x, i| {
        std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i))
    })
}

/// The contended part: every request updates shared stats under one lock.
#[inline(never)]
fn update_stats(shared: &Shared) {
    let mut stats = lock(&shared.stats);
    *stats = stats.wrapping_add(compute(20_000));
}

#[inline(never)]
fn handle_request(fd: i32, shared: &Shared) -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: reading into a valid buffer from a socket the worker owns.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        // SAFETY: closing a socket this worker owns; epoll drops it on close.
        unsafe { libc::close(fd) };
        return false;
    }
    update_stats(shared);
    lock(&shared.jobs).push_back(n as u64);
    shared.job_ready.notify_one();
    // SAFETY: writing from a valid buffer.
    unsafe { libc::write(fd, b"ok\n".as_ptr().cast(), 3) };
    shared.served.fetch_add(1, Ordering::Relaxed);
    true
}

/// Waits in epoll_wait for requests on its connections.
#[inline(never)]
fn worker_loop(epfd: i32, shared: Arc<Shared>) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
    while !shared.done.load(Ordering::Relaxed) {
        // SAFETY: events is a valid buffer of 16 entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), 16, 100) };
        for ev in events.iter().take(n.max(0) as usize) {
            handle_request(ev.u64 as i32, &shared);
        }
    }
}

/// Background jobs: parked on a condition variable until a request queues one.
#[inline(never)]
fn job_runner(shared: Arc<Shared>) {
    loop {
        let mut jobs = lock(&shared.jobs);
        while jobs.is_empty() {
            if shared.done.load(Ordering::Relaxed) {
                return;
            }
            jobs = shared
                .job_ready
                .wait_timeout(jobs, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let job = jobs.pop_front().unwrap_or(0);
        drop(jobs);
        compute(job * 100);
    }
}

/// One client: request, response, think time.
#[inline(never)]
fn client_loop(addr: std::net::SocketAddr, shared: Arc<Shared>) {
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return;
    };
    // a request sent just as the workers stop gets no reply: do not wait for it forever
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    while !shared.done.load(Ordering::Relaxed) {
        if conn.write_all(b"get /\n").is_err() {
            return;
        }
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn main() -> Result<()> {
    let secs = arg("--secs", 8);
    let workers = arg("--workers", 3).max(1);
    let clients = arg("--clients", 6);
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let shared = Arc::new(Shared {
        stats: Mutex::new(0),
        jobs: Mutex::new(VecDeque::new()),
        job_ready: Condvar::new(),
        done: AtomicBool::new(false),
        served: AtomicU64::new(0),
    });
    // SAFETY: plain syscall; each worker owns one epoll set for the whole run.
    let epfds: Vec<i32> = (0..workers)
        .map(|_| unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
        .collect();
    if epfds.iter().any(|&fd| fd < 0) {
        bail!("epoll_create1 failed: {}", std::io::Error::last_os_error());
    }
    println!(
        "waitprof-demo: pid {} serving on {addr} for {secs}s",
        std::process::id()
    );

    let mut threads = Vec::new();
    {
        let (epfds, shared) = (epfds.clone(), shared.clone());
        spawn("acceptor".into(), move || {
            accept_loop(listener, epfds, shared)
        })?;
    }
    for (i, &epfd) in epfds.iter().enumerate() {
        let shared = shared.clone();
        threads.push(spawn(format!("worker-{i}"), move || {
            worker_loop(epfd, shared)
        })?);
    }
    for i in 0..2 {
        let shared = shared.clone();
        threads.push(spawn(format!("jobs-{i}"), move || job_runner(shared))?);
    }
    let start = Instant::now();
    for i in 0..clients {
        let shared = shared.clone();
        threads.push(spawn(format!("client-{i}"), move || {
            client_loop(addr, shared)
        })?);
        // connections arrive over time, so the acceptor visibly waits for them
        thread::sleep(Duration::from_millis(300));
    }
    thread::sleep(Duration::from_secs(secs).saturating_sub(start.elapsed()));
    shared.done.store(true, Ordering::Relaxed);
    shared.job_ready.notify_all();
    // wake the acceptor so it sees `done`
    let _ = TcpStream::connect(addr).map(|mut c| c.read(&mut [0u8; 1]));
    for t in threads {
        let _ = t.join();
    }
    println!(
        "waitprof-demo: served {} requests",
        shared.served.load(Ordering::Relaxed)
    );
    Ok(())
}
