//! waitprof: where do a process's threads wait, and for how long? An eBPF off-CPU
//! profiler that splits every wait into blocked time and run-queue wait, breaks out
//! epoll, futex and accept, and draws the result as a flame graph.
//!
//! The pipeline, one module per stage: `cli` (flags into a `Config`) → `session` (checks,
//! target, load and attach) → `collect` (run, then read the kernel's aggregation) →
//! `symbolize` (blazesym) → `fold` (folded stacks) → `render` (inferno SVG) and
//! `summary` (text).

pub mod analyze;
pub mod bpf;
pub mod cli;
pub mod collect;
pub mod fold;

pub mod model;
pub mod output;
pub mod render;
pub mod runtime;
pub mod session;
pub mod signals;
pub mod snapshot;
pub mod summary;
pub mod symbolize;
pub mod syscalls;
pub mod target;
pub mod text;
pub mod unwind;

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
    let paths = output::output_paths(
        cfg.output.as_deref(),
        &target.comm,
        target.pid,
        &output::file_stamp(),
    );
    let out_dir = output::OutputDir::open(&paths, cfg.output.is_none())?;

    let mut symbolizer = symbolize::Symbolizer::new(target.pid);
    let mut storage = session::new_storage();
    let mut attached = session::load_and_attach(&mut storage, &cfg, target.pid)?;
    if stop.requested() {
        return Err(Interrupted("before the session started: nothing was recorded").into());
    }
    let collected = collect::run(&mut attached, &mut target, &cfg, &stop, &mut symbolizer)?;
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
    // its caches (parsed debug info, symbol tables) are the largest thing in memory
    drop(symbolizer);
    let fold_view = |view| {
        fold::fold(
            &collected,
            &symbols,
            &fold::FoldOptions {
                per_thread: cfg.per_thread,
                hide_idle: cfg.hide_idle,
                view,
            },
        )
    };
    let session = collected.end_ns.saturating_sub(collected.start_ns);
    let title = |what: &str| {
        format!(
            "waitprof: {} (pid {}), {:.1} s, {what}",
            collected.comm,
            collected.pid,
            session as f64 / 1e9
        )
    };
    let views = [
        (
            fold::View::Main,
            if cfg.hide_idle { "off-CPU time without idle waiting" } else { "off-CPU time" },
            "user frames | [syscall] aqua | kernel orange | [run queue] green: woken, waiting for a CPU",
        ),
        (
            fold::View::OffWake,
            "blocked time by waker",
            "blocked stack | -- | the waker's stack upside down, blue (kernel lighter), ending in who woke it",
        ),
        (
            fold::View::RunQueue,
            "run-queue wait",
            "where each thread was when woken or preempted | then how long it waited for a CPU",
        ),
        (
            fold::View::Goroutines,
            "goroutines (sampled)",
            "each goroutine's stack | on top its state: the runtime's wait reason, runnable (waiting for a P), running, in a syscall",
        ),
    ];
    // each view folded and drawn on a thread of its own, while the summary is written
    let (summary, drawn) = std::thread::scope(|s| {
        let handles: Vec<_> = views
            .iter()
            .filter(|(view, _, _)| *view != fold::View::OffWake || cfg.wakers)
            .map(|&(view, what, subtitle)| {
                let (fold_view, title) = (&fold_view, &title);
                s.spawn(
                    move || -> Result<Option<(fold::View, Vec<u8>, fold::Folded)>> {
                        let folded = fold_view(view);
                        if folded.is_empty() {
                            return Ok(None);
                        }
                        let svg = render::svg(&folded, &title(what), subtitle)?;
                        Ok(Some((view, svg, folded)))
                    },
                )
            })
            .collect();
        let summary = summary::render(&collected, &symbols, cfg.top, cfg.per_thread);
        let drawn: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("drawing a view failed")))
            })
            .collect();
        (summary, drawn)
    });
    eprint!("{summary}");
    if aborted() {
        return Err(Interrupted("while writing the profile: no file was written").into());
    }
    let mut outputs = Vec::new();
    for d in drawn {
        if let Some((view, svg, folded)) = d? {
            outputs.push((paths.of(view), svg, folded));
        }
    }
    if outputs.first().is_none_or(|(p, _, _)| p.svg != paths.svg) {
        eprintln!(
            "waitprof: nothing to draw: no thread of pid {} waited (off-CPU) during the session{}; no flame graph written",
            collected.pid,
            if cfg.hide_idle { " other than idly (--hide-idle)" } else { "" }
        );
        return Ok(ExitCode::from(EXIT_NOTHING_BLOCKED));
    }
    // all the files or none: an interruption or a failed write removes what was written
    let writers: Vec<_> = outputs
        .iter()
        .map(|(_, _, folded)| move |out: &mut dyn std::io::Write| folded.write_to(out))
        .collect();
    let files: Vec<(&std::path::Path, output::Content<'_>)> = outputs
        .iter()
        .zip(&writers)
        .flat_map(|((p, svg, _), write)| {
            [
                (p.folded.as_path(), output::Content::Stream(write)),
                (p.svg.as_path(), output::Content::Bytes(svg.as_slice())),
            ]
        })
        .collect();
    out_dir.write_all(&files, &aborted, || {
        Interrupted("while writing the profile: no file was written").into()
    })?;
    // a view not drawn this time must not leave an older run's file beside the new ones
    for view in [
        fold::View::OffWake,
        fold::View::RunQueue,
        fold::View::Goroutines,
    ] {
        let p = paths.of(view);
        if !outputs.iter().any(|(o, _, _)| o.svg == p.svg) {
            out_dir.remove(&p.svg);
            out_dir.remove(&p.folded);
        }
    }
    eprintln!(
        "waitprof: wrote {} ({:.2} s after the session ended)",
        outputs
            .iter()
            .map(|(p, _, _)| p.svg.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        collected
            .stopped_at
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
    );
    eprintln!("waitprof: each with its folded stacks beside it (.folded)");
    Ok(ExitCode::SUCCESS)
}
