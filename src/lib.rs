//! waitprof: where do a process's threads wait, and for how long? An eBPF off-CPU
//! profiler that splits every wait into blocked time and run-queue wait, breaks out
//! epoll, futex and accept, and draws the result as a flame graph.
//!
//! The pipeline, one module per stage: `cli` (flags into a `Config`) → `session` (checks,
//! target, load and attach) → `collect` (run, then read the kernel's aggregation) →
//! `symbolize` (blazesym) → `profile` (typed samples over interned stacks) → `fold`
//! (folded stacks) → `export` (inferno SVG, pprof, the JSON summary, the Perfetto
//! timeline, and the files on disk) and `summary` (text).

pub mod analyze;
pub mod bpf;
pub mod cli;
pub mod collect;
pub mod diff;
pub mod export;
pub mod fold;
pub mod model;
pub mod profile;
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

use std::mem::MaybeUninit;
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
    let paths = export::files::output_paths(
        cfg.output.as_deref(),
        &target.comm,
        target.pid,
        &export::files::file_stamp(),
    );
    let out_dir = export::files::OutputDir::open(&paths, cfg.output.is_none())?;
    // `--json`: its directory opened now, so a bad path fails before the session
    let json_dir = match cfg.json.as_deref() {
        Some(p) if p != std::path::Path::new("-") => Some(export::files::OutputDir::open_named(p)?),
        _ => None,
    };

    let mut symbolizer = symbolize::Symbolizer::new(target.pid);
    let mut storage = session::new_storage();
    // the target's unwind tables build, and the two smaller BPF objects load, on another
    // thread while the kernel verifies the profiler's programs
    let table_maps = session::TableMaps::create(&cfg)?;
    let (mut sockets_storage, mut snapshot_storage) =
        (MaybeUninit::uninit(), MaybeUninit::uninit());
    let (attached, early) = std::thread::scope(|s| {
        let early = s.spawn(|| {
            let tables = collect::first_tables(&cfg, target.pid, &stop, &table_maps)?;
            let prepared = collect::prepare(
                &cfg,
                target.pid,
                &table_maps,
                &mut sockets_storage,
                &mut snapshot_storage,
            );
            anyhow::Ok((tables, prepared))
        });
        let attached = session::load_and_attach(&mut storage, &cfg, target.pid, &table_maps);
        let early = early
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("preparing the session failed")));
        (attached, early)
    });
    let mut attached = attached?;
    let (tables, prepared) = early?;
    if stop.requested() {
        return Err(Interrupted("before the session started: nothing was recorded").into());
    }
    let collected = collect::run(
        &mut attached,
        &mut target,
        &cfg,
        &stop,
        &mut symbolizer,
        tables,
        prepared,
    )?;
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
    let profile = profile::Profile::build(&collected, &symbols);
    let pprof_opts = export::pprof::PprofOptions {
        hide_idle: cfg.hide_idle,
        start_unix_ns: collected.stopped_at.and_then(|stopped| {
            let since_start = stopped.elapsed().as_nanos() as u64 + profile.session_ns;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            (now.as_nanos() as u64).checked_sub(since_start)
        }),
    };
    // every view, folded and in pprof, from the one typed profile
    let fold_view = |view| {
        fold::fold_profile(
            &profile,
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
    // analysed once: the summary words it, the JSON serialises it
    let analysis = analyze::Analysis::of(&collected, &symbols, &profile);
    // the views folded, drawn and written by as many threads as there are CPUs, the
    // largest (the main view) first, while the summary is written: a view's memory is
    // freed once its files are written, so fewer views at once hold less
    let todo: Vec<(fold::View, &str, &str)> = views
        .into_iter()
        .filter(|(view, _, _)| *view != fold::View::OffWake || cfg.wakers)
        .collect();
    let draw = |(view, what, subtitle): (fold::View, &str, &str)| {
        let folded = fold_view(view);
        if folded.is_empty() {
            return Ok(None);
        }
        let svg = export::flamegraph::svg(&folded, &title(what), subtitle)?;
        let pprof = || export::pprof::encode(&profile, view, &pprof_opts);
        export::Drawn::stage(&out_dir, &paths, view, folded, svg, pprof).map(Some)
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, todo.len()));
    let (summary, drawn) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (todo, next, draw) = (&todo, &next, &draw);
                s.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&view) = todo.get(i) else { break done };
                        done.push((i, draw(view)));
                    }
                })
            })
            .collect();
        let summary = summary::render(
            &collected,
            &symbols,
            &profile,
            &analysis,
            cfg.top,
            cfg.per_thread,
        );
        let mut drawn: Vec<(usize, Result<Option<export::Drawn<'_>>>)> = Vec::new();
        for h in handles {
            match h.join() {
                Ok(done) => drawn.extend(done),
                Err(_) => drawn.push((usize::MAX, Err(anyhow::anyhow!("drawing a view failed")))),
            }
        }
        drawn.sort_by_key(|(i, _)| *i);
        (
            summary,
            drawn.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
        )
    });
    eprint!("{summary}");
    if aborted() {
        return Err(Interrupted("while writing the profile: no file was written").into());
    }
    if let Some(path) = cfg.json.as_deref() {
        let json = export::json::to_vec(&export::json::summary(&collected, &symbols, &analysis))?;
        match &json_dir {
            None => {
                use std::io::Write;
                std::io::stdout()
                    .write_all(&json)
                    .and_then(|()| std::io::stdout().flush())
                    .map_err(|e| {
                        anyhow::anyhow!("cannot write the JSON summary to standard output: {e}")
                    })?;
            }
            Some(dir) => {
                let file = [(path, export::files::Content::Bytes(&json))];
                dir.write_all(&file, &aborted, || {
                    Interrupted("while writing the JSON summary: it was not written").into()
                })?;
                eprintln!(
                    "waitprof: wrote the summary's facts to {} (JSON, {})",
                    path.display(),
                    export::json::SCHEMA
                );
            }
        }
    }
    let mut outputs = Vec::new();
    for d in drawn {
        outputs.extend(d?);
    }
    if outputs.first().is_none_or(|d| d.view != fold::View::Main) {
        eprintln!(
            "waitprof: nothing to draw: no thread of pid {} waited (off-CPU) during the session{}; no flame graph written",
            collected.pid,
            if cfg.hide_idle { " other than idly (--hide-idle)" } else { "" }
        );
        return Ok(ExitCode::from(EXIT_NOTHING_BLOCKED));
    }
    let timeline = export::perfetto::trace(&collected, &symbols, &profile);
    let written = export::write_views(
        &out_dir,
        &paths,
        outputs,
        timeline.as_deref(),
        &aborted,
        || Interrupted("while writing the profile: no file was written").into(),
    )?;
    if timeline.is_some() {
        eprintln!(
            "waitprof: wrote the timeline to {} (Perfetto: open it at https://ui.perfetto.dev)",
            paths.timeline.display()
        );
    }
    eprintln!(
        "waitprof: wrote {} ({:.2} s after the session ended)",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        collected
            .stopped_at
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
    );
    eprintln!(
        "waitprof: each with its folded stacks (.folded) and, but for the run-queue view (the main profile's runq samples), its pprof profile (.pb.gz: go tool pprof -http=: FILE) beside it"
    );
    Ok(ExitCode::SUCCESS)
}
