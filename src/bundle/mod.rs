//! The versioned artifact bundle: what the nightly index-builder publishes and the server loads.
//!
//! Layout: `ROOT/<version>/` holds every artifact plus `manifest.json` (per-file sha256 and size,
//! input checksums, feature-defs hash, metrics); `ROOT/CURRENT` names the live version. A build
//! writes into `ROOT/.tmp-<version>-<pid>/`, fsyncs, renames the directory into place and only then
//! swaps `CURRENT` (write-temp, fsync, rename), so a failed or killed build never changes what the
//! server sees.

pub mod files;
pub mod load;
pub mod manifest;
pub mod publish;
pub mod verify;

use std::path::{Path, PathBuf};

pub use crate::table::DataError;
pub use load::Bundle;
pub use manifest::{FileEntry, InputEntry, Manifest};
pub use publish::BundleWriter;
pub use verify::{verify, VerifyReport};

/// Name of the pointer file in the bundle root.
pub const CURRENT: &str = "CURRENT";
/// Name of the manifest inside a version directory.
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file of the bundle could not be read or written, or is malformed.
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("bundle root {0} has no CURRENT version (no build has been published there)")]
    NoCurrent(PathBuf),
}

impl BundleError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::io(path, source).into()
    }

    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::format(path, message).into()
    }
}

/// The published versions under `root`, oldest first: directories holding a manifest, by name
/// (which starts with a UTC timestamp).
pub fn published_versions(root: &Path) -> Result<Vec<String>, BundleError> {
    let rd = std::fs::read_dir(root).map_err(|e| BundleError::io(root, e))?;
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join(MANIFEST).is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    Ok(out)
}

/// A name a version may have when a user gives it (a pin, an experiment arm): nothing that
/// could leave the bundle root.
pub fn is_version_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 200
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Resolves a path given by a user to a version directory: either a version directory itself
/// (it holds `manifest.json`) or a bundle root whose `CURRENT` names one.
pub fn resolve_version_dir(path: &Path) -> Result<PathBuf, BundleError> {
    if path.join(MANIFEST).is_file() {
        return Ok(path.to_path_buf());
    }
    let current = path.join(CURRENT);
    let name = match std::fs::read_to_string(&current) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::NoCurrent(path.to_path_buf()))
        }
        Err(e) => return Err(BundleError::io(current, e)),
    };
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(BundleError::format(
            current,
            format!("invalid version name {name:?}"),
        ));
    }
    let dir = path.join(&name);
    if !dir.join(MANIFEST).is_file() {
        return Err(BundleError::format(
            current,
            format!(
                "CURRENT names {name:?} but {} has no manifest",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}
