//! Per-feature distribution summaries ([`FeatureStats`]) of a [`FeatureTable`], written into the
//! bundle so training–serving skew checks can compare served values against the build.
//!
//! Mean/std/min/max are exact. Quantiles are exact up to [`RESERVOIR_CAP`] observations and
//! estimated from a deterministic reservoir sample beyond that, so memory stays bounded
//! (64-dim embeddings of millions of users would otherwise mean hundreds of MB of floats).

use serde::{Deserialize, Serialize};

use super::defs::{Entity, FeatureKind};
use super::{FeatureTable, FeatureValue};

/// Observations kept per feature for quantiles.
pub const RESERVOIR_CAP: usize = 200_000;

/// What one observation of a feature is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatMeasure {
    /// The value itself (`f32`, `i64`, `timestamp`; `bool` as 0/1).
    Value,
    /// Each element of an `f32_vec`.
    Element,
    /// The length of an `i64_list`/`string_list`, entry count of an `f32_map`, byte length of a
    /// `string`.
    Length,
}

/// Summary of one batch feature over all entities of its kind in a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    pub feature: String,
    pub entity: Entity,
    pub dtype: String,
    pub measure: StatMeasure,
    /// Finite observations summarised.
    pub count: u64,
    /// NaN/±inf observations, excluded from every moment and quantile.
    pub non_finite: u64,
    /// Entities that have the feature.
    pub present: u64,
    /// Entities of this kind in the table (with any feature).
    pub entities: u64,
    /// `1 - present / entities`; 1.0 when the table has no entity of this kind.
    pub null_fraction: f64,
    /// `None` when `count == 0` (JSON `null`).
    pub mean: Option<f64>,
    /// Population standard deviation.
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub p1: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

pub(crate) fn compute(table: &FeatureTable) -> Vec<FeatureStats> {
    let registry = table.registry();
    let mut out = Vec::new();
    for entity in Entity::ALL {
        let indices = registry.entity_def_indices(entity);
        let mut accs: Vec<Acc> = indices
            .iter()
            .map(|&i| Acc::new(&registry.defs()[i].name))
            .collect();
        let mut entities = 0u64;
        for (_, row) in table.rows(entity) {
            entities += 1;
            for (acc, value) in accs.iter_mut().zip(row) {
                if let Some(v) = value {
                    acc.present += 1;
                    observe(acc, v);
                }
            }
        }
        for (acc, &i) in accs.into_iter().zip(indices) {
            let def = &registry.defs()[i];
            if def.kind != FeatureKind::Batch {
                continue;
            }
            out.push(acc.finish(
                def.name.clone(),
                entity,
                def.dtype.to_string(),
                measure(&def.dtype),
                entities,
            ));
        }
    }
    out
}

fn measure(dtype: &super::Dtype) -> StatMeasure {
    use super::Dtype::*;
    match dtype {
        Bool | I64 | F32 | Timestamp => StatMeasure::Value,
        F32Vec { .. } => StatMeasure::Element,
        String | I64List | StringList | F32Map => StatMeasure::Length,
    }
}

fn observe(acc: &mut Acc, v: &FeatureValue) {
    match v {
        FeatureValue::Bool(b) => acc.push(if *b { 1.0 } else { 0.0 }),
        FeatureValue::I64(x) | FeatureValue::Timestamp(x) => acc.push(*x as f64),
        FeatureValue::F32(x) => acc.push(f64::from(*x)),
        FeatureValue::F32Vec(xs) => xs.iter().for_each(|x| acc.push(f64::from(*x))),
        FeatureValue::String(s) => acc.push(s.len() as f64),
        FeatureValue::I64List(xs) => acc.push(xs.len() as f64),
        FeatureValue::StringList(xs) => acc.push(xs.len() as f64),
        FeatureValue::F32Map(m) => acc.push(m.len() as f64),
    }
}

/// Streaming accumulator: Welford moments plus a reservoir sample (Algorithm R).
struct Acc {
    present: u64,
    count: u64,
    non_finite: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    sample: Vec<f64>,
    rng: SplitMix64,
}

impl Acc {
    fn new(name: &str) -> Acc {
        // Seeded by name so the same table always yields the same stats file.
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Acc {
            present: 0,
            count: 0,
            non_finite: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sample: Vec::new(),
            rng: SplitMix64(seed),
        }
    }

    fn push(&mut self, x: f64) {
        if !x.is_finite() {
            self.non_finite += 1;
            return;
        }
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if self.sample.len() < RESERVOIR_CAP {
            self.sample.push(x);
        } else {
            let j = self.rng.next() % self.count;
            if let Some(slot) = usize::try_from(j).ok().and_then(|j| self.sample.get_mut(j)) {
                *slot = x;
            }
        }
    }

    fn finish(
        mut self,
        feature: String,
        entity: Entity,
        dtype: String,
        measure: StatMeasure,
        entities: u64,
    ) -> FeatureStats {
        let null_fraction = if entities == 0 {
            1.0
        } else {
            1.0 - self.present as f64 / entities as f64
        };
        let some = |x: f64| (self.count > 0).then_some(x);
        self.sample.sort_by(f64::total_cmp);
        FeatureStats {
            feature,
            entity,
            dtype,
            measure,
            count: self.count,
            non_finite: self.non_finite,
            present: self.present,
            entities,
            null_fraction,
            mean: some(self.mean),
            std: some((self.m2 / self.count.max(1) as f64).sqrt()),
            min: some(self.min),
            max: some(self.max),
            p1: quantile(&self.sample, 0.01),
            p50: quantile(&self.sample, 0.50),
            p99: quantile(&self.sample, 0.99),
        }
    }
}

/// Linear interpolation between closest ranks (numpy's default) over sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = q * last as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (a, b) = (*sorted.get(lo)?, *sorted.get(hi)?);
    Some(a + (b - a) * (pos - lo as f64))
}

/// Tiny deterministic PRNG; statistical quality is ample for reservoir sampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.01), Some(1.0));
        assert_eq!(quantile(&[3.0], 0.99), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn reservoir_keeps_moments_exact() {
        let mut acc = Acc::new("x");
        let n = RESERVOIR_CAP as u64 * 2;
        for i in 0..n {
            acc.push(i as f64);
        }
        acc.push(f64::NAN);
        let s = acc.finish(
            "x".into(),
            Entity::Item,
            "f32".into(),
            StatMeasure::Value,
            1,
        );
        assert_eq!(s.count, n);
        assert_eq!(s.non_finite, 1);
        assert!((s.mean.unwrap() - (n - 1) as f64 / 2.0).abs() < 1e-6);
        let p50 = s.p50.unwrap();
        // Sampled median of a uniform ramp: within 1% of the truth.
        assert!((p50 / (n as f64 / 2.0) - 1.0).abs() < 0.01, "{p50}");
    }
}
