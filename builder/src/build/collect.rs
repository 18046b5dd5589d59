//! The collect phase: mkosi's outputs move from its output directory into
//! the staging directory under their build names (the plan's parts), with
//! the recipe's /usr statistics, kept there until inspect takes them.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::plan::BuildPlan;
use crate::process::Step;

/// Moves mkosi's outputs into the staging directory under their build names.
pub(super) fn collect_outputs(plan: &BuildPlan, staging: &Path) -> Result<()> {
    let output_dir = plan.cache.mkosi_output();
    for part in plan.parts() {
        let source = output_dir.join(plan.mkosi_output_name(&part.mkosi_suffix));
        if !source.is_file() {
            bail!(
                "mkosi finished but did not write {}; the recipe must produce a disk image with split /usr and \
                 usr-verity partitions, a UKI, a manifest, and (from mkosi.finalize) the root tree and one addon \
                 per platform",
                source.display()
            );
        }
        move_file(&source, &staging.join(&part.name))?;
    }
    // mkosi also leaves a convenience symlink without a suffix.
    let _ = fs::remove_file(output_dir.join(plan.mkosi_output_name("")));
    let stats = output_dir.join(plan.mkosi_output_name(USR_STATS_SUFFIX));
    if stats.is_file() {
        move_file(&stats, &staging.join(USR_STATS_FILE))?;
    }
    Ok(())
}

/// What the recipe's finalize script writes: /usr's size before compression.
const USR_STATS_SUFFIX: &str = ".usr-stats";
/// Its name while the build is assembled; it goes into build.json, not the
/// build directory.
const USR_STATS_FILE: &str = ".usr-stats";

/// Reads and removes the /usr statistics, if the recipe wrote them.
pub(super) fn take_usr_stats(staging: &Path) -> Result<(Option<u64>, Option<u64>)> {
    let path = staging.join(USR_STATS_FILE);
    if !path.exists() {
        return Ok((None, None));
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    fs::remove_file(&path)?;
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
            temp.path().join(USR_STATS_FILE),
            "content_bytes=522000000\nfiles=20931\n",
        )
        .unwrap();
        assert_eq!(
            take_usr_stats(temp.path()).unwrap(),
            (Some(522_000_000), Some(20931))
        );
        assert!(!temp.path().join(USR_STATS_FILE).exists());
    }
}
