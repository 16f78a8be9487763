//! Ctrl-C, SIGTERM and SIGHUP. The first one during collection ends the session normally
//! (the profile is still written); one that arrives before collection starts, or while
//! the profile is being written, aborts without leaving a partial file behind.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustix::event::{eventfd, EventfdFlags};

#[derive(Clone, Default)]
pub struct Stop {
    count: Arc<AtomicUsize>,
    /// Readable once a signal has arrived: the collection loop sleeps on it.
    ready: Option<Arc<OwnedFd>>,
}

impl Stop {
    pub fn install() -> Result<Stop> {
        let ready = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map(Arc::new)
            .ok();
        let stop = Stop {
            count: Arc::default(),
            ready: ready.clone(),
        };
        let count = stop.count.clone();
        ctrlc::set_handler(move || {
            count.fetch_add(1, Ordering::SeqCst);
            if let Some(fd) = &ready {
                // the handler runs on ctrlc's own thread, not in signal context
                let _ = rustix::io::write(fd.as_fd(), &1u64.to_ne_bytes());
            }
        })
        .context("installing the Ctrl-C handler failed")?;
        Ok(stop)
    }

    /// An fd that becomes readable when a signal arrives (None: poll `requested`).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.ready.as_deref().map(|fd| fd.as_fd())
    }

    /// How many termination signals have arrived.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn requested(&self) -> bool {
        self.count() > 0
    }
}

/// The error a phase returns when a signal cut it short; `main` maps it to exit 130.
#[derive(Debug)]
pub struct Interrupted(pub &'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted {}", self.0)
    }
}

impl std::error::Error for Interrupted {}
