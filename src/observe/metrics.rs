//! The engine's Prometheus metrics: one registry per [`crate::engine::Engine`] (no process-wide
//! recorder, so servers in one test process never mix their counts), rendered as OpenMetrics
//! text for `GET /metrics`.
//!
//! What is counted where: the HTTP layer records requests and their latency, the pipeline records
//! one request's stages, sources, degradation and ensemble at its end ([`Metrics::observe_run`]),
//! ingestion records event outcomes, and the event log's writer its commit time. Gauges that
//! mirror state (breakers, skew) are set at scrape time from that state, so they are never stale.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::api::{Degradation, EnsembleExplain, StageReport};

/// Latency buckets in seconds: fine below 10 ms, where the engine's stages live, up to the 200 ms
/// budget and past it (so a missed deadline still lands in a bucket).
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.5, 1.0,
];

/// Candidates a source returned for one request.
const CANDIDATE_BUCKETS: [f64; 10] = [
    0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0,
];

/// Ensemble members per request.
const MEMBER_BUCKETS: [f64; 8] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn candidate_histogram() -> Histogram {
    Histogram::new(CANDIDATE_BUCKETS)
}

/// The event log's commit-time histogram (write + sync of one group commit), created by the log's
/// owner and registered here.
pub fn commit_histogram() -> Histogram {
    latency_histogram()
}

type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DegradationLabel {
    degradation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabel {
    breaker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabel {
    experiment: String,
    arm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabel {
    feature: String,
}

/// A Redis call that failed: an error answer or a connection error, or no answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    Error,
    Timeout,
}

/// One skew figure for the scrape (see [`crate::observe::skew`]).
#[derive(Debug, Clone)]
pub struct SkewGauge {
    pub feature: String,
    pub psi: f64,
    pub null_rate_diff: f64,
    pub alarm: bool,
}

/// The per-arm experiment figures `/metrics` exports (name, help), in [`ArmFigures`] order.
const ARM_FIGURES: [(&str, &str); 8] = [
    (
        "experiment_requests",
        "Requests served by the experiment arm since start",
    ),
    (
        "experiment_latency_p99_seconds",
        "p99 server time of the arm's recent requests (up to 4096)",
    ),
    (
        "experiment_impressions",
        "Impression events attributed to the arm since start",
    ),
    (
        "experiment_clicks",
        "Engagement events (positive-weight types) attributed to the arm since start",
    ),
    ("experiment_ctr", "clicks / impressions of the arm"),
    (
        "experiment_shadow_runs",
        "Shadow runs of the arm (shadow arms only)",
    ),
    (
        "experiment_shadow_dropped",
        "Shadow runs sampled but dropped under load (shadow arms only)",
    ),
    (
        "experiment_shadow_overlap",
        "Mean overlap@k of the shadow arm's list with the served one",
    ),
];

/// One arm's figures for [`Metrics::set_arms`], in [`ARM_FIGURES`] order.
pub struct ArmFigures {
    pub experiment: String,
    pub arm: String,
    pub values: [f64; ARM_FIGURES.len()],
}

/// Every metric the engine exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RouteStatus, Counter>,
    http_latency: Latencies<RouteLabel>,
    stage_latency: Latencies<StageLabel>,
    source_latency: Latencies<SourceLabel>,
    source_candidates: Family<SourceLabel, Histogram, fn() -> Histogram>,
    responses: Family<DegradationLabel, Counter>,
    ensemble_members: Histogram,
    model_latency: Latencies<ModelLabel>,
    model_failures: Family<ModelLabel, Counter>,
    breaker_state: Family<BreakerLabel, Gauge>,
    redis_errors: Family<KindLabel, Counter>,
    events: Family<OutcomeLabel, Counter>,
    bundle_info: Family<VersionLabel, Gauge>,
    skew_psi: Family<FeatureLabel, FloatGauge>,
    skew_null_diff: Family<FeatureLabel, FloatGauge>,
    skew_alarm: Family<FeatureLabel, Gauge>,
    skew_rows: Gauge,
    admission_in_flight: Gauge,
    admission_queue: Gauge,
    admission_shed: Family<ReasonLabel, Counter>,
    admission_shed_latency: Histogram,
    bundle_reloads: Family<ResultLabel, Counter>,
    bundle_loaded: Gauge,
    /// Per experiment arm, set from the experiment's own counters at each scrape.
    arm_figures: [Family<ArmLabel, FloatGauge>; ARM_FIGURES.len()],
    /// Off (`monitor.metrics = false`): every observe call returns at once.
    recording: bool,
}

impl Metrics {
    /// A fresh registry; `log_commit` is the event log's commit histogram, when there is a log.
    /// With `recording` false nothing is counted (for measuring what counting costs).
    pub fn new(bundle_version: &str, log_commit: Option<Histogram>, recording: bool) -> Metrics {
        let mut registry = Registry::with_prefix("funnel");
        let m = Metrics {
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(latency_histogram),
            stage_latency: Family::new_with_constructor(latency_histogram),
            source_latency: Family::new_with_constructor(latency_histogram),
            source_candidates: Family::new_with_constructor(candidate_histogram),
            responses: Family::default(),
            ensemble_members: Histogram::new(MEMBER_BUCKETS),
            model_latency: Family::new_with_constructor(latency_histogram),
            model_failures: Family::default(),
            breaker_state: Family::default(),
            redis_errors: Family::default(),
            events: Family::default(),
            bundle_info: Family::default(),
            skew_psi: Family::default(),
            skew_null_diff: Family::default(),
            skew_alarm: Family::default(),
            skew_rows: Gauge::default(),
            admission_in_flight: Gauge::default(),
            admission_queue: Gauge::default(),
            admission_shed: Family::default(),
            admission_shed_latency: latency_histogram(),
            bundle_reloads: Family::default(),
            bundle_loaded: Gauge::default(),
            arm_figures: Default::default(),
            registry: Registry::default(),
            recording,
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route",
            Unit::Seconds,
            m.http_latency.clone(),
        );
        r.register_with_unit(
            "stage_duration",
            "Time of each pipeline stage of /v1/recommend (total: the whole pipeline)",
            Unit::Seconds,
            m.stage_latency.clone(),
        );
        r.register_with_unit(
            "source_duration",
            "Wall time of each candidate source, from its launch",
            Unit::Seconds,
            m.source_latency.clone(),
        );
        r.register(
            "source_candidates",
            "Candidates each source returned for one request",
            m.source_candidates.clone(),
        );
        r.register(
            "responses",
            "Recommendations answered, by degradation level",
            m.responses.clone(),
        );
        r.register(
            "ensemble_members",
            "Ranker models that scored one request (0: none did)",
            m.ensemble_members.clone(),
        );
        r.register_with_unit(
            "model_duration",
            "One ranker model's scoring time for one request",
            Unit::Seconds,
            m.model_latency.clone(),
        );
        r.register(
            "model_failures",
            "Selected ranker models that gave no scores (error, panic, timeout)",
            m.model_failures.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker state per dependency: 0 closed, 1 half open, 2 open",
            m.breaker_state.clone(),
        );
        r.register(
            "redis_errors",
            "Redis calls on the request path that failed (error) or did not answer in time (timeout)",
            m.redis_errors.clone(),
        );
        r.register(
            "events",
            "Events posted to /v1/events, by outcome",
            m.events.clone(),
        );
        if let Some(h) = log_commit {
            r.register_with_unit(
                "event_log_sync",
                "Event log group commit time (append and sync per the fsync policy)",
                Unit::Seconds,
                h,
            );
        }
        r.register(
            "bundle_info",
            "The bundle version being served (value 1)",
            m.bundle_info.clone(),
        );
        r.register(
            "skew_psi",
            "Population stability index of a ranker input, served (sliding window) vs training",
            m.skew_psi.clone(),
        );
        r.register(
            "skew_null_rate_diff",
            "Served minus training share of rows where a ranker input is missing (encoded 0)",
            m.skew_null_diff.clone(),
        );
        r.register(
            "skew_alarm",
            "1 when a ranker input is over its skew threshold",
            m.skew_alarm.clone(),
        );
        r.register(
            "skew_sampled_rows",
            "Ranker input rows in the skew monitor's window",
            m.skew_rows.clone(),
        );
        r.register(
            "admission_in_flight",
            "Recommend requests in the pipeline now (admission control)",
            m.admission_in_flight.clone(),
        );
        r.register(
            "admission_queued",
            "Recommend requests waiting for an admission slot now",
            m.admission_queue.clone(),
        );
        r.register(
            "admission_shed",
            "Recommend requests answered 503 overloaded, by reason (queue_full, predicted_wait, queue_timeout)",
            m.admission_shed.clone(),
        );
        r.register_with_unit(
            "admission_shed_duration",
            "Server time from a recommend request's admission to its 503 overloaded",
            Unit::Seconds,
            m.admission_shed_latency.clone(),
        );
        r.register(
            "bundle_reloads",
            "Bundle version changes asked for (reload, rollback, pin), by result (swapped, unchanged, refused)",
            m.bundle_reloads.clone(),
        );
        r.register(
            "bundle_versions_loaded",
            "Bundle versions held in memory (the served one and those kept for rollback or pins)",
            m.bundle_loaded.clone(),
        );
        for ((name, help), family) in ARM_FIGURES.iter().zip(&m.arm_figures) {
            r.register(*name, *help, family.clone());
        }
        m.bundle_info
            .get_or_create(&VersionLabel {
                version: bundle_version.to_string(),
            })
            .set(1);
        m.bundle_loaded.set(1);
        Metrics { registry, ..m }
    }

    /// The served bundle version changed (a hot reload, rollback or pin).
    pub fn set_bundle_version(&self, version: &str) {
        self.bundle_info.clear();
        self.bundle_info
            .get_or_create(&VersionLabel {
                version: version.to_string(),
            })
            .set(1);
        // Breakers and skew inputs are the served version's: the old version's series go.
        self.breaker_state.clear();
        self.skew_psi.clear();
        self.skew_null_diff.clear();
        self.skew_alarm.clear();
    }

    /// The experiment's per-arm figures, set before a scrape renders them.
    pub fn set_arms(&self, arms: &[ArmFigures]) {
        for a in arms {
            let label = ArmLabel {
                experiment: a.experiment.clone(),
                arm: a.arm.clone(),
            };
            for (family, v) in self.arm_figures.iter().zip(a.values) {
                family.get_or_create(&label).set(v);
            }
        }
    }

    /// Bundle versions held in memory now.
    pub fn versions_loaded(&self, n: usize) {
        self.bundle_loaded.set(n as i64);
    }

    /// One asked-for version change: `result` is swapped, unchanged or refused.
    pub fn observe_reload(&self, result: &'static str, loaded: usize) {
        self.bundle_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
        self.bundle_loaded.set(loaded as i64);
    }

    /// One answered HTTP request. `route` is the matched route template (bounded label values).
    pub fn observe_http(&self, route: &'static str, status: u16, seconds: f64) {
        if !self.recording {
            return;
        }
        self.http_requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
        self.http_latency
            .get_or_create(&RouteLabel { route })
            .observe(seconds);
    }

    /// One pipeline run: its stages, the sources' times and counts, its degradation and the
    /// ensemble that ranked it.
    pub fn observe_run(&self, run: &RunSummary<'_>) {
        if !self.recording {
            return;
        }
        for s in run.stages {
            self.stage_latency
                .get_or_create(&StageLabel {
                    stage: s.stage.clone(),
                })
                .observe(s.ms / 1e3);
        }
        self.stage_latency
            .get_or_create(&StageLabel {
                stage: "total".into(),
            })
            .observe(run.total_ms / 1e3);
        for (source, ms) in run.source_ms {
            // 0 = the source was not called for this request (not configured or skipped).
            if *ms > 0.0 {
                self.source_latency
                    .get_or_create(&SourceLabel {
                        source: source.clone(),
                    })
                    .observe(ms / 1e3);
            }
        }
        for (source, n) in run.per_source {
            self.source_candidates
                .get_or_create(&SourceLabel {
                    source: source.clone(),
                })
                .observe(*n as f64);
        }
        self.responses
            .get_or_create(&DegradationLabel {
                degradation: run.degradation.as_str(),
            })
            .inc();
        let mut members = 0u32;
        if let Some(ens) = run.ensemble {
            for sel in &ens.selected {
                let label = ModelLabel {
                    model: sel.model_id.clone(),
                };
                match (sel.took_ms, &sel.failed) {
                    (Some(ms), None) => {
                        members += 1;
                        self.model_latency.get_or_create(&label).observe(ms / 1e3);
                    }
                    _ => {
                        self.model_failures.get_or_create(&label).inc();
                    }
                }
            }
        }
        self.ensemble_members.observe(f64::from(members));
    }

    /// A request took an admission slot.
    pub fn admission_entered(&self) {
        if self.recording {
            self.admission_in_flight.inc();
        }
    }

    /// A request gave its admission slot back.
    pub fn admission_left(&self) {
        if self.recording {
            self.admission_in_flight.dec();
        }
    }

    /// The admission queue grew (+1) or shrank (-1).
    pub fn admission_queued(&self, delta: i64) {
        if self.recording {
            self.admission_queue.inc_by(delta);
        }
    }

    /// A request shed by admission control, `seconds` after it reached admission.
    pub fn observe_shed(&self, reason: &'static str, seconds: f64) {
        if self.recording {
            self.admission_shed
                .get_or_create(&ReasonLabel { reason })
                .inc();
            self.admission_shed_latency.observe(seconds);
        }
    }

    pub fn observe_redis_failure(&self, failure: RedisFailure) {
        if !self.recording {
            return;
        }
        let kind = match failure {
            RedisFailure::Error => "error",
            RedisFailure::Timeout => "timeout",
        };
        self.redis_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn observe_events(&self, accepted: usize, duplicate: usize, rejected: usize) {
        if !self.recording {
            return;
        }
        for (outcome, n) in [
            ("accepted", accepted),
            ("duplicate", duplicate),
            ("rejected", rejected),
        ] {
            self.events
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n as u64);
        }
    }

    /// Renders every metric after setting the state gauges: `breakers` as (name, state name),
    /// `skew` the monitor's figures and its window size.
    pub fn render(
        &self,
        breakers: &[(String, &'static str)],
        skew: &[SkewGauge],
        rows: u64,
    ) -> String {
        for (name, state) in breakers {
            let v = match *state {
                "closed" => 0,
                "half_open" => 1,
                _ => 2,
            };
            self.breaker_state
                .get_or_create(&BreakerLabel {
                    breaker: name.clone(),
                })
                .set(v);
        }
        for g in skew {
            let label = FeatureLabel {
                feature: g.feature.clone(),
            };
            self.skew_psi.get_or_create(&label).set(g.psi);
            self.skew_null_diff
                .get_or_create(&label)
                .set(g.null_rate_diff);
            self.skew_alarm
                .get_or_create(&label)
                .set(i64::from(g.alarm));
        }
        self.skew_rows.set(rows.min(i64::MAX as u64) as i64);
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Only a formatter error can get here; say so in the body rather than fail the scrape.
            out.clear();
            let _ = writeln!(out, "# encoding the metrics failed: {e}\n# EOF");
        }
        out
    }
}

/// What one pipeline run reports to [`Metrics::observe_run`].
pub struct RunSummary<'a> {
    pub stages: &'a [StageReport],
    pub total_ms: f64,
    pub source_ms: &'a std::collections::BTreeMap<String, f64>,
    pub per_source: &'a std::collections::BTreeMap<String, usize>,
    pub degradation: Degradation,
    pub ensemble: Option<&'a EnsembleExplain>,
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SelectedModel;

    #[test]
    fn renders_what_was_observed() {
        let m = Metrics::new("v42", None, true);
        m.observe_http("/v1/recommend", 200, 0.004);
        let stages = vec![StageReport {
            stage: "rank".into(),
            ms: 2.5,
            items_in: 10,
            items_out: 10,
        }];
        let source_ms = [("ann".to_string(), 1.2), ("cf".to_string(), 0.0)]
            .into_iter()
            .collect();
        let per_source = [("ann".to_string(), 100usize)].into_iter().collect();
        let ens = EnsembleExplain {
            selected: vec![
                SelectedModel {
                    model_id: "mlp-v1".into(),
                    took_ms: Some(1.0),
                    ..SelectedModel::default()
                },
                SelectedModel {
                    model_id: "dcn-v1".into(),
                    failed: Some("timeout".into()),
                    ..SelectedModel::default()
                },
            ],
            ..EnsembleExplain::default()
        };
        m.observe_run(&RunSummary {
            stages: &stages,
            total_ms: 4.0,
            source_ms: &source_ms,
            per_source: &per_source,
            degradation: Degradation::StaleFeatures,
            ensemble: Some(&ens),
        });
        m.observe_events(3, 1, 0);
        m.observe_redis_failure(RedisFailure::Timeout);
        let text = m.render(&[("redis".into(), "open")], &[], 0);
        for line in [
            "funnel_http_requests_total{route=\"/v1/recommend\",status=\"200\"} 1",
            "funnel_stage_duration_seconds_count{stage=\"rank\"} 1",
            "funnel_stage_duration_seconds_count{stage=\"total\"} 1",
            "funnel_source_duration_seconds_count{source=\"ann\"} 1",
            "funnel_responses_total{degradation=\"stale_features\"} 1",
            "funnel_ensemble_members_sum 1.0",
            "funnel_model_failures_total{model=\"dcn-v1\"} 1",
            "funnel_model_duration_seconds_count{model=\"mlp-v1\"} 1",
            "funnel_breaker_state{breaker=\"redis\"} 2",
            "funnel_redis_errors_total{kind=\"timeout\"} 1",
            "funnel_events_total{outcome=\"accepted\"} 3",
            "funnel_bundle_info{version=\"v42\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // A source not called is not a 0 ms observation.
        assert!(!text.contains("funnel_source_duration_seconds_count{source=\"cf\"}"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
