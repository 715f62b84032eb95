//! `funnel inspect`: loads a published bundle through the same loader the server uses and reports
//! what it holds, what failed to load, and — for a user — the online features and precomputed
//! recommendations the server would fall back to.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use funnel::bundle::Bundle;
use funnel::features::{Entity, FeatureRegistry};

pub fn run(bundle: &Path, user: Option<u64>, registry: &FeatureRegistry) -> Result<ExitCode> {
    let t = std::time::Instant::now();
    let b =
        Bundle::open(bundle, registry).with_context(|| format!("loading {}", bundle.display()))?;
    println!(
        "bundle {} ({}), loaded in {:.2}s",
        b.manifest.version,
        b.dir.display(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "  built        {} by {}",
        b.manifest.created_at, b.manifest.builder
    );
    println!(
        "  items        {} ({} categories)",
        b.catalog.len(),
        b.catalog.categories.len()
    );
    println!("  users        {}", b.user_ids.len());
    println!("  embeddings   {} dims", b.dim);
    let ok = |present: bool| if present { "ok" } else { "UNAVAILABLE" };
    println!("  ann          {}", ok(b.ann.is_some()));
    println!("  cf           {}", ok(b.cf.is_some()));
    println!("  content      {}", ok(b.content.is_some()));
    println!("  trending     {}", ok(b.trending.is_some()));
    println!(
        "  rankers      {}",
        if b.rankers.is_empty() {
            "UNAVAILABLE".to_string()
        } else {
            b.rankers
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!("  batch recs   {} users", b.batch_recs.len());
    println!(
        "  features     {}",
        b.features
            .as_ref()
            .map(|f| format!("{} values", f.len()))
            .unwrap_or_else(|| "UNAVAILABLE".into())
    );
    if b.manifest.feature_defs_hash != registry.hash() {
        println!(
            "  WARNING: bundle was built with different feature-defs (hash {})",
            b.manifest.feature_defs_hash
        );
    }
    for (component, problem) in &b.problems {
        println!("  problem: {component}: {problem}");
    }
    if let Some(uid) = user {
        println!("\nuser {uid}:");
        match b.features.as_ref().and_then(|f| f.get(Entity::User, uid)) {
            Some(row) => {
                let mut names: Vec<_> = row.keys().collect();
                names.sort();
                for name in names {
                    let v = format!("{:?}", row[name]);
                    let v = if v.len() > 100 {
                        format!("{}…", &v[..v.floor_char_boundary(100)])
                    } else {
                        v
                    };
                    println!("  {name:<16} {v}");
                }
            }
            None => println!("  no online features (a cold-start user for this bundle)"),
        }
        match b.batch_recs.get(&uid) {
            Some(items) => {
                println!("  batch recommendations (top 10 of {}):", items.len());
                for (rank, id) in items.iter().take(10).enumerate() {
                    let title = b
                        .catalog
                        .idx(*id)
                        .and_then(|i| b.catalog.get(i))
                        .map(|it| it.title.as_str())
                        .unwrap_or("");
                    println!("    {:>2}. {id:>8}  {title}", rank + 1);
                }
            }
            None => println!("  no batch recommendations (inactive or unknown user)"),
        }
    }
    Ok(if b.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
