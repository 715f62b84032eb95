//! A ranker's cost model: predicted milliseconds to score n candidates, `fixed + per · n`.
//! Seeded by a warm-up at load (two batch sizes give both terms) and kept current by an
//! exponentially weighted moving average of real runs, so contention on a loaded machine shows
//! up in the next requests' selections.

use std::sync::Mutex;
use std::time::Duration;

/// Weight of the newest run in the moving average.
pub const EWMA_ALPHA: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    fixed_ms: f64,
    per_ms: f64,
    runs: u64,
}

#[derive(Debug)]
pub struct CostModel {
    line: Mutex<Line>,
}

impl CostModel {
    /// From two timed warm-up runs at `n_small` < `n_large` rows.
    pub fn from_warmup(
        n_small: usize,
        t_small: Duration,
        n_large: usize,
        t_large: Duration,
    ) -> Self {
        let (a, b) = (t_small.as_secs_f64() * 1e3, t_large.as_secs_f64() * 1e3);
        let dn = n_large.saturating_sub(n_small).max(1) as f64;
        let per = ((b - a) / dn).max(0.0);
        let fixed = (a - per * n_small as f64).max(0.0);
        Self::new(fixed, per)
    }

    pub fn new(fixed_ms: f64, per_ms: f64) -> Self {
        let ok = |v: f64| if v.is_finite() && v >= 0.0 { v } else { 0.0 };
        Self {
            line: Mutex::new(Line {
                fixed_ms: ok(fixed_ms),
                per_ms: ok(per_ms),
                runs: 0,
            }),
        }
    }

    fn get(&self) -> Line {
        *self.line.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Predicted time for `n` candidates, in ms.
    pub fn predict_ms(&self, n: usize) -> f64 {
        let l = self.get();
        l.fixed_ms + l.per_ms * n as f64
    }

    /// Folds a real run into the per-candidate term (the fixed term stays from the warm-up).
    pub fn observe(&self, n: usize, took: Duration) {
        if n == 0 {
            return;
        }
        let mut l = self.line.lock().unwrap_or_else(|p| p.into_inner());
        let per = ((took.as_secs_f64() * 1e3 - l.fixed_ms) / n as f64).max(0.0);
        if per.is_finite() {
            l.per_ms = EWMA_ALPHA * per + (1.0 - EWMA_ALPHA) * l.per_ms;
            l.runs += 1;
        }
    }

    /// (fixed ms, ms per candidate, runs observed).
    pub fn snapshot(&self) -> (f64, f64, u64) {
        let l = self.get();
        (l.fixed_ms, l.per_ms, l.runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_line_and_ewma() {
        let c = CostModel::from_warmup(
            100,
            Duration::from_micros(300),
            500,
            Duration::from_micros(1100),
        );
        // 2 µs per candidate, 100 µs fixed.
        assert!(
            (c.predict_ms(1000) - 2.1).abs() < 1e-9,
            "{}",
            c.predict_ms(1000)
        );
        // A slower machine: runs at 4 µs per candidate pull the estimate up geometrically.
        for _ in 0..50 {
            c.observe(500, Duration::from_micros(2100));
        }
        let (_, per, runs) = c.snapshot();
        assert_eq!(runs, 50);
        assert!((per - 0.004).abs() < 0.0002, "{per}");
        // Noise cannot make it negative.
        c.observe(500, Duration::ZERO);
        assert!(c.snapshot().1 >= 0.0);
    }
}
