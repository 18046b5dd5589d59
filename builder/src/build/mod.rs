//! `boxcar build`: from recipe to a checked build directory.
//!
//! The plan is worked out, and every input checked, before anything runs.
//! The build then composes into a staging directory next to the final one
//! and renames it into place only when everything, build.json included, is
//! written: a failed or interrupted build leaves no `build/<version>/`.
//!
//! [`run`] calls the phases in order, one file each: `compose` (mkosi),
//! `collect`, `inspect`, `package` (through [`convert`]), `digest`, `payload` (the
//! update nodes download), then `record` writes build.json. Around them: `plan` (what to build),
//! `requirements` (the programs it needs), `cachelock`, `staging`, `timing`,
//! `source` (git) and `umask` (the modes of what a build writes).

pub mod agent_tree;
mod cachelock;
mod collect;
pub mod comparison;
mod compose;
pub mod convert;
mod digest;
pub mod footprint;
mod initrd_package;
mod inspect;
mod mkosi;
mod package;
pub mod payload;
mod plan;
mod record;
mod requirements;
pub mod secure_boot;
mod source;
mod staging;
mod timing;
mod uki;
pub mod umask;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::hosttools::HostTools;
use crate::progress::Progress;
use crate::records::buildinfo::{BuildInfo, PhaseTiming};

use cachelock::CacheLock;
pub use plan::{BuildPlan, BuildRequest};
pub use requirements::requirements;
pub use secure_boot::requirements as secure_boot_requirements;
use staging::Staging;
use timing::{phase_timing, timed};

/// The build's log, inside the build directory.
pub const BUILD_LOG: &str = "build.log";

/// A finished build.
#[derive(Debug)]
pub struct BuildOutcome {
    pub dir: PathBuf,
    pub info: BuildInfo,
}

/// Runs the plan. On failure nothing is left at `final_dir`; the log is
/// kept next to it and named in the error.
pub fn run(plan: &BuildPlan, tools: &HostTools, progress: &Progress) -> Result<BuildOutcome> {
    let started = Instant::now();
    if let Some(key) = &plan.secure_boot {
        key.check(tools)?;
    }
    cachelock::create_cache_dirs(&plan.cache)?;
    let _lock = CacheLock::acquire(&plan.cache, progress)?;
    let (dir, info) = in_staging(plan, |staging, log| {
        let mut timings = Vec::new();
        let mut info = assemble(plan, tools, progress, staging, log, &mut timings)?;
        info.phases.push(phase_timing("total", started.elapsed()));
        record::write_build_json(staging, &info)?;
        Ok(info)
    })?;
    Ok(BuildOutcome { dir, info })
}

/// Runs `work` in a new staging directory with the build's log open, then
/// renames the directory into place. Any failure on the way, build.json's
/// and the rename's included, keeps the log at the plan's failed-log path:
/// README promises one for every failed build.
fn in_staging<T>(
    plan: &BuildPlan,
    work: impl FnOnce(&Path, &mut File) -> Result<T>,
) -> Result<(PathBuf, T)> {
    let mut staging = Staging::create(&plan.staging_dir)?;
    let log_path = staging.path.join(BUILD_LOG);
    let mut log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let result = work(&staging.path, &mut log);
    drop(log);
    let committed = result.and_then(|value| Ok((staging.commit(&plan.final_dir)?, value)));
    committed.map_err(|error| staging::keep_failed_log(plan, &log_path, error))
}

/// The phases of a build, in order, run inside the staging directory.
fn assemble(
    plan: &BuildPlan,
    tools: &HostTools,
    progress: &Progress,
    staging: &Path,
    log: &mut File,
    timings: &mut Vec<PhaseTiming>,
) -> Result<BuildInfo> {
    timed(progress, timings, "compose", |phase| {
        compose::compose(plan, tools, log, phase)?;
        Ok(((), String::new()))
    })?;
    timed(progress, timings, "collect", |_| {
        collect::collect_outputs(plan, staging)?;
        Ok(((), format!("moved into {}", plan.final_dir.display())))
    })?;
    let inspected = timed(progress, timings, "inspect", |_| {
        let inspected = inspect::inspect(plan, tools, staging)?;
        let summary = format!("/usr verity root hash {}", inspected.usr.root_hash);
        Ok((inspected, summary))
    })?;
    let secure_boot = match &plan.secure_boot {
        None => None,
        Some(key) => Some(timed(progress, timings, "secure boot", |_| {
            let info = sign_and_verify(plan, key, tools, staging, &inspected)?;
            let summary = format!("{} boot files signed and checked", info.signed.len());
            Ok((info, summary))
        })?),
    };
    let selected = plan.selected();
    let (packaged, platform_timings) = timed(progress, timings, "package", |_| {
        let result = package::package(plan, &inspected, staging, &selected, tools, progress)?;
        let summary = format!(
            "{} artifacts for {} platforms",
            result.0.len(),
            selected.len()
        );
        Ok((result, summary))
    })?;
    for timing in &platform_timings {
        timings.push(phase_timing(
            format!("package {}", timing.platform),
            timing.elapsed,
        ));
    }
    let digests = timed(progress, timings, "digest", |_| {
        let digests = digest::digest_build(plan, staging, &packaged, progress)?;
        let summary = digest::summary(&digests);
        Ok((digests, summary))
    })?;
    let update = timed(progress, timings, "update payload", |_| {
        let payload = payload::write_payload(
            staging,
            &plan.version,
            &inspected.table,
            &digests.0,
            &inspected.usr,
        )?;
        let summary = format!(
            "{} files, {} to download",
            payload.files.len(),
            crate::units::human_bytes(payload.download_size())
        );
        Ok((payload, summary))
    })?;
    let mut info = record::build_info(
        plan, tools, staging, inspected, &packaged, digests, update, timings,
    )?;
    info.secure_boot = secure_boot;
    Ok(info)
}

/// Signs the platform addons (mkosi signed the rest) and checks every boot
/// file against the certificate, before any artifact is packaged.
fn sign_and_verify(
    plan: &BuildPlan,
    key: &secure_boot::SigningKey,
    tools: &HostTools,
    staging: &Path,
    inspected: &inspect::Inspected,
) -> Result<crate::records::buildinfo::SecureBootInfo> {
    let addons: Vec<String> = plan
        .platform_table
        .platforms
        .iter()
        .map(|platform| convert::Parts::addon_name(&platform.id))
        .collect();
    for addon in &addons {
        key.sign(tools, &staging.join(addon), plan.source_date_epoch)?;
    }
    let mut signed = vec!["uki.efi".to_owned()];
    signed.extend(addons);
    let esp = inspected.table.require(crate::image::Role::Esp)?;
    let mut info = secure_boot::verify_build(tools, key, staging, &signed, esp.offset)?;
    let signature = inspected
        .usr_signature
        .as_ref()
        .context("the build signs /usr, but inspect found no signature")?;
    secure_boot::verify_usr_signature(tools, &info, staging, signature)?;
    info.signed.push(inspect::USR_SIGNATURE_FILE.to_owned());
    Ok(info)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;

    #[test]
    fn a_build_that_cannot_be_renamed_into_place_keeps_its_log() {
        let temp = tempfile::tempdir().unwrap();
        let plan = plan::tests::plan_in(temp.path());
        let error = in_staging(&plan, |_, log| {
            writeln!(log, "mkosi said this")?;
            // Another build of the same version finished first.
            fs::create_dir_all(plan.final_dir.join("other"))?;
            Ok(())
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("appeared while building"),
            "{error:#}"
        );
        let kept = fs::read_to_string(plan.failed_log_path()).unwrap();
        assert_eq!(kept, "mkosi said this\n");
        assert!(!plan.staging_dir.exists());
        assert!(plan.final_dir.join("other").exists(), "not replaced");
    }

    #[test]
    fn an_interrupted_build_is_not_renamed_into_place_and_keeps_its_log() {
        if !crate::isolated::in_own_process(
            module_path!(),
            "an_interrupted_build_is_not_renamed_into_place_and_keeps_its_log",
        ) {
            return;
        }
        let temp = tempfile::tempdir().unwrap();
        let plan = plan::tests::plan_in(temp.path());
        let error = in_staging(&plan, |_, log| {
            writeln!(log, "packaging")?;
            // Ctrl-C during the last steps, after every phase's check.
            crate::interrupt::request();
            Ok(())
        })
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("was interrupted"), "{message}");
        assert!(
            message.contains("not renaming the build into place"),
            "{message}"
        );
        assert!(!plan.final_dir.exists() && !plan.staging_dir.exists());
        let kept = fs::read_to_string(plan.failed_log_path()).unwrap();
        assert_eq!(kept, "packaging\n");
    }

    /// As when build.json cannot be written, the last step `run` gives
    /// `in_staging`.
    #[test]
    fn a_build_whose_record_cannot_be_written_keeps_its_log() {
        let temp = tempfile::tempdir().unwrap();
        let plan = plan::tests::plan_in(temp.path());
        let error = in_staging(&plan, |staging, log| {
            writeln!(log, "every phase passed")?;
            let record = staging.join(crate::records::buildinfo::BUILD_JSON);
            fs::create_dir(&record)?;
            fs::write(&record, "{}").context("writing build.json")
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("writing build.json"),
            "{error:#}"
        );
        let kept = fs::read_to_string(plan.failed_log_path()).unwrap();
        assert_eq!(kept, "every phase passed\n");
        assert!(!plan.staging_dir.exists() && !plan.final_dir.exists());
    }
}
