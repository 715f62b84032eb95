//! Bundle versions at run time: which [`Engine`] serves (behind an atomic pointer, so a swap
//! never blocks a request and a request in flight finishes on the version it started with), hot
//! reload from the bundle root's `CURRENT`, and the versions kept loaded for rollback and pins.
//!
//! A new version is verified (checksums, feature definitions), loaded and warmed off the request
//! path; only a version that loads whole — every component, every ranker warmed — is swapped in.
//! A refused version leaves the served one in place, and says why in `/readyz` and the metrics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{Engine, EngineError};
use crate::bundle::{is_version_name, published_versions, Bundle, BundleError, CURRENT, MANIFEST};
use crate::config::EngineConfig;
use crate::features::FeatureRegistry;

/// Why a version change was not made.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The server was started on a version directory or an in-process engine: there is no
    /// bundle root to follow.
    #[error("this server serves a fixed bundle version (started on a version directory, not a bundle root with CURRENT)")]
    Fixed,
    #[error("no published version {0:?} in the bundle root")]
    NotFound(String),
    #[error("no published version before {0:?} to roll back to")]
    NoPrevious(String),
    /// The version failed verification, loading or warm-up; the served one stays.
    #[error("version {version:?} refused: {reason}")]
    Refused { version: String, reason: String },
}

/// What an asked-for change did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SwitchOutcome {
    /// `swapped` (now serving `version`) or `unchanged` (it already served it).
    #[schema(value_type = String, pattern = "^(swapped|unchanged)$")]
    pub result: &'static str,
    pub version: String,
    /// The version served before.
    pub previous: String,
    /// Time to verify, load and warm the version (0 when it was already loaded).
    pub load_ms: f64,
    /// The version is pinned: the server no longer follows `CURRENT` until a reload.
    pub pinned: bool,
}

/// The last version change asked for, for `/readyz` and `GET /admin/versions`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ChangeRecord {
    /// reload, rollback, pin or watch (the poller saw `CURRENT` change).
    pub action: &'static str,
    pub version: String,
    /// swapped, unchanged or refused.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When, RFC 3339 (UTC).
    pub at: String,
    pub load_ms: f64,
}

/// Versions at run time, for `/readyz` and `GET /admin/versions`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct VersionsState {
    pub serving: String,
    /// The served version is pinned (rollback or pin): `CURRENT` is not followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    /// Versions in memory, most recently served last.
    pub loaded: Vec<String>,
    /// The bundle root follows `CURRENT` (false: started on a fixed version).
    pub follows_current: bool,
    pub swaps: u64,
    pub refused: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_change: Option<ChangeRecord>,
}

/// One published version of the bundle root, for `GET /admin/versions` and `funnel versions`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PublishedVersion {
    pub version: String,
    pub created_at: String,
    /// `CURRENT` names it.
    pub current: bool,
    /// The build's evaluation figures from the manifest (`eval`), when it made any.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
}

struct State {
    /// Loaded versions, most recently served last; the served one is always here.
    loaded: Vec<Arc<Engine>>,
    pinned: Option<String>,
    /// `CURRENT`'s content the poller last acted on.
    seen_current: Option<String>,
    /// Versions experiment arms serve: loaded at start and never evicted.
    held: Vec<String>,
    swaps: u64,
    refused: u64,
    last: Option<ChangeRecord>,
}

/// The served engine and the versions beside it. One per server.
pub struct Deployment {
    /// The bundle root with `CURRENT`; None for a fixed version.
    root: Option<PathBuf>,
    /// The feature definitions new versions are opened with (None: fixed version).
    registry: Option<FeatureRegistry>,
    cfg: EngineConfig,
    current: ArcSwap<Engine>,
    state: Mutex<State>,
    /// One version change at a time (a second waits, then usually finds nothing to do).
    changing: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy)]
enum Action {
    Reload,
    Watch,
    Rollback,
    Pin,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Reload => "reload",
            Action::Watch => "watch",
            Action::Rollback => "rollback",
            Action::Pin => "pin",
        }
    }
}

/// The version in `dir`, checked: checksums (when `verify`), feature definitions, the
/// manifest's version against the directory's name, and every component loaded.
fn open_checked(dir: &Path, registry: &FeatureRegistry, verify: bool) -> Result<Bundle, String> {
    if verify {
        let report = crate::bundle::verify(dir).map_err(|e| e.to_string())?;
        if !report.ok() {
            return Err(format!(
                "checksums do not match the manifest: {}",
                report.problems.join("; ")
            ));
        }
    }
    let bundle = Bundle::open(dir, registry).map_err(|e| e.to_string())?;
    if Some(bundle.manifest.version.as_str()) != dir.file_name().and_then(|n| n.to_str()) {
        return Err(format!(
            "the manifest names version {:?}, not its directory's name",
            bundle.manifest.version
        ));
    }
    if bundle.manifest.feature_defs_hash != registry.hash() {
        return Err(format!(
            "built with other feature definitions (hash {}, the server's {})",
            bundle.manifest.feature_defs_hash,
            registry.hash()
        ));
    }
    if let Some((c, e)) = bundle.problems.first() {
        return Err(format!("component {c} did not load: {e}"));
    }
    Ok(bundle)
}

/// Nice +10 for the calling thread only (Linux keeps a nice value per thread); best effort.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority on the calling thread; no memory is touched.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0 {
            tracing::debug!("could not lower the bundle loader's priority");
        }
    }
}

/// The published versions with what their manifests say (`funnel versions`, `GET /admin/versions`).
pub fn describe_versions(root: &Path) -> Result<Vec<PublishedVersion>, BundleError> {
    let current = read_current(root);
    let mut out = Vec::new();
    for v in published_versions(root)? {
        let m = crate::bundle::Manifest::read(&root.join(&v).join(MANIFEST))?;
        out.push(PublishedVersion {
            current: current.as_deref() == Some(v.as_str()),
            created_at: m.created_at.to_rfc3339(),
            metrics: m
                .info
                .get("eval")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            version: v,
        });
    }
    Ok(out)
}

/// The version `CURRENT` names (trimmed), if it can be read.
fn read_current(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join(CURRENT))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl Deployment {
    /// Serves `engine`. With `root` (a bundle root whose `CURRENT` named the engine's version)
    /// the server can follow `CURRENT`, roll back and pin; without, the version is fixed.
    pub fn new(
        engine: Arc<Engine>,
        root: Option<PathBuf>,
        registry: Option<FeatureRegistry>,
        cfg: EngineConfig,
    ) -> Arc<Self> {
        let root = root
            .filter(|r| r.join(CURRENT).is_file())
            .filter(|_| registry.is_some());
        let seen_current = root.as_deref().and_then(read_current);
        Arc::new(Deployment {
            root,
            registry,
            cfg,
            current: ArcSwap::new(engine.clone()),
            state: Mutex::new(State {
                loaded: vec![engine],
                pinned: None,
                seen_current,
                held: Vec::new(),
                swaps: 0,
                refused: 0,
                last: None,
            }),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    /// A fixed version (tests, embedding): no root to follow.
    pub fn fixed(engine: Arc<Engine>) -> Arc<Self> {
        let cfg = engine.config().clone();
        Self::new(engine, None, None, cfg)
    }

    /// The engine serving now. A request holds it to the end, whatever swaps meanwhile.
    pub fn current(&self) -> Arc<Engine> {
        self.current.load_full()
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The loaded engine of `version`, if it is loaded.
    pub fn loaded(&self, version: &str) -> Option<Arc<Engine>> {
        self.lock()
            .loaded
            .iter()
            .find(|e| e.bundle().manifest.version == version)
            .cloned()
    }

    /// Loads `versions` (those experiment arms serve) beside the served one and keeps them
    /// loaded for the server's life. A version that cannot be loaded is an error: an arm must
    /// not silently serve another version.
    pub async fn hold(&self, versions: &[String]) -> Result<(), DeployError> {
        if versions.is_empty() {
            return Ok(());
        }
        let root = self.root.clone().ok_or(DeployError::Fixed)?;
        let _one = self.changing.lock().await;
        for v in versions {
            if self.loaded(v).is_none() {
                if !is_version_name(v) || !root.join(v).join(MANIFEST).is_file() {
                    return Err(DeployError::NotFound(v.clone()));
                }
                let old = self.current();
                let engine =
                    self.load(&root, v, &old)
                        .await
                        .map_err(|reason| DeployError::Refused {
                            version: v.clone(),
                            reason,
                        })?;
                let mut s = self.lock();
                // Before the served one: the served version stays last.
                s.loaded.insert(0, engine);
            }
            let mut s = self.lock();
            if !s.held.contains(v) {
                s.held.push(v.clone());
            }
        }
        let n = self.lock().loaded.len();
        self.current().metrics().versions_loaded(n);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> VersionsState {
        let s = self.lock();
        VersionsState {
            serving: self.current().bundle().manifest.version.clone(),
            pinned: s.pinned.clone(),
            loaded: s
                .loaded
                .iter()
                .map(|e| e.bundle().manifest.version.clone())
                .collect(),
            follows_current: self.root.is_some() && s.pinned.is_none(),
            swaps: s.swaps,
            refused: s.refused,
            last_change: s.last.clone(),
        }
    }

    /// Follows `CURRENT` (`POST /admin/reload`); clears a pin.
    pub async fn reload(&self) -> Result<SwitchOutcome, DeployError> {
        let root = self.root.clone().ok_or(DeployError::Fixed)?;
        let _one = self.changing.lock().await;
        let version =
            read_current(&root).ok_or_else(|| DeployError::NotFound(CURRENT.to_string()))?;
        self.lock().seen_current = Some(version.clone());
        self.switch(Action::Reload, &root, version, false).await
    }

    /// The poller's step: reloads when `CURRENT` changed since it last looked and nothing is
    /// pinned. A refused version is not retried until `CURRENT` changes again.
    pub async fn poll(&self) -> Option<Result<SwitchOutcome, DeployError>> {
        let root = self.root.clone()?;
        let now = read_current(&root)?;
        {
            let s = self.lock();
            if s.pinned.is_some() || s.seen_current.as_deref() == Some(now.as_str()) {
                return None;
            }
        }
        let _one = self.changing.lock().await;
        {
            let mut s = self.lock();
            if s.pinned.is_some() || s.seen_current.as_deref() == Some(now.as_str()) {
                return None;
            }
            s.seen_current = Some(now.clone());
        }
        Some(self.switch(Action::Watch, &root, now, false).await)
    }

    /// Serves the published version before the served one and pins it (`POST /admin/rollback`).
    pub async fn rollback(&self) -> Result<SwitchOutcome, DeployError> {
        let root = self.root.clone().ok_or(DeployError::Fixed)?;
        let _one = self.changing.lock().await;
        let serving = self.current().bundle().manifest.version.clone();
        let versions = published_versions(&root).map_err(|e| DeployError::Refused {
            version: serving.clone(),
            reason: e.to_string(),
        })?;
        let previous = versions
            .iter()
            .rev()
            .find(|v| v.as_str() < serving.as_str())
            .cloned()
            .ok_or_else(|| DeployError::NoPrevious(serving.clone()))?;
        self.switch(Action::Rollback, &root, previous, true).await
    }

    /// Serves `version` and pins it (`POST /admin/pin`).
    pub async fn pin(&self, version: &str) -> Result<SwitchOutcome, DeployError> {
        let root = self.root.clone().ok_or(DeployError::Fixed)?;
        if !is_version_name(version) || !root.join(version).join(MANIFEST).is_file() {
            return Err(DeployError::NotFound(version.to_string()));
        }
        let _one = self.changing.lock().await;
        self.switch(Action::Pin, &root, version.to_string(), true)
            .await
    }

    /// Makes `version` the served one (loading it unless it is loaded), under `changing`.
    async fn switch(
        &self,
        action: Action,
        root: &Path,
        version: String,
        pin: bool,
    ) -> Result<SwitchOutcome, DeployError> {
        let old = self.current();
        let previous = old.bundle().manifest.version.clone();
        let t = Instant::now();
        let result = match self.loaded(&version) {
            Some(e) => Ok(e),
            None => self.load(root, &version, &old).await,
        };
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let metrics = old.metrics_shared();
        let engine = match result {
            Ok(e) => e,
            Err(reason) => {
                tracing::error!(action = action.name(), version, %reason, "bundle version refused; the served version stays");
                let mut s = self.lock();
                s.refused += 1;
                s.last = Some(ChangeRecord {
                    action: action.name(),
                    version: version.clone(),
                    result: "refused",
                    error: Some(super::without_paths(&reason)),
                    at: chrono::Utc::now().to_rfc3339(),
                    load_ms,
                });
                metrics.observe_reload("refused", s.loaded.len());
                return Err(DeployError::Refused { version, reason });
            }
        };
        let unchanged = Arc::ptr_eq(&engine, &old);
        if !unchanged {
            let warmed = engine.warm_items_from(&old, Duration::from_secs(5)).await;
            tracing::debug!(items = warmed, "item-feature cache warmed before the swap");
            // The live trending blend before the first request sees the version.
            if let Err(e) = engine.refresh_trending().await {
                tracing::debug!(error = %e, "live trending not blended before the swap");
            }
            self.current.store(engine.clone());
            metrics.set_bundle_version(&version);
        }
        let mut s = self.lock();
        s.pinned = pin.then(|| version.clone());
        s.loaded.retain(|e| !Arc::ptr_eq(e, &engine));
        s.loaded.push(engine);
        let keep = self.cfg.versions.keep_loaded.max(1);
        while s.loaded.len() > keep {
            // The oldest first; the served one is last, never dropped, and neither are the
            // versions experiment arms hold. An engine's memory goes when the last request
            // holding it ends.
            let held = &s.held;
            let Some(at) = s.loaded[..s.loaded.len() - 1]
                .iter()
                .position(|e| !held.contains(&e.bundle().manifest.version))
            else {
                break;
            };
            s.loaded.remove(at);
        }
        let result = if unchanged { "unchanged" } else { "swapped" };
        if !unchanged {
            s.swaps += 1;
            tracing::warn!(action = action.name(), from = %previous, to = %version, load_ms, "bundle version swapped");
        }
        s.last = Some(ChangeRecord {
            action: action.name(),
            version: version.clone(),
            result,
            error: None,
            at: chrono::Utc::now().to_rfc3339(),
            load_ms,
        });
        metrics.observe_reload(result, s.loaded.len());
        Ok(SwitchOutcome {
            result,
            version,
            previous,
            load_ms,
            pinned: pin,
        })
    }

    /// Verifies, loads and warms `version` off the reactor; any missing piece refuses it.
    async fn load(
        &self,
        root: &Path,
        version: &str,
        old: &Arc<Engine>,
    ) -> Result<Arc<Engine>, String> {
        let dir = root.join(version);
        let registry = self.registry.clone().ok_or("no feature definitions")?;
        let cfg = self.cfg.clone();
        let verify = self.cfg.versions.verify_checksums;
        let shared = old.shared().clone();
        // Reading, hashing and decoding the files runs on a thread of its own at a lower CPU
        // priority: on a busy server it takes the cycles the requests leave over, so the
        // served version's latency barely moves while the next one loads. It creates no thread
        // pool (those would inherit its priority for good).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("funnel-bundle-load".into())
            .spawn(move || {
                lower_priority();
                let _ = tx.send(open_checked(&dir, &registry, verify));
            })
            .map_err(|e| format!("starting the loader thread: {e}"))?;
        let bundle = rx
            .await
            .map_err(|_| "the loader thread ended without a result (panicked)".to_string())??;
        // Building the serving form (the sources' pool, the rankers' warm-up, which measures
        // their cost) at normal priority.
        let task = tokio::task::spawn_blocking(move || -> Result<Arc<Engine>, String> {
            let engine = Engine::with_shared(bundle, cfg, shared).map_err(|e| match e {
                EngineError::Config(m) => m,
                other => other.to_string(),
            })?;
            let rank = engine.pipeline().rank.registry();
            if let Some(e) = rank.entries().iter().find(|e| e.warmup_error.is_some()) {
                return Err(format!(
                    "ranker {} failed its warm-up: {}",
                    e.id(),
                    e.warmup_error.as_deref().unwrap_or_default()
                ));
            }
            if rank.preferred().is_none() {
                return Err("no ranker loaded".into());
            }
            Ok(engine)
        });
        task.await.map_err(|e| format!("loading panicked: {e}"))?
    }

    /// Polls `CURRENT` every `versions.poll_ms` and refreshes the served version's live
    /// trending blend; stops when the deployment is dropped.
    pub fn spawn_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let trending = Duration::from_millis(self.cfg.events.trending_refresh_ms.max(1));
        let mut tasks = vec![self.every(trending, |d| async move {
            d.current().trending_tick().await;
        })];
        if self.root.is_some() && self.cfg.versions.poll_ms > 0 {
            let poll = Duration::from_millis(self.cfg.versions.poll_ms);
            // Outcomes are logged and recorded by `switch`.
            tasks.push(self.every(poll, |d| async move {
                let _ = d.poll().await;
            }));
        }
        tasks
    }

    /// Runs `step` every `period` (late ticks delayed, not bunched) until the deployment is
    /// dropped.
    fn every<F, Fut>(self: &Arc<Self>, period: Duration, step: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(d) = weak.upgrade() else { break };
                step(d).await;
            }
        })
    }
}
