//! The embedded feature store: the bundle file written from a [`FeatureTable`] and the server's
//! in-process [`EmbeddedStore`] read from it (the no-Redis serving mode).
//!
//! File format (`online_features.arrow`, Arrow IPC file), one row per stored value, ordered
//! by entity (user, item), then id, then definition order:
//!
//! | column      | type                        | content |
//! |-------------|-----------------------------|---------|
//! | `entity_id` | UInt64                      | user or item id |
//! | `feature`   | Dictionary(UInt16, Utf8)    | feature name; its def gives the entity and dtype |
//! | `value`     | Binary                      | [`super::codec`] bytes, identical to Redis |
//!
//! Schema metadata: `funnel.online_features.format` = `1` and `funnel.feature_defs_hash` =
//! [`FeatureRegistry::hash`]; loading under different defs is refused.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, DictionaryArray, StringArray, UInt16Array,
    UInt16Builder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, UInt16Type};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;

use super::codec;
use super::defs::{Entity, FeatureRegistry};
use super::{FeatureError, FeatureRow, FeatureTable};

const META_FORMAT: &str = "funnel.online_features.format";
const META_DEFS_HASH: &str = "funnel.feature_defs_hash";
const FORMAT_VERSION: &str = "1";
const BATCH_ROWS: usize = 65_536;

fn schema(defs_hash: &str) -> Schema {
    let metadata = HashMap::from([
        (META_FORMAT.to_owned(), FORMAT_VERSION.to_owned()),
        (META_DEFS_HASH.to_owned(), defs_hash.to_owned()),
    ]);
    Schema::new_with_metadata(
        vec![
            Field::new("entity_id", DataType::UInt64, false),
            Field::new(
                "feature",
                DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("value", DataType::Binary, false),
        ],
        metadata,
    )
}

struct BatchBuilder {
    ids: UInt64Builder,
    keys: UInt16Builder,
    values: BinaryBuilder,
    rows: usize,
}

impl BatchBuilder {
    fn new() -> Self {
        BatchBuilder {
            ids: UInt64Builder::new(),
            keys: UInt16Builder::new(),
            values: BinaryBuilder::new(),
            rows: 0,
        }
    }

    fn finish(&mut self, schema: &Arc<Schema>, dict: &ArrayRef) -> Result<RecordBatch, String> {
        self.rows = 0;
        // Every batch shares the same dictionary array, as the IPC file format requires.
        let features = DictionaryArray::<UInt16Type>::try_new(self.keys.finish(), Arc::clone(dict))
            .map_err(|e| e.to_string())?;
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(self.ids.finish()),
                Arc::new(features),
                Arc::new(self.values.finish()),
            ],
        )
        .map_err(|e| e.to_string())
    }
}

pub(crate) fn write(table: &FeatureTable, path: &Path) -> Result<usize, FeatureError> {
    let err = |message: String| FeatureError::Embedded {
        path: path.to_path_buf(),
        message,
    };
    let registry = table.registry();
    // Dictionary = every def name, key = def index (so the file can hold any feature).
    let names: Vec<&str> = registry.defs().iter().map(|d| d.name.as_str()).collect();
    if names.len() > usize::from(u16::MAX) {
        return Err(err(format!(
            "{} features exceed the u16 dictionary",
            names.len()
        )));
    }
    let dict: ArrayRef = Arc::new(StringArray::from(names));
    let schema = Arc::new(schema(registry.hash()));

    let file = File::create(path).map_err(|source| FeatureError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut writer =
        FileWriter::try_new(BufWriter::new(file), &schema).map_err(|e| err(e.to_string()))?;
    let mut batch = BatchBuilder::new();
    let mut written = 0usize;
    let mut buf = Vec::new();
    for entity in Entity::ALL {
        let indices = registry.entity_def_indices(entity);
        for (id, row) in table.rows(entity) {
            for (&def_index, value) in indices.iter().zip(row) {
                let Some(value) = value else { continue };
                let key = u16::try_from(def_index).map_err(|e| err(e.to_string()))?;
                buf.clear();
                codec::encode_into(value, &mut buf);
                batch.ids.append_value(id);
                batch.keys.append_value(key);
                batch.values.append_value(&buf);
                batch.rows += 1;
                written += 1;
                if batch.rows == BATCH_ROWS {
                    let rb = batch.finish(&schema, &dict).map_err(err)?;
                    writer.write(&rb).map_err(|e| err(e.to_string()))?;
                }
            }
        }
    }
    // A trailing (possibly empty) batch: an empty table still yields a readable file.
    if batch.rows > 0 || written == 0 {
        let rb = batch.finish(&schema, &dict).map_err(err)?;
        writer.write(&rb).map_err(|e| err(e.to_string()))?;
    }
    writer.finish().map_err(|e| err(e.to_string()))?;
    let inner = writer.into_inner().map_err(|e| err(e.to_string()))?;
    inner
        .into_inner()
        .map_err(|e| err(e.error().to_string()))?
        .sync_all()
        .map_err(|source| FeatureError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(written)
}

/// In-process feature store loaded from a bundle's embedded feature file. Values are decoded
/// and validated at load, so a corrupt bundle fails at startup, not mid-request.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    rows: [HashMap<u64, FeatureRow>; 2],
    values: usize,
    defs_hash: String,
}

impl EmbeddedStore {
    /// Loads `path`, refusing a file written under defs whose hash differs from `registry`.
    pub fn load(
        path: impl AsRef<Path>,
        registry: &FeatureRegistry,
    ) -> Result<EmbeddedStore, FeatureError> {
        let path = path.as_ref();
        let err = |message: String| FeatureError::Embedded {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|source| FeatureError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let reader =
            FileReader::try_new(BufReader::new(file), None).map_err(|e| err(e.to_string()))?;
        let schema = reader.schema();
        let meta = schema.metadata();
        match meta.get(META_FORMAT).map(String::as_str) {
            Some(FORMAT_VERSION) => {}
            other => return Err(err(format!("unsupported format version {other:?}"))),
        }
        let found = meta.get(META_DEFS_HASH).cloned().unwrap_or_default();
        if found != registry.hash() {
            return Err(FeatureError::DefsMismatch {
                expected: registry.hash().to_owned(),
                found,
            });
        }

        let mut store = EmbeddedStore {
            rows: [HashMap::new(), HashMap::new()],
            values: 0,
            defs_hash: found,
        };
        for batch in reader {
            let batch = batch.map_err(|e| err(e.to_string()))?;
            store.add_batch(&batch, registry).map_err(err)?;
        }
        Ok(store)
    }

    fn add_batch(&mut self, batch: &RecordBatch, registry: &FeatureRegistry) -> Result<(), String> {
        let ids = column::<UInt64Array>(batch, "entity_id")?;
        let features = column::<DictionaryArray<UInt16Type>>(batch, "feature")?;
        let values = column::<BinaryArray>(batch, "value")?;
        let names = features
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or("column feature: dictionary values are not utf8")?;
        // Map dictionary positions to def indices once per batch.
        let def_of: Vec<Option<usize>> = (0..names.len())
            .map(|i| {
                names
                    .is_valid(i)
                    .then(|| registry.index_of(names.value(i)))
                    .flatten()
            })
            .collect();
        let keys: &UInt16Array = features.keys();
        for row in 0..batch.num_rows() {
            if ids.is_null(row) || keys.is_null(row) || values.is_null(row) {
                return Err(format!("row {row}: null cell"));
            }
            let key = usize::from(keys.value(row));
            let index = def_of
                .get(key)
                .copied()
                .flatten()
                .ok_or_else(|| format!("row {row}: unknown feature (dictionary key {key})"))?;
            let def = &registry.defs()[index];
            let value = codec::decode(&def.dtype, values.value(row))
                .map_err(|e| format!("row {row}: feature {:?}: {e}", def.name))?;
            let previous = self.rows[def.entity.index()]
                .entry(ids.value(row))
                .or_default()
                .insert(registry.name_arc(index), value);
            if previous.is_some() {
                return Err(format!(
                    "row {row}: duplicate value of {:?} for {} {}",
                    def.name,
                    def.entity,
                    ids.value(row)
                ));
            }
            self.values += 1;
        }
        Ok(())
    }

    /// The stored features of one entity (`None` if it has none). Defaults are not applied;
    /// see [`FeatureRegistry::value_or_default`].
    pub fn get(&self, entity: Entity, id: u64) -> Option<&FeatureRow> {
        self.rows[entity.index()].get(&id)
    }

    /// [`Self::get`] for many ids, in order.
    pub fn get_many(&self, entity: Entity, ids: &[u64]) -> Vec<Option<&FeatureRow>> {
        ids.iter().map(|&id| self.get(entity, id)).collect()
    }

    /// Number of entities of `entity` with at least one value.
    pub fn entity_count(&self, entity: Entity) -> usize {
        self.rows[entity.index()].len()
    }

    /// Total number of values.
    pub fn len(&self) -> usize {
        self.values
    }

    pub fn is_empty(&self) -> bool {
        self.values == 0
    }

    /// The defs hash recorded in the file (equal to the registry's, checked at load).
    pub fn defs_hash(&self) -> &str {
        &self.defs_hash
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("missing column {name}"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("column {name} has an unexpected type"))
}
