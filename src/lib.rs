//! waitprof: where do a process's threads wait, and for how long? An eBPF off-CPU
//! profiler that splits every wait into blocked time and run-queue wait, breaks out
//! epoll, futex and accept, and draws the result as a flame graph.
//!
//! The pipeline, one module per stage: `cli` (flags into a `Config`) → `session` (checks,
//! target, load and attach) → `collect` (run, then read the kernel's aggregation) →
//! `symbolize` (blazesym) → `fold` (folded stacks) → `render` (inferno SVG) and
//! `summary` (text).

pub mod bpf;
pub mod cli;
pub mod collect;
pub mod fold;
pub mod model;
pub mod render;
pub mod session;
pub mod signals;
pub mod summary;
pub mod symbolize;
pub mod syscalls;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Config;
use crate::signals::{Interrupted, Stop};

/// Exit status when the session saw no off-CPU time worth drawing.
pub const EXIT_NOTHING_BLOCKED: u8 = 1;

pub fn run(cfg: Config) -> Result<ExitCode> {
    let stop = Stop::install()?;
    session::preflight()?;
    let mut target = session::Profiled::prepare(&cfg)?;
    let paths = render::output_paths(
        cfg.output.as_deref(),
        &target.comm,
        target.pid,
        &render::file_stamp(),
    );
    render::check_writable(&paths)?;

    let symbolizer = symbolize::Symbolizer::new(target.pid);
    let mut storage = session::new_storage();
    let mut attached = session::load_and_attach(&mut storage, &cfg, target.pid)?;
    if stop.requested() {
        return Err(Interrupted("before the session started: nothing was recorded").into());
    }
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
    let collected = collect::run(&mut attached, &mut target, &cfg, &stop, &symbolizer)?;
    drop(attached); // detach before the slower work below
    target.finish();
    // the signal that ended collection (if any) is spent; a later one aborts the writing,
    // which must not leave a partial file
    let signals_at_end = stop.count();
    let aborted = || stop.count() > signals_at_end;

    eprintln!(
        "waitprof: recording stopped; symbolizing {} stacks of {} rows",
        collected.stacks.len(),
        collected.rows.len()
    );
    let symbols = symbolizer.resolve(&collected)?;
    let folded = fold::fold(
        &collected,
        &symbols,
        &fold::FoldOptions {
            per_thread: cfg.per_thread,
        },
    );
    eprint!(
        "{}",
        summary::render(&collected, &symbols, cfg.top, cfg.per_thread)
    );
    if aborted() {
        return Err(Interrupted("while writing the profile: no file was written").into());
    }
    if folded.is_empty() {
        eprintln!(
            "waitprof: nothing to draw: no thread of pid {} waited (off-CPU) during the session; no flame graph written",
            collected.pid
        );
        return Ok(ExitCode::from(EXIT_NOTHING_BLOCKED));
    }
    let session = collected.end_ns.saturating_sub(collected.start_ns);
    let title = format!(
        "waitprof: {} (pid {}), {:.1} s, off-CPU time",
        collected.comm,
        collected.pid,
        session as f64 / 1e9
    );
    let subtitle = "user frames | [syscall] aqua | kernel orange | [run queue] green: woken, waiting for a CPU";
    let svg = render::svg(&folded, &title, subtitle)?;
    render::write_atomic(&paths.folded, folded.text().as_bytes())?;
    if aborted() {
        let _ = std::fs::remove_file(&paths.folded);
        return Err(Interrupted("while writing the profile: no file was written").into());
    }
    render::write_atomic(&paths.svg, &svg)?;
    eprintln!(
        "waitprof: wrote {} and {} ({:.2} s after the session ended)",
        paths.svg.display(),
        paths.folded.display(),
        collected
            .stopped_at
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
    );
    Ok(ExitCode::SUCCESS)
}
