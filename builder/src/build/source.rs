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
/// a directory's or file's permission bits, a link's target, a file's
/// contents, in path order, so equal digests mean equal trees as a build
/// reads them. All the permission bits, not only the executable one: mkosi
/// and the initrd package copy a recipe file's mode into the image, so a
/// checkout made under umask 002 builds another /usr than one under 022.
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
        let mode = metadata.permissions().mode() & 0o7777;
        if kind.is_symlink() {
            let target =
                fs::read_link(&path).with_context(|| format!("reading {}", path.display()))?;
            hasher.update(format!("link {name} -> {}\0", target.display()).as_bytes());
        } else if kind.is_dir() {
            hasher.update(format!("dir {name} {mode:o}\0").as_bytes());
            digest_dir(&path, &name, hasher)?;
        } else {
            let contents = boxcar_signing::sha256_file(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .0;
            hasher.update(format!("file {name} {mode:o} {contents}\0").as_bytes());
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

    /// A tree with the modes a checkout under umask 022 has, set here so
    /// the test does not depend on the umask it runs under.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path, mode: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap()
        };
        fs::create_dir(dir.path().join("mkosi.conf.d")).unwrap();
        mode(&dir.path().join("mkosi.conf.d"), 0o755);
        for (file, text) in [
            ("mkosi.conf", "[Output]\n"),
            ("mkosi.conf.d/10-base.conf", "x\n"),
            ("mkosi.postinst", "#!/bin/sh\n"),
        ] {
            fs::write(dir.path().join(file), text).unwrap();
            mode(&dir.path().join(file), 0o644);
        }
        std::os::unix::fs::symlink("mkosi.conf", dir.path().join("link")).unwrap();
        dir
    }

    #[test]
    fn equal_trees_have_equal_digests_and_any_change_shows() {
        let (a, b) = (tree(), tree());
        let digest = tree_digest(a.path()).unwrap();
        assert_eq!(digest, tree_digest(b.path()).unwrap());
        let mode = |path: &Path, mode: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap()
        };
        let changes: [&dyn Fn(&Path); 6] = [
            &|p| fs::write(p.join("mkosi.conf.d/10-base.conf"), "y\n").unwrap(),
            &|p| mode(&p.join("mkosi.postinst"), 0o755),
            // What a checkout under umask 002 has: the image gets it too.
            &|p| mode(&p.join("mkosi.conf"), 0o664),
            &|p| mode(&p.join("mkosi.conf.d"), 0o775),
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
