//! Exports: every file a session writes, and the one writer that puts them on disk all
//! or none. Each format has its own module (`flamegraph`: inferno SVG; `pprof`: gzipped
//! profile.proto; `json`: the summary's facts; `perfetto`: the timeline); `files` owns
//! how a file reaches the disk safely (directory fd, `O_EXCL|O_NOFOLLOW`, rename into
//! place).

pub mod files;
pub mod flamegraph;
pub mod json;
pub mod perfetto;
pub mod pprof;

use std::path::PathBuf;

use anyhow::Result;

use crate::fold::{Folded, View};
use files::{Content, OutputDir, OutputPaths};

/// One view of the profile, drawn.
pub struct Drawn {
    pub view: View,
    pub svg: Vec<u8>,
    pub folded: Folded,
    /// Its pprof profile, gzipped, if the view has one of its own.
    pub pprof: Option<Vec<u8>>,
}

/// The views that may be written, besides the main one: a view not drawn this time has
/// an older run's files removed, so that they do not pass for this run's.
const OTHER_VIEWS: [View; 3] = [View::OffWake, View::RunQueue, View::Goroutines];

/// Writes every drawn view (its folded stacks, its SVG and its pprof profile), and the
/// Perfetto trace if there is one, into `dir`, all or none, and removes the files of
/// views not drawn (and a stale trace). Returns the SVGs' paths, in the views' order.
pub fn write_views(
    dir: &OutputDir,
    paths: &OutputPaths,
    drawn: &[Drawn],
    timeline: Option<&[u8]>,
    aborted: &dyn Fn() -> bool,
    interrupted: impl Fn() -> anyhow::Error,
) -> Result<Vec<PathBuf>> {
    let of: Vec<OutputPaths> = drawn.iter().map(|d| paths.of(d.view)).collect();
    let writers: Vec<_> = drawn
        .iter()
        .map(|d| move |out: &mut dyn std::io::Write| d.folded.write_to(out))
        .collect();
    let mut files: Vec<(&std::path::Path, Content<'_>)> = drawn
        .iter()
        .zip(&of)
        .zip(&writers)
        .flat_map(|((d, p), write)| {
            [
                Some((p.folded.as_path(), Content::Stream(write))),
                Some((p.svg.as_path(), Content::Bytes(d.svg.as_slice()))),
                d.pprof
                    .as_ref()
                    .map(|b| (p.pprof.as_path(), Content::Bytes(b.as_slice()))),
            ]
            .into_iter()
            .flatten()
        })
        .collect();
    match timeline {
        Some(trace) => files.push((paths.timeline.as_path(), Content::Bytes(trace))),
        None => dir.remove(&paths.timeline),
    }
    dir.write_all(&files, aborted, interrupted)?;
    for d in drawn.iter().filter(|d| d.pprof.is_none()) {
        dir.remove(&paths.of(d.view).pprof);
    }
    for view in OTHER_VIEWS {
        if !drawn.iter().any(|d| d.view == view) {
            let p = paths.of(view);
            dir.remove(&p.svg);
            dir.remove(&p.folded);
            dir.remove(&p.pprof);
        }
    }
    Ok(of.into_iter().map(|p| p.svg).collect())
}
