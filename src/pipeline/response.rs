//! The response stage: the re-ranked list as the API's items (ids, scores, provenance, and with
//! `explain` the reasons and each model's score).

use std::collections::HashMap;

use crate::api::ItemOut;
use crate::catalog::Catalog;
use crate::merge::Candidate;
use crate::rerank::{Origin, Ranked};
use crate::sources::SourceId;
use crate::ItemIdx;

/// `confidence` and each of `model_scores` are per candidate, in `cands` order.
pub fn items(
    catalog: &Catalog,
    list: Vec<Ranked>,
    cands: &[Candidate],
    confidence: &[f32],
    model_scores: &[(String, Vec<f32>)],
    explain: bool,
) -> Vec<ItemOut> {
    let position: HashMap<ItemIdx, usize> =
        cands.iter().enumerate().map(|(p, c)| (c.item, p)).collect();
    list.into_iter()
        .filter_map(|r| {
            let at = position.get(&r.item).copied();
            let it = catalog.get(r.item)?;
            let mut sources: Vec<String> = SourceId::ALL
                .iter()
                .filter(|s| r.source_mask & (1 << s.index()) != 0)
                .map(|s| s.name().to_string())
                .collect();
            match r.origin {
                Origin::Retrieval => {}
                Origin::Batch => sources.push("batch".into()),
                Origin::Popularity => sources.push("popularity".into()),
            }
            let reasons = explain.then(|| {
                let mut why: Vec<String> = Vec::new();
                if r.source_mask.count_ones() >= 2 {
                    why.push("multi_source".into());
                }
                why.extend(r.reasons.iter().map(|s| s.to_string()));
                why
            });
            let model_scores = (explain && !model_scores.is_empty()).then(|| {
                model_scores
                    .iter()
                    .filter_map(|(id, s)| Some((id.clone(), *s.get(at?)?)))
                    .collect()
            });
            Some(ItemOut {
                item_id: it.id,
                score: if r.score.is_finite() { r.score } else { 0.0 },
                sources,
                confidence: at.and_then(|p| confidence.get(p).copied()).unwrap_or(0.0),
                reasons,
                model_scores,
            })
        })
        .collect()
}
