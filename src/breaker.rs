//! Circuit breakers around the request path's dependencies (Redis, each candidate source, each
//! ranker): after `failure_threshold` consecutive failures a breaker opens and calls are skipped
//! for `open_ms`; then one probe is let through (half-open) and its outcome closes or re-opens
//! it. State changes are logged once each (not per request) and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker skips calls before letting one probe through.
    pub open_ms: u64,
}

const fn d_threshold() -> u32 {
    3
}
const fn d_open() -> u64 {
    1000
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: d_threshold(),
            open_ms: d_open(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; other calls are skipped until it reports.
    HalfOpen,
}

/// One dependency's breaker.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    cfg: BreakerConfig,
    state: Mutex<State>,
    opened: AtomicU64,
    skipped: AtomicU64,
    failures: AtomicU64,
}

impl Breaker {
    pub fn new(name: impl Into<String>, cfg: BreakerConfig) -> Self {
        Self {
            name: name.into(),
            cfg,
            state: Mutex::new(State::Closed { failures: 0 }),
            opened: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go ahead now. An open breaker past its time lets exactly one through.
    pub fn allow(&self) -> bool {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen;
                tracing::info!(breaker = %self.name, "circuit half-open: probing");
                true
            }
            State::Open { .. } | State::HalfOpen => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether [`Breaker::allow`] would let a call through now, without changing state (for
    /// planners that consider many dependencies and call few).
    pub fn would_allow(&self) -> bool {
        match *self.lock() {
            State::Closed { .. } => true,
            State::Open { until } => Instant::now() >= until,
            State::HalfOpen => false,
        }
    }

    /// Opens the circuit now (e.g. a model that fails its warm-up), whatever the count.
    pub fn trip(&self) {
        let mut s = self.lock();
        if !matches!(*s, State::Open { .. }) {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        *s = State::Open {
            until: Instant::now() + Duration::from_millis(self.cfg.open_ms),
        };
    }

    /// Reports the outcome of an allowed call.
    pub fn record(&self, ok: bool) {
        let mut s = self.lock();
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let next = match (*s, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.cfg.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (State::Open { until }, false) => State::Open { until },
            (_, false) => State::Open {
                until: Instant::now() + Duration::from_millis(self.cfg.open_ms),
            },
        };
        let was_open = !matches!(*s, State::Closed { .. });
        let now_open = matches!(next, State::Open { .. });
        if now_open && !matches!(*s, State::Open { .. }) {
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(breaker = %self.name, "circuit open: skipping calls for {} ms", self.cfg.open_ms);
        } else if was_open && !now_open {
            tracing::info!(breaker = %self.name, "circuit closed: recovered");
        }
        *s = next;
    }

    pub fn state_name(&self) -> &'static str {
        match *self.lock() {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }

    /// (times opened, calls skipped, failures recorded).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_and_recovers() {
        let b = Breaker::new(
            "t",
            BreakerConfig {
                failure_threshold: 2,
                open_ms: 30,
            },
        );
        assert!(b.allow());
        b.record(false);
        assert_eq!(b.state_name(), "closed");
        assert!(b.allow());
        b.record(false);
        assert_eq!(b.state_name(), "open");
        assert!(!b.allow(), "open skips");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one probe after open_ms");
        assert!(!b.allow(), "only one probe");
        b.record(false);
        assert_eq!(b.state_name(), "open", "failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow());
        b.record(true);
        assert_eq!(b.state_name(), "closed");
        let (opened, skipped, failures) = b.counts();
        assert_eq!((opened, failures), (2, 3));
        assert!(skipped >= 2);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = Breaker::new("t", BreakerConfig::default());
        for _ in 0..10 {
            b.record(false);
            b.record(false);
            b.record(true);
        }
        assert!(b.is_closed());
    }
}
