//! The FAISS ANN backend end to end (`cargo test --features faiss --test faiss_backend`): the
//! index-builder trains an index from a factory string into the bundle, the server serves it
//! when `retrieval.ann_backend = "faiss"`, refuses to start when the bundle was built without
//! one, and serves degraded (the other sources) when the file is missing or corrupt, which
//! `verify` also reports.
#![cfg(feature = "faiss")]

mod common;

use std::path::{Path, PathBuf};

use serde_json::json;

use common::{
    build_bundle_with, copy_version, item_ids, shared_bundle, test_config, users_with_batch,
    TestServer,
};
use funnel::bundle::Bundle;
use funnel::config::AnnBackend;
use funnel::engine::Engine;
use funnel::features::FeatureRegistry;
use index_builder::config::FaissBuildConfig;

const FACTORY: &str = "HNSW32,Flat";

/// A small synthetic bundle with a FAISS index, built once per test binary.
fn faiss_bundle() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faiss-tests-{}", std::process::id()));
        build_bundle_with(&dir, None, |cfg| {
            cfg.rankers.epochs = 4;
            cfg.rankers.archs = vec![funnel::ranking::Arch::Logistic];
            cfg.rankers.listwise = vec![];
            cfg.faiss = Some(FaissBuildConfig {
                factory: FACTORY.into(),
            });
        })
    })
}

fn faiss_config() -> funnel::config::EngineConfig {
    let mut cfg = test_config();
    cfg.retrieval.ann_backend = AnnBackend::Faiss;
    cfg.retrieval.faiss_params.insert("efSearch".into(), 256.0);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_bundles_faiss_index() {
    let root = faiss_bundle();
    let report = funnel::bundle::verify(root).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    let vdir = funnel::bundle::resolve_version_dir(root).expect("version");
    assert!(vdir.join("ann/faiss.index").is_file());
    let s = TestServer::start(root, faiss_config(), None).await;
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let mut from_ann = 0;
    for u in users_with_batch(&s, 10) {
        let (st, v) = s
            .recommend(json!({"user_id": u.to_string(), "k": 20, "explain": true}))
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["degradation"], "full", "{v}");
        assert_eq!(item_ids(&v).len(), 20);
        assert!(v["timings_ms"]["sources"]["ann"].as_f64().is_some(), "{v}");
        from_ann += v["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|it| {
                it["sources"]
                    .as_array()
                    .is_some_and(|a| a.contains(&json!("ann")))
            })
            .count();
    }
    assert!(
        from_ann > 0,
        "no served item came from the FAISS ANN source"
    );
    s.stop().await;
}

#[test]
fn a_bundle_without_a_faiss_index_is_refused_at_load() {
    let registry = FeatureRegistry::bundled().expect("defs");
    let b = Bundle::open(shared_bundle(), &registry).expect("bundle");
    let err = match Engine::new(b, faiss_config(), None) {
        Ok(_) => panic!("a bundle without FAISS served ann_backend = faiss"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("has no FAISS index"), "{err}");
    assert!(err.contains("ann_backend"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_corrupt_faiss_index_is_caught_by_verify_and_served_degraded() {
    for case in ["missing", "corrupt"] {
        let dir = copy_version(
            faiss_bundle(),
            &Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("faiss-{case}-{}", std::process::id())),
        );
        let file = dir.join("ann/faiss.index");
        if case == "missing" {
            std::fs::remove_file(&file).expect("remove");
        } else {
            // Same size, one byte flipped in the middle: only the checksum can tell.
            let mut bytes = std::fs::read(&file).expect("read");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x5a;
            std::fs::write(&file, bytes).expect("write");
        }
        let report = funnel::bundle::verify(&dir).expect("verify");
        assert!(
            report.problems.iter().any(|p| p.contains("faiss.index")),
            "{case}: {:?}",
            report.problems
        );
        let s = TestServer::start(&dir, faiss_config(), None).await;
        let (_, ready) = s.get("/readyz").await;
        assert_eq!(ready["status"], "degraded", "{case}: {ready}");
        let ann = ready["components"]["source.ann"]
            .as_str()
            .or(ready["components"]["ann"].as_str())
            .unwrap_or_default();
        assert!(ann.starts_with("unavailable"), "{case}: {ready}");
        for u in users_with_batch(&s, 5) {
            let (st, v) = s
                .recommend(json!({"user_id": u, "k": 20, "explain": true}))
                .await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(item_ids(&v).len(), 20, "{case}: {v}");
            for it in v["items"].as_array().expect("items") {
                assert!(!it["sources"]
                    .as_array()
                    .expect("sources")
                    .contains(&json!("ann")));
            }
        }
        s.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
