//! Ctrl-C, SIGTERM and SIGHUP. The first one during collection ends the session normally
//! (the profile is still written); one that arrives before collection starts, or while
//! the profile is being written, aborts without leaving a partial file behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

#[derive(Clone, Default)]
pub struct Stop {
    count: Arc<AtomicUsize>,
}

impl Stop {
    pub fn install() -> Result<Stop> {
        let stop = Stop::default();
        let count = stop.count.clone();
        ctrlc::set_handler(move || {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .context("installing the Ctrl-C handler failed")?;
        Ok(stop)
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
