//! Where the build's source came from: git's commit and dirty state for
//! build.json, and the commit time as a reproducible `SOURCE_DATE_EPOCH`.

use std::path::Path;

use crate::process::Step;
use crate::records::buildinfo::SourceInfo;

/// git's view of the checkout; `None` fields when git or the repository is
/// not there (a source tarball builds too).
pub(super) fn git_source(root: &Path) -> SourceInfo {
    let git = |args: &[&str]| -> Option<String> {
        Step::new("asking git about the checkout", "git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output_text()
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|status| !status.is_empty());
    SourceInfo {
        git_commit: commit,
        git_dirty: dirty,
    }
}

/// The commit time of HEAD: a reproducible SOURCE_DATE_EPOCH.
pub(super) fn git_commit_time(root: &Path) -> Option<i64> {
    Step::new("asking git for the commit time", "git")
        .arg("-C")
        .arg(root)
        .args(["log", "-1", "--format=%ct"])
        .output_text()
        .ok()?
        .trim()
        .parse()
        .ok()
}
