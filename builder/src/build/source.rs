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

/// The build's SOURCE_DATE_EPOCH: `from_environment` (the
/// reproducible-builds convention: whoever builds from a source tarball
/// sets it), else the commit time of HEAD, so two builds of one commit
/// agree. A git checkout whose time git will not tell (a checkout owned by
/// another user, which git refuses) is an error rather than a build
/// quietly stamped with today; only a tree in no checkout falls back to
/// `now`.
pub(super) fn source_date_epoch(
    root: &Path,
    from_environment: Option<&str>,
    now: i64,
) -> Result<i64> {
    if let Some(text) = from_environment {
        return text.trim().parse().map_err(|_| {
            anyhow::anyhow!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds since 1970")
        });
    }
    let in_a_checkout = root.ancestors().any(|dir| dir.join(".git").exists());
    if !in_a_checkout {
        return Ok(now);
    }
    git_commit_time(root).ok_or_else(|| {
        anyhow::anyhow!(
            "git could not tell the commit time of {} (run `git -C {} log -1` to see why; \
             a checkout owned by another user needs `git config --global --add safe.directory`), \
             or set SOURCE_DATE_EPOCH",
            root.display(),
            root.display()
        )
    })
}

/// The commit time of HEAD.
fn git_commit_time(root: &Path) -> Option<i64> {
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

    #[test]
    fn source_date_epoch_comes_from_the_environment_then_git_then_the_clock() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        assert_eq!(
            source_date_epoch(root, Some("1700000000"), 5).unwrap(),
            1700000000
        );
        let err = source_date_epoch(root, Some("yesterday"), 5).unwrap_err();
        assert!(err.to_string().contains("SOURCE_DATE_EPOCH"), "{err}");
        // No checkout: the clock.
        assert_eq!(source_date_epoch(root, None, 5).unwrap(), 5);
        // A checkout git cannot read: an error, not the clock.
        fs::create_dir(root.join(".git")).unwrap();
        let err = source_date_epoch(root, None, 5).unwrap_err();
        assert!(
            err.to_string().contains("or set SOURCE_DATE_EPOCH"),
            "{err}"
        );
        // A real one: its commit time.
        fs::remove_dir(root.join(".git")).unwrap();
        let git = |args: &[&str]| {
            let status = std::process::Command::new("git")
                .arg("-C")
                .arg(root)
                .args(args)
                .env("GIT_COMMITTER_DATE", "1600000000 +0000")
                .env("GIT_AUTHOR_DATE", "1600000000 +0000")
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ]);
        assert_eq!(source_date_epoch(root, None, 5).unwrap(), 1600000000);
    }

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
