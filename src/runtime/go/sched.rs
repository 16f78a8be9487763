//! The Go runtime's own scheduler statistics, read from `runtime.sched` at the start and
//! the end of the session: `timeToRun`, its histogram of how long goroutines waited
//! runnable before they ran, and (Go 1.20 and later) `totalMutexWaitTime`, its estimate
//! of the time goroutines waited in `sync.Mutex` and `sync.RWMutex`. Both are the
//! runtime's sample, not waitprof's: it tracks one in eight of each goroutine's state
//! transitions (`gTrackingPeriod`) and scales the mutex time by eight. The difference of
//! the two readings is the session's; a bucket that went down means the layout is not
//! what it was taken to be, and nothing is shown.

use crate::model::RuntimeSched;

/// The histogram's shape, by Go version (`src/runtime/histogram.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hist {
    /// Go 1.17-1.19: 45 super-buckets of 16, by the duration's highest bit; then the
    /// underflow count. The last bucket also takes everything above it.
    Go117,
    /// Go 1.20 on: 40 buckets of 4 from 2^9 ns to 2^48 ns (the first from 0); then the
    /// underflow and overflow counts.
    Go120,
}

impl Hist {
    pub fn for_minor(minor: u32) -> Option<Hist> {
        match minor {
            17..=19 => Some(Hist::Go117),
            20.. => Some(Hist::Go120),
            _ => None,
        }
    }

    /// Counted buckets (without underflow and overflow).
    fn buckets(self) -> usize {
        match self {
            Hist::Go117 => 45 * 16,
            Hist::Go120 => 40 * 4,
        }
    }

    /// Words read: the buckets, the underflow and (from 1.20) the overflow.
    pub fn words(self) -> usize {
        self.buckets()
            + match self {
                Hist::Go117 => 1,
                Hist::Go120 => 2,
            }
    }

    /// The durations bucket `i` holds, in ns: [lo, hi).
    fn bounds(self, i: usize) -> (u64, u64) {
        match self {
            Hist::Go117 => {
                let (sup, sub) = ((i / 16) as u32, (i % 16) as u64);
                if sup == 0 {
                    (sub, sub + 1)
                } else {
                    let w = 1u64 << (sup - 1);
                    let lo = (16 + sub) << (sup - 1);
                    if i == self.buckets() - 1 {
                        (lo, u64::MAX)
                    } else {
                        (lo, lo + w)
                    }
                }
            }
            Hist::Go120 => {
                let (b, sub) = ((i / 4) as u32, (i % 4) as u64);
                if b == 0 {
                    (sub << 6, (sub + 1) << 6)
                } else {
                    // durations of bit length b + 8, in quarters
                    let shift = b + 8 - 3;
                    ((4 + sub) << shift, (5 + sub) << shift)
                }
            }
        }
    }
}

/// One reading of `runtime.sched`'s statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The buckets, then the underflow (and overflow) counts.
    pub counts: Vec<u64>,
    pub mutex_wait_ns: Option<u64>,
}

/// Where the statistics are in the target: addresses already biased.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    pub time_to_run: u64,
    pub hist: Hist,
    pub mutex_wait: Option<u64>,
}

impl Place {
    /// The ranges to read: the histogram, then the mutex time if there is one.
    pub fn ranges(&self) -> Vec<(u64, usize)> {
        let mut r = vec![(self.time_to_run, self.hist.words() * 8)];
        if let Some(m) = self.mutex_wait {
            r.push((m, 8));
        }
        r
    }

    /// The reading in `bytes` (the ranges back to back, as read), if all were read.
    pub fn parse(&self, bytes: &[u8], ok: &[bool]) -> Option<Reading> {
        if ok.iter().any(|&k| !k) {
            return None;
        }
        let words = self.hist.words();
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let counts = (0..words).map(word).collect::<Option<Vec<u64>>>()?;
        let mutex_wait_ns = match self.mutex_wait {
            Some(_) => Some(word(words)?),
            None => None,
        };
        Some(Reading {
            counts,
            mutex_wait_ns,
        })
    }
}

impl RuntimeSched {
    /// Transitions the runtime sampled into the histogram over the session.
    pub fn samples(&self) -> u64 {
        self.time_to_run.iter().map(|b| b.2).sum::<u64>() + self.overflow
    }

    /// The upper bound of the bucket that holds the q-quantile (None: no samples;
    /// u64::MAX: beyond the histogram).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.samples();
        let rank = ((n as f64 * q).ceil() as u64).max(1);
        if n == 0 {
            return None;
        }
        let mut seen = 0;
        for &(_, hi, c) in &self.time_to_run {
            seen += c;
            if seen >= rank {
                return Some(hi);
            }
        }
        Some(u64::MAX)
    }
}

/// The session's statistics: what changed between two readings.
pub fn over_session(hist: Hist, start: &Reading, end: &Reading) -> Result<RuntimeSched, String> {
    let n = hist.buckets();
    if start.counts.len() != hist.words() || end.counts.len() != hist.words() {
        return Err("the readings do not have the histogram's size".to_string());
    }
    let mut buckets = Vec::new();
    for (i, (a, b)) in start.counts.iter().zip(&end.counts).enumerate() {
        let d = b.checked_sub(*a).ok_or_else(|| {
            "runtime.sched.timeToRun went backwards between the readings (its layout is not \
             the one waitprof took it to be)"
                .to_string()
        })?;
        if i < n && d > 0 {
            let (lo, hi) = hist.bounds(i);
            buckets.push((lo, hi, d));
        }
    }
    let overflow = match hist {
        Hist::Go117 => 0,
        Hist::Go120 => end.counts[n + 1].saturating_sub(start.counts[n + 1]),
    };
    let mutex_wait_ns = match (start.mutex_wait_ns, end.mutex_wait_ns) {
        (Some(a), Some(b)) => Some(b.checked_sub(a).ok_or_else(|| {
            "runtime.sched.totalMutexWaitTime went backwards between the readings".to_string()
        })?),
        _ => None,
    };
    Ok(RuntimeSched {
        time_to_run: buckets,
        overflow,
        mutex_wait_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime's own bucketing (histogram.go's `record`), per version, to check the
    /// bounds against.
    fn record(hist: Hist, d: u64) -> usize {
        match hist {
            Hist::Go117 => {
                if d < 16 {
                    return d as usize;
                }
                let sup = (64 - d.leading_zeros()) as u64 - 4;
                if sup * 16 >= 720 {
                    return 719;
                }
                (sup * 16 + (d >> (sup - 1)) % 16) as usize
            }
            Hist::Go120 => {
                let l = (64 - d.leading_zeros()) as u64;
                let (bit, b) = if l < 9 { (9, 0) } else { (l, l - 9 + 1) };
                (b * 4 + (d >> (bit - 1 - 2)) % 4) as usize
            }
        }
    }

    #[test]
    fn every_duration_lies_in_the_bounds_of_the_bucket_the_runtime_puts_it_in() {
        for hist in [Hist::Go117, Hist::Go120] {
            let mut d = 0u64;
            while d < 1 << 40 {
                let i = record(hist, d);
                let (lo, hi) = hist.bounds(i);
                assert!(
                    lo <= d && d < hi,
                    "{hist:?}: {d} in bucket {i} = [{lo}, {hi})"
                );
                d = d * 9 / 8 + 1;
            }
        }
        // neighbouring buckets tile the line
        for hist in [Hist::Go117, Hist::Go120] {
            for i in 1..hist.buckets() {
                assert_eq!(hist.bounds(i - 1).1, hist.bounds(i).0, "{hist:?} {i}");
            }
        }
    }

    #[test]
    fn the_session_is_the_difference_and_a_count_that_falls_is_refused() {
        let hist = Hist::Go120;
        let mut a = vec![0u64; hist.words()];
        let mut b = a.clone();
        a[5] = 3;
        b[5] = 10;
        b[40] = 2;
        b[161] = 1; // overflow
        let s = over_session(
            hist,
            &Reading {
                counts: a.clone(),
                mutex_wait_ns: Some(100),
            },
            &Reading {
                counts: b.clone(),
                mutex_wait_ns: Some(350),
            },
        )
        .unwrap();
        assert_eq!(
            s.time_to_run,
            vec![
                (hist.bounds(5).0, hist.bounds(5).1, 7),
                (hist.bounds(40).0, hist.bounds(40).1, 2)
            ]
        );
        assert_eq!((s.overflow, s.mutex_wait_ns), (1, Some(250)));
        assert_eq!(s.samples(), 10);
        assert_eq!(s.quantile(0.5), Some(hist.bounds(5).1));
        assert_eq!(s.quantile(0.8), Some(hist.bounds(40).1));
        assert_eq!(s.quantile(0.99), Some(u64::MAX));
        let err = over_session(
            hist,
            &Reading {
                counts: b,
                mutex_wait_ns: None,
            },
            &Reading {
                counts: a,
                mutex_wait_ns: None,
            },
        )
        .unwrap_err();
        assert!(err.contains("went backwards"), "{err}");
    }
}
