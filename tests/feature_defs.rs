//! Feature definitions, codec, table, stats and embedded store: the repo's `feature-defs/` parse,
//! every bad definition yields a located error, every dtype round-trips through the codec, and
//! the bundle file reads back exactly what the builder wrote.

use std::collections::BTreeMap;
use std::path::PathBuf;

use funnel::features::codec::{decode, encode, CodecError};
use funnel::features::{
    Dtype, EmbeddedStore, Entity, FeatureError, FeatureKind, FeatureRegistry, FeatureTable,
    FeatureValue, StatMeasure, StreamUpdate, BUNDLED_DEFS,
};
use proptest::prelude::*;

fn defs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("feature-defs")
}

/// One `[[feature]]` entry: line 1 is the header, then one field per line in this order
/// (name=2, entity=3, dtype=4, default=5, ttl=6, kind=7, key=8, description=9, owner=10),
/// overrides replace a field in place, new fields are appended, "<omit>" drops one.
fn feat(overrides: &[(&str, &str)]) -> String {
    let mut fields: Vec<(String, String)> = [
        ("name", "\"x\""),
        ("entity", "\"item\""),
        ("dtype", "\"f32\""),
        ("default", "0.0"),
        ("ttl", "\"36h\""),
        ("kind", "\"batch\""),
        ("key", "\"t:{version}:i:{id}\""),
        ("description", "\"d\""),
        ("owner", "\"o\""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        match fields.iter_mut().find(|f| f.0 == *k) {
            Some(f) => f.1 = v.to_string(),
            None => fields.push((k.to_string(), v.to_string())),
        }
    }
    let mut out = String::from("[[feature]]\n");
    for (k, v) in fields.iter().filter(|f| f.1 != "<omit>") {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

fn load_err(files: &[(&str, &str)]) -> String {
    match FeatureRegistry::from_toml_strs(files) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an error for {files:?}"),
    }
}

fn assert_err(files: &[(&str, &str)], location: &str, phrase: &str) {
    let msg = load_err(files);
    assert!(
        msg.contains(location) && msg.contains(phrase),
        "expected {location:?} and {phrase:?} in:\n{msg}"
    );
}

#[test]
fn repo_defs_parse_with_the_required_features() {
    let reg = FeatureRegistry::load_dir(defs_dir()).unwrap();
    let expect: &[(&str, Entity, Dtype)] = &[
        ("user_embedding", Entity::User, Dtype::F32Vec { dim: 64 }),
        ("recent_items", Entity::User, Dtype::I64List),
        ("category_prefs", Entity::User, Dtype::F32Map),
        ("history_len", Entity::User, Dtype::I64),
        ("last_active_at", Entity::User, Dtype::Timestamp),
        ("popularity", Entity::Item, Dtype::F32),
        ("trending", Entity::Item, Dtype::F32),
        ("engagement_7d", Entity::Item, Dtype::F32),
        ("engagement_28d", Entity::Item, Dtype::F32),
        ("published_at", Entity::Item, Dtype::Timestamp),
        ("categories", Entity::Item, Dtype::StringList),
        ("creator_id", Entity::Item, Dtype::I64),
        ("flagged", Entity::Item, Dtype::Bool),
        ("promoted", Entity::Item, Dtype::Bool),
    ];
    // The ranker's engagement inputs read these online features by name.
    for name in funnel::ranking::input::ENGAGEMENT_FEATURES {
        assert!(expect.iter().any(|(n, ..)| *n == name), "{name}");
    }
    for (name, entity, dtype) in expect {
        let d = reg.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            (d.entity, d.dtype, d.kind),
            (*entity, *dtype, FeatureKind::Batch),
            "{name}"
        );
        assert!(d.default.conforms_to(&d.dtype), "{name}");
        assert!(d.key.has_version() && d.ttl_secs > 24 * 3600, "{name}");
    }
    // Batch features of one entity share one hash, so the server does one HGETALL per entity.
    for entity in Entity::ALL {
        let batch = reg
            .key_groups(entity)
            .filter(|g| g.kind == FeatureKind::Batch)
            .count();
        assert_eq!(batch, 1, "{entity}");
    }
    // The streaming features event ingestion maintains, each its own Redis structure.
    let s = |n: &str| reg.get(n).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(
        s("stream_recent_items").update,
        Some(StreamUpdate::Recent { max_len: 50 })
    );
    assert_eq!(
        s("stream_seen_items").update,
        Some(StreamUpdate::Seen { max_len: 500 })
    );
    assert_eq!(
        s("stream_trending").update,
        Some(StreamUpdate::Counter {
            bucket_secs: 300,
            window_secs: 7200
        })
    );
    assert_eq!(
        s("stream_trending").key.render("", 5_000_000),
        "funnel:s:{trending}:5000000"
    );
    let user_key = reg.get("history_len").unwrap().key.render("v1", 42);
    assert_eq!(user_key, "funnel:v1:{u:42}");
    assert_eq!(
        reg.get("popularity").unwrap().key.render("v1", 7),
        "funnel:v1:{i:7}"
    );
    assert_eq!(
        reg.default_of("user_embedding"),
        Some(&FeatureValue::F32Vec(vec![0.0; 64]))
    );
    assert_eq!(reg.hash().len(), 64);
}

#[test]
fn bundled_defs_match_the_directory() {
    let mut on_disk: Vec<String> = std::fs::read_dir(defs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| format!("feature-defs/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    on_disk.sort();
    let mut bundled: Vec<String> = BUNDLED_DEFS.iter().map(|(n, _)| n.to_string()).collect();
    bundled.sort();
    assert_eq!(
        bundled, on_disk,
        "update BUNDLED_DEFS in src/features/defs.rs"
    );
    for (name, content) in BUNDLED_DEFS {
        let disk =
            std::fs::read_to_string(defs_dir().join(name.trim_start_matches("feature-defs/")));
        assert_eq!(disk.unwrap(), *content, "{name}");
    }
    let bundled = FeatureRegistry::bundled().unwrap();
    let loaded = FeatureRegistry::load_dir(defs_dir()).unwrap();
    assert_eq!(bundled.hash(), loaded.hash());
}

#[test]
fn streaming_kind_parses_and_does_not_need_a_version() {
    let text = feat(&[
        ("name", "\"clicks_1h\""),
        ("dtype", "\"i64\""),
        ("default", "0"),
        ("ttl", "3600"),
        ("kind", "\"streaming\""),
        ("key", "\"funnel:rt:i:{id}\""),
    ]);
    let reg = FeatureRegistry::from_toml_strs(&[("s.toml", &text)]).unwrap();
    let d = reg.get("clicks_1h").unwrap();
    assert_eq!((d.kind, d.ttl_secs), (FeatureKind::Streaming, 3600));
    assert!(!d.key.has_version());
    assert_eq!(d.source.to_string(), "s.toml:1");
}

#[test]
fn stream_updates_are_validated_with_their_shape() {
    let recent = |extra: &[(&str, &str)]| {
        let mut o = vec![
            ("name", "\"r\""),
            ("entity", "\"user\""),
            ("dtype", "\"i64_list\""),
            ("default", "[]"),
            ("kind", "\"streaming\""),
            ("key", "\"s:u:{id}:r\""),
            ("update", "\"recent\""),
            ("max_len", "20"),
        ];
        o.extend_from_slice(extra);
        feat(&o)
    };
    let reg = FeatureRegistry::from_toml_strs(&[("s.toml", &recent(&[]))]).unwrap();
    assert_eq!(
        reg.get("r").unwrap().update,
        Some(StreamUpdate::Recent { max_len: 20 })
    );
    let cases: Vec<(String, &str)> = vec![
        (recent(&[("max_len", "<omit>")]), "needs max_len"),
        (recent(&[("max_len", "0")]), "max_len must be within"),
        (
            recent(&[("dtype", "\"f32\""), ("default", "0.0")]),
            "needs dtype i64_list",
        ),
        (recent(&[("update", "\"sometimes\"")]), "unknown update"),
        (
            recent(&[("key", "\"s:{bucket}\"")]),
            "use {id}, not {bucket}",
        ),
        (recent(&[("bucket", "\"5m\"")]), "bucket does not apply"),
        (
            recent(&[("key", "\"s:{version}:{id}\"")]),
            "must not contain {version}",
        ),
        (
            recent(&[("kind", "\"batch\""), ("key", "\"s:{version}:{id}\"")]),
            "update is for streaming features",
        ),
        (feat(&[("max_len", "5")]), "max_len needs update"),
        (
            feat(&[
                ("kind", "\"streaming\""),
                ("key", "\"t:{id}\""),
                ("update", "\"counter\""),
                ("bucket", "\"5m\""),
                ("window", "\"1h\""),
            ]),
            "use {bucket}, not {id}",
        ),
        (
            feat(&[
                ("kind", "\"streaming\""),
                ("key", "\"t:{bucket}\""),
                ("update", "\"counter\""),
                ("bucket", "\"1h\""),
                ("window", "\"5m\""),
            ]),
            "window must span",
        ),
        (
            feat(&[
                ("kind", "\"streaming\""),
                ("key", "\"t:{bucket}\""),
                ("update", "\"counter\""),
                ("bucket", "\"5m\""),
                ("window", "\"2d\""),
            ]),
            "ttl (how long a bucket key lives) must be >= its window",
        ),
        (
            [recent(&[]), recent(&[("name", "\"r2\"")])].join("\n"),
            "needs its own key",
        ),
    ];
    for (text, phrase) in cases {
        let msg = load_err(&[("s.toml", &text)]);
        assert!(msg.contains(phrase), "{phrase:?} not in {msg}\n{text}");
    }
}

#[test]
fn every_dtype_and_default_form_parses() {
    let files = [
        feat(&[
            ("name", "\"a\""),
            ("dtype", "\"bool\""),
            ("default", "true"),
        ]),
        feat(&[("name", "\"b\""), ("dtype", "\"i64\""), ("default", "-3")]),
        feat(&[("name", "\"c\""), ("dtype", "\"f32\""), ("default", "2")]),
        feat(&[
            ("name", "\"d\""),
            ("dtype", "\"string\""),
            ("default", "\"n/a\""),
        ]),
        feat(&[
            ("name", "\"e\""),
            ("dtype", "\"timestamp\""),
            ("default", "0"),
        ]),
        feat(&[
            ("name", "\"f\""),
            ("dtype", "\"f32_vec\""),
            ("default", "[1, 2.5]"),
            ("dim", "2"),
        ]),
        feat(&[
            ("name", "\"g\""),
            ("dtype", "\"i64_list\""),
            ("default", "[1, 2]"),
        ]),
        feat(&[
            ("name", "\"h\""),
            ("dtype", "\"string_list\""),
            ("default", "[\"x\"]"),
        ]),
        feat(&[
            ("name", "\"i\""),
            ("dtype", "\"f32_map\""),
            ("default", "{ a = 1.5, b = 2 }"),
        ]),
        feat(&[("name", "\"j\""), ("ttl", "\"90m\"")]),
    ]
    .join("\n");
    let reg = FeatureRegistry::from_toml_strs(&[("all.toml", &files)]).unwrap();
    assert_eq!(reg.default_of("a"), Some(&FeatureValue::Bool(true)));
    assert_eq!(reg.default_of("c"), Some(&FeatureValue::F32(2.0)));
    assert_eq!(
        reg.default_of("f"),
        Some(&FeatureValue::F32Vec(vec![1.0, 2.5]))
    );
    let map = BTreeMap::from([("a".to_string(), 1.5), ("b".to_string(), 2.0)]);
    assert_eq!(reg.default_of("i"), Some(&FeatureValue::F32Map(map)));
    assert_eq!(reg.get("j").unwrap().ttl_secs, 5400);
    // Features sharing a key expire together, after the smallest TTL.
    let group = reg.key_groups(Entity::Item).next().unwrap();
    assert_eq!((group.features.len(), group.ttl_secs), (10, 5400));
    // Entries are 11 lines apart (10 + the blank join line), `f` has one more (`dim`).
    assert_eq!(reg.get("j").unwrap().source.line, 101);
}

#[test]
fn duplicate_names_name_both_locations() {
    let a = feat(&[]);
    let b = format!("# comment\n{}", feat(&[]));
    assert_err(
        &[("a.toml", &a), ("b.toml", &b)],
        "b.toml:3:",
        "duplicate feature name \"x\" (first defined at a.toml:1)",
    );
}

#[test]
fn unknown_dtype_is_located() {
    let t = feat(&[("dtype", "\"f64\"")]);
    assert_err(
        &[("bad.toml", &t)],
        "bad.toml:4:",
        "unknown dtype \"f64\" (expected one of: bool, i64, f32",
    );
}

#[test]
fn defaults_must_match_the_dtype() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("dtype", "\"bool\""), ("default", "\"no\"")],
            "default does not match dtype bool: got a string",
        ),
        (
            &[("dtype", "\"i64\""), ("default", "1.5")],
            "default does not match dtype i64: got a float",
        ),
        (
            &[("dtype", "\"timestamp\""), ("default", "\"2024-01-01\"")],
            "expected integer unix seconds",
        ),
        (
            &[("dtype", "\"f32\""), ("default", "nan")],
            "is not a finite f32",
        ),
        (
            &[("dtype", "\"f32\""), ("default", "1e300")],
            "is not a finite f32",
        ),
        (
            &[("dtype", "\"string\""), ("default", "3")],
            "dtype string: got an integer",
        ),
        (
            &[
                ("dtype", "\"f32_vec\""),
                ("dim", "3"),
                ("default", "[1.0, 2.0]"),
            ],
            "expected 3 elements, got 2",
        ),
        (
            &[
                ("dtype", "\"f32_vec\""),
                ("dim", "3"),
                ("default", "\"zero\""),
            ],
            "expected a number",
        ),
        (
            &[("dtype", "\"i64_list\""), ("default", "[\"a\"]")],
            "elements must be integers",
        ),
        (
            &[("dtype", "\"string_list\""), ("default", "\"a\"")],
            "expected an array",
        ),
        (
            &[("dtype", "\"f32_map\""), ("default", "{ a = \"b\" }")],
            "expected a number",
        ),
        (
            &[("dtype", "\"f32_map\""), ("default", "[]")],
            "expected an inline table",
        ),
    ];
    for (overrides, phrase) in cases {
        assert_err(&[("bad.toml", &feat(overrides))], "bad.toml:5:", phrase);
    }
}

#[test]
fn bad_ttls_are_located() {
    for ttl in [
        "\"7x\"",
        "\"h\"",
        "0",
        "-5",
        "\"0d\"",
        "\"99999999999999d\"",
        "1.5",
        "\"-1d\"",
    ] {
        assert_err(
            &[("bad.toml", &feat(&[("ttl", ttl)]))],
            "bad.toml:6:",
            "bad ttl",
        );
    }
}

#[test]
fn bad_key_patterns_are_located() {
    let cases = [
        ("\"t:{version}:i\"", "is missing {id}"),
        ("\"t:{version}:{idx}\"", "unknown placeholder {idx}"),
        ("\"t:{version}:{id\"", "unmatched '{'"),
        ("\"t:}{version}:{id}\"", "unmatched '}'"),
        ("\"t:i:{id}\"", "must contain {version}"),
    ];
    for (key, phrase) in cases {
        assert_err(
            &[("bad.toml", &feat(&[("key", key)]))],
            "bad.toml:8:",
            phrase,
        );
    }
}

#[test]
fn structural_errors_are_located() {
    assert_err(
        &[("bad.toml", &feat(&[("entity", "\"session\"")]))],
        "bad.toml:3:",
        "unknown entity \"session\"",
    );
    assert_err(
        &[("bad.toml", &feat(&[("kind", "\"realtime\"")]))],
        "bad.toml:7:",
        "unknown kind \"realtime\"",
    );
    assert_err(
        &[("bad.toml", &feat(&[("name", "\"Bad-Name\"")]))],
        "bad.toml:2:",
        "invalid feature name",
    );
    assert_err(
        &[("bad.toml", &feat(&[("owner", "\"  \"")]))],
        "bad.toml:10:",
        "owner must not be empty",
    );
    assert_err(
        &[("bad.toml", &feat(&[("dtype", "\"f32_vec\"")]))],
        "bad.toml:4:",
        "requires `dim`",
    );
    assert_err(
        &[("bad.toml", &feat(&[("dim", "4")]))],
        "bad.toml:11:",
        "`dim` is only allowed for f32_vec",
    );
    assert_err(
        &[("bad.toml", &feat(&[("dtype", "\"f32_vec\""), ("dim", "0")]))],
        "bad.toml:11:",
        "dim must be in 1..=65536",
    );
    // Typos in field names fail instead of being ignored.
    assert_err(
        &[("bad.toml", &feat(&[("descripton", "\"x\"")]))],
        "bad.toml:",
        "descripton",
    );
    let missing = load_err(&[("bad.toml", &feat(&[("ttl", "<omit>")]))]);
    assert!(
        missing.contains("bad.toml:") && missing.contains("ttl"),
        "{missing}"
    );
    assert_err(
        &[("bad.toml", "a = 1\n[[feature]\nname = 2\n")],
        "bad.toml:2:",
        "",
    );
    assert_err(
        &[("empty.toml", "# nothing\n")],
        "empty.toml:1:",
        "no [[feature]] entries",
    );
}

#[test]
fn shared_keys_must_agree_on_entity_and_kind() {
    let text = [
        feat(&[("name", "\"a\"")]),
        feat(&[("name", "\"b\""), ("entity", "\"user\"")]),
    ]
    .join("\n");
    assert_err(
        &[("k.toml", &text)],
        "k.toml:12:",
        "must have the same entity and kind",
    );
    let text = [
        feat(&[
            ("name", "\"a\""),
            ("key", "\"t:{id}\""),
            ("kind", "\"streaming\""),
        ]),
        feat(&[("name", "\"b\""), ("key", "\"t:{id}\"")]),
    ]
    .join("\n");
    let msg = load_err(&[("k.toml", &text)]);
    assert!(msg.contains("must contain {version}"), "{msg}");
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = [
        feat(&[("name", "\"a\""), ("dtype", "\"f64\"")]),
        feat(&[("name", "\"b\""), ("ttl", "\"soon\"")]),
    ]
    .join("\n");
    let msg = load_err(&[("m.toml", &text)]);
    assert!(
        msg.contains("m.toml:4:") && msg.contains("m.toml:17:"),
        "{msg}"
    );
}

#[test]
fn load_dir_errors_name_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let msg = FeatureRegistry::load_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no feature definitions"), "{msg}");
    std::fs::write(dir.path().join("z.toml"), feat(&[("dtype", "\"f64\"")])).unwrap();
    let msg = FeatureRegistry::load_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("z.toml:4: unknown dtype"), "{msg}");
    let missing = FeatureRegistry::load_dir(dir.path().join("nope")).unwrap_err();
    assert!(matches!(missing, FeatureError::Io { .. }));
}

#[test]
fn hash_is_canonical() {
    let a = feat(&[("name", "\"a\"")]);
    let b = feat(&[("name", "\"b\""), ("dtype", "\"i64\""), ("default", "0")]);
    let h = |files: &[(&str, &str)]| {
        FeatureRegistry::from_toml_strs(files)
            .unwrap()
            .hash()
            .to_owned()
    };
    let base = h(&[("1.toml", &a), ("2.toml", &b)]);
    // File names, order, comments and docs do not matter...
    assert_eq!(
        base,
        h(&[("x.toml", &b), ("y.toml", &format!("# hi\n\n{a}"))])
    );
    let doc = feat(&[
        ("name", "\"a\""),
        ("description", "\"other\""),
        ("owner", "\"me\""),
    ]);
    assert_eq!(base, h(&[("1.toml", &doc), ("2.toml", &b)]));
    // ...nor do streaming features (no bundle holds them)...
    let streaming = feat(&[
        ("name", "\"s\""),
        ("kind", "\"streaming\""),
        ("key", "\"rt:{id}\""),
    ]);
    assert_eq!(
        base,
        h(&[("1.toml", &a), ("2.toml", &b), ("3.toml", &streaming)])
    );
    // ...anything that changes values, types or keys does.
    for changed in [
        feat(&[("name", "\"a\""), ("ttl", "\"35h\"")]),
        feat(&[("name", "\"a\""), ("default", "1.0")]),
        feat(&[("name", "\"a\""), ("key", "\"u:{version}:i:{id}\"")]),
        feat(&[
            ("name", "\"a\""),
            ("entity", "\"user\""),
            ("key", "\"u:{version}:{id}\""),
        ]),
    ] {
        assert_ne!(base, h(&[("1.toml", &changed), ("2.toml", &b)]));
    }
}

fn value_strategy() -> impl Strategy<Value = (Dtype, FeatureValue)> {
    prop_oneof![
        any::<bool>().prop_map(|v| (Dtype::Bool, FeatureValue::Bool(v))),
        any::<i64>().prop_map(|v| (Dtype::I64, FeatureValue::I64(v))),
        any::<f32>().prop_map(|v| (Dtype::F32, FeatureValue::F32(v))),
        prop_oneof![
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(-0.0f32),
            Just(f32::MIN_POSITIVE / 2.0)
        ]
        .prop_map(|v| (Dtype::F32, FeatureValue::F32(v))),
        any::<String>().prop_map(|v| (Dtype::String, FeatureValue::String(v))),
        any::<i64>().prop_map(|v| (Dtype::Timestamp, FeatureValue::Timestamp(v))),
        (1usize..80).prop_flat_map(|dim| prop::collection::vec(any::<f32>(), dim)
            .prop_map(move |v| (Dtype::F32Vec { dim }, FeatureValue::F32Vec(v)))),
        prop::collection::vec(any::<i64>(), 0..40)
            .prop_map(|v| (Dtype::I64List, FeatureValue::I64List(v))),
        prop::collection::vec(any::<String>(), 0..10)
            .prop_map(|v| (Dtype::StringList, FeatureValue::StringList(v))),
        // Long strings exercise multi-byte length prefixes.
        prop::collection::vec("[a-z]{100,300}", 0..3)
            .prop_map(|v| (Dtype::StringList, FeatureValue::StringList(v))),
        prop::collection::btree_map(any::<String>(), any::<f32>(), 0..10)
            .prop_map(|v| (Dtype::F32Map, FeatureValue::F32Map(v))),
    ]
}

fn all_dtypes() -> Vec<Dtype> {
    vec![
        Dtype::Bool,
        Dtype::I64,
        Dtype::F32,
        Dtype::String,
        Dtype::Timestamp,
        Dtype::F32Vec { dim: 3 },
        Dtype::I64List,
        Dtype::StringList,
        Dtype::F32Map,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn codec_round_trips_every_dtype((dtype, value) in value_strategy()) {
        prop_assert!(value.conforms_to(&dtype));
        let bytes = encode(&value);
        let back = decode(&dtype, &bytes).unwrap();
        prop_assert!(back.same_as(&value), "{:?} -> {:?} -> {:?}", value, bytes, back);
        // Canonical: re-encoding yields the same bytes (except NaN payloads in text f32).
        if !matches!(value, FeatureValue::F32(f) if f.is_nan()) {
            prop_assert_eq!(encode(&back), bytes);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        for dtype in all_dtypes() {
            let _ = decode(&dtype, &bytes);
        }
    }

    #[test]
    fn truncated_encodings_are_errors_or_values((dtype, value) in value_strategy(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&value);
        let cut = cut.index(bytes.len() + 1);
        // Must not panic; a prefix may legitimately decode (e.g. fewer list elements).
        let _ = decode(&dtype, &bytes[..cut]);
    }
}

#[test]
fn malformed_bytes_are_errors() {
    assert!(matches!(
        decode(&Dtype::Bool, b"true"),
        Err(CodecError::Scalar { .. })
    ));
    assert!(matches!(
        decode(&Dtype::I64, b"12a"),
        Err(CodecError::Scalar { .. })
    ));
    assert!(matches!(
        decode(&Dtype::I64, b"99999999999999999999"),
        Err(CodecError::Scalar { .. })
    ));
    assert!(matches!(
        decode(&Dtype::F32, b""),
        Err(CodecError::Scalar { .. })
    ));
    assert!(matches!(
        decode(&Dtype::String, &[0xff, 0xfe]),
        Err(CodecError::Utf8 { .. })
    ));
    assert!(matches!(
        decode(&Dtype::F32Vec { dim: 2 }, &[0; 7]),
        Err(CodecError::Width { .. })
    ));
    assert!(matches!(
        decode(&Dtype::F32Vec { dim: 2 }, &[0; 12]),
        Err(CodecError::Dim {
            expected: 2,
            got: 3
        })
    ));
    assert!(matches!(
        decode(&Dtype::I64List, &[0; 9]),
        Err(CodecError::Width { .. })
    ));
    assert!(matches!(
        decode(&Dtype::StringList, &[5, b'a']),
        Err(CodecError::Truncated { .. })
    ));
    assert!(matches!(
        decode(&Dtype::StringList, &[1, 0xff]),
        Err(CodecError::Utf8 { .. })
    ));
    assert!(matches!(
        decode(&Dtype::F32Map, &[1, b'a', 0, 0]),
        Err(CodecError::Truncated { .. })
    ));
    let mut dup = encode(&FeatureValue::F32Map(BTreeMap::from([(
        "a".to_string(),
        1.0,
    )])));
    dup.extend_from_slice(&dup.clone());
    assert!(matches!(
        decode(&Dtype::F32Map, &dup),
        Err(CodecError::DuplicateKey { .. })
    ));
    // Empty collections are empty byte strings.
    assert_eq!(
        decode(&Dtype::StringList, b"").unwrap(),
        FeatureValue::StringList(vec![])
    );
}

fn repo_registry() -> FeatureRegistry {
    FeatureRegistry::bundled().unwrap()
}

#[test]
fn table_validates_inserts() {
    let reg = repo_registry();
    let mut t = FeatureTable::new(&reg);
    let err = |r: Result<Option<FeatureValue>, FeatureError>| r.unwrap_err().to_string();
    assert!(
        err(t.insert(Entity::Item, 1, "nope", FeatureValue::F32(1.0))).contains("unknown feature")
    );
    assert!(
        err(t.insert(Entity::User, 1, "popularity", FeatureValue::F32(1.0)))
            .contains("belongs to entity item")
    );
    assert!(
        err(t.insert(Entity::Item, 1, "popularity", FeatureValue::I64(1)))
            .contains("declared f32, got a i64")
    );
    assert!(err(t.insert(
        Entity::User,
        1,
        "user_embedding",
        FeatureValue::F32Vec(vec![0.0; 3])
    ))
    .contains("declared f32_vec[64], got a f32_vec[3]"));
    assert!(t.is_empty());

    assert_eq!(
        t.insert(Entity::Item, 1, "popularity", FeatureValue::F32(1.0))
            .unwrap(),
        None
    );
    assert_eq!(
        t.insert(Entity::Item, 1, "popularity", FeatureValue::F32(2.0))
            .unwrap(),
        Some(FeatureValue::F32(1.0))
    );
    assert_eq!(t.len(), 1);
    assert_eq!(
        t.get(Entity::Item, 1, "popularity"),
        Some(&FeatureValue::F32(2.0))
    );
    assert_eq!(t.get(Entity::User, 1, "popularity"), None);

    let streaming = feat(&[
        ("name", "\"clicks\""),
        ("kind", "\"streaming\""),
        ("key", "\"rt:{id}\""),
    ]);
    let reg = FeatureRegistry::from_toml_strs(&[("s.toml", &streaming)]).unwrap();
    let mut t = FeatureTable::new(&reg);
    assert!(matches!(
        t.insert(Entity::Item, 1, "clicks", FeatureValue::F32(1.0)),
        Err(FeatureError::NotBatch(_))
    ));
}

/// A table using every repo feature; item 1..=100 have popularity = id, items 101..=200 only
/// `flagged`; users have embeddings with elements 0..64 and `id % 5` recent items.
fn sample_table(reg: &FeatureRegistry) -> FeatureTable {
    let mut t = FeatureTable::new(reg);
    for id in 1..=100u64 {
        t.insert(Entity::Item, id, "popularity", FeatureValue::F32(id as f32))
            .unwrap();
        t.insert(
            Entity::Item,
            id,
            "trending",
            FeatureValue::F32(-(id as f32) / 10.0),
        )
        .unwrap();
        t.insert(
            Entity::Item,
            id,
            "published_at",
            FeatureValue::Timestamp(1_700_000_000 + id as i64),
        )
        .unwrap();
        t.insert(
            Entity::Item,
            id,
            "categories",
            FeatureValue::StringList(vec!["news".into(), format!("c{id}")]),
        )
        .unwrap();
        t.insert(
            Entity::Item,
            id,
            "creator_id",
            FeatureValue::I64(id as i64 % 7),
        )
        .unwrap();
        t.insert(
            Entity::Item,
            id,
            "promoted",
            FeatureValue::Bool(id % 4 == 0),
        )
        .unwrap();
    }
    for id in 101..=200u64 {
        t.insert(Entity::Item, id, "flagged", FeatureValue::Bool(id % 2 == 0))
            .unwrap();
    }
    for id in 1..=10u64 {
        let emb: Vec<f32> = (0..64).map(|i| i as f32).collect();
        t.insert(
            Entity::User,
            id,
            "user_embedding",
            FeatureValue::F32Vec(emb),
        )
        .unwrap();
        t.insert(
            Entity::User,
            id,
            "recent_items",
            FeatureValue::I64List((0..(id % 5) as i64).collect()),
        )
        .unwrap();
        let prefs = BTreeMap::from([("news".to_string(), 0.5), (format!("c{id}"), 0.25)]);
        t.insert(
            Entity::User,
            id,
            "category_prefs",
            FeatureValue::F32Map(prefs),
        )
        .unwrap();
        t.insert(
            Entity::User,
            id,
            "history_len",
            FeatureValue::I64(id as i64 * 3),
        )
        .unwrap();
        t.insert(
            Entity::User,
            id,
            "last_active_at",
            FeatureValue::Timestamp(1_700_000_000),
        )
        .unwrap();
    }
    t
}

#[test]
fn stats_summarise_each_feature() {
    let reg = repo_registry();
    let t = sample_table(&reg);
    let stats = t.stats();
    let batch = reg
        .defs()
        .iter()
        .filter(|d| d.kind == FeatureKind::Batch)
        .count();
    assert_eq!(stats.len(), batch, "streaming features are not built");
    let s = |name: &str| stats.iter().find(|s| s.feature == name).unwrap().clone();

    let pop = s("popularity");
    assert_eq!(
        (
            pop.entity,
            pop.measure,
            pop.count,
            pop.present,
            pop.entities
        ),
        (Entity::Item, StatMeasure::Value, 100, 100, 200)
    );
    assert!((pop.null_fraction - 0.5).abs() < 1e-12);
    assert!((pop.mean.unwrap() - 50.5).abs() < 1e-9);
    assert!((pop.p50.unwrap() - 50.5).abs() < 1e-9);
    assert!((pop.p1.unwrap() - 1.99).abs() < 1e-9);
    assert!((pop.p99.unwrap() - 99.01).abs() < 1e-9);
    assert!((pop.std.unwrap() - (9999.0f64 / 12.0).sqrt()).abs() < 1e-9);
    assert_eq!((pop.min, pop.max), (Some(1.0), Some(100.0)));

    let flagged = s("flagged");
    assert_eq!((flagged.count, flagged.mean), (100, Some(0.5)));
    assert!((flagged.null_fraction - 0.5).abs() < 1e-12);

    let emb = s("user_embedding");
    assert_eq!(
        (emb.measure, emb.count, emb.null_fraction),
        (StatMeasure::Element, 640, 0.0)
    );
    assert!((emb.mean.unwrap() - 31.5).abs() < 1e-9);

    let recent = s("recent_items");
    assert_eq!(recent.measure, StatMeasure::Length);
    assert!((recent.mean.unwrap() - 2.0).abs() < 1e-9);
    assert_eq!(s("category_prefs").mean, Some(2.0));

    let empty = FeatureTable::new(&reg).stats();
    let e = empty.iter().find(|s| s.feature == "trending").unwrap();
    assert_eq!(
        (e.count, e.null_fraction, e.mean, e.p50),
        (0, 1.0, None, None)
    );

    // Serializable for feature_stats.json (no NaN: absent values are null).
    let json = serde_json::to_string(&empty).unwrap();
    assert!(json.contains("\"mean\":null"), "{json}");
    let back: Vec<funnel::features::FeatureStats> =
        serde_json::from_str(&serde_json::to_string(&stats).unwrap()).unwrap();
    // serde_json's default float parsing may differ in the last ulp; compare loosely.
    assert_eq!(back.len(), stats.len());
    for (b, s) in back.iter().zip(&stats) {
        assert_eq!(
            (&b.feature, b.count, b.present, b.measure),
            (&s.feature, s.count, s.present, s.measure)
        );
        match (b.mean, s.mean) {
            (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0)),
            (None, None) => {} // a feature the sample table leaves out
            other => panic!("{}: mean {other:?}", s.feature),
        }
    }
}

#[test]
fn embedded_store_reads_back_the_table() {
    let reg = repo_registry();
    let t = sample_table(&reg);
    let dir = tempfile::tempdir().unwrap();
    // The bundle's path for it, sub-directory included (the bundle writer makes it).
    let path = dir.path().join(funnel::features::EMBEDDED_FILE_NAME);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    assert_eq!(t.write_embedded(&path).unwrap(), t.len());

    let store = EmbeddedStore::load(&path, &reg).unwrap();
    assert_eq!((store.len(), store.defs_hash()), (t.len(), reg.hash()));
    assert_eq!(store.entity_count(Entity::Item), 200);
    assert_eq!(store.entity_count(Entity::User), 10);
    for entity in Entity::ALL {
        for id in t.ids(entity) {
            let row = store.get(entity, id).unwrap();
            let expected: Vec<_> = t.row(entity, id).unwrap().collect();
            assert_eq!(row.len(), expected.len());
            for (def, value) in expected {
                assert!(
                    row[def.name.as_str()].same_as(value),
                    "{entity} {id} {}",
                    def.name
                );
            }
        }
    }
    assert!(store.get(Entity::Item, 999).is_none());
    assert!(store.get(Entity::User, 150).is_none(), "ids are per entity");
    let many = store.get_many(Entity::Item, &[150, 999]);
    assert_eq!(many[0].unwrap()["flagged"], FeatureValue::Bool(true));
    assert!(many[1].is_none());
    // Defaults are the caller's: missing feature → declared default.
    let row = store.get(Entity::Item, 150);
    assert_eq!(
        reg.value_or_default(row, "popularity"),
        Some(&FeatureValue::F32(0.0))
    );
    assert_eq!(
        reg.value_or_default(None, "flagged"),
        Some(&FeatureValue::Bool(false))
    );
    assert_eq!(reg.value_or_default(row, "nope"), None);

    // An empty table still yields a loadable file.
    let empty = dir.path().join("empty.arrow");
    assert_eq!(FeatureTable::new(&reg).write_embedded(&empty).unwrap(), 0);
    assert!(EmbeddedStore::load(&empty, &reg).unwrap().is_empty());
}

#[test]
fn embedded_store_refuses_other_defs_and_corrupt_files() {
    let reg = repo_registry();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.arrow");
    sample_table(&reg).write_embedded(&path).unwrap();

    let mut files: Vec<(&str, String)> = BUNDLED_DEFS
        .iter()
        .map(|(n, c)| (*n, c.to_string()))
        .collect();
    files[0].1 = files[0].1.replacen("ttl = \"36h\"", "ttl = \"48h\"", 1);
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let other = FeatureRegistry::from_toml_strs(&refs).unwrap();
    assert!(matches!(
        EmbeddedStore::load(&path, &other),
        Err(FeatureError::DefsMismatch { .. })
    ));

    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(EmbeddedStore::load(&path, &reg).is_err(), "cut at {cut}");
    }
    assert!(matches!(
        EmbeddedStore::load(dir.path().join("missing.arrow"), &reg),
        Err(FeatureError::Io { .. })
    ));
}
