//! The training–serving skew monitor: it compares the distribution of every ranker input the
//! server actually encodes (a sample of requests' rows) with the distribution of the same input
//! in the rankers' training rows ([`InputReference`], written by the builder into `rankers.json`).
//!
//! Per input it keeps bin counts over a sliding window and reports the population stability
//! index (PSI) against the training bins, and the difference in the share of rows where the input
//! is 0 — the encoder's value for a missing signal (no embedding, not retrieved by a source, no
//! recent items), so a feature that went missing upstream shows up even where PSI is blunt.
//! An input over a threshold is an alarm: in `/metrics`, in `/readyz`, and logged once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::metrics::SkewGauge;

/// Quantile bins per input in the reference (fewer where values tie, e.g. 0/1 flags).
pub const REFERENCE_BINS: usize = 10;
/// Share floor for a bin in the PSI sum: an empty bin on one side must not make it infinite.
const PSI_FLOOR: f64 = 1e-4;

/// The training distribution of one ranker input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnReference {
    pub name: String,
    /// Ascending upper edges: bin 0 is `x <= edges[0]`, bin i is `edges[i-1] < x <= edges[i]`,
    /// the last bin `x > edges[last]`.
    pub edges: Vec<f32>,
    /// Training share of each bin (`edges.len() + 1` entries, summing to 1).
    pub fractions: Vec<f64>,
    /// Training share of rows where the input is exactly 0.
    pub zero_fraction: f64,
}

impl ColumnReference {
    #[inline]
    fn bin(&self, x: f32) -> usize {
        self.edges.partition_point(|e| *e < x)
    }
}

/// The training distribution of every ranker input (`rankers.json` → `input_reference`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputReference {
    /// Training rows the reference was computed from (a stride sample when there are many).
    pub rows: u64,
    pub columns: Vec<ColumnReference>,
}

impl InputReference {
    /// The reference of row-major `x` (`names.len()` columns), from at most `max_rows` rows taken
    /// at an even stride (deterministic).
    pub fn from_rows(x: &[f32], names: &[String], max_rows: usize) -> InputReference {
        let dim = names.len().max(1);
        let n = x.len() / dim;
        let stride = n.div_ceil(max_rows.max(1)).max(1);
        let picked: Vec<&[f32]> = x.chunks_exact(dim).step_by(stride).collect();
        let mut column = Vec::with_capacity(picked.len());
        let columns = names
            .iter()
            .enumerate()
            .map(|(j, name)| {
                column.clear();
                column.extend(
                    picked
                        .iter()
                        .map(|r| if r[j].is_finite() { r[j] } else { 0.0 }),
                );
                column.sort_by(f32::total_cmp);
                let m = column.len();
                let mut edges: Vec<f32> = Vec::with_capacity(REFERENCE_BINS);
                for q in 1..REFERENCE_BINS {
                    if m == 0 {
                        break;
                    }
                    let e = column[(q * (m - 1)) / REFERENCE_BINS];
                    if edges.last().is_none_or(|l| *l < e) {
                        edges.push(e);
                    }
                }
                let mut col = ColumnReference {
                    name: name.clone(),
                    edges,
                    fractions: Vec::new(),
                    zero_fraction: 0.0,
                };
                let mut counts = vec![0u64; col.edges.len() + 1];
                let mut zeros = 0u64;
                for &v in column.iter() {
                    counts[col.bin(v)] += 1;
                    zeros += u64::from(v == 0.0);
                }
                let total = (m as f64).max(1.0);
                col.fractions = counts.iter().map(|&c| c as f64 / total).collect();
                col.zero_fraction = zeros as f64 / total;
                col
            })
            .collect();
        InputReference {
            rows: picked.len() as u64,
            columns,
        }
    }

    /// Whether the reference holds together: one share per bin, finite ascending edges, shares
    /// in [0, 1]. (A width other than the rows' is caught per row: those rows are not taken.)
    pub fn check(&self) -> Result<(), String> {
        for c in &self.columns {
            let edges_ok =
                c.edges.iter().all(|e| e.is_finite()) && c.edges.windows(2).all(|w| w[0] < w[1]);
            let share = |f: &f64| f.is_finite() && (0.0..=1.0).contains(f);
            if !edges_ok
                || c.fractions.len() != c.edges.len() + 1
                || !c.fractions.iter().all(share)
                || !share(&c.zero_fraction)
            {
                return Err(format!("column {:?} is malformed", c.name));
            }
        }
        Ok(())
    }
}

/// `[monitor]`: whether metrics are recorded, and the skew monitor's sampling, window and
/// thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Record Prometheus metrics (`/metrics` still answers, with nothing counted, when off).
    pub metrics: bool,
    /// Run the skew monitor.
    pub enabled: bool,
    /// Every n-th ranked request contributes rows (1 = all).
    pub sample_every: u64,
    /// Rows taken from a sampled request (evenly over its candidates).
    pub rows_per_request: usize,
    /// The sliding window, in seconds (kept as `window_slots` slots).
    pub window_s: u64,
    pub window_slots: usize,
    /// PSI over which an input is an alarm (0.1 is usually read as a moderate shift, 0.25 major).
    pub psi_threshold: f64,
    /// Absolute difference in the missing (0) share over which an input is an alarm.
    pub null_rate_threshold: f64,
    /// Requests in the window before any alarm is raised (a few users say little).
    pub min_requests: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            metrics: true,
            enabled: true,
            sample_every: 4,
            rows_per_request: 32,
            window_s: 600,
            window_slots: 10,
            psi_threshold: 0.25,
            null_rate_threshold: 0.2,
            min_requests: 50,
        }
    }
}

impl MonitorConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.sample_every >= 1
            && self.rows_per_request >= 1
            && self.window_s >= 1
            && (1..=1000).contains(&self.window_slots)
            && self.psi_threshold.is_finite()
            && self.psi_threshold > 0.0
            && self.null_rate_threshold.is_finite()
            && self.null_rate_threshold > 0.0;
        if ok {
            Ok(())
        } else {
            Err(
                "monitor: sample_every, rows_per_request and window_s must be >= 1, \
                 window_slots within 1..=1000, psi_threshold and null_rate_threshold > 0"
                    .into(),
            )
        }
    }
}

/// One slot of the window: bin and zero counts per input.
struct Slot {
    start: Instant,
    rows: u64,
    requests: u64,
    /// `[column][bin]`, flattened with `offsets`.
    counts: Vec<u32>,
    zeros: Vec<u32>,
}

struct Window {
    slots: VecDeque<Slot>,
}

/// One input's figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FeatureSkew {
    pub feature: String,
    pub psi: f64,
    /// Share of rows where the input is 0, served (window) and in training.
    pub null_rate: f64,
    pub train_null_rate: f64,
    pub alarm: bool,
}

/// The monitor's state for `/readyz`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SkewReport {
    /// `ok`, `alarm`, `warming_up` (too few requests yet), `no_reference` (the bundle's rankers
    /// were trained before the reference existed: rebuild) or `disabled`.
    pub status: &'static str,
    pub window_s: u64,
    pub requests: u64,
    pub rows: u64,
    pub psi_threshold: f64,
    pub null_rate_threshold: f64,
    /// Inputs over a threshold, worst first.
    pub alarms: Vec<String>,
    /// The inputs with the largest PSI (at most 10), worst first.
    pub top: Vec<FeatureSkew>,
}

/// Samples encoded rows and compares them with the training reference.
pub struct SkewMonitor {
    cfg: MonitorConfig,
    reference: Option<InputReference>,
    /// Start of each column's bins in a slot's flat `counts`.
    offsets: Vec<usize>,
    seen: AtomicU64,
    window: Mutex<Window>,
    /// Per input: already warned since it last went over (one warning per excursion).
    warned: Vec<AtomicBool>,
}

impl SkewMonitor {
    pub fn new(cfg: MonitorConfig, reference: Option<InputReference>) -> SkewMonitor {
        // The reference comes from a file: one that does not hold together is not used (a bin
        // index past a column's shares would otherwise be out of bounds).
        let reference = reference.filter(|r| match r.check() {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(%why, "rankers.json input_reference is unusable; skew not monitored");
                false
            }
        });
        let mut offsets = Vec::new();
        let mut at = 0;
        for c in reference.iter().flat_map(|r| &r.columns) {
            offsets.push(at);
            at += c.fractions.len();
        }
        let n_cols = offsets.len();
        SkewMonitor {
            cfg,
            reference,
            offsets,
            seen: AtomicU64::new(0),
            window: Mutex::new(Window {
                slots: VecDeque::new(),
            }),
            warned: (0..n_cols).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Whether the next ranked request should contribute rows (cheap; call before encoding).
    pub fn wants_sample(&self) -> bool {
        self.cfg.enabled
            && self.reference.is_some()
            && self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.cfg.sample_every)
    }

    /// Adds up to `rows_per_request` of one request's encoded rows (row-major, `dim` wide).
    pub fn record(&self, rows: &[f32], dim: usize) {
        let Some(reference) = &self.reference else {
            return;
        };
        if dim != reference.columns.len() || rows.len() < dim {
            return;
        }
        let n = rows.len() / dim;
        let stride = n.div_ceil(self.cfg.rows_per_request).max(1);
        let now = Instant::now();
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        self.rotate(&mut w, now);
        let total_bins = self.offsets.last().zip(reference.columns.last());
        let Some(slot) = w.slots.back_mut() else {
            return;
        };
        if slot.counts.is_empty() {
            let bins = total_bins.map_or(0, |(o, c)| o + c.fractions.len());
            slot.counts = vec![0; bins];
            slot.zeros = vec![0; reference.columns.len()];
        }
        slot.requests += 1;
        for row in rows.chunks_exact(dim).step_by(stride) {
            slot.rows += 1;
            for (j, (c, &x)) in reference.columns.iter().zip(row).enumerate() {
                let x = if x.is_finite() { x } else { 0.0 };
                slot.counts[self.offsets[j] + c.bin(x)] += 1;
                slot.zeros[j] += u32::from(x == 0.0);
            }
        }
        let requests: u64 = w.slots.iter().map(|s| s.requests).sum();
        // Re-judged every 16 sampled requests, so a shift is logged without anyone scraping.
        if requests.is_multiple_of(16) {
            let figures = self.figures(&w, requests);
            drop(w);
            self.warn_new_alarms(&figures);
        }
    }

    /// Drops slots older than the window and opens a new one when the current is full.
    fn rotate(&self, w: &mut Window, now: Instant) {
        let window = Duration::from_secs(self.cfg.window_s);
        let slot_len = window / self.cfg.window_slots.max(1) as u32;
        while w
            .slots
            .front()
            .is_some_and(|s| now.duration_since(s.start) > window)
        {
            w.slots.pop_front();
        }
        if w.slots
            .back()
            .is_none_or(|s| now.duration_since(s.start) >= slot_len)
        {
            w.slots.push_back(Slot {
                start: now,
                rows: 0,
                requests: 0,
                counts: Vec::new(),
                zeros: Vec::new(),
            });
        }
    }

    /// Every input's figures over the window (empty without a reference or rows).
    fn figures(&self, w: &Window, requests: u64) -> Vec<FeatureSkew> {
        let Some(reference) = &self.reference else {
            return Vec::new();
        };
        let rows: u64 = w.slots.iter().map(|s| s.rows).sum();
        if rows == 0 {
            return Vec::new();
        }
        let judged = requests >= self.cfg.min_requests;
        reference
            .columns
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let base = self.offsets[j];
                let mut psi = 0.0;
                for (b, &expected) in c.fractions.iter().enumerate() {
                    let got: u64 = w
                        .slots
                        .iter()
                        .filter(|s| !s.counts.is_empty())
                        .map(|s| u64::from(s.counts[base + b]))
                        .sum();
                    let a = (got as f64 / rows as f64).max(PSI_FLOOR);
                    let e = expected.max(PSI_FLOOR);
                    psi += (a - e) * (a / e).ln();
                }
                let zeros: u64 = w
                    .slots
                    .iter()
                    .filter(|s| !s.zeros.is_empty())
                    .map(|s| u64::from(s.zeros[j]))
                    .sum();
                let null_rate = zeros as f64 / rows as f64;
                let alarm = judged
                    && (psi > self.cfg.psi_threshold
                        || (null_rate - c.zero_fraction).abs() > self.cfg.null_rate_threshold);
                FeatureSkew {
                    feature: c.name.clone(),
                    psi,
                    null_rate,
                    train_null_rate: c.zero_fraction,
                    alarm,
                }
            })
            .collect()
    }

    fn warn_new_alarms(&self, figures: &[FeatureSkew]) {
        for (f, warned) in figures.iter().zip(&self.warned) {
            if f.alarm {
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        feature = %f.feature,
                        psi = f.psi,
                        null_rate = f.null_rate,
                        train_null_rate = f.train_null_rate,
                        "training-serving skew: a ranker input's served distribution moved away \
                         from training"
                    );
                }
            } else {
                warned.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Figures for `/metrics`, and the window's row count.
    pub fn gauges(&self) -> (Vec<SkewGauge>, u64) {
        let Ok(mut w) = self.window.lock() else {
            return (Vec::new(), 0);
        };
        self.rotate(&mut w, Instant::now());
        let requests = w.slots.iter().map(|s| s.requests).sum();
        let rows = w.slots.iter().map(|s| s.rows).sum();
        let figures = self.figures(&w, requests);
        let gauges = figures
            .into_iter()
            .map(|f| SkewGauge {
                null_rate_diff: f.null_rate - f.train_null_rate,
                feature: f.feature,
                psi: f.psi,
                alarm: f.alarm,
            })
            .collect();
        (gauges, rows)
    }

    /// The state for `/readyz`.
    pub fn report(&self) -> SkewReport {
        let (mut requests, mut rows, mut figures) = (0, 0, Vec::new());
        if let Ok(mut w) = self.window.lock() {
            self.rotate(&mut w, Instant::now());
            requests = w.slots.iter().map(|s| s.requests).sum();
            rows = w.slots.iter().map(|s| s.rows).sum();
            figures = self.figures(&w, requests);
        }
        self.warn_new_alarms(&figures);
        figures.sort_by(|a, b| b.psi.total_cmp(&a.psi));
        let alarms: Vec<String> = figures
            .iter()
            .filter(|f| f.alarm)
            .map(|f| f.feature.clone())
            .collect();
        let status = if !self.cfg.enabled {
            "disabled"
        } else if self.reference.is_none() {
            "no_reference"
        } else if requests < self.cfg.min_requests {
            "warming_up"
        } else if alarms.is_empty() {
            "ok"
        } else {
            "alarm"
        };
        figures.truncate(10);
        SkewReport {
            status,
            window_s: self.cfg.window_s,
            requests,
            rows,
            psi_threshold: self.cfg.psi_threshold,
            null_rate_threshold: self.cfg.null_rate_threshold,
            alarms,
            top: figures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|j| format!("c{j}")).collect()
    }

    /// Rows with column 0 uniform in [0, 1), column 1 a 0/1 flag set on a quarter of rows.
    fn rows(n: usize, shift: f32, flag_share: f32) -> Vec<f32> {
        let mut x = Vec::with_capacity(n * 2);
        for i in 0..n {
            let u = ((i * 7919) % n) as f32 / n as f32;
            x.push(u + shift);
            x.push(f32::from(
                ((i * 104_729) % n) as f32 / (n as f32) < flag_share,
            ));
        }
        x
    }

    fn monitor(reference: InputReference) -> SkewMonitor {
        SkewMonitor::new(
            MonitorConfig {
                sample_every: 1,
                rows_per_request: 100,
                min_requests: 5,
                ..MonitorConfig::default()
            },
            Some(reference),
        )
    }

    #[test]
    fn reference_bins_are_quantiles_and_ties_merge() {
        let r = InputReference::from_rows(&rows(10_000, 0.0, 0.25), &names(2), 100_000);
        assert_eq!(r.rows, 10_000);
        let c0 = &r.columns[0];
        assert_eq!(c0.edges.len(), REFERENCE_BINS - 1);
        for f in &c0.fractions {
            assert!((f - 0.1).abs() < 0.01, "{:?}", c0.fractions);
        }
        // A 0/1 flag has two bins: 0 and 1.
        let c1 = &r.columns[1];
        assert_eq!(c1.edges, vec![0.0, 1.0]);
        assert!((c1.fractions[0] - 0.75).abs() < 0.01, "{:?}", c1.fractions);
        assert!((c1.zero_fraction - 0.75).abs() < 0.01);
    }

    #[test]
    fn flags_exactly_the_shifted_input() {
        let reference = InputReference::from_rows(&rows(20_000, 0.0, 0.25), &names(2), 100_000);
        let same = monitor(reference.clone());
        for k in 0..20 {
            same.record(&rows(100, 0.0, 0.25)[..], 2);
            let _ = k;
        }
        let r = same.report();
        assert_eq!(r.status, "ok", "{r:?}");
        assert!(r.top.iter().all(|f| f.psi < 0.05), "{r:?}");

        let shifted = monitor(reference.clone());
        for _ in 0..20 {
            shifted.record(&rows(100, 0.5, 0.25), 2);
        }
        let r = shifted.report();
        assert_eq!(r.status, "alarm");
        assert_eq!(r.alarms, vec!["c0".to_string()], "{r:?}");

        // The flag goes missing (always 0): the null-rate check catches it.
        let missing = monitor(reference);
        for _ in 0..20 {
            missing.record(&rows(100, 0.0, 0.0), 2);
        }
        let r = missing.report();
        assert_eq!(r.alarms, vec!["c1".to_string()], "{r:?}");
    }

    #[test]
    fn no_alarm_before_enough_requests_or_without_reference() {
        let reference = InputReference::from_rows(&rows(1000, 0.0, 0.25), &names(2), 100_000);
        let m = monitor(reference);
        for _ in 0..4 {
            m.record(&rows(100, 5.0, 0.25), 2);
        }
        let r = m.report();
        assert_eq!(r.status, "warming_up");
        assert!(r.alarms.is_empty());
        let none = SkewMonitor::new(MonitorConfig::default(), None);
        assert!(!none.wants_sample());
        none.record(&rows(10, 0.0, 0.25), 2);
        assert_eq!(none.report().status, "no_reference");
    }

    #[test]
    fn a_malformed_reference_is_not_used() {
        let mut r = InputReference::from_rows(&rows(1000, 0.0, 0.25), &names(2), 100_000);
        r.columns[0].fractions.pop();
        let m = monitor(r);
        m.record(&rows(100, 0.0, 0.25), 2);
        assert_eq!(m.report().status, "no_reference");
    }

    proptest! {
        /// Every value lands in exactly one bin, and the reference's shares sum to 1.
        #[test]
        fn bins_cover_every_value(values in proptest::collection::vec(-1e6f32..1e6, 1..400)) {
            let r = InputReference::from_rows(&values, &names(1), 1000);
            let c = &r.columns[0];
            prop_assert!(c.edges.windows(2).all(|w| w[0] < w[1]));
            let sum: f64 = c.fractions.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-9);
            for v in values {
                prop_assert!(c.bin(v) < c.fractions.len());
            }
        }
    }
}
