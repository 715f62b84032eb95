//! Admission control of `POST /v1/recommend`: a bounded number of requests in the pipeline, a
//! short bounded queue in front of it, and an immediate 503 `overloaded` with `Retry-After` for
//! everything past both. Without it a server past saturation keeps accepting work, every request
//! queues on the CPU pool and all of them miss their deadline; with it the requests it takes are
//! answered in time and the rest learn at once to come back later (or go to another replica).
//!
//! The queue is a semaphore's wait list (FIFO) with a length cap and a per-request wait cap;
//! the wait counts against the request's deadline ([`Arrival`]). A request that would wait longer
//! than the cap — its place in the queue times the recent time per request in the pipeline,
//! divided by the slots — is refused on arrival rather than after the wait, so a refusal costs
//! the client microseconds, not the queue timeout.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::api::{ApiError, ErrorCode};
use crate::config::AdmissionConfig;
use crate::observe::metrics::Metrics;

/// When the request reached admission: the pipeline's deadline counts from here, so time spent
/// queued is not given a second time.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was at its cap.
    QueueFull,
    /// It waited `queue_timeout_ms` without getting a slot.
    QueueTimeout,
    /// Its predicted wait was over `queue_timeout_ms`: refused on arrival.
    WaitTooLong,
}

impl Shed {
    pub fn label(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
            Shed::WaitTooLong => "predicted_wait",
        }
    }
}

/// The in-flight limit and the queue, shared by every connection.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    limit: usize,
    queued: AtomicUsize,
    max_queue: usize,
    queue_timeout: Duration,
    retry_after: HeaderValue,
    retry_after_s: u64,
    /// Moving average of a request's time in the pipeline, in microseconds (0: none yet).
    service_us: AtomicU64,
    metrics: Arc<Metrics>,
}

/// Weight of the newest request in [`Admission::service_us`].
const SERVICE_EWMA: f64 = 0.05;

/// A slot in the pipeline, given back on drop (which records how long it was held).
pub struct Ticket<'a> {
    _permit: tokio::sync::OwnedSemaphorePermit,
    admission: &'a Admission,
    since: Instant,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.admission.metrics.admission_left();
        let us = self.since.elapsed().as_secs_f64() * 1e6;
        let _ =
            self.admission
                .service_us
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    let next = match old {
                        0 => us,
                        o => o as f64 + SERVICE_EWMA * (us - o as f64),
                    };
                    Some((next as u64).max(1))
                });
    }
}

impl Admission {
    pub fn new(cfg: &AdmissionConfig, cpu_threads: usize, metrics: Arc<Metrics>) -> Admission {
        let limit = cfg.in_flight_limit(cpu_threads).max(1);
        Admission {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            queued: AtomicUsize::new(0),
            max_queue: cfg.max_queue,
            queue_timeout: Duration::from_millis(cfg.queue_timeout_ms),
            retry_after: HeaderValue::from(cfg.retry_after_s),
            retry_after_s: cfg.retry_after_s,
            service_us: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Every slot taken or someone waiting: optional work (shadow runs) should stand aside.
    pub fn busy(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0 || self.slots.available_permits() == 0
    }

    /// A slot now, or after a bounded wait in the queue, or the reason there is none.
    pub async fn admit(&self) -> Result<Ticket<'_>, Shed> {
        let ticket = |p| {
            self.metrics.admission_entered();
            Ticket {
                _permit: p,
                admission: self,
                since: Instant::now(),
            }
        };
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(ticket(p));
        }
        // Reserve a queue place first, so the cap holds under any interleaving.
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queue).then_some(q + 1)
            });
        let Ok(ahead) = reserved else {
            return Err(Shed::QueueFull);
        };
        // The slots free up at about `limit` per service time: a request with `ahead` before it
        // waits about (ahead + 1) / limit service times.
        let service = self.service_us.load(Ordering::Relaxed) as f64;
        let predicted_us = (ahead + 1) as f64 * service / self.limit as f64;
        if predicted_us > self.queue_timeout.as_secs_f64() * 1e6 {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::WaitTooLong);
        }
        self.metrics.admission_queued(1);
        let waited =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.metrics.admission_queued(-1);
        match waited {
            Ok(Ok(p)) => Ok(ticket(p)),
            // The semaphore is never closed; a closed one would mean no slot ever again.
            Ok(Err(_)) | Err(_) => Err(Shed::QueueTimeout),
        }
    }

    /// The 503 a shed request gets.
    pub fn refusal(&self, why: Shed) -> Response {
        let message = format!(
            "the server is at capacity ({} requests in flight{}); retry after {} s",
            self.limit,
            match why {
                Shed::QueueFull => format!(", {} queued", self.max_queue),
                Shed::QueueTimeout | Shed::WaitTooLong =>
                    format!(", no slot within {} ms", self.queue_timeout.as_millis()),
            },
            self.retry_after_s
        );
        let mut resp = ApiError::new(ErrorCode::Overloaded, message).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, self.retry_after.clone());
        resp
    }
}

/// The middleware: admits the request (stamping its [`Arrival`]) or sheds it; without
/// admission control (`admission.enabled = false`) it only stamps the arrival.
pub async fn admit(
    State(adm): State<Option<Arc<Admission>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let arrived = Instant::now();
    let ticket = match &adm {
        None => None,
        Some(adm) => match adm.admit().await {
            Ok(ticket) => Some(ticket),
            Err(why) => {
                let resp = adm.refusal(why);
                adm.metrics
                    .observe_shed(why.label(), arrived.elapsed().as_secs_f64());
                return resp;
            }
        },
    };
    req.extensions_mut().insert(Arrival(arrived));
    let resp = next.run(req).await;
    drop(ticket);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(in_flight: usize, queue: usize, timeout_ms: u64) -> Admission {
        let cfg = AdmissionConfig {
            max_in_flight: in_flight,
            max_queue: queue,
            queue_timeout_ms: timeout_ms,
            ..AdmissionConfig::default()
        };
        Admission::new(&cfg, 2, Arc::new(Metrics::new("v", None, true)))
    }

    #[tokio::test]
    async fn sheds_past_in_flight_and_queue() {
        let adm = Arc::new(admission(2, 1, 10_000));
        let a = adm.admit().await.unwrap();
        let _b = adm.admit().await.unwrap();
        // The third waits in the queue; the fourth finds it full.
        let waiting = tokio::spawn({
            let adm = adm.clone();
            async move { adm.admit().await.is_ok() }
        });
        while adm.queued.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(adm.admit().await.err(), Some(Shed::QueueFull));
        drop(a);
        assert!(
            waiting.await.unwrap(),
            "the queued request gets the freed slot"
        );
    }

    #[tokio::test]
    async fn queued_request_times_out() {
        let adm = admission(1, 4, 20);
        let _a = adm.admit().await.unwrap();
        let t = Instant::now();
        assert_eq!(adm.admit().await.err(), Some(Shed::QueueTimeout));
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert_eq!(adm.queued.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_long_predicted_wait_is_refused_on_arrival() {
        let adm = admission(1, 8, 50);
        // Requests have been taking 40 ms in the pipeline.
        adm.service_us.store(40_000, Ordering::Relaxed);
        let _a = adm.admit().await.unwrap();
        let t = Instant::now();
        // First in the queue: about 40 ms, under the 50 ms cap, so it waits (and times out, as
        // the slot is never freed here).
        assert_eq!(adm.admit().await.err(), Some(Shed::QueueTimeout));
        assert!(t.elapsed() >= Duration::from_millis(50));
        // Second in line (one already queued): about 80 ms, refused at once.
        adm.queued.store(1, Ordering::Relaxed);
        let t = Instant::now();
        assert_eq!(adm.admit().await.err(), Some(Shed::WaitTooLong));
        assert!(t.elapsed() < Duration::from_millis(20));
        assert_eq!(
            adm.queued.load(Ordering::Relaxed),
            1,
            "its reservation is given back"
        );
    }

    #[tokio::test]
    async fn service_time_is_learned_from_tickets() {
        let adm = admission(2, 0, 50);
        let t = adm.admit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(t);
        let us = adm.service_us.load(Ordering::Relaxed);
        assert!(us >= 5_000, "{us}");
    }

    #[tokio::test]
    async fn no_queue_sheds_at_once() {
        let adm = admission(1, 0, 1_000);
        let _a = adm.admit().await.unwrap();
        assert_eq!(adm.admit().await.err(), Some(Shed::QueueFull));
    }

    #[test]
    fn auto_limit_scales_with_cores() {
        let cfg = AdmissionConfig::default();
        assert_eq!(cfg.in_flight_limit(2), 32);
        let pinned = AdmissionConfig {
            max_in_flight: 5,
            ..cfg
        };
        assert_eq!(pinned.in_flight_limit(64), 5);
    }

    #[tokio::test]
    async fn refusal_is_503_json_with_retry_after() {
        let adm = admission(1, 0, 10);
        let resp = adm.refusal(Shed::QueueFull);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "overloaded");
    }
}
