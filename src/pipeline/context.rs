//! The request context stage: a validated request resolved against the bundle once — deadline,
//! "now", dense item indices of the session and exclusions, the device, the item filter — so
//! every later stage reads the same facts.

use std::time::{Duration, Instant};

use crate::api::{ApiError, Filters, ValidRequest};
use crate::bundle::Bundle;
use crate::config::{BudgetConfig, Clock};
use crate::ranking::input::DeviceKind;
use crate::rerank::ItemFilter;
use crate::ItemIdx;

/// Everything later stages need to know about the request.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub started: Instant,
    /// The request's end: the smaller of the client's deadline and the configured budget.
    pub deadline: Instant,
    pub k: usize,
    pub now: i64,
    pub user_id: Option<u64>,
    pub session: Vec<ItemIdx>,
    pub exclude: Vec<ItemIdx>,
    pub device: DeviceKind,
    pub filter: ItemFilter,
    pub explain: bool,
}

/// Resolves requests; owns the end-to-end budget and the clock setting.
pub struct RequestStage {
    total_ms: u64,
    clock: Clock,
    /// The bundle's data cutoff (unix seconds), when it records one.
    cutoff: Option<i64>,
}

impl RequestStage {
    pub fn new(budget: &BudgetConfig, clock: Clock, bundle: &Bundle) -> Self {
        RequestStage {
            total_ms: budget.total_ms,
            clock,
            cutoff: bundle.manifest.info.get("cutoff").and_then(|v| v.as_i64()),
        }
    }

    pub fn resolve(
        &self,
        bundle: &Bundle,
        req: &ValidRequest,
        started: Instant,
    ) -> Result<RequestCtx, ApiError> {
        let total_ms = req
            .deadline_ms
            .map_or(self.total_ms, |d| d.min(self.total_ms));
        let catalog = &bundle.catalog;
        let indices = |ids: &[u64]| -> Vec<ItemIdx> {
            ids.iter().filter_map(|&id| catalog.idx(id)).collect()
        };
        Ok(RequestCtx {
            started,
            deadline: started + Duration::from_millis(total_ms),
            k: req.k as usize,
            now: self.now(req.timestamp),
            user_id: req.user_id.as_u64(),
            session: indices(&req.context.session_items),
            exclude: indices(&req.exclude_items),
            device: req
                .context
                .device
                .as_deref()
                .map(DeviceKind::parse)
                .unwrap_or_default(),
            filter: resolve_filter(bundle, &req.filters, req.published_after)?,
            explain: req.explain,
        })
    }

    /// The request's own time, else the configured clock.
    pub fn now(&self, timestamp: Option<i64>) -> i64 {
        if let Some(t) = timestamp {
            return t;
        }
        match (self.clock, self.cutoff) {
            (Clock::Bundle, Some(c)) => c,
            _ => chrono::Utc::now().timestamp(),
        }
    }
}

/// Resolves the request's filter to catalog indices. An unknown category in `categories_any`
/// is a client error (it could only ever match nothing); in `categories_none` it is harmless.
pub fn resolve_filter(
    bundle: &Bundle,
    f: &Filters,
    published_after: Option<i64>,
) -> Result<ItemFilter, ApiError> {
    let any = match &f.categories_any {
        Some(names) => {
            let mut idx = Vec::with_capacity(names.len());
            for n in names {
                match bundle.catalog.category_idx(n) {
                    Some(c) => idx.push(c),
                    None => {
                        let some: Vec<&str> = bundle
                            .catalog
                            .categories
                            .iter()
                            .take(8)
                            .map(String::as_str)
                            .collect();
                        return Err(ApiError::invalid(format!(
                            "filters.categories_any: unknown category {n:?} (known include {some:?})"
                        )));
                    }
                }
            }
            Some(idx)
        }
        None => None,
    };
    Ok(ItemFilter {
        categories_any: any,
        categories_none: f
            .categories_none
            .iter()
            .filter_map(|n| bundle.catalog.category_idx(n))
            .collect(),
        creators_none: f.creators_none.iter().copied().collect(),
        published_after,
    })
}
