//! In-process streaming features (the server without Redis): per-user recent and seen state in
//! a bounded moka cache (users idle past the longest ttl are dropped), item counters in time
//! buckets behind one mutex. The same semantics as [`super::redis`], one process's view.
//!
//! The counters keep each item's decayed score up to date as events arrive (forward decay: a
//! bucket's weight is fixed relative to a base bucket, so time passing rescales every score
//! alike and never reorders them) and an ordered index of the scores, so reading the top is
//! O(top) and an event costs O(log items): nothing walks every counted item.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{CounterDef, StreamDefs, StreamEvent, StreamUser};

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
    counters: Mutex<Counters>,
}

impl MemoryStreams {
    /// `max_users`: how many users' state is kept at most (least recently used dropped first);
    /// `half_life_secs`: of a counter bucket's weight in the trending score.
    pub fn new(defs: StreamDefs, max_users: u64, half_life_secs: f64) -> Self {
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
            counters: Mutex::new(Counters::new(defs.trending.as_ref(), half_life_secs)),
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
            let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            counters.add(
                events
                    .iter()
                    .filter(|e| e.weight > 0.0 && e.within(now, c.window_secs))
                    .map(|e| (e.item_id, f64::from(e.weight))),
                c.bucket_of(now),
            );
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

    /// The counters' decayed top `top` items (id, score), best first (ties by id).
    pub fn trending(&self, now: f64, top: usize) -> Vec<(u64, f64)> {
        let Some(c) = &self.defs.trending else {
            return Vec::new();
        };
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.advance(c.bucket_of(now));
        counters.top(top)
    }

    /// Changes whenever the trending top may have changed (events counted, a bucket left the
    /// window); time passing alone does not change it.
    pub fn trending_version(&self, now: f64) -> u64 {
        let Some(c) = &self.defs.trending else {
            return 0;
        };
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.advance(c.bucket_of(now));
        counters.version
    }

    /// Items with a live count (bounded by the catalog: events on unknown items are refused).
    pub fn counted_items(&self) -> usize {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .score
            .len()
    }
}

/// Item counters over the window's buckets, with each item's decayed score kept current.
#[derive(Debug)]
struct Counters {
    /// Buckets in the window; 0 when counters are off.
    window: u64,
    /// log2 of the weight ratio of consecutive buckets (bucket_secs / half_life).
    step: f64,
    /// The bucket whose weight is 1 (see `weight`); moved forward before weights overflow.
    base: u64,
    /// The newest bucket seen.
    cur: u64,
    /// Bucket → item → summed weight, for the buckets in the window.
    buckets: BTreeMap<u64, HashMap<u64, f64>>,
    /// Item → Σ count × weight(bucket): its score up to the common factor weight(cur)⁻¹.
    score: HashMap<u64, f64>,
    /// (score bits, descending; item): positive finite f64 order like their bits.
    order: BTreeSet<(std::cmp::Reverse<u64>, u64)>,
    version: u64,
}

/// Past this many doublings of a bucket's weight the base moves (f64 holds 2^1023).
const REBASE_AFTER: f64 = 256.0;

impl Counters {
    fn new(def: Option<&CounterDef>, half_life_secs: f64) -> Self {
        let (window, step) = match def {
            Some(c) => (
                (c.window_secs / c.bucket_secs.max(1)).max(1),
                if half_life_secs > 0.0 {
                    c.bucket_secs as f64 / half_life_secs
                } else {
                    0.0
                },
            ),
            None => (0, 0.0),
        };
        Self {
            window,
            step,
            base: 0,
            cur: 0,
            buckets: BTreeMap::new(),
            score: HashMap::new(),
            order: BTreeSet::new(),
            version: 0,
        }
    }

    fn weight(&self, bucket: u64) -> f64 {
        (bucket as f64 - self.base as f64) * self.step
    }

    fn set_score(&mut self, item: u64, new: f64) {
        if let Some(old) = self.score.get(&item) {
            self.order.remove(&(std::cmp::Reverse(old.to_bits()), item));
        }
        if new > 0.0 && new.is_finite() {
            self.score.insert(item, new);
            self.order.insert((std::cmp::Reverse(new.to_bits()), item));
        } else {
            self.score.remove(&item);
        }
    }

    /// Moves the clock to `bucket`: buckets that left the window stop counting.
    fn advance(&mut self, bucket: u64) {
        if self.window == 0 || bucket <= self.cur && !self.buckets.is_empty() {
            return;
        }
        self.cur = self.cur.max(bucket);
        if self.buckets.is_empty() {
            self.base = self.cur;
            return;
        }
        let keep_from = self.cur.saturating_sub(self.window - 1);
        let kept = self.buckets.split_off(&keep_from);
        let gone = std::mem::replace(&mut self.buckets, kept);
        if !gone.is_empty() {
            // The items of the dropped buckets are scored again from what remains (exact: no
            // drift from subtracting floats).
            let touched: BTreeSet<u64> = gone.values().flat_map(|m| m.keys().copied()).collect();
            for item in touched {
                let s: f64 = self
                    .buckets
                    .iter()
                    .filter_map(|(&b, m)| m.get(&item).map(|n| n * self.weight(b).exp2()))
                    .sum();
                self.set_score(item, s);
            }
            self.version += 1;
        }
        if self.weight(self.cur) > REBASE_AFTER {
            let shift = (-self.weight(self.cur)).exp2();
            self.base = self.cur;
            let rescored: Vec<(u64, f64)> =
                self.score.iter().map(|(&i, &s)| (i, s * shift)).collect();
            self.order.clear();
            self.score.clear();
            for (i, s) in rescored {
                self.set_score(i, s);
            }
        }
    }

    fn add(&mut self, counts: impl Iterator<Item = (u64, f64)>, bucket: u64) {
        if self.window == 0 {
            return;
        }
        self.advance(bucket);
        // An event of an older bucket than the newest (a clock step back) counts in the newest.
        let b = self.cur;
        let w = self.weight(b).exp2();
        let mut any = false;
        for (item, n) in counts {
            *self.buckets.entry(b).or_default().entry(item).or_default() += n;
            let s = self.score.get(&item).copied().unwrap_or(0.0) + n * w;
            self.set_score(item, s);
            any = true;
        }
        if any {
            self.version += 1;
        }
    }

    /// The best `top` (item, decayed score at the newest bucket).
    fn top(&self, top: usize) -> Vec<(u64, f64)> {
        let scale = (-self.weight(self.cur)).exp2();
        self.order
            .iter()
            .take(top)
            .map(|(s, item)| (*item, f64::from_bits(s.0) * scale))
            .collect()
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
        let m = MemoryStreams::new(defs, 100, 1800.0);
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
        let top = m.trending(t0 + seen_ttl, 10);
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
        assert!(m.trending(t0, 10).iter().all(|t| t.0 != 99));
    }
}
