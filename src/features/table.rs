//! Builder-side [`FeatureTable`]: the batch feature values computed by one build, validated
//! against the registry on insert, then pushed to Redis, written into the bundle and
//! summarised for skew checks.

use std::collections::BTreeMap;
use std::path::Path;

use super::defs::{Entity, FeatureDef, FeatureKind, FeatureRegistry};
use super::{embedded, stats, FeatureError, FeatureStats, FeatureValue};

/// Values per (entity, entity id, feature). Ordered by id so pushes and bundle files are
/// deterministic.
#[derive(Debug, Clone)]
pub struct FeatureTable {
    registry: FeatureRegistry,
    /// Per entity (`Entity::index`): id → one slot per feature of that entity.
    rows: [BTreeMap<u64, Vec<Option<FeatureValue>>>; 2],
    values: usize,
}

impl FeatureTable {
    pub fn new(registry: &FeatureRegistry) -> FeatureTable {
        FeatureTable {
            registry: registry.clone(),
            rows: [BTreeMap::new(), BTreeMap::new()],
            values: 0,
        }
    }

    pub fn registry(&self) -> &FeatureRegistry {
        &self.registry
    }

    /// Sets one value, replacing (and returning) any previous one. Rejects unknown features,
    /// streaming features, the wrong entity, and values not matching the dtype (or dim).
    pub fn insert(
        &mut self,
        entity: Entity,
        id: u64,
        feature: &str,
        value: FeatureValue,
    ) -> Result<Option<FeatureValue>, FeatureError> {
        let index = self
            .registry
            .index_of(feature)
            .ok_or_else(|| FeatureError::UnknownFeature(feature.to_owned()))?;
        let def = &self.registry.defs()[index];
        check_insert(def, entity, &value)?;
        let unknown = || FeatureError::UnknownFeature(feature.to_owned());
        let slot = self.registry.slot(index).ok_or_else(unknown)?;
        let width = self.registry.entity_len(entity);
        let row = self.rows[entity.index()]
            .entry(id)
            .or_insert_with(|| vec![None; width]);
        // `slot < width` by construction of the registry; `get_mut` keeps this panic-free anyway.
        let cell = row.get_mut(slot).ok_or_else(unknown)?;
        let previous = cell.replace(value);
        if previous.is_none() {
            self.values += 1;
        }
        Ok(previous)
    }

    pub fn get(&self, entity: Entity, id: u64, feature: &str) -> Option<&FeatureValue> {
        self.get_by_index(entity, id, self.registry.index_of(feature)?)
    }

    /// Value of def `index` (see [`FeatureRegistry::index_of`]); `None` if that def is not a
    /// feature of `entity`.
    pub fn get_by_index(&self, entity: Entity, id: u64, index: usize) -> Option<&FeatureValue> {
        if self.registry.defs().get(index)?.entity != entity {
            return None;
        }
        let row = self.rows[entity.index()].get(&id)?;
        row.get(self.registry.slot(index)?)?.as_ref()
    }

    /// The features stored for one entity, in definition order.
    pub fn row(
        &self,
        entity: Entity,
        id: u64,
    ) -> Option<impl Iterator<Item = (&FeatureDef, &FeatureValue)> + '_> {
        let row = self.rows[entity.index()].get(&id)?;
        Some(self.row_values(entity, row))
    }

    pub(crate) fn row_values<'a>(
        &'a self,
        entity: Entity,
        row: &'a [Option<FeatureValue>],
    ) -> impl Iterator<Item = (&'a FeatureDef, &'a FeatureValue)> + 'a {
        let defs = self.registry.defs();
        self.registry
            .entity_def_indices(entity)
            .iter()
            .zip(row)
            .filter_map(move |(&i, v)| v.as_ref().map(|v| (&defs[i], v)))
    }

    /// Ids of `entity` with at least one value, ascending.
    pub fn ids(&self, entity: Entity) -> impl Iterator<Item = u64> + '_ {
        self.rows[entity.index()].keys().copied()
    }

    /// Number of entities of `entity` with at least one value.
    pub fn entity_count(&self, entity: Entity) -> usize {
        self.rows[entity.index()].len()
    }

    /// Total number of stored values.
    pub fn len(&self) -> usize {
        self.values
    }

    pub fn is_empty(&self) -> bool {
        self.values == 0
    }

    /// Rows of one entity in id order.
    pub(crate) fn rows(
        &self,
        entity: Entity,
    ) -> impl Iterator<Item = (u64, &[Option<FeatureValue>])> + '_ {
        self.rows[entity.index()]
            .iter()
            .map(|(&id, row)| (id, row.as_slice()))
    }

    /// Distribution summary of every batch feature (see [`FeatureStats`]).
    pub fn stats(&self) -> Vec<FeatureStats> {
        stats::compute(self)
    }

    /// Writes the embedded store file ([`super::EMBEDDED_FILE_NAME`] in a bundle); returns the
    /// number of values written. Read back with [`super::EmbeddedStore::load`].
    pub fn write_embedded(&self, path: impl AsRef<Path>) -> Result<usize, FeatureError> {
        embedded::write(self, path.as_ref())
    }
}

fn check_insert(
    def: &FeatureDef,
    entity: Entity,
    value: &FeatureValue,
) -> Result<(), FeatureError> {
    if def.kind != FeatureKind::Batch {
        return Err(FeatureError::NotBatch(def.name.clone()));
    }
    if def.entity != entity {
        return Err(FeatureError::WrongEntity {
            feature: def.name.clone(),
            expected: def.entity,
            got: entity,
        });
    }
    if !value.conforms_to(&def.dtype) {
        let got = match value {
            FeatureValue::F32Vec(v) => format!("f32_vec[{}]", v.len()),
            other => other.dtype_name().to_owned(),
        };
        return Err(FeatureError::TypeMismatch {
            feature: def.name.clone(),
            expected: def.dtype,
            got,
        });
    }
    Ok(())
}
