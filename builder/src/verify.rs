//! `boxcar verify`: check a whole release store the way a careful client
//! would, and say what is wrong with it.

use anyhow::{bail, Result};
use boxcar_signing::documents::{
    self, ChannelDocument, ExpirationEnforcement, IndexDocument, KeyringDocument, Kind,
    ReleaseDocument,
};
use boxcar_signing::{Sha256Digest, TrustedKeys};
use serde::Serialize;
use time::OffsetDateTime;

use crate::storesource::StoreSource;

/// One thing that was checked.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What was checked ("channels/beta.json").
    pub subject: String,
    pub ok: bool,
    pub detail: String,
}

/// The outcome of a verification.
#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    fn ok(&mut self, subject: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            subject: subject.into(),
            ok: true,
            detail: detail.into(),
        });
    }

    fn fail(&mut self, subject: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            subject: subject.into(),
            ok: false,
            detail: detail.into(),
        });
    }
}

/// Fetches and checks a signed document; `Err` carries the reason.
fn fetch_signed<T: serde::de::DeserializeOwned>(
    source: &StoreSource,
    path: &str,
    trusted: &TrustedKeys,
    kind: Kind,
    subject: &str,
) -> Result<(T, Sha256Digest)> {
    let Some(bytes) = source.fetch(path)? else {
        bail!("{} does not exist", source.location_of(path));
    };
    let signature_path = format!("{path}.minisig");
    let Some(signature) = source.fetch(&signature_path)? else {
        bail!(
            "{} has no signature ({} does not exist)",
            path,
            source.location_of(&signature_path)
        );
    };
    let signature = String::from_utf8(signature)
        .map_err(|_| anyhow::anyhow!("{signature_path} is not text"))?;
    let (document, _) = documents::verify(&bytes, &signature, trusted, kind, subject, path)?;
    let digest = boxcar_signing::sha256_reader(&bytes[..])?.0;
    Ok((document, digest))
}

/// Checks everything: the keyring, the index, every channel (signature,
/// expiry, serial against the index, history, that it points at a
/// published release), and every release (signature, SHA256SUMS, every
/// artifact's digest).
pub fn verify(source: &StoreSource, pinned: &TrustedKeys, now: OffsetDateTime) -> Result<Report> {
    let mut report = Report {
        store: source.describe(),
        findings: Vec::new(),
    };
    if let StoreSource::Local(root) = source {
        // A writer that died mid-update left a journal or a half-published
        // release: undo it (under the writers' lock) before judging.
        let store = crate::store::Store::open(root)?;
        let lock = store.lock(&crate::progress::Progress::with_mode(
            crate::progress::Mode::Quiet,
        ))?;
        for undone in lock.recovered() {
            report.ok("recovery", undone.clone());
        }
    }
    let mut trusted = pinned.clone();
    if let (Some(bytes), Some(signature)) = (
        source.fetch("keys.json")?,
        source.fetch("keys.json.minisig")?,
    ) {
        match KeyringDocument::extend_trust(
            &bytes,
            &String::from_utf8_lossy(&signature),
            &mut trusted,
        ) {
            Ok(keyring) => report.ok(
                "keys.json",
                format!(
                    "serial {}, {} keys now trusted",
                    keyring.serial,
                    trusted.ids().len()
                ),
            ),
            Err(e) => report.fail("keys.json", format!("{e:#}")),
        }
    }
    let index: IndexDocument =
        match fetch_signed::<IndexDocument>(source, "index.json", &trusted, Kind::Index, "index") {
            Ok((index, _)) => {
                report.ok(
                    "index.json",
                    format!(
                        "serial {}, {} releases, {} channels",
                        index.serial,
                        index.releases.len(),
                        index.channels.len()
                    ),
                );
                index
            }
            Err(e) => {
                report.fail("index.json", format!("{e:#}"));
                return Ok(report);
            }
        };
    for entry in &index.channels {
        check_channel(
            source,
            &trusted,
            &index,
            &entry.name,
            entry.serial,
            now,
            &mut report,
        )?;
    }
    for release in &index.releases {
        check_release(
            source,
            &trusted,
            &release.version,
            release.release_sha256,
            &mut report,
        )?;
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn check_channel(
    source: &StoreSource,
    trusted: &TrustedKeys,
    index: &IndexDocument,
    name: &str,
    index_serial: u64,
    now: OffsetDateTime,
    report: &mut Report,
) -> Result<()> {
    let path = format!("channels/{name}.json");
    let channel: ChannelDocument = match fetch_signed(source, &path, trusted, Kind::Channel, name) {
        Ok((channel, _)) => channel,
        Err(e) => {
            report.fail(&path, format!("{e:#}"));
            return Ok(());
        }
    };
    let problems: Vec<String> = [
        channel
            .check_expiry(now, ExpirationEnforcement::Enforce)
            .err()
            .map(|e| e.to_string()),
        channel
            .check_serial(Some(index_serial))
            .err()
            .map(|e| format!("{e} (the index, signed later, records serial {index_serial})")),
        channel.check_history().err().map(|e| e.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !problems.is_empty() {
        report.fail(&path, problems.join("; "));
        return Ok(());
    }
    if !index.releases.iter().any(|r| r.version == channel.version) {
        report.fail(
            &path,
            format!(
                "points at {}, which the index does not list as published",
                channel.version
            ),
        );
        return Ok(());
    }
    let release_path = format!("releases/{}/release.json", channel.version);
    match fetch_signed::<ReleaseDocument>(
        source,
        &release_path,
        trusted,
        Kind::Release,
        &channel.version,
    ) {
        Ok((_, digest)) if digest == channel.release_sha256 => report.ok(
            &path,
            format!(
                "serial {}, points at {}, expires {}",
                channel.serial, channel.version, channel.expires_at
            ),
        ),
        Ok((_, digest)) => report.fail(
            &path,
            format!(
                "points at {} with release.json sha256 {}, but the store's has {digest}",
                channel.version, channel.release_sha256
            ),
        ),
        Err(e) => report.fail(
            &path,
            format!(
                "points at {}, which is not a published release: {e:#}",
                channel.version
            ),
        ),
    }
    Ok(())
}

fn check_release(
    source: &StoreSource,
    trusted: &TrustedKeys,
    version: &str,
    indexed_sha256: Sha256Digest,
    report: &mut Report,
) -> Result<()> {
    let path = format!("releases/{version}/release.json");
    let release: ReleaseDocument =
        match fetch_signed(source, &path, trusted, Kind::Release, version) {
            Ok((release, digest)) if digest == indexed_sha256 => release,
            Ok((_, digest)) => {
                report.fail(
                    &path,
                    format!("sha256 {digest}, but index.json records {indexed_sha256}"),
                );
                return Ok(());
            }
            Err(e) => {
                report.fail(&path, format!("{e:#}"));
                return Ok(());
            }
        };
    let sums_path = format!("releases/{version}/SHA256SUMS");
    let sums = source.fetch(&sums_path)?;
    let sums_signature = source.fetch(&format!("{sums_path}.minisig"))?;
    match (sums, sums_signature) {
        (Some(sums), Some(signature)) => {
            let verified = documents::verify_signature(
                &sums,
                &String::from_utf8_lossy(&signature),
                trusted,
                Kind::Release,
                &format!("{version} SHA256SUMS"),
                &sums_path,
            );
            let expected = crate::publish::sha256sums(&release);
            if let Err(e) = verified {
                report.fail(&sums_path, format!("{e:#}"));
            } else if sums != expected.as_bytes() {
                report.fail(&sums_path, "does not list the digests release.json gives");
            } else {
                report.ok(&sums_path, "signed, and agrees with release.json");
            }
        }
        _ => report.fail(&sums_path, "missing, or missing its signature"),
    }
    let mut bad = Vec::new();
    for artifact in &release.artifacts {
        let file = format!("releases/{version}/{}", artifact.name);
        match source.hash(&file)? {
            None => bad.push(format!("{} is missing", artifact.name)),
            Some((digest, size)) if (digest, size) != (artifact.sha256, artifact.size) => {
                bad.push(format!(
                    "{}: expected {} bytes with sha256 {}, found {size} bytes with sha256 {digest}",
                    artifact.name, artifact.size, artifact.sha256
                ))
            }
            Some(_) => {}
        }
    }
    if bad.is_empty() {
        report.ok(
            &path,
            format!(
                "signed; {} artifacts match their digests",
                release.artifacts.len()
            ),
        );
    } else {
        report.fail(&path, bad.join("; "));
    }
    Ok(())
}
