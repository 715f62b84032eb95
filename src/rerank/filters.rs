//! Filters: the request's restrictions on what may be returned ("only comedies", "nothing from
//! this creator", "published after"). The sources honour the same filter while retrieving, so a
//! narrow filter still fills the list; this rule is the guarantee.

use std::collections::HashSet;

use super::{ItemFacts, Ranked, RerankContext, RerankRule};

/// A request's item filter, resolved to catalog indices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemFilter {
    /// The item must have at least one of these categories.
    pub categories_any: Option<Vec<u32>>,
    /// The item must have none of these categories.
    pub categories_none: Vec<u32>,
    pub creators_none: HashSet<u64>,
    /// Unix seconds; the item must be published strictly after it.
    pub published_after: Option<i64>,
}

impl ItemFilter {
    pub fn is_empty(&self) -> bool {
        self.categories_any.is_none()
            && self.categories_none.is_empty()
            && self.creators_none.is_empty()
            && self.published_after.is_none()
    }

    pub fn allows(&self, f: &ItemFacts<'_>) -> bool {
        if let Some(any) = &self.categories_any {
            if !f.categories.iter().any(|c| any.contains(c)) {
                return false;
            }
        }
        if f.categories
            .iter()
            .any(|c| self.categories_none.contains(c))
        {
            return false;
        }
        if self.creators_none.contains(&f.creator_id) {
            return false;
        }
        self.published_after.is_none_or(|t| f.published_at > t)
    }
}

pub struct ApplyFilters;

impl RerankRule for ApplyFilters {
    fn name(&self) -> &'static str {
        "filters"
    }

    fn apply(&self, ctx: &RerankContext<'_>, list: &mut Vec<Ranked>) {
        if ctx.filter.is_empty() {
            return;
        }
        list.retain(|r| {
            ctx.items
                .facts(r.item)
                .is_some_and(|f| ctx.filter.allows(&f))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cats: &[u32], creator: u64, t: i64) -> ItemFacts<'_> {
        ItemFacts {
            flagged: false,
            promoted: false,
            published_at: t,
            categories: cats,
            creator_id: creator,
        }
    }

    #[test]
    fn each_clause_restricts() {
        let f = ItemFilter {
            categories_any: Some(vec![1, 2]),
            categories_none: vec![3],
            creators_none: [9].into_iter().collect(),
            published_after: Some(100),
        };
        assert!(f.allows(&facts(&[2], 1, 101)));
        assert!(!f.allows(&facts(&[4], 1, 101)), "not in any");
        assert!(!f.allows(&facts(&[2, 3], 1, 101)), "in none");
        assert!(!f.allows(&facts(&[2], 9, 101)), "creator");
        assert!(!f.allows(&facts(&[2], 1, 100)), "published too early");
        assert!(ItemFilter::default().allows(&facts(&[], 9, 0)));
    }
}
