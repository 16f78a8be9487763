//! Command-line flags, and their validation into the typed `Config` the rest of the
//! pipeline uses. Every rejection says what was wrong and how to fix it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::model::Kind;

const EXAMPLES: &str = "\
Examples:
  sudo waitprof -p 1234                  profile every thread of pid 1234 until Ctrl-C
  sudo waitprof -p 1234 -d 10s           ... for 10 seconds
  sudo waitprof -t 1240 -d 5s            only thread 1240 (its process is found from it)
  sudo waitprof -d 30s -- ./server -l :8080   launch a command and profile it
  sudo waitprof -p 1234 --kinds futex --min-block 1ms   only futex waits of 1 ms or more
  sudo waitprof -p 1234 --per-thread -o out/nginx.svg
  sudo waitprof -p 1234 --hide-idle     leave idle waiting out of the flame graph
  waitprof diff OLD.folded NEW.folded    compare two sessions (waitprof diff --help)

Output, by default under flamegraphs/ (or where -o says), each with its folded stacks
(.folded): NAME.svg, where the threads waited; NAME.offwake.svg, who woke them (the
blocked stack, then `--`, then the waker's stack, in blue); NAME.runq.svg, which code
waited for a CPU. On stderr, a summary ending in findings in plain words. Exit status: 0 written, 1 nothing blocked
(nothing written), 2 error, 130 interrupted before anything was written.";

/// Where do my threads wait, and who makes them wait? An off-CPU profiler for one process.
#[derive(Parser, Debug)]
#[command(name = "waitprof", version, about, after_help = EXAMPLES)]
pub struct Args {
    /// Profile this process (every thread, including ones created during the session).
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Profile only this thread.
    #[arg(short, long, value_name = "TID")]
    pub tid: Option<u32>,

    /// Stop after this long (10s, 500ms, 2m; a bare number is seconds). Default: until
    /// Ctrl-C, or until the target exits.
    #[arg(short, long, value_name = "DURATION")]
    pub duration: Option<String>,

    /// Where to write the flame graph: a .svg path, or a directory.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Also write the summary's facts as JSON (schema waitprof.summary/1) to PATH, or to
    /// standard output with `-`.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Leave out of the flame graph waits shorter than this (1ms, 200us; a bare number is
    /// microseconds, as in offcputime -m). They are still counted in the summary.
    #[arg(long, value_name = "TIME", default_value = "0")]
    pub min_block: String,

    /// Which kinds of waits to draw, comma-separated: epoll, futex, accept, other.
    #[arg(long, value_name = "KINDS", default_value = "epoll,futex,accept,other")]
    pub kinds: String,

    /// Add a frame per thread under the process frame.
    #[arg(long)]
    pub per_thread: bool,

    /// Leave idle waiting out of the main flame graph: event loops whose wait timed out
    /// with nothing to do, workers parked on a condition, accept loops with no client.
    /// The summary still counts it.
    #[arg(long)]
    pub hide_idle: bool,

    /// Do not record who woke each wait (no off-wake graph, lower overhead: see
    /// BENCHMARKS.md).
    #[arg(long)]
    pub no_wakers: bool,

    /// Do not read a Go program's goroutines. By default waitprof samples them from the
    /// program's memory (without stopping it) and writes NAME.goroutines.svg: where
    /// the goroutines wait, by the runtime's wait reason, and which waited for a P.
    #[arg(long)]
    pub no_goroutines: bool,

    /// Also record every switch and wakeup of the target's threads and write a Perfetto
    /// trace (NAME.pftrace, open it at ui.perfetto.dev): each thread's running, blocked
    /// (by syscall and object) and runnable slices, with wakeup arrows from the waker.
    #[arg(long)]
    pub timeline: bool,

    /// How to walk user stacks. dwarf: with the unwind tables (.eh_frame) of every file
    /// the target maps, so code built without frame pointers (Debian's glibc, nginx,
    /// redis) unwinds completely; code without tables (Go, JIT) by frame pointer. fp:
    /// frame pointers only, as offcputime and perf do (the kernel's walk: no tables to
    /// build at start, but no cheaper per event here, see BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = Unwind::Dwarf)]
    pub unwind: Unwind,

    /// Number of unwind-table rows the kernel can hold (8 bytes each), for all the
    /// target's files together: glibc takes about 28000, a large C++ server millions.
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    pub unwind_rows: u32,

    /// How to attach to the scheduler and syscall hooks. auto tries tp_btf, then raw_tp,
    /// then classic tracepoints.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,

    /// Number of distinct stacks the kernel can keep.
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub stack_storage_size: u32,

    /// Number of distinct rows (kind, syscall, outcome, stacks; and thread with
    /// --per-thread) the kernel can aggregate.
    #[arg(long, value_name = "N", default_value_t = 65536)]
    pub max_rows: u32,

    /// Number of threads of the target tracked at once.
    #[arg(long, value_name = "N", default_value_t = 16384)]
    pub max_threads: u32,

    /// A thread that goes off-CPU at a place it went off-CPU at before (same user stack,
    /// syscall and task state) reuses the kernel stack walked there, and a waker that ends
    /// a wait under 1 ms from a place where two walks in a row found the same stacks
    /// reuses them; both are walked again every Nth time to check (differences are
    /// counted in the summary). A user stack is reused only where every stack word its
    /// walk read is unchanged (exact, no check needed).
    /// 1 walks every time, user stacks too, at about 2.5 us per context switch or wakeup.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub recapture_every: u32,

    /// How many of the heaviest stacks the summary lists.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub top: usize,

    /// The command to launch and profile (after --).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttachMode {
    Auto,
    #[value(name = "tp_btf")]
    TpBtf,
    #[value(name = "raw_tp")]
    RawTp,
    Tracepoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Unwind {
    Dwarf,
    Fp,
}

/// What to profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    Command(Vec<OsString>),
}

/// The validated configuration of one session.
#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    pub tid: Option<u32>,
    pub duration: Option<Duration>,
    pub output: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub min_block: Duration,
    pub kinds: Vec<Kind>,
    pub per_thread: bool,
    pub hide_idle: bool,
    pub wakers: bool,
    pub goroutines: bool,
    pub timeline: bool,
    pub attach: AttachMode,
    pub unwind: Unwind,
    pub unwind_rows: u32,
    pub stack_storage_size: u32,
    pub max_rows: u32,
    pub max_threads: u32,
    pub recapture_every: u32,
    pub top: usize,
    /// Tests only (`WAITPROF_TEST_DROP_SWITCH_INS=N`): the hooks ignore every Nth switch-in
    /// of the target, as the kernel does not deliver some; 0 = off.
    pub test_drop_switch_ins: u32,
}

/// The environment variable behind `Config::test_drop_switch_ins`.
pub const DROP_SWITCH_INS_ENV: &str = "WAITPROF_TEST_DROP_SWITCH_INS";

/// `WAITPROF_TEST_DROP_SWITCH_INS`, read once: unset is 0; anything but a number is refused
/// (a typo must not silently turn the test's condition off).
fn test_drop_switch_ins() -> Result<u32> {
    match std::env::var_os(DROP_SWITCH_INS_ENV) {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| {
                format!(
                    "{DROP_SWITCH_INS_ENV}={:?} is not a number (a test setting: the hooks ignore \
                 every Nth switch-in of the target; unset it to profile normally)",
                    v.to_string_lossy()
                )
            }),
    }
}

fn parse_duration(what: &str, s: &str, bare_unit: Duration) -> Result<Duration> {
    let s = s.trim();
    if s.starts_with('-') {
        bail!("{what} must not be negative: got {s:?}");
    }
    let too_long = || {
        anyhow!(
            "{what} {s:?} is too long: at most {} days",
            MAX_DURATION.as_secs() / 86_400
        )
    };
    let d = if let Ok(n) = s.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            bail!("{what} must not be negative: got {s:?}");
        }
        Duration::try_from_secs_f64(bare_unit.as_secs_f64() * n).map_err(|_| too_long())?
    } else {
        humantime::parse_duration(s).with_context(|| {
            format!("invalid {what} {s:?}: use a number with a unit, e.g. 10s, 500ms")
        })?
    };
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// The longest duration a flag takes: a year, far from any overflow of the kernel's
/// nanosecond clock or of an `Instant`.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

fn parse_kinds(s: &str) -> Result<Vec<Kind>> {
    let mut kinds = Vec::new();
    for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let kind = Kind::from_name(word).with_context(|| {
            format!("unknown kind {word:?} in --kinds: choose from epoll, futex, accept, other")
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        bail!("--kinds is empty: name at least one of epoll, futex, accept, other");
    }
    kinds.sort();
    Ok(kinds)
}

impl Config {
    pub fn from_args(args: Args) -> Result<Config> {
        let target = match (args.pid, args.command.is_empty(), args.tid) {
            (Some(_), false, _) => bail!("give either -p PID or -- CMD, not both"),
            (Some(0), _, _) => bail!("-p 0 is not a process: give the pid of a running process"),
            (Some(pid), true, _) => Target::Pid(pid),
            (None, false, Some(_)) => {
                bail!("-t TID selects a thread of a running process: it cannot be used with -- CMD")
            }
            (None, false, None) => Target::Command(args.command),
            (None, true, Some(tid)) => Target::Pid(tgid_of(tid)?),
            (None, true, None) => {
                bail!("nothing to profile: give -p PID, -t TID or -- CMD ARGS (see --help)")
            }
        };
        if args.tid == Some(0) {
            bail!("-t 0 is not a thread: give a thread id from /proc/PID/task");
        }
        let duration = match args.duration.as_deref() {
            None => None,
            Some(s) => {
                let d = parse_duration("duration", s, Duration::from_secs(1))?;
                if d.is_zero() {
                    bail!("duration must be greater than zero: got {s:?}");
                }
                Some(d)
            }
        };
        let min_block = parse_duration("--min-block", &args.min_block, Duration::from_micros(1))?;
        // the upper bounds keep each table under about 1 GB of kernel memory
        for (flag, v, max) in [
            ("--stack-storage-size", args.stack_storage_size, 1 << 20),
            ("--max-rows", args.max_rows, 1 << 22),
            ("--max-threads", args.max_threads, 1 << 20),
            ("--recapture-every", args.recapture_every, u32::MAX),
            ("--unwind-rows", args.unwind_rows, 1 << 27),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
            if v > max {
                bail!("{flag} {v} is too large: at most {max}");
            }
        }
        Ok(Config {
            target,
            tid: args.tid,
            duration,
            output: args.output,
            json: args.json,
            min_block,
            kinds: parse_kinds(&args.kinds)?,
            per_thread: args.per_thread,
            hide_idle: args.hide_idle,
            wakers: !args.no_wakers,
            goroutines: !args.no_goroutines,
            timeline: args.timeline,
            attach: args.attach,
            unwind: args.unwind,
            unwind_rows: args.unwind_rows,
            stack_storage_size: args.stack_storage_size,
            max_rows: args.max_rows,
            max_threads: args.max_threads,
            recapture_every: args.recapture_every,
            top: args.top,
            test_drop_switch_ins: test_drop_switch_ins()?,
        })
    }
}

/// The process a thread belongs to, from /proc/TID/status.
fn tgid_of(tid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))
        .with_context(|| format!("no thread with id {tid}: is it still running?"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("cannot read the process of thread {tid} from /proc/{tid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config> {
        let mut argv = vec!["waitprof"];
        argv.extend_from_slice(args);
        Config::from_args(Args::try_parse_from(argv)?)
    }

    #[test]
    fn durations_accept_units_and_bare_numbers() -> Result<()> {
        let c = config(&["-p", "1", "-d", "1500ms", "--min-block", "250"])?;
        assert_eq!(c.duration, Some(Duration::from_millis(1500)));
        assert_eq!(c.min_block, Duration::from_micros(250));
        let c = config(&["-p", "1", "-d", "2"])?;
        assert_eq!(c.duration, Some(Duration::from_secs(2)));
        Ok(())
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let err = |args: &[&str]| format!("{:#}", config(args).unwrap_err());
        assert!(err(&["-p", "1", "-d", "0s"]).contains("greater than zero"));
        assert!(err(&["-p", "1", "--duration=-3"]).contains("must not be negative"));
        assert!(err(&["-p", "1", "-d", "soon"]).contains("invalid duration"));
        assert!(err(&["-p", "1", "--kinds", "epoll,sleep"]).contains("unknown kind \"sleep\""));
        assert!(err(&[]).contains("nothing to profile"));
        assert!(err(&["-p", "1", "--", "true"]).contains("not both"));
        assert!(err(&["-p", "0"]).contains("not a process"));
    }

    #[test]
    fn kinds_are_deduplicated_and_ordered() -> Result<()> {
        let c = config(&["-p", "1", "--kinds", "other,futex,futex"])?;
        assert_eq!(c.kinds, vec![Kind::Futex, Kind::Other]);
        Ok(())
    }

    #[test]
    fn command_target_keeps_its_arguments() -> Result<()> {
        let c = config(&["--", "sleep", "1"])?;
        assert_eq!(c.target, Target::Command(vec!["sleep".into(), "1".into()]));
        Ok(())
    }
}
