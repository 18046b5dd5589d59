//! The digest phase: the sha256 and size of every part and artifact of the
//! build, hashed in parallel, for build.json.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use boxcar_signing::{sha256_file, Sha256Digest};

use super::convert::Packaged;
use super::plan::BuildPlan;
use crate::platform::PlatformId;
use crate::progress::Progress;
use crate::records::buildinfo::{FileInfo, FileKind};
use crate::units::human_bytes;

/// The parts' records and the artifacts' (digest, size), in the order
/// the plan and packaging list them.
pub(super) type Digests = (Vec<FileInfo>, Vec<(Sha256Digest, u64)>);

/// Hashes the plan's parts and the packaged artifacts in `staging`.
pub(super) fn digest_build(
    plan: &BuildPlan,
    staging: &Path,
    packaged: &[Packaged],
    progress: &Progress,
) -> Result<Digests> {
    let part_names: Vec<(String, FileKind, Option<PlatformId>)> = plan
        .parts()
        .into_iter()
        .map(|p| (p.name, p.kind, p.platform))
        .collect();
    let artifact_names: Vec<String> = packaged.iter().map(|a| a.file.clone()).collect();
    digest_outputs(staging, &part_names, &artifact_names, progress)
}

/// The phase's summary: how many files were hashed, and how many bytes.
pub(super) fn summary((files, artifacts): &Digests) -> String {
    let total: u64 = files
        .iter()
        .map(|f| f.size)
        .chain(artifacts.iter().map(|a| a.1))
        .sum();
    format!(
        "sha256 of {} files, {}",
        files.len() + artifacts.len(),
        human_bytes(total)
    )
}

/// Hashes every part and artifact. The work is spread over as many threads
/// as there are CPUs, largest files first, so a disk image does not wait
/// behind small files. Returns the parts' records and the artifacts'
/// (digest, size), in the order given.
#[allow(clippy::type_complexity)]
fn digest_outputs(
    staging: &Path,
    parts: &[(String, FileKind, Option<PlatformId>)],
    artifacts: &[String],
    progress: &Progress,
) -> Result<(Vec<FileInfo>, Vec<(Sha256Digest, u64)>)> {
    let names: Vec<&String> = parts
        .iter()
        .map(|(name, _, _)| name)
        .chain(artifacts)
        .collect();
    let mut jobs: Vec<(usize, PathBuf, u64)> = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let path = staging.join(name);
        let size = fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        jobs.push((index, path, size));
    }
    jobs.sort_by_key(|job| std::cmp::Reverse(job.2));
    let total: u64 = jobs.iter().map(|job| job.2).sum();
    let bar = progress.bytes("sha256", total);
    let queue = std::sync::Mutex::new(jobs.into_iter());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(names.len().max(1));
    let results: Vec<Result<(usize, Sha256Digest, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().expect("digest queue").next();
                        let Some((index, path, _)) = next else {
                            break done;
                        };
                        done.push(sha256_file(&path).map_err(anyhow::Error::from).map(
                            |(digest, size)| {
                                bar.inc(size);
                                (index, digest, size)
                            },
                        ));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("digest thread panicked"))
            .collect()
    });
    bar.finish_and_clear();
    let mut digests = results.into_iter().collect::<Result<Vec<_>>>()?;
    digests.sort_by_key(|(index, _, _)| *index);
    let mut digests = digests.into_iter().map(|(_, digest, size)| (digest, size));
    let files = parts
        .iter()
        .zip(digests.by_ref())
        .map(|((name, kind, platform), (sha256, size))| FileInfo {
            name: name.clone(),
            kind: *kind,
            size,
            sha256,
            platform: platform.clone(),
        })
        .collect();
    Ok((files, digests.collect()))
}
