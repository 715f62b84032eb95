//! Ingest readers: real ML-100K RecBole files (when present), every supported format round-tripped
//! through small temp files, and every class of bad input rejected with a message naming the
//! file and row — never a panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, DictionaryArray, Float32Array, Float64Array, Int32Array, Int64Array,
    ListBuilder, RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampSecondArray, UInt64Array,
};
use arrow::datatypes::{Field, Int8Type, Schema};
use arrow::ipc::writer::{FileWriter, StreamWriter};
use index_builder::ingest::{read_interactions, read_items, IngestError, RawInteraction, RawItem};
use parquet::arrow::ArrowWriter;
use proptest::prelude::*;
use tempfile::TempDir;

fn ml100k_dir() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        manifest.join("../../shared/data/ml-100k"),
        manifest.join("../shared/data/ml-100k"),
    ]
    .into_iter()
    .find(|p| p.join("ml-100k.inter").is_file())
}

fn write(dir: &TempDir, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    fs::write(&p, contents).unwrap();
    p
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let file = fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

fn write_ipc_file(path: &Path, batches: &[RecordBatch]) {
    let file = fs::File::create(path).unwrap();
    let mut w = FileWriter::try_new(file, &batches[0].schema()).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
}

fn write_ipc_stream(path: &Path, batches: &[RecordBatch]) {
    let file = fs::File::create(path).unwrap();
    let mut w = StreamWriter::try_new(file, &batches[0].schema()).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
}

/// Asserts the error message names the file and contains every fragment.
fn assert_err(err: IngestError, path: &Path, fragments: &[&str]) {
    let msg = err.to_string();
    assert!(
        msg.starts_with(&path.display().to_string()),
        "message should start with the path {}: {msg}",
        path.display()
    );
    for f in fragments {
        assert!(msg.contains(f), "message should contain {f:?}: {msg}");
    }
}

fn inter(user_id: u64, item_id: u64, timestamp: i64) -> RawInteraction {
    RawInteraction {
        user_id,
        item_id,
        timestamp,
        event_type: None,
        weight: None,
        rating: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Real data

#[test]
fn ml100k_recbole_files() {
    let Some(dir) = ml100k_dir() else {
        println!("note: ml-100k not found under ../shared/data; skipping the real-data test");
        return;
    };
    let rows = read_interactions(&dir.join("ml-100k.inter")).unwrap();
    assert_eq!(rows.len(), 100_000);
    assert_eq!(
        rows[0],
        RawInteraction {
            rating: Some(3.0),
            ..inter(196, 242, 881_250_949)
        }
    );
    let users: std::collections::HashSet<u64> = rows.iter().map(|r| r.user_id).collect();
    let items: std::collections::HashSet<u64> = rows.iter().map(|r| r.item_id).collect();
    assert_eq!(users.len(), 943);
    assert_eq!(items.len(), 1682);
    assert!(rows
        .iter()
        .all(|r| matches!(r.rating, Some(x) if (1.0..=5.0).contains(&x))));

    let catalog = read_items(&dir.join("ml-100k.item")).unwrap();
    assert_eq!(catalog.len(), 1682);
    let toy = &catalog[0];
    assert_eq!(toy.item_id, 1);
    assert_eq!(toy.title, "Toy Story");
    assert_eq!(toy.categories, ["Animation", "Children's", "Comedy"]);
    assert_eq!(toy.published_at, Some(788_918_400)); // 1995-01-01
    let les_mis = catalog.iter().find(|i| i.item_id == 543).unwrap();
    assert_eq!(les_mis.title, "Misérables, Les");
    // RecBole's file has scraps where a year should be ("unkonwn", "V"): read as unknown.
    for id in [267, 1412] {
        let it = catalog.iter().find(|i| i.item_id == id).unwrap();
        assert_eq!(it.published_at, None, "{it:?}");
    }
    // Pre-1970 films are fine as publish times.
    assert!(catalog
        .iter()
        .any(|i| i.published_at.is_some_and(|t| t < 0)));

    // The directory form picks up only the .inter file (the .item/.user files are not logs).
    let from_dir = read_interactions(&dir).unwrap();
    assert_eq!(from_dir, rows);
}

// ---------------------------------------------------------------------------------------------
// Formats

#[test]
fn csv_interactions_with_aliases_and_rfc3339() {
    let dir = TempDir::new().unwrap();
    let p = write(
        &dir,
        "log.csv",
        "\u{feff}User,Movie_ID,Event_Time,event,Weight,extra\n\
         1,10,2024-01-02T03:04:05Z,click,1.5,\"a, quoted\"\n\
         2,11,1700000000,,,x\n\
         3,12,1700000000.75,like,,\n"
            .as_bytes(),
    );
    let rows = read_interactions(&p).unwrap();
    assert_eq!(
        rows,
        vec![
            RawInteraction {
                event_type: Some("click".into()),
                weight: Some(1.5),
                ..inter(1, 10, 1_704_164_645)
            },
            inter(2, 11, 1_700_000_000),
            RawInteraction {
                event_type: Some("like".into()),
                ..inter(3, 12, 1_700_000_000)
            },
        ]
    );
}

#[test]
fn csv_and_tsv_items() {
    let dir = TempDir::new().unwrap();
    let p = write(
        &dir,
        "items.csv",
        b"item_id,name,genres,creator,year,flagged,promoted,published_at\n\
          1,First,Drama|Sci Fi,7,1999,1,true,\n\
          2,Second,Action Comedy,,,0,,2020-05-01T00:00:00Z\n\
          3,,,,,,,\n",
    );
    let items = read_items(&p).unwrap();
    assert_eq!(
        items,
        vec![
            RawItem {
                item_id: 1,
                title: "First".into(),
                categories: vec!["Drama".into(), "Sci Fi".into()],
                creator_id: Some(7),
                published_at: Some(915_148_800),
                policy_flag: true,
                promoted: true,
            },
            RawItem {
                item_id: 2,
                title: "Second".into(),
                categories: vec!["Action".into(), "Comedy".into()],
                creator_id: None,
                published_at: Some(1_588_291_200),
                policy_flag: false,
                promoted: false,
            },
            RawItem {
                item_id: 3,
                title: String::new(),
                categories: vec![],
                creator_id: None,
                published_at: None,
                policy_flag: false,
                promoted: false,
            },
        ]
    );

    let t = write(
        &dir,
        "items.tsv",
        b"item\ttitle\tcategory\n5\tA \"quote\"\tx|y\n",
    );
    let items = read_items(&t).unwrap();
    assert_eq!(items[0].item_id, 5);
    assert_eq!(items[0].categories, ["x", "y"]);
}

#[test]
fn recbole_small_files() {
    let dir = TempDir::new().unwrap();
    let i = write(
        &dir,
        "tiny.inter",
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n5\t6\t4\t881250949\n",
    );
    assert_eq!(
        read_interactions(&i).unwrap(),
        vec![RawInteraction {
            rating: Some(4.0),
            ..inter(5, 6, 881_250_949)
        }]
    );
    let m = write(
        &dir,
        "tiny.item",
        b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n\
          9\tSay \"Hi\"\t\tDrama Film-Noir\n",
    );
    let items = read_items(&m).unwrap();
    assert_eq!(items[0].title, "Say \"Hi\"");
    assert_eq!(items[0].categories, ["Drama", "Film-Noir"]);
    assert_eq!(items[0].published_at, None);
    // Wrong kind for the extension.
    assert!(matches!(
        read_items(&i),
        Err(IngestError::UnsupportedFormat { .. })
    ));
}

#[test]
fn movielens_u_data_and_u_item() {
    let dir = TempDir::new().unwrap();
    let d = write(
        &dir,
        "u.data",
        b"196\t242\t3\t881250949\n\n186\t302\t3\t891717742\r\n",
    );
    assert_eq!(
        read_interactions(&d).unwrap(),
        vec![
            RawInteraction {
                rating: Some(3.0),
                ..inter(196, 242, 881_250_949)
            },
            RawInteraction {
                rating: Some(3.0),
                ..inter(186, 302, 891_717_742)
            },
        ]
    );
    // Latin-1 title byte 0xE9 = 'é'.
    let mut bytes =
        b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
            .to_vec();
    bytes.extend_from_slice(
        b"543|Mis\xe9rables, Les (1995)||||0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0\n",
    );
    let u = write(&dir, "u.item", &bytes);
    let items = read_items(&u).unwrap();
    assert_eq!(items[0].categories, ["Animation", "Children's", "Comedy"]);
    assert_eq!(items[0].published_at, Some(788_918_400));
    assert_eq!(items[1].title, "Misérables, Les (1995)");
    assert_eq!(items[1].categories, ["Drama", "Musical"]);
    assert_eq!(items[1].published_at, None);
}

#[test]
fn parquet_interactions_with_typed_columns() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("log.parquet");
    let events: DictionaryArray<Int8Type> = vec![Some("click"), None].into_iter().collect();
    let b = batch(vec![
        (
            "user",
            Arc::new(StringArray::from(vec!["17", "18"])) as ArrayRef,
        ),
        ("item_id", Arc::new(Int32Array::from(vec![5, 6]))),
        (
            "ts",
            Arc::new(
                TimestampMillisecondArray::from(vec![1_700_000_000_999, 1_700_000_001_000])
                    .with_timezone("UTC"),
            ),
        ),
        ("event_type", Arc::new(events)),
        (
            "rating",
            Arc::new(Float64Array::from(vec![Some(4.5), None])),
        ),
        ("ignored", Arc::new(BooleanArray::from(vec![true, false]))),
    ]);
    write_parquet(&p, &[b]);
    assert_eq!(
        read_interactions(&p).unwrap(),
        vec![
            RawInteraction {
                event_type: Some("click".into()),
                rating: Some(4.5),
                ..inter(17, 5, 1_700_000_000)
            },
            inter(18, 6, 1_700_000_001),
        ]
    );
}

fn list_categories(rows: &[&[&str]]) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for s in *r {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

#[test]
fn parquet_and_ipc_items() {
    let dir = TempDir::new().unwrap();
    let expected = vec![
        RawItem {
            item_id: 1,
            title: "A".into(),
            categories: vec!["x".into(), "y".into()],
            creator_id: Some(3),
            published_at: Some(1_600_000_000),
            policy_flag: true,
            promoted: false,
        },
        RawItem {
            item_id: 2,
            title: "B".into(),
            categories: vec![],
            creator_id: None,
            published_at: Some(946_684_800),
            policy_flag: false,
            promoted: true,
        },
    ];
    let common = |cats: ArrayRef| {
        batch(vec![
            (
                "item_id",
                Arc::new(UInt64Array::from(vec![1, 2])) as ArrayRef,
            ),
            ("title", Arc::new(StringArray::from(vec!["A", "B"]))),
            ("categories", cats),
            (
                "creator_id",
                Arc::new(Int64Array::from(vec![Some(3), None])),
            ),
            (
                "published_at",
                Arc::new(TimestampSecondArray::from(vec![Some(1_600_000_000), None])),
            ),
            (
                "year",
                Arc::new(Int64Array::from(vec![Some(1990), Some(2000)])),
            ),
            (
                "policy_flag",
                Arc::new(BooleanArray::from(vec![true, false])),
            ),
            ("promoted", Arc::new(Int32Array::from(vec![0, 1]))),
        ])
    };
    let listed = common(list_categories(&[&["x", "y"], &[]]));
    let piped = common(Arc::new(StringArray::from(vec![Some("x|y"), None])));

    let pq = dir.path().join("items.parquet");
    write_parquet(&pq, std::slice::from_ref(&listed));
    assert_eq!(read_items(&pq).unwrap(), expected);
    let pq2 = dir.path().join("items_piped.parquet");
    write_parquet(&pq2, std::slice::from_ref(&piped));
    assert_eq!(read_items(&pq2).unwrap(), expected);

    let f = dir.path().join("items.arrow");
    write_ipc_file(&f, &[listed]);
    assert_eq!(read_items(&f).unwrap(), expected);
    let s = dir.path().join("items.feather");
    write_ipc_stream(&s, &[piped]);
    assert_eq!(read_items(&s).unwrap(), expected);
}

fn log_batch(users: &[u64], ts: &[i64]) -> RecordBatch {
    batch(vec![
        (
            "user_id",
            Arc::new(UInt64Array::from(users.to_vec())) as ArrayRef,
        ),
        ("item_id", Arc::new(UInt64Array::from(vec![9; users.len()]))),
        ("timestamp", Arc::new(Int64Array::from(ts.to_vec()))),
        (
            "weight",
            Arc::new(Float32Array::from(vec![Some(1.0); users.len()])),
        ),
    ])
}

#[test]
fn directory_of_ipc_segments_is_read_in_name_order() {
    let dir = TempDir::new().unwrap();
    let seg = |n: &str| dir.path().join(n);
    // Written out of order; read back sorted by name. Stream and file formats mix freely.
    write_ipc_stream(&seg("part-0002.arrow"), &[log_batch(&[3], &[30])]);
    write_ipc_file(
        &seg("part-0001.arrow"),
        &[log_batch(&[1], &[10]), log_batch(&[2], &[20])],
    );
    // A just-created segment with a schema but no batches is skipped, as are non-log files.
    write_ipc_stream(&seg("part-0003.arrow"), &[log_batch(&[], &[])]);
    fs::write(seg("README.md"), "not a log").unwrap();
    fs::write(seg(".part-0004.arrow.tmp"), "partial").unwrap();

    let rows = read_interactions(dir.path()).unwrap();
    let got: Vec<(u64, i64, Option<f32>)> = rows
        .iter()
        .map(|r| (r.user_id, r.timestamp, r.weight))
        .collect();
    assert_eq!(
        got,
        vec![(1, 10, Some(1.0)), (2, 20, Some(1.0)), (3, 30, Some(1.0))]
    );

    // A corrupt segment is an error naming it.
    let bad = write(&dir, "part-0005.arrow", b"ARROW1\0\0garbage");
    assert_err(
        read_interactions(dir.path()).unwrap_err(),
        &bad,
        &["Arrow IPC"],
    );

    let empty = TempDir::new().unwrap();
    assert!(matches!(
        read_interactions(empty.path()),
        Err(IngestError::UnsupportedFormat { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn missing_required_column_is_named() {
    let dir = TempDir::new().unwrap();
    let p = write(&dir, "log.csv", b"user_id,timestamp\n1,2\n");
    assert_err(
        read_interactions(&p).unwrap_err(),
        &p,
        &["missing", "item_id", "movie_id"],
    );
    let p = write(&dir, "items.csv", b"title\nx\n");
    assert_err(read_items(&p).unwrap_err(), &p, &["missing", "item_id"]);
    let pq = dir.path().join("log.parquet");
    write_parquet(
        &pq,
        &[batch(vec![(
            "user_id",
            Arc::new(UInt64Array::from(vec![1])) as ArrayRef,
        )])],
    );
    assert_err(
        read_interactions(&pq).unwrap_err(),
        &pq,
        &["missing", "item_id"],
    );
}

#[test]
fn bad_ids_name_file_and_line() {
    let dir = TempDir::new().unwrap();
    let p = write(
        &dir,
        "x.csv",
        b"user_id,item_id,timestamp\n1,2,3\n1,abc,3\n",
    );
    let err = read_interactions(&p).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3: column item_id: 'abc' is not a non-negative integer",
            p.display()
        )
    );
    let p = write(&dir, "neg.csv", b"user_id,item_id,timestamp\n-4,2,3\n");
    assert_err(
        read_interactions(&p).unwrap_err(),
        &p,
        &[":2:", "user_id", "'-4'"],
    );
    let p = write(&dir, "blank.csv", b"user_id,item_id,timestamp\n1,,3\n");
    assert_err(
        read_interactions(&p).unwrap_err(),
        &p,
        &[":2:", "item_id", "missing"],
    );

    let pq = dir.path().join("neg.parquet");
    write_parquet(
        &pq,
        &[batch(vec![
            (
                "user_id",
                Arc::new(Int64Array::from(vec![1, -7])) as ArrayRef,
            ),
            ("item_id", Arc::new(Int64Array::from(vec![1, 2]))),
            ("timestamp", Arc::new(Int64Array::from(vec![5, 6]))),
        ])],
    );
    assert_err(
        read_interactions(&pq).unwrap_err(),
        &pq,
        &["row 2", "user_id", "-7"],
    );

    let pq = dir.path().join("null.parquet");
    write_parquet(
        &pq,
        &[batch(vec![
            (
                "user_id",
                Arc::new(UInt64Array::from(vec![Some(1), None])) as ArrayRef,
            ),
            ("item_id", Arc::new(UInt64Array::from(vec![1, 2]))),
            ("timestamp", Arc::new(Int64Array::from(vec![5, 6]))),
        ])],
    );
    assert_err(
        read_interactions(&pq).unwrap_err(),
        &pq,
        &["row 2", "user_id", "null"],
    );
}

#[test]
fn empty_inputs() {
    let dir = TempDir::new().unwrap();
    for name in ["e.csv", "e.parquet", "e.arrow", "u.data", "e.inter"] {
        let p = write(&dir, name, b"");
        assert_err(read_interactions(&p).unwrap_err(), &p, &["empty"]);
    }
    let p = write(&dir, "u.item", b"");
    assert_err(read_items(&p).unwrap_err(), &p, &["empty"]);

    let p = write(&dir, "header.csv", b"user_id,item_id,timestamp\n");
    assert_err(read_interactions(&p).unwrap_err(), &p, &["no data rows"]);
    let pq = dir.path().join("norows.parquet");
    write_parquet(&pq, &[log_batch(&[], &[])]);
    assert_err(read_interactions(&pq).unwrap_err(), &pq, &["no data rows"]);
}

#[test]
fn truncated_and_corrupt_columnar_files() {
    let dir = TempDir::new().unwrap();
    let users: Vec<u64> = (0..5000).collect();
    let ts: Vec<i64> = (0..5000).map(|i| 1_600_000_000 + i).collect();

    let pq = dir.path().join("log.parquet");
    write_parquet(&pq, &[log_batch(&users, &ts)]);
    assert_eq!(read_interactions(&pq).unwrap().len(), 5000);
    let bytes = fs::read(&pq).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 10, 3] {
        let t = write(&dir, "cut.parquet", &bytes[..cut]);
        assert_err(
            read_interactions(&t).unwrap_err(),
            &t,
            &["corrupt or truncated Parquet"],
        );
    }
    // Flipped bytes in the middle of the data pages: an error (or, if it lands in padding, a
    // clean read), never a panic.
    let mut flipped = bytes.clone();
    for b in flipped[100..400].iter_mut() {
        *b = !*b;
    }
    let f = write(&dir, "flipped.parquet", &flipped);
    let _ = read_interactions(&f);

    let ipc = dir.path().join("log.arrow");
    write_ipc_file(&ipc, &[log_batch(&users, &ts)]);
    let bytes = fs::read(&ipc).unwrap();
    let t = write(&dir, "cut.arrow", &bytes[..bytes.len() / 2]);
    assert_err(
        read_interactions(&t).unwrap_err(),
        &t,
        &["corrupt or truncated Arrow IPC"],
    );

    // A stream cut short (an event log being appended, or a crash's torn tail) reads up to its
    // last complete message; with none complete it is an error naming the file.
    let stream = dir.path().join("log.ipc");
    let half = users.len() / 2;
    write_ipc_stream(
        &stream,
        &[
            log_batch(&users[..half], &ts[..half]),
            log_batch(&users[half..], &ts[half..]),
        ],
    );
    let bytes = fs::read(&stream).unwrap();
    assert_eq!(read_interactions(&stream).unwrap().len(), users.len());
    let t = write(&dir, "cut.ipc", &bytes[..bytes.len() - 10]);
    assert_eq!(read_interactions(&t).unwrap().len(), half);
    let t = write(&dir, "cut0.ipc", &bytes[..20]);
    assert_err(
        read_interactions(&t).unwrap_err(),
        &t,
        &["torn inside its first message"],
    );
    // In a directory (an event log), such a segment is skipped.
    let logdir = dir.path().join("log");
    fs::create_dir_all(&logdir).unwrap();
    fs::write(logdir.join("events-0000000000.arrows"), &bytes).unwrap();
    fs::write(logdir.join("events-0000000001.arrows"), &bytes[..20]).unwrap();
    assert_eq!(read_interactions(&logdir).unwrap().len(), users.len());
    let t = write(&dir, "garbage.ipc", b"user_id,item_id\n1,2\n");
    assert_err(
        read_interactions(&t).unwrap_err(),
        &t,
        &["corrupt or truncated Arrow IPC", "no complete"],
    );

    // A length field claiming ~2 GiB must be rejected up front, not allocated.
    let mut huge = vec![0xff, 0xff, 0xff, 0xff];
    huge.extend_from_slice(&0x7fff_fff0_i32.to_le_bytes());
    huge.extend_from_slice(&[0; 32]);
    let t = write(&dir, "huge.arrow", &huge);
    assert_err(
        read_interactions(&t).unwrap_err(),
        &t,
        &["torn inside its first message"],
    );
    let mut bytes = fs::read(&ipc).unwrap();
    let n = bytes.len();
    bytes[n - 10..n - 6].copy_from_slice(&i32::MAX.to_le_bytes());
    let t = write(&dir, "bigfooter.arrow", &bytes);
    assert_err(read_interactions(&t).unwrap_err(), &t, &["footer length"]);
}

#[test]
fn timestamps_out_of_range() {
    let dir = TempDir::new().unwrap();
    for (name, value, hint) in [
        ("neg.csv", "-1", "out of range"),
        ("far.csv", "7258118401", "out of range"),
        ("ms.csv", "1700000000000", "milliseconds"),
        ("text.csv", "yesterday", "not a unix timestamp"),
        ("nan.csv", "NaN", "out of range"),
    ] {
        let p = write(
            &dir,
            name,
            format!("user_id,item_id,timestamp\n1,2,5\n1,2,{value}\n").as_bytes(),
        );
        assert_err(
            read_interactions(&p).unwrap_err(),
            &p,
            &[":3:", "timestamp", hint],
        );
    }
    let pq = dir.path().join("ms.parquet");
    write_parquet(&pq, &[log_batch(&[1, 2], &[5, 1_700_000_000_000])]);
    assert_err(
        read_interactions(&pq).unwrap_err(),
        &pq,
        &["row 2", "timestamp", "milliseconds"],
    );

    // The boundaries themselves are fine.
    let p = write(
        &dir,
        "edge.csv",
        b"user_id,item_id,timestamp\n1,2,0\n1,2,7258118400\n",
    );
    assert_eq!(read_interactions(&p).unwrap().len(), 2);

    let p = write(
        &dir,
        "old.csv",
        b"item_id,published_at\n1,1500-01-01T00:00:00Z\n",
    );
    assert_err(
        read_items(&p).unwrap_err(),
        &p,
        &[":2:", "published_at", "out of range"],
    );
    // A year that is not a number is unknown; a numeric year out of range is an error.
    let p = write(
        &dir,
        "years.csv",
        b"item_id,year\n1,unknown\n2,1999.0\n3,3000\n",
    );
    assert_err(
        read_items(&p).unwrap_err(),
        &p,
        &[":4:", "year", "out of range"],
    );
    let p = write(&dir, "years.csv", b"item_id,year\n1,unknown\n2,1999.0\n");
    let items = read_items(&p).unwrap();
    assert_eq!(items[0].published_at, None);
    assert_eq!(items[1].published_at, Some(915_148_800));
}

#[test]
fn non_finite_and_unparsable_numbers() {
    let dir = TempDir::new().unwrap();
    for (col, value, hint) in [
        ("weight", "NaN", "not a finite number"),
        ("weight", "inf", "not a finite number"),
        ("rating", "1e400", "not a finite number"),
        ("rating", "five", "not a number"),
    ] {
        let p = write(
            &dir,
            &format!("{col}.csv"),
            format!("user_id,item_id,timestamp,{col}\n1,2,3,{value}\n").as_bytes(),
        );
        assert_err(read_interactions(&p).unwrap_err(), &p, &[":2:", col, hint]);
    }
    let pq = dir.path().join("nan.parquet");
    write_parquet(
        &pq,
        &[batch(vec![
            (
                "user_id",
                Arc::new(UInt64Array::from(vec![1, 2])) as ArrayRef,
            ),
            ("item_id", Arc::new(UInt64Array::from(vec![1, 2]))),
            ("timestamp", Arc::new(Int64Array::from(vec![5, 6]))),
            ("weight", Arc::new(Float32Array::from(vec![1.0, f32::NAN]))),
        ])],
    );
    assert_err(
        read_interactions(&pq).unwrap_err(),
        &pq,
        &["row 2", "weight", "finite"],
    );
}

#[test]
fn malformed_rows_and_formats() {
    let dir = TempDir::new().unwrap();
    let p = write(
        &dir,
        "ragged.csv",
        b"user_id,item_id,timestamp\n1,2,3\n1,2\n",
    );
    assert_err(
        read_interactions(&p).unwrap_err(),
        &p,
        &[":3:", "expected 3 fields"],
    );
    let p = write(&dir, "u.data", b"1\t2\t3\t4\n1\t2\t3\n");
    assert_err(
        read_interactions(&p).unwrap_err(),
        &p,
        &[":2:", "expected 4"],
    );
    let p = write(
        &dir,
        "u.item",
        b"1|T|01-Jan-1995||u|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|7\n",
    );
    assert_err(read_items(&p).unwrap_err(), &p, &[":1:", "Western", "'7'"]);
    let p = write(
        &dir,
        "u.item",
        b"1|T|1995-01-01||u|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
    );
    assert_err(read_items(&p).unwrap_err(), &p, &[":1:", "release_date"]);
    let p = write(&dir, "flags.csv", b"item_id,flagged\n1,maybe\n");
    assert_err(
        read_items(&p).unwrap_err(),
        &p,
        &[":2:", "flagged", "boolean"],
    );
    let p = write(&dir, "log.json", b"{}");
    assert_err(read_interactions(&p).unwrap_err(), &p, &["unsupported"]);
    let missing = dir.path().join("nope.csv");
    assert_err(read_interactions(&missing).unwrap_err(), &missing, &[]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Arbitrary bytes in any format: an error or rows, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = TempDir::new().unwrap();
        for name in ["a.csv", "a.inter", "u.data", "a.parquet", "a.arrow"] {
            let p = write(&dir, name, &bytes);
            let _ = read_interactions(&p);
        }
        for name in ["a.csv", "a.item", "u.item", "a.parquet", "a.ipc"] {
            let p = write(&dir, name, &bytes);
            let _ = read_items(&p);
        }
    }

    /// Arbitrary text cells in a well-formed CSV never panic either.
    #[test]
    fn arbitrary_csv_cells_never_panic(cells in proptest::collection::vec("[ -~]{0,12}", 6)) {
        let dir = TempDir::new().unwrap();
        let quoted: Vec<String> = cells.iter().map(|c| format!("\"{}\"", c.replace('"', "\"\""))).collect();
        let p = write(
            &dir,
            "a.csv",
            format!("user_id,item_id,timestamp,weight,rating,event\n{}\n", quoted.join(",")).as_bytes(),
        );
        if let Err(e) = read_interactions(&p) {
            prop_assert!(e.to_string().starts_with(&p.display().to_string()));
        }
    }
}
