//! How stages report: one [`StageReport`] per stage (time, items in and out), kept in run order
//! for `explain.stages` and the response's timings.

use std::time::{Duration, Instant};

use crate::api::StageReport;

/// Milliseconds with microsecond resolution, as responses report them.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The reports of one request's stages.
#[derive(Debug, Default)]
pub struct Reports {
    pub stages: Vec<StageReport>,
}

impl Reports {
    /// Records a stage that started at `since`; returns its time in ms.
    pub fn stage(&mut self, stage: &str, since: Instant, items_in: usize, items_out: usize) -> f64 {
        let t = ms(since.elapsed());
        self.stages.push(StageReport {
            stage: stage.to_string(),
            ms: t,
            items_in,
            items_out,
        });
        t
    }
}
