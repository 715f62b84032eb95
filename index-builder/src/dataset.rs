//! The indexed dataset a build works on: raw interactions and catalog rows resolved to dense user
//! and item indices, confidence weights resolved, catalog defaults applied (as feature-defs
//! declare them), events sorted by time.

use std::collections::{BTreeSet, HashMap};

use funnel::catalog::{Catalog, Item};
use funnel::features::{FeatureRegistry, FeatureValue};
use funnel::{ItemIdx, UserIdx};

use crate::ingest::{RawInteraction, RawItem};

/// One interaction with dense indices and a confidence weight (> 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub user: UserIdx,
    pub item: ItemIdx,
    pub ts: i64,
    pub weight: f32,
}

pub struct Dataset {
    pub user_ids: Vec<u64>,
    pub user_index: HashMap<u64, UserIdx>,
    pub catalog: Catalog,
    /// Sorted by (ts, user, item).
    pub events: Vec<Event>,
    /// Interactions dropped because their weight resolved to zero (e.g. bare impressions).
    pub dropped_zero_weight: usize,
    /// Items seen in interactions but absent from the catalog (given default metadata).
    pub items_without_metadata: usize,
}

/// Confidence weight of an interaction: explicit weight, else by event type, else by rating, else 1.
pub fn resolve_weight(r: &RawInteraction) -> f32 {
    if let Some(w) = r.weight {
        return w.max(0.0);
    }
    if let Some(t) = &r.event_type {
        // The server's table (so logged and served weights agree); other types count once.
        return funnel::events::type_weight(t).unwrap_or(1.0);
    }
    if let Some(rating) = r.rating {
        // Explicit ratings become implicit positives whose confidence grows with the rating.
        return 0.5 + rating.clamp(0.0, 5.0) / 5.0;
    }
    1.0
}

/// Catalog values for columns an input lacks, as feature-defs declare them for the item features.
#[derive(Debug, Clone, Default)]
pub struct CatalogDefaults {
    pub categories: Vec<String>,
    pub creator_id: u64,
    pub published_at: i64,
    pub flagged: bool,
    pub promoted: bool,
}

impl CatalogDefaults {
    pub fn from_registry(reg: &FeatureRegistry) -> Self {
        let d = |name: &str| reg.default_of(name);
        Self {
            categories: match d("categories") {
                Some(FeatureValue::StringList(v)) => v.clone(),
                _ => Vec::new(),
            },
            creator_id: d("creator_id")
                .and_then(|v| v.as_i64())
                .map(|v| v.max(0) as u64)
                .unwrap_or(0),
            published_at: match d("published_at") {
                Some(FeatureValue::Timestamp(t)) | Some(FeatureValue::I64(t)) => *t,
                _ => 0,
            },
            flagged: d("flagged").and_then(|v| v.as_bool()).unwrap_or(false),
            promoted: d("promoted").and_then(|v| v.as_bool()).unwrap_or(false),
        }
    }
}

impl Dataset {
    /// Indexes the inputs. Columns an input lacks take `defaults`, except a missing publish time,
    /// which becomes the item's first interaction (an item cannot be consumed before it exists;
    /// that beats a constant for freshness) and the declared default only for items never seen.
    pub fn build(
        raw: Vec<RawInteraction>,
        items: Option<Vec<RawItem>>,
        defaults: &CatalogDefaults,
    ) -> Self {
        // Item order: every catalog item and every interacted item, by id (deterministic).
        let mut meta: HashMap<u64, RawItem> = HashMap::new();
        for it in items.unwrap_or_default() {
            meta.insert(it.item_id, it);
        }
        let mut item_ids: BTreeSet<u64> = meta.keys().copied().collect();
        let mut first_seen: HashMap<u64, i64> = HashMap::new();
        for r in &raw {
            item_ids.insert(r.item_id);
            let e = first_seen.entry(r.item_id).or_insert(r.timestamp);
            *e = (*e).min(r.timestamp);
        }
        let mut cat_names: BTreeSet<String> = BTreeSet::new();
        for c in &defaults.categories {
            cat_names.insert(c.clone());
        }
        for it in meta.values() {
            for c in &it.categories {
                if !c.is_empty() {
                    cat_names.insert(c.clone());
                }
            }
        }
        let categories: Vec<String> = cat_names.into_iter().collect();
        let cat_index: HashMap<&str, u32> = categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u32))
            .collect();
        let mut items_without_metadata = 0;
        let cat_ids = |names: &[String]| -> Vec<u32> {
            let mut v: Vec<u32> = names
                .iter()
                .filter_map(|c| cat_index.get(c.as_str()).copied())
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let catalog_items: Vec<Item> = item_ids
            .iter()
            .map(|&id| match meta.get(&id) {
                Some(m) => {
                    let cats = if m.categories.is_empty() {
                        cat_ids(&defaults.categories)
                    } else {
                        cat_ids(&m.categories)
                    };
                    Item {
                        id,
                        title: m.title.clone(),
                        categories: cats,
                        creator_id: m.creator_id.unwrap_or(defaults.creator_id),
                        published_at: m
                            .published_at
                            .or_else(|| first_seen.get(&id).copied())
                            .unwrap_or(defaults.published_at),
                        flagged: m.policy_flag,
                        promoted: m.promoted,
                    }
                }
                None => {
                    items_without_metadata += 1;
                    Item {
                        id,
                        title: String::new(),
                        categories: cat_ids(&defaults.categories),
                        creator_id: defaults.creator_id,
                        published_at: first_seen
                            .get(&id)
                            .copied()
                            .unwrap_or(defaults.published_at),
                        flagged: defaults.flagged,
                        promoted: defaults.promoted,
                    }
                }
            })
            .collect();
        let catalog = Catalog::new(catalog_items, categories);

        let mut user_ids: Vec<u64> = raw.iter().map(|r| r.user_id).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let user_index: HashMap<u64, UserIdx> = user_ids
            .iter()
            .enumerate()
            .map(|(i, &u)| (u, i as UserIdx))
            .collect();
        let mut dropped_zero_weight = 0;
        let mut events: Vec<Event> = Vec::with_capacity(raw.len());
        for r in &raw {
            let weight = resolve_weight(r);
            if weight <= 0.0 || !weight.is_finite() {
                dropped_zero_weight += 1;
                continue;
            }
            // Both lookups succeed by construction; skip defensively rather than panic.
            let (Some(&user), Some(item)) = (user_index.get(&r.user_id), catalog.idx(r.item_id))
            else {
                continue;
            };
            events.push(Event {
                user,
                item,
                ts: r.timestamp,
                weight,
            });
        }
        events.sort_by_key(|e| (e.ts, e.user, e.item));
        Dataset {
            user_ids,
            user_index,
            catalog,
            events,
            dropped_zero_weight,
            items_without_metadata,
        }
    }

    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }

    pub fn n_items(&self) -> usize {
        self.catalog.len()
    }

    pub fn max_ts(&self) -> i64 {
        self.events.last().map(|e| e.ts).unwrap_or(0)
    }
}

/// Per-user interaction lists (events in time order) over a slice of events.
pub struct UserHistory {
    pub offsets: Vec<u32>,
    pub items: Vec<ItemIdx>,
    pub weights: Vec<f32>,
    pub ts: Vec<i64>,
}

impl UserHistory {
    pub fn new(n_users: usize, events: &[Event]) -> Self {
        let mut counts = vec![0u32; n_users + 1];
        for e in events {
            counts[e.user as usize + 1] += 1;
        }
        for i in 0..n_users {
            counts[i + 1] += counts[i];
        }
        let offsets = counts.clone();
        let mut pos = counts;
        let n = events.len();
        let (mut items, mut weights, mut ts) = (vec![0; n], vec![0.0; n], vec![0; n]);
        // Events are time-sorted, so each user's list comes out in time order.
        for e in events {
            let p = pos[e.user as usize] as usize;
            items[p] = e.item;
            weights[p] = e.weight;
            ts[p] = e.ts;
            pos[e.user as usize] += 1;
        }
        Self {
            offsets,
            items,
            weights,
            ts,
        }
    }

    pub fn n_users(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn range(&self, u: UserIdx) -> std::ops::Range<usize> {
        let u = u as usize;
        self.offsets[u] as usize..self.offsets[u + 1] as usize
    }

    pub fn len(&self, u: UserIdx) -> usize {
        self.range(u).len()
    }

    pub fn items(&self, u: UserIdx) -> &[ItemIdx] {
        &self.items[self.range(u)]
    }

    pub fn weights(&self, u: UserIdx) -> &[f32] {
        &self.weights[self.range(u)]
    }

    /// Distinct items, most recent first, at most `n`.
    pub fn recent_distinct(&self, u: UserIdx, n: usize) -> Vec<ItemIdx> {
        let mut out = Vec::with_capacity(n.min(self.len(u)));
        for &i in self.items(u).iter().rev() {
            if out.len() >= n {
                break;
            }
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }
}
