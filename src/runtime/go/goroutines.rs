//! The goroutine sampler: reads a running Go program's goroutines from its memory, at a
//! steady rate, without stopping it. Each sweep reads `runtime.allgs`, then every `g`
//! (status, wait reason, goid, saved registers), then walks the frame-pointer chain of
//! each goroutine that is not running from its saved `g.sched` (pc, sp, bp), all with
//! batched `process_vm_readv` calls. A goroutine whose `g` changed while its stack was
//! read (it ran in between) is sampled once more as the second read found it; if it ran
//! again, it is counted as raced and keeps no stack: a stack it did not have is never
//! reported. A parked goroutine's stack does not change until it runs, so
//! the stack walked once is reused while its goid and saved registers stay the same.
//!
//! Durations are sampled: each sample stands for the interval from its sweep to the next
//! (the first sweep's also for all the time before it). Not the midpoint: a pause of the
//! whole machine (a hypervisor's steal, a real-time burst) freezes every goroutine where
//! the sweep before it saw them, while the sweep after it wakes with the timers that
//! expired meanwhile and catches the program's goroutines mid-transition; giving it half
//! the pause skewed a 4 s pool wait by 20% under such bursts. The sweep rate adapts
//! so that sweeping costs at most `BUDGET` of one CPU over the session (10 ms between
//! sweeps at the fastest, `MAX_PERIOD` at the slowest), with a costly sweep paid back over
//! several gaps rather than one.

use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::binary::{GoBinary, Layout};
use crate::model::{
    GState, GoroutineRow, GoroutineSpell, GoroutineSpells, GoroutineThread, GoroutineView, Mapping,
};
use crate::target::files::TargetFile;

/// The shortest time between sweeps.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);
/// The share of one CPU the sweeps may take, over the session (a first sweep that walks
/// every stack costs more than the ones that reuse them).
pub const BUDGET: f64 = 0.005;
/// The longest time between sweeps, whatever they cost: with hundreds of thousands of
/// goroutines the budget is exceeded rather than the profile left empty.
pub const MAX_PERIOD: Duration = Duration::from_secs(1);
/// The sampler thread's nice value: above the target's and the machine's ordinary
/// threads, so that a busy machine does not delay sweeps (a delayed sweep stretches the
/// interval its samples stand for). It cannot take more CPU for this: `BUDGET` bounds it.
const NICE: libc::c_int = -10;
/// The most goroutines read in a sweep (the rest are counted, not read).
pub const MAX_GOROUTINES: usize = 400_000;
/// The most runnable spells and (thread, goroutine, stack) triples remembered.
const MAX_SPELLS: usize = 1 << 20;
const MAX_THREAD_PAIRS: usize = 100_000;
/// The most goroutine spells kept for the timeline (`--timeline`; 48 bytes each):
/// beyond them spells are counted, not kept.
pub const MAX_TIMELINE_SPELLS: usize = 1 << 20;
/// The most distinct goroutine stacks kept: a target whose stacks never repeat costs
/// bounded memory (the samples beyond keep their time, not their stacks).
const MAX_STACKS: usize = 200_000;
/// Goroutines read (and walked) per batch: what one batch's buffers hold is bounded
/// (CHUNK × 1 KiB at most), however long a list the target claims.
const CHUNK: usize = 8192;
/// The deepest goroutine stack walked, in frames.
const MAX_FRAMES: usize = 127;
/// Bytes of stack read per frame-pointer step (most frames are smaller: one read then
/// covers several).
const WINDOW: u64 = 1024;
/// The largest goroutine stack believed (the runtime's limit is 1 GB; a `g` claiming
/// more is not read).
const MAX_STACK: u64 = 1 << 30;
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
    /// Where merged ranges are read, kept between calls.
    scratch: Vec<u8>,
}

/// Where each range's bytes go when read back to back, and their total.
fn layout(reqs: &[(u64, usize)]) -> (Vec<usize>, usize) {
    let mut starts = Vec::with_capacity(reqs.len());
    let mut total = 0;
    for r in reqs {
        starts.push(total);
        total += r.1;
    }
    (starts, total)
}

/// Makes `buf` at least `len` long (what is beyond the ranges read is never looked at:
/// each range's bytes are used only if it was read in full).
fn room(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Ranges closer than this are read as one (the runtime allocates `g`s side by side in
/// its spans: one range per span instead of one per goroutine, each page pinned once).
const COALESCE_GAP: u64 = 512;
/// The longest range read as one.
const COALESCE_MAX: u64 = 256 << 10;

impl Memory {
    /// Reads each `(address, length)` into `out` (back to back); returns whether each
    /// range was read in full. Neighbouring ranges are read together; a range that
    /// cannot be read costs only itself.
    fn read_many(&mut self, reqs: &[(u64, usize)], out: &mut Vec<u8>) -> Vec<bool> {
        if reqs.len() < 2 {
            return self.read_raw(reqs, out);
        }
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        order.sort_unstable_by_key(|&i| reqs[i].0);
        // merged ranges: (start, end, members)
        let mut merged: Vec<(u64, u64, Vec<usize>)> = Vec::new();
        for i in order {
            let (a, len) = reqs[i];
            // a range that runs past the end of the address space is never read
            let Some(end) = a.checked_add(len as u64) else {
                continue;
            };
            match merged.last_mut() {
                Some(m)
                    if a <= m.1.saturating_add(COALESCE_GAP)
                        && end.max(m.1) - m.0 <= COALESCE_MAX =>
                {
                    m.1 = m.1.max(end);
                    m.2.push(i);
                }
                _ => merged.push((a, end, vec![i])),
            }
        }
        let ranges: Vec<(u64, usize)> =
            merged.iter().map(|m| (m.0, (m.1 - m.0) as usize)).collect();
        let mut scratch = std::mem::take(&mut self.scratch);
        let ok = self.read_raw(&ranges, &mut scratch);
        let (starts, total) = layout(reqs);
        room(out, total);
        let mut done = vec![false; reqs.len()];
        let mut retry = Vec::new();
        let mut at = 0;
        for (m, &good) in merged.iter().zip(&ok) {
            let len = (m.1 - m.0) as usize;
            for &i in &m.2 {
                if good {
                    let from = at + (reqs[i].0 - m.0) as usize;
                    out[starts[i]..starts[i] + reqs[i].1]
                        .copy_from_slice(&scratch[from..from + reqs[i].1]);
                    done[i] = true;
                } else if m.2.len() > 1 {
                    retry.push(i);
                }
            }
            at += len;
        }
        // a merged range with a hole in it: its members one by one
        if !retry.is_empty() {
            let one: Vec<(u64, usize)> = retry.iter().map(|&i| reqs[i]).collect();
            let got = self.read_raw(&one, &mut scratch);
            let mut at = 0;
            for (k, &i) in retry.iter().enumerate() {
                if got[k] {
                    out[starts[i]..starts[i] + reqs[i].1]
                        .copy_from_slice(&scratch[at..at + reqs[i].1]);
                    done[i] = true;
                }
                at += reqs[i].1;
            }
        }
        self.scratch = scratch;
        done
    }

    /// Reads each range as it is, up to IOV_MAX per call.
    fn read_raw(&mut self, reqs: &[(u64, usize)], out: &mut Vec<u8>) -> Vec<bool> {
        let (starts, total) = layout(reqs);
        room(out, total);
        let mut ok = vec![false; reqs.len()];
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

// Addresses and offsets come from the target's memory: every sum below saturates, and
// a word outside what was read is 0 (which ends a walk).
fn u64_at(b: &[u8], at: u64) -> u64 {
    let Ok(at) = usize::try_from(at) else {
        return 0;
    };
    b.get(at..at.saturating_add(8))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn u32_at(b: &[u8], at: u64) -> u32 {
    let Ok(at) = usize::try_from(at) else {
        return 0;
    };
    b.get(at..at.saturating_add(4))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
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
    goids: FxHashSet<u64>,
}

/// The most distinct goroutines remembered per (state, stack), for their count.
const MAX_GOIDS: usize = 100_000;

/// A stack key: leaf-first instruction pointers (with an unwinder marker last when the
/// walk stopped short), or none.
type Ips = Option<Arc<[u64]>>;

/// Samples are accumulated by (status, wait reason, stack identity, raced).
type AccKey = (u32, u8, usize, bool);

/// A goroutine's registers as read: (goid, pc, sp, bp, status).
type Regs = (u64, u64, u64, u64, u32);

/// Each goroutine's states over the session, for the timeline: a spell begins at the
/// sweep that first saw a goroutine in a state at a stack, and ends at the first sweep
/// that saw it otherwise (or not at all), as the samples' time is counted (the first
/// sweep's spells begin at the session's start).
#[derive(Default)]
struct Spells {
    /// goid -> (since, its sample's key).
    open: FxHashMap<u64, (u64, AccKey)>,
    /// (goid, from, to, key), in the order they ended.
    done: Vec<(u64, u64, u64, AccKey)>,
    dropped: u64,
}

impl Spells {
    fn end(&mut self, goid: u64, from: u64, to: u64, key: AccKey) {
        if self.done.len() < MAX_TIMELINE_SPELLS {
            self.done.push((goid, from, to, key));
        } else {
            self.dropped += 1;
        }
    }

    /// The goroutines of a sweep at `now` (the first sweep's from `start`), by goid.
    fn sweep(&mut self, now: u64, start: u64, seen: &[(u64, AccKey)]) {
        let since = if self.open.is_empty() && self.done.is_empty() {
            start
        } else {
            now
        };
        let mut here = FxHashSet::default();
        for &(goid, key) in seen {
            here.insert(goid);
            match self.open.get(&goid) {
                Some(&(_, k)) if k == key => {}
                Some(&(from, k)) => {
                    self.end(goid, from, now, k);
                    self.open.insert(goid, (now, key));
                }
                None => {
                    self.open.insert(goid, (since, key));
                }
            }
        }
        let gone: Vec<u64> = self
            .open
            .keys()
            .filter(|g| !here.contains(g))
            .copied()
            .collect();
        for goid in gone {
            if let Some((from, k)) = self.open.remove(&goid) {
                self.end(goid, from, now, k);
            }
        }
    }

    /// Every spell still open ends at `end`.
    fn finish(&mut self, end: u64) {
        let mut open: Vec<(u64, (u64, AccKey))> = self.open.drain().collect();
        open.sort_unstable_by_key(|&(goid, _)| goid);
        for (goid, (from, k)) in open {
            self.end(goid, from, end, k);
        }
    }
}

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
    /// g address -> (its registers when walked, its stack, the sweep that last saw it).
    cache: FxHashMap<u64, (Regs, Ips, u64)>,
    generation: u64,
    /// (status, wait reason, stack identity, raced) -> samples.
    acc: FxHashMap<AccKey, Acc>,
    /// Every distinct stack walked, once.
    interned: FxHashSet<Arc<[u64]>>,
    /// The stacks the samples refer to, by identity.
    kept: FxHashMap<usize, Arc<[u64]>>,
    /// A running goroutine's stand-in stack (its start function), by start pc.
    running: FxHashMap<u64, Arc<[u64]>>,
    /// g address -> the goid last seen there, to count goroutines.
    goids: FxHashMap<u64, u64>,
    /// The samples of the last sweep read, and how many sweeps were read.
    last_keys: Vec<AccKey>,
    sweeps_read: u64,
    /// (thread, goid, stack identity) -> time in a system call.
    threads: FxHashMap<(u32, u64, usize), u64>,
    /// goid -> when it was first seen runnable in its current runnable spell.
    runnable_since: FxHashMap<u64, u64>,
    /// Each goroutine's states over time, with `--timeline`.
    spells: Option<Spells>,
    /// When the session began, the sweep before the last, and the time up to which the
    /// samples have been counted.
    start_ns: u64,
    prev_ns: u64,
    covered_ns: u64,
    view: GoroutineView,
    buf: Vec<u8>,
    last_ns: u64,
}

fn marker(m: crate::bpf::types::wp_unwind_stop) -> u64 {
    u64::from(m.0)
}

impl Sweeper {
    /// One sweep at `now_ns`: the interval since the last sweep goes to the samples of
    /// the last sweep (see `carry`).
    fn sweep(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_ns);
        self.prev_ns = self.last_ns;
        self.last_ns = now_ns;
        let o = self.layout.offsets;
        let mut buf = std::mem::take(&mut self.buf);
        // the slice header, then its array
        let ok = self
            .mem
            .read_many(&[(self.layout.allgs.wrapping_add(self.bias), 24)], &mut buf);
        if !ok[0] {
            self.view.unreadable_sweeps += 1;
            self.carry(dt);
            self.buf = buf;
            return;
        }
        let (ptr, len, cap) = (u64_at(&buf, 0), u64_at(&buf, 8), u64_at(&buf, 16));
        if ptr == 0 || len > cap || len == 0 {
            self.view.unreadable_sweeps += 1;
            self.carry(dt);
            self.buf = buf;
            return;
        }
        let n = (len as usize).min(MAX_GOROUTINES);
        self.view.beyond_limit = self.view.beyond_limit.max(len.saturating_sub(n as u64));
        if !self.mem.read_many(&[(ptr, n * 8)], &mut buf)[0] {
            self.view.unreadable_sweeps += 1;
            self.carry(dt);
            self.buf = buf;
            return;
        }
        let gptrs: Vec<u64> = (0..n as u64)
            .map(|i| u64_at(&buf, i * 8))
            .filter(|&g| g != 0 && g % 8 == 0)
            .collect();
        let glen = o.g_read_len() as usize;
        let mut gs: Vec<G> = Vec::with_capacity(gptrs.len());
        for batch in gptrs.chunks(CHUNK) {
            let reqs: Vec<(u64, usize)> = batch.iter().map(|&g| (g, glen)).collect();
            let ok = self.mem.read_many(&reqs, &mut buf);
            gs.extend(
                batch
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| ok[i])
                    .map(|(i, &g)| G::parse(g, &buf[i * glen..(i + 1) * glen], &o))
                    .filter(|g| {
                        matches!(
                            g.status,
                            G_RUNNABLE | G_RUNNING | G_SYSCALL | G_WAITING | G_PREEMPTED
                        )
                    }),
            );
            self.view.unreadable_gs += ok.iter().filter(|&&k| !k).count() as u64;
        }
        self.buf = buf;

        // stacks: reused while a goroutine's registers are unchanged, else walked
        self.generation += 1;
        let generation = self.generation;
        let mut stacks: Vec<Ips> = vec![None; gs.len()];
        let mut walk = Vec::new();
        for (i, g) in gs.iter().enumerate() {
            match self.known_stack(g, generation) {
                Some(stack) => stacks[i] = stack,
                None => walk.push(i),
            }
            // a goroutine not seen before (or a g reused by a new one)
            if self.goids.get(&g.addr) != Some(&g.goid) {
                self.goids.insert(g.addr, g.goid);
                self.view.goroutines_seen += 1;
            }
        }
        let mut raced = vec![false; gs.len()];
        // a goroutine that ran while its stack was read is sampled again once, as it was
        // read the second time (a few microseconds later): dropping its stack would take
        // its time from where it waits, and most often it has just been woken
        let mut again = Vec::new();
        for walk in walk.chunks(CHUNK) {
            again.extend(self.walk_batch(
                &mut gs,
                walk,
                glen,
                generation,
                &mut stacks,
                &mut raced,
                true,
            ));
        }
        let mut walk = Vec::new();
        for i in again {
            match self.known_stack(&gs[i], generation) {
                Some(stack) => stacks[i] = stack,
                None => walk.push(i),
            }
        }
        for walk in walk.chunks(CHUNK) {
            self.walk_batch(
                &mut gs,
                walk,
                glen,
                generation,
                &mut stacks,
                &mut raced,
                false,
            );
        }
        // the caches keep only goroutines that still exist
        self.cache.retain(|_, c| c.2 == generation);
        if self.goids.len() > 2 * gs.len() + 1024 {
            let live: FxHashSet<u64> = gs.iter().map(|g| g.addr).collect();
            self.goids.retain(|a, _| live.contains(a));
        }

        let mut runnable = 0u64;
        let mut now_runnable = FxHashSet::default();
        let mut in_syscall = Vec::new();
        // the interval since the last sweep goes to the samples before it
        self.carry(dt);
        let mut keys = Vec::with_capacity(gs.len());
        for (i, g) in gs.iter().enumerate() {
            let status = match g.status {
                G_PREEMPTED => G_RUNNABLE,
                s => s,
            };
            if status == G_RUNNABLE {
                runnable += 1;
                now_runnable.insert(g.goid);
                self.runnable_since.entry(g.goid).or_insert(now_ns);
            }
            // keyed by the stack's identity: a reused stack is the same Arc
            let stack = if raced[i] { None } else { stacks[i].clone() };
            let ptr = stack
                .as_ref()
                .map_or(0, |s| Arc::as_ptr(s) as *const u64 as usize);
            if let Some(s) = stack {
                self.kept.entry(ptr).or_insert(s);
            }
            let reason = if status == G_WAITING { g.reason } else { 0 };
            if status == G_SYSCALL {
                in_syscall.push((i, ptr));
            }
            let key = (status, reason, ptr, raced[i]);
            keys.push(key);
            let a = self.acc.entry(key).or_default();
            // each sample stands for the interval after it (see `carry`), the first
            // sweep's also for all the time before it
            if self.sweeps_read == 0 {
                a.ns += dt;
                self.covered_ns = now_ns;
            }
            a.samples += 1;
            if a.goids.len() < MAX_GOIDS {
                a.goids.insert(g.goid);
            }
        }
        if let Some(spells) = self.spells.as_mut() {
            let seen: Vec<(u64, AccKey)> =
                gs.iter().zip(&keys).map(|(g, &k)| (g.goid, k)).collect();
            spells.sweep(now_ns, self.start_ns, &seen);
        }
        self.last_keys = keys;
        self.sweeps_read += 1;
        // the threads of goroutines in system calls: g.m's procid is the thread's id
        if !in_syscall.is_empty() {
            let reqs: Vec<(u64, usize)> = in_syscall
                .iter()
                .map(|&(i, _)| (gs[i].m.wrapping_add(o.m_procid), 8))
                .collect();
            let mut buf = std::mem::take(&mut self.buf);
            let ok = self.mem.read_many(&reqs, &mut buf);
            for (k, &(i, ptr)) in in_syscall.iter().enumerate() {
                let tid = u64_at(&buf, k as u64 * 8);
                if !ok[k] || gs[i].m == 0 || tid == 0 || tid > u64::from(u32::MAX) {
                    continue;
                }
                let key = (tid as u32, gs[i].goid, ptr);
                if self.threads.len() < MAX_THREAD_PAIRS || self.threads.contains_key(&key) {
                    *self.threads.entry(key).or_default() += dt;
                }
            }
            self.buf = buf;
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
                if self.view.runnable_spells_ns.len() < MAX_SPELLS {
                    self.view
                        .runnable_spells_ns
                        .push(now_ns.saturating_sub(since));
                }
            }
        }
        self.view.runnable_max = self.view.runnable_max.max(runnable);
        self.view.runnable_series.push((now_ns, runnable as u32));
        self.view.goroutines_max = self.view.goroutines_max.max(gs.len() as u64);
        self.view.samples += gs.len() as u64;
        self.view.sweeps += 1;
    }

    /// A goroutine's stack when it needs no walk: the one walked before while its
    /// registers stay the same, or a running goroutine's start function.
    fn known_stack(&mut self, g: &G, generation: u64) -> Option<Ips> {
        match self.cache.get_mut(&g.addr) {
            Some(c) if c.0 == g.regs() => {
                c.2 = generation;
                Some(c.1.clone())
            }
            _ if g.status == G_RUNNING => {
                // its saved registers are cleared while it runs: only its start
                let start = self
                    .running
                    .entry(g.startpc)
                    .or_insert_with(|| Arc::from([g.startpc].as_slice()));
                Some(Some(start.clone()))
            }
            _ => None,
        }
    }

    /// Walks the stacks of `gs[walk]`, then reads each `g` again: a goroutine that ran
    /// while its stack was read has a stack it may not have had, and keeps none. With
    /// `retry`, such a goroutine (still the same one, in a state that is sampled) becomes
    /// the `g` read the second time instead, and is returned to be sampled again.
    #[allow(clippy::too_many_arguments)]
    fn walk_batch(
        &mut self,
        gs: &mut [G],
        walk: &[usize],
        glen: usize,
        generation: u64,
        stacks: &mut [Ips],
        raced: &mut [bool],
        retry: bool,
    ) -> Vec<usize> {
        let o = self.layout.offsets;
        let walked = self.walk(gs, walk);
        let mut retried = Vec::new();
        let reqs: Vec<(u64, usize)> = walk.iter().map(|&i| (gs[i].addr, glen)).collect();
        let mut buf = std::mem::take(&mut self.buf);
        let ok = self.mem.read_many(&reqs, &mut buf);
        for (k, (&i, ips)) in walk.iter().zip(walked).enumerate() {
            let again = G::parse(
                gs[i].addr,
                buf.get(k * glen..(k + 1) * glen).unwrap_or(&[]),
                &o,
            );
            if !ok[k] || again.regs() != gs[i].regs() {
                let sampled = matches!(
                    again.status,
                    G_RUNNABLE | G_RUNNING | G_SYSCALL | G_WAITING | G_PREEMPTED
                );
                if retry && ok[k] && again.goid == gs[i].goid && sampled {
                    gs[i] = again;
                    retried.push(i);
                    continue;
                }
                raced[i] = true;
                self.view.raced += 1;
                continue;
            }
            // one Arc per distinct stack: samples are keyed by it
            let ips = ips.and_then(|ips| match self.interned.get(&ips) {
                Some(same) => Some(same.clone()),
                None if self.interned.len() < MAX_STACKS => {
                    self.interned.insert(ips.clone());
                    Some(ips)
                }
                None => {
                    self.view.stacks_dropped += 1;
                    None
                }
            });
            // a walk that could not read some of the stack is tried again next time
            let unreadable = marker(crate::bpf::types::wp_unwind_stop::WP_UNW_UNREADABLE);
            if ips.as_ref().is_none_or(|s| s.last() != Some(&unreadable)) {
                self.cache
                    .insert(gs[i].addr, (gs[i].regs(), ips.clone(), generation));
            }
            stacks[i] = ips;
        }
        self.buf = buf;
        retried
    }

    /// Gives `ns` to each sample of the last sweep read: the interval that follows it,
    /// or half of it when the program is gone (it left at some time in between).
    fn carry(&mut self, ns: u64) {
        if self.sweeps_read == 0 {
            return;
        }
        let ns = if self.mem.gone { ns / 2 } else { ns };
        self.covered_ns = self.prev_ns + ns;
        for key in &self.last_keys {
            if let Some(a) = self.acc.get_mut(key) {
                a.ns += ns;
            }
        }
    }

    fn state(&self, status: u32, reason: u8) -> GState {
        match status {
            G_WAITING => GState::Waiting(self.reason_name(reason)),
            G_RUNNABLE => GState::Runnable,
            G_RUNNING => GState::Running,
            _ => GState::Syscall,
        }
    }

    fn reason_name(&self, reason: u8) -> String {
        match self.layout.wait_reasons.get(usize::from(reason)) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => format!("wait reason {reason}"),
        }
    }

    /// Walks the stacks of `gs[which]` from their saved registers, all at once. The
    /// first frame goes by its size (pcsp), as the runtime's own traceback does: a
    /// goroutine stopped before its frame was set up (at a stack check, or never run)
    /// has its return address at sp and its caller's frame pointer still in bp, and a
    /// goroutine in a syscall before Go 1.23 saved no bp at all. Then the frame-pointer
    /// chain. Each round reads one window of stack per goroutine still being walked;
    /// the first starts at sp, so most stacks take one read.
    fn walk(&mut self, gs: &[G], which: &[usize]) -> Vec<Ips> {
        use crate::bpf::types::wp_unwind_stop as S;
        struct Walk {
            ips: Vec<u64>,
            /// Where the next frame record is: Some(bp), or None before the first frame.
            bp: Option<u64>,
            sp: u64,
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
                    bp: None,
                    sp: g.sp,
                    lo: g.lo,
                    hi: g.hi,
                    done: false,
                };
                if g.pc == 0 || g.sp < g.lo || g.sp >= g.hi || g.hi - g.lo > MAX_STACK {
                    w.ips = vec![marker(S::WP_UNW_UNREADABLE)];
                    w.done = true;
                }
                w
            })
            .collect();
        // the first frame's size, where the table knows it
        let deltas: Vec<Option<u64>> = which
            .iter()
            .map(|&i| {
                let funcs = self.funcs.as_ref()?;
                funcs.sp_delta(gs[i].pc.wrapping_sub(self.bias))
            })
            .collect();
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            let pending: Vec<usize> = (0..walks.len()).filter(|&k| !walks[k].done).collect();
            if pending.is_empty() {
                break;
            }
            let reqs: Vec<(u64, usize)> = pending
                .iter()
                .map(|&k| {
                    let w = &walks[k];
                    let at = w.bp.unwrap_or(w.sp);
                    (at, w.hi.saturating_sub(at).min(WINDOW) as usize)
                })
                .collect();
            let ok = self.mem.read_many(&reqs, &mut buf);
            let mut at = 0;
            for (j, &k) in pending.iter().enumerate() {
                let (base, len) = reqs[j];
                let window = &buf[at..at + len];
                at += len;
                let w = &mut walks[k];
                let g = &gs[which[k]];
                if !ok[j] {
                    w.ips.push(marker(S::WP_UNW_UNREADABLE));
                    w.done = true;
                    continue;
                }
                let end = base.saturating_add(len as u64);
                let word = |a: u64| u64_at(window, a.wrapping_sub(base));
                if w.bp.is_none() {
                    // the first frame
                    let (ret, next) = match deltas[k] {
                        Some(0) if w.sp.saturating_add(8) <= end => (word(w.sp), g.bp),
                        Some(d) if d >= 8 && w.sp.saturating_add(d).saturating_add(8) <= end => {
                            (word(w.sp + d), word(w.sp + d - 8))
                        }
                        // a frame bigger than the window: from the saved bp
                        Some(_) if g.bp != 0 => {
                            w.bp = Some(g.bp);
                            continue;
                        }
                        None if g.bp != 0 => {
                            w.bp = Some(g.bp);
                            if g.bp < base || g.bp.saturating_add(16) > end {
                                continue;
                            }
                            (0, 0)
                        }
                        // no frame pointer and no table: its first frame only
                        _ => {
                            if g.status == G_SYSCALL && !self.syscall_bp {
                                w.ips.push(marker(S::WP_UNW_NOT_MAPPED));
                            }
                            w.done = true;
                            continue;
                        }
                    };
                    if w.bp.is_none() {
                        if ret == 0 {
                            w.done = true;
                            continue;
                        }
                        w.ips.push(ret);
                        if next == 0 || next < w.sp || next.saturating_add(16) > w.hi {
                            w.done = true;
                            continue;
                        }
                        w.bp = Some(next);
                    }
                }
                // frame records inside this window
                while let Some(bp) =
                    w.bp.filter(|&bp| bp >= base && bp.saturating_add(16) <= end)
                {
                    let (next, ret) = (word(bp), word(bp + 8));
                    if ret == 0 {
                        w.done = true;
                        break;
                    }
                    w.ips.push(ret);
                    if w.ips.len() >= MAX_FRAMES {
                        w.ips.push(marker(S::WP_UNW_TRUNCATED));
                        w.done = true;
                        break;
                    }
                    // the chain ends at the goroutine's first frame (saved bp 0), and
                    // only ever goes up its own stack
                    if next == 0 {
                        w.done = true;
                        break;
                    }
                    if next <= bp || next < w.lo || next.saturating_add(16) > w.hi {
                        w.ips.push(marker(S::WP_UNW_UNREADABLE));
                        w.done = true;
                        break;
                    }
                    w.bp = Some(next);
                }
            }
        }
        self.buf = buf;
        walks.into_iter().map(|w| Some(Arc::from(w.ips))).collect()
    }
}

/// A goroutine stack's id among the profile's stacks (beside the kernel's ids: the top
/// bit set), registered in `stacks`.
fn stack_id(stacks: &mut HashMap<u64, Vec<u64>>, ips: &[u64]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ips.hash(&mut h);
    let id = h.finish() | (1 << 63);
    stacks.entry(id).or_insert_with(|| ips.to_vec());
    id
}

/// Where `runtime.sched`'s statistics are in the target, or why they cannot be read.
fn sched_place(layout: &Layout, bias: u64, minor: u32) -> Result<super::sched::Place, String> {
    let addr = layout
        .sched
        .ok_or("a stripped binary: no symbol for runtime.sched")?
        .wrapping_add(bias);
    let hist =
        super::sched::Hist::for_minor(minor).ok_or("waitprof does not know this Go's histogram")?;
    let time_to_run = layout
        .offsets
        .sched_time_to_run
        .ok_or("the runtime.schedt layout has no timeToRun")?;
    Ok(super::sched::Place {
        time_to_run: addr.wrapping_add(time_to_run),
        hist,
        mutex_wait: layout
            .offsets
            .sched_mutex_wait
            .map(|o| addr.wrapping_add(o)),
    })
}

fn read_sched(mem: &mut Memory, place: &super::sched::Place) -> Option<super::sched::Reading> {
    let mut buf = Vec::new();
    let ok = mem.read_raw(&place.ranges(), &mut buf);
    place.parse(&buf, &ok)
}

/// The sampler's thread and its stop flag.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    /// Set once the target is found to be a Go program whose goroutines can be read.
    go: Arc<AtomicBool>,
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
    /// With `timeline`, it keeps each goroutine's states over time too (`Spells`).
    pub fn start(pid: u32, start_ns: u64, launched: bool, timeline: bool) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let go = Arc::new(AtomicBool::new(false));
        let (flag, found) = (stop.clone(), go.clone());
        let handle = std::thread::Builder::new()
            .name("waitprof-go".to_string())
            .spawn(move || run(pid, start_ns, launched, timeline, &flag, &found))
            .ok();
        Sampler {
            stop,
            go,
            handle: handle.unwrap_or_else(|| std::thread::spawn(|| None)),
        }
    }

    /// Whether the target is a Go program whose goroutines are being read.
    pub fn found_go(&self) -> bool {
        self.go.load(Ordering::Relaxed)
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

/// The median CPU cost of the last sweeps, in ns, leaving out the first (which walks
/// every stack): 0 before there is one.
fn recent_cost(costs: &[(u64, u64)]) -> u64 {
    let mut recent: Vec<u64> = costs
        .iter()
        .skip(1)
        .rev()
        .take(15)
        .map(|&(ns, _)| ns)
        .collect();
    if recent.is_empty() {
        return 0;
    }
    let mid = recent.len() / 2;
    *recent.select_nth_unstable(mid).1
}

/// When the session ended, for the last sweep.
static END_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn run(
    pid: u32,
    start_ns: u64,
    launched: bool,
    timeline: bool,
    stop: &AtomicBool,
    found: &AtomicBool,
) -> Option<Sampled> {
    // best effort: without CAP_SYS_NICE the sweeps keep the ordinary priority, and the
    // summary shows how far apart they came
    // SAFETY: plain system calls on this thread's own id.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE) };
    // a launched command is recognised once it has exec'd: until then it is a copy of
    // waitprof
    let before_exec = exe_id(std::process::id());
    let mut checked = None;
    let (binary, mapping) = loop {
        let id = exe_id(pid);
        if id.is_some() && id != checked {
            checked = id;
            if let Some(found) = go_binary(pid) {
                break found;
            }
            if !launched || id != before_exec {
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
    found.store(true, Ordering::Relaxed);
    view.how = format!(
        "g layout from {}, goroutine list from {}, wait reasons from {}",
        layout.offsets_from, layout.allgs_from, layout.wait_reasons_from
    );
    let bias = if layout.pie {
        mapping.start.wrapping_sub(mapping.offset)
    } else {
        0
    };
    view.goexit = binary
        .funcs
        .as_ref()
        .and_then(|f| f.range_of("runtime.goexit"))
        .map(|(lo, hi)| (lo.wrapping_add(bias), hi.wrapping_add(bias)));
    let minor = super::binary::minor_version(&binary.version).unwrap_or(0);
    let mut s = Sweeper {
        mem: Memory {
            pid: pid as libc::pid_t,
            gone: false,
            scratch: Vec::new(),
        },
        layout,
        bias,
        syscall_bp: minor >= 23,
        funcs: binary.funcs.clone(),
        cache: FxHashMap::default(),
        generation: 0,
        acc: FxHashMap::default(),
        kept: FxHashMap::default(),
        interned: FxHashSet::default(),
        running: FxHashMap::default(),
        goids: FxHashMap::default(),
        threads: FxHashMap::default(),
        last_keys: Vec::new(),
        sweeps_read: 0,
        runnable_since: FxHashMap::default(),
        spells: timeline.then(Spells::default),
        start_ns,
        prev_ns: start_ns,
        covered_ns: start_ns,
        view,
        buf: Vec::new(),
        last_ns: start_ns,
    };
    let sched = sched_place(&s.layout, bias, minor);
    let first = sched.as_ref().ok().and_then(|p| read_sched(&mut s.mem, p));
    let mut last = None;
    let (mut spent, began) = (0u64, std::time::Instant::now());
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now = if stopping {
            END_NS.load(Ordering::SeqCst)
        } else {
            crate::session::monotonic_ns()
        };
        let cpu = thread_cpu_ns();
        let before = s.view.samples;
        // the longest interval between two sweeps, as it was (a busy machine delays
        // them); the first sweep's interval runs from the session's start instead
        if s.view.sweeps > 0 {
            s.view.period_max = s
                .view
                .period_max
                .max(Duration::from_nanos(now.saturating_sub(s.last_ns)));
        }
        s.sweep(now);
        // read at every sweep, so that a program that exits keeps its last reading
        if let Ok(p) = &sched {
            last = read_sched(&mut s.mem, p).or(last);
        }
        let cost = thread_cpu_ns().saturating_sub(cpu);
        spent += cost;
        s.view.sweep_cpu_ns.push((cost, s.view.samples - before));
        if stopping || s.mem.gone {
            break;
        }
        // the next sweep when the sweeps so far are within BUDGET of the time so far, but
        // at most twice the recent pace later: a costly sweep (the first, which walks
        // every stack, or one slowed by a busy machine) is repaid over the next gaps, not
        // in one long gap that the samples before it would have to stand for
        let due = Duration::from_nanos((spent as f64 / BUDGET) as u64);
        let pace = Duration::from_nanos((recent_cost(&s.view.sweep_cpu_ns) as f64 / BUDGET) as u64);
        let period = due
            .saturating_sub(began.elapsed())
            .clamp(MIN_PERIOD, (2 * pace).clamp(2 * MIN_PERIOD, MAX_PERIOD));
        std::thread::park_timeout(period);
    }
    s.view.session_ns = s.last_ns.saturating_sub(start_ns);
    s.view.target_gone = s.mem.gone;
    s.view.runtime_sched = Some(sched.and_then(|p| {
        let first = first.ok_or("runtime.sched could not be read at the start")?;
        let last = last.ok_or("runtime.sched could not be read after the start")?;
        super::sched::over_session(p.hist, &first, &last)
    }));
    // stacks get ids of their own, beside the kernel's; rows merge by content
    let mut stacks = HashMap::new();
    let mut rows: HashMap<(GState, Option<u64>, bool), GoroutineRow> = HashMap::new();
    for ((status, reason, ptr, raced), a) in std::mem::take(&mut s.acc) {
        let state = s.state(status, reason);
        let stack = s.kept.get(&ptr).map(|ips| stack_id(&mut stacks, ips));
        let row = rows
            .entry((state.clone(), stack, raced))
            .or_insert_with(|| GoroutineRow {
                state,
                stack,
                raced,
                ns: 0,
                samples: 0,
                goroutines: 0,
            });
        row.ns += a.ns;
        row.samples += a.samples;
        row.goroutines += a.goids.len() as u64;
    }
    s.view.rows = rows.into_values().collect();
    if let Some(mut spells) = s.spells.take() {
        spells.finish(s.covered_ns);
        let mut out = GoroutineSpells {
            spells: Vec::with_capacity(spells.done.len()),
            dropped: spells.dropped,
        };
        for (goid, from_ns, to_ns, (status, reason, ptr, raced)) in spells.done {
            out.spells.push(GoroutineSpell {
                goid,
                from_ns,
                to_ns,
                state: s.state(status, reason),
                stack: s.kept.get(&ptr).map(|ips| stack_id(&mut stacks, ips)),
                raced,
            });
        }
        s.view.spells = Some(out);
    }
    for ((tid, goid, ptr), ns) in std::mem::take(&mut s.threads) {
        let stack = s.kept.get(&ptr).map(|ips| stack_id(&mut stacks, ips));
        s.view.in_syscalls.push(GoroutineThread {
            tid,
            goid,
            stack,
            ns,
        });
    }
    s.view
        .in_syscalls
        .sort_by(|a, b| b.ns.cmp(&a.ns).then(a.tid.cmp(&b.tid)));
    s.view
        .rows
        .sort_by(|a, b| b.ns.cmp(&a.ns).then(a.state.cmp(&b.state)));
    Some((s.view, stacks))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pace follows the median of the last sweeps: neither the first sweep (which walks
    /// every stack) nor one costly sweep among them moves it.
    #[test]
    fn the_pace_follows_the_median_of_recent_sweeps() {
        assert_eq!(recent_cost(&[]), 0);
        assert_eq!(recent_cost(&[(900_000, 10)]), 0);
        let mut costs = vec![(900_000, 10)];
        costs.extend([100_000, 110_000, 700_000, 90_000, 105_000].map(|ns| (ns, 10)));
        assert_eq!(recent_cost(&costs), 105_000);
        // only the last 15 count
        costs.extend(std::iter::repeat_n((200_000, 10), 15));
        assert_eq!(recent_cost(&costs), 200_000);
    }

    /// Ranges are read together where they are close, and a range that cannot be read
    /// (unmapped, or running past the end of the address space) costs only itself.
    #[test]
    fn ranges_read_together_and_a_bad_one_costs_only_itself() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let base = data.as_ptr() as u64;
        let mut mem = Memory {
            pid: std::process::id() as libc::pid_t,
            gone: false,
            scratch: Vec::new(),
        };
        let reqs = [
            (base + 100, 16),
            (0x10, 8),
            (base + 130, 8),
            (u64::MAX - 4, 8),
            (base + 4000, 96),
        ];
        let mut out = Vec::new();
        let ok = mem.read_many(&reqs, &mut out);
        assert_eq!(ok, [true, false, true, false, true]);
        assert_eq!(&out[..16], &data[100..116]);
        assert_eq!(&out[24..32], &data[130..138]);
        assert_eq!(&out[40..136], &data[4000..4096]);
    }

    #[test]
    fn words_outside_what_was_read_are_zero() {
        let b = [1u8, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(u64_at(&b, 0), 1);
        assert_eq!(u64_at(&b, 2), 0);
        assert_eq!(u64_at(&b, u64::MAX), 0);
        assert_eq!(u32_at(&b, u64::MAX - 1), 0);
    }
}
