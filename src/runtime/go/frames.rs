//! Go's stacks as the runtime lays them out: where a thread's frame-pointer chain leaves
//! the scheduler's own stack (g0) for the goroutine that last ran there, and which frames
//! start a thread or a goroutine.

use std::sync::Arc;

use crate::symbolize::Frames;

/// Where a Go thread runs on its scheduler stack (g0) and the frame-pointer chain goes
/// on into the goroutine that last ran there: `runtime.mcall` (parking a goroutine),
/// `runtime.systemstack` and `runtime.morestack` (growing a goroutine's stack, which can
/// end in the scheduler) switch to g0, so what is rootward of the first of them is not
/// what the thread is doing. Such a stack is cut there, under a `[go scheduler (g0)]`
/// root, so scheduler idling is never attributed to a goroutine's code.
pub const G0_ROOT: &str = "[go scheduler (g0)]";

/// Whether a stack (root first) is a Go thread's or goroutine's.
pub fn is_go_stack(frames: &[Arc<str>]) -> bool {
    frames.iter().any(|f| {
        matches!(
            &**f,
            "runtime.goexit" | "runtime.mstart" | "runtime.rt0_go" | G0_ROOT
        )
    })
}

/// What a Go runtime thread waits in, most telling first: the scheduler looking for work,
/// the netpoller, sysmon, the template thread, a runtime lock.
const SCHEDULER_PLACES: [&str; 9] = [
    "runtime.lock2",
    "runtime.notetsleepg",
    "runtime.netpoll",
    "runtime.stopm",
    "runtime.sysmon",
    "runtime.templateThread",
    "runtime.stoplockedm",
    "runtime.findRunnable",
    "runtime.findrunnable",
];

/// The scheduler's place in a Go runtime thread's stack (root first), if any.
pub fn scheduler_place(frames: &[Arc<str>]) -> Option<&str> {
    SCHEDULER_PLACES
        .iter()
        .find(|p| frames.iter().any(|f| &**f == **p))
        .copied()
}

/// A waker's stack is cut only where the thread left a goroutine for good (`mcall`,
/// `morestack`, `gogo`): `systemstack` is a call that returns, so what is rootward of it
/// is the goroutine that woke the thread.
pub fn cut_waker_at_g0(frames: Frames) -> Frames {
    cut(
        frames,
        &["runtime.mcall", "runtime.morestack", "runtime.gogo"],
    )
}

pub fn cut_at_g0(frames: Frames) -> Frames {
    cut(
        frames,
        &[
            "runtime.mcall",
            "runtime.systemstack",
            "runtime.morestack",
            "runtime.gogo",
        ],
    )
}

fn cut(mut frames: Frames, switches: &[&str]) -> Frames {
    // a stack walked before the unwind tables loaded keeps saying so, at its root
    let pending = frames
        .first()
        .is_some_and(|f| f.starts_with("[unknown: frame pointers "))
        .then(|| frames.remove(0));
    // the outermost frames of Go's threads and goroutines: anything rootward of them is
    // the unwinder running past the end (Go's tables do not mark it)
    if let Some(i) = frames
        .iter()
        .rposition(|f| matches!(&**f, "runtime.mstart" | "runtime.goexit" | "runtime.rt0_go"))
    {
        frames.drain(..i);
    }
    let starts_on_g0 = frames
        .first()
        .is_some_and(|f| matches!(&**f, "runtime.mstart" | "runtime.rt0_go"));
    let switch = frames.iter().position(|f| switches.contains(&&**f));
    if let (Some(i), false) = (switch, starts_on_g0) {
        frames.splice(..i, std::iter::once(Arc::from(G0_ROOT)));
    }
    pending.into_iter().chain(frames).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goroutine_growing_its_stack_into_the_scheduler_is_cut_at_morestack() {
        // seen with --unwind fp: a goroutine preempted at its stack check, the scheduler
        // then idling in epoll on g0
        let frames: Frames = [
            "runtime.goexit",
            "main.main.func2",
            "runtime.morestack",
            "runtime.newstack",
            "runtime.gopreempt_m",
            "runtime.schedule",
            "runtime.findRunnable",
            "runtime.epollwait",
        ]
        .iter()
        .map(|f| Arc::from(*f))
        .collect();
        let cut = cut_at_g0(frames);
        assert_eq!(&*cut[0], G0_ROOT);
        assert_eq!(&*cut[1], "runtime.morestack");
        assert!(!cut.iter().any(|f| f.starts_with("main.")), "{cut:?}");
    }
}
