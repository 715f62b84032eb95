//! Latency controller, in the spirit of product-mixer's QualityFactor: the per-request budget is
//! not the whole story under load (requests queue for the cores), so this watches the observed
//! end-to-end latencies and scales the share of the remaining budget the ensemble selector may
//! spend. When the window's p99 exceeds the target the factor drops multiplicatively; while it
//! stays well under, the factor recovers additively (AIMD, stable under bursty load).
//!
//! The window and the steps are in wall time, not in requests: after a burst the slow samples
//! age out of the window and the factor climbs back per elapsed step even when few requests
//! arrive, so light traffic is not served a starved ensemble for minutes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    pub enabled: bool,
    /// The end-to-end p99 to hold, in ms.
    pub target_p99_ms: f64,
    /// Latencies kept for the p99 at most (the most recent ones).
    pub window: usize,
    /// Latencies older than this leave the window.
    pub window_ms: u64,
    /// The factor is re-evaluated at most this often (wall time).
    pub update_ms: u64,
    /// The factor never drops below this (the best single model still fits most budgets).
    pub min_factor: f64,
    /// Multiplier applied when p99 is over target.
    pub decrease: f64,
    /// Added per elapsed `update_ms` while p99 is under `recover_below` × target (or the window
    /// is empty).
    pub increase: f64,
    pub recover_below: f64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            target_p99_ms: 50.0,
            window: 500,
            window_ms: 2_000,
            update_ms: 100,
            min_factor: 0.01,
            decrease: 0.7,
            increase: 0.05,
            recover_below: 0.8,
        }
    }
}

impl ControllerConfig {
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        let checks = [
            (
                c.target_p99_ms > 0.0 && c.target_p99_ms.is_finite(),
                "target_p99_ms must be > 0",
            ),
            (c.window >= 10, "window must be >= 10"),
            (
                c.window_ms >= 1 && c.update_ms >= 1,
                "window_ms and update_ms must be >= 1",
            ),
            (
                c.min_factor > 0.0 && c.min_factor <= 1.0,
                "min_factor must be within (0, 1]",
            ),
            (
                c.decrease > 0.0 && c.decrease < 1.0,
                "decrease must be within (0, 1)",
            ),
            (
                c.increase > 0.0 && c.increase <= 1.0,
                "increase must be within (0, 1]",
            ),
            (
                c.recover_below > 0.0 && c.recover_below <= 1.0,
                "recover_below must be within (0, 1]",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(format!("ranking.controller.{msg}"));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Window {
    /// (when, latency ms), oldest first.
    latencies: VecDeque<(Instant, f64)>,
    last_update: Instant,
    last_p99: f64,
}

#[derive(Debug)]
pub struct LatencyController {
    cfg: ControllerConfig,
    window: Mutex<Window>,
    factor: AtomicU64,
    adjustments: AtomicU64,
    started: Instant,
    /// `last_update` as ms since `started`, for a lock-free "is an update due" check.
    last_update_ms: AtomicU64,
}

impl LatencyController {
    pub fn new(cfg: ControllerConfig) -> Self {
        let now = Instant::now();
        Self {
            window: Mutex::new(Window {
                latencies: VecDeque::with_capacity(cfg.window),
                last_update: now,
                last_p99: 0.0,
            }),
            cfg,
            factor: AtomicU64::new(1.0f64.to_bits()),
            adjustments: AtomicU64::new(0),
            started: now,
            last_update_ms: AtomicU64::new(0),
        }
    }

    fn current(&self) -> f64 {
        f64::from_bits(self.factor.load(Ordering::Relaxed))
    }

    fn update_due(&self, now: Instant) -> bool {
        let since = now.duration_since(self.started).as_millis() as u64;
        since.saturating_sub(self.last_update_ms.load(Ordering::Relaxed)) >= self.cfg.update_ms
    }

    /// The share of the remaining budget the selector may spend now, in [min_factor, 1].
    pub fn factor(&self) -> f64 {
        if !self.cfg.enabled {
            return 1.0;
        }
        self.factor_at(Instant::now())
    }

    fn factor_at(&self, now: Instant) -> f64 {
        if self.update_due(now) {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            self.update(&mut w, now);
        }
        self.current()
    }

    /// Records one request's end-to-end latency.
    pub fn record(&self, ms: f64) {
        if self.cfg.enabled && ms.is_finite() {
            self.record_at(Instant::now(), ms);
        }
    }

    fn record_at(&self, now: Instant, ms: f64) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.latencies.len() == self.cfg.window {
            w.latencies.pop_front();
        }
        w.latencies.push_back((now, ms));
        if self.update_due(now) {
            self.update(&mut w, now);
        }
    }

    fn update(&self, w: &mut Window, now: Instant) {
        let elapsed = now.saturating_duration_since(w.last_update);
        let step = Duration::from_millis(self.cfg.update_ms);
        if elapsed < step {
            return;
        }
        let oldest = now.checked_sub(Duration::from_millis(self.cfg.window_ms));
        while w
            .latencies
            .front()
            .is_some_and(|(t, _)| oldest.is_some_and(|o| *t < o))
        {
            w.latencies.pop_front();
        }
        let p99 = if w.latencies.is_empty() {
            0.0
        } else {
            let mut v: Vec<f64> = w.latencies.iter().map(|(_, l)| *l).collect();
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * 0.99).round() as usize]
        };
        w.last_p99 = p99;
        w.last_update = now;
        self.last_update_ms.store(
            now.duration_since(self.started).as_millis() as u64,
            Ordering::Relaxed,
        );
        let f = self.current();
        let next = if p99 > self.cfg.target_p99_ms {
            (f * self.cfg.decrease).max(self.cfg.min_factor)
        } else if p99 < self.cfg.target_p99_ms * self.cfg.recover_below {
            // One step per elapsed update period: quiet time counts even without requests.
            let steps = (elapsed.as_secs_f64() / step.as_secs_f64())
                .floor()
                .max(1.0);
            (f + self.cfg.increase * steps).min(1.0)
        } else {
            f
        };
        if next != f {
            self.adjustments.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(p99, factor = next, "latency controller adjusted");
        }
        self.factor.store(next.to_bits(), Ordering::Relaxed);
    }

    /// (factor, p99 of the window at the last update, adjustments made).
    pub fn snapshot(&self) -> (f64, f64, u64) {
        let p99 = self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_p99;
        (
            self.current(),
            p99,
            self.adjustments.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl() -> LatencyController {
        LatencyController::new(ControllerConfig {
            target_p99_ms: 50.0,
            window: 100,
            window_ms: 2_000,
            update_ms: 100,
            ..ControllerConfig::default()
        })
    }

    #[test]
    fn drops_when_over_target_and_holds_between() {
        let c = ctl();
        let t0 = Instant::now();
        assert_eq!(c.factor_at(t0), 1.0);
        // 10 s of overload, 100 requests a second.
        for i in 1..=1000u64 {
            c.record_at(t0 + Duration::from_millis(10 * i), 80.0);
        }
        let low = c.current();
        assert!(low < 0.1, "{low}");
        assert!(low >= 0.01);
        // Between recover_below × target and target: hold.
        let c2 = ctl();
        for i in 1..=1000u64 {
            c2.record_at(t0 + Duration::from_millis(10 * i), 45.0);
        }
        assert_eq!(c2.current(), 1.0);
        let off = LatencyController::new(ControllerConfig {
            enabled: false,
            ..ControllerConfig::default()
        });
        for _ in 0..100 {
            off.record(500.0);
        }
        assert_eq!(off.factor(), 1.0);
    }

    /// After a burst the factor is back to 1 within a few seconds of wall time, whether light
    /// traffic follows or none at all: the window ages out and each quiet step counts.
    #[test]
    fn recovers_within_seconds_of_wall_time_after_a_burst() {
        for light_rps in [0u64, 2, 50] {
            let c = ctl();
            let t0 = Instant::now();
            for i in 1..=2000u64 {
                c.record_at(t0 + Duration::from_millis(i), 400.0);
            }
            let burst_end = t0 + Duration::from_millis(2000);
            assert_eq!(c.current(), 0.01, "the burst drove the factor to its floor");
            let mut t = burst_end;
            let mut back_at = None;
            while t < burst_end + Duration::from_secs(30) {
                t += Duration::from_millis(10);
                let since = t.duration_since(burst_end).as_millis() as u64;
                if light_rps > 0 && since.is_multiple_of(1000 / light_rps) {
                    c.record_at(t, 5.0);
                }
                // The next request, whenever it comes, reads the factor.
                if c.factor_at(t) == 1.0 {
                    back_at = Some(since);
                    break;
                }
            }
            let back = back_at.unwrap_or(u64::MAX);
            assert!(
                back <= 5_000,
                "{light_rps} req/s: back to 1 after {back} ms"
            );
        }
    }
}
