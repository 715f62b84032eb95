//! The sources' query: the user's online features and session turned into what retrieval reads
//! (query embedding, recent items, category preferences), plus the seen set and the filter that
//! decide what any stage may serve.

use std::collections::HashSet;

use crate::bundle::Bundle;
use crate::features::online::UserFeatures;
use crate::rerank::{ItemFacts, ItemFilter};
use crate::sources::ann::dot;
use crate::sources::RetrievalQuery;
use crate::ItemIdx;

/// How many of the newest streamed (post-build) engagements join the session in the query.
pub const STREAM_QUERY_ITEMS: usize = 10;

/// What the sources need, owned so it can travel to the CPU pool.
#[derive(Debug, Clone, Default)]
pub struct QueryState {
    /// ANN query: user embedding blended with the session's items.
    pub embedding: Option<Vec<f32>>,
    /// Newest first: session items, then streamed engagements, then the build's recent items.
    pub recent: Vec<ItemIdx>,
    /// Per category (catalog order); empty when nothing is known.
    pub prefs: Vec<f32>,
    pub seen: HashSet<ItemIdx>,
    pub filter: ItemFilter,
}

impl QueryState {
    /// What a source may propose: known, not flagged in the bundle, unseen, passing the filter.
    pub fn allows(&self, bundle: &Bundle, i: ItemIdx) -> bool {
        if self.seen.contains(&i) {
            return false;
        }
        bundle.catalog.get(i).is_some_and(|it| {
            !it.flagged
                && self.filter.allows(&ItemFacts {
                    flagged: false,
                    promoted: it.promoted,
                    published_at: it.published_at,
                    categories: &it.categories,
                    creator_id: it.creator_id,
                })
        })
    }

    /// The sources' view of this query; `allow` is usually `|i| self.allows(bundle, i)`.
    pub fn retrieval<'a>(
        &'a self,
        allow: &'a (dyn Fn(ItemIdx) -> bool + Sync),
    ) -> RetrievalQuery<'a> {
        RetrievalQuery {
            embedding: self.embedding.as_deref(),
            recent_items: &self.recent,
            category_prefs: &self.prefs,
            allow,
        }
    }
}

/// Builds the sources' query state for a user (`features` None = cold or unknown user).
pub fn query_state(
    bundle: &Bundle,
    features: Option<&UserFeatures>,
    session: &[ItemIdx],
    exclude: &[ItemIdx],
    filter: ItemFilter,
    session_blend: f32,
) -> QueryState {
    let n_cat = bundle.catalog.categories.len();
    // What the user did since the build (event ingestion) counts like the session: it feeds the
    // ANN query and, for a user without preferences, the content query.
    let streamed: Vec<ItemIdx> = features
        .map(|f| {
            f.stream_recent
                .iter()
                .filter_map(|&id| bundle.catalog.idx(id))
                .collect()
        })
        .unwrap_or_default();
    let mut context: Vec<ItemIdx> = session.to_vec();
    for &i in streamed.iter().take(STREAM_QUERY_ITEMS) {
        if !context.contains(&i) {
            context.push(i);
        }
    }
    let session = context.as_slice();
    let recent_hist: Vec<ItemIdx> = features
        .map(|f| {
            f.recent_items
                .iter()
                .filter_map(|&id| bundle.catalog.idx(id))
                .collect()
        })
        .unwrap_or_default();
    let mut recent = Vec::with_capacity(session.len() + streamed.len() + recent_hist.len());
    let mut dedup = HashSet::new();
    for &i in session.iter().chain(&streamed).chain(&recent_hist) {
        if dedup.insert(i) {
            recent.push(i);
        }
    }

    // ANN query: the user's embedding, pulled towards what the session is about.
    let user = features
        .and_then(|f| f.embedding.as_deref())
        .filter(|e| e.len() == bundle.dim);
    let session_mean = mean_embedding(bundle, session);
    let embedding = match (user, session_mean) {
        (Some(u), Some(mut s)) if session_blend > 0.0 => {
            let (nu, ns) = (dot(u, u).sqrt(), dot(&s, &s).sqrt());
            let scale = if ns > 0.0 { nu / ns } else { 0.0 };
            for (x, &ui) in s.iter_mut().zip(u) {
                *x = (1.0 - session_blend) * ui + session_blend * *x * scale;
            }
            Some(s)
        }
        (Some(u), _) => Some(u.to_vec()),
        (None, Some(s)) => Some(s),
        (None, None) => None,
    };

    let mut prefs = vec![0.0f32; n_cat];
    let mut any_pref = false;
    if let Some(f) = features {
        for (name, &w) in &f.category_prefs {
            if let Some(c) = bundle.catalog.category_idx(name) {
                if w.is_finite() && w > 0.0 {
                    prefs[c as usize] = w;
                    any_pref = true;
                }
            }
        }
    }
    if !any_pref && !session.is_empty() {
        // A cold user with a session: what the session is about.
        for &i in session {
            if let Some(it) = bundle.catalog.get(i) {
                let w = 1.0 / it.categories.len().max(1) as f32;
                for &c in &it.categories {
                    if let Some(p) = prefs.get_mut(c as usize) {
                        *p += w;
                        any_pref = true;
                    }
                }
            }
        }
    }
    if let Some(only) = &filter.categories_any {
        // Only the allowed categories can yield items: spend the content quota on them, keeping
        // the user's order among them.
        let keep: HashSet<u32> = only.iter().copied().collect();
        for (c, p) in prefs.iter_mut().enumerate() {
            if keep.contains(&(c as u32)) {
                *p = p.max(1e-3);
            } else {
                *p = 0.0;
            }
        }
        any_pref = true;
    }

    let mut seen: HashSet<ItemIdx> = recent.iter().copied().collect();
    seen.extend(exclude.iter().copied());
    if let Some(f) = features {
        seen.extend(f.seen.iter().filter_map(|&id| bundle.catalog.idx(id)));
    }
    QueryState {
        embedding,
        recent,
        prefs: if any_pref { prefs } else { Vec::new() },
        seen,
        filter,
    }
}

fn mean_embedding(bundle: &Bundle, items: &[ItemIdx]) -> Option<Vec<f32>> {
    let mut acc = vec![0.0f32; bundle.dim];
    let mut n = 0;
    for &i in items {
        if let Some(e) = bundle.item_embedding(i) {
            acc.iter_mut().zip(e).for_each(|(a, x)| *a += x);
            n += 1;
        }
    }
    (n > 0).then(|| {
        acc.iter_mut().for_each(|a| *a /= n as f32);
        acc
    })
}
