//! Rendering: folded stacks into a flame graph SVG with inferno, and both files onto disk.
//! Files are written to a temporary name and renamed, so an interrupted run never leaves
//! a truncated SVG; under sudo they are handed to the invoking user.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use inferno::flamegraph::color::{Color, MultiPalette, Palette, PaletteMap};
use inferno::flamegraph::{self, Options};

use crate::fold::{Folded, View};

pub const DEFAULT_DIR: &str = "flamegraphs";

/// Where the SVG and the folded stacks go (the main view's; see `OutputPaths::of`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPaths {
    pub svg: PathBuf,
    pub folded: PathBuf,
}

impl OutputPaths {
    /// The SVG and folded paths of one view: the main view's, or beside them with the
    /// view's name before the extension (`x.offwake.svg`, `x.runq.folded`).
    pub fn of(&self, view: View) -> OutputPaths {
        let tag = match view {
            View::Main => return self.clone(),
            View::OffWake => "offwake",
            View::RunQueue => "runq",
        };
        let svg = self.svg.with_extension(format!("{tag}.svg"));
        OutputPaths {
            folded: svg.with_extension("folded"),
            svg,
        }
    }
}

/// `-o` may name a .svg file or a directory; the default is flamegraphs/<comm>-<pid>-<time>.svg.
pub fn output_paths(output: Option<&Path>, comm: &str, pid: u32, stamp: &str) -> OutputPaths {
    let default_name = format!("{}-{pid}-{stamp}.svg", comm.replace(['/', ' '], "_"));
    let svg = match output {
        None => Path::new(DEFAULT_DIR).join(default_name),
        Some(p) if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') => {
            p.join(default_name)
        }
        Some(p) if p.extension().is_some_and(|e| e == "svg") => p.to_path_buf(),
        Some(p) => p.with_extension("svg"),
    };
    OutputPaths {
        folded: svg.with_extension("folded"),
        svg,
    }
}

/// A timestamp for file names: 20261121T144344Z.
pub fn file_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "")
}

/// Makes sure the output directory exists and is writable, before the session starts.
pub fn check_writable(paths: &OutputPaths) -> Result<()> {
    let dir = parent_dir(&paths.svg);
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    let probe = dir.join(format!(".waitprof-write-test-{}", std::process::id()));
    fs::File::create(&probe).with_context(|| {
        format!(
            "cannot write to the output directory {}: choose another with -o",
            dir.display()
        )
    })?;
    let _ = fs::remove_file(probe);
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The flame graph of a non-empty profile as SVG text.
pub fn svg(folded: &Folded, title: &str, subtitle: &str) -> Result<Vec<u8>> {
    if folded.is_empty() {
        bail!("nothing to draw: the profile is empty");
    }
    let mut opts = Options::default();
    opts.title = title.to_string();
    opts.subtitle = Some(subtitle.to_string());
    opts.count_name = "us".to_string();
    opts.colors = Palette::Multi(MultiPalette::Java);
    opts.hash = true;
    opts.deterministic = true;
    // fold already sorted the lines frame by frame: a large profile skips a second sort
    opts.no_sort = true;
    let mut wakers = waker_colours(folded);
    if wakers.iter().next().is_some() {
        opts.palette_map = Some(&mut wakers);
    }
    let mut out = Vec::new();
    flamegraph::from_lines(&mut opts, folded.text().lines(), &mut out)
        .context("rendering the flame graph failed")?;
    Ok(out)
}

/// A shade of `base` that depends only on the name, as inferno's hashed palettes do.
fn shade(name: &str, base: [u8; 3], spread: [u8; 3]) -> Color {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let v = (h % 1000) as f64 / 1000.0;
    let c = |i: usize| base[i].saturating_add((f64::from(spread[i]) * v) as u8);
    Color {
        r: c(0),
        g: c(1),
        b: c(2),
    }
}

/// Waker frames (`_[w]`, after the `--` of an off-wake line) in blue, their kernel
/// frames lighter: the waker's part stands apart from the blocked part below it.
fn waker_colours(folded: &Folded) -> PaletteMap {
    let mut map = PaletteMap::default();
    let kernel: std::collections::HashSet<&str> = folded
        .waker_kernel_frames()
        .iter()
        .map(String::as_str)
        .collect();
    for (stack, _) in folded.lines() {
        for f in stack.split(';').filter(|f| f.ends_with("_[w]")) {
            if map.get(f).is_none() {
                let colour = if kernel.contains(f) {
                    shade(f, [140, 165, 230], [40, 40, 25])
                } else {
                    shade(f, [70, 90, 200], [60, 60, 50])
                };
                map.insert(f, colour);
            }
        }
    }
    map
}

/// Writes `data` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("writing {} failed", tmp.display()))?;
        f.sync_all().ok();
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move the output to {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    give_to_sudo_user(path);
    Ok(())
}

/// Under sudo, files (and a flamegraphs/ directory we created) go to the invoking user,
/// who would otherwise need root to delete them.
fn give_to_sudo_user(path: &Path) {
    let id = |var| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    if let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) {
        let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
        let dir = parent_dir(path);
        if dir.ends_with(DEFAULT_DIR) {
            let _ = std::os::unix::fs::chown(dir, Some(uid), Some(gid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_follow_the_flag() {
        let p = output_paths(None, "nginx", 12, "T");
        assert_eq!(p.svg, Path::new("flamegraphs/nginx-12-T.svg"));
        assert_eq!(p.folded, Path::new("flamegraphs/nginx-12-T.folded"));
        let p = output_paths(Some(Path::new("out/x.svg")), "nginx", 12, "T");
        assert_eq!(p.folded, Path::new("out/x.folded"));
        let p = output_paths(Some(Path::new("out/")), "a b", 12, "T");
        assert_eq!(p.svg, Path::new("out/a_b-12-T.svg"));
        let p = output_paths(Some(Path::new("profile")), "x", 1, "T");
        assert_eq!(p.svg, Path::new("profile.svg"));
    }

    #[test]
    fn empty_profile_is_not_drawn() {
        let err = svg(&Folded::default(), "t", "s").unwrap_err();
        assert!(format!("{err:#}").contains("nothing to draw"));
    }
}
