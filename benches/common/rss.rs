//! A child's peak memory, shared by the benchmarks (`benches/common`) and the tests
//! (`tests/suite/hostile.rs`, which include this file by path).

use std::time::Duration;

/// The peak RSS (KiB) of the running child `pid`: its own VmHWM, read every 5 ms until it
/// exits. Call it while the child runs and reap the child after. Not wait4's ru_maxrss:
/// a child started by vfork and exec (as std spawns) is charged the parent's peak there
/// (the kernel folds the high-water mark of the address space it leaves into it), so a
/// parent of 256 MB made every child look that big. VmHWM only grows, and goes with the
/// address space when the child exits; the child keeps its pid, as a zombie, until it is
/// reaped, so the pid read here is never another process's.
pub fn watch_peak_kb(pid: u32) -> u64 {
    let mut peak = 0;
    while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        else {
            break; // exited: the address space is gone
        };
        peak = peak.max(kb);
        std::thread::sleep(Duration::from_millis(5));
    }
    peak
}
