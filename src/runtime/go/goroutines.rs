//! The goroutine sampler: reads a running Go program's goroutines from its memory, at a
//! steady rate, without stopping it. Each sweep reads `runtime.allgs`, then every `g`
//! (status, wait reason, goid, saved registers), then walks the frame-pointer chain of
//! each goroutine that is not running from its saved `g.sched` (pc, sp, bp), all with
//! batched `process_vm_readv` calls. A goroutine whose `g` changed while its stack was
//! read (it ran in between) is counted as raced and keeps no stack: a stack it did not
//! have is never reported. A parked goroutine's stack does not change until it runs, so
//! the stack walked once is reused while its goid and saved registers stay the same.
//!
//! Durations are sampled: each sweep gives every goroutine the time since the previous
//! sweep, in the state it is in now. The sweep rate adapts so that sweeping costs at
//! most `BUDGET` of one CPU (10 ms between sweeps at the fastest).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::binary::{GoBinary, Layout};
use crate::model::{GState, GoroutineRow, GoroutineView, Mapping};
use crate::target::files::TargetFile;

/// The shortest time between sweeps.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);
/// The share of one CPU the sweeps may take.
pub const BUDGET: f64 = 0.01;
/// The most goroutines read in a sweep (the rest are counted, not read).
pub const MAX_GOROUTINES: usize = 1 << 20;
/// The deepest goroutine stack walked, in frames.
const MAX_FRAMES: usize = 127;
/// Bytes of stack read per frame-pointer step (most frames are smaller: one read then
/// covers several).
const WINDOW: u64 = 1024;
/// At most this many iovecs per process_vm_readv (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// `runtime.g`'s atomicstatus values (runtime2.go), without the `_Gscan` bit.
const G_RUNNABLE: u32 = 1;
const G_RUNNING: u32 = 2;
const G_SYSCALL: u32 = 3;
const G_WAITING: u32 = 4;
const G_PREEMPTED: u32 = 9;
const G_SCAN: u32 = 0x1000;

/// Reads another process's memory with process_vm_readv, many ranges per call.
struct Memory {
    pid: libc::pid_t,
    /// The process is gone (ESRCH).
    gone: bool,
}

impl Memory {
    /// Reads each `(address, length)` into `out` (back to back); returns whether each
    /// range was read in full. A range that cannot be read costs only itself.
    fn read_many(&mut self, reqs: &[(u64, usize)], out: &mut Vec<u8>) -> Vec<bool> {
        let total: usize = reqs.iter().map(|r| r.1).sum();
        out.clear();
        out.resize(total, 0);
        let mut ok = vec![false; reqs.len()];
        let mut starts = Vec::with_capacity(reqs.len());
        let mut at = 0;
        for r in reqs {
            starts.push(at);
            at += r.1;
        }
        let mut i = 0;
        while i < reqs.len() && !self.gone {
            let n = (reqs.len() - i).min(IOV_MAX);
            let local: Vec<libc::iovec> = (i..i + n)
                .map(|k| libc::iovec {
                    // SAFETY: in bounds: starts[k] + reqs[k].1 <= total = out.len()
                    iov_base: unsafe { out.as_mut_ptr().add(starts[k]) }.cast(),
                    iov_len: reqs[k].1,
                })
                .collect();
            let remote: Vec<libc::iovec> = (i..i + n)
                .map(|k| libc::iovec {
                    iov_base: reqs[k].0 as *mut libc::c_void,
                    iov_len: reqs[k].1,
                })
                .collect();
            // SAFETY: local iovecs point into `out`, sized above; remote ones are only
            // read by the kernel, in the other process, which checks them.
            let got = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    local.as_ptr(),
                    n as libc::c_ulong,
                    remote.as_ptr(),
                    n as libc::c_ulong,
                    0,
                )
            };
            if got < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::ESRCH) => self.gone = true,
                    // the first range is unreadable: skip it, go on with the next
                    _ => i += 1,
                }
                continue;
            }
            // whole ranges were read up to where it stopped; the one it stopped in is
            // unreadable (partly or not at all)
            let mut left = got as usize;
            let mut k = i;
            while k < i + n && left >= reqs[k].1 {
                left -= reqs[k].1;
                ok[k] = true;
                k += 1;
            }
            i = k + 1;
        }
        ok
    }
}

fn u64_at(b: &[u8], at: u64) -> u64 {
    let at = at as usize;
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

fn u32_at(b: &[u8], at: u64) -> u32 {
    let at = at as usize;
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// What one read of a `g` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct G {
    addr: u64,
    goid: u64,
    status: u32,
    reason: u8,
    pc: u64,
    sp: u64,
    bp: u64,
    lo: u64,
    hi: u64,
    startpc: u64,
    m: u64,
}

impl G {
    fn parse(addr: u64, b: &[u8], o: &super::offsets::Offsets) -> G {
        G {
            addr,
            goid: u64_at(b, o.goid),
            status: u32_at(b, o.atomicstatus) & !G_SCAN,
            reason: b.get(o.waitreason as usize).copied().unwrap_or(0),
            pc: u64_at(b, o.sched_pc),
            sp: u64_at(b, o.sched_sp),
            bp: u64_at(b, o.sched_bp),
            lo: u64_at(b, o.stack_lo),
            hi: u64_at(b, o.stack_hi),
            startpc: u64_at(b, o.startpc),
            m: u64_at(b, o.m),
        }
    }

    /// The registers its stack is walked from: equal means the same stack.
    fn regs(&self) -> Regs {
        (self.goid, self.pc, self.sp, self.bp, self.status)
    }
}

/// Accumulated samples of one (state, stack).
#[derive(Default)]
struct Acc {
    ns: u64,
    samples: u64,
    goids: HashSet<u64>,
}

/// The most distinct goroutines remembered per (state, stack), for their count.
const MAX_GOIDS: usize = 100_000;

/// A stack key: leaf-first instruction pointers (with an unwinder marker last when the
/// walk stopped short), or none.
type Ips = Option<Arc<[u64]>>;

/// A goroutine's registers as read: (goid, pc, sp, bp, status).
type Regs = (u64, u64, u64, u64, u32);

/// What a sampler hands back: the view, and its stacks by id (leaf first).
pub type Sampled = (GoroutineView, HashMap<u64, Vec<u64>>);

struct Sweeper {
    mem: Memory,
    layout: Layout,
    /// Added to the binary's addresses (a position-independent executable).
    bias: u64,
    /// Go 1.23 and later save a goroutine's frame pointer when it enters a syscall.
    syscall_bp: bool,
    /// The function table: the size of a goroutine's first frame.
    funcs: Option<Arc<super::pclntab::GoFuncs>>,
    /// g address -> (its registers when walked, its stack).
    cache: HashMap<u64, (Regs, Ips)>,
    acc: HashMap<(GState, Ips, bool), Acc>,
    /// goid -> when it was first seen runnable in its current runnable spell.
    runnable_since: HashMap<u64, u64>,
    view: GoroutineView,
    buf: Vec<u8>,
    last_ns: u64,
    seen: HashSet<u64>,
}

fn marker(m: crate::bpf::types::wp_unwind_stop) -> u64 {
    u64::from(m.0)
}

impl Sweeper {
    /// One sweep at `now_ns`: every goroutine's state gets `now_ns - last`.
    fn sweep(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_ns);
        self.last_ns = now_ns;
        let o = self.layout.offsets;
        let mut buf = std::mem::take(&mut self.buf);
        // the slice header, then its array
        let ok = self
            .mem
            .read_many(&[(self.layout.allgs + self.bias, 24)], &mut buf);
        if !ok[0] {
            self.view.unreadable_sweeps += 1;
            self.buf = buf;
            return;
        }
        let (ptr, len, cap) = (u64_at(&buf, 0), u64_at(&buf, 8), u64_at(&buf, 16));
        if ptr == 0 || len > cap || len == 0 {
            self.view.unreadable_sweeps += 1;
            self.buf = buf;
            return;
        }
        let n = (len as usize).min(MAX_GOROUTINES);
        self.view.beyond_limit = self.view.beyond_limit.max(len.saturating_sub(n as u64));
        if !self.mem.read_many(&[(ptr, n * 8)], &mut buf)[0] {
            self.view.unreadable_sweeps += 1;
            self.buf = buf;
            return;
        }
        let gptrs: Vec<u64> = (0..n as u64)
            .map(|i| u64_at(&buf, i * 8))
            .filter(|&g| g != 0 && g % 8 == 0)
            .collect();
        let glen = o.g_read_len() as usize;
        let reqs: Vec<(u64, usize)> = gptrs.iter().map(|&g| (g, glen)).collect();
        let ok = self.mem.read_many(&reqs, &mut buf);
        let gs: Vec<G> = gptrs
            .iter()
            .enumerate()
            .filter(|&(i, _)| ok[i])
            .map(|(i, &g)| G::parse(g, &buf[i * glen..(i + 1) * glen], &o))
            .filter(|g| {
                matches!(
                    g.status,
                    G_RUNNABLE | G_RUNNING | G_SYSCALL | G_WAITING | G_PREEMPTED
                )
            })
            .collect();
        self.view.unreadable_gs += ok.iter().filter(|&&k| !k).count() as u64;
        self.buf = buf;

        // stacks: reused while a goroutine's registers are unchanged, else walked
        let mut stacks: Vec<Ips> = vec![None; gs.len()];
        let mut walk = Vec::new();
        for (i, g) in gs.iter().enumerate() {
            match self.cache.get(&g.addr) {
                Some((regs, ips)) if *regs == g.regs() => stacks[i] = ips.clone(),
                _ if g.status == G_RUNNING => {
                    // its saved registers are cleared while it runs: only its start
                    stacks[i] = Some(Arc::from([g.startpc].as_slice()));
                }
                _ => walk.push(i),
            }
        }
        let walked = self.walk(&gs, &walk);
        // a goroutine that ran while its stack was read has a stack it may not have had
        let reqs: Vec<(u64, usize)> = walk.iter().map(|&i| (gs[i].addr, glen)).collect();
        let mut buf = std::mem::take(&mut self.buf);
        let ok = self.mem.read_many(&reqs, &mut buf);
        let mut raced = HashSet::new();
        for (k, (&i, ips)) in walk.iter().zip(walked).enumerate() {
            let again = G::parse(
                gs[i].addr,
                buf.get(k * glen..(k + 1) * glen).unwrap_or(&[]),
                &o,
            );
            if !ok[k] || again.regs() != gs[i].regs() {
                raced.insert(i);
                self.view.raced += 1;
                continue;
            }
            self.cache.insert(gs[i].addr, (gs[i].regs(), ips.clone()));
            stacks[i] = ips;
        }
        self.buf = buf;
        // the cache keeps only goroutines that still exist
        let live: HashSet<u64> = gs.iter().map(|g| g.addr).collect();
        self.cache.retain(|a, _| live.contains(a));

        let mut runnable = 0u64;
        let mut now_runnable = HashSet::new();
        for (i, g) in gs.iter().enumerate() {
            let state = match g.status {
                G_WAITING => GState::Waiting(self.reason_name(g.reason)),
                G_RUNNABLE | G_PREEMPTED => GState::Runnable,
                G_RUNNING => GState::Running,
                _ => GState::Syscall,
            };
            if state == GState::Runnable {
                runnable += 1;
                now_runnable.insert(g.goid);
                self.runnable_since.entry(g.goid).or_insert(now_ns);
            }
            self.seen.insert(g.goid);
            let stack = if raced.contains(&i) {
                None
            } else {
                stacks[i].clone()
            };
            let a = self
                .acc
                .entry((state, stack, raced.contains(&i)))
                .or_default();
            a.ns += dt;
            a.samples += 1;
            if a.goids.len() < MAX_GOIDS {
                a.goids.insert(g.goid);
            }
        }
        // runnable spells that ended
        let ended: Vec<u64> = self
            .runnable_since
            .keys()
            .filter(|g| !now_runnable.contains(g))
            .copied()
            .collect();
        for goid in ended {
            if let Some(since) = self.runnable_since.remove(&goid) {
                self.view
                    .runnable_spells_ns
                    .push(now_ns.saturating_sub(since));
            }
        }
        self.view.runnable_max = self.view.runnable_max.max(runnable);
        self.view.runnable_series.push((now_ns, runnable as u32));
        self.view.goroutines_max = self.view.goroutines_max.max(gs.len() as u64);
        self.view.samples += gs.len() as u64;
        self.view.sweeps += 1;
    }

    fn reason_name(&self, reason: u8) -> String {
        match self.layout.wait_reasons.get(usize::from(reason)) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => format!("wait reason {reason}"),
        }
    }

    /// Walks the frame-pointer chains of `gs[which]` from their saved registers, all at
    /// once: each round reads one window of stack per goroutine still being walked.
    fn walk(&mut self, gs: &[G], which: &[usize]) -> Vec<Ips> {
        struct Walk {
            ips: Vec<u64>,
            bp: u64,
            lo: u64,
            hi: u64,
            done: bool,
        }
        let mut walks: Vec<Walk> = which
            .iter()
            .map(|&i| {
                let g = &gs[i];
                let mut w = Walk {
                    ips: vec![g.pc],
                    bp: g.bp,
                    lo: g.lo,
                    hi: g.hi,
                    done: false,
                };
                if g.pc == 0 || g.sp < g.lo || g.sp >= g.hi {
                    w.ips = vec![marker(crate::bpf::types::wp_unwind_stop::WP_UNW_UNREADABLE)];
                    w.done = true;
                } else if g.bp == 0 {
                    // never run (its entry, then goexit), or in a syscall before Go 1.23,
                    // which saved no frame pointer
                    if g.status == G_SYSCALL && !self.syscall_bp {
                        w.ips
                            .push(marker(crate::bpf::types::wp_unwind_stop::WP_UNW_NOT_MAPPED));
                    }
                    w.done = true;
                }
                w
            })
            .collect();
        let mut buf = std::mem::take(&mut self.buf);
        // The first frame by its size (pcsp), as the runtime's traceback does: a
        // goroutine stopped before its frame was set up (at a stack check, or never run)
        // has its return address at sp and its caller's frame pointer still in bp; a
        // goroutine in a syscall before Go 1.23 saved no bp at all.
        if let Some(funcs) = &self.funcs {
            let mut first = Vec::new();
            for (k, &i) in which.iter().enumerate() {
                let g = &gs[i];
                if g.pc == 0 || g.sp < g.lo || g.sp >= g.hi {
                    continue;
                }
                if let Some(d) = funcs.sp_delta(g.pc.wrapping_sub(self.bias)) {
                    let at = if d == 0 {
                        g.sp
                    } else {
                        g.sp.wrapping_add(d - 8)
                    };
                    if at >= g.sp && at + 16 <= g.hi {
                        first.push((k, d, at));
                    }
                }
            }
            let reqs: Vec<(u64, usize)> = first.iter().map(|&(_, _, at)| (at, 16)).collect();
            let ok = self.mem.read_many(&reqs, &mut buf);
            for (j, &(k, d, _)) in first.iter().enumerate() {
                let w = &mut walks[k];
                w.ips.truncate(1);
                w.done = false;
                if !ok[j] {
                    w.ips
                        .push(marker(crate::bpf::types::wp_unwind_stop::WP_UNW_UNREADABLE));
                    w.done = true;
                    continue;
                }
                let (saved_bp, ret) = if d == 0 {
                    (w.bp, u64_at(&buf, j as u64 * 16))
                } else {
                    (u64_at(&buf, j as u64 * 16), u64_at(&buf, j as u64 * 16 + 8))
                };
                if ret == 0 {
                    w.done = true;
                    continue;
                }
                w.ips.push(ret);
                if saved_bp == 0 || saved_bp + 16 > w.hi || saved_bp < w.lo {
                    w.done = true;
                } else {
                    w.bp = saved_bp;
                }
            }
        }
        loop {
            let pending: Vec<usize> = (0..walks.len()).filter(|&k| !walks[k].done).collect();
            if pending.is_empty() {
                break;
            }
            let reqs: Vec<(u64, usize)> = pending
                .iter()
                .map(|&k| {
                    let w = &walks[k];
                    (w.bp, w.hi.saturating_sub(w.bp).min(WINDOW) as usize)
                })
                .collect();
            let ok = self.mem.read_many(&reqs, &mut buf);
            let mut at = 0;
            for (j, &k) in pending.iter().enumerate() {
                let (base, len) = reqs[j];
                let window = &buf[at..at + len];
                at += len;
                let w = &mut walks[k];
                if !ok[j] {
                    w.ips
                        .push(marker(crate::bpf::types::wp_unwind_stop::WP_UNW_UNREADABLE));
                    w.done = true;
                    continue;
                }
                // steps inside this window
                while w.bp >= base && w.bp + 16 <= base + len as u64 {
                    let off = w.bp - base;
                    let next = u64_at(window, off);
                    let ret = u64_at(window, off + 8);
                    if ret == 0 {
                        w.done = true;
                        break;
                    }
                    w.ips.push(ret);
                    if w.ips.len() >= MAX_FRAMES {
                        w.ips
                            .push(marker(crate::bpf::types::wp_unwind_stop::WP_UNW_TRUNCATED));
                        w.done = true;
                        break;
                    }
                    // the chain ends at the goroutine's first frame (saved bp 0), and
                    // only ever goes up its own stack
                    if next == 0 {
                        w.done = true;
                        break;
                    }
                    if next <= w.bp || next < w.lo || next + 16 > w.hi {
                        w.ips
                            .push(marker(crate::bpf::types::wp_unwind_stop::WP_UNW_UNREADABLE));
                        w.done = true;
                        break;
                    }
                    w.bp = next;
                }
                if w.bp + 16 > w.hi && !w.done {
                    w.done = true;
                }
            }
        }
        self.buf = buf;
        walks.into_iter().map(|w| Some(Arc::from(w.ips))).collect()
    }
}

/// The sampler's thread and its stop flag.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Option<Sampled>>,
}

/// The main executable's first mapping, and whether it is a Go program's.
fn go_binary(pid: u32) -> Option<(GoBinary, Mapping)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = crate::text::printable(&exe.to_string_lossy()).into_owned();
    let maps = Mapping::read_all(pid).ok()?;
    let m = maps.into_iter().find(|m| m.path == exe && m.offset == 0)?;
    let file = TargetFile::open_mapped(pid, &m).ok()?;
    let reader = file.reader();
    Some((GoBinary::read(&reader)?, m))
}

/// The executable's identity: a launched command is a copy of waitprof until it execs.
fn exe_id(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Sampler {
    /// Starts sampling `pid`'s goroutines from `start_ns` if it is (or, for a launched
    /// command, becomes) a Go program.
    pub fn start(pid: u32, start_ns: u64, launched: bool) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("waitprof-go".to_string())
            .spawn(move || run(pid, start_ns, launched, &flag))
            .ok();
        Sampler {
            stop,
            handle: handle.unwrap_or_else(|| std::thread::spawn(|| None)),
        }
    }

    /// Takes a last sweep at `end_ns` and returns what was seen: None for a program that
    /// is not Go. The stacks are leaf first, keyed by the ids the rows use.
    pub fn finish(self, end_ns: u64) -> Option<Sampled> {
        END_NS.store(end_ns, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        self.handle.thread().unpark();
        self.handle.join().ok().flatten()
    }
}

/// When the session ended, for the last sweep.
static END_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn run(pid: u32, start_ns: u64, launched: bool, stop: &AtomicBool) -> Option<Sampled> {
    // a launched command is recognised once it has exec'd
    let mut checked = None;
    let (binary, mapping) = loop {
        let id = exe_id(pid);
        if id.is_some() && id != checked {
            checked = id;
            if let Some(found) = go_binary(pid) {
                break found;
            }
            if !launched {
                return None;
            }
        }
        if stop.load(Ordering::SeqCst) || id.is_none() {
            return None;
        }
        std::thread::park_timeout(MIN_PERIOD);
    };
    let mut view = GoroutineView {
        version: binary.version.clone(),
        ..GoroutineView::default()
    };
    let layout = match binary.layout {
        Ok(l) => l,
        Err(why) => {
            view.missing = Some(why);
            return Some((view, HashMap::new()));
        }
    };
    view.how = format!(
        "g layout from {}, goroutine list from {}, wait reasons from {}",
        layout.offsets_from, layout.allgs_from, layout.wait_reasons_from
    );
    let bias = if layout.pie {
        mapping.start.wrapping_sub(mapping.offset)
    } else {
        0
    };
    let minor = super::binary::minor_version(&binary.version).unwrap_or(0);
    let mut s = Sweeper {
        mem: Memory {
            pid: pid as libc::pid_t,
            gone: false,
        },
        layout,
        bias,
        syscall_bp: minor >= 23,
        funcs: binary.funcs.clone(),
        cache: HashMap::new(),
        acc: HashMap::new(),
        runnable_since: HashMap::new(),
        view,
        buf: Vec::new(),
        last_ns: start_ns,
        seen: HashSet::new(),
    };
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now = if stopping {
            END_NS.load(Ordering::SeqCst)
        } else {
            crate::session::monotonic_ns()
        };
        let cpu = thread_cpu_ns();
        s.sweep(now);
        let cost = thread_cpu_ns().saturating_sub(cpu);
        s.view.sweep_cpu_ns.push(cost);
        if stopping || s.mem.gone {
            break;
        }
        // at most BUDGET of a CPU
        let period = MIN_PERIOD.max(Duration::from_nanos((cost as f64 / BUDGET) as u64));
        s.view.period_max = s.view.period_max.max(period);
        std::thread::park_timeout(period);
    }
    s.view.goroutines_seen = s.seen.len() as u64;
    s.view.target_gone = s.mem.gone;
    // stacks get ids of their own, beside the kernel's
    let mut stacks = HashMap::new();
    for ((state, ips, raced), a) in s.acc {
        let stack = ips.map(|ips| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            ips.hash(&mut h);
            let id = h.finish() | (1 << 63);
            stacks.insert(id, ips.to_vec());
            id
        });
        s.view.rows.push(GoroutineRow {
            state,
            stack,
            raced,
            ns: a.ns,
            samples: a.samples,
            goroutines: a.goids.len() as u64,
        });
    }
    s.view
        .rows
        .sort_by(|a, b| b.ns.cmp(&a.ns).then(a.state.cmp(&b.state)));
    Some((s.view, stacks))
}
