//! `boxcar publish`: copy a tested build into the release store, sign it,
//! and (optionally) point a channel at it.
//!
//! Order matters and is what makes an interrupted publish harmless: the
//! artifacts are copied (and hashed while copying) into
//! `releases/.<version>.partial`, then SHA256SUMS and release.json are
//! written and signed there, then the directory is renamed into place; then
//! the index lists it; only after that is a channel pointed at the release,
//! and the index updated again with the channel's new serial.
//!
//! Publishing the same build again finishes what an interrupted publish
//! left: a release already in the store with exactly this build's artifacts
//! is not copied again, the channel is pointed at it if it is not yet, and
//! the index is rewritten. A different build of a published version is
//! refused: a published version is never replaced.
//!
//! A channel is never pointed at an older release than it has, unless the
//! caller allows a downgrade (as promotion does): two pipelines publishing
//! 2.0.0 and then 1.0.0 must not leave alpha on 1.0.0. That is refused
//! before anything is copied, and checked again against the document the
//! channel update builds on.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use boxcar_client::layout::{self, SafeName};
use boxcar_signing::documents::{
    self, ChannelDocument, EvidenceSummary, Kind, ReleaseArtifact, ReleaseDocument,
    ReleaseSecureBoot,
};
use boxcar_signing::Sha256Digest;

use super::backend::{crash_point, ReleaseDraft};
use super::documents::{check_downgrade, Downgrade, Writer};
use crate::channel::{ChannelConfig, EvidencePolicy};
use crate::progress::Progress;
use crate::records::buildinfo::{BuildInfo, SecureBootInfo};
use crate::records::evidence::{Evidence, EVIDENCE_JSON};

/// What a publish did.
#[derive(Debug, serde::Serialize)]
pub struct Published {
    pub version: String,
    /// Where the release is, for people.
    pub release_dir: String,
    pub release_sha256: Sha256Digest,
    pub artifacts: usize,
    pub bytes: u64,
    /// The channel pointed at the release, if any, and its new serial.
    pub channel: Option<(String, u64)>,
}

/// A platform's boot-test evidence: the summary release.json carries, and
/// the file published beside it as it was when it was read.
#[derive(Debug)]
pub struct GatheredEvidence {
    pub summary: EvidenceSummary,
    pub path: PathBuf,
    pub size: u64,
}

/// Checks the build's boot-test evidence: every platform's artifact must
/// have passed when `policy` requires it. Returns each platform's evidence
/// to publish.
pub fn gather_evidence(
    build_dir: &Path,
    build: &BuildInfo,
    policy: EvidencePolicy,
) -> Result<Vec<GatheredEvidence>> {
    let mut gathered = Vec::new();
    let mut problems = Vec::new();
    let mut platforms: Vec<&str> = Vec::new();
    for artifact in &build.artifacts {
        if !platforms.contains(&artifact.platform.as_str()) {
            platforms.push(artifact.platform.as_str());
        }
    }
    for platform in platforms {
        let platform = SafeName::new("platform", platform)?;
        let path = build_dir
            .join("evidence")
            .join(platform.as_str())
            .join(EVIDENCE_JSON);
        let platform = platform.as_str();
        if path.exists() {
            check_inside(build_dir, &path)?;
        }
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
        let (evidence_sha256, size) = boxcar_signing::sha256_file(&path)?;
        gathered.push(GatheredEvidence {
            summary: EvidenceSummary {
                platform: platform.to_owned(),
                passed: evidence.passed,
                tested_at: evidence.started_at.clone(),
                accelerator: evidence.accelerator.clone(),
                boot_seconds: evidence.boot_time.as_ref().map(|t| t.total),
                failed_checks: failed,
                evidence_sha256,
                footprint: evidence.booted_footprint(),
            },
            path,
            size,
        });
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

/// Refuses a file of the build that is not inside the build directory (a
/// symlinked evidence directory pointing elsewhere, say).
fn check_inside(build_dir: &Path, path: &Path) -> Result<()> {
    let dir =
        fs::canonicalize(build_dir).with_context(|| format!("reading {}", build_dir.display()))?;
    let file = fs::canonicalize(path).with_context(|| format!("reading {}", path.display()))?;
    if !file.starts_with(&dir) {
        bail!(
            "{} leads outside the build directory (to {}); publish reads only the build's own files",
            path.display(),
            file.display()
        );
    }
    Ok(())
}

/// Publishes the build at `build_dir`, and points `channel` at it (not
/// back to an older release than it has, unless `downgrade` allows it).
/// The caller holds the store's lock.
pub fn publish(
    writer: &Writer,
    build_dir: &Path,
    channel: Option<&ChannelConfig>,
    downgrade: Downgrade,
    progress: &Progress,
) -> Result<Published> {
    let build = BuildInfo::load(build_dir)?;
    let version = SafeName::new("version", build.version.as_str())?;
    if build.artifacts.is_empty() && build.update.is_none() {
        bail!(
            "the build at {} has no artifacts and no update to publish (was it built with --no-artifacts?)",
            build_dir.display()
        );
    }
    if build.artifacts.is_empty() {
        progress.note(
            "the build has no platform artifacts (built with --no-artifacts): the release carries only the update nodes install",
        );
    }
    for artifact in &build.artifacts {
        SafeName::new("artifact name", &artifact.file)?;
        SafeName::new("platform", artifact.platform.as_str())?;
    }
    if let Some(source) = channel.and_then(|c| c.promotes_from.as_ref()) {
        bail!(
            "channel {} receives releases by promotion from {source}, not by publishing",
            channel.expect("a channel has a source").name
        );
    }
    let policy = channel.map_or(EvidencePolicy::NotRequired, |c| c.evidence);
    let evidence = gather_evidence(build_dir, &build, policy)?;
    let in_store = writer.store.release_exists(&version)?;
    if let Some(channel) = channel {
        check_move_first(writer, channel, &version, downgrade, in_store)?;
    }
    let release_dir = writer.client.location(&layout::release_dir(&version));
    let (release, release_sha256) = if in_store {
        let existing = already_there(writer, &build, &version, &release_dir)?;
        progress.note(&format!(
            "{version} is already in the store with this build's artifacts (an earlier publish of this build); finishing that publish"
        ));
        existing
    } else {
        assemble(writer, build_dir, &build, &version, evidence, progress)?
    };
    // The index lists the release before any channel names it, so a
    // reader never follows a channel to a release the index lacks.
    crash_point("publish-before-listing");
    writer.write_index()?;
    crash_point("publish-before-channel");
    let channel_update = match channel {
        Some(channel) => Some(point(
            writer,
            channel,
            (&version, release_sha256),
            downgrade,
            progress,
        )?),
        None => None,
    };
    crash_point("publish-before-index");
    writer.write_index()?;
    Ok(Published {
        version: version.to_string(),
        release_dir,
        release_sha256,
        artifacts: release.artifacts.len(),
        bytes: release.artifacts.iter().map(|a| a.size).sum(),
        channel: channel_update,
    })
}

/// A release of `version` is in the store: it is this build's (an earlier
/// publish of it was interrupted after its release was in place), or
/// publishing is refused.
fn already_there(
    writer: &Writer,
    build: &BuildInfo,
    version: &SafeName,
    release_dir: &str,
) -> Result<(ReleaseDocument, Sha256Digest)> {
    let refuse = || {
        anyhow::anyhow!(
            "version {version} is already published at {release_dir}; a published version is never replaced"
        )
    };
    let existing = writer
        .read_release(version.as_str())
        .map_err(|e| refuse().context(e))?;
    let published: Vec<(&str, u64, Sha256Digest)> = existing
        .document
        .artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.size, a.sha256))
        .collect();
    let built: Vec<(&str, u64, Sha256Digest)> = build
        .artifacts
        .iter()
        .map(|a| (a.file.as_str(), a.size, a.sha256))
        .collect();
    let published_certificate = existing.document.secure_boot.as_ref().map(|s| s.sha256);
    let built_certificate = build.secure_boot.as_ref().map(|s| s.file_sha256);
    if published != built
        || existing.document.usr_root_hash != build.usr.root_hash
        || existing.document.update != build.update
        || published_certificate != built_certificate
    {
        return Err(refuse());
    }
    Ok((existing.document, existing.sha256))
}

/// What pointing a channel at a release does, judged from the channel's
/// current document.
#[derive(Debug, PartialEq, Eq)]
enum ChannelMove {
    /// Nothing: it points there already (an earlier publish of this build
    /// got that far).
    Already { serial: u64 },
    /// Nothing: it carried the release before and has moved on to
    /// `current`; running an interrupted publish again never moves it back.
    MovedOn { current: String, serial: u64 },
    /// It moves to the release: forward, or back from `back_from` when a
    /// downgrade is allowed.
    Moves { back_from: Option<String> },
}

/// How channel `name`, whose document is `current`, would move to
/// `version`; an error if that is a downgrade `downgrade` refuses.
fn judge_move(
    current: Option<&ChannelDocument>,
    name: &str,
    version: &SafeName,
    downgrade: Downgrade,
) -> Result<ChannelMove> {
    let Some(current) = current else {
        return Ok(ChannelMove::Moves { back_from: None });
    };
    let serial = current.serial;
    if current.version == version.as_str() {
        return Ok(ChannelMove::Already { serial });
    }
    if current
        .history
        .iter()
        .any(|e| e.version == version.as_str())
    {
        let current = current.version.clone();
        return Ok(ChannelMove::MovedOn { current, serial });
    }
    let back = check_downgrade(name, &current.version, version.as_str(), downgrade)?;
    Ok(ChannelMove::Moves {
        back_from: back.then(|| current.version.clone()),
    })
}

/// Refuses a publish that would move `channel` back (see [`judge_move`])
/// before anything is copied, so that it leaves nothing behind. The
/// release may be in the store already (`in_store`): an earlier attempt got
/// that far.
fn check_move_first(
    writer: &Writer,
    channel: &ChannelConfig,
    version: &SafeName,
    downgrade: Downgrade,
    in_store: bool,
) -> Result<()> {
    let name = channel.name.as_str();
    let current = writer.read_channel(name)?;
    judge_move(current.as_ref(), name, version, downgrade).with_context(|| {
        if in_store {
            format!("{version} is in the store already (an earlier publish of it got that far), but channel {name} stays where it is")
        } else {
            format!("not publishing {version}: nothing was copied")
        }
    })?;
    Ok(())
}

/// Points `channel` at the release, unless it points there already or has
/// moved on past it since an interrupted publish. The channel is read (and
/// judged) again here: in object storage another writer may have moved it
/// while the release was being copied.
fn point(
    writer: &Writer,
    channel: &ChannelConfig,
    (version, release_sha256): (&SafeName, Sha256Digest),
    downgrade: Downgrade,
    progress: &Progress,
) -> Result<(String, u64)> {
    let name = channel.name.to_string();
    let current = writer.read_channel(&name)?;
    let change = judge_move(current.as_ref(), &name, version, downgrade).with_context(|| {
        format!(
            "{version} is published, but another writer moved channel {name} meanwhile, so it stays where it is"
        )
    })?;
    match change {
        ChannelMove::Already { serial } => Ok((name, serial)),
        ChannelMove::MovedOn { current, serial } => {
            progress.note(&format!(
                "channel {name} carried {version} before and has moved on to {current}; not pointing it back"
            ));
            Ok((name, serial))
        }
        ChannelMove::Moves { back_from } => {
            if let Some(from) = back_from {
                progress.note(&format!(
                    "pointing channel {name} back from {from} to {version} (--allow-downgrade)"
                ));
            }
            let serial = writer.point_channel(
                channel,
                current.as_ref(),
                version.as_str(),
                release_sha256,
            )?;
            Ok((name, serial))
        }
    }
}

/// Copies one file of the build (`name`, with the size and digest
/// build.json gives) into the release, checking it on the way.
fn copy_build_file(
    draft: &mut dyn ReleaseDraft,
    build_dir: &Path,
    (name, size, sha256): (&str, u64, Sha256Digest),
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let name = SafeName::new("file name", name)?;
    let source = build_dir.join(name.as_str());
    copy_checked(
        draft,
        (name.as_str(), &source),
        (sha256, size),
        "build.json",
        bar,
    )
}

/// Copies a platform's boot-test evidence into the release, checking that
/// it is still the file whose digest release.json signs.
fn copy_evidence(draft: &mut dyn ReleaseDraft, evidence: &GatheredEvidence) -> Result<()> {
    let platform = SafeName::new("platform", &evidence.summary.platform)?;
    let name = format!("{}/{platform}.json", layout::EVIDENCE_DIR);
    copy_checked(
        draft,
        (&name, &evidence.path),
        (evidence.summary.evidence_sha256, evidence.size),
        "release.json's evidence summary",
        &indicatif::ProgressBar::hidden(),
    )
}

/// Copies `source` into the release as `name`, hashing it on the way, and
/// refuses it unless it is still the file (`sha256`, `size`) that `record`
/// says: a file changed after it was read is not what the release signs.
fn copy_checked(
    draft: &mut dyn ReleaseDraft,
    (name, source): (&str, &Path),
    (sha256, size): (Sha256Digest, u64),
    record: &str,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let start = bar.position();
    let copied = draft
        .copy_in(name, source, &|n| bar.set_position(start + n))
        .with_context(|| format!("copying {name}"))?;
    if copied != (sha256, size) {
        bail!(
            "{} is not the file {record} describes (it changed after it was recorded): {record} says {size} bytes with sha256 {sha256}, the file has {} bytes with sha256 {}",
            source.display(),
            copied.1,
            copied.0
        );
    }
    crash_point("publish-copying");
    Ok(())
}

/// Copies a signed build's Secure Boot certificate into the release:
/// operators download it with the image to enroll it in their firmware.
fn copy_certificate(
    draft: &mut dyn ReleaseDraft,
    build_dir: &Path,
    signed: &SecureBootInfo,
    bar: &indicatif::ProgressBar,
) -> Result<ReleaseSecureBoot> {
    let name = SafeName::new("certificate name", &signed.certificate)?;
    let source = build_dir.join(name.as_str());
    let size = fs::symlink_metadata(&source)
        .with_context(|| format!("reading {}", source.display()))?
        .len();
    copy_build_file(
        draft,
        build_dir,
        (name.as_str(), size, signed.file_sha256),
        bar,
    )?;
    Ok(ReleaseSecureBoot {
        certificate: name.to_string(),
        size,
        sha256: signed.file_sha256,
        fingerprint_sha256: signed.certificate_sha256.clone(),
        subject: signed.subject.clone(),
    })
}

/// Copies the build into a new release, writes and signs its SHA256SUMS
/// and release.json, and commits it.
fn assemble(
    writer: &Writer,
    build_dir: &Path,
    build: &BuildInfo,
    version: &SafeName,
    evidence: Vec<GatheredEvidence>,
    progress: &Progress,
) -> Result<(ReleaseDocument, Sha256Digest)> {
    let mut draft = writer.store.begin_release(version)?;
    let mut phase = progress.phase("copy artifacts");
    let total: u64 = build.artifacts.iter().map(|a| a.size).sum::<u64>()
        + build.update.as_ref().map_or(0, |u| u.download_size());
    let bar = progress.bytes("copy", total);
    let mut artifacts = Vec::new();
    for artifact in &build.artifacts {
        phase.status(&artifact.file);
        copy_build_file(
            draft.as_mut(),
            build_dir,
            (&artifact.file, artifact.size, artifact.sha256),
            &bar,
        )?;
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
            uncompressed_size: artifact.uncompressed_size,
        });
    }
    let update = match &build.update {
        Some(payload) => {
            for file in &payload.files {
                phase.status(&file.name);
                copy_build_file(
                    draft.as_mut(),
                    build_dir,
                    (&file.name, file.size, file.sha256),
                    &bar,
                )?;
            }
            Some(payload.clone())
        }
        None => {
            progress.note("the build carries no update payload (built before updates were published): nodes cannot update to this release");
            None
        }
    };
    let secure_boot = match &build.secure_boot {
        Some(signed) => Some(copy_certificate(draft.as_mut(), build_dir, signed, &bar)?),
        None => None,
    };
    bar.finish_and_clear();
    let mut summaries = Vec::new();
    for gathered in evidence {
        copy_evidence(draft.as_mut(), &gathered)?;
        summaries.push(gathered.summary);
    }
    phase.done(&format!(
        "{} files, {}",
        artifacts.len(),
        crate::units::human_bytes(total)
    ));

    let release = ReleaseDocument {
        schema: documents::SCHEMA_VERSION,
        name: build.name.clone(),
        version: version.to_string(),
        built_for: build.channel.to_string(),
        built_at: build.built_at.clone(),
        published_at: documents::format_time(writer.now),
        usr_root_hash: build.usr.root_hash.clone(),
        kernel_release: build.kernel.release.clone(),
        artifacts,
        evidence: summaries,
        update,
        footprint: build.built_footprint(),
        secure_boot,
    };
    let signer = writer.signer;
    let sums = documents::sha256sums(&release);
    let sums_signature = documents::sign_bytes(
        signer,
        sums.as_bytes(),
        Kind::Release,
        &format!("{version} SHA256SUMS"),
    )?;
    draft.write(layout::SUMS, sums.as_bytes())?;
    draft.write(
        &layout::signature_of(layout::SUMS),
        sums_signature.as_bytes(),
    )?;
    let release_bytes = documents::to_bytes(&release);
    let release_signature =
        documents::sign_bytes(signer, &release_bytes, Kind::Release, version.as_str())?;
    draft.write(layout::RELEASE_DOCUMENT, &release_bytes)?;
    draft.write(
        &layout::signature_of(layout::RELEASE_DOCUMENT),
        release_signature.as_bytes(),
    )?;
    draft.commit()?;
    let release_sha256 = boxcar_signing::sha256_bytes(&release_bytes);
    Ok((release, release_sha256))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::backend::{DirBackend, StoreBackend};

    /// Evidence of `platform` read (as `gather_evidence` reads it) from a
    /// file holding `bytes`.
    fn evidence_read(dir: &Path, platform: &str, bytes: &[u8]) -> GatheredEvidence {
        let path = dir.join(format!("{platform}.json"));
        fs::write(&path, bytes).unwrap();
        let (evidence_sha256, size) = boxcar_signing::sha256_file(&path).unwrap();
        GatheredEvidence {
            summary: EvidenceSummary {
                platform: platform.into(),
                passed: true,
                tested_at: "2026-12-01T00:00:00Z".into(),
                accelerator: "tcg".into(),
                boot_seconds: None,
                failed_checks: vec![],
                evidence_sha256,
                footprint: None,
            },
            path,
            size,
        }
    }

    /// Alpha after carrying 1.0.0 and then 2.0.0.
    fn alpha_on_2_0_0() -> ChannelDocument {
        let sha256 = boxcar_signing::sha256_bytes(b"release.json");
        let entry = |serial: u64, version: &str| documents::ChannelEntry {
            serial,
            version: version.into(),
            release_sha256: sha256,
            since: "2026-12-01T00:00:00Z".into(),
        };
        ChannelDocument {
            schema: documents::SCHEMA_VERSION,
            channel: "alpha".into(),
            serial: 2,
            issued_at: "2026-12-01T00:00:00Z".into(),
            expires_at: "2027-01-01T00:00:00Z".into(),
            version: "2.0.0".into(),
            release_sha256: sha256,
            history: vec![entry(1, "1.0.0"), entry(2, "2.0.0")],
            rollout: None,
        }
    }

    #[test]
    fn a_channel_moves_forward_back_only_when_allowed_and_never_back_to_what_it_left() {
        let alpha = alpha_on_2_0_0();
        let judge = |version: &str, downgrade| {
            let version = SafeName::new("version", version).unwrap();
            judge_move(Some(&alpha), "alpha", &version, downgrade)
        };
        let refuse = Downgrade::Refuse;
        assert_eq!(
            judge("3.0.0", refuse).unwrap(),
            ChannelMove::Moves { back_from: None }
        );
        assert_eq!(
            judge("2.0.0", refuse).unwrap(),
            ChannelMove::Already { serial: 2 }
        );
        // A rerun of 1.0.0's publish, even with --allow-downgrade.
        for downgrade in [Downgrade::Refuse, Downgrade::Allow] {
            assert_eq!(
                judge("1.0.0", downgrade).unwrap(),
                ChannelMove::MovedOn {
                    current: "2.0.0".into(),
                    serial: 2
                }
            );
        }
        let err = judge("1.5.0", refuse).unwrap_err();
        assert!(
            err.to_string().contains("would downgrade it from 2.0.0"),
            "{err}"
        );
        assert_eq!(
            judge("1.5.0", Downgrade::Allow).unwrap(),
            ChannelMove::Moves {
                back_from: Some("2.0.0".into())
            }
        );
        let empty = judge_move(None, "alpha", &SafeName::new("v", "0.1").unwrap(), refuse);
        assert_eq!(empty.unwrap(), ChannelMove::Moves { back_from: None });
    }

    #[test]
    fn evidence_that_changed_after_it_was_read_is_not_published() {
        let temp = tempfile::tempdir().unwrap();
        let store = DirBackend::open(&temp.path().join("store")).unwrap();
        let version = SafeName::new("version", "1.0.0").unwrap();
        let mut draft = store.begin_release(&version).unwrap();
        let unchanged = evidence_read(temp.path(), "qemu", b"{\"passed\": true}");
        copy_evidence(draft.as_mut(), &unchanged).unwrap();
        let changed = evidence_read(temp.path(), "metal", b"{\"passed\": false}");
        fs::write(&changed.path, b"{\"passed\": true}").unwrap();
        let err = copy_evidence(draft.as_mut(), &changed).unwrap_err();
        assert!(
            format!("{err:#}")
                .contains("is not the file release.json's evidence summary describes"),
            "{err:#}"
        );
    }
}
