//! Checking a whole store the way a careful client would, and saying what
//! is wrong with it, without changing anything: it works on a read-only
//! mount, a mirror, or a web server. What an interrupted writer left
//! behind is reported, not repaired; repairing is a writer's job.

use boxcar_signing::documents::{ExpirationEnforcement, IndexDocument};
use boxcar_signing::{Sha256Digest, TrustedKeys};
use serde::Serialize;
use time::OffsetDateTime;

use crate::chain::{Client, Trust};
use crate::error::Error;
use crate::layout::{self, SafeName};

/// How a finding bears on the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Not wrong yet, but someone should act.
    Warning,
    Fail,
}

/// One thing that was checked.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What was checked ("channels/beta.json").
    pub subject: String,
    /// Whether it passed (a warning passes).
    pub ok: bool,
    pub status: Status,
    pub detail: String,
}

/// The outcome of an audit.
#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    fn add(&mut self, status: Status, subject: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            subject: subject.into(),
            ok: status != Status::Fail,
            status,
            detail: detail.into(),
        });
    }

    fn ok(&mut self, subject: impl Into<String>, detail: impl Into<String>) {
        self.add(Status::Ok, subject, detail);
    }

    /// A document that checked out: a warning when less than a quarter of
    /// its validity is left (someone should renew it), else ok.
    fn expiring(
        &mut self,
        subject: &str,
        detail: String,
        issued_at: &str,
        expires_at: &str,
        now: OffsetDateTime,
    ) {
        let parse = |t| boxcar_signing::documents::parse_time(t, subject).ok();
        let soon = match (parse(issued_at), parse(expires_at)) {
            (Some(issued), Some(expires)) => (expires - now) * 4 < (expires - issued),
            _ => false,
        };
        if soon {
            self.add(
                Status::Warning,
                subject,
                format!("{detail}: expires soon; renew it (boxcar renew, or boxcar keys renew for keys.json)"),
            );
        } else {
            self.ok(subject, detail);
        }
    }

    fn fail(&mut self, subject: impl Into<String>, detail: impl Into<String>) {
        self.add(Status::Fail, subject, detail);
    }
}

/// Checks everything a client relies on: the keyring, the index, every
/// channel (signature, expiry, serial against the index, history, that it
/// points at a published release), every release (signature, SHA256SUMS,
/// every artifact's digest), and reports a writer's leftovers.
///
/// A store that cannot be read at all (unreachable, too slow) is an error;
/// a store that can be read and is wrong is a report that did not pass.
pub fn audit(client: &Client, pinned: &TrustedKeys, now: OffsetDateTime) -> Result<Report, Error> {
    let mut report = Report {
        store: client.transport().describe(),
        findings: Vec::new(),
    };
    for leftover in client.transport().leftovers()? {
        report.add(
            Status::Warning,
            leftover,
            "left by an interrupted writer; the next publish or promote cleans it up",
        );
    }
    let trust = match client.trust(pinned, ExpirationEnforcement::Enforce, now, None) {
        Ok(trust) => {
            if let Some(keyring) = &trust.keyring {
                let detail = format!(
                    "serial {}, root threshold {} of {}, {} signing keys, expires {}",
                    keyring.serial,
                    keyring.root.threshold,
                    keyring.root.keys.len(),
                    keyring.signing.keys.len(),
                    keyring.expires_at
                );
                report.expiring(
                    layout::KEYRING,
                    detail,
                    &keyring.issued_at,
                    &keyring.expires_at,
                    now,
                );
            }
            trust
        }
        Err(e) => return judged(report, layout::KEYRING, e),
    };
    let index = match client.index(&trust) {
        Ok(index) => index.document,
        Err(e) => return judged(report, layout::INDEX, e),
    };
    report.ok(
        layout::INDEX,
        format!(
            "serial {}, {} releases, {} channels",
            index.serial,
            index.releases.len(),
            index.channels.len()
        ),
    );
    for entry in &index.channels {
        check_channel(
            client,
            &trust,
            &index,
            &entry.name,
            entry.serial,
            now,
            &mut report,
        )?;
    }
    for release in &index.releases {
        check_release(
            client,
            &trust,
            &release.version,
            release.release_sha256,
            &mut report,
        )?;
    }
    Ok(report)
}

/// A failure that makes the rest of the audit impossible: a finding if it
/// is about the store's content, an error if the store could not be read.
fn judged(mut report: Report, subject: &str, error: Error) -> Result<Report, Error> {
    if error.kind() == crate::ErrorKind::RetryLater {
        return Err(error);
    }
    report.fail(subject, error.to_string());
    Ok(report)
}

/// Records a failed check, or passes on an error that means the store
/// could not be read.
fn record_failure(report: &mut Report, subject: &str, error: Error) -> Result<(), Error> {
    if error.kind() == crate::ErrorKind::RetryLater || error.kind() == crate::ErrorKind::Local {
        return Err(error);
    }
    report.fail(subject, error.to_string());
    Ok(())
}

fn check_channel(
    client: &Client,
    trust: &Trust,
    index: &IndexDocument,
    name: &str,
    index_serial: u64,
    now: OffsetDateTime,
    report: &mut Report,
) -> Result<(), Error> {
    let name = match SafeName::new("channel", name) {
        Ok(name) => name,
        Err(e) => return record_failure(report, layout::INDEX, e.into()),
    };
    let path = layout::channel(&name);
    let channel = match client.channel(trust, &name, ExpirationEnforcement::Enforce, now) {
        Ok(channel) => channel.document,
        Err(e) => return record_failure(report, &path, e),
    };
    if let Err(e) = channel.check_serial(Some(index_serial)) {
        report.fail(
            &path,
            format!("{e} (the index, signed later, records serial {index_serial})"),
        );
        return Ok(());
    }
    let indexed = index.releases.iter().any(|r| r.version == channel.version);
    let version = SafeName::new("version", &channel.version)?;
    match client.release(trust, &version) {
        Ok(release) if release.sha256 == channel.release_sha256 && !indexed => report.add(
            Status::Warning,
            &path,
            format!(
                "serial {}, points at {}, which the index does not list yet (a writer was interrupted); the next publish, promote or renew rewrites the index",
                channel.serial, channel.version
            ),
        ),
        Ok(release) if release.sha256 == channel.release_sha256 => report.expiring(
            &path,
            format!(
                "serial {}, points at {}, expires {}",
                channel.serial, channel.version, channel.expires_at
            ),
            &channel.issued_at,
            &channel.expires_at,
            now,
        ),
        Ok(release) => report.fail(
            &path,
            format!(
                "points at {} with release.json sha256 {}, but the store's has {}",
                channel.version, channel.release_sha256, release.sha256
            ),
        ),
        Err(e) => record_failure(
            report,
            &path,
            Error::Inconsistent(format!(
                "points at {}, which is not a published release: {e}",
                channel.version
            )),
        )?,
    }
    Ok(())
}

fn check_release(
    client: &Client,
    trust: &Trust,
    version: &str,
    indexed_sha256: Sha256Digest,
    report: &mut Report,
) -> Result<(), Error> {
    let version = match SafeName::new("version", version) {
        Ok(version) => version,
        Err(e) => return record_failure(report, layout::INDEX, e.into()),
    };
    let path = layout::release_document(&version);
    let release = match client.release(trust, &version) {
        Ok(release) if release.sha256 == indexed_sha256 => release.document,
        Ok(release) => {
            report.fail(
                &path,
                format!(
                    "sha256 {}, but index.json records {indexed_sha256}",
                    release.sha256
                ),
            );
            return Ok(());
        }
        Err(e) => return record_failure(report, &path, e),
    };
    let sums_path = layout::sums(&version);
    match client.check_sums(trust, &release) {
        Ok(()) => report.ok(&sums_path, "signed, and agrees with release.json"),
        Err(e) => record_failure(report, &sums_path, e)?,
    }
    let mut bad = Vec::new();
    let files: Vec<_> = release.stored_files().collect();
    for artifact in &files {
        let name = SafeName::new("artifact name", artifact.name)?;
        let file = layout::release_file(&version, &name);
        match client.transport().digest(&file, artifact.size) {
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                bad.push(format!("{} is missing", artifact.name))
            }
            Err(e) if e.kind() == crate::ErrorKind::RetryLater => return Err(e),
            Err(e) => bad.push(e.to_string()),
            Ok((digest, size)) if (digest, size) != (artifact.sha256, artifact.size) => {
                bad.push(format!(
                    "{}: expected {} bytes with sha256 {}, found {size} bytes with sha256 {digest}",
                    artifact.name, artifact.size, artifact.sha256
                ))
            }
            Ok(_) => {}
        }
    }
    if bad.is_empty() {
        report.ok(
            &path,
            format!("signed; {} files match their digests", files.len()),
        );
    } else {
        report.fail(&path, bad.join("; "));
    }
    Ok(())
}
