//! Header-ful delimited text: CSV (comma, RFC 4180 quoting), TSV, and RecBole atomic files
//! (`.inter` / `.item`: tab-separated, unquoted, `name:type` headers). Also owns the per-row text
//! parsers that the headerless MovieLens `u.data` reader reuses.

use std::fs::File;
use std::path::Path;

use ::csv::{ByteRecord, ErrorKind, Reader, ReaderBuilder, Trim};

use super::schema::{
    self, check_published, check_timestamp, decode_text, parse_bool, parse_id, parse_number,
    parse_seconds, parse_year, split_categories, Headers, InteractionColumns, ItemColumns,
};
use super::{open_nonempty, IngestError, Location, RawInteraction, RawItem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Csv,
    Tsv,
    /// RecBole never quotes: titles may hold a bare `"`.
    RecBole,
}

impl Dialect {
    fn delimiter(self) -> u8 {
        match self {
            Dialect::Csv => b',',
            Dialect::Tsv | Dialect::RecBole => b'\t',
        }
    }
}

fn open(path: &Path, dialect: Dialect) -> Result<(Reader<File>, Headers), IngestError> {
    let file = open_nonempty(path)?;
    let mut rdr = ReaderBuilder::new()
        .delimiter(dialect.delimiter())
        .quoting(dialect != Dialect::RecBole)
        .trim(Trim::All)
        .has_headers(true)
        .flexible(false)
        .from_reader(file);
    let raw = rdr.byte_headers().map_err(|e| csv_error(path, e))?;
    let names: Vec<String> = raw.iter().map(decode_text).collect();
    Ok((rdr, Headers::new(&names)))
}

fn csv_error(path: &Path, err: ::csv::Error) -> IngestError {
    let location = err
        .position()
        .map_or(Location::File, |p| Location::Line(p.line()));
    match err.into_kind() {
        ErrorKind::Io(e) => IngestError::io(path, e),
        ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => IngestError::bad_row(
            path,
            location,
            format!("expected {expected_len} fields (as in the header), found {len}"),
        ),
        other => IngestError::bad_row(path, location, format!("{other:?}")),
    }
}

/// Runs `parse` on every data record, tagging its errors with the record's line.
fn for_each_record<T>(
    path: &Path,
    mut rdr: Reader<File>,
    mut parse: impl FnMut(&ByteRecord) -> Result<T, (String, String)>,
) -> Result<Vec<T>, IngestError> {
    let mut out = Vec::new();
    let mut rec = ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(path, e)),
        }
        let location = rec
            .position()
            .map_or(Location::File, |p| Location::Line(p.line()));
        let row = parse(&rec)
            .map_err(|(column, msg)| IngestError::bad_value(path, location, &column, msg))?;
        out.push(row);
    }
    Ok(out)
}

pub(super) fn read_interactions(
    path: &Path,
    dialect: Dialect,
) -> Result<Vec<RawInteraction>, IngestError> {
    let (rdr, headers) = open(path, dialect)?;
    let cols = InteractionColumns::resolve(path, &headers)?;
    for_each_record(path, rdr, |rec| {
        text_interaction(&cols, |i| rec.get(i).unwrap_or_default())
    })
}

pub(super) fn read_items(path: &Path, dialect: Dialect) -> Result<Vec<RawItem>, IngestError> {
    let (rdr, headers) = open(path, dialect)?;
    let cols = ItemColumns::resolve(path, &headers)?;
    for_each_record(path, rdr, |rec| {
        text_item(&cols, |i| rec.get(i).unwrap_or_default())
    })
}

/// A cell that must be text (ids, numbers, timestamps).
fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "value is not valid UTF-8".to_string())
}

fn cell<'a, T>(
    col: &schema::Column,
    bytes: &'a [u8],
    parse: impl FnOnce(&'a str) -> Result<T, String>,
) -> Result<T, (String, String)> {
    utf8(bytes)
        .and_then(parse)
        .map_err(|msg| (col.name.clone(), msg))
}

/// An optional cell: empty (after trimming) reads as `None`.
fn opt_cell<'a, T>(
    col: Option<&schema::Column>,
    field: impl Fn(usize) -> &'a [u8],
    parse: impl FnOnce(&'a str) -> Result<T, String>,
) -> Result<Option<T>, (String, String)> {
    match col {
        Some(c) => {
            let bytes = field(c.index);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                Ok(None)
            } else {
                cell(c, bytes, parse).map(Some)
            }
        }
        None => Ok(None),
    }
}

/// One interaction from text cells; `field(i)` is the i-th cell. Errors are (column, message).
pub(super) fn text_interaction<'a>(
    cols: &InteractionColumns,
    field: impl Fn(usize) -> &'a [u8],
) -> Result<RawInteraction, (String, String)> {
    let user_id = cell(&cols.user, field(cols.user.index), parse_id)?;
    let item_id = cell(&cols.item, field(cols.item.index), parse_id)?;
    let timestamp = cell(&cols.timestamp, field(cols.timestamp.index), |s| {
        parse_seconds(s).and_then(check_timestamp)
    })?;
    let event_type = cols
        .event_type
        .as_ref()
        .map(|c| decode_text(field(c.index)).trim().to_string())
        .filter(|s| !s.is_empty());
    let weight = opt_cell(cols.weight.as_ref(), &field, parse_number)?;
    let rating = opt_cell(cols.rating.as_ref(), &field, parse_number)?;
    Ok(RawInteraction {
        user_id,
        item_id,
        timestamp,
        event_type,
        weight,
        rating,
    })
}

/// One catalog item from text cells. An explicit `published_at` wins over a release year.
fn text_item<'a>(
    cols: &ItemColumns,
    field: impl Fn(usize) -> &'a [u8],
) -> Result<RawItem, (String, String)> {
    let item_id = cell(&cols.item, field(cols.item.index), parse_id)?;
    let title = cols
        .title
        .as_ref()
        .map(|c| decode_text(field(c.index)).trim().to_string())
        .unwrap_or_default();
    let categories = cols
        .categories
        .as_ref()
        .map(|c| split_categories(&decode_text(field(c.index))))
        .unwrap_or_default();
    let creator_id = opt_cell(cols.creator.as_ref(), &field, parse_id)?;
    let mut published_at = opt_cell(cols.published.as_ref(), &field, |s| {
        parse_seconds(s).and_then(check_published)
    })?;
    if published_at.is_none() {
        published_at = opt_cell(cols.year.as_ref(), &field, parse_year)?.flatten();
    }
    let policy_flag = opt_cell(cols.flag.as_ref(), &field, parse_bool)?.unwrap_or(false);
    let promoted = opt_cell(cols.promoted.as_ref(), &field, parse_bool)?.unwrap_or(false);
    Ok(RawItem {
        item_id,
        title,
        categories,
        creator_id,
        published_at,
        policy_flag,
        promoted,
    })
}
