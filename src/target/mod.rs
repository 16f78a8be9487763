//! The profiled process as waitprof sees it from outside: the files it maps, read as
//! untrusted input (`files`), and its maps over the session with those files kept
//! open (`maps`). Everything read from the target is bounded and checked
//! before use.

pub mod files;
pub mod maps;

use std::os::unix::fs::MetadataExt;

/// The inode of the initial pid namespace (PROC_PID_INIT_INO): pids the kernel, and so
/// the BPF programs, see are numbered in it.
const INITIAL_PID_NS: u64 = 0xEFFF_FFFC;

fn ns_inode(pid: &str, ns: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|m| m.ino())
}

/// Whether waitprof itself runs in the initial pid namespace. Inside another, the pid
/// a user gives names a different process than the one the kernel calls by that number.
pub fn in_initial_pid_namespace() -> bool {
    ns_inode("self", "pid").is_none_or(|ino| ino == INITIAL_PID_NS)
}

/// The namespaces (`mount`, `pid`) in which `pid` differs from waitprof: a container.
pub fn other_namespaces(pid: u32) -> Vec<&'static str> {
    [("mnt", "mount"), ("pid", "pid")]
        .into_iter()
        .filter(|(ns, _)| {
            let theirs = ns_inode(&pid.to_string(), ns);
            theirs.is_some() && theirs != ns_inode("self", ns)
        })
        .map(|(_, name)| name)
        .collect()
}
