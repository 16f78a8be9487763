//! One profiling session's set-up and tear-down: the checks that must pass before
//! anything is loaded, the target (an existing pid, or a command launched paused until
//! the hooks are live), and loading and attaching the BPF program with an explicit
//! fallback from tp_btf to raw_tp to classic tracepoints.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapHandle, MapType, OpenObject, PrintLevel, ProgramMut, TracepointCategory};

use crate::bpf::{OpenWaitprofSkel, WaitprofSkel, WaitprofSkelBuilder};
use crate::cli::{AttachMode, Config, Target};
use crate::syscalls;

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// Overrides BTF_PATH, so the tests can show what happens on a kernel without BTF.
const BTF_PATH_ENV: &str = "WAITPROF_KERNEL_BTF";
const TRACEFS: &str = "/sys/kernel/tracing";
/// PF_KTHREAD in the flags field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;
/// Listening sockets sampled at accept(2): a server has a handful.
const MAX_LISTENERS: u32 = 1024;
/// epoll fds numbered 1024 or more counted (those below always are, bpf: polls_direct):
/// an event loop per thread has one each.
pub const MAX_POLLED_FDS: u32 = 4096;
/// (thread, stack) pairs of on-CPU samples: a minute at 99 Hz on 100 CPUs, all distinct.
const MAX_ONCPU_STACKS: u32 = 1 << 16;
/// The exit records ring buffer: 2 MiB holds ~16k thread exits between two polls.
const EXITS_RINGBUF_BYTES: u32 = 2 << 20;
/// `--timeline`'s ring buffer: 16 MiB holds ~350k events (48 bytes each with the ring's
/// header) between two reads, which come at least every 100 ms; the smallest (a page)
/// when it is off.
pub const TIMELINE_RINGBUF_BYTES: u32 = 16 << 20;

/// The attach methods, in the order `auto` tries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    TpBtf,
    RawTp,
    Tracepoint,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::TpBtf => "tp_btf",
            Flavour::RawTp => "raw_tp",
            Flavour::Tracepoint => "tracepoint",
        }
    }

    fn candidates(mode: AttachMode) -> &'static [Flavour] {
        match mode {
            AttachMode::Auto => &[Flavour::TpBtf, Flavour::RawTp, Flavour::Tracepoint],
            AttachMode::TpBtf => &[Flavour::TpBtf],
            AttachMode::RawTp => &[Flavour::RawTp],
            AttachMode::Tracepoint => &[Flavour::Tracepoint],
        }
    }
}

/// Where the tracked syscalls' exits have their own tracepoints; the environment
/// variable names another directory (the tests: an empty one stands for a kernel
/// without them).
const SYSCALL_EVENTS: &str = "/sys/kernel/tracing/events/syscalls";
const SYSCALL_EVENTS_ENV: &str = "WAITPROF_SYSCALL_EVENTS";

/// Tests only: the hooks ignore every Nth switch-in of the target, standing in for the
/// switches the kernel does not deliver (see `switched_in_unseen` in the BPF program).
/// How the profiler sees syscalls end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SysExitHook {
    /// Each tracked syscall's own exit tracepoint (`syscalls:sys_exit_NAME`, these
    /// names): every other syscall's exit costs the kernel a bit test, no program run.
    Tracked(Vec<&'static str>),
    /// The flavour's program on every syscall's exit, on every task of the machine, and
    /// why the tracepoints of the tracked ones are not used.
    Every(String),
}

impl SysExitHook {
    /// The tracked syscalls' exit tracepoints where the kernel has them (tracefs, and
    /// CONFIG_FTRACE_SYSCALLS), or else every syscall's exit.
    fn choose() -> SysExitHook {
        let dir = std::env::var_os(SYSCALL_EVENTS_ENV).unwrap_or_else(|| SYSCALL_EVENTS.into());
        let dir = Path::new(&dir);
        let present: Vec<&'static str> = crate::syscalls::tracked_names()
            .into_iter()
            .filter(|n| dir.join(format!("sys_exit_{n}")).is_dir())
            .collect();
        if present.is_empty() {
            SysExitHook::Every(format!(
                "no syscall exit tracepoints under {}",
                crate::text::printable(&dir.to_string_lossy())
            ))
        } else {
            SysExitHook::Tracked(present)
        }
    }

    /// The program the syscall exits run: the tracked exits' own, or the flavour's
    /// every-syscall one (`every_exit`). The other is not loaded.
    fn program<'a, 'obj>(
        &self,
        skel: &'a WaitprofSkel<'obj>,
        every_exit: &'a ProgramMut<'obj>,
    ) -> &'a ProgramMut<'obj> {
        match self {
            SysExitHook::Tracked(_) => &skel.progs.tp_sys_exit_tracked,
            SysExitHook::Every(_) => every_exit,
        }
    }

    /// For the summary's `attached with` line.
    pub fn describe(&self) -> String {
        match self {
            SysExitHook::Tracked(names) => {
                format!("the exits of {} tracked syscalls", names.len())
            }
            SysExitHook::Every(why) => format!("every syscall's exit ({why})"),
        }
    }
}

/// Checks that need no target: privileges and kernel support.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("waitprof must run as root to load BPF programs: run it with sudo");
    }
    if !crate::target::in_initial_pid_namespace() {
        bail!(
            "waitprof runs inside a pid namespace (a container): the kernel numbers processes \
             in the host's namespace, so -p would name another process; run waitprof on the \
             host (or with the host's pid namespace, e.g. docker run --pid=host)"
        );
    }
    let btf = std::env::var_os(BTF_PATH_ENV).unwrap_or_else(|| BTF_PATH.into());
    if !Path::new(&btf).exists() {
        bail!(
            "this kernel has no BTF ({} is missing): waitprof needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.5)",
            Path::new(&btf).display()
        );
    }
    Ok(())
}

/// The process being profiled.
pub struct Profiled {
    pub pid: u32,
    pub comm: String,
    /// Where waitprof keeps its threads off the CPUs a `-p` target is confined to.
    pub cpus: Option<String>,
    launched: Option<Launched>,
}

/// A command started by waitprof, held before exec until the hooks are attached.
struct Launched {
    name: String,
    go: Option<File>,
    spawner: Option<JoinHandle<std::io::Result<Child>>>,
    child: Option<Child>,
}

impl Profiled {
    pub fn prepare(cfg: &Config) -> Result<Profiled> {
        match &cfg.target {
            Target::Pid(pid) => {
                check_pid(*pid)?;
                if let Some(tid) = cfg.tid {
                    if !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
                        bail!(
                            "thread {tid} is not a thread of process {pid}: see /proc/{pid}/task"
                        );
                    }
                }
                Ok(Profiled {
                    pid: *pid,
                    comm: proc_comm(*pid, *pid).unwrap_or_else(|| format!("pid{pid}")),
                    // before anything is loaded: all of waitprof's work avoids its CPUs
                    cpus: crate::target::keep_off_cpus_of(*pid),
                    launched: None,
                })
            }
            Target::Command(argv) => launch(argv),
        }
    }

    /// Lets a launched command run (exec). A command that cannot be executed is an error.
    pub fn release(&mut self) -> Result<()> {
        let Some(l) = self.launched.as_mut() else {
            return Ok(());
        };
        if let Some(mut go) = l.go.take() {
            go.write_all(b"g").context("starting the command failed")?;
        }
        if let Some(spawner) = l.spawner.take() {
            let child = spawner
                .join()
                .map_err(|_| anyhow!("the thread starting the command panicked"))?
                .with_context(|| format!("cannot run {}", l.name))?;
            l.child = Some(child);
        }
        Ok(())
    }

    /// Whether the target has exited; for a launched command, with its exit code.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        if let Some(child) = self.launched.as_mut().and_then(|l| l.child.as_mut()) {
            return match child.try_wait() {
                Ok(Some(status)) => Some(status.code()),
                Ok(None) => None,
                Err(_) => Some(None),
            };
        }
        // a zombie has exited even though /proc still lists it
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => matches!(stat_field(&stat, 3).as_deref(), Some("Z" | "X")).then_some(None),
            Err(_) => Some(None),
        }
    }

    /// A launched command still running when the session ends is stopped, not orphaned.
    pub fn finish(&mut self) {
        let Some(l) = self.launched.as_mut() else {
            return;
        };
        drop(l.go.take()); // never released: the child sees EOF and does not exec
        if let Some(spawner) = l.spawner.take() {
            let _ = spawner.join();
        }
        if let Some(child) = l.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Profiled {
    fn drop(&mut self) {
        self.finish();
    }
}

fn check_pid(pid: u32) -> Result<()> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|_| anyhow!("no process with pid {pid}: check it with `ps -p {pid}`"))?;
    let flags: u64 = stat_field(&stat, 9)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    if flags & PF_KTHREAD != 0 {
        bail!(
            "pid {pid} ({}) is a kernel thread: waitprof profiles user processes",
            proc_comm(pid, pid).unwrap_or_default()
        );
    }
    if matches!(stat_field(&stat, 3).as_deref(), Some("Z" | "X")) {
        bail!("process {pid} has already exited (it is a zombie)");
    }
    Ok(())
}

/// Field `n` (1-based, as in proc(5)) of a /proc/PID/stat line; comm may hold spaces.
pub fn stat_field(stat: &str, n: usize) -> Option<String> {
    let close = stat.rfind(')')?;
    match n {
        1 => stat.split_whitespace().next().map(str::to_string),
        2 => Some(stat[stat.find('(')? + 1..close].to_string()),
        _ => stat[close + 1..]
            .split_whitespace()
            .nth(n - 3)
            .map(str::to_string),
    }
}

/// A thread's name, while it still exists.
pub fn proc_comm(pid: u32, tid: u32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/task/{tid}/comm"))
        .ok()
        .map(|s| crate::text::printable_bytes(s.strip_suffix(b"\n").unwrap_or(&s)))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe failed");
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the command on another thread (Command::spawn returns only after exec), with a
/// pre-exec step that reports the child's pid and waits for the go signal.
fn launch(argv: &[OsString]) -> Result<Profiled> {
    let program = &argv[0];
    let name = program.to_string_lossy().into_owned();
    which::which(program).map_err(|_| {
        anyhow!("command not found: {name} (not an executable file, nor found in PATH)")
    })?;
    let (pid_r, pid_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..]);
    let (pid_rfd, pid_wfd) = (pid_r.as_raw_fd(), pid_w.as_raw_fd());
    let (go_rfd, go_wfd) = (go_r.as_raw_fd(), go_w.as_raw_fd());
    // SAFETY: the closure only calls async-signal-safe functions (close, getpid, write, read).
    unsafe {
        cmd.pre_exec(move || {
            // the child's copies of our ends: holding go_w would keep it from ever seeing
            // EOF if waitprof gives up before releasing it
            libc::close(pid_rfd);
            libc::close(go_wfd);
            let pid = libc::getpid();
            libc::write(pid_wfd, (&pid as *const i32).cast(), 4);
            let mut b = 0u8;
            if libc::read(go_rfd, (&mut b as *mut u8).cast(), 1) != 1 {
                return Err(std::io::Error::other(
                    "waitprof stopped before the command started",
                ));
            }
            Ok(())
        });
    }
    let spawner = std::thread::spawn(move || {
        let result = cmd.spawn();
        drop((pid_w, go_r));
        result
    });
    let mut buf = [0u8; 4];
    let mut pid_r = File::from(pid_r);
    if pid_r.read_exact(&mut buf).is_err() {
        let err = spawner
            .join()
            .map_err(|_| anyhow!("the thread starting the command panicked"))?;
        return Err(match err {
            Err(e) => anyhow!(e).context(format!("cannot run {name}")),
            Ok(_) => anyhow!("cannot run {name}: it did not start"),
        });
    }
    let pid = i32::from_ne_bytes(buf) as u32;
    Ok(Profiled {
        pid,
        // a launched command inherits waitprof's CPUs: nothing to keep off
        cpus: None,
        comm: Path::new(program)
            .file_name()
            .map(|f| crate::text::printable_bytes(&f.as_encoded_bytes()[..f.len().min(15)]))
            .unwrap_or_else(|| name.clone()),
        launched: Some(Launched {
            name,
            go: Some(File::from(go_w)),
            spawner: Some(spawner),
            child: None,
        }),
    })
}

/// libbpf's messages, kept so that a failed load can show the verifier's reason.
static LIBBPF_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn libbpf_print(_level: PrintLevel, msg: String) {
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        log.push(msg);
    }
}

fn take_libbpf_log(max_lines: usize) -> String {
    let lines: Vec<String> = LIBBPF_LOG
        .lock()
        .map(|mut log| std::mem::take(&mut *log))
        .unwrap_or_default()
        .iter()
        .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n    ")
}

/// The loaded program with its links; dropping it detaches everything.
pub struct Attached<'obj> {
    pub skel: WaitprofSkel<'obj>,
    pub flavour: Flavour,
    pub sys_exit: SysExitHook,
    /// Whether on-CPU samples can be taken (with the goroutine view), or why not.
    pub oncpu: Result<(), String>,
    _links: Vec<Link>,
    _oncpu_links: Vec<Link>,
    /// The tracked syscalls' exit tracepoints: each close waits for the kernel's grace
    /// periods (the 8 one after another: 0.6 s here; on threads of their own: 0.3 s).
    sys_exit_links: Vec<Link>,
}

/// Storage for one attempt per flavour: each open skeleton borrows its own.
pub type ObjectStorage = [MaybeUninit<OpenObject>; 3];

pub fn new_storage() -> ObjectStorage {
    [
        MaybeUninit::uninit(),
        MaybeUninit::uninit(),
        MaybeUninit::uninit(),
    ]
}

fn configure(
    open: &mut OpenWaitprofSkel<'_>,
    cfg: &Config,
    pid: u32,
    flavour: Flavour,
    sys_exit: &SysExitHook,
    tables: &TableMaps,
) -> Result<()> {
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no .rodata")?;
    let c = &mut rodata.cfg;
    c.tgid = pid;
    c.tid = cfg.tid.unwrap_or(0);
    c.min_block_ns = cfg.min_block.as_nanos().min(u64::MAX as u128) as u64;
    c.kinds_mask = cfg.kinds.iter().fold(0, |m, k| m | k.mask_bit());
    c.futex_wait_ops = syscalls::futex_wait_ops_mask();
    c.recapture_every = cfg.recapture_every;
    c.rows_per_thread = u32::from(cfg.per_thread);
    c.wakers = u32::from(cfg.wakers);
    c.dwarf = u32::from(cfg.unwind == crate::cli::Unwind::Dwarf);
    c.timeline = u32::from(cfg.timeline);
    c.waker_walk_ns = WAKER_WALK.as_nanos() as u64;
    c.preempt_from_rq = preempt_count_from_run_queue().unwrap_or(0);
    let entry = interrupt_entry_text();
    c.irq_entry_lo = entry.irq.start;
    c.irq_entry_hi = entry.irq.end;
    c.fault_entry_lo = entry.fault.start;
    c.fault_entry_hi = entry.fault.end;
    c.sysclass = syscalls::class_table();
    c.test_drop_switch_ins = cfg.test_drop_switch_ins;

    open.maps.threads.set_max_entries(cfg.max_threads)?;
    open.maps.agg.set_max_entries(cfg.max_rows)?;
    open.maps.stacks.set_max_entries(cfg.stack_storage_size)?;
    open.maps.waiters.set_max_entries(cfg.max_rows)?;
    open.maps.listeners.set_max_entries(MAX_LISTENERS)?;
    open.maps.polls.set_max_entries(MAX_POLLED_FDS)?;
    open.maps.oncpu.set_max_entries(MAX_ONCPU_STACKS)?;
    open.maps.exits.set_max_entries(EXITS_RINGBUF_BYTES)?;
    open.maps.timeline.set_max_entries(if cfg.timeline {
        TIMELINE_RINGBUF_BYTES
    } else {
        rustix::param::page_size() as u32
    })?;
    open.maps
        .unwind_rows
        .reuse_fd(tables.rows.as_fd())
        .context("handing the unwind rows to the BPF object failed")?;
    open.maps
        .unwind_procs
        .reuse_fd(tables.procs.as_fd())
        .context("handing the unwind mappings to the BPF object failed")?;

    let p = &mut open.progs;
    for (prog, f) in [
        (&mut p.btf_sched_switch, Flavour::TpBtf),
        (&mut p.btf_sched_waking, Flavour::TpBtf),
        (&mut p.btf_sys_exit, Flavour::TpBtf),
        (&mut p.btf_sched_process_exit, Flavour::TpBtf),
        (&mut p.raw_sched_switch, Flavour::RawTp),
        (&mut p.raw_sched_waking, Flavour::RawTp),
        (&mut p.raw_sys_exit, Flavour::RawTp),
        (&mut p.raw_sched_process_exit, Flavour::RawTp),
        (&mut p.tp_sched_switch, Flavour::Tracepoint),
        (&mut p.tp_sched_waking, Flavour::Tracepoint),
        (&mut p.tp_sys_exit, Flavour::Tracepoint),
        (&mut p.tp_sched_process_exit, Flavour::Tracepoint),
    ] {
        prog.set_autoload(f == flavour);
    }
    let tracked = matches!(sys_exit, SysExitHook::Tracked(_));
    for (prog, f) in [
        (&mut p.btf_sys_exit, Flavour::TpBtf),
        (&mut p.raw_sys_exit, Flavour::RawTp),
        (&mut p.tp_sys_exit, Flavour::Tracepoint),
    ] {
        prog.set_autoload(f == flavour && !tracked);
    }
    p.tp_sys_exit_tracked.set_autoload(tracked);
    open.progs.oncpu_sample.set_autoload(cfg.goroutines);
    Ok(())
}

/// On-CPU samples per second per CPU (see `oncpu_sample`): odd, not to beat in step
/// with the target's own timers.
const ONCPU_HZ: u64 = 99;

/// Attaches `oncpu_sample` to a cpu-clock perf event on every CPU: the links, or why
/// there are none.
fn attach_oncpu(skel: &WaitprofSkel<'_>) -> Result<Vec<Link>, String> {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as i32;
    let mut links = Vec::new();
    let mut last_err = None;
    for cpu in 0..cpus {
        let mut attr = libbpf_rs::libbpf_sys::perf_event_attr {
            type_: libbpf_rs::libbpf_sys::PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<libbpf_rs::libbpf_sys::perf_event_attr>() as u32,
            config: u64::from(libbpf_rs::libbpf_sys::PERF_COUNT_SW_CPU_CLOCK),
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_period = 1_000_000_000 / ONCPU_HZ;
        // SAFETY: attr is a valid perf_event_attr of the size it says; pid -1 with a cpu
        // counts every task on that CPU; no group.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const libbpf_rs::libbpf_sys::perf_event_attr,
                -1,
                cpu,
                -1,
                libbpf_rs::libbpf_sys::PERF_FLAG_FD_CLOEXEC,
            )
        } as i32;
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            // an offline CPU has no events
            if err.raw_os_error() != Some(libc::ENODEV) {
                last_err = Some(format!("perf_event_open on CPU {cpu}: {err}"));
            }
            continue;
        }
        match skel.progs.oncpu_sample.attach_perf_event(fd) {
            // the link owns the event's fd from here, and closes it
            Ok(link) => links.push(link),
            Err(e) => {
                // SAFETY: fd was opened above and nothing else holds it.
                unsafe { libc::close(fd) };
                last_err = Some(format!("attaching to CPU {cpu}'s cpu-clock: {e}"));
            }
        }
    }
    match (links.is_empty(), last_err) {
        (true, Some(e)) => Err(e),
        (true, None) => Err("no CPU has a cpu-clock perf event".to_string()),
        _ => Ok(links),
    }
}

/// Where the kernel's interrupt entry code is: a waker whose kernel stack runs through it
/// woke from an interrupt. Page faults enter through the same section but run for the
/// faulting thread, so their entry is carved out.
#[derive(Debug, Default, PartialEq, Eq)]
struct EntryText {
    irq: std::ops::Range<u64>,
    fault: std::ops::Range<u64>,
}

/// From /proc/kallsyms; all zero (wakers all count as threads) where it hides addresses.
/// The kernel formats kallsyms slowly (about 150 ms for all of it), and these symbols
/// are at the start of kernel text, near its top: the read stops once they are found.
/// A wakeup that ends a wait this long or longer always has its waker's stacks walked
/// (wp_config.waker_walk_ns): the waits that make up a profile's time are never sampled.
pub const WAKER_WALK: Duration = Duration::from_millis(1);

/// Where a CPU's preempt count is from its run queue (wp_config.preempt_from_rq): both
/// are per-CPU variables, whose offsets in the per-CPU section vmlinux BTF lists. None
/// when either is missing (another architecture, BTF without variables); then every
/// waker is walked. The program checks the result before it relies on it.
fn preempt_count_from_run_queue() -> Option<i64> {
    use libbpf_rs::btf::types::DataSec;
    use libbpf_rs::btf::BtfType;
    let btf = libbpf_rs::Btf::from_vmlinux().ok()?;
    let sec: DataSec<'_> = btf.type_by_name(".data..percpu")?;
    let (mut rq, mut count) = (None, None);
    for v in sec.iter() {
        let name = btf.type_by_id::<BtfType<'_>>(v.ty).and_then(|t| t.name());
        match name.and_then(|n| n.to_str()) {
            Some("runqueues") => rq = Some(i64::from(v.offset)),
            Some("__preempt_count") => count = Some(i64::from(v.offset)),
            _ => continue,
        }
        if rq.is_some() && count.is_some() {
            break;
        }
    }
    Some(count? - rq?).filter(|&d| d != 0)
}

fn interrupt_entry_text() -> EntryText {
    use std::io::BufRead;
    let Ok(file) = File::open("/proc/kallsyms") else {
        return EntryText::default();
    };
    let lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
    entry_text_from(lines)
}

fn entry_text_from(kallsyms: impl Iterator<Item = String>) -> EntryText {
    let addr = |line: &str| {
        line.split_whitespace()
            .next()
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .filter(|&a| a != 0)
    };
    let (mut lo, mut hi, mut fault_start, mut fault_end) = (None, None, None, None);
    // only three names matter: match the line's end before parsing it
    let mut lines = kallsyms;
    while let Some(line) = lines.next() {
        let line = line.as_str();
        if line.ends_with(" __irqentry_text_start") {
            lo = addr(line);
        } else if line.ends_with(" __irqentry_text_end") {
            hi = addr(line);
        } else if line.ends_with(" asm_exc_page_fault") {
            fault_start = addr(line);
            // it ends where the next symbol starts: kallsyms lists kernel text in order
            fault_end = lines
                .by_ref()
                .filter_map(|l| addr(&l))
                .find(|&a| fault_start.is_some_and(|s| a > s));
        }
        if lo.is_some() && hi.is_some() && fault_end.is_some() {
            break;
        }
    }
    match (lo, hi) {
        (Some(lo), Some(hi)) if hi > lo => EntryText {
            irq: lo..hi,
            fault: match (fault_start, fault_end) {
                (Some(s), Some(e)) => s..e,
                _ => 0..0,
            },
        },
        _ => EntryText::default(),
    }
}

/// The four programs of one flavour: sched_switch, sched_waking, sys_exit, process exit.
fn flavour_progs<'a, 'obj>(
    skel: &'a WaitprofSkel<'obj>,
    flavour: Flavour,
) -> [&'a ProgramMut<'obj>; 4] {
    let p = &skel.progs;
    match flavour {
        Flavour::TpBtf => [
            &p.btf_sched_switch,
            &p.btf_sched_waking,
            &p.btf_sys_exit,
            &p.btf_sched_process_exit,
        ],
        Flavour::RawTp => [
            &p.raw_sched_switch,
            &p.raw_sched_waking,
            &p.raw_sys_exit,
            &p.raw_sched_process_exit,
        ],
        Flavour::Tracepoint => [
            &p.tp_sched_switch,
            &p.tp_sched_waking,
            &p.tp_sys_exit,
            &p.tp_sched_process_exit,
        ],
    }
}

/// Attaches the flavour's programs, but for its every-syscall exit when the tracked
/// syscalls' exits have tracepoints of their own (returned apart).
fn attach_all(
    skel: &WaitprofSkel<'_>,
    flavour: Flavour,
    sys_exit: &SysExitHook,
) -> Result<(Vec<Link>, Vec<Link>)> {
    let [switch, waking, every_exit, exit] = flavour_progs(skel, flavour);
    let exit_prog = sys_exit.program(skel, every_exit);
    let mut progs = vec![switch, waking, exit];
    if let SysExitHook::Every(_) = sys_exit {
        progs.push(exit_prog);
    }
    let links = progs
        .into_iter()
        .map(|prog| {
            prog.attach()
                .with_context(|| format!("attaching {} failed", prog.name().to_string_lossy()))
        })
        .collect::<Result<Vec<_>>>()?;
    let SysExitHook::Tracked(names) = sys_exit else {
        return Ok((links, Vec::new()));
    };
    let exits = names
        .iter()
        .map(|n| {
            let event = format!("sys_exit_{n}");
            exit_prog
                .attach_tracepoint(TracepointCategory::Syscalls, &event)
                .with_context(|| {
                    format!(
                        "attaching to the tracepoint syscalls:{event} failed (is tracefs mounted at {TRACEFS}?)"
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((links, exits))
}

/// Classic tracepoints need tracefs; mount it where the kernel expects it if it is missing.
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let (src, dir, fstype) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!("classic tracepoints need tracefs, and mounting it at {TRACEFS} failed")
        });
    }
    Ok(())
}

fn try_flavour<'obj>(
    slot: &'obj mut MaybeUninit<OpenObject>,
    cfg: &Config,
    pid: u32,
    flavour: Flavour,
    tables: &TableMaps,
) -> Result<Attached<'obj>> {
    let mut open = WaitprofSkelBuilder::default()
        .open(slot)
        .context("opening the BPF object failed")?;
    if flavour == Flavour::Tracepoint {
        ensure_tracefs()?;
    }
    let sys_exit = SysExitHook::choose();
    configure(&mut open, cfg, pid, flavour, &sys_exit, tables)?;
    let skel = open.load().map_err(|e| {
        let log = take_libbpf_log(12);
        match refused_table(&log, cfg) {
            Some(table) => anyhow!(TableRefused(table)),
            None => anyhow!(e).context(format!(
                "the kernel refused the BPF program; libbpf said:\n    {log}"
            )),
        }
    })?;
    let (links, sys_exit_links) = attach_all(&skel, flavour, &sys_exit)?;
    Ok(Attached {
        skel,
        flavour,
        sys_exit,
        // attached once the target turns out to be Go (sample_on_cpu)
        oncpu: if cfg.goroutines {
            Ok(())
        } else {
            Err("the goroutine view is off".to_string())
        },
        _links: links,
        _oncpu_links: Vec::new(),
        sys_exit_links,
    })
}

/// The kernel would not create one of the tables at the size a flag asked for.
#[derive(Debug)]
struct TableRefused(String);

impl std::fmt::Display for TableRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TableRefused {}

/// Which table libbpf's log says the kernel refused to create, with the flag that sizes
/// it: `map 'agg': failed to create: -E2BIG`.
fn refused_table(log: &str, cfg: &Config) -> Option<String> {
    let line = log.lines().find(|l| l.contains("': failed to create: "))?;
    let name = line.split("map '").nth(1)?.split('\'').next()?;
    let why = line.rsplit("failed to create: ").next()?.trim();
    let (flag, size) = match name {
        "agg" | "waiters" => ("--max-rows", cfg.max_rows),
        "stacks" => ("--stack-storage-size", cfg.stack_storage_size),
        "threads" => ("--max-threads", cfg.max_threads),
        _ => {
            return Some(format!(
                "the kernel refused to create the table {name}: {why}"
            ))
        }
    };
    Some(format!(
        "the kernel refused to create the table {name} with {size} entries ({flag}): {why}; \
         choose a smaller {flag} (or free memory)"
    ))
}

/// The unwind tables the kernel walks user stacks with (bpf/unwind.h: every row; each
/// process's mappings), created before any BPF object loads, so that the target's
/// tables are built while the kernel verifies the programs (`lib::run`), and handed to
/// both objects that read them (the profiler, the snapshot iterator).
pub struct TableMaps {
    pub rows: MapHandle,
    pub procs: MapHandle,
}

impl TableMaps {
    pub fn create(cfg: &Config) -> Result<TableMaps> {
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let rows = match cfg.unwind {
            crate::cli::Unwind::Dwarf => cfg.unwind_rows,
            crate::cli::Unwind::Fp => 1,
        };
        let size = |n: usize| n as u32;
        let rows = MapHandle::create(
            MapType::Array,
            Some("unwind_rows"),
            4,
            size(std::mem::size_of::<crate::bpf::types::wp_unwind_row>()),
            rows,
            &opts,
        )
        .map_err(|e| {
            anyhow!(TableRefused(format!(
                "the kernel refused to create the table unwind_rows with {rows} entries \
                 (--unwind-rows): {e}; choose a smaller --unwind-rows (or free memory)"
            )))
        })?;
        let procs = MapHandle::create(
            MapType::Hash,
            Some("unwind_procs"),
            4,
            size(std::mem::size_of::<crate::bpf::types::wp_unwind_proc>()),
            UNWIND_PROCS,
            &opts,
        )
        .context("the kernel refused to create the table unwind_procs")?;
        Ok(TableMaps { rows, procs })
    }
}

/// The processes whose unwind mappings the kernel holds at once (bpf/unwind.h).
const UNWIND_PROCS: u32 = 8;

/// Loads and attaches the first flavour that works; the error lists why each one failed.
pub fn load_and_attach<'obj>(
    storage: &'obj mut ObjectStorage,
    cfg: &Config,
    pid: u32,
    tables: &TableMaps,
) -> Result<Attached<'obj>> {
    let _ = libbpf_rs::set_print(Some((PrintLevel::Info, libbpf_print)));
    let mut failures = Vec::new();
    for (flavour, slot) in Flavour::candidates(cfg.attach)
        .iter()
        .copied()
        .zip(storage.iter_mut())
    {
        let attempt = try_flavour(slot, cfg, pid, flavour, tables);
        match attempt {
            Ok(a) => return Ok(a),
            // a table too large for this kernel fails every flavour alike
            Err(e) if e.downcast_ref::<TableRefused>().is_some() => return Err(e),
            Err(e) => failures.push(format!("  {}: {e:#}", flavour.name())),
        }
        take_libbpf_log(0);
    }
    bail!(
        "no attach method works on this kernel (waitprof needs tp_btf, raw_tp or classic \
         tracepoints on sched_switch, sched_waking, sys_exit and sched_process_exit):\n{}",
        failures.join("\n")
    )
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.detach();
    }
}

impl Attached<'_> {
    /// Stores the current time into one of the program's gate variables in .bss.
    fn set_gate(
        &mut self,
        gate: impl FnOnce(&mut crate::bpf::types::bss) -> &mut u64,
    ) -> Result<u64> {
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .context("the BPF object has no .bss")?;
        let now = monotonic_ns();
        // SAFETY: bss is the program's mmap'ed .bss; a volatile store is seen by the hooks.
        unsafe { std::ptr::write_volatile(gate(bss), now) };
        Ok(now)
    }

    /// Opens the gate: every hook starts recording at this instant.
    pub fn start(&mut self) -> Result<u64> {
        self.set_gate(|bss| &mut bss.session_start_ns)
    }

    /// Hook runs the kernel skipped because the program was already running on that CPU
    /// (an interrupt's wakeup inside a wakeup, say), summed over this flavour's programs.
    pub fn recursion_misses(&self) -> u64 {
        let [switch, waking, every_exit, exit] = flavour_progs(&self.skel, self.flavour);
        // the programs loaded
        [
            switch,
            waking,
            self.sys_exit.program(&self.skel, every_exit),
            exit,
        ]
        .into_iter()
        .map(|prog| {
            let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
            let mut len = std::mem::size_of_val(&info) as u32;
            // SAFETY: info is a bpf_prog_info of `len` bytes for the kernel to fill.
            let rc = unsafe {
                libbpf_rs::libbpf_sys::bpf_obj_get_info_by_fd(
                    prog.as_fd().as_raw_fd(),
                    (&mut info as *mut libbpf_rs::libbpf_sys::bpf_prog_info).cast(),
                    &mut len,
                )
            };
            if rc == 0 {
                info.recursion_misses
            } else {
                0
            }
        })
        .sum()
    }

    /// Starts the on-CPU samples of the target's threads (for a Go program): attaches
    /// the sampling program to every CPU's clock, only now, so that no other target pays
    /// for its interrupts. Returns whether samples are taken; if not, `oncpu` says why.
    pub fn sample_on_cpu(&mut self) -> bool {
        if self.oncpu.is_err() {
            return false;
        }
        match attach_oncpu(&self.skel) {
            Ok(links) => self._oncpu_links = links,
            Err(e) => {
                self.oncpu = Err(e);
                return false;
            }
        }
        let Some(bss) = self.skel.maps.bss_data.as_deref_mut() else {
            self.oncpu = Err("the BPF object has no .bss".to_string());
            return false;
        };
        // SAFETY: bss is the program's mmap'ed .bss; a volatile store is seen by the hooks.
        unsafe { std::ptr::write_volatile(&mut bss.oncpu_on, 1) };
        true
    }

    /// Detaches every hook: the kernel stops running them at once, while their maps
    /// stay readable for the end of the session.
    pub fn detach(&mut self) {
        // the programs stop running at once, but a syscall tracepoint's close returns
        // after the kernel's grace periods (one after another, the 8 take 0.6 s here):
        // each closes on a thread of its own (0.3 s for all) while the session ends,
        // and the process waits for them only as it exits
        for link in self.sys_exit_links.drain(..) {
            let _ = std::thread::Builder::new()
                .name("detach".into())
                .spawn(move || drop(link));
        }
        self._links.clear();
        self._oncpu_links.clear();
    }

    /// Closes the gate: hooks stop recording, so the maps read afterwards are consistent.
    pub fn stop(&mut self) -> Result<u64> {
        self.set_gate(|bss| &mut bss.session_end_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_entry_is_found_in_kallsyms() {
        let kallsyms = "\
ffffffff81000080 T entry_SYSCALL_64
ffffffff81000300 T __irqentry_text_start
ffffffff81000c60 T asm_exc_page_fault
ffffffff81000d40 T asm_common_interrupt
ffffffff81000f70 T __irqentry_text_end
ffffffff81360c10 T irq_exit_rcu
";
        let e = entry_text_from(kallsyms.lines().map(str::to_string));
        assert_eq!(e.irq, 0xffffffff81000300..0xffffffff81000f70);
        assert_eq!(e.fault, 0xffffffff81000c60..0xffffffff81000d40);
        // hidden addresses (kptr_restrict) read as zeros
        let hidden: String = kallsyms
            .lines()
            .map(|l| format!("{}{}\n", "0".repeat(16), &l[16..]))
            .collect();
        assert_eq!(
            entry_text_from(hidden.lines().map(str::to_string)),
            EntryText::default()
        );
    }

    #[test]
    fn stat_fields_survive_spaces_in_comm() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100";
        assert_eq!(stat_field(stat, 1).as_deref(), Some("42"));
        assert_eq!(stat_field(stat, 2).as_deref(), Some("my (odd) name"));
        assert_eq!(stat_field(stat, 3).as_deref(), Some("S"));
        assert_eq!(stat_field(stat, 9).as_deref(), Some("4194560"));
    }
}
