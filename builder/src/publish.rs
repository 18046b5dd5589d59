//! `boxcar publish`: copy a tested build into the release store, sign it,
//! and (optionally) point a channel at it.
//!
//! Order matters and is what makes an interrupted publish harmless: the
//! artifacts are copied (and hashed while copying) into
//! `releases/.<version>.partial`, then SHA256SUMS and release.json are
//! written and signed there, then the directory is renamed into place; only
//! after that is a channel pointed at the release, and the index updated.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use boxcar_signing::documents::{self, EvidenceSummary, Kind, ReleaseArtifact, ReleaseDocument};
use boxcar_signing::{DigestingReader, Sha256Digest, Sign};
use time::OffsetDateTime;

use crate::buildinfo::BuildInfo;
use crate::channel::{ChannelConfig, EvidencePolicy};
use crate::progress::Progress;
use crate::records::evidence::{Evidence, EVIDENCE_JSON};
use crate::store::{self, Store};

/// What a publish did.
#[derive(Debug, serde::Serialize)]
pub struct Published {
    pub version: String,
    pub release_dir: std::path::PathBuf,
    pub release_sha256: Sha256Digest,
    pub artifacts: usize,
    pub bytes: u64,
    /// The channel pointed at the release, if any, and its new serial.
    pub channel: Option<(String, u64)>,
}

/// Checks the build's boot-test evidence: every platform's artifact must
/// have passed when `policy` requires it. Returns the summaries and the
/// evidence files to publish.
pub fn gather_evidence(
    build_dir: &Path,
    build: &BuildInfo,
    policy: EvidencePolicy,
) -> Result<Vec<(EvidenceSummary, std::path::PathBuf)>> {
    let mut gathered = Vec::new();
    let mut problems = Vec::new();
    let mut platforms: Vec<&str> = Vec::new();
    for artifact in &build.artifacts {
        if !platforms.contains(&artifact.platform.as_str()) {
            platforms.push(artifact.platform.as_str());
        }
    }
    for platform in platforms {
        let path = build_dir
            .join("evidence")
            .join(platform)
            .join(EVIDENCE_JSON);
        let Ok(text) = fs::read_to_string(&path) else {
            problems.push(format!(
                "{platform}: no boot-test evidence ({} is missing)",
                path.display()
            ));
            continue;
        };
        let evidence: Evidence =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if evidence.version != build.version.as_str() {
            problems.push(format!(
                "{platform}: the evidence is for version {}",
                evidence.version
            ));
            continue;
        }
        let failed: Vec<String> = evidence
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.clone())
            .collect();
        if !evidence.passed {
            problems.push(format!(
                "{platform}: its boot test failed ({})",
                failed.join(", ")
            ));
        }
        let (evidence_sha256, _) = boxcar_signing::sha256_file(&path)?;
        gathered.push((
            EvidenceSummary {
                platform: platform.to_owned(),
                passed: evidence.passed,
                tested_at: evidence.started_at.clone(),
                accelerator: evidence.accelerator.clone(),
                boot_seconds: evidence.boot_time.as_ref().map(|t| t.total),
                failed_checks: failed,
                evidence_sha256,
            },
            path,
        ));
    }
    if policy == EvidencePolicy::Required && !problems.is_empty() {
        bail!(
            "the release lacks passing boot-test evidence, which the channel requires:\n  - {}\nrun `boxcar test --build {}` first",
            problems.join("\n  - "),
            build_dir.display()
        );
    }
    Ok(gathered)
}

/// Publishes the build at `build_dir`. The caller holds the store's lock.
pub fn publish(
    store: &Store,
    build_dir: &Path,
    signer: &dyn Sign,
    channel: Option<&ChannelConfig>,
    progress: &Progress,
) -> Result<Published> {
    let build = BuildInfo::load(build_dir)?;
    let version = build.version.to_string();
    store::check_version_name(&version)?;
    let policy = channel.map_or(EvidencePolicy::NotRequired, |c| c.evidence);
    let evidence = gather_evidence(build_dir, &build, policy)?;
    if build.artifacts.is_empty() {
        bail!(
            "the build at {} has no artifacts to publish (was it built with --no-artifacts?)",
            build_dir.display()
        );
    }
    let final_dir = store.release_dir(&version);
    if final_dir.exists() {
        bail!(
            "version {version} is already published at {}; a published version is never replaced",
            final_dir.display()
        );
    }
    if let Some(source) = channel.and_then(|c| c.promotes_from.as_ref()) {
        bail!(
            "channel {} receives releases by promotion from {source}, not by publishing",
            channel.expect("a channel has a source").name
        );
    }

    let partial = store.partial_release_dir(&version);
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(partial.join("evidence"))?;
    let mut phase = progress.phase("copy artifacts");
    let total: u64 = build.artifacts.iter().map(|a| a.size).sum();
    let bar = progress.bytes("copy", total);
    let mut artifacts = Vec::new();
    for artifact in &build.artifacts {
        phase.status(&artifact.file);
        let copied = copy_verified(
            &build_dir.join(&artifact.file),
            &partial.join(&artifact.file),
            &bar,
        )
        .with_context(|| format!("copying {}", artifact.file))?;
        if copied != (artifact.sha256, artifact.size) {
            bail!(
                "{} changed since the build: build.json says {} bytes with sha256 {}, the file has {} bytes with sha256 {}",
                build_dir.join(&artifact.file).display(),
                artifact.size,
                artifact.sha256,
                copied.1,
                copied.0
            );
        }
        store::crash_point("publish-copying");
        artifacts.push(ReleaseArtifact {
            platform: artifact.platform.to_string(),
            format: artifact.format.name().to_owned(),
            role: serde_json::to_value(artifact.role)?
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            name: artifact.file.clone(),
            size: artifact.size,
            sha256: artifact.sha256,
        });
    }
    bar.finish_and_clear();
    let mut summaries = Vec::new();
    for (summary, path) in evidence {
        fs::copy(
            &path,
            partial
                .join("evidence")
                .join(format!("{}.json", summary.platform)),
        )?;
        summaries.push(summary);
    }
    phase.done(&format!(
        "{} files, {}",
        artifacts.len(),
        crate::units::human_bytes(total)
    ));

    let now = OffsetDateTime::now_utc();
    let release = ReleaseDocument {
        schema: documents::SCHEMA_VERSION,
        name: build.name.clone(),
        version: version.clone(),
        built_for: build.channel.to_string(),
        built_at: build.built_at.clone(),
        published_at: documents::format_time(now),
        usr_root_hash: build.usr.root_hash.clone(),
        kernel_release: build.kernel.release.clone(),
        artifacts,
        evidence: summaries,
    };
    let sums = sha256sums(&release);
    store::write_synced(&partial.join("SHA256SUMS"), sums.as_bytes())?;
    let sums_signature = documents::sign_bytes(
        signer,
        sums.as_bytes(),
        Kind::Release,
        &format!("{version} SHA256SUMS"),
    )?;
    store::write_synced(
        &partial.join("SHA256SUMS.minisig"),
        sums_signature.as_bytes(),
    )?;
    let release_bytes = documents::to_bytes(&release);
    let release_signature = documents::sign_bytes(signer, &release_bytes, Kind::Release, &version)?;
    store::write_synced(&partial.join("release.json"), &release_bytes)?;
    store::write_synced(
        &partial.join("release.json.minisig"),
        release_signature.as_bytes(),
    )?;
    store::sync_dir(&partial)?;
    store::crash_point("publish-before-rename");
    fs::rename(&partial, &final_dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), final_dir.display()))?;
    store::sync_dir(&store.releases_dir())?;
    let release_sha256 = boxcar_signing::sha256_reader(&release_bytes[..])?.0;

    let channel_update = match channel {
        Some(channel) => {
            let serial = crate::channeldoc::point_channel(
                store,
                signer,
                channel,
                &version,
                release_sha256,
                now,
            )?;
            Some((channel.name.to_string(), serial))
        }
        None => None,
    };
    crate::channeldoc::write_index(store, signer, now)?;
    Ok(Published {
        version,
        release_dir: final_dir,
        release_sha256,
        artifacts: release.artifacts.len(),
        bytes: total,
        channel: channel_update,
    })
}

/// `SHA256SUMS` in the format `sha256sum --check` reads.
pub fn sha256sums(release: &ReleaseDocument) -> String {
    release
        .artifacts
        .iter()
        .map(|a| format!("{}  {}\n", a.sha256, a.name))
        .collect()
}

/// Copies `from` to `to` (keeping holes as holes) and returns the digest
/// and size of what was copied, computed in the same pass.
fn copy_verified(
    from: &Path,
    to: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(Sha256Digest, u64)> {
    let source = File::open(from)?;
    let length = source.metadata()?.len();
    let regions = boxcar_signing::data_regions(&source, length);
    let mut reader = DigestingReader::new(HoleFilledReader::new(source, length, regions));
    let mut target = File::create(to)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut position = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let chunk = &buffer[..n];
        if chunk.iter().all(|&b| b == 0) {
            // Leave a hole rather than writing zeros.
            target.seek(SeekFrom::Current(n as i64))?;
        } else {
            target.write_all(chunk)?;
        }
        position += n as u64;
        bar.inc(n as u64);
    }
    target.set_len(position)?;
    target.sync_all()?;
    Ok(reader.finish())
}

/// Reads a sparse file's holes from memory instead of from the disk.
struct HoleFilledReader {
    file: File,
    length: u64,
    regions: Vec<std::ops::Range<u64>>,
    position: u64,
}

impl HoleFilledReader {
    fn new(file: File, length: u64, regions: Vec<std::ops::Range<u64>>) -> Self {
        Self {
            file,
            length,
            regions,
            position: 0,
        }
    }
}

impl Read for HoleFilledReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.length || buf.is_empty() {
            return Ok(0);
        }
        let in_region = self.regions.iter().find(|r| r.end > self.position);
        let n = match in_region {
            Some(region) if region.start <= self.position => {
                let n = buf.len().min((region.end - self.position) as usize);
                self.file.seek(SeekFrom::Start(self.position))?;
                let n = self.file.read(&mut buf[..n])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while being read",
                    ));
                }
                n
            }
            next => {
                let hole_end = next.map_or(self.length, |r| r.start);
                let n = buf.len().min((hole_end - self.position) as usize);
                buf[..n].fill(0);
                n
            }
        };
        self.position += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn copies_sparse_files_keeping_holes_and_hashing_all_bytes() {
        let temp = tempfile::tempdir().unwrap();
        let from = temp.path().join("disk.raw");
        let file = File::create(&from).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"tail", 20 * 1024 * 1024).unwrap();
        drop(file);
        let to = temp.path().join("copy.raw");
        let (digest, size) = copy_verified(&from, &to, &indicatif::ProgressBar::hidden()).unwrap();
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        assert_eq!((digest, size), boxcar_signing::sha256_file(&from).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(
            fs::metadata(&to).unwrap().blocks() * 512 < 4 * 1024 * 1024,
            "holes were written out"
        );
    }

    #[test]
    fn sums_are_what_sha256sum_reads() {
        let digest: Sha256Digest =
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap();
        let release = ReleaseDocument {
            schema: 1,
            name: "boxcar".into(),
            version: "1".into(),
            built_for: "alpha".into(),
            built_at: String::new(),
            published_at: String::new(),
            usr_root_hash: String::new(),
            kernel_release: String::new(),
            artifacts: vec![ReleaseArtifact {
                platform: "qemu".into(),
                format: "qcow2".into(),
                role: "disk".into(),
                name: "boxcar-1-qemu.qcow2".into(),
                size: 0,
                sha256: digest,
            }],
            evidence: Vec::new(),
        };
        assert_eq!(
            sha256sums(&release),
            format!("{digest}  boxcar-1-qemu.qcow2\n")
        );
    }
}
