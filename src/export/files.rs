//! Output: where the profile's files go and how they get there. waitprof runs as root,
//! often in a directory other users can write to, so nothing it writes can be redirected:
//! the output directory is opened once (the default `flamegraphs/` refused when it is a
//! symlink or belongs to someone else), and every file is created inside that directory
//! fd with `O_CREAT|O_EXCL|O_NOFOLLOW` under an unpredictable temporary name, written,
//! handed to the sudo user through its fd (`fchown`) and renamed into place. The set of
//! files is written all or none.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, CWD};

use crate::fold::View;

pub const DEFAULT_DIR: &str = "flamegraphs";

/// Where the SVG, the folded stacks and the pprof profile go (the main view's; see
/// `OutputPaths::of`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPaths {
    pub svg: PathBuf,
    pub folded: PathBuf,
    pub pprof: PathBuf,
    /// The Perfetto trace (`--timeline`; one per session, beside the main view's files).
    pub timeline: PathBuf,
}

impl OutputPaths {
    /// The folded file and the pprof profile beside `svg`.
    fn beside(svg: PathBuf) -> OutputPaths {
        OutputPaths {
            folded: svg.with_extension("folded"),
            pprof: svg.with_extension("pb.gz"),
            timeline: svg.with_extension("pftrace"),
            svg,
        }
    }
}

impl OutputPaths {
    /// The SVG and folded paths of one view: the main view's, or beside them with the
    /// view's name before the extension (`x.offwake.svg`, `x.runq.folded`).
    pub fn of(&self, view: View) -> OutputPaths {
        let tag = match view {
            View::Main => return self.clone(),
            View::OffWake => "offwake",
            View::RunQueue => "runq",
            View::Goroutines => "goroutines",
        };
        OutputPaths::beside(self.svg.with_extension(format!("{tag}.svg")))
    }

    /// The directory every view's files go into.
    pub fn dir(&self) -> &Path {
        match self.svg.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }
}

/// A name from the target (or a file name) as part of a file name: only letters, digits,
/// `.`, `_` and `-` of it are kept, and a name of dots alone gets a `_` in front.
pub fn safe_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // a name of dots alone would read as a directory or a hidden file
    if safe.trim_start_matches('.').is_empty() {
        format!("_{safe}")
    } else {
        safe
    }
}

/// `-o` may name a .svg file or a directory; the default is flamegraphs/<comm>-<pid>-<time>.svg.
/// `comm` comes from the target: only letters, digits, `.`, `_` and `-` of it reach the name.
pub fn output_paths(output: Option<&Path>, comm: &str, pid: u32, stamp: &str) -> OutputPaths {
    output_paths_named(output, &format!("{}-{pid}-{stamp}.svg", safe_name(comm)))
}

/// Where `-o` says (a .svg file, or a directory to put `default_name` in), else
/// `flamegraphs/default_name`; the folded file and the pprof profile beside the SVG.
pub fn output_paths_named(output: Option<&Path>, default_name: &str) -> OutputPaths {
    let svg = match output {
        None => Path::new(DEFAULT_DIR).join(default_name),
        Some(p) if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') => {
            p.join(default_name)
        }
        Some(p) if p.extension().is_some_and(|e| e == "svg") => p.to_path_buf(),
        Some(p) => p.with_extension("svg"),
    };
    OutputPaths::beside(svg)
}

/// A timestamp for file names: 20261121T144344Z.
pub fn file_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "")
}

/// The user who ran waitprof: under sudo, the one who invoked it.
fn sudo_user() -> Option<(u32, u32)> {
    let id = |var| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    Some((id("SUDO_UID")?, id("SUDO_GID")?))
}

fn chown_fd(fd: &OwnedFd, owner: (u32, u32)) -> std::io::Result<()> {
    let (uid, gid) = (
        rustix::process::Uid::from_raw(owner.0),
        rustix::process::Gid::from_raw(owner.1),
    );
    rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(Into::into)
}

/// What goes into one output file: its bytes, or a function that streams them (a large
/// profile's folded text, never held whole).
pub enum Content<'a> {
    Bytes(&'a [u8]),
    Stream(&'a (dyn Fn(&mut dyn Write) -> std::io::Result<()> + Sync)),
}

/// A file written under a temporary name, not yet renamed into place (`commit`);
/// dropped before that, the temporary file goes.
pub struct Staged<'d> {
    dir: &'d OwnedFd,
    tmp: PathBuf,
    name: OsString,
    shown: PathBuf,
    done: bool,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(self.dir, &self.tmp, AtFlags::empty());
        }
    }
}

/// The output directory, opened once before the session: every file of the profile is
/// created relative to this fd, so a symlink swapped in later redirects nothing.
pub struct OutputDir {
    fd: OwnedFd,
    path: PathBuf,
    /// Under sudo: who gets the files.
    owner: Option<(u32, u32)>,
}

impl OutputDir {
    /// Opens (creating it if needed) the directory `paths` are in, and checks that files
    /// can be created there.
    pub fn open(paths: &OutputPaths, default: bool) -> Result<OutputDir> {
        let path = paths.dir().to_path_buf();
        let owner = sudo_user();
        let dir = if default {
            Self::open_default(&path, owner)?
        } else {
            Self::open_named_dir(path, owner)?
        };
        dir.check_writable()?;
        Ok(dir)
    }

    /// The directory of a file the user named (`--json PATH`), created if missing.
    pub fn open_named(file: &Path) -> Result<OutputDir> {
        let path = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = Self::open_named_dir(path, sudo_user())?;
        dir.check_writable()?;
        Ok(dir)
    }

    /// A directory the user named: its path is theirs to choose, symlinks and all.
    fn open_named_dir(path: PathBuf, owner: Option<(u32, u32)>) -> Result<OutputDir> {
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the output directory {}", path.display()))?;
        let fd = rustix::fs::open(&path, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot open the output directory {}", path.display()))?;
        Ok(OutputDir { fd, path, owner })
    }

    /// `flamegraphs/` in the current directory: created if missing (and handed to the
    /// sudo user), refused if it is a symlink or belongs to anyone but the invoking user
    /// or root: in a directory others can write to, it may be theirs.
    fn open_default(path: &Path, owner: Option<(u32, u32)>) -> Result<OutputDir> {
        let created = match rustix::fs::mkdirat(CWD, path, Mode::from_raw_mode(0o755)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => {
                return Err(std::io::Error::from(e)).with_context(|| {
                    format!(
                        "cannot create the output directory {}: choose another with -o",
                        path.display()
                    )
                })
            }
        };
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => anyhow::anyhow!(
                "the output directory {} is a symlink or not a directory: remove it, or choose another with -o",
                path.display()
            ),
            e => anyhow::Error::from(std::io::Error::from(e))
                .context(format!("cannot open the output directory {}", path.display())),
        })?;
        let st = rustix::fs::fstat(&fd).context("reading the output directory's owner failed")?;
        let invoker = owner.map_or_else(|| rustix::process::geteuid().as_raw(), |(uid, _)| uid);
        if created {
            if let Some(o) = owner {
                chown_fd(&fd, o).with_context(|| {
                    format!(
                        "cannot hand the output directory {} to the sudo user",
                        path.display()
                    )
                })?;
            }
        } else if st.st_uid != invoker && st.st_uid != 0 {
            bail!(
                "the output directory {} belongs to uid {}, not to you (uid {invoker}): someone else may control it; remove it, or choose another with -o",
                path.display(),
                st.st_uid
            );
        }
        Ok(OutputDir {
            fd,
            path: path.to_path_buf(),
            owner,
        })
    }

    /// Creates a file that has no name (O_TMPFILE), or else one under a random name that
    /// is removed at once: either way nothing another user planted is touched.
    fn check_writable(&self) -> Result<()> {
        let fail = |e: rustix::io::Errno| {
            anyhow::Error::from(std::io::Error::from(e)).context(format!(
                "cannot write to the output directory {}: choose another with -o",
                self.path.display()
            ))
        };
        match rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(_) => Ok(()),
            // a filesystem without O_TMPFILE
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL,
            ) => {
                let (name, _fd) = self.create_temporary(".waitprof-check").map_err(fail)?;
                let _ = rustix::fs::unlinkat(&self.fd, &name, AtFlags::empty());
                Ok(())
            }
            Err(e) => Err(fail(e)),
        }
    }

    /// A new file under `.PREFIX.RANDOM.tmp`, created exclusively and never through a
    /// symlink.
    fn create_temporary(&self, prefix: &str) -> rustix::io::Result<(PathBuf, OwnedFd)> {
        loop {
            let mut random = [0u8; 8];
            rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
            let name = PathBuf::from(format!(".{prefix}.{:016x}.tmp", u64::from_ne_bytes(random)));
            match rustix::fs::openat(
                &self.fd,
                &name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => return Ok((name, fd)),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes one file's content to a temporary file of its own, to be renamed over
    /// `name` (which replaces whatever is there, a symlink included, without following
    /// it); dropped unrenamed, the temporary file goes.
    fn stage(&self, name: &OsStr, data: &Content<'_>) -> Result<Staged<'_>> {
        let shown = self.path.join(name);
        let prefix = String::from_utf8_lossy(name.as_bytes()).into_owned();
        let (tmp, fd) = self
            .create_temporary(&prefix)
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot write {}", shown.display()))?;
        let staged = Staged {
            dir: &self.fd,
            tmp,
            name: name.to_owned(),
            shown,
            done: false,
        };
        let mut file = std::fs::File::from(fd);
        match data {
            Content::Bytes(b) => file.write_all(b),
            Content::Stream(write) => {
                let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
                write(&mut out).and_then(|()| out.flush())
            }
        }
        .with_context(|| format!("writing {} failed", staged.shown.display()))?;
        // not synced: a profile of hundreds of megabytes would wait on the disk
        // (a second or more); the rename makes the file appear whole or not at all
        if let Some(o) = self.owner {
            let fd = OwnedFd::from(file);
            chown_fd(&fd, o).with_context(|| {
                format!("cannot hand {} to the sudo user", staged.shown.display())
            })?;
        }
        Ok(staged)
    }

    /// Writes every (path, content) all or none: an interruption (`aborted`) or a failed
    /// write removes the files already written. Each path must be in this directory.
    /// Every file is written to a temporary file of its own, all at once (a large
    /// profile's folded files are hundreds of megabytes each), and they are renamed into
    /// place only once all of them are whole.
    pub fn write_all(
        &self,
        files: &[(&Path, Content<'_>)],
        aborted: &dyn Fn() -> bool,
        interrupted: impl Fn() -> anyhow::Error,
    ) -> Result<()> {
        let names = files
            .iter()
            .map(|(path, _)| self.name_of(path))
            .collect::<Result<Vec<_>>>()?;
        if aborted() {
            return Err(interrupted());
        }
        let staged: Vec<Result<Staged<'_>>> = std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .zip(files)
                .map(|(name, (_, data))| s.spawn(move || self.stage(name, data)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("writing a file failed")))
                })
                .collect()
        });
        // a failure or an interruption drops every staged file: its temporary goes
        let staged = staged.into_iter().collect::<Result<Vec<_>>>()?;
        self.commit(staged, aborted, interrupted)
    }

    /// Writes one file (`path`, in this directory) under a temporary name, to be put
    /// in place by `commit` with the rest of its set.
    pub fn stage_at(&self, path: &Path, data: &Content<'_>) -> Result<Staged<'_>> {
        self.stage(self.name_of(path)?, data)
    }

    /// Renames every staged file into place, all or none: an interruption (`aborted`)
    /// before the renames, or a failed rename, leaves none of them.
    pub fn commit(
        &self,
        staged: Vec<Staged<'_>>,
        aborted: &dyn Fn() -> bool,
        interrupted: impl Fn() -> anyhow::Error,
    ) -> Result<()> {
        if aborted() {
            return Err(interrupted());
        }
        let mut renamed: Vec<OsString> = Vec::new();
        for mut file in staged {
            let result = rustix::fs::renameat(&self.fd, &file.tmp, &self.fd, &file.name)
                .map_err(std::io::Error::from)
                .with_context(|| format!("cannot move the output to {}", file.shown.display()));
            match result {
                Ok(()) => {
                    file.done = true;
                    renamed.push(std::mem::take(&mut file.name));
                }
                Err(e) => {
                    for name in renamed {
                        let _ = rustix::fs::unlinkat(&self.fd, &name, AtFlags::empty());
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Removes a file of this directory (an older run's view), if it is there.
    pub fn remove(&self, path: &Path) {
        if let Ok(name) = self.name_of(path) {
            let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
        }
    }

    fn name_of<'p>(&self, path: &'p Path) -> Result<&'p OsStr> {
        match (path.parent(), path.file_name()) {
            (Some(p), Some(n))
                if p == self.path || (p.as_os_str().is_empty() && self.path == Path::new(".")) =>
            {
                Ok(n)
            }
            _ => bail!(
                "internal error: {} is not in the output directory {}",
                path.display(),
                self.path.display()
            ),
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
    fn a_hostile_thread_name_makes_a_plain_file_name() {
        let p = output_paths(None, "a\nb/../\x1b[2J", 7, "T");
        assert_eq!(p.svg, Path::new("flamegraphs/a_b_..___2J-7-T.svg"));
        let p = output_paths(None, "..", 7, "T");
        assert_eq!(p.svg, Path::new("flamegraphs/_..-7-T.svg"));
    }

    #[test]
    fn files_replace_a_planted_symlink_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&victim, out.join("p.svg")).unwrap();
        let paths = output_paths(Some(&out.join("p.svg")), "x", 1, "T");
        let od = OutputDir::open(&paths, false).unwrap();
        od.write_all(
            &[
                (&paths.svg, Content::Bytes(b"<svg/>")),
                (&paths.folded, Content::Bytes(b"a 1\n")),
            ],
            &|| false,
            || anyhow::anyhow!("interrupted"),
        )
        .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&paths.svg).unwrap(), b"<svg/>");
        assert!(!std::fs::symlink_metadata(&paths.svg).unwrap().is_symlink());
        // no temporary file is left behind
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn an_interrupted_set_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = output_paths(Some(&dir.path().join("p.svg")), "x", 1, "T");
        let od = OutputDir::open(&paths, false).unwrap();
        let calls = std::cell::Cell::new(0);
        let err = od
            .write_all(
                &[
                    (&paths.svg, Content::Bytes(b"<svg/>")),
                    (&paths.folded, Content::Bytes(b"a 1\n")),
                ],
                &|| {
                    calls.set(calls.get() + 1);
                    calls.get() > 1
                },
                || anyhow::anyhow!("interrupted"),
            )
            .unwrap_err();
        assert!(format!("{err}").contains("interrupted"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
