//! End-to-end tests of the `index-builder` binary: real files in, a real bundle out.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_index-builder");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--quiet")
        .args(args)
        .output()
        .expect("spawn index-builder")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "index-builder {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn synth(dir: &Path, users: usize, items: usize, interactions: usize) -> (PathBuf, PathBuf) {
    let d = dir.to_str().unwrap();
    ok(&[
        "synth",
        "--users",
        &users.to_string(),
        "--items",
        &items.to_string(),
        "--interactions",
        &interactions.to_string(),
        "--seed",
        "7",
        "--out",
        d,
    ]);
    (dir.join("interactions.parquet"), dir.join("items.parquet"))
}

fn current(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join("CURRENT"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn versions(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && n != "CURRENT")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn synthetic_build_publishes_verifies_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let (inter, items) = synth(&tmp.path().join("data"), 400, 800, 30_000);
    let out = tmp.path().join("bundle");
    let stdout = ok(&[
        "build",
        "--interactions",
        inter.to_str().unwrap(),
        "--items",
        items.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--holdout",
        "temporal:0.2",
    ]);
    assert!(stdout.contains("Recall@20"), "{stdout}");
    assert!(stdout.contains("Timing summary"), "{stdout}");
    let version = current(&out).expect("CURRENT written");
    let vdir = out.join(&version);
    for f in [
        "manifest.json",
        "catalog.arrow",
        "users.arrow",
        "embeddings/items.arrow",
        "embeddings/users.arrow",
        "ann/graph.arrow",
        "ann/vectors.arrow",
        "cf/neighbors.arrow",
        "content/category_items.arrow",
        "trending.arrow",
        "popularity.arrow",
        "rankers.json",
        "batch_recs.arrow",
        "features/online.arrow",
        "feature_stats.json",
        "eval.json",
    ] {
        assert!(vdir.join(f).is_file(), "missing {f}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vdir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], version.as_str());
    assert!(
        manifest["files"]["catalog.arrow"]["sha256"]
            .as_str()
            .unwrap()
            .len()
            == 64
    );
    assert!(manifest["inputs"].as_array().unwrap().len() == 2);
    assert!(
        manifest["info"]["ranker_correlation"]
            .as_array()
            .unwrap()
            .len()
            >= 3
    );

    // The bundle loads through the engine's own readers.
    let catalog = funnel::catalog::Catalog::load(&vdir.join("catalog.arrow")).unwrap();
    assert_eq!(catalog.len(), 800);
    let graph = funnel::sources::ann::hnsw::FrozenHnsw::load(&vdir.join("ann")).unwrap();
    assert_eq!(funnel::sources::ann::AnnIndex::len(&graph), 800);

    assert!(ok(&["verify", out.to_str().unwrap()]).contains("OK"));
    let table = ok(&["eval", "--bundle", out.to_str().unwrap()]);
    for row in [
        "source:ann",
        "source:cf",
        "source:content",
        "source:trending",
        "merged",
        "ranker:",
        "baseline:popularity",
    ] {
        assert!(table.contains(row), "eval table lacks {row}:\n{table}");
    }

    // A flipped byte is caught, naming the file.
    let victim = vdir.join("cf/neighbors.arrow");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let out_v = run(&["verify", out.to_str().unwrap()]);
    assert!(!out_v.status.success());
    assert!(String::from_utf8_lossy(&out_v.stderr).contains("cf/neighbors.arrow"));
}

#[test]
fn bad_input_fails_clearly_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (inter, items) = synth(&tmp.path().join("data"), 200, 300, 8_000);
    let out = tmp.path().join("bundle");
    let o = out.to_str().unwrap();
    ok(&[
        "build",
        "--interactions",
        inter.to_str().unwrap(),
        "--items",
        items.to_str().unwrap(),
        "--out",
        o,
    ]);
    let before = (current(&out), versions(&out));

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad_id.csv",
            "user_id,item_id,timestamp\n1,2,1700000000\n1,abc,1700000001\n".into(),
            ":3",
        ),
        (
            "missing_col.csv",
            "user_id,timestamp\n1,1700000000\n".into(),
            "item_id",
        ),
        ("empty.csv", String::new(), "empty.csv"),
        (
            "future.csv",
            "user_id,item_id,timestamp\n1,2,99999999999\n".into(),
            ":2",
        ),
    ];
    for (name, content, must_contain) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, content).unwrap();
        let r = run(&["build", "--interactions", p.to_str().unwrap(), "--out", o]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{name} should fail");
        assert!(
            err.contains(name) && err.contains(must_contain),
            "{name}: unclear error: {err}"
        );
        assert_eq!(
            (current(&out), versions(&out)),
            before,
            "{name} changed the bundle root"
        );
    }
    // Truncated Parquet.
    let bytes = std::fs::read(&inter).unwrap();
    let trunc = tmp.path().join("trunc.parquet");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let r = run(&[
        "build",
        "--interactions",
        trunc.to_str().unwrap(),
        "--out",
        o,
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("trunc.parquet"));
    assert_eq!((current(&out), versions(&out)), before);
    // A bad config names the file and line.
    let cfg = tmp.path().join("bad.toml");
    let build_with_config = || {
        run(&[
            "build",
            "--interactions",
            inter.to_str().unwrap(),
            "--out",
            o,
            "--config",
            cfg.to_str().unwrap(),
        ])
    };
    std::fs::write(&cfg, "[als]\ndim = 64\nbogus = 1\n").unwrap();
    let r = build_with_config();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("bad.toml:3"), "{err}");
    // An embedding width the feature-defs do not declare is refused before any work.
    std::fs::write(&cfg, "[als]\ndim = 32\n").unwrap();
    let r = build_with_config();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("user_embedding"),
        "{err}"
    );
    assert_eq!((current(&out), versions(&out)), before);
}

#[test]
fn killed_build_never_changes_current() {
    let tmp = tempfile::tempdir().unwrap();
    let (inter, items) = synth(&tmp.path().join("data"), 300, 500, 15_000);
    let out = tmp.path().join("bundle");
    let o = out.to_str().unwrap();
    let args = [
        "build",
        "--interactions",
        inter.to_str().unwrap(),
        "--items",
        items.to_str().unwrap(),
        "--out",
        o,
    ];
    ok(&args);
    let before = (current(&out), versions(&out));
    assert_eq!(before.1.len(), 1);

    // Start a second build and kill -9 it once it is writing its temp directory.
    let mut child = Command::new(BIN)
        .arg("--quiet")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut saw_tmp = false;
    while Instant::now() < deadline {
        let has_tmp = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"));
        if has_tmp {
            saw_tmp = true;
            std::thread::sleep(Duration::from_millis(300));
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(saw_tmp, "the build never started writing");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        (current(&out), versions(&out)),
        before,
        "a killed build changed the bundle root"
    );
    assert!(ok(&["verify", o]).contains("OK"));

    // The next build succeeds and cleans up the dead build's temp dir.
    ok(&args);
    let after = versions(&out);
    assert_eq!(after.len(), 2);
    assert_eq!(current(&out).as_ref(), after.last());
    let leftovers = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn movielens_100k_builds_with_holdout() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-100k");
    if !dir.join("ml-100k.inter").is_file() {
        eprintln!("skipping: {} not present", dir.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("artifacts");
    let stdout = ok(&[
        "build",
        "--interactions",
        dir.join("ml-100k.inter").to_str().unwrap(),
        "--items",
        dir.join("ml-100k.item").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--holdout",
        "temporal:0.2",
    ]);
    let vdir = out.join(current(&out).unwrap());
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vdir.join("eval.json")).unwrap()).unwrap();
    let rows = eval["rows"].as_array().unwrap();
    let get = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {stdout}"))["ndcg_at_20"]
            .as_f64()
            .unwrap()
    };
    let pop = get("baseline:popularity");
    assert!(pop > 0.0);
    // Candidates cover far more of the holdout than any 20-item list can.
    let merged_r500 = rows.iter().find(|r| r["name"] == "merged").unwrap()["recall_at_500"]
        .as_f64()
        .unwrap();
    let pop_r20 = rows
        .iter()
        .find(|r| r["name"] == "baseline:popularity")
        .unwrap()["recall_at_20"]
        .as_f64()
        .unwrap();
    assert!(merged_r500 > pop_r20, "{stdout}");
    let catalog = funnel::catalog::Catalog::load(&vdir.join("catalog.arrow")).unwrap();
    assert_eq!(catalog.len(), 1682);
    assert!(catalog.categories.iter().any(|c| c == "Comedy"));
}

#[test]
fn build_pushes_version_tagged_features_to_redis() {
    let redis = common::redis::RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let (inter, items) = synth(&tmp.path().join("data"), 200, 300, 8_000);
    let out = tmp.path().join("bundle");
    let url = redis.url();
    ok(&[
        "build",
        "--interactions",
        inter.to_str().unwrap(),
        "--items",
        items.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--redis",
        &url,
    ]);
    let version = current(&out).unwrap();
    let mut conn = redis.conn();
    let live: String = redis::cmd("GET")
        .arg("funnel:current_version")
        .query(&mut conn)
        .unwrap();
    assert_eq!(live, version);
    // Every item has a hash under this version's keys, with a TTL.
    let key = format!("funnel:{version}:{{i:1}}");
    let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query(&mut conn).unwrap();
    assert!(
        fields.iter().any(|f| f == "popularity"),
        "{key}: {fields:?}"
    );
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
    assert!(ttl > 0);

    // An unreachable Redis fails the build and publishes nothing.
    let before = (current(&out), versions(&out));
    let dead = format!("redis://127.0.0.1:{}/", redis.port);
    drop(redis);
    let r = run(&[
        "build",
        "--interactions",
        inter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--redis",
        &dead,
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("redis"));
    assert_eq!((current(&out), versions(&out)), before);
}
