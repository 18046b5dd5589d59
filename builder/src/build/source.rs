//! Where the build's source came from: git's commit and dirty state and
//! digests of the recipe and overlay trees for build.json, and the commit
//! time as a reproducible `SOURCE_DATE_EPOCH`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use boxcar_signing::digest::Hasher;
use boxcar_signing::Sha256Digest;

use crate::process::Step;
use crate::project::Project;
use crate::records::buildinfo::SourceInfo;

/// The checkout as build.json records it: git's view (`None` fields when
/// git or the repository is not there: a source tarball builds too) and
/// the digests of the trees the image is made from.
pub(super) fn source_info(project: &Project) -> Result<SourceInfo> {
    let mut source = git_source(&project.root);
    source.recipe_sha256 = Some(tree_digest(&project.recipes_dir())?);
    let overlays = project.overlays_dir();
    if overlays.is_dir() {
        source.overlays_sha256 = Some(tree_digest(&overlays)?);
    }
    Ok(source)
}

/// One digest of a directory tree: every entry's relative path and kind,
/// an executable bit for files, a link's target, a file's contents, in
/// path order, so equal digests mean equal trees as a build reads them.
pub fn tree_digest(dir: &Path) -> Result<Sha256Digest> {
    let mut hasher = Hasher::new();
    digest_dir(dir, "", &mut hasher)?;
    Ok(hasher.finish().0)
}

fn digest_dir(dir: &Path, relative: &str, hasher: &mut Hasher) -> Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = format!("{relative}/{}", entry.file_name().to_string_lossy());
        let path = entry.path();
        let metadata =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let kind = metadata.file_type();
        if kind.is_symlink() {
            let target =
                fs::read_link(&path).with_context(|| format!("reading {}", path.display()))?;
            hasher.update(format!("link {name} -> {}\0", target.display()).as_bytes());
        } else if kind.is_dir() {
            hasher.update(format!("dir {name}\0").as_bytes());
            digest_dir(&path, &name, hasher)?;
        } else {
            let executable = metadata.permissions().mode() & 0o111 != 0;
            let contents = boxcar_signing::sha256_file(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .0;
            hasher.update(format!("file {name} {executable} {contents}\0").as_bytes());
        }
    }
    Ok(())
}

/// git's view of the checkout.
fn git_source(root: &Path) -> SourceInfo {
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
        recipe_sha256: None,
        overlays_sha256: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("mkosi.conf.d")).unwrap();
        fs::write(dir.path().join("mkosi.conf"), "[Output]\n").unwrap();
        fs::write(dir.path().join("mkosi.conf.d/10-base.conf"), "x\n").unwrap();
        fs::write(dir.path().join("mkosi.postinst"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("mkosi.conf", dir.path().join("link")).unwrap();
        dir
    }

    #[test]
    fn equal_trees_have_equal_digests_and_any_change_shows() {
        let (a, b) = (tree(), tree());
        let digest = tree_digest(a.path()).unwrap();
        assert_eq!(digest, tree_digest(b.path()).unwrap());
        let changes: [&dyn Fn(&Path); 4] = [
            &|p| fs::write(p.join("mkosi.conf.d/10-base.conf"), "y\n").unwrap(),
            &|p| {
                let script = p.join("mkosi.postinst");
                fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap()
            },
            &|p| {
                fs::remove_file(p.join("link")).unwrap();
                std::os::unix::fs::symlink("mkosi.postinst", p.join("link")).unwrap()
            },
            &|p| fs::write(p.join("mkosi.conf.d/20-more.conf"), "").unwrap(),
        ];
        for change in changes {
            let changed = tree();
            change(changed.path());
            assert_ne!(tree_digest(changed.path()).unwrap(), digest);
        }
    }
}
