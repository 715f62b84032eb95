//! Training–serving parity: for the same users and candidates, the rows the builder trains on
//! (its in-memory stage) and the rows the server scores (the published bundle, read back through
//! the embedded online features) are identical, bit for bit.

use std::collections::HashMap;

use funnel::bundle::Bundle;
use funnel::features::online::{ItemOverride, UserFeatures};
use funnel::features::{Entity, FeatureRegistry};
use funnel::pipeline::query::query_state;
use funnel::ranking::encode::{encode_rows, RankUser};
use funnel::ranking::input::{col, DeviceKind, INPUT_DIM};
use funnel::rerank::filters::ItemFilter;
use index_builder::build::{run, BuildArgs};
use index_builder::config::BuildConfig;
use index_builder::dataset::{CatalogDefaults, Dataset};
use index_builder::ingest;
use index_builder::progress::Progress;
use index_builder::stage::Stage;
use index_builder::synth::{self, SynthConfig};

#[test]
fn builder_and_server_encode_identical_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = synth::generate(&SynthConfig::new(400, 300, 12_000, 5));
    let files = synth::write(&data, &dir.path().join("data")).expect("synth");
    let registry = FeatureRegistry::bundled().expect("defs");
    let cfg = BuildConfig::default();
    let outcome = run(BuildArgs {
        interactions: files.interactions.clone(),
        items: Some(files.items.clone()),
        out: dir.path().join("bundle"),
        holdout: None,
        redis: None,
        config: cfg.clone(),
        registry: FeatureRegistry::bundled().expect("defs"),
        quiet: true,
        seed: 3,
    })
    .expect("build");

    // The serving stage again, from the same inputs (the build's is gone with its process).
    let raw = ingest::read_interactions(&files.interactions).expect("interactions");
    let items = ingest::read_items(&files.items).expect("items");
    let ds = Dataset::build(raw, Some(items), &CatalogDefaults::from_registry(&registry));
    let cutoff = ds.max_ts() + 1;
    let stage = Stage::build(
        &ds,
        &ds.events,
        cutoff,
        &cfg,
        "parity",
        &Progress::new(true),
    )
    .expect("stage");

    let bundle = Bundle::open(&outcome.dir, &registry).expect("open");
    assert_eq!(bundle.category_prior, stage.prior);
    let served_now = bundle.manifest.info.get("cutoff").and_then(|v| v.as_i64());
    assert_eq!(
        served_now,
        Some(cutoff),
        "the server's bundle clock is the stage's"
    );
    let store = bundle.features.as_ref().expect("embedded features");

    let (mut compared, mut engaged) = (0, 0);
    for u in (0..ds.n_users() as u32).step_by(7) {
        let cands = stage.retrieve(&ds, u).merged;
        if cands.is_empty() {
            continue;
        }
        let mut trained = Vec::new();
        stage.encode(&ds, u, stage.cutoff, &cands, &mut trained);

        let features = store
            .get(Entity::User, ds.user_ids[u as usize])
            .map(UserFeatures::from_row);
        // The recent items exactly as the server's query state orders them.
        let q = query_state(
            &bundle,
            features.as_ref(),
            &[],
            &[],
            ItemFilter::default(),
            0.0,
        );
        let user = RankUser::from_features(
            &bundle.catalog,
            &bundle.category_prior,
            features.as_ref(),
            DeviceKind::Unknown,
            false,
            cutoff,
            &q.recent,
        );
        let mut served = Vec::new();
        encode_rows(
            &bundle.item_table(),
            &user,
            &cands,
            &HashMap::new(),
            &mut served,
        );

        assert_eq!(trained.len(), cands.len() * INPUT_DIM);
        if let Some(at) = trained
            .iter()
            .zip(&served)
            .position(|(a, b)| a.to_bits() != b.to_bits())
        {
            panic!(
                "user {u}: row {} column {} differs: trained {} served {}",
                at / INPUT_DIM,
                at % INPUT_DIM,
                trained[at],
                served[at]
            );
        }
        assert_eq!(trained.len(), served.len());
        // The same through the online item features the server reads from Redis (overrides of
        // the bundle's arrays): what the builder pushes is what it trained on.
        let overrides: HashMap<_, _> = cands
            .iter()
            .filter_map(|c| {
                let id = bundle.catalog.get(c.item)?.id;
                Some((c.item, ItemOverride::from_row(store.get(Entity::Item, id)?)))
            })
            .collect();
        assert_eq!(overrides.len(), cands.len());
        let mut online = Vec::new();
        encode_rows(&bundle.item_table(), &user, &cands, &overrides, &mut online);
        assert!(
            online
                .iter()
                .zip(&served)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "user {u}: the online item features encode differently"
        );
        engaged += trained
            .chunks(INPUT_DIM)
            .filter(|r| r[col::LOG_ENGAGEMENT] > 0.0 && r[col::LOG_ENGAGEMENT + 1] > 0.0)
            .count();
        compared += cands.len();
    }
    assert!(compared > 1000, "only {compared} rows compared");
    assert!(
        engaged > compared / 2,
        "engagement inputs mostly empty: {engaged}/{compared}"
    );
}
