//! Item cold start through the real build: a new item published with a category but no
//! interactions gets a content vector, and the bundle's ANN graph retrieves it for a user who
//! likes that category, searched with that user's served embedding (what the ANN source does).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_index-builder");
const GENRES: [&str; 3] = ["Western", "Horror", "Musical"];
const PER_GENRE: u64 = 15;
/// The new item: a Western nobody has seen yet.
const NEW_ITEM: u64 = 999;

/// RecBole-format files: users 1–20 watch only Westerns, 21–40 Horror, 41–60 Musicals, each
/// 8 of their genre's 15 items; item 999 is a Western in the catalogue with no interactions.
fn write_data(dir: &Path) {
    let mut items = String::from("item_id:token\tmovie_title:token_seq\tclass:token_seq\n");
    for (g, name) in GENRES.iter().enumerate() {
        for j in 0..PER_GENRE {
            let id = 100 * (g as u64 + 1) + j;
            items.push_str(&format!("{id}\tTitle {id}\t{name}\n"));
        }
    }
    items.push_str(&format!("{NEW_ITEM}\tThe New One\tWestern\n"));
    let mut inter = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    let mut ts = 880_000_000u64;
    for u in 1..=60u64 {
        let g = (u - 1) / 20;
        for k in 0..8u64 {
            let j = (u * 7 + k * 3) % PER_GENRE;
            ts += 60;
            inter.push_str(&format!("{u}\t{}\t4\t{ts}\n", 100 * (g + 1) + j));
        }
    }
    std::fs::write(dir.join("cold.item"), items).unwrap();
    std::fs::write(dir.join("cold.inter"), inter).unwrap();
}

/// Builds a bundle (no holdout, a small ALS) with `cold_start_strength` and returns its dir.
fn build(dir: &Path, name: &str, strength: f32) -> std::path::PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[als]\niterations = 15\ncold_start_strength = {strength}\n\n\
             [rankers]\narchs = [\"logistic\"]\nlistwise = []\nepochs = 1\n"
        ),
    )
    .unwrap();
    let out = dir.join(name);
    let o = Command::new(BIN)
        .args(["--quiet", "build", "--interactions"])
        .arg(dir.join("cold.inter"))
        .arg("--items")
        .arg(dir.join("cold.item"))
        .arg("--out")
        .arg(&out)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// For each Western fan: is the new item in the ANN top `k`?
fn retrieved_for_fans(bundle_root: &Path, k: usize) -> Vec<bool> {
    let registry = funnel::features::FeatureRegistry::bundled().unwrap();
    let b = funnel::bundle::Bundle::open(bundle_root, &registry).unwrap();
    assert!(b.problems.is_empty(), "{:?}", b.problems);
    let new = b.catalog.idx(NEW_ITEM).expect("new item in the catalog");
    let graph = b.ann.as_ref().expect("ann graph");
    let store = b.features.as_ref().expect("embedded features");
    (1..=20u64)
        .map(|u| {
            let emb = store
                .get(funnel::features::Entity::User, u)
                .and_then(|row| row.get("user_embedding"))
                .and_then(|v| v.as_f32_slice())
                .map(|v| v.to_vec())
                .expect("user embedding");
            funnel::sources::ann::AnnIndex::search(&**graph, &emb, k, &|_| true)
                .iter()
                .any(|s| s.item == new)
        })
        .collect()
}

#[test]
fn a_new_item_with_a_category_is_retrieved_for_users_who_like_that_category() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    // Top 15 of 46 items: a Western fan's list is the 15 seen Westerns unless the new one's
    // content vector (the Westerns' mean) puts it among them.
    let k = PER_GENRE as usize;
    let with = retrieved_for_fans(&build(tmp.path(), "with", 2.0), k);
    let hits = with.iter().filter(|&&h| h).count();
    assert!(hits >= 18, "new Western retrieved for {hits} of 20 fans");
    // Without cold-start vectors it is a zero vector, scored 0, behind every Western.
    let without = retrieved_for_fans(&build(tmp.path(), "without", 0.0), k);
    let hits0 = without.iter().filter(|&&h| h).count();
    assert!(hits0 <= 2, "zero vector retrieved for {hits0} of 20 fans");
}
