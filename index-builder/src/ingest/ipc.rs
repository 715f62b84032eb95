//! Arrow IPC input (`.arrow` / `.ipc` / `.feather` / `.arrows`): the file format (detected by its
//! `ARROW1` magic) or, failing that, the stream format, as the server's event log appends it.
//! A stream is read up to its last complete message, so a log the server is still appending
//! to, or one a crash left with a torn tail, builds from everything that was acknowledged.
//! Batches are converted by [`super::columnar`].

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::ipc::root_as_footer;

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
    let corrupt = |msg: String| IngestError::corrupt(path, Location::File, FORMAT, msg);
    let mut file = open_nonempty(path)?;
    let len = file.metadata().map_err(|e| IngestError::io(path, e))?.len();
    let mut magic = [0u8; 6];
    // A short read just means "not the file format"; the stream check then reports the problem.
    let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == FILE_MAGIC;
    if is_file_format {
        check_file_format(&mut file, len).map_err(corrupt)?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| IngestError::io(path, e))?;
        let r =
            FileReader::try_new(BufReader::new(file), None).map_err(|e| corrupt(e.to_string()))?;
        return Ok((r.schema(), Box::new(r)));
    }
    // The same scan the event log recovers with: every length is bounded by the file size
    // before anything is allocated.
    let keep = funnel::events::log::complete_prefix(path).map_err(|e| corrupt(e.to_string()))?;
    if keep == 0 && magic[..4] == [0xff; 4] {
        // A stream torn inside its first message (a segment the server had just created when
        // it died): nothing was acknowledged from it. A directory skips it like an empty file.
        tracing::warn!(file = %path.display(), "Arrow stream torn inside its first message");
        return Err(IngestError::TornStream {
            path: path.to_path_buf(),
        });
    }
    if keep == 0 {
        return Err(corrupt(
            "no complete Arrow IPC stream message (not an Arrow file, or torn at its first message)"
                .into(),
        ));
    }
    if keep < len {
        tracing::warn!(
            file = %path.display(),
            complete_bytes = keep,
            ignored_bytes = len - keep,
            "Arrow stream ends in an incomplete message (a log still being written, or a torn \
             tail): reading the complete messages"
        );
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| IngestError::io(path, e))?;
    let r = StreamReader::try_new(BufReader::new(file.take(keep)), None)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok((r.schema(), Box::new(r)))
}

// The Arrow IPC readers allocate whatever a length field says before reading it, so a corrupt
// length can demand gigabytes (or abort the process). These checks bound every such length by
// the file size first; they read only the small headers.

/// File format: trailing magic, footer length and every block's extent within the file.
fn check_file_format(file: &mut File, len: u64) -> Result<(), String> {
    const TRAILER: u64 = 10; // footer length (i32) + "ARROW1"
    if len < 8 + TRAILER {
        return Err(format!("{len} bytes is too short for the file format"));
    }
    let mut trailer = [0u8; TRAILER as usize];
    file.seek(SeekFrom::End(-(TRAILER as i64)))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(|e| e.to_string())?;
    let (footer_len, magic) = trailer.split_at(4);
    if magic != FILE_MAGIC {
        return Err("trailing ARROW1 magic is missing (file cut short?)".to_string());
    }
    let footer_len =
        i32::from_le_bytes([footer_len[0], footer_len[1], footer_len[2], footer_len[3]]);
    let footer_len = u64::try_from(footer_len).unwrap_or(u64::MAX);
    let data_end = len.saturating_sub(TRAILER);
    if footer_len == 0 || footer_len > data_end.saturating_sub(8) {
        return Err(format!(
            "footer length {footer_len} does not fit in {len} bytes"
        ));
    }
    let data_end = data_end - footer_len;
    let mut footer = vec![0u8; footer_len as usize];
    file.seek(SeekFrom::Start(data_end))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(|e| e.to_string())?;
    let footer = root_as_footer(&footer).map_err(|e| format!("invalid footer: {e}"))?;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .flatten()
        .chain(footer.dictionaries().into_iter().flatten());
    for b in blocks {
        let end =
            i128::from(b.offset()) + i128::from(b.metaDataLength()) + i128::from(b.bodyLength());
        if b.offset() < 0
            || b.metaDataLength() < 0
            || b.bodyLength() < 0
            || end > i128::from(data_end)
        {
            return Err(format!(
                "block at offset {} (metadata {} + body {} bytes) lies outside the {data_end}-byte data section",
                b.offset(),
                b.metaDataLength(),
                b.bodyLength()
            ));
        }
    }
    Ok(())
}
