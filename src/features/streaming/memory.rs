//! In-process streaming features (the server without Redis): per-user recent and seen state in
//! a bounded moka cache (users idle past the longest ttl are dropped), counters in time buckets
//! behind one mutex. The same semantics as [`super::redis`], one process's view.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{bucket_decay, top_of, StreamDefs, StreamEvent, StreamUser};

#[derive(Debug, Default)]
struct UserState {
    /// Newest first, distinct.
    recent: VecDeque<u64>,
    /// Item → last seen (ingest seconds).
    seen: HashMap<u64, f64>,
}

pub struct MemoryStreams {
    defs: StreamDefs,
    users: moka::sync::Cache<u64, Arc<Mutex<UserState>>>,
    /// Bucket → item → summed weight.
    buckets: Mutex<BTreeMap<u64, HashMap<u64, f64>>>,
}

impl MemoryStreams {
    /// `max_users`: how many users' state is kept at most (least recently used dropped first).
    pub fn new(defs: StreamDefs, max_users: u64) -> Self {
        let idle = [&defs.recent, &defs.seen]
            .into_iter()
            .flatten()
            .map(|d| d.ttl_secs)
            .max()
            .unwrap_or(86_400);
        MemoryStreams {
            users: moka::sync::Cache::builder()
                .max_capacity(max_users.max(1))
                .time_to_idle(Duration::from_secs(idle))
                .build(),
            buckets: Mutex::new(BTreeMap::new()),
            defs,
        }
    }

    pub fn defs(&self) -> &StreamDefs {
        &self.defs
    }

    pub fn apply(&self, events: &[StreamEvent], now: f64) {
        for e in events {
            if self.defs.recent.is_none() && self.defs.seen.is_none() {
                break;
            }
            let state = self.users.get_with(e.user_id, Default::default);
            let Ok(mut u) = state.lock() else { continue };
            if let Some(d) = &self.defs.recent {
                if e.weight > 0.0 && e.within(now, d.ttl_secs) {
                    u.recent.retain(|&i| i != e.item_id);
                    u.recent.push_front(e.item_id);
                    u.recent.truncate(d.max_len);
                }
            }
            if let Some(d) = self
                .defs
                .seen
                .as_ref()
                .filter(|d| e.within(now, d.ttl_secs))
            {
                u.seen.insert(e.item_id, now);
                let oldest = now - d.ttl_secs as f64;
                if u.seen.len() > d.max_len {
                    u.seen.retain(|_, at| *at > oldest);
                }
                while u.seen.len() > d.max_len {
                    let Some((&old, _)) = u.seen.iter().min_by(|a, b| a.1.total_cmp(b.1)) else {
                        break;
                    };
                    u.seen.remove(&old);
                }
            }
        }
        if let Some(c) = &self.defs.trending {
            let b = c.bucket_of(now);
            let Ok(mut buckets) = self.buckets.lock() else {
                return;
            };
            let counts = buckets.entry(b).or_default();
            for e in events
                .iter()
                .filter(|e| e.weight > 0.0 && e.within(now, c.window_secs))
            {
                *counts.entry(e.item_id).or_default() += f64::from(e.weight);
            }
            // Buckets past the ttl are gone, as their Redis keys would be.
            let keep_from = b.saturating_sub(c.ttl_secs / c.bucket_secs.max(1));
            *buckets = buckets.split_off(&keep_from);
        }
    }

    pub fn user(&self, id: u64, now: f64) -> Option<StreamUser> {
        let state = self.users.get(&id)?;
        let u = state.lock().ok()?;
        let mut seen: Vec<(u64, f64)> = match &self.defs.seen {
            Some(d) => {
                let oldest = now - d.ttl_secs as f64;
                u.seen
                    .iter()
                    .filter(|(_, &at)| at > oldest)
                    .map(|(&i, &at)| (i, at))
                    .collect()
            }
            None => Vec::new(),
        };
        seen.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Some(StreamUser {
            recent: u.recent.iter().copied().collect(),
            seen: seen.into_iter().map(|(i, _)| i).collect(),
        })
    }

    pub fn trending(&self, now: f64, top: usize, half_life_secs: f64) -> Vec<(u64, f64)> {
        let Some(c) = &self.defs.trending else {
            return Vec::new();
        };
        let Ok(buckets) = self.buckets.lock() else {
            return Vec::new();
        };
        let cur = c.bucket_of(now);
        let mut acc: HashMap<u64, f64> = HashMap::new();
        for b in c.buckets(now) {
            let Some(counts) = buckets.get(&b) else {
                continue;
            };
            let w = bucket_decay(cur - b, c.bucket_secs, half_life_secs);
            for (&item, &n) in counts {
                *acc.entry(item).or_default() += w * n;
            }
        }
        top_of(acc, top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::streaming::StreamDefs;
    use crate::features::FeatureRegistry;

    fn ev(user_id: u64, item_id: u64, weight: f32) -> StreamEvent {
        StreamEvent {
            user_id,
            item_id,
            weight,
            at: i64::MAX / 2,
        }
    }

    #[test]
    fn recent_seen_and_trending_follow_the_defs() {
        let defs = StreamDefs::from_registry(&FeatureRegistry::bundled().unwrap());
        let (recent_max, seen_ttl) = (
            defs.recent.as_ref().unwrap().max_len,
            defs.seen.as_ref().unwrap().ttl_secs as f64,
        );
        let m = MemoryStreams::new(defs, 100);
        let t0 = 1_700_000_000.0;
        m.apply(
            &[
                ev(1, 10, 1.0),
                ev(1, 11, 0.0),
                ev(1, 12, 2.0),
                ev(1, 10, 1.0),
            ],
            t0,
        );
        let u = m.user(1, t0).unwrap();
        assert_eq!(
            u.recent,
            vec![10, 12],
            "distinct, newest first, impressions excluded"
        );
        assert_eq!(u.seen.len(), 3);
        assert!(m.user(2, t0).is_none());
        // Seen entries expire after the ttl.
        m.apply(&[ev(1, 13, 0.0)], t0 + seen_ttl - 1.0);
        assert_eq!(m.user(1, t0 + seen_ttl + 1.0).unwrap().seen, vec![13]);
        // The recent list is capped.
        let many: Vec<_> = (0..recent_max as u64 + 10)
            .map(|i| ev(3, 100 + i, 1.0))
            .collect();
        m.apply(&many, t0);
        let r = m.user(3, t0).unwrap().recent;
        assert_eq!(r.len(), recent_max);
        assert_eq!(r[0], 100 + recent_max as u64 + 9);
        // Trending: newer weight counts more; impressions do not count.
        m.apply(&[ev(5, 7, 1.0), ev(5, 8, 0.0)], t0 + seen_ttl);
        let top = m.trending(t0 + seen_ttl, 10, 1800.0);
        assert_eq!(top.first().map(|t| t.0), Some(7));
        assert!(top.iter().all(|t| t.0 != 8));
        // A backfilled event (older than the window and the ttls) moves nothing.
        let old = StreamEvent {
            at: (t0 - 10.0 * seen_ttl) as i64,
            ..ev(9, 99, 5.0)
        };
        m.apply(&[old], t0);
        assert!(m
            .user(9, t0)
            .is_none_or(|u| u.recent.is_empty() && u.seen.is_empty()));
        assert!(m.trending(t0, 10, 1800.0).iter().all(|t| t.0 != 99));
    }
}
