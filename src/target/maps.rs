//! The target's memory maps over the session: every mapping seen (so code unmapped before
//! the end, a library `dlclose`d or the program before an `exec`, is still named), and for
//! each file mapped executable, the file itself, opened through map_files the first time
//! it is seen and kept open, so the target's own bytes can be read after it is gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::Mapping;
use crate::target::files::TargetFile;

/// Files kept open per process: past this, a file is named as unread.
const MAX_FILES: usize = 2048;
/// Mappings remembered per process, beyond the ones it has now (an address is looked up
/// among them one by one: the bound keeps that cheap).
const MAX_SEEN: usize = 10_000;

/// Why a mapped file could not be read, or the file.
pub type Opened = Result<Arc<TargetFile>, String>;

pub struct MappedFiles {
    pid: u32,
    /// The maps at the last read, sorted by address.
    latest: Vec<Mapping>,
    /// Mappings seen at earlier reads and gone since, oldest first, and the same as a set.
    gone: Vec<Mapping>,
    gone_set: HashSet<Mapping>,
    /// dev:inode -> the file.
    files: HashMap<String, Opened>,
    /// (path, why) of each file that could not be read.
    pub unreadable: Vec<(String, String)>,
}

impl MappedFiles {
    pub fn new(pid: u32) -> MappedFiles {
        raise_fd_limit();
        MappedFiles {
            pid,
            latest: Vec::new(),
            gone: Vec::new(),
            gone_set: HashSet::new(),
            files: HashMap::new(),
            unreadable: Vec::new(),
        }
    }

    /// Rereads the process's maps and opens every file newly mapped executable. False
    /// when the maps could not be read (the process is gone): what was seen is kept.
    pub fn refresh(&mut self) -> bool {
        let Ok(mut maps) = Mapping::read_all(self.pid) else {
            return false;
        };
        if maps.is_empty() {
            return false;
        }
        maps.sort_by_key(|m| m.start);
        for m in maps.iter().filter(|m| m.executable && m.is_file()) {
            if self.files.contains_key(&m.file) {
                continue;
            }
            let opened = if self.files.len() >= MAX_FILES {
                Err(format!("over {MAX_FILES} files mapped"))
            } else {
                TargetFile::open_mapped(self.pid, m).map(Arc::new)
            };
            if let Err(why) = &opened {
                self.unreadable.push((m.path.clone(), why.clone()));
            }
            self.files.insert(m.file.clone(), opened);
        }
        let old = std::mem::replace(&mut self.latest, maps);
        for m in old {
            if self
                .latest
                .binary_search_by_key(&m.start, |x| x.start)
                .map_or(true, |i| self.latest[i] != m)
                && self.gone.len() < MAX_SEEN
                && self.gone_set.insert(m.clone())
            {
                self.gone.push(m);
            }
        }
        true
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The maps at the last read.
    pub fn latest(&self) -> &[Mapping] {
        &self.latest
    }

    /// The mapping that holds `addr`: the current one, or else the latest gone.
    pub fn mapping_of(&self, addr: u64) -> Option<&Mapping> {
        let i = self.latest.partition_point(|m| m.start <= addr);
        i.checked_sub(1)
            .map(|i| &self.latest[i])
            .filter(|m| addr < m.end)
            .or_else(|| {
                self.gone
                    .iter()
                    .rev()
                    .find(|m| (m.start..m.end).contains(&addr))
            })
    }

    /// The file behind a file mapping, if it was read.
    pub fn file(&self, m: &Mapping) -> Result<&Arc<TargetFile>, &'static str> {
        match self.files.get(&m.file) {
            Some(Ok(f)) => Ok(f),
            Some(Err(_)) => Err("file unreadable"),
            None => Err("file not read (mapped only briefly)"),
        }
    }

    /// The first mapping of `m`'s file at file offset 0 (where its load bias is found).
    pub fn first_of(&self, m: &Mapping) -> Option<&Mapping> {
        self.latest
            .iter()
            .chain(self.gone.iter().rev())
            .find(|x| x.file == m.file && x.offset == 0)
    }
}

/// One open file per mapped file: the soft limit on open files goes to the hard one.
fn raise_fd_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if lim.current < lim.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
}
