//! The cache a build works in: its directories made, and an exclusive lock
//! held for the whole build, since builds share mkosi's caches and output
//! directory.

use std::fs::{self, File};

use anyhow::{Context, Result};

use crate::progress::Progress;
use crate::project::Cache;

/// Makes the cache directories mkosi is pointed at.
pub(super) fn create_cache_dirs(cache: &Cache) -> Result<()> {
    for dir in [
        cache.mkosi_output(),
        cache.mkosi_cache(),
        cache.packages(),
        cache.build_dir(),
        cache.workspace(),
    ] {
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating cache directory {}", dir.display()))?;
    }
    Ok(())
}

/// An exclusive lock on the cache for the duration of a build.
pub(super) struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Takes the lock, waiting (and saying so) while another build holds it.
    pub(super) fn acquire(cache: &Cache, progress: &Progress) -> Result<Self> {
        let path = cache.lock_file();
        let file = File::create(&path)
            .with_context(|| format!("creating lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                progress.note(&format!(
                    "another build is using {}; waiting for it to finish",
                    cache.root.display()
                ));
                file.lock()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(Self { _file: file })
    }
}
