//! Columnar artifact tables stored as Arrow IPC files: the one format for every tabular artifact in
//! a bundle (catalog, embeddings, CF neighbours, trending, popularity, batch recommendations).
//! Readers validate types and lengths and return errors, never panic, on a corrupt file.
//!
//! It sits beside the bundle, not inside it: the components that own their artifacts (sources,
//! catalog) read and write tables without depending on the bundle loader.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch,
    StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

use std::path::PathBuf;

/// A data file that could not be read or written, or is malformed; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// One column's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    U32(Vec<u32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Utf8(Vec<String>),
    /// Fixed-width f32 vectors, row-major (`values.len() == rows * dim`).
    F32Vec {
        dim: usize,
        values: Vec<f32>,
    },
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::U32(v) => v.len(),
            Column::U64(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::F32(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Utf8(v) => v.len(),
            Column::F32Vec { dim, values } => values.len().checked_div(*dim).unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn type_name(&self) -> &'static str {
        match self {
            Column::U32(_) => "u32",
            Column::U64(_) => "u64",
            Column::I64(_) => "i64",
            Column::F32(_) => "f32",
            Column::Bool(_) => "bool",
            Column::Utf8(_) => "utf8",
            Column::F32Vec { .. } => "f32 vector",
        }
    }
}

/// Equal-length named columns plus string metadata (stored in the Arrow schema).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<(String, Column)>,
    pub metadata: BTreeMap<String, String>,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, name: &str, col: Column) -> Self {
        self.columns.push((name.to_string(), col));
        self
    }

    pub fn meta(mut self, key: &str, value: impl ToString) -> Self {
        self.metadata.insert(key.to_string(), value.to_string());
        self
    }

    pub fn rows(&self) -> usize {
        self.columns.first().map(|(_, c)| c.len()).unwrap_or(0)
    }

    pub fn write(&self, path: &Path) -> Result<(), DataError> {
        let rows = self.rows();
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (name, col) in &self.columns {
            if col.len() != rows {
                return Err(DataError::format(
                    path,
                    format!("column {name} has {} rows, expected {rows}", col.len()),
                ));
            }
            let (dt, arr): (DataType, ArrayRef) = match col {
                Column::U32(v) => (DataType::UInt32, Arc::new(UInt32Array::from(v.clone()))),
                Column::U64(v) => (DataType::UInt64, Arc::new(UInt64Array::from(v.clone()))),
                Column::I64(v) => (DataType::Int64, Arc::new(Int64Array::from(v.clone()))),
                Column::F32(v) => (DataType::Float32, Arc::new(Float32Array::from(v.clone()))),
                Column::Bool(v) => (DataType::Boolean, Arc::new(BooleanArray::from(v.clone()))),
                Column::Utf8(v) => (DataType::Utf8, Arc::new(StringArray::from(v.clone()))),
                Column::F32Vec { dim, values } => {
                    let dim_i = i32::try_from(*dim)
                        .map_err(|_| DataError::format(path, "vector dim too large"))?;
                    let item = Arc::new(Field::new("item", DataType::Float32, false));
                    let arr = FixedSizeListArray::try_new(
                        item.clone(),
                        dim_i,
                        Arc::new(Float32Array::from(values.clone())),
                        None,
                    )
                    .map_err(|e| DataError::format(path, format!("column {name}: {e}")))?;
                    (DataType::FixedSizeList(item, dim_i), Arc::new(arr))
                }
            };
            fields.push(Field::new(name, dt, false));
            arrays.push(arr);
        }
        let meta: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let schema = Arc::new(Schema::new(fields).with_metadata(meta));
        let batch = if arrays.is_empty() {
            RecordBatch::new_empty(schema.clone())
        } else {
            RecordBatch::try_new(schema.clone(), arrays)
                .map_err(|e| DataError::format(path, format!("record batch: {e}")))?
        };
        let file = File::create(path).map_err(|e| DataError::io(path, e))?;
        let mut w = FileWriter::try_new(BufWriter::new(file), &schema)
            .map_err(|e| DataError::format(path, format!("arrow writer: {e}")))?;
        w.write(&batch)
            .map_err(|e| DataError::format(path, format!("arrow write: {e}")))?;
        w.finish()
            .map_err(|e| DataError::format(path, format!("arrow finish: {e}")))?;
        Ok(())
    }

    /// Reads a table written by [`Table::write`] (all batches concatenated).
    pub fn read(path: &Path) -> Result<Table, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let reader = FileReader::try_new(BufReader::new(file), None)
            .map_err(|e| DataError::format(path, format!("not a readable Arrow IPC file: {e}")))?;
        let schema = reader.schema();
        let mut columns: Vec<(String, Column)> = schema
            .fields()
            .iter()
            .map(|f| {
                let empty = match f.data_type() {
                    DataType::UInt32 => Ok(Column::U32(Vec::new())),
                    DataType::UInt64 => Ok(Column::U64(Vec::new())),
                    DataType::Int64 => Ok(Column::I64(Vec::new())),
                    DataType::Float32 => Ok(Column::F32(Vec::new())),
                    DataType::Boolean => Ok(Column::Bool(Vec::new())),
                    DataType::Utf8 => Ok(Column::Utf8(Vec::new())),
                    DataType::FixedSizeList(_, d) => Ok(Column::F32Vec {
                        dim: (*d).max(0) as usize,
                        values: Vec::new(),
                    }),
                    other => Err(DataError::format(
                        path,
                        format!("column {}: unsupported type {other}", f.name()),
                    )),
                }?;
                Ok((f.name().clone(), empty))
            })
            .collect::<Result<_, DataError>>()?;
        for batch in reader {
            let batch =
                batch.map_err(|e| DataError::format(path, format!("corrupt Arrow data: {e}")))?;
            for (i, (name, col)) in columns.iter_mut().enumerate() {
                append(col, batch.column(i).as_ref())
                    .map_err(|m| DataError::format(path, format!("column {name}: {m}")))?;
            }
        }
        let metadata = schema
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Table { columns, metadata })
    }

    /// Removes and returns a column, checking its type.
    pub fn take(&mut self, name: &str) -> Result<Column, String> {
        let pos = self
            .columns
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| format!("missing column {name}"))?;
        Ok(self.columns.remove(pos).1)
    }

    pub fn take_u32(&mut self, name: &str) -> Result<Vec<u32>, String> {
        match self.take(name)? {
            Column::U32(v) => Ok(v),
            c => Err(format!("column {name} is {}, expected u32", c.type_name())),
        }
    }
    pub fn take_u64(&mut self, name: &str) -> Result<Vec<u64>, String> {
        match self.take(name)? {
            Column::U64(v) => Ok(v),
            c => Err(format!("column {name} is {}, expected u64", c.type_name())),
        }
    }
    pub fn take_i64(&mut self, name: &str) -> Result<Vec<i64>, String> {
        match self.take(name)? {
            Column::I64(v) => Ok(v),
            c => Err(format!("column {name} is {}, expected i64", c.type_name())),
        }
    }
    pub fn take_f32(&mut self, name: &str) -> Result<Vec<f32>, String> {
        match self.take(name)? {
            Column::F32(v) => Ok(v),
            c => Err(format!("column {name} is {}, expected f32", c.type_name())),
        }
    }
    pub fn take_bool(&mut self, name: &str) -> Result<Vec<bool>, String> {
        match self.take(name)? {
            Column::Bool(v) => Ok(v),
            c => Err(format!("column {name} is {}, expected bool", c.type_name())),
        }
    }
    pub fn take_utf8(&mut self, name: &str) -> Result<Vec<String>, String> {
        match self.take(name)? {
            Column::Utf8(v) => Ok(v),
            c => Err(format!("column {name} is {}, expected utf8", c.type_name())),
        }
    }
    /// Returns `(dim, values)`.
    pub fn take_f32vec(&mut self, name: &str) -> Result<(usize, Vec<f32>), String> {
        match self.take(name)? {
            Column::F32Vec { dim, values } => Ok((dim, values)),
            c => Err(format!(
                "column {name} is {}, expected f32 vector",
                c.type_name()
            )),
        }
    }

    pub fn meta_usize(&self, key: &str) -> Result<usize, String> {
        self.metadata
            .get(key)
            .ok_or_else(|| format!("missing metadata {key}"))?
            .parse()
            .map_err(|_| format!("metadata {key} is not a number"))
    }
}

fn append(col: &mut Column, arr: &dyn Array) -> Result<(), String> {
    if arr.null_count() > 0 {
        return Err("unexpected nulls".into());
    }
    fn down<T: 'static>(arr: &dyn Array) -> Result<&T, String> {
        arr.as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| format!("unexpected array type {}", arr.data_type()))
    }
    match col {
        Column::U32(v) => v.extend_from_slice(down::<UInt32Array>(arr)?.values()),
        Column::U64(v) => v.extend_from_slice(down::<UInt64Array>(arr)?.values()),
        Column::I64(v) => v.extend_from_slice(down::<Int64Array>(arr)?.values()),
        Column::F32(v) => v.extend_from_slice(down::<Float32Array>(arr)?.values()),
        Column::Bool(v) => v.extend(down::<BooleanArray>(arr)?.values().iter()),
        Column::Utf8(v) => v.extend(
            down::<StringArray>(arr)?
                .iter()
                .map(|s| s.unwrap_or("").to_string()),
        ),
        Column::F32Vec { dim, values } => {
            let list = down::<FixedSizeListArray>(arr)?;
            if list.value_length().max(0) as usize != *dim {
                return Err("vector width changed between batches".into());
            }
            let inner = down::<Float32Array>(list.values().as_ref())?;
            let start = list.offset() * *dim;
            let end = start + list.len() * *dim;
            let slice = inner
                .values()
                .get(start..end)
                .ok_or_else(|| "vector data shorter than its rows".to_string())?;
            values.extend_from_slice(slice);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_column_type() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.arrow");
        let t = Table::new()
            .with("a", Column::U32(vec![1, 2, 3]))
            .with("b", Column::U64(vec![10, 20, u64::MAX]))
            .with("c", Column::I64(vec![-1, 0, 1]))
            .with("d", Column::F32(vec![0.5, -0.5, 1e9]))
            .with("e", Column::Bool(vec![true, false, true]))
            .with("f", Column::Utf8(vec!["x".into(), "".into(), "ü".into()]))
            .with(
                "g",
                Column::F32Vec {
                    dim: 2,
                    values: vec![1., 2., 3., 4., 5., 6.],
                },
            )
            .meta("rows", 3);
        t.write(&p).unwrap();
        let mut r = Table::read(&p).unwrap();
        assert_eq!(r.meta_usize("rows").unwrap(), 3);
        assert_eq!(r.take_u32("a").unwrap(), vec![1, 2, 3]);
        assert_eq!(r.take_u64("b").unwrap(), vec![10, 20, u64::MAX]);
        assert_eq!(r.take_i64("c").unwrap(), vec![-1, 0, 1]);
        assert_eq!(r.take_f32("d").unwrap(), vec![0.5, -0.5, 1e9]);
        assert_eq!(r.take_bool("e").unwrap(), vec![true, false, true]);
        assert_eq!(r.take_utf8("f").unwrap(), vec!["x", "", "ü"]);
        assert_eq!(
            r.take_f32vec("g").unwrap(),
            (2, vec![1., 2., 3., 4., 5., 6.])
        );
        assert!(r.take_u32("zz").is_err());
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.arrow");
        Table::new()
            .with("a", Column::U32((0..1000).collect()))
            .write(&p)
            .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        for cut in [0, 8, bytes.len() / 2, bytes.len() - 4] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert!(Table::read(&p).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 3] ^= 0xff;
        std::fs::write(&p, &flipped).unwrap();
        let _ = Table::read(&p); // may or may not detect; must not panic
    }
}
