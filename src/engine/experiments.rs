//! A running A/B experiment (`[experiment]`): deterministic assignment of users to arms (a
//! salted SHA-256 of the user id, so a user stays in one arm across requests, servers and
//! restarts), which request each arm served (for attributing events by `request_id`), and the
//! per-arm results — requests, latency, degradation mix, impressions, clicks, click-through
//! rate with a 95 % Wilson interval, and for shadow arms how their lists compare with the
//! served ones. `report_from_log` recomputes the click figures from the durable event log, so
//! results survive restarts.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::api::{Degradation, ExperimentTag};
use crate::config::{ArmConfig, ExperimentConfig};

/// Latencies kept per arm for the percentiles (the most recent ones).
const LATENCY_WINDOW: usize = 4096;
/// Request ids remembered for attribution, and for how long.
const EXPOSURES: u64 = 200_000;
const EXPOSURE_TTL: Duration = Duration::from_secs(3600);

/// The event types that count as an impression; every other type with a positive default
/// weight (view, click, play, like, purchase, …) counts as a click.
pub fn is_impression(event_type: &str) -> bool {
    event_type.eq_ignore_ascii_case("impression")
        || event_type.eq_ignore_ascii_case("view_impression")
}

fn is_click(event_type: &str) -> bool {
    !is_impression(event_type) && crate::events::type_weight(event_type).is_some_and(|w| w > 0.0)
}

/// A point in [0, 1) for `user` under `salt`: the assignment hash.
pub fn bucket(salt: &str, user: &str) -> f64 {
    let d = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update([0u8])
        .chain_update(user.as_bytes())
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // 53 bits: exactly representable.
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The served arm (index into the config's arms) `user` is assigned to.
pub fn assign(cfg: &ExperimentConfig, user: &str) -> usize {
    let salt = cfg.salt.as_deref().unwrap_or(&cfg.name);
    let x = bucket(salt, user);
    let mut acc = 0.0;
    let mut last = 0;
    for (i, a) in cfg.arms.iter().enumerate().filter(|(_, a)| !a.shadow) {
        acc += a.share;
        last = i;
        if x < acc {
            return i;
        }
    }
    // Shares sum to 1 up to rounding: the top of the range goes to the last served arm.
    last
}

#[derive(Default)]
struct ArmStats {
    requests: AtomicU64,
    impressions: AtomicU64,
    clicks: AtomicU64,
    /// Events attributed through their `request_id` (the rest by the user's assignment).
    by_request: AtomicU64,
    degradation: Mutex<BTreeMap<&'static str, u64>>,
    latency: Mutex<VecDeque<f32>>,
    shadow_runs: AtomicU64,
    shadow_dropped: AtomicU64,
    shadow_failed: AtomicU64,
    /// Sums over shadow runs: overlap@k, Kendall tau (runs with two or more common items), ms.
    shadow_sums: Mutex<ShadowSums>,
}

#[derive(Default)]
struct ShadowSums {
    overlap: f64,
    tau: f64,
    tau_runs: u64,
    ms: VecDeque<f32>,
}

/// Which arm a request is served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub arm: usize,
    pub forced: bool,
}

/// The running experiment. One per server; it outlives bundle versions.
pub struct Experiment {
    cfg: ExperimentConfig,
    /// Per arm, its changes to the stages (None: it changes none).
    plans: Vec<Option<crate::pipeline::ArmPlan>>,
    stats: Vec<ArmStats>,
    exposures: moka::sync::Cache<String, u16>,
    /// Shadow runs at once; a shadow run that finds none free is dropped (counted).
    shadow_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

/// `GET /admin/experiments`: the experiment's per-arm results since the server started.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ExperimentReport {
    pub name: String,
    pub arms: Vec<ArmReport>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ArmReport {
    pub name: String,
    pub shadow: bool,
    pub share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<String>,
    /// Requests served by this arm (0 for a shadow arm: see `shadow`).
    pub requests: u64,
    /// Server-side latency of its recent requests (up to 4096), ms.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Responses by degradation level.
    pub degradation: BTreeMap<String, u64>,
    pub impressions: u64,
    /// Engagement events (every event type with a positive weight but impressions).
    pub clicks: u64,
    /// Of `impressions + clicks`, the events attributed through their `request_id`.
    pub attributed_by_request: u64,
    /// clicks / impressions (0 without impressions).
    pub ctr: f64,
    /// 95 % Wilson interval of `ctr`.
    pub ctr_ci95: [f64; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_stats: Option<ShadowReport>,
}

/// How a shadow arm's lists compare with the served ones.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ShadowReport {
    pub runs: u64,
    /// Sampled but not run: no shadow slot free (the server was busy).
    pub dropped: u64,
    pub failed: u64,
    /// Mean share of the served top k that the shadow list also has in its top k.
    pub overlap_at_k: f64,
    /// Mean Kendall tau of the common items' order (runs with two or more common items).
    pub kendall_tau: f64,
    /// Median time of a shadow run, ms (counted apart from the served request's).
    pub ms_p50: f64,
}

fn percentile(v: &VecDeque<f32>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s: Vec<f32> = v.iter().copied().collect();
    s.sort_by(f32::total_cmp);
    let at = ((s.len() - 1) as f64 * q).round() as usize;
    f64::from(s[at.min(s.len() - 1)])
}

/// 95 % Wilson score interval of `k` successes in `n` trials (`k` capped at `n`).
pub fn wilson95(k: u64, n: u64) -> [f64; 2] {
    if n == 0 {
        return [0.0, 0.0];
    }
    let (n, z) = (n as f64, 1.959_963_984_540_054);
    let p = (k as f64 / n).min(1.0);
    let den = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / den;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / den;
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// Share of `served` (its top k) that `shadow` also holds in its top k, and the Kendall tau of
/// the common items' order in the two lists (None with fewer than two common items).
pub fn compare_lists(served: &[u64], shadow: &[u64]) -> (f64, Option<f64>) {
    if served.is_empty() {
        return (0.0, None);
    }
    let k = served.len();
    let pos: std::collections::HashMap<u64, usize> = shadow
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &x)| (x, i))
        .collect();
    let common: Vec<usize> = served.iter().filter_map(|x| pos.get(x).copied()).collect();
    let overlap = common.len() as f64 / k as f64;
    if common.len() < 2 {
        return (overlap, None);
    }
    // `common` is the shadow positions in served order: count concordant pairs.
    let (mut conc, mut disc) = (0i64, 0i64);
    for i in 0..common.len() {
        for j in i + 1..common.len() {
            if common[i] < common[j] {
                conc += 1;
            } else {
                disc += 1;
            }
        }
    }
    (overlap, Some((conc - disc) as f64 / (conc + disc) as f64))
}

impl Experiment {
    /// `shadow_slots`: shadow runs allowed at once.
    pub fn new(cfg: ExperimentConfig, shadow_slots: usize) -> Self {
        let stats = cfg.arms.iter().map(|_| ArmStats::default()).collect();
        let plans = cfg
            .arms
            .iter()
            .map(|a| {
                (a.quotas.is_some() || a.rerank.is_some()).then(|| crate::pipeline::ArmPlan {
                    quotas: a.quotas.clone(),
                    rerank: a
                        .rerank
                        .as_ref()
                        .map(crate::pipeline::rerank::RerankStage::new),
                })
            })
            .collect();
        Self {
            plans,
            cfg,
            stats,
            exposures: moka::sync::Cache::builder()
                .max_capacity(EXPOSURES)
                .time_to_live(EXPOSURE_TTL)
                .build(),
            shadow_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(shadow_slots.max(1))),
        }
    }

    pub fn config(&self) -> &ExperimentConfig {
        &self.cfg
    }

    pub fn arm(&self, i: usize) -> &ArmConfig {
        &self.cfg.arms[i]
    }

    /// Arm `i`'s changes to the stages, if it makes any.
    pub fn plan(&self, i: usize) -> Option<&crate::pipeline::ArmPlan> {
        self.plans[i].as_ref()
    }

    /// The arm serving `user`: the forced one when the request names a served arm, else the
    /// assigned one. A forced name that is not a served arm is an error (the message says so).
    pub fn choose(&self, user: &str, forced: Option<&str>) -> Result<Assignment, String> {
        match forced {
            Some(name) => match self.cfg.arms.iter().position(|a| a.name == name) {
                Some(i) if !self.cfg.arms[i].shadow => Ok(Assignment {
                    arm: i,
                    forced: true,
                }),
                Some(_) => Err(format!("arm {name:?} is a shadow arm; it cannot serve")),
                None => Err(format!(
                    "experiment {:?} has no arm {name:?} (arms: {})",
                    self.cfg.name,
                    self.cfg
                        .arms
                        .iter()
                        .filter(|a| !a.shadow)
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
            None => Ok(Assignment {
                arm: assign(&self.cfg, user),
                forced: false,
            }),
        }
    }

    pub fn tag(&self, a: Assignment) -> ExperimentTag {
        ExperimentTag {
            name: self.cfg.name.clone(),
            arm: self.cfg.arms[a.arm].name.clone(),
            forced: a.forced,
        }
    }

    /// `experiment/arm`, as the event log records it.
    pub fn label(&self, arm: usize) -> String {
        format!("{}/{}", self.cfg.name, self.cfg.arms[arm].name)
    }

    /// One served response: remembered for attribution, counted for its arm.
    pub fn record_served(&self, arm: usize, request_id: &str, ms: f64, level: Degradation) {
        let s = &self.stats[arm];
        s.requests.fetch_add(1, Ordering::Relaxed);
        self.exposures.insert(request_id.to_string(), arm as u16);
        if let Ok(mut d) = s.degradation.lock() {
            *d.entry(level.as_str()).or_insert(0) += 1;
        }
        if let Ok(mut l) = s.latency.lock() {
            if l.len() == LATENCY_WINDOW {
                l.pop_front();
            }
            l.push_back(ms as f32);
        }
    }

    /// The arm an event belongs to: the one that served its `request_id` when the server still
    /// remembers it, else the user's assigned arm. The bool says which.
    pub fn attribute(&self, request_id: Option<&str>, user: &str) -> (usize, bool) {
        if let Some(arm) = request_id.and_then(|r| self.exposures.get(r)) {
            return (usize::from(arm), true);
        }
        (assign(&self.cfg, user), false)
    }

    /// One event (already attributed to `arm`) that the log recorded.
    pub fn record_event(&self, arm: usize, event_type: &str, by_request: bool) {
        let s = &self.stats[arm];
        let counted = if is_impression(event_type) {
            s.impressions.fetch_add(1, Ordering::Relaxed);
            true
        } else if is_click(event_type) {
            s.clicks.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        };
        if counted && by_request {
            s.by_request.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The shadow arms (index, config).
    pub fn shadow_arms(&self) -> impl Iterator<Item = (usize, &ArmConfig)> {
        self.cfg.arms.iter().enumerate().filter(|(_, a)| a.shadow)
    }

    /// A slot for one shadow run, or None (the run is dropped and counted).
    pub fn try_shadow(&self, arm: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.shadow_slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.stats[arm]
                .shadow_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    pub fn record_shadow_dropped(&self, arm: usize) {
        self.stats[arm]
            .shadow_dropped
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One finished shadow run: its list against the served one (None: it failed).
    pub fn record_shadow(&self, arm: usize, served: &[u64], shadow: Option<&[u64]>, ms: f64) {
        let s = &self.stats[arm];
        let Some(shadow) = shadow else {
            s.shadow_failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        s.shadow_runs.fetch_add(1, Ordering::Relaxed);
        let (overlap, tau) = compare_lists(served, shadow);
        if let Ok(mut m) = s.shadow_sums.lock() {
            m.overlap += overlap;
            if let Some(t) = tau {
                m.tau += t;
                m.tau_runs += 1;
            }
            if m.ms.len() == LATENCY_WINDOW {
                m.ms.pop_front();
            }
            m.ms.push_back(ms as f32);
        }
    }

    /// The report as `/metrics` gauges.
    pub fn metric_figures(&self) -> Vec<crate::observe::metrics::ArmFigures> {
        let r = self.report();
        r.arms
            .iter()
            .map(|a| {
                let sh = a.shadow_stats.as_ref();
                crate::observe::metrics::ArmFigures {
                    experiment: r.name.clone(),
                    arm: a.name.clone(),
                    values: [
                        a.requests as f64,
                        a.latency_p99_ms / 1e3,
                        a.impressions as f64,
                        a.clicks as f64,
                        a.ctr,
                        sh.map_or(0.0, |s| s.runs as f64),
                        sh.map_or(0.0, |s| s.dropped as f64),
                        sh.map_or(0.0, |s| s.overlap_at_k),
                    ],
                }
            })
            .collect()
    }

    pub fn report(&self) -> ExperimentReport {
        let arms = self
            .cfg
            .arms
            .iter()
            .zip(&self.stats)
            .map(|(a, s)| {
                let (p50, p99) = s
                    .latency
                    .lock()
                    .map(|l| (percentile(&l, 0.5), percentile(&l, 0.99)))
                    .unwrap_or_default();
                let impressions = s.impressions.load(Ordering::Relaxed);
                let clicks = s.clicks.load(Ordering::Relaxed);
                let shadow_stats = a.shadow.then(|| {
                    let runs = s.shadow_runs.load(Ordering::Relaxed);
                    let (overlap, tau, ms) = s
                        .shadow_sums
                        .lock()
                        .map(|m| {
                            (
                                if runs > 0 {
                                    m.overlap / runs as f64
                                } else {
                                    0.0
                                },
                                if m.tau_runs > 0 {
                                    m.tau / m.tau_runs as f64
                                } else {
                                    0.0
                                },
                                percentile(&m.ms, 0.5),
                            )
                        })
                        .unwrap_or_default();
                    ShadowReport {
                        runs,
                        dropped: s.shadow_dropped.load(Ordering::Relaxed),
                        failed: s.shadow_failed.load(Ordering::Relaxed),
                        overlap_at_k: overlap,
                        kendall_tau: tau,
                        ms_p50: ms,
                    }
                });
                ArmReport {
                    name: a.name.clone(),
                    shadow: a.shadow,
                    share: a.share,
                    bundle_version: a.bundle_version.clone(),
                    requests: s.requests.load(Ordering::Relaxed),
                    latency_p50_ms: p50,
                    latency_p99_ms: p99,
                    degradation: s
                        .degradation
                        .lock()
                        .map(|d| d.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                        .unwrap_or_default(),
                    impressions,
                    clicks,
                    attributed_by_request: s.by_request.load(Ordering::Relaxed),
                    ctr: if impressions > 0 {
                        clicks as f64 / impressions as f64
                    } else {
                        0.0
                    },
                    ctr_ci95: wilson95(clicks, impressions),
                    shadow_stats,
                }
            })
            .collect();
        ExperimentReport {
            name: self.cfg.name.clone(),
            arms,
        }
    }
}

/// Per-arm click figures of the durable event log (`funnel experiments report`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LogArm {
    pub label: String,
    pub users: usize,
    pub impressions: u64,
    pub clicks: u64,
    /// Events whose arm the server recorded (the rest assigned from `cfg` by user id).
    pub recorded: u64,
    pub ctr: f64,
    pub ctr_ci95: [f64; 2],
}

/// Reads the event log in `dir` and counts impressions and clicks per arm: by the arm the
/// server recorded with each event, or — for events logged without one (before the experiment,
/// or by a server without it) — by assigning the user with `cfg`, when given. Only arms of
/// `cfg`'s experiment are counted when `cfg` is given.
pub fn report_from_log(
    dir: &Path,
    cfg: Option<&ExperimentConfig>,
) -> Result<Vec<LogArm>, crate::events::log::EventLogError> {
    let mut arms: BTreeMap<String, (LogArm, std::collections::HashSet<u64>)> = BTreeMap::new();
    for seg in crate::events::log::segments(dir)? {
        for e in crate::events::log::read_segment(&seg)? {
            let (label, recorded) = match (&e.arm, cfg) {
                (Some(l), Some(c)) if !l.starts_with(&format!("{}/", c.name)) => continue,
                (Some(l), _) => (l.clone(), true),
                (None, Some(c)) => {
                    let i = assign(c, &e.user_id.to_string());
                    (format!("{}/{}", c.name, c.arms[i].name), false)
                }
                (None, None) => continue,
            };
            let (a, users) = arms.entry(label.clone()).or_insert_with(|| {
                (
                    LogArm {
                        label,
                        ..LogArm::default()
                    },
                    Default::default(),
                )
            });
            if is_impression(&e.event_type) {
                a.impressions += 1;
            } else if is_click(&e.event_type) {
                a.clicks += 1;
            } else {
                continue;
            }
            a.recorded += u64::from(recorded);
            users.insert(e.user_id);
        }
    }
    Ok(arms
        .into_values()
        .map(|(mut a, users)| {
            a.users = users.len();
            a.ctr = if a.impressions > 0 {
                a.clicks as f64 / a.impressions as f64
            } else {
                0.0
            };
            a.ctr_ci95 = wilson95(a.clicks, a.impressions);
            a
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(shares: &[f64]) -> ExperimentConfig {
        ExperimentConfig {
            name: "exp".into(),
            salt: None,
            arms: shares
                .iter()
                .enumerate()
                .map(|(i, &share)| ArmConfig {
                    name: format!("arm{i}"),
                    share,
                    shadow: false,
                    bundle_version: None,
                    ranking: None,
                    quotas: None,
                    rerank: None,
                })
                .collect(),
        }
    }

    #[test]
    fn assignment_is_stable_and_matches_the_shares() {
        let c = cfg(&[0.5, 0.3, 0.2]);
        c.validate().expect("valid");
        let n = 100_000;
        let mut counts = [0usize; 3];
        for u in 0..n {
            let key = u.to_string();
            let a = assign(&c, &key);
            assert_eq!(a, assign(&c, &key), "stable");
            counts[a] += 1;
        }
        for (i, share) in [0.5, 0.3, 0.2].into_iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!(
                (got - share).abs() <= 0.02 * share,
                "arm {i}: {got} vs {share}"
            );
        }
        // Another salt reshuffles users.
        let mut salted = c.clone();
        salted.salt = Some("other".into());
        let moved = (0..1000)
            .filter(|u| assign(&c, &u.to_string()) != assign(&salted, &u.to_string()))
            .count();
        assert!(moved > 300, "{moved}");
    }

    #[test]
    fn shadow_arms_are_never_assigned_and_cannot_be_forced() {
        let mut c = cfg(&[1.0, 0.5]);
        c.arms[1].shadow = true;
        c.validate().expect("valid");
        let e = Experiment::new(c, 1);
        assert!((0..1000).all(|u| assign(e.config(), &u.to_string()) == 0));
        assert!(e.choose("1", Some("arm1")).is_err());
        assert!(e.choose("1", Some("nope")).is_err());
        assert_eq!(
            e.choose("1", Some("arm0")),
            Ok(Assignment {
                arm: 0,
                forced: true
            })
        );
    }

    #[test]
    fn config_checks() {
        assert!(cfg(&[0.5, 0.4]).validate().is_err(), "shares sum to 0.9");
        let mut c = cfg(&[0.5, 0.5]);
        c.arms[1].name = "arm0".into();
        assert!(c.validate().is_err(), "duplicate names");
        let mut c = cfg(&[1.0]);
        c.arms[0].bundle_version = Some("../x".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn wilson_and_list_comparison() {
        assert_eq!(wilson95(0, 0), [0.0, 0.0]);
        let [lo, hi] = wilson95(50, 100);
        assert!(
            (lo - 0.404).abs() < 0.001 && (hi - 0.596).abs() < 0.001,
            "{lo} {hi}"
        );
        assert_eq!(
            compare_lists(&[1, 2, 3, 4], &[1, 2, 3, 4]),
            (1.0, Some(1.0))
        );
        assert_eq!(
            compare_lists(&[1, 2, 3, 4], &[4, 3, 2, 1]),
            (1.0, Some(-1.0))
        );
        assert_eq!(compare_lists(&[1, 2, 3, 4], &[9, 8, 7, 1]), (0.25, None));
        let (o, t) = compare_lists(&[1, 2, 3, 4], &[2, 1, 5, 6]);
        assert_eq!((o, t), (0.5, Some(-1.0)));
    }

    #[test]
    fn events_count_for_the_arm_that_served_them() {
        let e = Experiment::new(cfg(&[0.5, 0.5]), 1);
        e.record_served(1, "req-1", 3.0, Degradation::Full);
        // Forced or not, the request id decides.
        let (arm, by_request) = e.attribute(Some("req-1"), "whoever");
        assert_eq!((arm, by_request), (1, true));
        e.record_event(arm, "impression", by_request);
        e.record_event(arm, "impression", by_request);
        e.record_event(arm, "click", by_request);
        e.record_event(arm, "skip", by_request);
        let (other, by) = e.attribute(Some("unknown"), "7");
        assert!(!by);
        assert_eq!(other, assign(e.config(), "7"));
        let r = e.report();
        let a = &r.arms[1];
        assert_eq!(
            (a.requests, a.impressions, a.clicks, a.attributed_by_request),
            (1, 2, 1, 3)
        );
        assert_eq!(a.ctr, 0.5);
        assert_eq!(a.degradation.get("full"), Some(&1));
    }
}
