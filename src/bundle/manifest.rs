//! `manifest.json`: what a bundle version contains and how to check it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BundleError;

/// Bumped when the bundle layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
}

/// An input the bundle was built from, with its checksum so a build is traceable to its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEntry {
    pub role: String,
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub version: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The `index-builder` version that wrote the bundle.
    pub builder: String,
    pub inputs: Vec<InputEntry>,
    /// Every artifact file, by path relative to the version directory.
    pub files: BTreeMap<String, FileEntry>,
    pub feature_defs_hash: String,
    /// Free-form build facts (counts, config, timings, metrics); readers pick what they know.
    #[serde(default)]
    pub info: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, BundleError> {
        let bytes = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| BundleError::format(path, format!("invalid manifest: {e}")))?;
        if m.format_version != FORMAT_VERSION {
            return Err(BundleError::format(
                path,
                format!(
                    "bundle format {} is not supported (this build reads format {FORMAT_VERSION})",
                    m.format_version
                ),
            ));
        }
        Ok(m)
    }
}
