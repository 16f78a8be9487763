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
use files::{Content, OutputDir, OutputPaths, Staged};

/// One view of the profile, drawn, with its files written under temporary names: from
/// here they take no memory, and `write_views` puts them in place with the rest.
pub struct Drawn<'d> {
    pub view: View,
    files: Vec<Staged<'d>>,
    /// Whether the view has a pprof profile of its own.
    pprof: bool,
}

impl<'d> Drawn<'d> {
    /// Writes a view's folded stacks and SVG, then, with both dropped (a large
    /// profile's folded lines are tens of megabytes), its pprof profile, if `pprof`
    /// makes one (gzipped).
    pub fn stage(
        dir: &'d OutputDir,
        paths: &OutputPaths,
        view: View,
        folded: Folded,
        svg: Vec<u8>,
        pprof: impl FnOnce() -> Result<Option<Vec<u8>>>,
    ) -> Result<Drawn<'d>> {
        let p = paths.of(view);
        let write = |out: &mut dyn std::io::Write| folded.write_to(out);
        let mut files = vec![
            dir.stage_at(&p.folded, &Content::Stream(&write))?,
            dir.stage_at(&p.svg, &Content::Bytes(&svg))?,
        ];
        drop((folded, svg));
        let pprof = pprof()?;
        if let Some(bytes) = &pprof {
            files.push(dir.stage_at(&p.pprof, &Content::Bytes(bytes))?);
        }
        Ok(Drawn {
            view,
            files,
            pprof: pprof.is_some(),
        })
    }
}

/// The views that may be written, besides the main one: a view not drawn this time has
/// an older run's files removed, so that they do not pass for this run's.
const OTHER_VIEWS: [View; 3] = [View::OffWake, View::RunQueue, View::Goroutines];

/// Puts every drawn view's files (its folded stacks, its SVG and its pprof profile),
/// and the Perfetto trace if there is one, in place in `dir`, all or none, and removes
/// the files of views not drawn (and a stale trace). Returns the SVGs' paths, in the
/// views' order.
pub fn write_views(
    dir: &OutputDir,
    paths: &OutputPaths,
    drawn: Vec<Drawn<'_>>,
    timeline: Option<&[u8]>,
    aborted: &dyn Fn() -> bool,
    interrupted: impl Fn() -> anyhow::Error,
) -> Result<Vec<PathBuf>> {
    let views: Vec<(View, bool)> = drawn.iter().map(|d| (d.view, d.pprof)).collect();
    let mut files: Vec<Staged<'_>> = drawn.into_iter().flat_map(|d| d.files).collect();
    match timeline {
        Some(trace) => files.push(dir.stage_at(&paths.timeline, &Content::Bytes(trace))?),
        None => dir.remove(&paths.timeline),
    }
    dir.commit(files, aborted, interrupted)?;
    for &(view, _) in views.iter().filter(|(_, pprof)| !pprof) {
        dir.remove(&paths.of(view).pprof);
    }
    for view in OTHER_VIEWS {
        if !views.iter().any(|&(v, _)| v == view) {
            let p = paths.of(view);
            dir.remove(&p.svg);
            dir.remove(&p.folded);
            dir.remove(&p.pprof);
        }
    }
    Ok(views.into_iter().map(|(v, _)| paths.of(v).svg).collect())
}
