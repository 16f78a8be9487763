//! Files the target names, opened as untrusted input. Whatever the profiled process maps
//! or names (its binary, its libraries, a perf map, a debug link) is opened without
//! blocking (`O_NONBLOCK`: a FIFO or a device in its place never stalls the session),
//! checked with `fstat` to be a regular file on a filesystem that cannot hang (not FUSE),
//! and read in bounded amounts. Mapped files are opened through `/proc/PID/map_files/`,
//! which names the very file mapped: deleted, replaced, bind-mounted over, or visible only
//! in the target's mount namespace, it still gives the target's own bytes. The open file
//! is kept, so it can be read after the target has exited.

use std::borrow::Cow;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use object::{Object, ObjectSection, ReadRef};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::model::Mapping;

/// The largest section read from one file (`.eh_frame`, `.debug_frame`, `.gopclntab`,
/// decompressed or not). The largest real ones are tens of MiB.
pub const MAX_SECTION: u64 = 256 << 20;

/// What all the target's files may cost together in one session (sections read and
/// decompressed): past it a file is left unread and its frames say so.
pub const SESSION_BUDGET: u64 = 1 << 30;

static SPENT: AtomicU64 = AtomicU64::new(0);

/// Bytes of the target's files read so far this session.
pub fn spent() -> u64 {
    SPENT.load(Ordering::Relaxed)
}

/// Takes `n` bytes from the session's budget, or says why not.
fn charge(n: u64) -> Result<(), String> {
    let mut cur = SPENT.load(Ordering::Relaxed);
    loop {
        let next = cur.saturating_add(n);
        if next > SESSION_BUDGET {
            return Err(format!(
                "over the session's memory budget ({} MiB of the target's files read)",
                SESSION_BUDGET >> 20
            ));
        }
        match SPENT.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(now) => cur = now,
        }
    }
}

/// FUSE: a read can wait for as long as the filesystem's owner likes.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// A regular file the target named, open for reading.
#[derive(Debug)]
pub struct TargetFile {
    file: File,
    /// Its size when it was opened.
    pub size: u64,
    /// A sealed copy for libraries that map files (see `mappable_path`), made once.
    copy: std::sync::OnceLock<Result<Option<OwnedFd>, String>>,
}

/// An errno as words: "permission denied", without the "(os error 13)".
fn errno_text(e: rustix::io::Errno) -> String {
    let text = std::io::Error::from(e).to_string().to_lowercase();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl TargetFile {
    fn checked(fd: OwnedFd) -> Result<TargetFile, String> {
        let st = rustix::fs::fstat(&fd).map_err(errno_text)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err("not a regular file".to_string());
        }
        let fs = rustix::fs::fstatfs(&fd).map_err(errno_text)?;
        if fs.f_type as i64 == FUSE_SUPER_MAGIC {
            return Err("on a FUSE filesystem, whose reads can hang".to_string());
        }
        Ok(TargetFile {
            file: File::from(fd),
            size: st.st_size as u64,
            copy: std::sync::OnceLock::new(),
        })
    }

    fn flags() -> OFlags {
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
    }

    /// The file mapped at `m` in `pid`, through map_files (the process must be alive).
    pub fn open_mapped(pid: u32, m: &Mapping) -> Result<TargetFile, String> {
        let via = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let fd =
            rustix::fs::open(via.as_str(), Self::flags(), Mode::empty()).map_err(|e| match e {
                rustix::io::Errno::NOENT => "unmapped before it was read".to_string(),
                rustix::io::Errno::SRCH => "the target exited before it was read".to_string(),
                e => errno_text(e),
            })?;
        Self::checked(fd)
    }

    /// `path` as the target sees it: resolved inside its root directory (its mount
    /// namespace and chroot), symlinks included, never escaping it.
    pub fn open_in_root(pid: u32, path: &str) -> Result<TargetFile, String> {
        Self::open_in_root_with(pid, path, OFlags::empty())
    }

    /// The same, refusing a symlink as the last component (a name in a directory others
    /// can write to, such as /tmp/perf-PID.map).
    pub fn open_in_root_no_follow(pid: u32, path: &str) -> Result<TargetFile, String> {
        Self::open_in_root_with(pid, path, OFlags::NOFOLLOW)
    }

    fn open_in_root_with(pid: u32, path: &str, extra: OFlags) -> Result<TargetFile, String> {
        let root = rustix::fs::open(
            format!("/proc/{pid}/root").as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_text)?;
        let fd = rustix::fs::openat2(
            &root,
            path,
            Self::flags() | extra,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(errno_text)?;
        Self::checked(fd)
    }

    /// A file in waitprof's own filesystem whose last component must not be a symlink
    /// (a name in a directory others can write to, such as /tmp/perf-PID.map).
    pub fn open_no_follow(path: &Path) -> Result<TargetFile, String> {
        let fd = rustix::fs::open(path, Self::flags() | OFlags::NOFOLLOW, Mode::empty())
            .map_err(errno_text)?;
        Self::checked(fd)
    }

    /// The owner of the file.
    pub fn owner(&self) -> Option<u32> {
        rustix::fs::fstat(&self.file).ok().map(|st| st.st_uid)
    }

    /// A path that opens this very file again, for libraries that take paths
    /// (blazesym): `/proc/self/fd/N`, valid as long as this value lives.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// A path for libraries that map the file (blazesym): the file's own when only root
    /// can change it, else a sealed in-memory copy. A mapped file its owner truncates
    /// meanwhile would end waitprof with SIGBUS; a sealed memfd cannot shrink. (Reads
    /// through `reader` are plain reads: a truncation only makes them fail.)
    pub fn mappable_path(&self) -> Result<PathBuf, &str> {
        match self.copy.get_or_init(|| self.sealed_copy()) {
            Ok(Some(copy)) => Ok(PathBuf::from(format!("/proc/self/fd/{}", copy.as_raw_fd()))),
            Ok(None) => Ok(self.fd_path()),
            Err(why) => Err(why),
        }
    }

    fn sealed_copy(&self) -> Result<Option<OwnedFd>, String> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let st = rustix::fs::fstat(&self.file).map_err(errno_text)?;
        if st.st_uid == 0 && st.st_mode & 0o022 == 0 {
            return Ok(None);
        }
        if self.size > MAX_SECTION {
            return Err(format!(
                "changeable by its owner and over {} MiB to copy",
                MAX_SECTION >> 20
            ));
        }
        charge(self.size)?;
        let memfd = rustix::fs::memfd_create(
            "waitprof-copy",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(errno_text)?;
        let mut out = File::from(memfd);
        std::io::copy(&mut std::io::Read::take(&self.file, self.size), &mut out)
            .map_err(|e| e.to_string())?;
        let memfd = OwnedFd::from(out);
        rustix::fs::fcntl_add_seals(
            &memfd,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )
        .map_err(errno_text)?;
        Ok(Some(memfd))
    }

    /// An object-file reader that reads only what is asked for, within the file's size.
    pub fn reader(&self) -> object::ReadCache<&File> {
        object::ReadCache::new(&self.file)
    }

    /// The whole file, if it is at most `max` bytes (charged to the session's budget).
    pub fn read_to_end(&self, max: u64) -> Result<Vec<u8>, String> {
        use std::io::Read;
        if self.size > max {
            return Err(format!("larger than {} MiB", max >> 20));
        }
        charge(self.size)?;
        let mut data = Vec::with_capacity(self.size as usize);
        (&self.file)
            .take(max)
            .read_to_end(&mut data)
            .map_err(|e| e.to_string())?;
        Ok(data)
    }
}

/// A section's address and bytes.
pub type Section<'d> = (u64, Cow<'d, [u8]>);

/// A section's bytes, decompressed if need be: None when the file has no such section,
/// an error when it claims more than `MAX_SECTION` or the session's budget allows.
pub fn section<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    name: &str,
) -> Result<Option<Section<'d>>, String> {
    let Some(s) = file.section_by_name(name) else {
        return Ok(None);
    };
    let too_large = |size: u64| {
        format!(
            "{name} claims {} MiB, over the {} MiB read from one section",
            size >> 20,
            MAX_SECTION >> 20
        )
    };
    // the size in the section header, before anything is read (a sparse file can hold
    // a section of gigabytes that costs nothing on disk)
    if s.size() > MAX_SECTION {
        return Err(too_large(s.size()));
    }
    let compressed = s.compressed_data().map_err(|e| format!("{name}: {e}"))?;
    let size = compressed
        .uncompressed_size
        .max(compressed.data.len() as u64);
    if size > MAX_SECTION {
        return Err(too_large(size));
    }
    charge(size)?;
    let data = compressed
        .decompress()
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(Some((s.address(), data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = TargetFile::open_no_follow(&fifo).unwrap_err();
        assert_eq!(err, "not a regular file");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(TargetFile::open_no_follow(&link).is_err());
    }

    #[test]
    fn paths_resolve_inside_the_targets_root() {
        let pid = std::process::id();
        let f = TargetFile::open_in_root(pid, "/proc/self/exe");
        // /proc/self inside the root is a magic link: refused
        assert!(f.is_err(), "{f:?}");
        let f = TargetFile::open_in_root(pid, "/etc/../etc/hostname")
            .or_else(|_| TargetFile::open_in_root(pid, "/bin/sh"));
        assert!(f.is_ok(), "{f:?}");
    }
}
