//! Column naming and value rules shared by every format: which header names (aliases,
//! case-insensitive, RecBole `:type` suffix stripped) fill which field, and how a scalar is parsed
//! and validated (ids, timestamps, numbers, booleans, categories). Keeping these in one place makes
//! CSV, Parquet, Arrow and MovieLens inputs accept and reject exactly the same values.

use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

use super::{IngestError, MAX_TIMESTAMP, MIN_PUBLISHED};

/// A logical field and the header names that may hold it, in priority order.
pub(super) struct Role {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
}

pub(super) const USER_ID: Role = Role {
    name: "user_id",
    aliases: &["user_id", "user"],
};
pub(super) const ITEM_ID: Role = Role {
    name: "item_id",
    aliases: &["item_id", "item", "movie_id"],
};
pub(super) const TIMESTAMP: Role = Role {
    name: "timestamp",
    aliases: &["timestamp", "ts", "time", "event_time"],
};
pub(super) const EVENT_TYPE: Role = Role {
    name: "event_type",
    aliases: &["event_type", "event", "type"],
};
pub(super) const WEIGHT: Role = Role {
    name: "weight",
    aliases: &["weight"],
};
pub(super) const RATING: Role = Role {
    name: "rating",
    aliases: &["rating"],
};
pub(super) const TITLE: Role = Role {
    name: "title",
    aliases: &["title", "movie_title", "name"],
};
pub(super) const CATEGORIES: Role = Role {
    name: "categories",
    aliases: &["categories", "genres", "class", "category"],
};
pub(super) const CREATOR_ID: Role = Role {
    name: "creator_id",
    aliases: &["creator_id", "creator"],
};
pub(super) const PUBLISHED_AT: Role = Role {
    name: "published_at",
    aliases: &["published_at"],
};
pub(super) const RELEASE_YEAR: Role = Role {
    name: "release_year",
    aliases: &["release_year", "year"],
};
pub(super) const POLICY_FLAG: Role = Role {
    name: "policy_flag",
    aliases: &["policy_flag", "flagged"],
};
pub(super) const PROMOTED: Role = Role {
    name: "promoted",
    aliases: &["promoted"],
};

/// RecBole atomic-file field types (`name:type` headers).
const RECBOLE_TYPES: [&str; 4] = ["token", "token_seq", "float", "float_seq"];

/// A resolved column: its position and its name as written in the file (for messages).
#[derive(Debug, Clone)]
pub(super) struct Column {
    pub index: usize,
    pub name: String,
}

/// Header name as displayed: trimmed, BOM and RecBole `:type` suffix removed.
fn display_name(raw: &str) -> &str {
    let s = raw.trim().trim_start_matches('\u{feff}').trim();
    match s.rsplit_once(':') {
        Some((name, ty)) if RECBOLE_TYPES.contains(&ty.trim().to_ascii_lowercase().as_str()) => {
            name.trim()
        }
        _ => s,
    }
}

/// Header names of a file, ready for role lookup.
pub(super) struct Headers {
    display: Vec<String>,
    keys: Vec<String>,
}

impl Headers {
    pub fn new<S: AsRef<str>>(raw: &[S]) -> Self {
        let display: Vec<String> = raw
            .iter()
            .map(|h| display_name(h.as_ref()).to_string())
            .collect();
        let keys = display.iter().map(|d| d.to_ascii_lowercase()).collect();
        Headers { display, keys }
    }

    /// The first alias (in priority order) present in the file.
    pub fn find(&self, role: &Role) -> Option<Column> {
        role.aliases.iter().find_map(|alias| {
            self.keys
                .iter()
                .position(|k| k == alias)
                .map(|index| Column {
                    index,
                    name: self.display[index].clone(),
                })
        })
    }

    pub fn require(&self, path: &Path, role: &Role) -> Result<Column, IngestError> {
        self.find(role).ok_or_else(|| IngestError::MissingColumn {
            path: path.to_path_buf(),
            column: role.name,
            accepted: role.aliases.join("|"),
            found: if self.display.is_empty() {
                "no columns".to_string()
            } else {
                self.display.join(", ")
            },
        })
    }
}

/// Columns of an interaction file.
#[derive(Debug, Clone)]
pub(super) struct InteractionColumns {
    pub user: Column,
    pub item: Column,
    pub timestamp: Column,
    pub event_type: Option<Column>,
    pub weight: Option<Column>,
    pub rating: Option<Column>,
}

impl InteractionColumns {
    pub fn resolve(path: &Path, headers: &Headers) -> Result<Self, IngestError> {
        Ok(InteractionColumns {
            user: headers.require(path, &USER_ID)?,
            item: headers.require(path, &ITEM_ID)?,
            timestamp: headers.require(path, &TIMESTAMP)?,
            event_type: headers.find(&EVENT_TYPE),
            weight: headers.find(&WEIGHT),
            rating: headers.find(&RATING),
        })
    }

    /// Positions of every column in use (for projection).
    pub fn indices(&self) -> Vec<usize> {
        let mut v = vec![self.user.index, self.item.index, self.timestamp.index];
        for c in [&self.event_type, &self.weight, &self.rating]
            .into_iter()
            .flatten()
        {
            v.push(c.index);
        }
        v
    }
}

/// Columns of an item catalog file.
#[derive(Debug, Clone)]
pub(super) struct ItemColumns {
    pub item: Column,
    pub title: Option<Column>,
    pub categories: Option<Column>,
    pub creator: Option<Column>,
    pub published: Option<Column>,
    pub year: Option<Column>,
    pub flag: Option<Column>,
    pub promoted: Option<Column>,
}

impl ItemColumns {
    pub fn resolve(path: &Path, headers: &Headers) -> Result<Self, IngestError> {
        Ok(ItemColumns {
            item: headers.require(path, &ITEM_ID)?,
            title: headers.find(&TITLE),
            categories: headers.find(&CATEGORIES),
            creator: headers.find(&CREATOR_ID),
            published: headers.find(&PUBLISHED_AT),
            year: headers.find(&RELEASE_YEAR),
            flag: headers.find(&POLICY_FLAG),
            promoted: headers.find(&PROMOTED),
        })
    }

    pub fn indices(&self) -> Vec<usize> {
        let mut v = vec![self.item.index];
        for c in [
            &self.title,
            &self.categories,
            &self.creator,
            &self.published,
            &self.year,
            &self.flag,
            &self.promoted,
        ]
        .into_iter()
        .flatten()
        {
            v.push(c.index);
        }
        v
    }
}

/// Quotes a raw value for an error message, cut short so a huge cell can't flood the log.
pub(super) fn show(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("'{}…'", &s[..cut]),
        None => format!("'{s}'"),
    }
}

/// Largest integer an f64 holds exactly; float ids above it have lost digits already.
const MAX_EXACT_F64: f64 = 9_007_199_254_740_992.0;

pub(super) fn parse_id(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("missing value".to_string());
    }
    if let Ok(v) = s.parse::<u64>() {
        return Ok(v);
    }
    // Float-typed ids ("12.0") come from tools that widen nullable integer columns.
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= MAX_EXACT_F64 => {
            Ok(f as u64)
        }
        _ => Err(format!("{} is not a non-negative integer", show(s))),
    }
}

pub(super) fn int_to_id(v: i64) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("'{v}' is not a non-negative integer"))
}

pub(super) fn float_to_id(f: f64) -> Result<u64, String> {
    if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= MAX_EXACT_F64 {
        Ok(f as u64)
    } else {
        Err(format!("'{f}' is not a non-negative integer"))
    }
}

/// Seconds from a float (fractions dropped toward the past). Range is checked by the caller.
pub(super) fn float_to_seconds(f: f64) -> Result<i64, String> {
    // Beyond ±1e15 s the value is garbage for any range we accept; bail before the cast saturates.
    if !f.is_finite() || f.abs() > 1e15 {
        return Err(format!(
            "'{f}' is out of range for a unix timestamp (seconds)"
        ));
    }
    Ok(f.floor() as i64)
}

/// A timestamp cell in a text file: integer or float unix seconds, or an RFC 3339 date-time
/// (also `YYYY-MM-DD HH:MM:SS[.f]` and `YYYY-MM-DD`, taken as UTC, as pandas writes them).
/// Range is checked by the caller.
pub(super) fn parse_seconds(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("missing value".to_string());
    }
    if let Ok(v) = s.parse::<i64>() {
        return Ok(v);
    }
    if let Ok(f) = s.parse::<f64>() {
        return float_to_seconds(f);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(dt.timestamp());
    }
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Ok(dt.timestamp());
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
        return Ok(dt.and_utc().timestamp());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(day_start(d));
    }
    Err(format!(
        "{} is not a unix timestamp (seconds) or an RFC 3339 date-time",
        show(s)
    ))
}

pub(super) fn day_start(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .map(|dt| dt.and_utc().timestamp())
        .unwrap_or_default()
}

/// Interaction timestamps: unix seconds in `0..=MAX_TIMESTAMP`.
pub(super) fn check_timestamp(t: i64) -> Result<i64, String> {
    if (0..=MAX_TIMESTAMP).contains(&t) {
        return Ok(t);
    }
    let hint = if t > MAX_TIMESTAMP && t / 1000 <= MAX_TIMESTAMP {
        " (looks like milliseconds or finer; convert to seconds)"
    } else {
        ""
    };
    Err(format!(
        "{t} is out of range: expected unix seconds between 0 (1970) and {MAX_TIMESTAMP} (2200){hint}"
    ))
}

/// Publish times: unix seconds in `MIN_PUBLISHED..=MAX_TIMESTAMP` (old catalog items are fine).
pub(super) fn check_published(t: i64) -> Result<i64, String> {
    if (MIN_PUBLISHED..=MAX_TIMESTAMP).contains(&t) {
        Ok(t)
    } else {
        Err(format!(
            "{t} is out of range: expected unix seconds between {MIN_PUBLISHED} (1800) and {MAX_TIMESTAMP} (2200)"
        ))
    }
}

/// `published_at` for a release year: Jan 1 of that year, UTC.
pub(super) fn year_to_published(year: i64) -> Result<i64, String> {
    let ts = i32::try_from(year)
        .ok()
        .filter(|y| (1800..2200).contains(y))
        .and_then(|y| Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).single());
    match ts {
        Some(dt) => Ok(dt.timestamp()),
        None => Err(format!("year {year} is out of range (1800..2200)")),
    }
}

/// `published_at` from a release-year cell. A cell that is not a number reads as unknown
/// (`None`): real catalogs hold markers and scraps there (RecBole's ML-100K has `unkonwn` and
/// `V`), and a year is optional metadata not worth failing a build over. A numeric year outside
/// 1800..2200 is still an error.
pub(super) fn parse_year(s: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    let year = match s.parse::<i64>() {
        Ok(y) => y,
        Err(_) => match s.parse::<f64>() {
            Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e6 => f as i64,
            Ok(f) => return Err(format!("'{f}' is not a year")),
            Err(_) => return Ok(None),
        },
    };
    year_to_published(year).map(Some)
}

/// Weight / rating: must be a finite f32.
pub(super) fn check_number(f: f64) -> Result<f32, String> {
    let v = f as f32;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("'{f}' is not a finite number"))
    }
}

pub(super) fn parse_number(s: &str) -> Result<f32, String> {
    let s = s.trim();
    match s.parse::<f64>() {
        Ok(f) => check_number(f).map_err(|_| format!("{} is not a finite number", show(s))),
        Err(_) => Err(format!("{} is not a number", show(s))),
    }
}

/// Empty reads as false: a blank flag cell means "not flagged".
pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    let s = s.trim();
    match s.to_ascii_lowercase().as_str() {
        "" | "0" | "0.0" | "false" | "f" | "no" | "n" => Ok(false),
        "1" | "1.0" | "true" | "t" | "yes" | "y" => Ok(true),
        _ => Err(format!(
            "{} is not a boolean (expected true/false or 1/0)",
            show(s)
        )),
    }
}

/// A multi-valued category cell: '|'-separated if it holds a '|', else whitespace-separated
/// (RecBole `token_seq`). Empty parts and repeats are dropped.
pub(super) fn split_categories(s: &str) -> Vec<String> {
    let parts: Box<dyn Iterator<Item = &str>> = if s.contains('|') {
        Box::new(s.split('|'))
    } else {
        Box::new(s.split_whitespace())
    };
    let mut out: Vec<String> = Vec::new();
    for p in parts.map(str::trim).filter(|p| !p.is_empty()) {
        if !out.iter().any(|c| c == p) {
            out.push(p.to_string());
        }
    }
    out
}

/// Text cell bytes → String: UTF-8, else Latin-1 (MovieLens-derived files often are), which
/// maps every byte, so decoding never fails.
pub(super) fn decode_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}
