//! `funnel`: the serving engine's command line.
//! * `serve` loads a bundle and answers `POST /v1/recommend` (Redis or the embedded store).
//! * `demo` builds a bundle from synthetic data (or MovieLens files) and serves it.
//! * `inspect` reports what a bundle holds.
//! * `versions` lists a bundle root's published versions with their evaluation figures.
//! * `experiments report` counts each experiment arm's impressions and clicks in the event log.

/// `println!` that ignores a closed stdout (see `say`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

mod inspect;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use funnel::bundle::Bundle;
use funnel::config::{Clock, EngineConfig};
use funnel::engine::{connect_redis, Engine};
use funnel::features::FeatureRegistry;
use index_builder::build::{run as build, BuildArgs};
use index_builder::config::BuildConfig;
use index_builder::split::Holdout;
use index_builder::synth::{self, SynthConfig};

#[derive(Parser)]
#[command(
    name = "funnel",
    version,
    about = "Funnel: multi-stage recommendation serving engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log line format on stderr: text, or json (one object a line, request id on each).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: funnel::cli::LogFormat,
    /// Log a line per closed span (each request, each stage; with RUST_LOG=funnel=info for the
    /// stages) with its busy and idle time: follow a slow request.
    #[arg(long, global = true)]
    log_spans: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a bundle over HTTP.
    Serve {
        /// Server configuration (TOML); built-in defaults when omitted.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Bundle root (with CURRENT) or a version directory.
        #[arg(long, default_value = "artifacts/bundle")]
        bundle: PathBuf,
        /// Read online features from this Redis (e.g. redis://127.0.0.1:6379) or Redis Cluster
        /// (redis+cluster://host:port,host:port); without it the bundle's embedded store serves
        /// them.
        #[arg(long)]
        redis: Option<String>,
        /// Listen address; overrides the config's server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Feature definitions directory (defaults to the compiled-in feature-defs/).
        #[arg(long)]
        feature_defs: Option<PathBuf>,
        /// Event log directory; overrides the config's events.log_dir.
        #[arg(long)]
        event_log: Option<PathBuf>,
    },
    /// Build a demo bundle (synthetic data, or MovieLens files with --data) and serve it.
    Demo {
        /// A directory with MovieLens/RecBole files (*.inter + *.item, or u.data + u.item).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where the demo data and bundle go.
        #[arg(long, default_value = "artifacts/demo")]
        out: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Rebuild even when OUT already holds a bundle.
        #[arg(long)]
        rebuild: bool,
        /// Synthetic data size.
        #[arg(long, default_value_t = 5_000)]
        users: usize,
        #[arg(long, default_value_t = 10_000)]
        items: usize,
        #[arg(long, default_value_t = 200_000)]
        interactions: usize,
    },
    /// Experiments: `report` reads the durable event log and prints each arm's impressions,
    /// clicks and click-through rate with its 95 % interval.
    Experiments {
        #[command(subcommand)]
        cmd: ExperimentsCmd,
    },
    /// List the published versions of a bundle root (oldest first) with their build's metrics.
    Versions {
        #[arg(long, default_value = "artifacts/bundle")]
        bundle: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load a bundle (root with CURRENT, or a version directory) and report on it.
    Inspect {
        #[arg(long)]
        bundle: PathBuf,
        /// Also show this user's online features and batch recommendations.
        #[arg(long)]
        user: Option<u64>,
        #[arg(long)]
        feature_defs: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ExperimentsCmd {
    /// Per-arm results from the event log (they survive restarts).
    Report {
        /// The server's event log directory (`events.log_dir`).
        #[arg(long)]
        events: PathBuf,
        /// The server config with the `[experiment]`: events logged without an arm are then
        /// assigned by user id, and only that experiment's arms are listed.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server must outlive clients that close early: only the printing commands take the
    // default SIGPIPE action.
    let sigpipe = match cli.cmd {
        Cmd::Serve { .. } | Cmd::Demo { .. } => funnel::cli::SigPipe::Ignore,
        Cmd::Inspect { .. } | Cmd::Versions { .. } | Cmd::Experiments { .. } => {
            funnel::cli::SigPipe::Default
        }
    };
    funnel::cli::init(sigpipe, cli.log_format, cli.log_spans);
    funnel::cli::finish(run(cli))
}

fn registry(dir: Option<&Path>) -> Result<FeatureRegistry> {
    Ok(FeatureRegistry::load_or_bundled(dir)?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Versions { bundle, json } => versions(&bundle, json),
        Cmd::Experiments {
            cmd:
                ExperimentsCmd::Report {
                    events,
                    config,
                    json,
                },
        } => experiments_report(&events, config.as_deref(), json),
        Cmd::Inspect {
            bundle,
            user,
            feature_defs,
        } => inspect::run(&bundle, user, &registry(feature_defs.as_deref())?),
        Cmd::Serve {
            config,
            bundle,
            redis,
            listen,
            feature_defs,
            event_log,
        } => {
            let mut cfg = match &config {
                Some(p) => EngineConfig::load(p).map_err(anyhow::Error::msg)?,
                None => EngineConfig::default(),
            };
            if let Some(l) = listen {
                cfg.server.listen = l.to_string();
            }
            if let Some(d) = event_log {
                cfg.events.log_dir = d.display().to_string();
            }
            cfg.auth = cfg.auth.with_env();
            cfg.auth.validate().map_err(anyhow::Error::msg)?;
            let registry = registry(feature_defs.as_deref())?;
            serve(&bundle, cfg, redis.as_deref(), &registry, None)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            data,
            out,
            listen,
            rebuild,
            users,
            items,
            interactions,
        } => {
            let bundle_dir = out.join("bundle");
            let registry = FeatureRegistry::bundled()?;
            if rebuild || !bundle_dir.join("CURRENT").exists() {
                let (inter, item_file) = match &data {
                    Some(dir) => movielens_files(dir)?,
                    None => {
                        out!(
                            "synthesizing {users} users, {items} items, {interactions} interactions…"
                        );
                        let d = synth::generate(&SynthConfig::new(users, items, interactions, 42));
                        let files = synth::write(&d, &out.join("data"))?;
                        (files.interactions, Some(files.items))
                    }
                };
                out!("building a bundle from {} …", inter.display());
                let o = build(BuildArgs {
                    interactions: inter,
                    items: item_file,
                    out: bundle_dir.clone(),
                    holdout: Some(Holdout::Temporal(0.2)),
                    redis: None,
                    // Trained on the candidates the demo server (default config) retrieves.
                    config: BuildConfig {
                        serving: EngineConfig::default().retrieval_plan(),
                        ..BuildConfig::default()
                    },
                    registry: registry.clone(),
                    quiet: false,
                    seed: 42,
                })?;
                if let Some(e) = &o.eval {
                    out!("\n{}", e.table());
                }
                out!(
                    "built {} in {:.1}s at {}",
                    o.version,
                    o.total_seconds,
                    o.dir.display()
                );
            } else {
                out!(
                    "reusing the bundle in {} (--rebuild to build a new one)",
                    bundle_dir.display()
                );
            }
            let mut cfg = EngineConfig::default();
            cfg.server.listen = listen.to_string();
            // Demo data is historical: "now" is the bundle's data cutoff, not the wall clock.
            cfg.features.clock = Clock::Bundle;
            cfg.events.log_dir = out.join("events").display().to_string();
            cfg.auth = cfg.auth.with_env();
            cfg.auth.validate().map_err(anyhow::Error::msg)?;
            serve(&bundle_dir, cfg, None, &registry, Some(print_demo_help))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The interactions file and the item file of a MovieLens/RecBole directory.
fn movielens_files(dir: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let mut inter = None;
    let mut items = None;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if inter.is_none() && (name.ends_with(".inter") || name == "u.data") {
            inter = Some(p.clone());
        } else if items.is_none() && (name.ends_with(".item") || name == "u.item") {
            items = Some(p.clone());
        }
    }
    match inter {
        Some(i) => Ok((i, items)),
        None => bail!(
            "{}: no interactions file (*.inter or u.data) in this directory",
            dir.display()
        ),
    }
}

type Help = fn(&Engine, SocketAddr);

fn serve(
    bundle: &Path,
    cfg: EngineConfig,
    redis: Option<&str>,
    registry: &FeatureRegistry,
    help: Option<Help>,
) -> Result<()> {
    let addr: SocketAddr = cfg
        .server
        .listen
        .parse()
        .with_context(|| format!("server.listen {:?}", cfg.server.listen))?;
    // Before any runtime thread exists (see apply_matmul_threads).
    funnel::engine::apply_matmul_threads(cfg.server.matmul_threads);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let t = std::time::Instant::now();
        let b = Bundle::open(bundle, registry)
            .with_context(|| format!("loading bundle {}", bundle.display()))?;
        for (c, e) in &b.problems {
            eprintln!("warning: bundle component {c} unavailable: {e}");
        }
        let store = match redis {
            Some(url) => Some(
                connect_redis(url, registry, &cfg)
                    .await
                    .with_context(|| format!("connecting to Redis at {url}"))?,
            ),
            None => None,
        };
        // A bundle root (with CURRENT) is followed: hot reload, rollback, pins. A version
        // directory is served as it is.
        let root = (!bundle.join(funnel::bundle::MANIFEST).is_file()).then(|| bundle.to_path_buf());
        let engine = Engine::new(b, cfg.clone(), store)?;
        let loaded = t.elapsed().as_secs_f64();
        let e2: Arc<Engine> = engine.clone();
        let deploy = funnel::engine::deploy::Deployment::new(engine, root, Some(registry.clone()), cfg);
        funnel::server::serve_deployment(
            deploy,
            addr,
            move |bound| {
                say(&format!(
                    "funnel serving bundle {} ({} items, features: {}, API keys: {}) on http://{bound} — loaded in {loaded:.2}s",
                    e2.bundle().manifest.version,
                    e2.bundle().catalog.len(),
                    match e2.store_kind() {
                        funnel::engine::StoreKind::Redis => "redis",
                        funnel::engine::StoreKind::Embedded => "embedded",
                    },
                    auth_summary(&e2.config().auth),
                ));
                if let Some(h) = help {
                    h(&e2, bound);
                }
            },
            async {
                stop_signal().await;
                say("shutting down");
            },
        )
        .await
        .with_context(|| format!("serving on {addr}"))?;
        Ok(())
    })
}

/// `funnel experiments report`.
fn experiments_report(events: &Path, config: Option<&Path>, json: bool) -> Result<ExitCode> {
    let cfg = match config {
        Some(p) => {
            let c = EngineConfig::load(p).map_err(anyhow::Error::msg)?;
            match c.experiment {
                Some(e) => Some(e),
                None => bail!("{}: no [experiment] in this config", p.display()),
            }
        }
        None => None,
    };
    let arms = funnel::engine::experiments::report_from_log(events, cfg.as_ref())
        .with_context(|| format!("reading the event log in {}", events.display()))?;
    if json {
        out!("{}", serde_json::to_string_pretty(&arms)?);
        return Ok(ExitCode::SUCCESS);
    }
    if arms.is_empty() {
        out!(
            "no events attributed to an experiment arm in {}{}",
            events.display(),
            if cfg.is_none() {
                " (pass --config to assign events logged without an arm)"
            } else {
                ""
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<32} {:>7} {:>11} {:>8} {:>8}  {:<17} {:>9}",
        "experiment/arm",
        "users",
        "impressions",
        "clicks",
        "CTR",
        "95% CI",
        "recorded"
    );
    for a in &arms {
        out!(
            "{:<32} {:>7} {:>11} {:>8} {:>8.4}  [{:.4}, {:.4}] {:>9}",
            a.label,
            a.users,
            a.impressions,
            a.clicks,
            a.ctr,
            a.ctr_ci95[0],
            a.ctr_ci95[1],
            a.recorded
        );
    }
    out!("recorded = events whose arm the server logged (the rest assigned by user id from --config)");
    Ok(ExitCode::SUCCESS)
}

/// `funnel versions`: the published versions of a bundle root.
fn versions(bundle: &Path, json: bool) -> Result<ExitCode> {
    let list = funnel::engine::deploy::describe_versions(bundle)
        .with_context(|| format!("reading bundle root {}", bundle.display()))?;
    if json {
        out!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        out!("no published versions in {}", bundle.display());
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<2} {:<30} {:<20} {:<14} {:>6}  best ranker (NDCG@20 on the build's holdout)",
        "",
        "version",
        "created (UTC)",
        "holdout",
        "users"
    );
    for v in &list {
        let m = &v.metrics;
        let best = m
            .get("rows")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some("ranker"))
            .filter_map(|r| Some((r.get("name")?.as_str()?, r.get("ndcg_at_20")?.as_f64()?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or_else(|| "-".to_string(), |(n, x)| format!("{n} {x:.4}"));
        out!(
            "{:<2} {:<30} {:<20} {:<14} {:>6}  {best}",
            if v.current { "*" } else { "" },
            v.version,
            v.created_at.get(..19).unwrap_or(&v.created_at),
            m.get("holdout").and_then(|x| x.as_str()).unwrap_or("-"),
            m.get("users")
                .and_then(|x| x.as_u64())
                .map_or_else(|| "-".to_string(), |x| x.to_string()),
        );
    }
    out!("* = CURRENT");
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM (what service managers send).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A line on stdout that a closed stdout cannot turn into a panic (SIGPIPE is ignored while
/// serving, so `println!` would panic on EPIPE).
fn say(line: &str) {
    out!("{line}");
}

fn auth_summary(a: &funnel::config::AuthConfig) -> String {
    match (a.recommend_keys.is_empty(), a.events_keys.is_empty()) {
        (true, true) => "none, the API is open".into(),
        (r, e) => format!(
            "recommend {}, events {}",
            if r { "open" } else { "required" },
            if e { "open" } else { "required" }
        ),
    }
}

/// Curl lines with a real user and a real category of the served bundle.
fn print_demo_help(engine: &Engine, addr: SocketAddr) {
    let b = engine.bundle();
    let user = b
        .batch_recs
        .keys()
        .min()
        .copied()
        .or_else(|| b.user_ids.first().copied())
        .unwrap_or(1);
    let category = b.catalog.categories.first().cloned().unwrap_or_default();
    let session = b.catalog.items.first().map(|i| i.id).unwrap_or(1);
    let url = format!("http://{addr}");
    out!("\nTry:");
    out!("  curl -s {url}/readyz");
    out!(
        "  curl -s {url}/v1/recommend -H 'content-type: application/json' -d '{{\"user_id\": \"{user}\", \"k\": 10}}'"
    );
    out!(
        "  curl -s {url}/v1/recommend -d '{{\"user_id\": \"{user}\", \"k\": 5, \"filters\": {{\"categories_any\": [\"{category}\"]}}, \"explain\": true}}'"
    );
    out!(
        "  curl -s {url}/v1/recommend -d '{{\"user_id\": \"new-visitor\", \"k\": 5, \"context\": {{\"session_items\": [{session}], \"device\": \"mobile\"}}}}'"
    );
    let item = b.catalog.items.get(1).map(|i| i.id).unwrap_or(2);
    out!(
        "  curl -s {url}/v1/events -d '{{\"events\": [{{\"user_id\": \"{user}\", \"item_id\": {item}, \"type\": \"click\", \"event_id\": \"demo-1\"}}]}}'"
    );
    out!("  curl -s {url}/metrics          # Prometheus");
    out!("  curl -s {url}/openapi.json     # the API, OpenAPI 3.1");
    out!("Dashboard: {url}/dashboard?user={user}");
    out!("Ctrl-C stops the server.");
}
