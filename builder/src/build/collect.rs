//! The collect phase: mkosi's outputs move from its output directory into
//! the staging directory under their build names (the plan's parts), with
//! the recipe's /usr statistics, kept there until inspect takes them.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::footprint;
use super::plan::BuildPlan;
use crate::process::Step;
use crate::records::buildinfo::{PackageInfo, ProgramBuild, UsrFootprint};

/// Moves mkosi's outputs into the staging directory under their build names.
pub(super) fn collect_outputs(plan: &BuildPlan, staging: &Path) -> Result<()> {
    let output_dir = plan.cache.mkosi_output();
    for part in plan.parts() {
        let source = output_dir.join(plan.mkosi_output_name(&part.mkosi_suffix));
        if !source.is_file() {
            bail!(
                "mkosi finished but did not write {}; the recipe must produce a disk image with split /usr, \
                 usr-verity and usr-verity-sig partitions, a UKI, a manifest, and (from mkosi.finalize) the root tree and one addon \
                 per platform",
                source.display()
            );
        }
        move_file(&source, &staging.join(&part.name))?;
    }
    // mkosi also leaves a convenience symlink without a suffix.
    let _ = fs::remove_file(output_dir.join(plan.mkosi_output_name("")));
    for report in USR_REPORTS {
        let written = output_dir.join(plan.mkosi_output_name(report));
        if written.is_file() {
            move_file(&written, &staging.join(report))?;
        }
    }
    Ok(())
}

/// What the recipe's scripts report about /usr besides the image's parts,
/// by suffix: /usr's size before compression (mkosi.finalize), and the
/// lists the footprint is made from. They are kept in the staging
/// directory under these names (hidden) until inspect takes them: they go
/// into build.json, not the build directory.
const USR_STATS: &str = ".usr-stats";
/// The packages the kernel was built from and with (mkosi.finalize copies
/// mkosi.build.chroot's list), as `name<TAB>version<TAB>architecture` lines.
const KERNEL_BUILD_PACKAGES: &str = ".kernel-build-packages";
/// dockerd's source package (architecture "source") and then the packages
/// it was built with (mkosi.finalize copies mkosi.build.chroot's list), in
/// the same form.
const DOCKERD_BUILD: &str = ".dockerd-build";
const USR_REPORTS: [&str; 5] = [
    USR_STATS,
    footprint::OWNERS_SUFFIX,
    footprint::FILES_SUFFIX,
    KERNEL_BUILD_PACKAGES,
    DOCKERD_BUILD,
];

/// Reads and removes one of the recipe's reports, if it wrote it.
fn take_report(staging: &Path, name: &str) -> Result<Option<String>> {
    let path = staging.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    fs::remove_file(&path)?;
    Ok(Some(text))
}

/// Reads and removes the /usr statistics, if the recipe wrote them.
pub(super) fn take_usr_stats(staging: &Path) -> Result<(Option<u64>, Option<u64>)> {
    let Some(text) = take_report(staging, USR_STATS)? else {
        return Ok((None, None));
    };
    let value = |key: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(key)?
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
    };
    Ok((value("content_bytes"), value("files")))
}

/// Reads and removes the list of the packages the kernel was built from and
/// with; empty if the recipe wrote none.
pub(super) fn take_kernel_build_packages(staging: &Path) -> Result<Vec<PackageInfo>> {
    match take_report(staging, KERNEL_BUILD_PACKAGES)? {
        Some(text) => package_lines(&text).context("the kernel's build packages list"),
        None => Ok(Vec::new()),
    }
}

/// Reads and removes what dockerd was built from and with, if the recipe
/// built it.
pub(super) fn take_dockerd_build(staging: &Path) -> Result<Option<ProgramBuild>> {
    let Some(text) = take_report(staging, DOCKERD_BUILD)? else {
        return Ok(None);
    };
    let mut packages = package_lines(&text).context("dockerd's build list")?;
    if packages
        .first()
        .is_none_or(|first| first.architecture != "source")
    {
        bail!("dockerd's build list does not start with its source package");
    }
    let source = packages.remove(0);
    Ok(Some(ProgramBuild {
        source,
        build_packages: packages,
    }))
}

/// `name<TAB>version<TAB>architecture` lines, blank ones skipped.
fn package_lines(text: &str) -> Result<Vec<PackageInfo>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match line.split('\t').collect::<Vec<_>>()[..] {
            [name, version, architecture] => Ok(PackageInfo {
                name: name.to_owned(),
                version: version.to_owned(),
                architecture: architecture.to_owned(),
            }),
            _ => bail!("malformed line {line:?}"),
        })
        .collect()
}

/// Reads and removes the footprint's lists and sums them up, if the recipe
/// wrote both.
pub(super) fn take_usr_footprint(staging: &Path) -> Result<Option<UsrFootprint>> {
    let owners = take_report(staging, footprint::OWNERS_SUFFIX)?;
    let files = take_report(staging, footprint::FILES_SUFFIX)?;
    match (owners, files) {
        (Some(owners), Some(files)) => footprint::footprint(&owners, &files)
            .context("reading the recipe's lists of /usr's files and packages")
            .map(Some),
        _ => Ok(None),
    }
}

/// Renames, or copies (keeping holes) when the cache is on another file
/// system than the build directory.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    const CROSS_DEVICE: i32 = 18; // EXDEV
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(CROSS_DEVICE) => {
            Step::new(format!("copying {}", from.display()), "cp")
                .args(["--sparse=always", "--"])
                .arg(from)
                .arg(to)
                .run()?;
            fs::remove_file(from).with_context(|| format!("removing {}", from.display()))
        }
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", from.display(), to.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usr_stats_are_read_and_removed() {
        let temp = tempfile::tempdir().unwrap();
        assert_eq!(take_usr_stats(temp.path()).unwrap(), (None, None));
        fs::write(
            temp.path().join(USR_STATS),
            "content_bytes=522000000\nfiles=20931\n",
        )
        .unwrap();
        assert_eq!(
            take_usr_stats(temp.path()).unwrap(),
            (Some(522_000_000), Some(20931))
        );
        assert!(!temp.path().join(USR_STATS).exists());
    }

    #[test]
    fn the_kernels_build_packages_are_read_and_a_malformed_line_refused() {
        let temp = tempfile::tempdir().unwrap();
        assert!(take_kernel_build_packages(temp.path()).unwrap().is_empty());
        let list = temp.path().join(KERNEL_BUILD_PACKAGES);
        fs::write(
            &list,
            "linux-source-6.12\t6.12.118-1\tall\ngcc-14\t14.2.0-19\tamd64\n",
        )
        .unwrap();
        let packages = take_kernel_build_packages(temp.path()).unwrap();
        assert_eq!(packages.len(), 2);
        assert_eq!(
            (packages[0].name.as_str(), packages[0].version.as_str()),
            ("linux-source-6.12", "6.12.118-1")
        );
        assert_eq!(packages[1].architecture, "amd64");
        assert!(!list.exists());
        fs::write(&list, "linux-source-6.12 6.12.118-1\n").unwrap();
        let error = take_kernel_build_packages(temp.path()).unwrap_err();
        assert!(format!("{error:#}").contains("malformed line"), "{error:#}");
    }

    #[test]
    fn dockerds_build_is_read_and_must_name_its_source_first() {
        let temp = tempfile::tempdir().unwrap();
        assert_eq!(take_dockerd_build(temp.path()).unwrap(), None);
        let list = temp.path().join(DOCKERD_BUILD);
        fs::write(
            &list,
            "docker.io\t26.1.5+dfsg1-9+deb13u1\tsource\ngolang-1.24-go\t1.24.4-1\tamd64\n",
        )
        .unwrap();
        let build = take_dockerd_build(temp.path()).unwrap().unwrap();
        assert_eq!(
            (build.source.name.as_str(), build.source.version.as_str()),
            ("docker.io", "26.1.5+dfsg1-9+deb13u1")
        );
        assert_eq!(build.build_packages.len(), 1);
        assert_eq!(build.build_packages[0].name, "golang-1.24-go");
        assert!(!list.exists());
        fs::write(&list, "golang-1.24-go\t1.24.4-1\tamd64\n").unwrap();
        let error = take_dockerd_build(temp.path()).unwrap_err();
        assert!(format!("{error:#}").contains("source package"), "{error:#}");
    }
}
