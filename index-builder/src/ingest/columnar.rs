//! Arrow record batches → raw rows, shared by the Parquet and Arrow IPC readers. Each column is
//! normalized once per batch to one of a few physical shapes (i64 / u64 / f64 / utf8 / bool /
//! scaled time), then converted column-at-a-time with the same value rules as the text readers.

use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::array::{RecordBatch, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, TimeUnit, UInt64Type};
use arrow::error::ArrowError;

use super::schema::{
    check_number, check_published, check_timestamp, float_to_id, float_to_seconds, int_to_id,
    parse_bool, parse_id, parse_number, parse_seconds, parse_year, year_to_published, Column,
    Headers, InteractionColumns, ItemColumns,
};
use super::{IngestError, Location, RawInteraction, RawItem};

/// A column normalized so each accessor is a single match with no per-row allocation.
enum Values {
    Int(Int64Array),
    UInt(UInt64Array),
    Float(Float64Array),
    Str(StringArray),
    Bool(BooleanArray),
    /// Seconds = floor(raw * mul / div): timestamps of any unit, dates.
    Time {
        raw: Int64Array,
        mul: i64,
        div: i64,
    },
    Null,
}

fn cast_to(arr: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    cast(arr, to).map_err(|e| format!("{} ({e})", arr.data_type()))
}

fn unsupported(arr: &dyn Array) -> String {
    arr.data_type().to_string()
}

impl Values {
    /// `Err` carries the unsupported type, for [`IngestError::ColumnType`].
    fn new(arr: &ArrayRef) -> Result<Self, String> {
        use DataType::*;
        let dt = arr.data_type().clone();
        Ok(match &dt {
            Dictionary(_, value) => return Values::new(&cast_to(arr, value)?),
            Int8 | Int16 | Int32 | Int64 => {
                let a = cast_to(arr, &Int64)?;
                Values::Int(
                    a.as_primitive_opt::<Int64Type>()
                        .ok_or_else(|| unsupported(arr))?
                        .clone(),
                )
            }
            UInt8 | UInt16 | UInt32 | UInt64 => {
                let a = cast_to(arr, &UInt64)?;
                Values::UInt(
                    a.as_primitive_opt::<UInt64Type>()
                        .ok_or_else(|| unsupported(arr))?
                        .clone(),
                )
            }
            Float16 | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..)
            | Decimal256(..) => {
                let a = cast_to(arr, &Float64)?;
                Values::Float(
                    a.as_primitive_opt::<Float64Type>()
                        .ok_or_else(|| unsupported(arr))?
                        .clone(),
                )
            }
            Utf8 | LargeUtf8 | Utf8View => {
                let a = cast_to(arr, &Utf8)?;
                Values::Str(
                    a.as_string_opt::<i32>()
                        .ok_or_else(|| unsupported(arr))?
                        .clone(),
                )
            }
            Boolean => Values::Bool(
                arr.as_boolean_opt()
                    .ok_or_else(|| unsupported(arr))?
                    .clone(),
            ),
            Timestamp(unit, _) => {
                let div = match unit {
                    TimeUnit::Second => 1,
                    TimeUnit::Millisecond => 1_000,
                    TimeUnit::Microsecond => 1_000_000,
                    TimeUnit::Nanosecond => 1_000_000_000,
                };
                Self::time(arr, 1, div)?
            }
            Date32 => Self::time(arr, 86_400, 1)?,
            Date64 => Self::time(arr, 1, 1_000)?,
            Null => Values::Null,
            _ => return Err(unsupported(arr)),
        })
    }

    fn time(arr: &ArrayRef, mul: i64, div: i64) -> Result<Self, String> {
        let a = cast_to(arr, &DataType::Int64)?;
        let raw = a
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| unsupported(arr))?
            .clone();
        Ok(Values::Time { raw, mul, div })
    }

    /// `true` for null cells and for rows past the end (never indexes out of bounds).
    fn is_null(&self, i: usize) -> bool {
        match self {
            Values::Int(a) => i >= a.len() || a.is_null(i),
            Values::UInt(a) => i >= a.len() || a.is_null(i),
            Values::Float(a) => i >= a.len() || a.is_null(i),
            Values::Str(a) => i >= a.len() || a.is_null(i),
            Values::Bool(a) => i >= a.len() || a.is_null(i),
            Values::Time { raw, .. } => i >= raw.len() || raw.is_null(i),
            Values::Null => true,
        }
    }

    fn id(&self, i: usize) -> Result<Option<u64>, String> {
        if self.is_null(i) {
            return Ok(None);
        }
        match self {
            Values::Int(a) => int_to_id(a.value(i)).map(Some),
            Values::UInt(a) => Ok(Some(a.value(i))),
            Values::Float(a) => float_to_id(a.value(i)).map(Some),
            Values::Str(a) => parse_id(a.value(i)).map(Some),
            Values::Bool(_) | Values::Time { .. } => {
                Err("value is not an integer id (boolean/time column)".to_string())
            }
            Values::Null => Ok(None),
        }
    }

    /// Unix seconds, not range-checked.
    fn seconds(&self, i: usize) -> Result<Option<i64>, String> {
        if self.is_null(i) {
            return Ok(None);
        }
        match self {
            Values::Int(a) => Ok(Some(a.value(i))),
            Values::UInt(a) => i64::try_from(a.value(i))
                .map(Some)
                .map_err(|_| format!("{} is out of range for a unix timestamp", a.value(i))),
            Values::Float(a) => float_to_seconds(a.value(i)).map(Some),
            Values::Str(a) => parse_seconds(a.value(i)).map(Some),
            Values::Time { raw, mul, div } => {
                let v = raw.value(i);
                v.checked_mul(*mul)
                    .map(|s| Some(s.div_euclid(*div)))
                    .ok_or_else(|| format!("{v} is out of range for a timestamp"))
            }
            Values::Bool(_) => Err("a boolean is not a timestamp".to_string()),
            Values::Null => Ok(None),
        }
    }

    fn number(&self, i: usize) -> Result<Option<f32>, String> {
        if self.is_null(i) {
            return Ok(None);
        }
        match self {
            Values::Int(a) => check_number(a.value(i) as f64).map(Some),
            Values::UInt(a) => check_number(a.value(i) as f64).map(Some),
            Values::Float(a) => check_number(a.value(i)).map(Some),
            Values::Str(a) if a.value(i).trim().is_empty() => Ok(None),
            Values::Str(a) => parse_number(a.value(i)).map(Some),
            Values::Bool(a) => Ok(Some(if a.value(i) { 1.0 } else { 0.0 })),
            Values::Time { .. } => Err("a timestamp is not a number".to_string()),
            Values::Null => Ok(None),
        }
    }

    fn flag(&self, i: usize) -> Result<bool, String> {
        if self.is_null(i) {
            return Ok(false);
        }
        match self {
            Values::Bool(a) => Ok(a.value(i)),
            Values::Int(a) => match a.value(i) {
                0 => Ok(false),
                1 => Ok(true),
                v => Err(format!("{v} is not a boolean (expected 0 or 1)")),
            },
            Values::UInt(a) => match a.value(i) {
                0 => Ok(false),
                1 => Ok(true),
                v => Err(format!("{v} is not a boolean (expected 0 or 1)")),
            },
            Values::Float(a) => {
                let v = a.value(i);
                if v == 0.0 {
                    Ok(false)
                } else if v == 1.0 {
                    Ok(true)
                } else {
                    Err(format!("{v} is not a boolean (expected 0 or 1)"))
                }
            }
            Values::Str(a) => parse_bool(a.value(i)),
            Values::Time { .. } => Err("a timestamp is not a boolean".to_string()),
            Values::Null => Ok(false),
        }
    }

    /// `published_at` from a release-year cell.
    fn year(&self, i: usize) -> Result<Option<i64>, String> {
        if self.is_null(i) {
            return Ok(None);
        }
        match self {
            Values::Int(a) => year_to_published(a.value(i)).map(Some),
            Values::UInt(a) => {
                year_to_published(i64::try_from(a.value(i)).unwrap_or(i64::MAX)).map(Some)
            }
            Values::Float(a) => {
                let f = a.value(i);
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e6 {
                    year_to_published(f as i64).map(Some)
                } else {
                    Err(format!("'{f}' is not a year"))
                }
            }
            Values::Str(a) => parse_year(a.value(i)),
            // A date/timestamp stored under a year column: take it as the publish time.
            Values::Time { .. } => self.seconds(i),
            Values::Bool(_) => Err("a boolean is not a year".to_string()),
            Values::Null => Ok(None),
        }
    }

    /// Text of a cell (numbers rendered), `None` for null or blank.
    fn text(&self, i: usize) -> Option<String> {
        if self.is_null(i) {
            return None;
        }
        let s = match self {
            Values::Str(a) => a.value(i).trim().to_string(),
            Values::Int(a) => a.value(i).to_string(),
            Values::UInt(a) => a.value(i).to_string(),
            Values::Float(a) => a.value(i).to_string(),
            Values::Bool(a) => a.value(i).to_string(),
            Values::Time { raw, .. } => raw.value(i).to_string(),
            Values::Null => return None,
        };
        (!s.is_empty()).then_some(s)
    }
}

/// A categories column: a list of strings per row, or one '|'-separated string per row.
enum Categories {
    List {
        /// Per row: `None` for a null list, else the range into `values`.
        ranges: Vec<Option<(usize, usize)>>,
        values: Values,
    },
    Flat(Values),
}

impl Categories {
    fn new(arr: &ArrayRef) -> Result<Self, String> {
        let to_usize = |o: i64| usize::try_from(o).unwrap_or(0);
        match arr.data_type() {
            DataType::Dictionary(_, value) => Categories::new(&cast_to(arr, value)?),
            DataType::List(_) => {
                let l = arr.as_list_opt::<i32>().ok_or_else(|| unsupported(arr))?;
                let offsets = l.value_offsets();
                let ranges = (0..l.len())
                    .map(|i| {
                        let lo = offsets.get(i).copied().unwrap_or(0);
                        let hi = offsets.get(i + 1).copied().unwrap_or(lo);
                        (!l.is_null(i)).then(|| (to_usize(lo.into()), to_usize(hi.into())))
                    })
                    .collect();
                Ok(Categories::List {
                    ranges,
                    values: Values::new(l.values())?,
                })
            }
            DataType::LargeList(_) => {
                let l = arr.as_list_opt::<i64>().ok_or_else(|| unsupported(arr))?;
                let offsets = l.value_offsets();
                let ranges = (0..l.len())
                    .map(|i| {
                        let lo = offsets.get(i).copied().unwrap_or(0);
                        let hi = offsets.get(i + 1).copied().unwrap_or(lo);
                        (!l.is_null(i)).then(|| (to_usize(lo), to_usize(hi)))
                    })
                    .collect();
                Ok(Categories::List {
                    ranges,
                    values: Values::new(l.values())?,
                })
            }
            DataType::FixedSizeList(_, n) => {
                let l = arr
                    .as_fixed_size_list_opt()
                    .ok_or_else(|| unsupported(arr))?;
                let n = usize::try_from(*n).unwrap_or(0);
                let ranges = (0..l.len())
                    .map(|i| {
                        let lo = to_usize(l.value_offset(i).into());
                        (!l.is_null(i)).then_some((lo, lo + n))
                    })
                    .collect();
                Ok(Categories::List {
                    ranges,
                    values: Values::new(l.values())?,
                })
            }
            _ => Ok(Categories::Flat(Values::new(arr)?)),
        }
    }

    fn get(&self, i: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |s: &str| {
            let s = s.trim();
            if !s.is_empty() && !out.iter().any(|c| c == s) {
                out.push(s.to_string());
            }
        };
        match self {
            Categories::List { ranges, values } => {
                if let Some(Some((lo, hi))) = ranges.get(i) {
                    for j in *lo..*hi {
                        if let Some(s) = values.text(j) {
                            push(&s);
                        }
                    }
                }
            }
            Categories::Flat(values) => {
                if let Some(s) = values.text(i) {
                    s.split('|').for_each(&mut push);
                }
            }
        }
        out
    }
}

fn headers_of(schema: &Schema) -> Headers {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    Headers::new(&names)
}

/// Positions of the file's columns that `read_*` will use (for projection). Also reports a
/// missing required column before any data is decoded.
pub(super) fn interaction_indices(path: &Path, schema: &Schema) -> Result<Vec<usize>, IngestError> {
    Ok(InteractionColumns::resolve(path, &headers_of(schema))?.indices())
}

pub(super) fn item_indices(path: &Path, schema: &Schema) -> Result<Vec<usize>, IngestError> {
    Ok(ItemColumns::resolve(path, &headers_of(schema))?.indices())
}

/// Column `c` of `batch`, normalized.
fn values(path: &Path, batch: &RecordBatch, c: &Column) -> Result<Values, IngestError> {
    let arr = batch
        .columns()
        .get(c.index)
        .ok_or_else(|| IngestError::ColumnType {
            path: path.to_path_buf(),
            column: c.name.clone(),
            data_type: "absent from a record batch".to_string(),
        })?;
    Values::new(arr).map_err(|data_type| IngestError::ColumnType {
        path: path.to_path_buf(),
        column: c.name.clone(),
        data_type,
    })
}

fn opt_values(
    path: &Path,
    batch: &RecordBatch,
    c: &Option<Column>,
) -> Result<Option<Values>, IngestError> {
    c.as_ref().map(|c| values(path, batch, c)).transpose()
}

type Batches<'a> = &'a mut dyn Iterator<Item = Result<RecordBatch, ArrowError>>;

/// Drains `batches` (whose schema is `schema`) into interactions. `format` names the file
/// format in corruption errors.
pub(super) fn read_interactions(
    path: &Path,
    format: &'static str,
    schema: &Schema,
    batches: Batches<'_>,
) -> Result<Vec<RawInteraction>, IngestError> {
    let cols = InteractionColumns::resolve(path, &headers_of(schema))?;
    let mut out = Vec::new();
    let mut base = 0u64;
    for batch in batches {
        let batch = batch.map_err(|e| {
            IngestError::corrupt(path, Location::Row(base + 1), format, e.to_string())
        })?;
        append_interactions(path, &cols, &batch, base, &mut out)?;
        base += batch.num_rows() as u64;
    }
    Ok(out)
}

pub(super) fn read_items(
    path: &Path,
    format: &'static str,
    schema: &Schema,
    batches: Batches<'_>,
) -> Result<Vec<RawItem>, IngestError> {
    let cols = ItemColumns::resolve(path, &headers_of(schema))?;
    let mut out = Vec::new();
    let mut base = 0u64;
    for batch in batches {
        let batch = batch.map_err(|e| {
            IngestError::corrupt(path, Location::Row(base + 1), format, e.to_string())
        })?;
        append_items(path, &cols, &batch, base, &mut out)?;
        base += batch.num_rows() as u64;
    }
    Ok(out)
}

fn required<T>(v: Result<Option<T>, String>) -> Result<T, String> {
    v.and_then(|o| o.ok_or_else(|| "missing value (null)".to_string()))
}

fn append_interactions(
    path: &Path,
    cols: &InteractionColumns,
    batch: &RecordBatch,
    base: u64,
    out: &mut Vec<RawInteraction>,
) -> Result<(), IngestError> {
    let user = values(path, batch, &cols.user)?;
    let item = values(path, batch, &cols.item)?;
    let ts = values(path, batch, &cols.timestamp)?;
    let event = opt_values(path, batch, &cols.event_type)?;
    let weight = opt_values(path, batch, &cols.weight)?;
    let rating = opt_values(path, batch, &cols.rating)?;
    out.reserve(batch.num_rows());
    for i in 0..batch.num_rows() {
        let err = |c: &Column, msg: String| {
            IngestError::bad_value(path, Location::Row(base + i as u64 + 1), &c.name, msg)
        };
        let user_id = required(user.id(i)).map_err(|m| err(&cols.user, m))?;
        let item_id = required(item.id(i)).map_err(|m| err(&cols.item, m))?;
        let timestamp = required(ts.seconds(i))
            .and_then(check_timestamp)
            .map_err(|m| err(&cols.timestamp, m))?;
        let event_type = event.as_ref().and_then(|v| v.text(i));
        let weight = match (&weight, &cols.weight) {
            (Some(v), Some(c)) => v.number(i).map_err(|m| err(c, m))?,
            _ => None,
        };
        let rating = match (&rating, &cols.rating) {
            (Some(v), Some(c)) => v.number(i).map_err(|m| err(c, m))?,
            _ => None,
        };
        out.push(RawInteraction {
            user_id,
            item_id,
            timestamp,
            event_type,
            weight,
            rating,
        });
    }
    Ok(())
}

fn append_items(
    path: &Path,
    cols: &ItemColumns,
    batch: &RecordBatch,
    base: u64,
    out: &mut Vec<RawItem>,
) -> Result<(), IngestError> {
    let item = values(path, batch, &cols.item)?;
    let title = opt_values(path, batch, &cols.title)?;
    let categories = match &cols.categories {
        Some(c) => {
            let arr = batch
                .columns()
                .get(c.index)
                .ok_or_else(|| IngestError::ColumnType {
                    path: path.to_path_buf(),
                    column: c.name.clone(),
                    data_type: "absent from a record batch".to_string(),
                })?;
            Some(
                Categories::new(arr).map_err(|data_type| IngestError::ColumnType {
                    path: path.to_path_buf(),
                    column: c.name.clone(),
                    data_type,
                })?,
            )
        }
        None => None,
    };
    let creator = opt_values(path, batch, &cols.creator)?;
    let published = opt_values(path, batch, &cols.published)?;
    let year = opt_values(path, batch, &cols.year)?;
    let flag = opt_values(path, batch, &cols.flag)?;
    let promoted = opt_values(path, batch, &cols.promoted)?;
    out.reserve(batch.num_rows());
    for i in 0..batch.num_rows() {
        let err = |c: &Column, msg: String| {
            IngestError::bad_value(path, Location::Row(base + i as u64 + 1), &c.name, msg)
        };
        let item_id = required(item.id(i)).map_err(|m| err(&cols.item, m))?;
        let title = title.as_ref().and_then(|v| v.text(i)).unwrap_or_default();
        let categories = categories.as_ref().map(|v| v.get(i)).unwrap_or_default();
        let creator_id = match (&creator, &cols.creator) {
            (Some(v), Some(c)) => v.id(i).map_err(|m| err(c, m))?,
            _ => None,
        };
        let mut published_at = match (&published, &cols.published) {
            (Some(v), Some(c)) => v
                .seconds(i)
                .and_then(|o| o.map(check_published).transpose())
                .map_err(|m| err(c, m))?,
            _ => None,
        };
        if published_at.is_none() {
            if let (Some(v), Some(c)) = (&year, &cols.year) {
                published_at = v
                    .year(i)
                    .and_then(|o| o.map(check_published).transpose())
                    .map_err(|m| err(c, m))?;
            }
        }
        let policy_flag = match (&flag, &cols.flag) {
            (Some(v), Some(c)) => v.flag(i).map_err(|m| err(c, m))?,
            _ => false,
        };
        let promoted = match (&promoted, &cols.promoted) {
            (Some(v), Some(c)) => v.flag(i).map_err(|m| err(c, m))?,
            _ => false,
        };
        out.push(RawItem {
            item_id,
            title,
            categories,
            creator_id,
            published_at,
            policy_flag,
            promoted,
        });
    }
    Ok(())
}
