//! The durable, append-only interaction event log: Arrow IPC *stream* segments
//! (`events-<seq>.arrows`) in one directory, rotated by size, synced to disk by a configurable
//! policy. The index-builder reads the directory as interaction input (its Arrow reader accepts
//! the stream format and its column names).
//!
//! Durability: with [`FsyncPolicy::Always`] an `append` returns only after `fdatasync`, so an
//! acknowledged batch survives `kill -9` (and power loss, as far as the disk honours syncs). A
//! crash mid-append can leave a torn message at the end of the newest segment; opening the log
//! cuts the segment back to its last complete message before appending again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

/// One logged interaction.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub user_id: u64,
    pub item_id: u64,
    pub event_type: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub weight: f32,
    pub event_id: Option<String>,
    /// The recommendation the event answers (`request_id` of the response), when sent.
    pub request_id: Option<String>,
    /// `experiment/arm` the event counted for, when an experiment ran.
    pub arm: Option<String>,
}

/// When appended bytes are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "ms")]
pub enum FsyncPolicy {
    /// Before every append returns: an acknowledged event survives a crash.
    Always,
    /// At most every this many ms (an append syncs when the last sync is older): a crash can
    /// lose that window.
    Interval(u64),
    /// Left to the OS: survives a process kill, not a machine crash.
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Always,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("event log {path}: {message}")]
    Arrow { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EventLogError + '_ {
    move |source| EventLogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The log's schema; column names are the builder's interaction columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::UInt64, false),
        Field::new("item_id", DataType::UInt64, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("timestamp", DataType::Int64, false),
        Field::new("weight", DataType::Float32, false),
        Field::new("event_id", DataType::Utf8, true),
        // Added with experiments; segments written before have neither (read as null).
        Field::new("request_id", DataType::Utf8, true),
        Field::new("experiment_arm", DataType::Utf8, true),
    ]))
}

fn to_batch(events: &[LoggedEvent]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            events.iter().map(|e| e.user_id),
        )),
        Arc::new(UInt64Array::from_iter_values(
            events.iter().map(|e| e.item_id),
        )),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.event_type.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| e.timestamp),
        )),
        Arc::new(Float32Array::from_iter_values(
            events.iter().map(|e| e.weight),
        )),
        Arc::new(StringArray::from_iter(
            events.iter().map(|e| e.event_id.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            events.iter().map(|e| e.request_id.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            events.iter().map(|e| e.arm.as_deref()),
        )),
    ];
    RecordBatch::try_new(schema(), cols)
}

fn segment_name(seq: u64) -> String {
    format!("events-{seq:010}.arrows")
}

fn segment_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("events-")?
        .strip_suffix(".arrows")?
        .parse()
        .ok()
}

/// The log's segments, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<PathBuf>, EventLogError> {
    let mut out: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = entry.map_err(io(dir))?.path();
        if let Some(seq) = segment_seq(&p) {
            out.push((seq, p));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// Byte length of the complete messages at the start of an Arrow IPC stream (a torn tail, if
/// any, starts there). Reads only message headers, and allocates no more than the file holds.
pub fn complete_prefix(path: &Path) -> Result<u64, EventLogError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut pos = 0u64;
    loop {
        let mut w = [0u8; 4];
        if pos + 8 > len || f.read_exact(&mut w).is_err() {
            return Ok(pos);
        }
        let mut header = 4u64;
        if w == [0xff; 4] {
            if f.read_exact(&mut w).is_err() {
                return Ok(pos);
            }
            header = 8;
        }
        let meta_len = i32::from_le_bytes(w);
        if meta_len == 0 {
            // The end-of-stream marker of a finished segment: complete, and nothing follows.
            return Ok(pos + header);
        }
        if meta_len < 0 || pos + header + meta_len as u64 > len {
            // Garbage, or a message cut short: nothing complete follows.
            return Ok(pos);
        }
        // Bounded by the file size (checked above) before anything is allocated.
        let mut meta = vec![0u8; meta_len as usize];
        if f.read_exact(&mut meta).is_err() {
            return Ok(pos);
        }
        let body = match arrow::ipc::root_as_message(&meta) {
            Ok(m) => m.bodyLength().max(0) as u64,
            Err(_) => return Ok(pos),
        };
        let end = pos + header + meta_len as u64 + body;
        if end > len {
            return Ok(pos);
        }
        f.seek(SeekFrom::Start(end)).map_err(io(path))?;
        pos = end;
    }
}

/// The appending side of the log. Not shared: wrap it in a mutex (one writer per directory).
pub struct EventLog {
    /// Held open with an exclusive `flock`: a second writer on the directory is refused.
    _lock: File,
    dir: PathBuf,
    opts: LogOptions,
    seq: u64,
    writer: Option<StreamWriter<File>>,
    bytes: u64,
    last_sync: Instant,
    appended: u64,
}

impl EventLog {
    /// Opens (creating) the log in `dir`. The newest segment is cut back to its last complete
    /// message; appends go to a new segment so a segment's schema header is always its own.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Self, EventLogError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock_dir(dir)?;
        let segs = segments(dir)?;
        let mut next = 0;
        if let Some(last) = segs.last() {
            let keep = complete_prefix(last)?;
            let f = OpenOptions::new()
                .write(true)
                .open(last)
                .map_err(io(last))?;
            if keep < f.metadata().map_err(io(last))?.len() {
                tracing::warn!(segment = %last.display(), keep, "event log: cutting a torn tail");
                f.set_len(keep).map_err(io(last))?;
                f.sync_all().map_err(io(last))?;
            }
            next = segment_seq(last).map_or(0, |s| s + 1);
            if keep == 0 {
                // Torn before its schema was complete: nothing to keep, nothing to read.
                drop(f);
                std::fs::remove_file(last).map_err(io(last))?;
                sync_dir(dir)?;
            }
        }
        Ok(Self {
            _lock: lock,
            dir: dir.to_path_buf(),
            opts,
            seq: next,
            writer: None,
            bytes: 0,
            last_sync: Instant::now(),
            appended: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Events appended through this handle.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(segment_name(self.seq))
    }

    fn arrow_err(&self, e: impl std::fmt::Display) -> EventLogError {
        EventLogError::Arrow {
            path: self.current_path(),
            message: e.to_string(),
        }
    }

    /// Appends `events` as one record batch; returns once the fsync policy is met.
    pub fn append(&mut self, events: &[LoggedEvent]) -> Result<(), EventLogError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.writer.is_some() && self.bytes >= self.opts.segment_bytes {
            self.rotate()?;
        }
        let path = self.current_path();
        let before = if self.writer.is_some() { self.bytes } else { 0 };
        match self.write_batch(events) {
            Ok(()) => {
                self.appended += events.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Nothing of a failed append may stay: later appends would follow a broken
                // message (and be lost at recovery), and the caller treats the batch as not
                // recorded. Cut the segment back and go on in a new one.
                self.writer = None;
                let cut = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(before).and_then(|_| f.sync_all()));
                if let Err(c) = cut {
                    tracing::error!(segment = %path.display(), error = %c, "event log: cutting a failed append failed");
                }
                self.seq += 1;
                Err(e)
            }
        }
    }

    fn write_batch(&mut self, events: &[LoggedEvent]) -> Result<(), EventLogError> {
        if self.writer.is_none() {
            let path = self.current_path();
            let file = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            self.bytes = 0;
            let w = StreamWriter::try_new(file, &schema()).map_err(|e| self.arrow_err(e))?;
            self.writer = Some(w);
            // A new file's directory entry must be durable too.
            sync_dir(&self.dir)?;
        }
        let batch = to_batch(events).map_err(|e| self.arrow_err(e))?;
        let path = self.current_path();
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        w.write(&batch).map_err(|e| EventLogError::Arrow {
            path: path.clone(),
            message: e.to_string(),
        })?;
        w.flush().map_err(|e| EventLogError::Arrow {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let bytes = w.get_ref().metadata().map_err(io(&path))?.len();
        let sync = match self.opts.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(ms) => self.last_sync.elapsed() >= Duration::from_millis(ms),
            FsyncPolicy::Never => false,
        };
        if sync {
            w.get_ref().sync_data().map_err(io(&path))?;
            self.last_sync = Instant::now();
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Lets go of the log the way a killed process would: no end-of-stream marker written, the
    /// directory lock released. For crash tests.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        if let Some(w) = self.writer.take() {
            std::mem::forget(w);
        }
    }

    /// Closes the current segment (with its end-of-stream marker) and starts the next.
    pub fn rotate(&mut self) -> Result<(), EventLogError> {
        if let Some(mut w) = self.writer.take() {
            let path = self.current_path();
            // The next segment is used whatever happens here, so one failed close cannot
            // leave every later append trying to create an existing file.
            self.seq += 1;
            w.finish().map_err(|e| EventLogError::Arrow {
                path: path.clone(),
                message: e.to_string(),
            })?;
            w.get_ref().sync_all().map_err(io(&path))?;
        }
        Ok(())
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        if let Err(e) = self.rotate() {
            tracing::warn!(error = %e, "event log: closing the last segment failed");
        }
    }
}

/// Takes the directory's writer lock (`.lock`, released when the process dies, even by kill -9).
fn lock_dir(dir: &Path) -> Result<File, EventLogError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(EventLogError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another process (or event log) is writing this directory",
            ),
        });
    }
    Ok(f)
}

fn sync_dir(dir: &Path) -> Result<(), EventLogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Column `name` of `b` as array type `T`; a segment written with another schema is an error,
/// never a panic.
fn typed<'a, T: 'static>(
    b: &'a RecordBatch,
    name: &str,
    seg: &Path,
) -> Result<&'a T, EventLogError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| EventLogError::Arrow {
            path: seg.to_path_buf(),
            message: format!("column {name} is missing or has an unexpected type"),
        })
}

/// Reads every complete event of the log, oldest first (a torn tail is ignored).
pub fn read_all(dir: &Path) -> Result<Vec<LoggedEvent>, EventLogError> {
    let mut out = Vec::new();
    for seg in segments(dir)? {
        out.extend(read_segment(&seg)?);
    }
    Ok(out)
}

/// Reads the complete events of one segment (a torn tail is ignored).
pub fn read_segment(seg: &Path) -> Result<Vec<LoggedEvent>, EventLogError> {
    let mut out = Vec::new();
    let keep = complete_prefix(seg)?;
    let mut bytes = Vec::new();
    File::open(seg)
        .and_then(|f| f.take(keep).read_to_end(&mut bytes))
        .map_err(io(seg))?;
    if bytes.is_empty() {
        return Ok(out);
    }
    let bad = |e: arrow::error::ArrowError| EventLogError::Arrow {
        path: seg.to_path_buf(),
        message: e.to_string(),
    };
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(bad)?;
    for batch in reader {
        let b = batch.map_err(bad)?;
        let u = typed::<UInt64Array>(&b, "user_id", seg)?;
        let it = typed::<UInt64Array>(&b, "item_id", seg)?;
        let ty = typed::<StringArray>(&b, "event_type", seg)?;
        let ts = typed::<Int64Array>(&b, "timestamp", seg)?;
        let w = typed::<Float32Array>(&b, "weight", seg)?;
        let id = typed::<StringArray>(&b, "event_id", seg)?;
        // Optional: older segments lack them.
        let opt = |name: &str| typed::<StringArray>(&b, name, seg).ok();
        let (rid, arm) = (opt("request_id"), opt("experiment_arm"));
        let text = |c: Option<&StringArray>, r: usize| {
            c.filter(|c| !arrow::array::Array::is_null(*c, r))
                .map(|c| c.value(r).to_string())
        };
        for r in 0..b.num_rows() {
            out.push(LoggedEvent {
                user_id: u.value(r),
                item_id: it.value(r),
                event_type: ty.value(r).to_string(),
                timestamp: ts.value(r),
                weight: w.value(r),
                event_id: (!arrow::array::Array::is_null(id, r)).then(|| id.value(r).to_string()),
                request_id: text(rid, r),
                arm: text(arm, r),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> LoggedEvent {
        LoggedEvent {
            user_id: i % 7,
            item_id: 1000 + i,
            event_type: "click".into(),
            timestamp: 1_700_000_000 + i as i64,
            weight: 1.0,
            event_id: i.is_multiple_of(2).then(|| format!("e{i}")),
            request_id: None,
            arm: None,
        }
    }

    #[test]
    fn append_rotate_reopen_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 2_000,
            fsync: FsyncPolicy::Always,
        };
        let all: Vec<LoggedEvent> = (0..300).map(ev).collect();
        {
            let mut log = EventLog::open(dir.path(), opts.clone()).unwrap();
            for chunk in all[..200].chunks(10) {
                log.append(chunk).unwrap();
            }
            assert_eq!(log.appended(), 200);
        }
        assert!(segments(dir.path()).unwrap().len() > 2, "rotation by size");
        {
            let mut log = EventLog::open(dir.path(), opts).unwrap();
            log.append(&all[200..]).unwrap();
        }
        assert_eq!(read_all(dir.path()).unwrap(), all);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 1 << 20,
            fsync: FsyncPolicy::Interval(1000),
        };
        let all: Vec<LoggedEvent> = (0..50).map(ev).collect();
        let mut log = EventLog::open(dir.path(), opts.clone()).unwrap();
        log.append(&all[..20]).unwrap();
        log.append(&all[20..40]).unwrap();
        let seg = segments(dir.path()).unwrap()[0].clone();
        // A crash mid-append: the process dies without finishing the segment, and the last
        // message is half on disk.
        log.abandon();
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 37).unwrap();
        assert_eq!(read_all(dir.path()).unwrap(), all[..20].to_vec());
        let mut log = EventLog::open(dir.path(), opts).unwrap();
        assert!(std::fs::metadata(&seg).unwrap().len() < len - 37);
        log.append(&all[40..]).unwrap();
        drop(log);
        let mut want = all[..20].to_vec();
        want.extend_from_slice(&all[40..]);
        assert_eq!(read_all(dir.path()).unwrap(), want);
    }
}
