//! Replication figures: checkpoint pauses (a histogram, for percentiles), sizes, counts, the current role and
//! state. The control API reads them as [`Protection`].

use std::sync::{Arc, Mutex};

use kemari_runtime::control::Protection;

/// Pause histogram: buckets of 1/8 of a power of two microseconds, from 1 µs to about 1,000 s.
const SUB: usize = 8;
const BUCKETS: usize = 30 * SUB;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let log = 63 - us.leading_zeros() as usize; // 2^log <= us
    let frac = ((us >> (log - 3)) & (SUB as u64 - 1)) as usize;
    ((log - 2) * SUB + frac).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `b` (percentiles report the bucket's upper bound).
fn upper(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let log = b / SUB + 2;
    let frac = (b % SUB) as u64;
    ((SUB as u64 + frac + 1) << (log - 3)) - 1
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// The value at or below which `q` (0..=1) of the samples fall (upper bound of its bucket, at most max).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let want = ((self.total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return upper(b).min(self.max);
            }
        }
        self.max
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

/// Everything a node reports about replication.
#[derive(Default)]
pub struct Metrics {
    pub role: &'static str,
    pub state: &'static str,
    pub peer: String,
    pub fence: u64,
    pub checkpoints: u64,
    pub rejected: u64,
    pub pauses: Histogram,
    pub pause_last_us: u64,
    pub pages_last: u64,
    pub bytes_last: u64,
    pub pages_total: u64,
    pub bytes_total: u64,
    pub failover_ms: Option<u64>,
    /// The current or last comparison of replicated disks (primary).
    pub disks: Option<Arc<crate::disks::Progress>>,
}

pub type SharedMetrics = Arc<Mutex<Metrics>>;

impl Metrics {
    pub fn new(role: &'static str, state: &'static str) -> SharedMetrics {
        Arc::new(Mutex::new(Metrics { role, state, ..Metrics::default() }))
    }

    /// Records one checkpoint: the guest's pause, and its size.
    pub fn checkpoint(&mut self, pause_us: u64, pages: u64, bytes: u64) {
        self.checkpoints += 1;
        self.pauses.record(pause_us);
        self.pause_last_us = pause_us;
        self.pages_last = pages;
        self.bytes_last = bytes;
        self.pages_total += pages;
        self.bytes_total += bytes;
    }

    pub fn report(&self, effects_held: u64) -> Protection {
        Protection {
            role: self.role.into(),
            state: self.state.into(),
            peer: self.peer.clone(),
            fence: self.fence,
            checkpoints: self.checkpoints,
            rejected: self.rejected,
            effects_held,
            pause_last_us: self.pause_last_us,
            pause_p50_us: self.pauses.quantile(0.5),
            pause_p99_us: self.pauses.quantile(0.99),
            pause_max_us: self.pauses.max(),
            pages_last: self.pages_last,
            bytes_last: self.bytes_last,
            pages_total: self.pages_total,
            bytes_total: self.bytes_total,
            failover_ms: self.failover_ms,
            disks: self.disks.as_ref().map(|p| p.report()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values() {
        for us in [0, 1, 7, 8, 9, 15, 16, 100, 1000, 12_345, 1 << 30] {
            let b = bucket(us);
            assert!(upper(b) >= us, "{us} above its bucket's bound {}", upper(b));
            assert!(b == 0 || upper(b - 1) < us, "{us} belongs to an earlier bucket");
        }
    }

    #[test]
    fn quantiles_are_within_an_eighth() {
        let mut h = Histogram::default();
        for us in 1..=1000 {
            h.record(us);
        }
        let p50 = h.quantile(0.5);
        assert!((500..=500 + 500 / 8).contains(&p50), "p50 {p50}");
        let p99 = h.quantile(0.99);
        assert!((990..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(h.max(), 1000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
