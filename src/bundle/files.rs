//! Small, careful filesystem helpers: checksums, fsync, atomic replace.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::BundleError;

/// sha256 (hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BundleError> {
    let mut f = File::open(path).map_err(|e| BundleError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| BundleError::io(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// fsync a file or directory so a rename that follows is durable.
pub fn fsync_path(path: &Path) -> Result<(), BundleError> {
    let f = File::open(path).map_err(|e| BundleError::io(path, e))?;
    f.sync_all().map_err(|e| BundleError::io(path, e))
}

/// Replaces `path` with `bytes` atomically: write a sibling temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(|e| BundleError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| BundleError::io(&tmp, e))?;
        f.sync_all().map_err(|e| BundleError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| BundleError::io(path, e))?;
    fsync_path(dir)
}
