//! Arrow IPC input (`.arrow` / `.ipc` / `.feather`): the file format (detected by its `ARROW1`
//! magic) or, failing that, the stream format, as an event-log writer appends it. Batches are
//! converted by [`super::columnar`].

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::ipc::{root_as_footer, root_as_message};

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
    } else {
        check_stream_format(&mut file, len).map_err(corrupt)?;
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| IngestError::io(path, e))?;
    let reader = BufReader::new(file);
    if is_file_format {
        let r = FileReader::try_new(reader, None).map_err(|e| corrupt(e.to_string()))?;
        Ok((r.schema(), Box::new(r)))
    } else {
        let r = StreamReader::try_new(reader, None).map_err(|e| corrupt(e.to_string()))?;
        Ok((r.schema(), Box::new(r)))
    }
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

/// Stream format: every message's metadata and body length within the bytes that remain.
fn check_stream_format(file: &mut File, len: u64) -> Result<(), String> {
    const CONTINUATION: [u8; 4] = [0xff; 4];
    let mut pos = 0u64;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    for index in 1u64.. {
        let read_i32 = |file: &mut File, pos: &mut u64| -> Result<[u8; 4], String> {
            let mut b = [0u8; 4];
            file.read_exact(&mut b)
                .map_err(|_| format!("message {index} at byte {pos}: stream cut short"))?;
            *pos += 4;
            Ok(b)
        };
        if pos == len {
            return Ok(()); // no end-of-stream marker: a writer may still be appending
        }
        let mut word = read_i32(file, &mut pos)?;
        if word == CONTINUATION {
            word = read_i32(file, &mut pos)?;
        }
        let meta_len = i32::from_le_bytes(word);
        if meta_len == 0 {
            return Ok(()); // end-of-stream marker
        }
        let meta_len = u64::try_from(meta_len).unwrap_or(u64::MAX);
        if meta_len > len - pos {
            return Err(format!(
                "message {index} at byte {pos}: metadata length {meta_len} exceeds the {} bytes left",
                len - pos
            ));
        }
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact(&mut meta).map_err(|e| e.to_string())?;
        pos += meta_len;
        let message = root_as_message(&meta)
            .map_err(|e| format!("message {index} at byte {pos}: invalid metadata: {e}"))?;
        let body = u64::try_from(message.bodyLength()).unwrap_or(u64::MAX);
        if body > len - pos {
            return Err(format!(
                "message {index} at byte {pos}: body length {} exceeds the {} bytes left (stream cut short?)",
                message.bodyLength(),
                len - pos
            ));
        }
        pos += body;
        file.seek(SeekFrom::Start(pos)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
