//! `boxcar promote`: point a channel at a release its source channel
//! already carries. The bits never change: only a new signed channel
//! document is written, after the policy allows it and the artifacts are
//! checked against their signed digests.

use anyhow::{bail, Context, Result};
use boxcar_client::layout::{self, SafeName};
use boxcar_client::{Client, ErrorKind};
use boxcar_signing::documents::{self, ChannelDocument, ReleaseDocument};
use serde::Serialize;

use super::backend::crash_point;
use super::documents::{check_downgrade, next_channel_document, Downgrade, Writer};
use crate::channel::{ChannelConfig, ChannelName, Channels, EvidencePolicy};

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct PromoteRequest {
    pub to: ChannelName,
    /// `None`: what the source channel points at now.
    pub version: Option<String>,
    pub downgrade: Downgrade,
}

/// A policy check and its outcome, shown to the user.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyCheck {
    pub name: String,
    pub detail: String,
}

/// The promotion, worked out and checked, before anything is written.
#[derive(Debug, Serialize)]
pub struct Promotion {
    pub from: String,
    pub to: String,
    pub version: String,
    /// What the target channel points at now, if anything.
    pub current: Option<String>,
    pub current_serial: Option<u64>,
    pub next_serial: u64,
    pub expires_at: String,
    pub checks: Vec<PolicyCheck>,
    /// True when the channel already points at the version.
    pub unchanged: bool,
    #[serde(skip)]
    next: Option<ChannelDocument>,
}

/// Works out the promotion and checks every rule; errors say which rule
/// refused it.
pub fn plan(writer: &Writer, channels: &Channels, request: &PromoteRequest) -> Result<Promotion> {
    let now = writer.now;
    let config = channels.get(&request.to)?;
    let Some(source_name) = &config.promotes_from else {
        bail!(
            "channel {} is not promoted into (it has no promotes-from in {}); CI publishes to it",
            config.name,
            channels.dir.join(format!("{}.toml", config.name)).display()
        );
    };
    let source = writer
        .read_channel(source_name.as_str())?
        .with_context(|| {
            format!("channel {source_name} has no document yet: nothing to promote from")
        })?;
    let version = request
        .version
        .clone()
        .unwrap_or_else(|| source.version.clone());
    let mut checks = Vec::new();

    let Some(entry) = source.history.iter().find(|e| e.version == version) else {
        bail!("release {version} has never been in channel {source_name}, so it cannot be promoted to {}", config.name);
    };
    let since = documents::parse_time(&entry.since, &format!("channels/{source_name}.json"))?;
    checks.push(PolicyCheck {
        name: format!("{version} is in {source_name}"),
        detail: format!("since {} (serial {})", entry.since, entry.serial),
    });

    let soaked = now - since;
    let required = config.soak.to_std();
    if soaked < time::Duration::try_from(required).unwrap_or(time::Duration::MAX) {
        bail!(
            "release {version} has soaked in {source_name} for {}, but {} requires {}; promote after {}",
            crate::duration::HumanDuration::from_secs(soaked.whole_seconds().max(0) as u64),
            config.name,
            config.soak,
            documents::format_time(since + required)
        );
    }
    checks.push(PolicyCheck {
        name: "soak time met".into(),
        detail: format!(
            "{} in {source_name}, {} required",
            crate::duration::HumanDuration::from_secs(soaked.whole_seconds().max(0) as u64),
            config.soak
        ),
    });

    let verified = writer.read_release(&version)?;
    let (release, release_sha256) = (verified.document, verified.sha256);
    if release_sha256 != entry.release_sha256 {
        bail!(
            "releases/{version}/release.json has sha256 {release_sha256}, but channel {source_name} recorded {}: the release changed after it was published",
            entry.release_sha256
        );
    }
    checks.push(PolicyCheck {
        name: "release.json is signed and unchanged".into(),
        detail: format!("sha256 {release_sha256}"),
    });

    checks.push(check_evidence(&release, config)?);

    let target = writer.read_channel(config.name.as_str())?;
    if let Some(current) = &target {
        if current.version == version {
            return Ok(Promotion {
                from: source_name.to_string(),
                to: config.name.to_string(),
                version,
                current: Some(current.version.clone()),
                current_serial: Some(current.serial),
                next_serial: current.serial,
                expires_at: current.expires_at.clone(),
                checks,
                unchanged: true,
                next: None,
            });
        }
        let name = config.name.as_str();
        if check_downgrade(name, &current.version, &version, request.downgrade)? {
            checks.push(PolicyCheck {
                name: "downgrade allowed".into(),
                detail: format!("{} -> {version} (--allow-downgrade)", current.version),
            });
        }
    }

    let verified = verify_artifacts(&writer.client, &release)?;
    checks.push(PolicyCheck {
        name: "artifacts match their signed digests".into(),
        detail: format!("{verified} files re-hashed"),
    });

    let serial = writer.next_serial(config.name.as_str(), target.as_ref())?;
    let next = next_channel_document(
        config,
        target.as_ref(),
        serial,
        &version,
        release_sha256,
        now,
    );
    Ok(Promotion {
        from: source_name.to_string(),
        to: config.name.to_string(),
        version,
        current: target.as_ref().map(|t| t.version.clone()),
        current_serial: target.as_ref().map(|t| t.serial),
        next_serial: next.serial,
        expires_at: next.expires_at.clone(),
        checks,
        unchanged: false,
        next: Some(next),
    })
}

fn check_evidence(release: &ReleaseDocument, config: &ChannelConfig) -> Result<PolicyCheck> {
    let platforms = release.platforms();
    let failing: Vec<String> = platforms
        .iter()
        .filter_map(|p| match release.evidence_for(p) {
            None => Some(format!("{p}: no evidence")),
            Some(e) if !e.passed => Some(format!("{p}: failed {}", e.failed_checks.join(", "))),
            Some(_) => None,
        })
        .collect();
    match (config.evidence, failing.is_empty()) {
        (_, true) => Ok(PolicyCheck {
            name: "boot-test evidence present and passing".into(),
            detail: format!("{} platforms", platforms.len()),
        }),
        (EvidencePolicy::Required, false) => bail!(
            "channel {} requires passing boot-test evidence for every platform, and release {} lacks it: {}",
            config.name,
            release.version,
            failing.join("; ")
        ),
        (EvidencePolicy::NotRequired, false) => Ok(PolicyCheck {
            name: "boot-test evidence not required".into(),
            detail: failing.join("; "),
        }),
    }
}

/// Re-hashes every artifact of a release in the store against release.json.
pub fn verify_artifacts(client: &Client, release: &ReleaseDocument) -> Result<usize> {
    let version = SafeName::new("version", &release.version)?;
    let files: Vec<_> = release.stored_files().collect();
    for artifact in &files {
        let name = SafeName::new("artifact name", artifact.name)?;
        let path = layout::release_file(&version, &name);
        let location = client.location(&path);
        let (digest, size) = match client.transport().digest(&path, artifact.size) {
            Err(e) if e.kind() == ErrorKind::NotFound => bail!("{location} is missing"),
            other => other.with_context(|| format!("hashing {location}"))?,
        };
        if (digest, size) != (artifact.sha256, artifact.size) {
            bail!(
                "{location} does not match release.json: expected {} bytes with sha256 {}, found {size} bytes with sha256 {digest}",
                artifact.size,
                artifact.sha256
            );
        }
    }
    Ok(files.len())
}

/// Writes the promotion's channel document, reads it back and checks it,
/// then updates the index. Returns the new serial.
pub fn apply(writer: &Writer, promotion: &Promotion) -> Result<u64> {
    let Some(next) = &promotion.next else {
        return Ok(promotion.next_serial);
    };
    writer.write_channel(next)?;
    crash_point("promote-before-readback");
    writer.check_written(next)?;
    writer.write_index()?;
    Ok(next.serial)
}

/// Pausing or resuming a channel's rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutChange {
    Pause,
    Resume,
}

/// What a pause or resume did.
#[derive(Debug, Serialize)]
pub struct RolloutChanged {
    pub channel: String,
    pub version: String,
    pub change: RolloutChange,
    /// False when the rollout already was as asked.
    pub written: bool,
    pub serial: u64,
    pub expires_at: String,
}

/// Pauses or resumes the rollout of what `name` points at, in a new
/// signed document (next serial, renewed expiry). Resuming shifts the wave
/// clock by the time spent paused, so waves continue where they stopped
/// rather than opening all at once.
pub fn change_rollout(
    writer: &Writer,
    channels: &Channels,
    name: &ChannelName,
    change: RolloutChange,
) -> Result<RolloutChanged> {
    let config = channels.get(name)?;
    let current = writer
        .read_channel(name.as_str())?
        .with_context(|| format!("channel {name} has no document yet: nothing is rolling out"))?;
    let what = format!("channels/{name}.json");
    // A document from before rollouts: its waves start when it moved.
    let mut rollout = current.rollout.clone().unwrap_or_else(|| {
        config.rollout.starting(
            current
                .since(&current.version)
                .unwrap_or(&current.issued_at),
        )
    });
    let now = documents::format_time(writer.now);
    match (change, &rollout.paused_at) {
        (RolloutChange::Pause, None) => rollout.paused_at = Some(now.clone()),
        (RolloutChange::Resume, Some(paused_at)) => {
            let paused_for = writer.now - documents::parse_time(paused_at, &what)?;
            let start = documents::parse_time(&rollout.start, &what)?;
            rollout.start = documents::format_time(start + paused_for);
            rollout.paused_at = None;
        }
        _ => {
            return Ok(RolloutChanged {
                channel: name.to_string(),
                version: current.version.clone(),
                change,
                written: false,
                serial: current.serial,
                expires_at: current.expires_at.clone(),
            })
        }
    }
    let serial = writer.next_serial(name.as_str(), Some(&current))?;
    let mut next = current;
    next.serial = serial;
    next.issued_at = now;
    next.expires_at = documents::format_time(writer.now + config.valid_for.to_std());
    next.rollout = Some(rollout);
    writer.write_channel(&next)?;
    writer.check_written(&next)?;
    writer.write_index()?;
    Ok(RolloutChanged {
        channel: name.to_string(),
        version: next.version,
        change,
        written: true,
        serial,
        expires_at: next.expires_at,
    })
}
