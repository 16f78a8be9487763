//! Which goroutine waits cost nothing: the runtime's own goroutines parked for work (GC
//! workers, the sweeper, the scavenger, finalizers), a server's accept loop with no
//! client, idle keep-alive connections, `select {}`. Their time is shown and counted
//! apart, never as latency.

use crate::model::GState;

/// Wait reasons that mean "nothing to do" whoever waits.
const IDLE_REASONS: [&str; 10] = [
    "GC worker (idle)",
    "timer goroutine (idle)",
    "force gc (idle)",
    "GC sweep wait",
    "GC scavenge wait",
    "finalizer wait",
    "trace reader (blocked)",
    "select (no cases)",
    "chan receive (nil chan)",
    "chan send (nil chan)",
];

/// Frames of goroutines that wait for work: accept loops, idle keep-alive connections,
/// the runtime's and the signal package's own goroutines (matched as substrings).
const IDLE_FRAMES: [&str; 9] = [
    "net.(*netFD).accept",
    "net/http.(*connReader).backgroundRead",
    "os/signal.loop",
    "runtime.gcBgMarkWorker",
    "runtime.bgsweep",
    "runtime.bgscavenge",
    "runtime.forcegchelper",
    "runtime.runfinq",
    "runtime.unique_runtime_registerUniqueMapCleanup",
];

/// Whether a goroutine in `state` with `frames` (root first) waits idly.
pub fn is_idle<S: AsRef<str>>(state: &GState, frames: &[S]) -> bool {
    let GState::Waiting(reason) = state else {
        return false;
    };
    if IDLE_REASONS.contains(&reason.as_str()) {
        return true;
    }
    if frames
        .iter()
        .any(|f| IDLE_FRAMES.iter().any(|p| f.as_ref().contains(p)))
    {
        return true;
    }
    // an HTTP server waiting for a keep-alive connection's next request: serve peeks
    // at the connection before it reads one
    frames.windows(2).any(|w| {
        w[0].as_ref().starts_with("net/http.(*conn).serve")
            && w[1].as_ref().starts_with("bufio.(*Reader).Peek")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<std::sync::Arc<str>> {
        names.iter().map(|n| std::sync::Arc::from(*n)).collect()
    }

    #[test]
    fn accept_loops_and_keep_alive_connections_are_idle_and_a_pool_wait_is_not() {
        let io = GState::Waiting("IO wait".to_string());
        let accept = frames(&[
            "runtime.goexit",
            "main.main",
            "net/http.(*Server).Serve",
            "net.(*TCPListener).Accept",
            "net.(*netFD).accept",
            "runtime.gopark",
        ]);
        assert!(is_idle(&io, &accept));
        let keepalive = frames(&[
            "runtime.goexit",
            "net/http.(*conn).serve",
            "bufio.(*Reader).Peek",
            "bufio.(*Reader).fill",
            "net.(*conn).Read",
            "runtime.gopark",
        ]);
        assert!(is_idle(&io, &keepalive));
        let request = frames(&[
            "runtime.goexit",
            "net/http.(*conn).serve",
            "net/http.(*conn).readRequest",
            "net.(*conn).Read",
            "runtime.gopark",
        ]);
        assert!(!is_idle(&io, &request));
        let pool = frames(&[
            "runtime.goexit",
            "main.handle",
            "main.(*Pool).Get",
            "runtime.chanrecv1",
            "runtime.gopark",
        ]);
        assert!(!is_idle(
            &GState::Waiting("chan receive".to_string()),
            &pool
        ));
        assert!(!is_idle(&GState::Runnable, &accept));
        assert!(is_idle(
            &GState::Waiting("GC worker (idle)".to_string()),
            &[] as &[&str]
        ));
    }
}
