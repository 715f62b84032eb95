//! Publishing a bundle version atomically: build in a temp dir, checksum, fsync, rename, swap
//! `CURRENT`, prune old versions. Nothing half-written ever becomes current.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::files::{fsync_path, sha256_file, write_atomic};
use super::manifest::{InputEntry, Manifest, FORMAT_VERSION};
use super::{BundleError, CURRENT, MANIFEST};

/// Writes one bundle version. Artifacts go under [`BundleWriter::dir`]; [`BundleWriter::publish`]
/// makes the version current. Dropped without publishing, the temp dir is removed.
pub struct BundleWriter {
    root: PathBuf,
    version: String,
    tmp: PathBuf,
    published: bool,
}

impl BundleWriter {
    /// Starts a version in `root` (created if missing). Leftover temp dirs of builds that died
    /// (their process is gone) are removed first.
    pub fn create(root: &Path, version: &str) -> Result<Self, BundleError> {
        std::fs::create_dir_all(root).map_err(|e| BundleError::io(root, e))?;
        if root.join(version).exists() {
            return Err(BundleError::format(
                root.join(version),
                "a bundle with this version already exists",
            ));
        }
        remove_dead_temp_dirs(root);
        let tmp = root.join(format!(".tmp-{version}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| BundleError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| BundleError::io(&tmp, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            version: version.to_string(),
            tmp,
            published: false,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The directory artifacts are written into (the temp dir until published).
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Path of an artifact, creating its parent directory.
    pub fn path(&self, rel: &str) -> Result<PathBuf, BundleError> {
        let p = self.tmp.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BundleError::io(parent, e))?;
        }
        Ok(p)
    }

    /// Checksums every artifact, writes the manifest, fsyncs, moves the version into place and
    /// switches `CURRENT` to it. Keeps the newest `keep` versions (at least 1).
    pub fn publish(
        mut self,
        inputs: Vec<InputEntry>,
        feature_defs_hash: String,
        info: BTreeMap<String, serde_json::Value>,
        keep: usize,
    ) -> Result<(PathBuf, Manifest), BundleError> {
        let mut files = BTreeMap::new();
        for rel in list_files(&self.tmp)? {
            let abs = self.tmp.join(&rel);
            let (sha256, size) = sha256_file(&abs)?;
            fsync_path(&abs)?;
            files.insert(rel, super::FileEntry { sha256, size });
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            version: self.version.clone(),
            created_at: chrono::Utc::now(),
            builder: format!("index-builder {}", env!("CARGO_PKG_VERSION")),
            inputs,
            files,
            feature_defs_hash,
            info,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BundleError::format(&self.tmp, format!("manifest: {e}")))?;
        write_atomic(&self.tmp.join(MANIFEST), &json)?;
        for dir in list_dirs(&self.tmp)? {
            fsync_path(&dir)?;
        }
        let final_dir = self.root.join(&self.version);
        std::fs::rename(&self.tmp, &final_dir).map_err(|e| BundleError::io(&final_dir, e))?;
        fsync_path(&self.root)?;
        write_atomic(
            &self.root.join(CURRENT),
            format!("{}\n", self.version).as_bytes(),
        )?;
        self.published = true;
        prune(&self.root, &self.version, keep.max(1));
        Ok((final_dir, manifest))
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// All regular files under `dir`, as '/'-separated relative paths, sorted.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<String>, BundleError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| BundleError::io(&d, e))? {
            let entry = entry.map_err(|e| BundleError::io(&d, e))?;
            let p = entry.path();
            let ft = entry.file_type().map_err(|e| BundleError::io(&p, e))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                if let Ok(rel) = p.strip_prefix(dir) {
                    let rel = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                    if rel != MANIFEST {
                        out.push(rel);
                    }
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn list_dirs(dir: &Path) -> Result<Vec<PathBuf>, BundleError> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let d = out[i].clone();
        for entry in std::fs::read_dir(&d).map_err(|e| BundleError::io(&d, e))? {
            let entry = entry.map_err(|e| BundleError::io(&d, e))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(entry.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Removes `.tmp-*-<pid>` dirs whose builder process no longer runs.
fn remove_dead_temp_dirs(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-") else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            tracing::info!(dir = %entry.path().display(), "removing temp dir of a build that did not finish");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Deletes the oldest published versions beyond `keep`, never the current one. Versions sort by
/// name, which starts with a UTC timestamp.
fn prune(root: &Path, current: &str, keep: usize) {
    let Ok(versions) = super::published_versions(root) else {
        return;
    };
    if versions.len() <= keep {
        return;
    }
    let excess = versions.len() - keep;
    for v in versions.into_iter().take(excess) {
        if v != current {
            tracing::info!(version = %v, "pruning old bundle version");
            let _ = std::fs::remove_dir_all(root.join(v));
        }
    }
}

/// A fresh, sortable version name: UTC timestamp plus a short random suffix.
pub fn new_version_name() -> String {
    let now = chrono::Utc::now();
    let suffix: u32 = rand::random();
    format!("{}-{:08x}", now.format("%Y%m%dT%H%M%S%.3fZ"), suffix).replace('.', "")
}
