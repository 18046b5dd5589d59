//! The staging directory a build is assembled in, next to the final one:
//! renamed into place whole when the build succeeds, removed when it fails,
//! with the failed build's log kept beside it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::plan::BuildPlan;
use crate::platform::IMAGE_ID;

/// The staging directory: removed on drop unless committed.
pub(super) struct Staging {
    pub(super) path: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates it, and the output directory it sits in; one left by a build
    /// that was killed outright is removed first.
    pub(super) fn create(path: &Path) -> Result<Self> {
        let out_dir = path.parent().expect("the staging directory has a parent");
        fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
        if path.exists() {
            // Left by a build that was killed outright.
            fs::remove_dir_all(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            committed: false,
        })
    }

    /// Renames the staging directory to `target`: the build appears whole.
    /// On failure the staging directory is still there (and goes when this
    /// is dropped), so the caller can keep its log first.
    pub(super) fn commit(&mut self, target: &Path) -> Result<PathBuf> {
        // The last moment to honour Ctrl-C: once renamed, the build exists.
        crate::interrupt::check().context("not renaming the build into place")?;
        if target.exists() {
            bail!(
                "{} appeared while building; not replacing it",
                target.display()
            );
        }
        fs::rename(&self.path, target)
            .with_context(|| format!("renaming {} to {}", self.path.display(), target.display()))?;
        self.committed = true;
        Ok(target.to_owned())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Keeps a failed build's log at the plan's failed-log path (the staging
/// directory goes) and adds to the error what failed and where the log is.
pub(super) fn keep_failed_log(plan: &BuildPlan, log: &Path, error: anyhow::Error) -> anyhow::Error {
    let kept = plan.failed_log_path();
    let _ = fs::rename(log, &kept);
    let what = if crate::interrupt::requested() {
        "was interrupted"
    } else {
        "failed"
    };
    error.context(format!(
        "building {IMAGE_ID} {} {what}; the full log is {}",
        plan.version,
        kept.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_removed_unless_committed() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join(".1.partial");
        {
            let staging = Staging::create(&path).unwrap();
            fs::write(staging.path.join("disk.raw"), b"half").unwrap();
        }
        assert!(!path.exists());
        let mut staging = Staging::create(&path).unwrap();
        let target = temp.path().join("1");
        staging.commit(&target).unwrap();
        drop(staging);
        assert!(target.is_dir() && !path.exists());
    }
}
