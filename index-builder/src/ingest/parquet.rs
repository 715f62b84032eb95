//! Parquet input: decoded batch-wise through the Arrow reader, projected to the columns in use,
//! then converted by [`super::columnar`].

use std::path::Path;

use ::parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use ::parquet::arrow::ProjectionMask;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatchReader;

use super::{columnar, guarded, open_nonempty, IngestError, Location, RawInteraction, RawItem};

const FORMAT: &str = "Parquet";
/// Large batches amortize per-batch column normalization; 64K rows of a log is a few MiB.
const BATCH_ROWS: usize = 64 * 1024;

type Indices = fn(&Path, &Schema) -> Result<Vec<usize>, IngestError>;

pub(super) fn read_interactions(path: &Path) -> Result<Vec<RawInteraction>, IngestError> {
    guarded(path, FORMAT, || {
        let (schema, mut reader) = open(path, columnar::interaction_indices)?;
        columnar::read_interactions(path, FORMAT, &schema, &mut reader)
    })
}

pub(super) fn read_items(path: &Path) -> Result<Vec<RawItem>, IngestError> {
    guarded(path, FORMAT, || {
        let (schema, mut reader) = open(path, columnar::item_indices)?;
        columnar::read_items(path, FORMAT, &schema, &mut reader)
    })
}

/// Opens a reader over only the columns `indices` picks (missing required columns error here,
/// before any page is decoded).
fn open(
    path: &Path,
    indices: Indices,
) -> Result<(SchemaRef, ParquetRecordBatchReader), IngestError> {
    let corrupt = |e: ::parquet::errors::ParquetError| {
        IngestError::corrupt(path, Location::File, FORMAT, e.to_string())
    };
    let file = open_nonempty(path)?;
    let len = file.metadata().map_err(|e| IngestError::io(path, e))?.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(corrupt)?;
    // The reader allocates a column chunk's byte range before reading it; a corrupt footer must
    // not be able to ask for more than the file holds.
    for (rg, row_group) in builder.metadata().row_groups().iter().enumerate() {
        for column in row_group.columns() {
            let (start, size) = column.byte_range();
            if start.checked_add(size).is_none_or(|end| end > len) {
                return Err(IngestError::corrupt(
                    path,
                    Location::File,
                    FORMAT,
                    format!(
                        "row group {rg}: column {} spans bytes {start}+{size}, beyond the {len}-byte file",
                        column.column_path()
                    ),
                ));
            }
        }
    }
    let mut roots = indices(path, builder.schema())?;
    roots.sort_unstable();
    roots.dedup();
    // Arrow's top-level fields map one-to-one, in order, onto Parquet root columns.
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(corrupt)?;
    Ok((reader.schema(), reader))
}
