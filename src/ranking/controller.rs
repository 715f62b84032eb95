//! Latency controller, in the spirit of product-mixer's QualityFactor: the per-request budget is
//! not the whole story under load (requests queue for the cores), so this watches the observed
//! end-to-end latencies and scales the share of the remaining budget the ensemble selector may
//! spend. When the window's p99 exceeds the target the factor drops multiplicatively; while it
//! stays well under, the factor recovers additively (AIMD, stable under bursty load).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// The end-to-end p99 to hold, in ms.
    #[serde(default = "d_target")]
    pub target_p99_ms: f64,
    /// Latencies kept for the p99 (the most recent ones).
    #[serde(default = "d_window")]
    pub window: usize,
    /// The factor is re-evaluated every this many requests.
    #[serde(default = "d_every")]
    pub update_every: usize,
    /// The factor never drops below this (the best single model still fits most budgets).
    #[serde(default = "d_min")]
    pub min_factor: f64,
    /// Multiplier applied when p99 is over target.
    #[serde(default = "d_decrease")]
    pub decrease: f64,
    /// Added when p99 is under `recover_below` × target.
    #[serde(default = "d_increase")]
    pub increase: f64,
    #[serde(default = "d_recover")]
    pub recover_below: f64,
}

const fn d_true() -> bool {
    true
}
const fn d_target() -> f64 {
    50.0
}
const fn d_window() -> usize {
    500
}
const fn d_every() -> usize {
    25
}
const fn d_min() -> f64 {
    0.01
}
const fn d_decrease() -> f64 {
    0.7
}
const fn d_increase() -> f64 {
    0.05
}
const fn d_recover() -> f64 {
    0.8
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            enabled: d_true(),
            target_p99_ms: d_target(),
            window: d_window(),
            update_every: d_every(),
            min_factor: d_min(),
            decrease: d_decrease(),
            increase: d_increase(),
            recover_below: d_recover(),
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
            (c.update_every >= 1, "update_every must be >= 1"),
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
    latencies: VecDeque<f64>,
    since_update: usize,
    last_p99: f64,
}

#[derive(Debug)]
pub struct LatencyController {
    cfg: ControllerConfig,
    window: Mutex<Window>,
    factor: AtomicU64,
    adjustments: AtomicU64,
}

impl LatencyController {
    pub fn new(cfg: ControllerConfig) -> Self {
        Self {
            window: Mutex::new(Window {
                latencies: VecDeque::with_capacity(cfg.window),
                since_update: 0,
                last_p99: 0.0,
            }),
            cfg,
            factor: AtomicU64::new(1.0f64.to_bits()),
            adjustments: AtomicU64::new(0),
        }
    }

    /// The share of the remaining budget the selector may spend now, in [min_factor, 1].
    pub fn factor(&self) -> f64 {
        if !self.cfg.enabled {
            return 1.0;
        }
        f64::from_bits(self.factor.load(Ordering::Relaxed))
    }

    /// Records one request's end-to-end latency.
    pub fn record(&self, ms: f64) {
        if !self.cfg.enabled || !ms.is_finite() {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.latencies.len() == self.cfg.window {
            w.latencies.pop_front();
        }
        w.latencies.push_back(ms);
        w.since_update += 1;
        if w.since_update < self.cfg.update_every {
            return;
        }
        w.since_update = 0;
        let mut v: Vec<f64> = w.latencies.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let p99 = v[((v.len() - 1) as f64 * 0.99).round() as usize];
        w.last_p99 = p99;
        let f = self.factor();
        let next = if p99 > self.cfg.target_p99_ms {
            (f * self.cfg.decrease).max(self.cfg.min_factor)
        } else if p99 < self.cfg.target_p99_ms * self.cfg.recover_below {
            (f + self.cfg.increase).min(1.0)
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
        (self.factor(), p99, self.adjustments.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_when_over_target_and_recovers_when_under() {
        let c = LatencyController::new(ControllerConfig {
            target_p99_ms: 50.0,
            window: 100,
            update_every: 10,
            ..ControllerConfig::default()
        });
        assert_eq!(c.factor(), 1.0);
        for _ in 0..100 {
            c.record(80.0);
        }
        let low = c.factor();
        assert!(low < 0.1, "{low}");
        assert!(low >= 0.01);
        for _ in 0..300 {
            c.record(10.0);
        }
        assert_eq!(c.factor(), 1.0);
        // Between recover_below × target and target: hold.
        for _ in 0..100 {
            c.record(45.0);
        }
        assert_eq!(c.factor(), 1.0);
        let off = LatencyController::new(ControllerConfig {
            enabled: false,
            ..ControllerConfig::default()
        });
        for _ in 0..100 {
            off.record(500.0);
        }
        assert_eq!(off.factor(), 1.0);
    }
}
