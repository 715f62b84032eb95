//! Arrow IPC input (`.arrow` / `.ipc` / `.feather`): the file format (detected by its `ARROW1`
//! magic) or, failing that, the stream format, as an event-log writer appends it. Batches are
//! converted by [`super::columnar`].

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::record_batch::RecordBatchReader;

use super::{columnar, guarded, open_nonempty, IngestError, Location, RawInteraction, RawItem};

const FORMAT: &str = "Arrow IPC";
const FILE_MAGIC: &[u8; 6] = b"ARROW1";

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>>;

pub(super) fn read_interactions(path: &Path) -> Result<Vec<RawInteraction>, IngestError> {
    guarded(path, FORMAT, || {
        let (schema, mut batches) = open(path)?;
        columnar::read_interactions(path, FORMAT, &schema, &mut batches)
    })
}

pub(super) fn read_items(path: &Path) -> Result<Vec<RawItem>, IngestError> {
    guarded(path, FORMAT, || {
        let (schema, mut batches) = open(path)?;
        columnar::read_items(path, FORMAT, &schema, &mut batches)
    })
}

fn open(path: &Path) -> Result<(SchemaRef, Batches), IngestError> {
    let corrupt =
        |e: ArrowError| IngestError::corrupt(path, Location::File, FORMAT, e.to_string());
    let mut file = open_nonempty(path)?;
    let mut magic = [0u8; 6];
    // A short read just means "not the file format"; the stream reader then reports the problem.
    let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == FILE_MAGIC;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| IngestError::io(path, e))?;
    let reader = BufReader::new(file);
    if is_file_format {
        let r = FileReader::try_new(reader, None).map_err(corrupt)?;
        Ok((r.schema(), Box::new(r)))
    } else {
        let r = StreamReader::try_new(reader, None).map_err(corrupt)?;
        Ok((r.schema(), Box::new(r)))
    }
}
