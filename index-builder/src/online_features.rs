//! Online features as feature-defs declare them, computed from the serving stage: one table that
//! goes into the bundle (the embedded store) and, with `--redis`, to Redis.

use std::collections::BTreeMap;

use funnel::features::{Entity, FeatureError, FeatureRegistry, FeatureTable, FeatureValue};
use funnel::ranking::input::ENGAGEMENT_FEATURES;

use crate::batch::BatchRecs;
use crate::dataset::Dataset;
use crate::stage::Stage;

/// How many distinct recent items the `recent_items` feature keeps. The server seeds CF from the
/// newest few and suppresses all of them as seen, so the cap is generous: the total is bounded by
/// the interaction count, not users × cap.
pub const ONLINE_RECENT_ITEMS: usize = 500;

pub fn build(
    registry: &FeatureRegistry,
    ds: &Dataset,
    stage: &Stage,
    recs: &BatchRecs,
) -> Result<FeatureTable, FeatureError> {
    let mut t = FeatureTable::new(registry);
    let has = |name: &str| registry.get(name).is_some();
    let cats = &ds.catalog.categories;
    for u in 0..ds.n_users() as u32 {
        let id = ds.user_ids[u as usize];
        let n = stage.hist.len(u);
        if n == 0 {
            continue; // only in the holdout: a cold user as far as serving knows
        }
        t.insert(
            Entity::User,
            id,
            "user_embedding",
            FeatureValue::F32Vec(stage.emb.user(u).to_vec()),
        )?;
        let recent: Vec<i64> = stage
            .hist
            .recent_distinct(u, ONLINE_RECENT_ITEMS)
            .into_iter()
            .map(|i| ds.catalog.items[i as usize].id as i64)
            .collect();
        t.insert(
            Entity::User,
            id,
            "recent_items",
            FeatureValue::I64List(recent),
        )?;
        let prefs: BTreeMap<String, f32> = stage
            .user_prefs(u)
            .iter()
            .zip(cats)
            .filter(|(p, _)| **p > funnel::ranking::encode::MIN_PREF)
            .map(|(p, c)| (c.clone(), *p))
            .collect();
        t.insert(
            Entity::User,
            id,
            "category_prefs",
            FeatureValue::F32Map(prefs),
        )?;
        t.insert(Entity::User, id, "history_len", FeatureValue::I64(n as i64))?;
        let last = stage.hist.ts[stage.hist.range(u).end - 1];
        t.insert(
            Entity::User,
            id,
            "last_active_at",
            FeatureValue::Timestamp(last),
        )?;
    }
    if has("batch_recs") {
        for (&u, list) in recs.users.iter().zip(&recs.lists) {
            let ids: Vec<i64> = list
                .iter()
                .map(|&(i, _)| ds.catalog.items[i as usize].id as i64)
                .collect();
            t.insert(
                Entity::User,
                ds.user_ids[u as usize],
                "batch_recs",
                FeatureValue::I64List(ids),
            )?;
        }
    }
    for (idx, item) in ds.catalog.items.iter().enumerate() {
        let id = item.id;
        t.insert(
            Entity::Item,
            id,
            "popularity",
            FeatureValue::F32(stage.trending.popularity[idx]),
        )?;
        t.insert(
            Entity::Item,
            id,
            "trending",
            FeatureValue::F32(stage.trending.score[idx]),
        )?;
        for (name, rate) in ENGAGEMENT_FEATURES.iter().zip(&stage.trending.engagement) {
            t.insert(Entity::Item, id, name, FeatureValue::F32(rate[idx]))?;
        }
        t.insert(
            Entity::Item,
            id,
            "published_at",
            FeatureValue::Timestamp(item.published_at),
        )?;
        let names: Vec<String> = item
            .categories
            .iter()
            .filter_map(|&c| cats.get(c as usize).cloned())
            .collect();
        t.insert(
            Entity::Item,
            id,
            "categories",
            FeatureValue::StringList(names),
        )?;
        t.insert(
            Entity::Item,
            id,
            "creator_id",
            FeatureValue::I64(item.creator_id as i64),
        )?;
        t.insert(
            Entity::Item,
            id,
            "flagged",
            FeatureValue::Bool(item.flagged),
        )?;
        t.insert(
            Entity::Item,
            id,
            "promoted",
            FeatureValue::Bool(item.promoted),
        )?;
    }
    Ok(t)
}
