//! Which syscalls are tracked, defined once: the table the BPF program classifies with,
//! and the same decision for threads user space finds blocked through /proc.

use syscalls::Sysno;

use crate::bpf::wp_sysclass;
use crate::model::Kind;

/// Size of the per-number table in the BPF config (`WP_MAX_SYSCALL_NR`).
pub const TABLE_LEN: usize = 512;

/// futex(2) operations that wait: FUTEX_WAIT, FUTEX_LOCK_PI, FUTEX_WAIT_BITSET,
/// FUTEX_WAIT_REQUEUE_PI, FUTEX_LOCK_PI2. Wake and requeue operations do not block.
const FUTEX_WAIT_OPS: [u32; 5] = [0, 6, 9, 11, 13];
const FUTEX_CMD_MASK: u64 = 127;

/// Bit set of the futex ops that wait, as the BPF config carries it.
pub fn futex_wait_ops_mask() -> u32 {
    FUTEX_WAIT_OPS.iter().fold(0, |m, op| m | (1 << op))
}

fn class_of(sysno: Sysno) -> wp_sysclass {
    match sysno {
        Sysno::epoll_wait | Sysno::epoll_pwait | Sysno::epoll_pwait2 => wp_sysclass::WP_SYS_EPOLL,
        Sysno::futex => wp_sysclass::WP_SYS_FUTEX_OP,
        Sysno::futex_wait => wp_sysclass::WP_SYS_FUTEX_WAIT,
        Sysno::futex_waitv => wp_sysclass::WP_SYS_FUTEX_WAITV,
        Sysno::accept | Sysno::accept4 => wp_sysclass::WP_SYS_ACCEPT,
        _ => wp_sysclass::WP_SYS_OTHER,
    }
}

/// The class of every syscall number below `TABLE_LEN`, for the BPF config.
pub fn class_table() -> [u8; TABLE_LEN] {
    let mut table = [wp_sysclass::WP_SYS_OTHER.0 as u8; TABLE_LEN];
    for (nr, slot) in table.iter_mut().enumerate() {
        if let Some(sysno) = Sysno::new(nr) {
            *slot = class_of(sysno).0 as u8;
        }
    }
    table
}

/// The names of the syscalls the profiler tracks (epoll, futex and accept families),
/// whose exits it must see.
pub fn tracked_names() -> Vec<&'static str> {
    (0..TABLE_LEN)
        .filter_map(Sysno::new)
        .filter(|&s| class_of(s) != wp_sysclass::WP_SYS_OTHER)
        .map(|s| s.name())
        .collect()
}

/// The kind of a wait in syscall `nr` whose second argument is `arg2`.
pub fn kind_of(nr: u32, arg2: u64) -> Kind {
    let Some(sysno) = Sysno::new(nr as usize) else {
        return Kind::Other;
    };
    match class_of(sysno) {
        wp_sysclass::WP_SYS_EPOLL => Kind::Epoll,
        wp_sysclass::WP_SYS_FUTEX_WAIT | wp_sysclass::WP_SYS_FUTEX_WAITV => Kind::Futex,
        wp_sysclass::WP_SYS_ACCEPT => Kind::Accept,
        wp_sysclass::WP_SYS_FUTEX_OP
            if FUTEX_WAIT_OPS.contains(&((arg2 & FUTEX_CMD_MASK) as u32)) =>
        {
            Kind::Futex
        }
        _ => Kind::Other,
    }
}

/// The syscall's name, or its number when this build does not know it.
pub fn name(nr: u32) -> String {
    Sysno::new(nr as usize)
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

/// An errno's name (EFAULT), for frames that say why a stack is missing.
pub fn errno_name(errno: u32) -> String {
    syscalls::Errno::new(errno as i32)
        .name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("errno {errno}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_families_are_classified() {
        let t = class_table();
        assert_eq!(
            t[Sysno::epoll_wait as usize],
            wp_sysclass::WP_SYS_EPOLL.0 as u8
        );
        assert_eq!(
            t[Sysno::accept4 as usize],
            wp_sysclass::WP_SYS_ACCEPT.0 as u8
        );
        assert_eq!(
            t[Sysno::futex_wait as usize],
            wp_sysclass::WP_SYS_FUTEX_WAIT.0 as u8
        );
        // futex_waitv waits on several futexes: the BPF side names it by the first
        assert_eq!(
            t[Sysno::futex_waitv as usize],
            wp_sysclass::WP_SYS_FUTEX_WAITV.0 as u8
        );
        assert_eq!(kind_of(Sysno::futex_waitv as u32, 0), Kind::Futex);
        assert_eq!(t[Sysno::read as usize], wp_sysclass::WP_SYS_OTHER.0 as u8);
    }

    #[test]
    fn futex_wake_is_not_a_wait() {
        let futex = Sysno::futex as u32;
        // FUTEX_WAIT_PRIVATE = 128, FUTEX_WAKE_PRIVATE = 129, FUTEX_WAIT_BITSET|CLOCK_RT = 265
        assert_eq!(kind_of(futex, 128), Kind::Futex);
        assert_eq!(kind_of(futex, 265), Kind::Futex);
        assert_eq!(kind_of(futex, 129), Kind::Other);
        assert_eq!(
            futex_wait_ops_mask(),
            1 | 1 << 6 | 1 << 9 | 1 << 11 | 1 << 13
        );
    }
}
