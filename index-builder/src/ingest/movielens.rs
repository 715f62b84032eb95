//! Classic MovieLens 100K files, which have no header: `u.data` (and its `uN.base`/`uN.test`
//! splits; tab-separated `user item rating timestamp`) and `u.item` (pipe-separated, Latin-1:
//! `id|title|release date|video release date|url|19 genre flags`).

use std::io::{BufRead, BufReader};
use std::path::Path;

use chrono::NaiveDate;

use super::csv::text_interaction;
use super::schema::{check_published, day_start, parse_id, show, Column, InteractionColumns};
use super::{open_nonempty, IngestError, Location, RawInteraction, RawItem};

/// `u.item` genre flag order (from the dataset's `u.genre`).
const GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];
const ITEM_FIELDS: usize = 5 + GENRES.len();

fn wrong_width(path: &Path, location: Location, found: usize) -> IngestError {
    IngestError::bad_row(
        path,
        location,
        format!(
            "expected {ITEM_FIELDS} '|'-separated fields (id|title|release date|video release date|url|19 genre flags), found {found}"
        ),
    )
}

fn column(index: usize, name: &str) -> Column {
    Column {
        index,
        name: name.to_string(),
    }
}

/// Strips the line terminator; `None` for blank lines, which are skipped.
fn content(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(line)
    }
}

pub(super) fn read_interactions(path: &Path) -> Result<Vec<RawInteraction>, IngestError> {
    let file = open_nonempty(path)?;
    let cols = InteractionColumns {
        user: column(0, "user_id"),
        item: column(1, "item_id"),
        rating: Some(column(2, "rating")),
        timestamp: column(3, "timestamp"),
        event_type: None,
        weight: None,
    };
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| IngestError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let Some(line) = content(&buf) else { continue };
        let location = Location::Line(line_no);
        let fields: Vec<&[u8]> = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty())
            .collect();
        if fields.len() != 4 {
            return Err(IngestError::bad_row(
                path,
                location,
                format!(
                    "expected 4 tab-separated fields (user item rating timestamp), found {}",
                    fields.len()
                ),
            ));
        }
        let row = text_interaction(&cols, |i| fields.get(i).copied().unwrap_or_default())
            .map_err(|(col, msg)| IngestError::bad_value(path, location, &col, msg))?;
        out.push(row);
    }
    Ok(out)
}

pub(super) fn read_items(path: &Path) -> Result<Vec<RawItem>, IngestError> {
    let mut file = open_nonempty(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| IngestError::io(path, e))?;
    // The original is Latin-1; a re-encoded UTF-8 copy is decoded as UTF-8. Decided per file so
    // one odd title can't flip the encoding of the others.
    let utf8 = std::str::from_utf8(&bytes).is_ok();
    let decode = |b: &[u8]| -> String {
        if utf8 {
            String::from_utf8_lossy(b).into_owned()
        } else {
            b.iter().map(|&c| char::from(c)).collect()
        }
    };

    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let Some(line) = content(raw) else { continue };
        let location = Location::Line(i as u64 + 1);
        let bad = |col: &str, msg: String| IngestError::bad_value(path, location, col, msg);
        let fields: Vec<String> = line.split(|&b| b == b'|').map(decode).collect();
        let [id, title, date, _video_date, _url, flags @ ..] = fields.as_slice() else {
            return Err(wrong_width(path, location, fields.len()));
        };
        if flags.len() != GENRES.len() {
            return Err(wrong_width(path, location, fields.len()));
        }
        let item_id = parse_id(id).map_err(|m| bad("movie_id", m))?;
        let title = title.trim().to_string();
        let date = date.trim();
        let published_at = if date.is_empty() {
            None
        } else {
            let d = NaiveDate::parse_from_str(date, "%d-%b-%Y").map_err(|_| {
                bad(
                    "release_date",
                    format!("{} is not a date like 01-Jan-1995", show(date)),
                )
            })?;
            Some(check_published(day_start(d)).map_err(|m| bad("release_date", m))?)
        };
        let mut categories = Vec::new();
        for (flag, genre) in flags.iter().zip(GENRES) {
            match flag.trim() {
                "1" => categories.push(genre.to_string()),
                "0" => {}
                other => {
                    return Err(bad(
                        genre,
                        format!("genre flag {} is not 0 or 1", show(other)),
                    ))
                }
            }
        }
        out.push(RawItem {
            item_id,
            title,
            categories,
            creator_id: None,
            published_at,
            policy_flag: false,
            promoted: false,
        });
    }
    Ok(out)
}
