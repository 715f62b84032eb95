//! The merge stage: the sources' lists as one de-duplicated, capped candidate set with a bonus
//! for items several sources agree on (the algorithm is [`crate::merge`]).

use crate::merge::{merge, Candidate, MergeConfig};
use crate::sources::{ScoredItem, SourceId};

pub struct MergeStage {
    cfg: MergeConfig,
}

impl MergeStage {
    pub fn new(cfg: &MergeConfig) -> Self {
        MergeStage { cfg: cfg.clone() }
    }

    pub fn run(&self, per_source: &[(SourceId, Vec<ScoredItem>)]) -> Vec<Candidate> {
        merge(per_source, &self.cfg)
    }
}
