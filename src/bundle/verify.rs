//! Re-checking a published bundle against its manifest (`index-builder verify`, and the server
//! before it loads a version).

use std::path::{Path, PathBuf};

use super::files::sha256_file;
use super::manifest::Manifest;
use super::publish::list_files;
use super::{resolve_version_dir, BundleError, MANIFEST};

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub version: String,
    pub checked: usize,
    /// Human-readable problems; empty means the bundle is intact.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies every file's size and sha256, and that no unlisted file was added.
pub fn verify(path: &Path) -> Result<VerifyReport, BundleError> {
    let dir = resolve_version_dir(path)?;
    let manifest = Manifest::read(&dir.join(MANIFEST))?;
    let mut problems = Vec::new();
    let mut checked = 0;
    for (rel, entry) in &manifest.files {
        let abs = dir.join(rel);
        match sha256_file(&abs) {
            Ok((sha, size)) => {
                checked += 1;
                if size != entry.size {
                    problems.push(format!("{rel}: size {size}, manifest says {}", entry.size));
                } else if sha != entry.sha256 {
                    problems.push(format!(
                        "{rel}: sha256 {sha}, manifest says {}",
                        entry.sha256
                    ));
                }
            }
            Err(e) => problems.push(format!("{rel}: {e}")),
        }
    }
    for rel in list_files(&dir)? {
        if !manifest.files.contains_key(&rel) {
            problems.push(format!("{rel}: not listed in the manifest"));
        }
    }
    Ok(VerifyReport {
        dir,
        version: manifest.version,
        checked,
        problems,
    })
}
