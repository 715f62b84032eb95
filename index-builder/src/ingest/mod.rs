//! Ingest: reads raw interaction logs and item catalogs from disk into [`RawInteraction`] /
//! [`RawItem`] rows, whatever the on-disk format (Parquet, Arrow IPC, CSV/TSV, RecBole
//! `.inter`/`.item`, classic MovieLens `u.data`/`u.item`), and rejects bad input with an
//! [`IngestError`] that names the file and row. It owns format detection, column-name aliases and
//! per-value validation; it does not dedupe, remap ids or apply feature defaults (the builder does).

mod columnar;
mod csv;
mod ipc;
mod movielens;
mod parquet;
mod schema;

use std::fmt;
use std::path::{Path, PathBuf};

/// One interaction (event) from a log, as read; ids are the source's ids.
#[derive(Debug, Clone, PartialEq)]
pub struct RawInteraction {
    pub user_id: u64,
    pub item_id: u64,
    /// Unix seconds, validated to lie in `0..=MAX_TIMESTAMP`.
    pub timestamp: i64,
    pub event_type: Option<String>,
    /// Finite when present.
    pub weight: Option<f32>,
    /// Finite when present.
    pub rating: Option<f32>,
}

/// One catalog item, as read. Missing optional columns read as `None` / `false` / empty.
#[derive(Debug, Clone, PartialEq)]
pub struct RawItem {
    pub item_id: u64,
    pub title: String,
    pub categories: Vec<String>,
    pub creator_id: Option<u64>,
    /// Unix seconds (may be negative: catalogs hold old films), validated to lie in
    /// `MIN_PUBLISHED..=MAX_TIMESTAMP`.
    pub published_at: Option<i64>,
    pub policy_flag: bool,
    pub promoted: bool,
}

/// Latest accepted timestamp: 2200-01-01T00:00:00Z. Larger values are almost always
/// milliseconds or microseconds mistaken for seconds.
pub const MAX_TIMESTAMP: i64 = 7_258_118_400;
/// Earliest accepted `published_at`: 1800-01-01T00:00:00Z (interaction timestamps must be ≥ 0).
pub const MIN_PUBLISHED: i64 = -5_364_662_400;

/// Where in a file an error was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// 1-based line number in a text file (the header, if any, is line 1).
    Line(u64),
    /// 1-based data row in a columnar (Parquet / Arrow) file.
    Row(u64),
    /// Not tied to one row.
    File,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, ":{n}"),
            Location::Row(n) => write!(f, ": row {n}"),
            Location::File => Ok(()),
        }
    }
}

/// Why a file could not be ingested. Every variant's message starts with the file path and,
/// where known, the line (`path:17: ...`) or row (`path: row 17: ...`).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: unsupported input; expected {expected}", path.display())]
    UnsupportedFormat {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{}: file is empty", path.display())]
    EmptyFile { path: PathBuf },
    #[error("{}: Arrow stream torn inside its first message (nothing complete to read)", path.display())]
    TornStream { path: PathBuf },
    #[error("{}: no data rows", path.display())]
    NoRows { path: PathBuf },
    #[error("{}: missing required column {column} (accepted names: {accepted}; found: {found})", path.display())]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        accepted: String,
        found: String,
    },
    #[error("{}{location}: column {column}: {message}", path.display())]
    BadValue {
        path: PathBuf,
        location: Location,
        column: String,
        message: String,
    },
    #[error("{}{location}: {message}", path.display())]
    BadRow {
        path: PathBuf,
        location: Location,
        message: String,
    },
    #[error("{}: column {column} has unsupported type {data_type}", path.display())]
    ColumnType {
        path: PathBuf,
        column: String,
        data_type: String,
    },
    #[error("{}{location}: corrupt or truncated {format} file: {message}", path.display())]
    Corrupt {
        path: PathBuf,
        location: Location,
        format: &'static str,
        message: String,
    },
}

impl IngestError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        IngestError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn bad_value(path: &Path, location: Location, column: &str, message: String) -> Self {
        IngestError::BadValue {
            path: path.to_path_buf(),
            location,
            column: column.to_string(),
            message,
        }
    }

    fn bad_row(path: &Path, location: Location, message: String) -> Self {
        IngestError::BadRow {
            path: path.to_path_buf(),
            location,
            message,
        }
    }

    fn corrupt(path: &Path, location: Location, format: &'static str, message: String) -> Self {
        IngestError::Corrupt {
            path: path.to_path_buf(),
            location,
            format,
            message,
        }
    }
}

/// What a file holds; decides which formats are acceptable (`.inter` vs `.item`, `u.data` vs `u.item`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Interactions,
    Items,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Parquet,
    Ipc,
    /// Header row required.
    Delimited(self::csv::Dialect),
    /// MovieLens `u.data` (and its `uN.base`/`uN.test` splits).
    MlData,
    MlItem,
}

const INTERACTION_FORMATS: &str =
    ".parquet, .arrow/.ipc/.feather, .csv, .tsv, .inter, or MovieLens u.data (*.base/*.test)";
const ITEM_FORMATS: &str = ".parquet, .arrow/.ipc/.feather, .csv, .tsv, .item, or MovieLens u.item";

/// Picks the reader from the file name; `None` when the name matches no format for `kind`.
fn detect(path: &Path, kind: Kind) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    // Exact MovieLens names first: `u.item` would otherwise look like a RecBole `.item` file.
    match (name.as_str(), kind) {
        ("u.data", Kind::Interactions) => return Some(Format::MlData),
        ("u.item", Kind::Items) => return Some(Format::MlItem),
        _ => {}
    }
    match (ext, kind) {
        ("parquet" | "pq", _) => Some(Format::Parquet),
        ("arrow" | "ipc" | "feather" | "arrows", _) => Some(Format::Ipc),
        ("csv", _) => Some(Format::Delimited(self::csv::Dialect::Csv)),
        ("tsv", _) => Some(Format::Delimited(self::csv::Dialect::Tsv)),
        ("inter", Kind::Interactions) | ("item", Kind::Items) => {
            Some(Format::Delimited(self::csv::Dialect::RecBole))
        }
        ("base" | "test", Kind::Interactions) if name.starts_with('u') => Some(Format::MlData),
        _ => None,
    }
}

/// Reads an interaction log: one file, or a directory whose supported files (sorted by name,
/// hidden and unsupported files skipped, not recursive) are read and concatenated. In a
/// directory, files with no rows (e.g. a just-created segment) are skipped; the total must not be
/// empty.
pub fn read_interactions(path: &Path) -> Result<Vec<RawInteraction>, IngestError> {
    let meta = std::fs::metadata(path).map_err(|e| IngestError::io(path, e))?;
    if !meta.is_dir() {
        let rows = read_interactions_file(path)?;
        if rows.is_empty() {
            return Err(IngestError::NoRows {
                path: path.to_path_buf(),
            });
        }
        return Ok(rows);
    }

    let files = supported_files(path, Kind::Interactions)?;
    if files.is_empty() {
        return Err(IngestError::UnsupportedFormat {
            path: path.to_path_buf(),
            expected: "a directory holding at least one interaction file (.parquet, .arrow/.ipc/.feather, .csv, .tsv, .inter, u.data)",
        });
    }
    let mut all = Vec::new();
    for file in &files {
        match read_interactions_file(file) {
            Ok(rows) if rows.is_empty() => {
                tracing::warn!(file = %file.display(), "skipping interaction file with no rows");
            }
            Ok(mut rows) => {
                if all.is_empty() {
                    all = rows;
                } else {
                    all.append(&mut rows);
                }
            }
            Err(IngestError::EmptyFile { .. } | IngestError::TornStream { .. }) => {
                // An event log's newest segment can be empty or torn at its start.
                tracing::warn!(file = %file.display(), "skipping empty interaction file");
            }
            Err(e) => return Err(e),
        }
    }
    if all.is_empty() {
        return Err(IngestError::NoRows {
            path: path.to_path_buf(),
        });
    }
    Ok(all)
}

/// Reads an item catalog file.
pub fn read_items(path: &Path) -> Result<Vec<RawItem>, IngestError> {
    let meta = std::fs::metadata(path).map_err(|e| IngestError::io(path, e))?;
    if meta.is_dir() {
        return Err(IngestError::UnsupportedFormat {
            path: path.to_path_buf(),
            expected: "an item catalog file, not a directory",
        });
    }
    let format = detect(path, Kind::Items).ok_or_else(|| IngestError::UnsupportedFormat {
        path: path.to_path_buf(),
        expected: ITEM_FORMATS,
    })?;
    let items = match format {
        Format::Parquet => self::parquet::read_items(path)?,
        Format::Ipc => self::ipc::read_items(path)?,
        Format::Delimited(dialect) => self::csv::read_items(path, dialect)?,
        Format::MlItem => self::movielens::read_items(path)?,
        Format::MlData => {
            return Err(IngestError::UnsupportedFormat {
                path: path.to_path_buf(),
                expected: ITEM_FORMATS,
            })
        }
    };
    if items.is_empty() {
        return Err(IngestError::NoRows {
            path: path.to_path_buf(),
        });
    }
    Ok(items)
}

/// One file; `Ok(empty)` when it has a header/schema but no rows.
fn read_interactions_file(path: &Path) -> Result<Vec<RawInteraction>, IngestError> {
    let format =
        detect(path, Kind::Interactions).ok_or_else(|| IngestError::UnsupportedFormat {
            path: path.to_path_buf(),
            expected: INTERACTION_FORMATS,
        })?;
    match format {
        Format::Parquet => self::parquet::read_interactions(path),
        Format::Ipc => self::ipc::read_interactions(path),
        Format::Delimited(dialect) => self::csv::read_interactions(path, dialect),
        Format::MlData => self::movielens::read_interactions(path),
        Format::MlItem => Err(IngestError::UnsupportedFormat {
            path: path.to_path_buf(),
            expected: INTERACTION_FORMATS,
        }),
    }
}

/// Regular, non-hidden files in `dir` with a format for `kind`, sorted by file name.
fn supported_files(dir: &Path, kind: Kind) -> Result<Vec<PathBuf>, IngestError> {
    let entries = std::fs::read_dir(dir).map_err(|e| IngestError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| IngestError::io(dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_file() && detect(&path, kind).is_some() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Runs a third-party decoder so that a panic on hostile bytes (decoders have had such bugs)
/// becomes a [`IngestError::Corrupt`] instead of taking the job down.
fn guarded<T>(
    path: &Path,
    format: &'static str,
    f: impl FnOnce() -> Result<T, IngestError>,
) -> Result<T, IngestError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(IngestError::corrupt(
                path,
                Location::File,
                format,
                format!("decoder panicked: {msg}"),
            ))
        }
    }
}

/// Opens a file, mapping the error to [`IngestError::Io`], and rejects zero-byte files.
fn open_nonempty(path: &Path) -> Result<std::fs::File, IngestError> {
    let file = std::fs::File::open(path).map_err(|e| IngestError::io(path, e))?;
    let len = file.metadata().map_err(|e| IngestError::io(path, e))?.len();
    if len == 0 {
        return Err(IngestError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}
