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

/// The local address of the TCP socket behind `pid`'s descriptor `fd` (a listener an
/// acceptor waits on), from the target's own view of its network namespace
/// (/proc/PID/net/tcp and tcp6).
pub fn socket_address(pid: u32, fd: u64) -> Option<std::net::SocketAddr> {
    use std::io::Read;
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_string();
    for table in ["tcp", "tcp6"] {
        let mut text = String::new();
        let Ok(f) = std::fs::File::open(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // bounded: a host with a million sockets is read in part, not all
        if f.take(64 << 20).read_to_string(&mut text).is_err() {
            continue;
        }
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(9) != Some(&inode.as_str()) {
                continue;
            }
            return tcp_address(fields.get(1)?);
        }
    }
    None
}

/// A `local_address` of /proc/net/tcp or tcp6: `0100007F:1F90` is 127.0.0.1:8080.
fn tcp_address(field: &str) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // the kernel prints each 32-bit word of the address as a host-order number
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let addr = match words.as_slice() {
        [a] => IpAddr::V4(Ipv4Addr::from(a.to_le_bytes())),
        [_, _, _, _] => {
            let mut bytes = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(addr, port))
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

/// The CPUs a task may run on (its affinity mask); None if it cannot be read.
fn affinity(pid: libc::pid_t) -> Option<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(pid, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return None;
    }
    Some(
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: cpu < CPU_SETSIZE, within the set
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect(),
    )
}

/// `0-2,5`.
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// When the target is confined to some of the CPUs waitprof may use (`taskset`, a
/// cpuset), moves every thread of waitprof to the others, so that its own work (loading,
/// unwind tables, the goroutine sweeps, the end of the session) takes no CPU time from
/// the target. Says what it did; None when the target may run anywhere waitprof may.
pub fn keep_off_cpus_of(pid: u32) -> Option<String> {
    let target = affinity(pid as libc::pid_t)?;
    let own = affinity(0)?;
    let free: Vec<usize> = own
        .iter()
        .copied()
        .filter(|c| !target.contains(c))
        .collect();
    if free.is_empty() {
        return None;
    }
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in &free {
        // SAFETY: cpu came from a set of CPU_SETSIZE
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // SAFETY: set is a valid cpu_set_t of the size passed; tid is one of our threads.
        let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
        if rc != 0 {
            return None;
        }
    }
    Some(format!(
        "the target may run on CPU {} only: waitprof ran on CPU {}, not to take time from it",
        cpu_list(&target),
        cpu_list(&free)
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists_are_ranges() {
        assert_eq!(super::cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(super::cpu_list(&[3]), "3");
        assert_eq!(super::cpu_list(&[]), "");
    }

    #[test]
    fn tcp_addresses_read_as_the_kernel_prints_them() {
        let a = |s| super::tcp_address(s).map(|a| a.to_string());
        assert_eq!(a("0100007F:1F90").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(
            a("00000000000000000000000001000000:0050").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(a("0100007F"), None);
        assert_eq!(a("zz:1"), None);
    }
}
