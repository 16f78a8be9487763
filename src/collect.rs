//! Collection: waits for the end of the session (duration, Ctrl-C or the target's exit)
//! while draining thread-exit records, then reads the kernel's aggregation out into a
//! `Collected`. Time that is still open when the session ends (a thread blocked right
//! now, an unfinished syscall, a thread that never woke at all) is closed here, so no
//! time inside the session goes missing.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Read, Write};
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBufferBuilder};

use crate::bpf::sockets::{wp_listen_sample, SocketsSkel, SocketsSkelBuilder};
use crate::bpf::{
    agg_key, agg_val, thread_state, waiter_key, wp_listener, wp_oncpu_key, wp_running,
};
use crate::bpf::{wp_poll, wp_stat};
use crate::bpf::{wp_thread_flag, wp_waker};
use crate::cli::{Config, Target, Unwind};
use crate::model::Poll;
use crate::model::Row;
use crate::model::{Collected, DropsSpan, EndReason, Kind, Listener, Losses, OnCpu, Outcome};
use crate::model::{Snapshots, StackRef, ThreadTotals, Waiter, Waker, WakerCtx};
use crate::model::{Timeline, TimelineEvent, TimelineWhat};
use crate::session::{self, Attached, Profiled, TableMaps};
use crate::signals::Stop;
use crate::snapshot;
use crate::symbolize::Symbolizer;
use crate::syscalls;
use crate::unwind;

/// The longest the collection loop sleeps. It wakes at once for a thread-exit record,
/// Ctrl-C and the target's exit (see `Sleep`); this bounds what has no fd: the progress
/// line, starting the on-CPU sampler for Go.
const POLL: Duration = Duration::from_millis(250);
/// The same where the kernel gives no fd for the target's exit (no pidfd) or for Ctrl-C:
/// how late either may be seen.
const POLL_BLIND: Duration = Duration::from_millis(20);

/// What the collection loop sleeps on: the ring buffers' epoll fd, Ctrl-C's eventfd and
/// the target's pidfd (readable once it exits), so that an idle session wakes only for
/// them and the timers instead of fifty times a second.
struct Sleep {
    epoll: std::os::fd::OwnedFd,
    /// every event source has an fd: the loop may sleep up to POLL
    whole: bool,
    _pidfd: Option<std::os::fd::OwnedFd>,
}

impl Sleep {
    fn new(ringbuf_epoll: i32, stop: &Stop, pid: u32) -> Option<Sleep> {
        use rustix::event::epoll;
        use std::os::fd::BorrowedFd;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
        let add = |fd: BorrowedFd<'_>| {
            epoll::add(&ep, fd, epoll::EventData::new_u64(0), epoll::EventFlags::IN).is_ok()
        };
        // SAFETY: the ring buffer outlives this loop, and with it its epoll fd.
        if ringbuf_epoll < 0 || !add(unsafe { BorrowedFd::borrow_raw(ringbuf_epoll) }) {
            return None;
        }
        let signals = stop.fd().is_some_and(add);
        let pidfd = rustix::process::Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .filter(|fd| add(std::os::fd::AsFd::as_fd(fd)));
        Some(Sleep {
            whole: signals && pidfd.is_some(),
            epoll: ep,
            _pidfd: pidfd,
        })
    }

    /// Sleeps until an fd is ready or `timeout` passes (clamped to what the fds cover).
    fn wait(&self, timeout: Duration) {
        let timeout = timeout.min(if self.whole { POLL } else { POLL_BLIND });
        let ts = rustix::fs::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut events = Vec::with_capacity(4);
        // EINTR (Ctrl-C on this thread) and errors alike: the loop looks at everything next
        let _ = rustix::event::epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&ts),
        );
    }
}

/// The target's memory maps are re-read so that what it maps during the session (a
/// launched command's binary and libraries right after exec, libraries loaded later)
/// still symbolizes after it exits: soon after the start, then less and less often.
const RECACHE_FIRST: Duration = Duration::from_millis(10);
const RECACHE_MAX: Duration = Duration::from_secs(2);

fn has(flags: u32, f: wp_thread_flag) -> bool {
    flags & f.0 != 0
}

/// A kernel `comm` (set by the target: untrusted) as printable text.
pub(crate) fn comm_of(raw: &[i8]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    crate::text::printable_bytes(&bytes)
}

fn totals_of(ts: &thread_state, end_ns: u64, exited: bool) -> ThreadTotals {
    ThreadTotals {
        tid: ts.tid,
        comm: comm_of(&ts.comm),
        start_ns: ts.start_ts,
        end_ns,
        oncpu_ns: ts.oncpu_ns,
        blocked_ns: ts.blocked_ns,
        runq_ns: ts.runq_ns,
        runq_woken_ns: ts.runq_woken_ns,
        runq_hist: ts.runq_hist.iter().map(|&n| u64::from(n)).collect(),
        polls: u64::from(ts.polls),
        polls_blocking: u64::from(ts.polls_blocking),
        exited,
    }
}

fn waker_of(w: &wp_waker) -> Waker {
    let ctx = WakerCtx::from_raw(w.ctx);
    if matches!(ctx, WakerCtx::None | WakerCtx::Unseen) {
        return Waker {
            ctx,
            ..Waker::default()
        };
    }
    Waker {
        ctx,
        tgid: w.tgid,
        tid: w.tid,
        comm: comm_of(&w.comm),
        ustack: StackRef::from_raw(w.ustack),
        kstack: StackRef::from_raw(w.kstack),
    }
}

/// The most timeline events kept (48 bytes each): beyond them events are counted only.
pub const TIMELINE_MAX_EVENTS: usize = 4_000_000;
/// How often the timeline's ring buffer is read at least.
const TIMELINE_READ_EVERY: Duration = Duration::from_millis(100);

/// A timeline record from the kernel, typed; None for one of no known type.
fn timeline_event(ev: &crate::bpf::wp_event) -> Option<TimelineEvent> {
    use crate::bpf::wp_event_type as T;
    let what = match T(u32::from(ev.r#type)) {
        T::WP_EV_OFF => TimelineWhat::Off {
            kind: Kind::from_raw(ev.kind),
            syscall: u32::try_from(ev.syscall).ok(),
            object: ev.object,
            preempted: ev.runnable != 0,
        },
        T::WP_EV_ON => TimelineWhat::On,
        T::WP_EV_WAKE => TimelineWhat::Wake {
            ctx: WakerCtx::from_raw(ev.waker_ctx),
            waker_tid: ev.waker_tid,
            waker_tgid: ev.waker_tgid,
        },
        _ => return None,
    };
    Some(TimelineEvent {
        ts: ev.ts,
        tid: ev.tid,
        what,
    })
}

/// The target's unwind tables (`--unwind dwarf`), loaded into `maps` at once for `-p`:
/// `lib::run` calls this while the kernel verifies the programs. A command's code is
/// known only once it has exec'd: its first stacks ask for it.
pub fn first_tables(
    cfg: &Config,
    pid: u32,
    stop: &Stop,
    maps: &TableMaps,
) -> Result<Option<unwind::Tables>> {
    if cfg.unwind != Unwind::Dwarf {
        return Ok(None);
    }
    let launched = matches!(cfg.target, Target::Command(_));
    let mut t = unwind::Tables::new(pid, cfg.unwind_rows, launched, stop.clone());
    if launched {
        return Ok(Some(t));
    }
    match t.refresh(&maps.rows, &maps.procs) {
        // a large program takes a while: say what it was
        Ok(_) if t.report.build_time > Duration::from_millis(500) => eprintln!(
            "waitprof: unwind tables of {} files ({} rows) built in {:.1} s",
            t.report.files,
            t.report.rows,
            t.report.build_time.as_secs_f64()
        ),
        Ok(_) => {}
        Err(e) if e.downcast_ref::<crate::signals::Interrupted>().is_some() => return Err(e),
        // the stacks are still walked, by frame pointer, and the summary says so
        Err(e) => eprintln!("waitprof: no unwind tables ({e:#}): walking frame pointers"),
    }
    Ok(Some(t))
}

/// What collection needs besides the profiler's programs, loaded by `prepare` while the
/// kernel verifies those: the listening-socket iterator and the off-CPU thread snapshot
/// (or why there is none).
pub struct Prepared<'s> {
    sockets: Option<ListeningSockets<'s>>,
    snapshotter: std::result::Result<snapshot::Snapshots<'s>, String>,
}

pub fn prepare<'s>(
    cfg: &Config,
    pid: u32,
    maps: &TableMaps,
    sockets_storage: &'s mut MaybeUninit<OpenObject>,
    snapshot_storage: &'s mut MaybeUninit<OpenObject>,
) -> Prepared<'s> {
    let sockets = ListeningSockets::open(sockets_storage)
        .map_err(|e| {
            eprintln!("waitprof: listeners' drops will be counted between accepts only: {e:#}")
        })
        .ok();
    // with -p only: a launched command is still a copy of waitprof
    let snapshotter = match cfg.target {
        Target::Pid(_) => {
            snapshot::Snapshots::open(snapshot_storage, maps, pid).map_err(|e| format!("{e:#}"))
        }
        Target::Command(_) => Err("a launched command has none before its start".to_string()),
    };
    Prepared {
        sockets,
        snapshotter,
    }
}

/// Runs the session until it ends, then reads everything out.
pub fn run(
    attached: &mut Attached<'_>,
    target: &mut Profiled,
    cfg: &Config,
    stop: &Stop,
    symbolizer: &mut Symbolizer,
    mut tables: Option<unwind::Tables>,
    prepared: Prepared<'_>,
) -> Result<Collected> {
    let exited: RefCell<Vec<ThreadTotals>> = RefCell::new(Vec::new());
    let unwind_wanted = Cell::new(false);
    let timeline: RefCell<Option<Timeline>> = RefCell::new(cfg.timeline.then(|| Timeline {
        wakers: cfg.wakers,
        ..Timeline::default()
    }));
    let mut builder = RingBufferBuilder::new();
    if cfg.timeline {
        builder.add(&attached.skel.maps.timeline, |data: &[u8]| {
            let mut ev = crate::bpf::wp_event::default();
            if let (Ok(()), Some(t)) = (
                plain::copy_from_bytes(&mut ev, data),
                timeline.borrow_mut().as_mut(),
            ) {
                if t.events.len() < TIMELINE_MAX_EVENTS {
                    t.events.extend(timeline_event(&ev));
                } else {
                    t.dropped_beyond_limit += 1;
                }
            }
            0
        })?;
    }
    builder.add(&attached.skel.maps.exits, |data: &[u8]| {
        let mut ts = thread_state::default();
        if plain::copy_from_bytes(&mut ts, data).is_ok() {
            exited.borrow_mut().push(totals_of(&ts, ts.exit_ts, true));
        }
        0
    })?;
    // the kernel asks for the target's unwind tables when its code runs where they
    // have no mapping (the command has exec'd, a library was loaded)
    builder.add(&attached.skel.maps.unwind_wanted, |_: &[u8]| {
        unwind_wanted.set(true);
        0
    })?;
    let ringbuf = builder
        .build()
        .context("setting up the exit-record ring buffer failed")?;
    let Prepared {
        sockets,
        snapshotter,
    } = prepared;
    // listeners' drop counters at the start, to count drops over the whole session
    let sockets_at_start = sockets.as_ref().and_then(|s| s.read().ok());
    // threads already off-CPU have their stacks read once the gate is open
    let mut snapshots = Snapshots::default();
    let snapshotter = snapshotter.map_err(|e| snapshots.missing = Some(e)).ok();
    let start_ns = attached.start()?;
    if let Some(s) = &snapshotter {
        let t = Instant::now();
        match s.take() {
            Ok(at_start) => snapshots.at_start = at_start,
            Err(e) => snapshots.missing = Some(format!("{e:#}")),
        }
        snapshots.took = t.elapsed();
    }
    // said once recording has begun (the unwind tables, built above, can take a while)
    eprintln!(
        "waitprof: profiling pid {} ({}) with {}{}",
        target.pid,
        target.comm,
        attached.flavour.name(),
        match cfg.duration {
            Some(d) => format!(" for {}", humantime::format_duration(d)),
            None => ", Ctrl-C to stop".to_string(),
        }
    );
    if cfg.test_drop_switch_ins > 0 {
        eprintln!(
            "waitprof: {}={}: one switch-in of the target in every {1} is ignored (a test setting)",
            crate::cli::DROP_SWITCH_INS_ENV,
            cfg.test_drop_switch_ins
        );
    }
    target.release()?;
    let started = Instant::now();
    // a Go program's goroutines, read from its memory while it runs
    let goroutines = cfg.goroutines.then(|| {
        crate::runtime::go::goroutines::Sampler::start(
            target.pid,
            start_ns,
            matches!(cfg.target, Target::Command(_)),
            cfg.timeline,
        )
    });
    let other_namespaces = crate::target::other_namespaces(target.pid);
    let progress = std::io::stderr().is_terminal();
    // a command is still a copy of waitprof until its exec: its maps come at the timer,
    // and its first stacks' request for unwind tables is served first
    if let Target::Pid(_) = cfg.target {
        symbolizer.cache_target();
        // the kernel's and the target's symbol tables, read now, not at the end
        symbolizer.warm();
    }
    let mut recache_every = RECACHE_FIRST;
    let mut sampling_on_cpu = false;
    let mut next_cache = Instant::now() + recache_every;
    let mut last_progress = Instant::now();
    let sleep = Sleep::new(ringbuf.epoll_fd(), stop, target.pid);
    let end_reason = loop {
        let mut timeout = next_cache.saturating_duration_since(Instant::now());
        // the timeline's events wake user space only when its buffer is half full
        if cfg.timeline {
            timeout = timeout.min(TIMELINE_READ_EVERY);
        }
        if let Some(d) = cfg.duration {
            timeout = timeout.min(d.saturating_sub(started.elapsed()));
        }
        match &sleep {
            Some(s) => {
                s.wait(timeout);
                ringbuf
                    .consume()
                    .context("reading thread-exit records failed")?;
            }
            None => match ringbuf.poll(timeout.min(POLL_BLIND)) {
                // a signal (Ctrl-C) interrupted the wait: handled just below
                Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
                r => r.context("reading thread-exit records failed")?,
            },
        }
        if stop.requested() {
            break EndReason::Interrupted;
        }
        if let Some(code) = target.exited() {
            break EndReason::TargetExited(code);
        }
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            break EndReason::Duration;
        }
        // a Go program's threads are sampled on the CPU: what its running goroutines run
        if !sampling_on_cpu
            && attached.oncpu.is_ok()
            && goroutines.as_ref().is_some_and(|g| g.found_go())
        {
            sampling_on_cpu = attached.sample_on_cpu();
        }
        let recache = Instant::now() >= next_cache;
        // at the kernel's request, and at the timer too: a library unmapped and another
        // mapped in its place asks for nothing
        let wanted = unwind_wanted.replace(false);
        if let Some(t) = tables.as_mut().filter(|_| wanted || recache) {
            // best effort: the target may be exiting; its stacks then say what was missing
            let maps = &attached.skel.maps;
            let _ = t.refresh(&maps.unwind_rows, &maps.unwind_procs);
        }
        // new code (exec, dlopen) gets its files opened at once, before it can go away
        if recache || wanted {
            symbolizer.cache_target();
            // a command's files once it has exec'd, a library once loaded: after the
            // unwind tables above, which its stacks need first
            symbolizer.warm();
        }
        if recache {
            recache_every = (recache_every * 4).min(RECACHE_MAX);
            next_cache = Instant::now() + recache_every;
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            let limit = cfg
                .duration
                .map(|d| format!(" / {:.0}s", d.as_secs_f64()))
                .unwrap_or_default();
            eprint!(
                "\rwaitprof: profiling {} ({}) {:.0}s{limit}, Ctrl-C to stop ",
                target.pid,
                target.comm,
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
            last_progress = Instant::now();
        }
    };
    let end_ns = attached.stop()?;
    // nothing the hooks could add is read from here on: they stop costing the host now,
    // not after the slower work below
    attached.detach();
    let stopped_at = Instant::now();
    let goroutines = goroutines.and_then(|g| g.finish(end_ns));
    // with the unwind tables still loaded: the threads still waiting at the end
    if let Some(s) = &snapshotter {
        snapshots.at_end = s.take().unwrap_or_default();
    }
    let sockets_at_end = sockets.as_ref().and_then(|s| s.read().ok());
    // the last look at its maps, while it may still run
    symbolizer.cache_target();
    let epoll_watch = read_epoll_watch(target.pid);
    if progress {
        eprintln!();
    }
    ringbuf
        .consume()
        .context("reading thread-exit records failed")?;
    drop(ringbuf);

    let mut collected = Collected {
        pid: target.pid,
        comm: target.comm.clone(),
        start_ns,
        end_ns,
        end_reason: Some(end_reason),
        attach: attached.flavour.name().to_string(),
        syscall_exits: Some(attached.sys_exit.describe()),
        stopped_at: Some(stopped_at),
        epoll_watch,
        wakers: cfg.wakers,
        unwind: tables.map(|t| t.report),
        other_namespaces,
        cpus: target.cpus.clone(),
        snapshots,
        ..Default::default()
    };
    collected.threads = exited.into_inner();
    read_stats(attached, &mut collected.losses)?;
    collected.timeline = timeline.into_inner().map(|mut t| {
        // the ring buffer is filled from every CPU: nearly, not exactly, in time order
        t.events.sort_by_key(|e| e.ts);
        t.dropped_in_kernel = collected.losses.timeline_dropped;
        t
    });
    read_rows(attached, &mut collected)?;
    read_waiters(attached, &mut collected)?;
    read_listeners(attached, &mut collected)?;
    read_polls(attached, &mut collected)?;
    read_oncpu(attached, &mut collected)?;
    if let (Some(start), Some(end)) = (sockets_at_start, sockets_at_end) {
        drops_over_the_session(&mut collected.listeners, &start, &end);
    }
    close_open_threads(attached, cfg, &mut collected)?;
    add_unseen_threads(cfg, &mut collected);
    read_stacks(attached, &mut collected)?;
    only_leaves_of_other_processes(&mut collected);
    fill_from_snapshot(&mut collected);
    if let Some((mut view, stacks)) = goroutines {
        collected.stacks.extend(stacks);
        let sampling = match (&attached.oncpu, sampling_on_cpu) {
            (Err(why), _) => Err(format!("no on-CPU samples ({why})")),
            (Ok(()), false) => Err("on-CPU samples never started".to_string()),
            (Ok(()), true) => Ok(()),
        };
        crate::runtime::go::running::attribute(
            &mut view,
            &collected.oncpu,
            &collected.stacks,
            sampling,
        );
        collected.goroutines = Some(view);
    }
    Ok(collected)
}

fn read_stats(attached: &Attached<'_>, losses: &mut Losses) -> Result<()> {
    let bss = attached
        .skel
        .maps
        .bss_data
        .as_deref()
        .context("the BPF object has no .bss")?;
    let s = |w: wp_stat| bss.stats[w.0 as usize];
    *losses = Losses {
        rows_dropped: s(wp_stat::WP_STAT_AGG_FULL),
        rows_dropped_ns: s(wp_stat::WP_STAT_AGG_FULL_NS),
        threads_untracked: s(wp_stat::WP_STAT_THREADS_FULL),
        ustack_errors: s(wp_stat::WP_STAT_USTACK_ERR),
        kstack_errors: s(wp_stat::WP_STAT_KSTACK_ERR),
        stack_table_full: s(wp_stat::WP_STAT_STACK_TABLE_FULL),
        exit_records_lost: s(wp_stat::WP_STAT_EXIT_LOST),
        no_wakeup_seen: s(wp_stat::WP_STAT_NO_WAKEUP),
        switch_in_while_on_cpu: s(wp_stat::WP_STAT_IN_WHILE_ON_CPU),
        missed_switch_ins: s(wp_stat::WP_STAT_MISSED_SWITCH_IN),
        missed_switch_ins_recovered: s(wp_stat::WP_STAT_MISSED_RECOVERED),
        missed_switch_ins_closed_at_switch_out: s(wp_stat::WP_STAT_MISSED_AT_OUT),
        below_min_block: s(wp_stat::WP_STAT_BELOW_MIN),
        below_min_block_ns: s(wp_stat::WP_STAT_BELOW_MIN_NS),
        kstacks_reused: s(wp_stat::WP_STAT_KSTACK_REUSED),
        kstacks_rechecked: s(wp_stat::WP_STAT_KSTACK_RECHECKED),
        kstacks_differed: s(wp_stat::WP_STAT_KSTACK_DIFFERED),
        waiters_dropped: s(wp_stat::WP_STAT_WAITERS_FULL),
        listeners_dropped: s(wp_stat::WP_STAT_LISTENERS_FULL),
        polls_dropped: s(wp_stat::WP_STAT_POLLS_FULL),
        oncpu_dropped: s(wp_stat::WP_STAT_ONCPU_FULL),
        ustacks_unwound: s(wp_stat::WP_STAT_UNWIND_DWARF),
        ustacks_through_unmapped: s(wp_stat::WP_STAT_UNWIND_NOT_MAPPED),
        ustacks_reused: s(wp_stat::WP_STAT_USTACK_REUSED),
        ustacks_changed: s(wp_stat::WP_STAT_USTACK_CHANGED),
        ustacks_unremembered: s(wp_stat::WP_STAT_USTACK_UNREMEMBERED),
        recursion_misses: attached.recursion_misses(),
        waker_stacks_reused: s(wp_stat::WP_STAT_WAKER_REUSED),
        waker_stacks_rechecked: s(wp_stat::WP_STAT_WAKER_RECHECKED),
        waker_stacks_differed: s(wp_stat::WP_STAT_WAKER_DIFFERED),
        waker_walked_ns: s(wp_stat::WP_STAT_WAKER_WALKED_NS),
        waker_reused_ns: s(wp_stat::WP_STAT_WAKER_REUSED_NS),
        timeline_dropped: s(wp_stat::WP_STAT_TIMELINE_DROPPED),
        waker_reuse_off: waker_reuse_off(attached),
    };
    Ok(())
}

/// Why the program could reuse no waker stack, if it could not: it tells a wakeup in an
/// interrupt from one in a syscall by this CPU's preempt count, which it must have found.
fn waker_reuse_off(attached: &Attached<'_>) -> Option<&'static str> {
    let cfg = &attached.skel.maps.rodata_data.as_ref()?.cfg;
    let checked = attached.skel.maps.bss_data.as_deref()?.preempt_count_ok;
    if cfg.wakers == 0 {
        None
    } else if cfg.recapture_every <= 1 {
        Some("--recapture-every 1")
    } else if cfg.preempt_from_rq == 0 {
        Some("the kernel's BTF does not place the per-CPU preempt count")
    } else if checked == 2 {
        Some("the per-CPU preempt count found from the kernel's BTF failed its check")
    } else {
        None
    }
}

/// Every (key, value) of a hash map, decoded; entries deleted while iterating are skipped.
fn read_map<K: plain::Plain + Default, V: plain::Plain + Default>(
    map: &libbpf_rs::MapMut<'_>,
    what: &str,
) -> Result<Vec<(K, V)>> {
    if let Some(out) = read_map_batched(map) {
        return Ok(out);
    }
    let mut out = Vec::new();
    for key_bytes in map.keys() {
        let Some(val_bytes) = map
            .lookup(&key_bytes, MapFlags::ANY)
            .with_context(|| format!("reading {what} failed"))?
        else {
            continue;
        };
        let (mut key, mut val) = (K::default(), V::default());
        if plain::copy_from_bytes(&mut key, &key_bytes).is_ok()
            && plain::copy_from_bytes(&mut val, &val_bytes).is_ok()
        {
            out.push((key, val));
        }
    }
    Ok(out)
}

/// A hash map read in batches of 4096 entries, one syscall each (two syscalls an entry
/// one by one: 80,000 for a large profile). None where the kernel cannot (no batch
/// lookup before 5.6, or a batch refused): the caller then reads it one entry at a time.
fn read_map_batched<K: plain::Plain + Default, V: plain::Plain + Default>(
    map: &libbpf_rs::MapMut<'_>,
) -> Option<Vec<(K, V)>> {
    let mut out = Vec::new();
    let whole = for_each_batched(map, &mut |k, v| {
        let (mut key, mut val) = (K::default(), V::default());
        if plain::copy_from_bytes(&mut key, k).is_ok()
            && plain::copy_from_bytes(&mut val, v).is_ok()
        {
            out.push((key, val));
        }
    });
    whole.then_some(out)
}

/// Hands every (key, value) of a hash map to `f`, read in batches of 4096; false where
/// the kernel refused a batch (`f` may then have seen part of the map).
fn for_each_batched(map: &libbpf_rs::MapMut<'_>, f: &mut dyn FnMut(&[u8], &[u8])) -> bool {
    use std::os::fd::{AsFd, AsRawFd};
    const COUNT: u32 = 4096;
    // a per-CPU map's batch holds a value per CPU: not what the buffers below are sized for
    if !map.map_type().is_hash_map() || map.map_type().is_percpu() {
        return false;
    }
    let (ks, vs) = (map.key_size() as usize, map.value_size() as usize);
    let mut keys = vec![0u8; ks * COUNT as usize];
    let mut values = vec![0u8; vs * COUNT as usize];
    // the batch token of a hash map is a bucket index: at least 4 bytes
    let (mut token, mut next) = (vec![0u8; ks.max(8)], vec![0u8; ks.max(8)]);
    let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    let mut first = true;
    loop {
        let mut n = COUNT;
        // SAFETY: the buffers hold COUNT keys and values of the map's sizes, and the
        // tokens a key (at least 8 bytes); the kernel writes at most that.
        let ret = unsafe {
            libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                map.as_fd().as_raw_fd(),
                if first {
                    std::ptr::null_mut()
                } else {
                    token.as_mut_ptr().cast()
                },
                next.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut n,
                &opts,
            )
        };
        // libbpf returns -errno; ENOENT: this was the last batch
        let last = ret == -libc::ENOENT;
        if ret != 0 && !last {
            return false;
        }
        let n = (n as usize).min(COUNT as usize);
        for (k, v) in keys.chunks_exact(ks).zip(values.chunks_exact(vs)).take(n) {
            f(k, v);
        }
        if last {
            return true;
        }
        std::mem::swap(&mut token, &mut next);
        first = false;
    }
}

fn read_rows(attached: &Attached<'_>, collected: &mut Collected) -> Result<()> {
    for (key, val) in read_map::<agg_key, agg_val>(&attached.skel.maps.agg, "the profile")? {
        collected.rows.push(Row {
            tid: key.tid,
            kind: Kind::from_raw(key.kind),
            syscall: (key.syscall >= 0).then_some(key.syscall as u32),
            outcome: Outcome::from_raw(key.outcome),
            ustack: StackRef::from_raw(key.ustack),
            kstack: StackRef::from_raw(key.kstack),
            count: val.count,
            blocked_ns: val.blocked_ns,
            runq_ns: val.runq_ns,
            object: key.object,
            waker: waker_of(&key.waker),
        });
    }
    Ok(())
}

fn read_waiters(attached: &Attached<'_>, collected: &mut Collected) -> Result<()> {
    let map = &attached.skel.maps.waiters;
    for (key, ns) in read_map::<waiter_key, u64>(map, "the waiters of each object")? {
        collected.waiters.push(Waiter {
            kind: Kind::from_raw(key.kind),
            object: key.object,
            tid: key.tid,
            ns,
        });
    }
    Ok(())
}

fn read_listeners(attached: &Attached<'_>, collected: &mut Collected) -> Result<()> {
    let map = &attached.skel.maps.listeners;
    for (inode, l) in read_map::<u64, wp_listener>(map, "the listening sockets")? {
        collected.listeners.push(listener_of(inode, &l));
    }
    collected.listeners.sort_by_key(|l| l.inode);
    Ok(())
}

fn read_oncpu(attached: &Attached<'_>, collected: &mut Collected) -> Result<()> {
    let map = &attached.skel.maps.oncpu;
    for (key, samples) in read_map::<wp_oncpu_key, u64>(map, "the on-CPU samples")? {
        collected.oncpu.push(OnCpu {
            tid: key.tid,
            ustack: StackRef::from_raw(key.ustack),
            samples,
        });
    }
    Ok(())
}

/// The epoll fds' polls: the low fds from their array (the entries never used are all
/// zero), the others from their hash.
fn read_polls(attached: &Attached<'_>, collected: &mut Collected) -> Result<()> {
    let maps = &attached.skel.maps;
    let mut all = read_map::<u32, wp_poll>(&maps.polls_direct, "the epoll fds' polls")?;
    all.retain(|(_, p)| p.polls != 0 || p.watching != 0 || p.last_ns != 0);
    all.extend(read_map::<u32, wp_poll>(
        &maps.polls,
        "the epoll fds' polls",
    )?);
    for (fd, p) in all {
        let open_gap_ns = if p.watching == 0 && p.last_ns > 0 {
            collected.end_ns.saturating_sub(p.last_ns)
        } else {
            0
        };
        collected.polls.push(Poll {
            fd,
            polls: p.polls,
            blocking: p.blocking,
            gaps: p.gaps,
            gap_sum_ns: p.gap_sum_ns,
            gap_max_ns: p.gap_max_ns,
            gap_max_end_ns: p.gap_max_end_ns,
            gap_max_tid: p.gap_max_tid,
            gap_hist: p.gap_hist.iter().map(|&n| u64::from(n)).collect(),
            open_gap_ns,
        });
    }
    collected
        .polls
        .sort_by(|a, b| b.longest_ns().cmp(&a.longest_ns()).then(a.fd.cmp(&b.fd)));
    Ok(())
}

/// The listening TCP sockets of the whole machine (its network namespace), read through
/// the `iter/tcp` program of bpf/sockets.bpf.c: inode -> (drops, queue, limit).
struct ListeningSockets<'obj> {
    _skel: SocketsSkel<'obj>,
    link: Link,
}

impl<'obj> ListeningSockets<'obj> {
    fn open(storage: &'obj mut MaybeUninit<OpenObject>) -> Result<ListeningSockets<'obj>> {
        let open = SocketsSkelBuilder::default()
            .open(storage)
            .context("opening the socket iterator failed")?;
        let skel = open
            .load()
            .context("this kernel refused the TCP socket iterator (iter/tcp)")?;
        let link = skel
            .progs
            .listening_sockets
            .attach()
            .context("attaching the TCP socket iterator failed")?;
        Ok(ListeningSockets { _skel: skel, link })
    }

    fn read(&self) -> Result<HashMap<u64, wp_listen_sample>> {
        let mut bytes = Vec::new();
        libbpf_rs::Iter::new(&self.link)
            .context("starting the TCP socket iterator failed")?
            .read_to_end(&mut bytes)
            .context("reading the TCP socket iterator failed")?;
        let size = std::mem::size_of::<wp_listen_sample>();
        Ok(bytes
            .chunks_exact(size)
            .filter_map(|chunk| {
                let mut s = wp_listen_sample::default();
                plain::copy_from_bytes(&mut s, chunk).ok()?;
                Some((s.inode, s))
            })
            .collect())
    }
}

/// Listeners still there at the end get their drops over the whole session: the end's
/// counter minus the start's (0 for a socket created during the session).
fn drops_over_the_session(
    listeners: &mut [Listener],
    start: &HashMap<u64, wp_listen_sample>,
    end: &HashMap<u64, wp_listen_sample>,
) {
    for l in listeners {
        if let Some(e) = end.get(&l.inode) {
            let before = start.get(&l.inode).map_or(0, |s| s.drops);
            l.drops = u64::from(e.drops.wrapping_sub(before));
            l.drops_span = DropsSpan::Session;
        }
    }
}

fn listener_of(inode: u64, l: &wp_listener) -> Listener {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let addr = match i32::from(l.family) {
        libc::AF_INET => {
            let a: [u8; 4] = l.addr[..4].try_into().unwrap_or_default();
            Some(IpAddr::V4(Ipv4Addr::from(a)))
        }
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(l.addr))),
        _ => None,
    };
    Listener {
        inode,
        addr: addr.map(|a| SocketAddr::new(a, l.port)),
        accepts: l.accepts,
        qlen_sum: l.qlen_sum,
        qlen_max: l.qlen_max,
        at_limit: l.at_limit,
        limit: l.limit,
        drops: u64::from(l.drops_last.wrapping_sub(l.drops_first)),
        drops_span: DropsSpan::Accepts,
    }
}

/// epoll fds of the target and how many fds each watches (`tfd:` lines of fdinfo).
fn read_epoll_watch(pid: u32) -> HashMap<u32, usize> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let n = text.lines().filter(|l| l.starts_with("tfd:")).count();
        let is_epoll = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .is_ok_and(|l| l.to_string_lossy().contains("eventpoll"));
        if is_epoll {
            out.insert(fd, n);
        }
    }
    out
}

/// The epoll returns counted per CPU for the thread running there (bpf: wp_running),
/// not yet added to its state: tid -> polls.
fn pending_polls(attached: &Attached<'_>) -> Result<HashMap<u32, u64>> {
    let per_cpu = attached
        .skel
        .maps
        .running_here
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("reading the running threads' polls failed")?
        .unwrap_or_default();
    let mut out = HashMap::new();
    for bytes in per_cpu {
        let mut r = wp_running::default();
        if plain::copy_from_bytes(&mut r, &bytes).is_ok() && r.tid != 0 && r.polls != 0 {
            *out.entry(r.tid).or_insert(0) += u64::from(r.polls);
        }
    }
    Ok(out)
}

/// Splits the open off-CPU interval of a thread at the session's end, as the BPF
/// program would have at its next switch-in: (blocked, run-queue).
pub fn split_open_interval(ts: &thread_state, end_ns: u64) -> (u64, u64) {
    let out = ts.out_ts.min(end_ns);
    if has(ts.flags, wp_thread_flag::WP_TF_RUNNABLE_OUT) {
        (0, end_ns - out)
    } else if ts.waking_ts != 0 && ts.waking_ts >= ts.in_ts {
        let w = ts.waking_ts.clamp(out, end_ns);
        (w - out, end_ns - w)
    } else {
        (end_ns - out, 0)
    }
}

/// Threads still alive at the end: add their open interval (on-CPU or off-CPU) to their
/// totals, and their open wait to the profile, marked unfinished.
fn close_open_threads(
    attached: &Attached<'_>,
    cfg: &Config,
    collected: &mut Collected,
) -> Result<()> {
    let end = collected.end_ns;
    let enabled: HashSet<Kind> = cfg.kinds.iter().copied().collect();
    let min_block = cfg.min_block.as_nanos() as u64;
    let pending = pending_polls(attached)?;
    for (_, ts) in read_map::<u32, thread_state>(&attached.skel.maps.threads, "thread state")? {
        let mut totals = totals_of(&ts, end, false);
        totals.polls += pending.get(&ts.tid).copied().unwrap_or(0);
        // threads often name themselves after they start
        if let Some(comm) = session::proc_comm(collected.pid, ts.tid) {
            totals.comm = comm;
        }
        if has(ts.flags, wp_thread_flag::WP_TF_ON_CPU) {
            totals.oncpu_ns += end.saturating_sub(ts.in_ts);
            collected.threads.push(totals);
            continue;
        }
        let (blocked, runq) = split_open_interval(&ts, end);
        totals.blocked_ns += blocked;
        totals.runq_ns += runq;
        collected.threads.push(totals);
        let kind = Kind::from_raw(ts.kind);
        let in_episode = has(ts.flags, wp_thread_flag::WP_TF_IN_EPISODE);
        let (blocked, runq) = if in_episode {
            (ts.ep_blocked_ns + blocked, ts.ep_runq_ns + runq)
        } else {
            (blocked, runq)
        };
        if !enabled.contains(&kind) {
            continue;
        }
        if blocked + runq < min_block {
            collected.losses.below_min_block += 1;
            collected.losses.below_min_block_ns += blocked + runq;
            continue;
        }
        let (ustack, kstack) = if in_episode {
            (ts.ep_ustack, ts.ep_kstack)
        } else {
            (ts.cur_ustack, ts.cur_kstack)
        };
        // as switch_in would: the wakeup that ended the open interval, if it has one
        let woken = !has(ts.flags, wp_thread_flag::WP_TF_RUNNABLE_OUT)
            && ts.waking_ts != 0
            && ts.waking_ts >= ts.in_ts;
        let mut waker = if woken {
            waker_of(&ts.waking)
        } else if in_episode {
            waker_of(&ts.ep_waker)
        } else {
            Waker::default()
        };
        if !cfg.per_thread {
            waker.tid = 0;
        }
        collected.rows.push(Row {
            tid: ts.tid,
            kind,
            syscall: (ts.syscall >= 0).then_some(ts.syscall as u32),
            outcome: if in_episode {
                Outcome::Unfinished
            } else {
                Outcome::None
            },
            ustack: StackRef::from_raw(ustack),
            kstack: StackRef::from_raw(kstack),
            count: 1,
            blocked_ns: blocked,
            runq_ns: runq,
            object: if kind == Kind::Other { 0 } else { ts.object },
            waker,
        });
    }
    Ok(())
}

/// Threads that had no scheduler event at all during the session: blocked (or running)
/// the whole time. The kernel never saw them, so /proc tells their syscall and stack.
fn add_unseen_threads(cfg: &Config, collected: &mut Collected) {
    let seen: HashSet<u32> = collected.threads.iter().map(|t| t.tid).collect();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", collected.pid)) else {
        return;
    };
    let (start, end) = (collected.start_ns, collected.end_ns);
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if seen.contains(&tid) || cfg.tid.is_some_and(|t| t != tid) {
            continue;
        }
        let base = format!("/proc/{}/task/{tid}", collected.pid);
        let stat = std::fs::read_to_string(format!("{base}/stat")).unwrap_or_default();
        // a thread created after the session ended is not part of it
        // SAFETY: sysconf has no preconditions.
        let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let started_ticks: u64 = session::stat_field(&stat, 22)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if started_ticks * (1_000_000_000 / clk_tck) > boottime_to_monotonic(end) {
            continue;
        }
        let state = session::stat_field(&stat, 3).unwrap_or_default();
        let mut totals = ThreadTotals {
            tid,
            comm: session::proc_comm(collected.pid, tid).unwrap_or_default(),
            start_ns: start,
            end_ns: end,
            ..Default::default()
        };
        if state == "R" {
            totals.oncpu_ns = end - start;
            collected.threads.push(totals);
            continue;
        }
        totals.blocked_ns = end - start;
        collected.threads.push(totals);
        let (nr, arg1, arg2) = proc_syscall(&base);
        let kind = nr
            .map(|nr| syscalls::kind_of(nr, arg2))
            .unwrap_or(Kind::Other);
        if !cfg.kinds.contains(&kind) {
            continue;
        }
        let kstack = proc_kernel_stack(&base);
        let kref = if kstack.is_empty() {
            StackRef::BeforeAttach
        } else {
            collected.proc_kstacks.push(kstack);
            StackRef::Proc(collected.proc_kstacks.len() as u32 - 1)
        };
        let object = match kind {
            Kind::Futex => arg1,
            Kind::Epoll => arg1 + 1,
            Kind::Accept | Kind::Other => 0,
        };
        if object != 0 {
            collected.waiters.push(Waiter {
                kind,
                object,
                tid,
                ns: end - start,
            });
        }
        collected.rows.push(Row {
            tid,
            kind,
            syscall: nr,
            outcome: if kind == Kind::Other {
                Outcome::None
            } else {
                Outcome::Unfinished
            },
            ustack: StackRef::BeforeAttach,
            kstack: kref,
            count: 1,
            blocked_ns: end - start,
            runq_ns: 0,
            object,
            waker: Waker::default(),
        });
    }
}

/// /proc/PID/stat start times count from boot (CLOCK_BOOTTIME); convert a monotonic
/// timestamp to compare with them.
fn boottime_to_monotonic(mono_ns: u64) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let boot = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    mono_ns + boot.saturating_sub(session::monotonic_ns())
}

/// The syscall a sleeping thread is in, and its first two arguments, from
/// /proc/.../syscall.
fn proc_syscall(base: &str) -> (Option<u32>, u64, u64) {
    let text = std::fs::read_to_string(format!("{base}/syscall")).unwrap_or_default();
    let mut fields = text.split_whitespace();
    let nr = fields.next().and_then(|f| f.parse::<u32>().ok());
    let mut arg = || {
        fields
            .next()
            .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0)
    };
    let (arg1, arg2) = (arg(), arg());
    (nr, arg1, arg2)
}

/// The kernel stack of a sleeping thread from /proc/.../stack, root first.
fn proc_kernel_stack(base: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("{base}/stack")).unwrap_or_default();
    let mut frames: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| f.split('+').next().unwrap_or(f).to_string())
        .collect();
    frames.reverse();
    frames
}

/// Waits in flight at the start get the stacks the start's snapshot read: a thread that
/// was blocked before attach and never ran during the session (a deadlock, an idle
/// acceptor) is otherwise known by its syscall alone.
fn fill_from_snapshot(collected: &mut Collected) {
    let Collected {
        pid,
        rows,
        stacks,
        snapshots,
        ..
    } = collected;
    let mut register = |ips: &[u64]| {
        let id = snapshot::stack_id(ips);
        stacks.entry(id).or_insert_with(|| ips.to_vec());
        id
    };
    for row in rows
        .iter_mut()
        .filter(|r| r.ustack == StackRef::BeforeAttach)
    {
        let Some(b) = snapshots.at_start.get(&row.tid) else {
            continue;
        };
        // the same wait: the snapshot's syscall is the row's
        if b.syscall != row.syscall || b.ustack.is_empty() {
            continue;
        }
        row.ustack = StackRef::Id(register(&b.ustack));
        if !b.kstack.is_empty() && !matches!(row.kstack, StackRef::Id(_)) {
            row.kstack = StackRef::Id(register(&b.kstack));
        }
        snapshots.rows_filled += 1;
    }
    // the threads still waiting at the end: their stacks, and who holds the lock they wait on
    for b in snapshots.at_end.values_mut() {
        b.ustack_id = (!b.ustack.is_empty()).then(|| register(&b.ustack));
        b.kstack_id = (!b.kstack.is_empty()).then(|| register(&b.kstack));
        match b.syscall.map(|nr| syscalls::kind_of(nr, b.args[1])) {
            Some(Kind::Futex) => b.holder = lock_holder(*pid, b.args[0]),
            Some(Kind::Accept) => b.listener = crate::target::socket_address(*pid, b.args[0]),
            _ => {}
        }
    }
}

/// The thread of `pid` that holds the lock whose futex word is at `addr`: glibc's
/// `pthread_mutex_t` keeps its owner's tid beside the word (`__owner`, 8 bytes on), a PI
/// futex keeps it in the word. Read from the target's memory; None when neither names a
/// thread of the target.
fn lock_holder(pid: u32, addr: u64) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut word = [0u8; 12];
    mem.read_exact_at(&mut word, addr).ok()?;
    let lock = u32::from_ne_bytes(word[0..4].try_into().ok()?);
    let owner = i32::from_ne_bytes(word[8..12].try_into().ok()?);
    let is_thread =
        |tid: u32| tid != 0 && std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
    if lock == 0 {
        return None;
    }
    let pi_owner = lock & 0x3fff_ffff; // FUTEX_TID_MASK
    [u32::try_from(owner).unwrap_or(0), pi_owner]
        .into_iter()
        .find(|&t| is_thread(t))
}

/// A waker in another process was walked by frame pointer without its unwind tables
/// (they are built for the target only): past its first frame that walk may be
/// garbage in code without frame pointers, so only the leaf is kept, and marked.
fn only_leaves_of_other_processes(collected: &mut Collected) {
    use crate::bpf::types::wp_unwind_stop as S;
    for row in &collected.rows {
        if row.waker.tgid == collected.pid || row.waker.ctx != WakerCtx::Task {
            continue;
        }
        if let Some(ips) = row
            .waker
            .ustack
            .id()
            .and_then(|id| collected.stacks.get_mut(&id))
        {
            if ips.len() > 1 {
                ips.truncate(1);
                ips.push(u64::from(S::WP_UNW_OTHER_PROCESS.0));
            }
        }
    }
}

fn read_stacks(attached: &Attached<'_>, collected: &mut Collected) -> Result<()> {
    let ids: HashSet<u64> = collected
        .rows
        .iter()
        .flat_map(|r| [r.ustack, r.kstack, r.waker.ustack, r.waker.kstack])
        .chain(collected.oncpu.iter().map(|s| s.ustack))
        .filter_map(StackRef::id)
        .collect();
    let map = &attached.skel.maps.stacks;
    let ips_of = |bytes: &[u8]| -> Vec<u64> {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
            .take_while(|&ip| ip != 0)
            .collect()
    };
    let mut stacks = HashMap::new();
    // in batches (one syscall per 4096 stacks instead of one each), then one by one
    // whatever a batch did not give (an older kernel has no batch lookup for hash maps)
    for_each_batched(map, &mut |key, value| {
        if let Ok(key) = <[u8; 8]>::try_from(key) {
            let id = u64::from_ne_bytes(key);
            if ids.contains(&id) {
                stacks.insert(id, ips_of(value));
            }
        }
    });
    for id in ids {
        if stacks.contains_key(&id) {
            continue;
        }
        if let Ok(Some(bytes)) = map.lookup(&id.to_ne_bytes(), MapFlags::ANY) {
            stacks.insert(id, ips_of(&bytes));
        }
    }
    collected.stacks = stacks;
    Ok(())
}
