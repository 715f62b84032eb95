//! `index-builder`: Funnel's nightly job. `build` turns interaction logs into a versioned,
//! checksummed bundle; `synth` writes deterministic synthetic logs; `verify` re-checks a bundle;
//! `eval` prints a bundle's offline evaluation table; `demo` does synth + build in one go.

use funnel::layout;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use funnel::features::FeatureRegistry;
use index_builder::build::{run, BuildArgs, BuildOutcome};
use index_builder::config::BuildConfig;
use index_builder::eval::EvalReport;
use index_builder::split::Holdout;
use index_builder::synth::{self, SynthConfig};

#[derive(Parser)]
#[command(
    name = "index-builder",
    version,
    about = "Funnel's nightly job: interaction logs → a versioned artifact bundle"
)]
struct Cli {
    /// Hide progress bars and step timings.
    #[arg(long, global = true)]
    quiet: bool,
    /// Log line format on stderr: text, or json (one object a line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: funnel::cli::LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a bundle from interaction logs (+ item catalog) and publish it as DIR/CURRENT.
    Build {
        /// Interactions: Parquet, Arrow IPC, CSV, RecBole .inter, MovieLens u.data, or a directory of them.
        #[arg(long)]
        interactions: PathBuf,
        /// Item catalog: Parquet, Arrow IPC, CSV, RecBole .item, MovieLens u.item.
        #[arg(long)]
        items: Option<PathBuf>,
        /// Bundle root directory.
        #[arg(long)]
        out: PathBuf,
        /// Hold out data for evaluation: temporal:FRACTION (e.g. temporal:0.2) or last.
        #[arg(long)]
        holdout: Option<String>,
        /// Also push online features to this Redis (redis://host:port) or Redis Cluster
        /// (redis+cluster://host:port,host:port).
        #[arg(long)]
        redis: Option<String>,
        /// Build configuration (TOML); defaults apply to anything it leaves out.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The server's config (TOML) whose source quotas and merge the rankers are trained
        /// with (defaults: the server's built-in defaults).
        #[arg(long)]
        serving_config: Option<PathBuf>,
        /// Feature definitions directory (defaults to the ones compiled in from feature-defs/).
        #[arg(long)]
        feature_defs: Option<PathBuf>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Write deterministic synthetic interactions + catalog (Parquet) into DIR.
    Synth {
        #[arg(long)]
        users: usize,
        #[arg(long)]
        items: usize,
        #[arg(long)]
        interactions: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-check every checksum of a bundle (a root with CURRENT, or a version directory).
    Verify { dir: PathBuf },
    /// Print the offline evaluation table of a bundle built with --holdout, then evaluate the
    /// served funnel (the engine, in process) on the same holdout.
    Eval {
        #[arg(long)]
        bundle: PathBuf,
        /// Only print the build's offline table.
        #[arg(long)]
        offline_only: bool,
        /// At most this many holdout users for the served evaluation.
        #[arg(long, default_value_t = 5000)]
        max_users: usize,
        /// Server config to evaluate (defaults: the server's built-in defaults).
        #[arg(long)]
        serve_config: Option<PathBuf>,
        /// Also serve every pair of rankers as a fixed ensemble (mean, rank_avg, weighted): the
        /// most a two-member ensemble could add over its best member on this holdout.
        #[arg(long)]
        pairs: bool,
    },
    /// Synthesize a small dataset and build a demo bundle from it (with a holdout), in DIR.
    Demo {
        #[arg(long, default_value = "artifacts")]
        out: PathBuf,
        #[arg(long, default_value_t = 5_000)]
        users: usize,
        #[arg(long, default_value_t = 10_000)]
        items: usize,
        #[arg(long, default_value_t = 200_000)]
        interactions: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A push to Redis writes to a socket: a dropped connection must be an error, not a signal.
    let sigpipe = match &cli.cmd {
        Cmd::Build { redis: Some(_), .. } => funnel::cli::SigPipe::Ignore,
        _ => funnel::cli::SigPipe::Default,
    };
    funnel::cli::init(sigpipe, cli.log_format, false);
    funnel::cli::finish(dispatch(cli))
}

fn registry(dir: Option<&Path>) -> Result<FeatureRegistry> {
    Ok(FeatureRegistry::load_or_bundled(dir)?)
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Build {
            interactions,
            items,
            out,
            holdout,
            redis,
            config,
            serving_config,
            feature_defs,
            seed,
        } => {
            let holdout = holdout
                .map(|h| h.parse::<Holdout>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let mut config = match config {
                Some(p) => BuildConfig::load(&p).map_err(anyhow::Error::msg)?,
                None => BuildConfig::default(),
            };
            if let Some(p) = serving_config {
                config.serving = funnel::config::EngineConfig::load(&p)
                    .map_err(anyhow::Error::msg)?
                    .retrieval_plan();
            }
            let outcome = run(BuildArgs {
                interactions,
                items,
                out,
                holdout,
                redis,
                config,
                registry: registry(feature_defs.as_deref())?,
                quiet: cli.quiet,
                seed,
            })?;
            report(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Synth {
            users,
            items,
            interactions,
            seed,
            out,
        } => {
            if users == 0 || items == 0 || interactions == 0 {
                bail!("--users, --items and --interactions must all be > 0");
            }
            let t = std::time::Instant::now();
            let data = synth::generate(&SynthConfig::new(users, items, interactions, seed));
            let files =
                synth::write(&data, &out).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} interactions to {} and {} items to {} in {:.1}s",
                data.interactions.len(),
                files.interactions.display(),
                data.items.len(),
                files.items.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { dir } => {
            let rep = funnel::bundle::verify(&dir)?;
            if rep.ok() {
                println!(
                    "{}: version {} OK ({} files checked)",
                    rep.dir.display(),
                    rep.version,
                    rep.checked
                );
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &rep.problems {
                    eprintln!("{}: {p}", rep.dir.display());
                }
                eprintln!(
                    "{}: version {} FAILED verification ({} problems)",
                    rep.dir.display(),
                    rep.version,
                    rep.problems.len()
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Eval {
            bundle,
            offline_only,
            max_users,
            serve_config,
            pairs,
        } => {
            let dir = funnel::bundle::resolve_version_dir(&bundle)?;
            let path = dir.join(layout::EVAL);
            if !path.is_file() {
                bail!(
                    "{}: this bundle was built without --holdout, so it has no evaluation",
                    dir.display()
                );
            }
            let text =
                std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            let rep: EvalReport = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid evaluation file", path.display()))?;
            print!("{}", rep.table());
            if !offline_only && dir.join(layout::HOLDOUT).is_file() {
                let registry = FeatureRegistry::bundled()?;
                let cfg = match &serve_config {
                    Some(p) => funnel::config::EngineConfig::load(p).map_err(anyhow::Error::msg)?,
                    None => funnel::config::EngineConfig::default(),
                };
                let served =
                    index_builder::served::evaluate_served(&dir, &registry, cfg, max_users, pairs)
                        .map_err(anyhow::Error::msg)?;
                print!("\n{}", served.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            out,
            users,
            items,
            interactions,
        } => {
            let data_dir = out.join("demo-data");
            let data = synth::generate(&SynthConfig::new(users, items, interactions, 42));
            let files = synth::write(&data, &data_dir)?;
            drop(data);
            let outcome = run(BuildArgs {
                interactions: files.interactions,
                items: Some(files.items),
                out: out.join("bundle"),
                holdout: Some(Holdout::Temporal(0.2)),
                redis: None,
                config: BuildConfig::default(),
                registry: FeatureRegistry::bundled()?,
                quiet: cli.quiet,
                seed: 42,
            })?;
            report(&outcome);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report(o: &BuildOutcome) {
    println!();
    if let Some(e) = &o.eval {
        print!("{}", e.table());
        println!();
    }
    println!("Timing summary");
    for (name, secs) in &o.timings {
        println!("  {name:<48} {secs:>8.2}s");
    }
    println!("  {:<48} {:>8.2}s", "total", o.total_seconds);
    let counts: Vec<String> = o.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("\n{}", counts.join(" "));
    println!("published version {} at {}", o.version, o.dir.display());
}
