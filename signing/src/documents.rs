//! The signed documents of a release store, as operators and nodes read
//! them. Each is a JSON file with a detached minisign signature next to it
//! (`NAME.minisig`); the signature covers the file's exact bytes, and its
//! trusted comment names the document's kind, so one kind of document can
//! never stand in for another.
//!
//!
//! Readers ignore fields they do not know: a newer writer may add fields,
//! and readers already deployed on nodes and operators' machines keep
//! verifying (the signature covers the bytes, whatever they hold) and keep
//! reading the fields they know, with every check on them.
//!
//! ```text
//! keys.json                      which keys sign (see the keyring module)
//! index.json                     every release and channel, in one fetch
//! channels/<channel>.json        what a channel points at, with its history
//! releases/<version>/release.json  the artifacts of a release and their digests
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::digest::Sha256Digest;
use crate::keys::{KeyId, Sign};
use crate::minisig::{self, TrustedKeys};
use crate::Error;

pub const SCHEMA_VERSION: u32 = 1;

/// The kinds of document, as named in trusted comments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Release,
    Channel,
    Index,
    Keyring,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Release => "release",
            Kind::Channel => "channel",
            Kind::Index => "index",
            Kind::Keyring => "keyring",
        }
    }
}

/// The trusted comment of a document's signature: its kind and a subject
/// (the version, the channel name).
pub fn trusted_comment(kind: Kind, subject: &str) -> String {
    format!("boxcar {} {subject}", kind.name())
}

/// Serializes a document the way it is signed: pretty JSON and a newline.
pub fn to_bytes<T: Serialize>(document: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(document).expect("documents always serialize");
    bytes.push(b'\n');
    bytes
}

/// Signs a document's bytes; returns the text of its `.minisig` file.
pub fn sign_bytes(
    signer: &dyn Sign,
    bytes: &[u8],
    kind: Kind,
    subject: &str,
) -> Result<String, Error> {
    minisig::sign(signer, bytes, &trusted_comment(kind, subject))
}

/// Checks the signature of a document of `kind` about `subject`, then
/// parses it. `what` names the document in errors.
pub fn verify<T: DeserializeOwned>(
    bytes: &[u8],
    signature: &str,
    trusted: &TrustedKeys,
    kind: Kind,
    subject: &str,
    what: &str,
) -> Result<(T, KeyId), Error> {
    let key_id = verify_signature(bytes, signature, trusted, kind, subject, what)?;
    let document = serde_json::from_slice(bytes).map_err(|e| Error::Malformed {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((document, key_id))
}

/// Checks the signature (and its kind and subject) of any signed file,
/// JSON or not (SHA256SUMS).
pub fn verify_signature(
    bytes: &[u8],
    signature: &str,
    trusted: &TrustedKeys,
    kind: Kind,
    subject: &str,
    what: &str,
) -> Result<KeyId, Error> {
    let verified = minisig::verify(bytes, signature, trusted).map_err(|e| e.about(what))?;
    let expected = trusted_comment(kind, subject);
    if verified.trusted_comment != expected {
        return Err(Error::Malformed {
            what: what.to_owned(),
            reason: format!(
                "its signature is for {:?}, not {expected:?}: a validly signed document in the wrong place",
                verified.trusted_comment
            ),
        });
    }
    Ok(verified.key_id)
}

/// Whether a verifier refuses expired documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpirationEnforcement {
    /// Expired documents are errors (the default everywhere).
    Enforce,
    /// Accept expired documents: for inspecting an old store, never for
    /// deciding what to run.
    Unsafe,
}

/// Parses an RFC 3339 time from a document.
pub fn parse_time(text: &str, what: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| Error::Malformed {
        what: what.to_owned(),
        reason: format!("{text:?} is not an RFC 3339 time: {e}"),
    })
}

/// Formats a time for a document: RFC 3339, UTC, whole seconds.
pub fn format_time(time: OffsetDateTime) -> String {
    time.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("zero nanoseconds are valid")
        .format(&Rfc3339)
        .expect("UTC times format")
}

/// `releases/<version>/release.json`: one release's artifacts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseDocument {
    pub schema: u32,
    /// The OS name ("boxcar").
    pub name: String,
    pub version: String,
    /// The channel the build was made for.
    pub built_for: String,
    pub built_at: String,
    pub published_at: String,
    /// The /usr dm-verity root hash every artifact boots with.
    pub usr_root_hash: String,
    pub kernel_release: String,
    pub artifacts: Vec<ReleaseArtifact>,
    /// The boot tests of the artifacts, one per platform.
    pub evidence: Vec<EvidenceSummary>,
    /// What a node downloads to update itself to this release (releases
    /// published before updates were carried have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdatePayload>,
    /// What the release weighs as built (releases published before it was
    /// recorded have none; what it weighs booted is in each evidence
    /// summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<BuiltFootprint>,
    /// The certificate the boot chain is signed with for Secure Boot
    /// (unsigned releases have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<ReleaseSecureBoot>,
}

/// The Secure Boot certificate a release ships: what operators enroll in
/// their firmware's db so its boot loader, UKI and addons are accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSecureBoot {
    /// The certificate (PEM): a file name inside `releases/<version>/`.
    pub certificate: String,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// Its SHA-256 fingerprint (hex, of its DER form), as `openssl x509
    /// -fingerprint -sha256` and firmware setup screens show it.
    pub fingerprint_sha256: String,
    /// Its subject (RFC 2253).
    pub subject: String,
}

/// A release's size as built, from its build record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltFootprint {
    /// /usr's regular files before compression, each hard link once.
    pub usr_bytes: u64,
    pub usr_files: u64,
    /// /usr as stored: the size of its (compressed) file system.
    pub usr_stored_bytes: u64,
    /// The packages installed in the image.
    pub packages: u64,
    /// The unified kernel image (kernel, initrd, command line).
    pub uki_bytes: u64,
    /// The UKI's initrd, decompressed and as stored in the UKI.
    pub initrd_bytes: u64,
    pub initrd_stored_bytes: u64,
}

/// A platform's booted system once the boot has finished, from its boot
/// test: memory in use, processes and where the boot's time went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootedFootprint {
    /// MemTotal - MemAvailable, in KiB.
    pub memory_used_kib: u64,
    /// Processes, kernel threads and the test's own aside.
    pub processes: u64,
    /// The boot split as systemd-analyze reports it, in seconds.
    pub kernel_seconds: f64,
    pub initrd_seconds: Option<f64>,
    pub userspace_seconds: f64,
    /// Containers running when the memory was read (a provisioned boot
    /// runs its config's container): issue #13's target is for none.
    /// Absent from evidence older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers_running: Option<u64>,
}

/// A release's A/B update: the parts a node's systemd-sysupdate installs
/// into its idle slot (the image's `/usr/lib/sysupdate.d` transfers match
/// their installed names), each stored compressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePayload {
    pub files: Vec<UpdateFile>,
}

/// What one part of an update is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateRole {
    /// The /usr partition image (erofs), for the idle usr slot.
    Usr,
    /// Its dm-verity hash tree, for the idle usr-verity slot.
    UsrVerity,
    /// Its root hash signature partition (all zeros when the build is
    /// not signed), for the idle usr-verity-sig slot.
    UsrSignature,
    /// The unified kernel image, whose `usrhash=` names the new /usr.
    Uki,
}

/// One part of an update: the file in the store and the file it becomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateFile {
    pub role: UpdateRole,
    /// File name inside `releases/<version>/`, as stored (compressed).
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// How it is compressed ("zstd").
    pub compression: String,
    /// The name systemd-sysupdate's transfer matches, once decompressed.
    pub installed_name: String,
    pub installed_size: u64,
    pub installed_sha256: Sha256Digest,
    /// For a partition image, the UUID its slot gets (lowercase): a /usr
    /// slot's and its hash tree's are the two halves of the root hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_uuid: Option<String>,
}

impl UpdatePayload {
    /// The part with `role`, if the payload has it.
    pub fn file(&self, role: UpdateRole) -> Option<&UpdateFile> {
        self.files.iter().find(|f| f.role == role)
    }

    /// Bytes a node downloads.
    pub fn download_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// One file of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseArtifact {
    pub platform: String,
    pub format: String,
    /// What the file is within the platform's artifact (disk, kernel, ...).
    pub role: String,
    /// File name inside `releases/<version>/`.
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// For a compressed image, its size decompressed: a reader that
    /// decompresses it writes no more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
}

/// The outcome of one platform's boot test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceSummary {
    pub platform: String,
    pub passed: bool,
    pub tested_at: String,
    /// "kvm" or "tcg".
    pub accelerator: String,
    /// Seconds from power-on to the end of the boot, when measured.
    pub boot_seconds: Option<f64>,
    /// The names of the checks that failed (empty when passed).
    pub failed_checks: Vec<String>,
    /// The sha256 of the full evidence.json, published next to release.json.
    pub evidence_sha256: Sha256Digest,
    /// The booted system's footprint, when the test measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<BootedFootprint>,
}

/// `SHA256SUMS`: a release's digests in the format `sha256sum --check`
/// reads. The publisher writes it, readers compare it with release.json.
pub fn sha256sums(release: &ReleaseDocument) -> String {
    release
        .stored_files()
        .map(|f| format!("{}  {}\n", f.sha256, f.name))
        .collect()
}

/// One file a release stores, artifact or update part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredFile<'a> {
    pub name: &'a str,
    pub size: u64,
    pub sha256: Sha256Digest,
}

impl ReleaseDocument {
    /// Every file of the release in its directory: the artifacts, then the
    /// update's parts, then the Secure Boot certificate.
    pub fn stored_files(&self) -> impl Iterator<Item = StoredFile<'_>> {
        let artifacts = self.artifacts.iter().map(|a| StoredFile {
            name: &a.name,
            size: a.size,
            sha256: a.sha256,
        });
        let update = self
            .update
            .iter()
            .flat_map(|u| &u.files)
            .map(|f| StoredFile {
                name: &f.name,
                size: f.size,
                sha256: f.sha256,
            });
        artifacts
            .chain(update)
            .chain(self.secure_boot_certificate())
    }

    /// The Secure Boot certificate, as a file of the release.
    pub fn secure_boot_certificate(&self) -> Option<StoredFile<'_>> {
        self.secure_boot.as_ref().map(|s| StoredFile {
            name: &s.certificate,
            size: s.size,
            sha256: s.sha256,
        })
    }

    /// The evidence for a platform, if the release has any.
    pub fn evidence_for(&self, platform: &str) -> Option<&EvidenceSummary> {
        self.evidence.iter().find(|e| e.platform == platform)
    }

    /// The platforms with artifacts, in order, once each.
    pub fn platforms(&self) -> Vec<&str> {
        let mut platforms: Vec<&str> = Vec::new();
        for artifact in &self.artifacts {
            if !platforms.contains(&artifact.platform.as_str()) {
                platforms.push(&artifact.platform);
            }
        }
        platforms
    }
}

/// `channels/<channel>.json`: what a channel points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelDocument {
    pub schema: u32,
    pub channel: String,
    /// Grows by one with every document issued for the channel; a client
    /// refuses a serial lower than one it has seen (a rollback).
    pub serial: u64,
    pub issued_at: String,
    /// After this, the document is refused: a store that stopped being
    /// updated cannot freeze its clients on an old release forever.
    pub expires_at: String,
    /// The release the channel points at.
    pub version: String,
    /// The sha256 of that release's release.json.
    pub release_sha256: Sha256Digest,
    /// Every release the channel has pointed at, oldest first, the current
    /// one last.
    pub history: Vec<ChannelEntry>,
    /// How the current release reaches nodes; none: all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A staged rollout of a channel's current release: waves open to a
/// growing share of the fleet as time passes since `start`, and a pause
/// holds every node that has not started yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// When the wave clock started: the moment the channel moved, shifted
    /// later by any time spent paused.
    pub start: String,
    /// When the rollout was paused, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
    /// Cumulative shares of the fleet, in order of time; empty: everyone
    /// at once.
    pub waves: Vec<Wave>,
}

/// From `after_seconds` past the rollout's start, `percent` of the fleet
/// (counted from the start, not added to earlier waves) may update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub after_seconds: u64,
    pub percent: u8,
}

impl Rollout {
    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// The percentage of the fleet allowed `elapsed_seconds` after the
    /// start: the largest share of the waves that have opened, 0 before
    /// the first, 100 with no waves at all.
    pub fn percent_after(&self, elapsed_seconds: i64) -> u8 {
        if self.waves.is_empty() {
            return 100;
        }
        self.waves
            .iter()
            .filter(|w| i64::try_from(w.after_seconds).is_ok_and(|after| after <= elapsed_seconds))
            .map(|w| w.percent.min(100))
            .max()
            .unwrap_or(0)
    }

    /// When the next wave after `elapsed_seconds` opens, in seconds after
    /// the start, if one does.
    pub fn next_wave_after(&self, elapsed_seconds: i64) -> Option<&Wave> {
        self.waves
            .iter()
            .filter(|w| i64::try_from(w.after_seconds).is_ok_and(|after| after > elapsed_seconds))
            .min_by_key(|w| w.after_seconds)
    }

    /// Refuses waves that shrink or exceed 100 %: a share once opened stays
    /// open.
    pub fn check(&self) -> Result<(), Error> {
        let malformed = |reason: String| Error::Malformed {
            what: "rollout".into(),
            reason,
        };
        for pair in self.waves.windows(2) {
            if pair[1].after_seconds <= pair[0].after_seconds || pair[1].percent < pair[0].percent {
                return Err(malformed(format!(
                    "its waves must grow in time and share ({}% after {}s, then {}% after {}s)",
                    pair[0].percent, pair[0].after_seconds, pair[1].percent, pair[1].after_seconds
                )));
            }
        }
        if let Some(wave) = self.waves.iter().find(|w| w.percent > 100) {
            return Err(malformed(format!("a wave opens to {}%", wave.percent)));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEntry {
    pub serial: u64,
    pub version: String,
    pub release_sha256: Sha256Digest,
    /// When the channel started pointing at it.
    pub since: String,
}

impl ChannelDocument {
    /// Refuses an expired document (under [`ExpirationEnforcement::Enforce`]).
    pub fn check_expiry(
        &self,
        now: OffsetDateTime,
        enforcement: ExpirationEnforcement,
    ) -> Result<(), Error> {
        let expires = parse_time(&self.expires_at, &format!("channel {}", self.channel))?;
        if enforcement == ExpirationEnforcement::Enforce && now > expires {
            return Err(Error::Expired {
                what: format!("channel document {} (serial {})", self.channel, self.serial),
                expired_at: self.expires_at.clone(),
            });
        }
        Ok(())
    }

    /// Refuses a serial older than one already seen.
    pub fn check_serial(&self, seen: Option<u64>) -> Result<(), Error> {
        match seen {
            Some(seen) if self.serial < seen => Err(Error::Rollback {
                what: format!("channel document {}", self.channel),
                found: self.serial,
                seen,
            }),
            _ => Ok(()),
        }
    }

    /// Checks that the history is consistent with the current pointer:
    /// serials grow, and the last entry is the current release.
    pub fn check_history(&self) -> Result<(), Error> {
        let malformed = |reason: String| Error::Malformed {
            what: format!("channel document {}", self.channel),
            reason,
        };
        let Some(last) = self.history.last() else {
            return Err(malformed("its history is empty".into()));
        };
        if last.version != self.version || last.release_sha256 != self.release_sha256 {
            return Err(malformed(format!(
                "it points at {} but its history ends with {}",
                self.version, last.version
            )));
        }
        for pair in self.history.windows(2) {
            if pair[1].serial <= pair[0].serial {
                return Err(malformed(format!(
                    "its history's serials do not grow ({} then {})",
                    pair[0].serial, pair[1].serial
                )));
            }
        }
        if last.serial > self.serial {
            return Err(malformed(format!(
                "its history has serial {} beyond the document's {}",
                last.serial, self.serial
            )));
        }
        Ok(())
    }

    /// When the channel started pointing at `version` (most recently).
    pub fn since(&self, version: &str) -> Option<&str> {
        self.history
            .iter()
            .rev()
            .find(|e| e.version == version)
            .map(|e| e.since.as_str())
    }
}

/// `index.json`: every release and channel of the store, so an operator
/// fetches one document instead of crawling directories.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDocument {
    pub schema: u32,
    pub serial: u64,
    pub issued_at: String,
    pub releases: Vec<IndexRelease>,
    pub channels: Vec<IndexChannel>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRelease {
    pub version: String,
    pub published_at: String,
    pub release_sha256: Sha256Digest,
    pub artifacts: Vec<ReleaseArtifact>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexChannel {
    pub name: String,
    pub version: String,
    pub serial: u64,
    pub expires_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use time::macros::datetime;

    fn channel(serial: u64) -> ChannelDocument {
        let digest: Sha256Digest =
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap();
        ChannelDocument {
            schema: SCHEMA_VERSION,
            channel: "beta".into(),
            serial,
            issued_at: "2026-11-22T00:00:00Z".into(),
            expires_at: "2026-11-29T00:00:00Z".into(),
            version: "1.1".into(),
            release_sha256: digest,
            history: vec![
                ChannelEntry {
                    serial: 1,
                    version: "1.0".into(),
                    release_sha256: digest,
                    since: "2026-11-20T00:00:00Z".into(),
                },
                ChannelEntry {
                    serial,
                    version: "1.1".into(),
                    release_sha256: digest,
                    since: "2026-11-22T00:00:00Z".into(),
                },
            ],
            rollout: None,
        }
    }

    #[test]
    fn signed_documents_verify_only_as_their_own_kind() {
        let key = SecretKey::from_seed([7; 32]);
        let trusted = TrustedKeys::new([key.public_key()]);
        let bytes = to_bytes(&channel(2));
        let signature = sign_bytes(&key, &bytes, Kind::Channel, "beta").unwrap();
        let (doc, signer): (ChannelDocument, _) = verify(
            &bytes,
            &signature,
            &trusted,
            Kind::Channel,
            "beta",
            "channels/beta.json",
        )
        .unwrap();
        assert_eq!((doc.serial, signer), (2, key.key_id()));
        // The beta document offered as stable's, or as a release, is refused.
        let err =
            verify::<ChannelDocument>(&bytes, &signature, &trusted, Kind::Channel, "stable", "x")
                .unwrap_err();
        assert!(err.to_string().contains("wrong place"), "{err}");
        assert!(verify::<ChannelDocument>(
            &bytes,
            &signature,
            &trusted,
            Kind::Release,
            "beta",
            "x"
        )
        .is_err());
    }

    #[test]
    fn a_document_from_a_newer_writer_verifies_and_reads() {
        let key = SecretKey::from_seed([7; 32]);
        let trusted = TrustedKeys::new([key.public_key()]);
        let mut value = serde_json::to_value(channel(2)).unwrap();
        value["canary"] = serde_json::json!({"waves": [[1, "1h"]]});
        value["history"][0]["note"] = serde_json::json!("added by a newer writer");
        let bytes = to_bytes(&value);
        let signature = sign_bytes(&key, &bytes, Kind::Channel, "beta").unwrap();
        let (doc, _): (ChannelDocument, _) =
            verify(&bytes, &signature, &trusted, Kind::Channel, "beta", "x").unwrap();
        assert_eq!(doc, channel(2));
        assert!(doc.check_history().is_ok());
    }

    #[test]
    fn expiry_is_enforced_unless_explicitly_not() {
        let doc = channel(2);
        assert!(doc
            .check_expiry(
                datetime!(2026-11-28 23:59 UTC),
                ExpirationEnforcement::Enforce
            )
            .is_ok());
        let err = doc
            .check_expiry(
                datetime!(2026-11-29 00:01 UTC),
                ExpirationEnforcement::Enforce,
            )
            .unwrap_err();
        assert!(matches!(err, Error::Expired { .. }), "{err}");
        assert!(doc
            .check_expiry(
                datetime!(2026-12-01 00:00 UTC),
                ExpirationEnforcement::Unsafe
            )
            .is_ok());
    }

    #[test]
    fn rollback_and_history() {
        let doc = channel(2);
        assert!(doc.check_serial(Some(2)).is_ok());
        assert!(matches!(
            doc.check_serial(Some(3)),
            Err(Error::Rollback {
                found: 2,
                seen: 3,
                ..
            })
        ));
        assert!(doc.check_history().is_ok());
        let mut bad = channel(2);
        bad.version = "1.0".into();
        assert!(bad.check_history().is_err());
        assert_eq!(doc.since("1.0"), Some("2026-11-20T00:00:00Z"));
    }

    fn rollout(waves: &[(u64, u8)]) -> Rollout {
        Rollout {
            start: "2026-11-22T00:00:00Z".into(),
            paused_at: None,
            waves: waves
                .iter()
                .map(|&(after_seconds, percent)| Wave {
                    after_seconds,
                    percent,
                })
                .collect(),
        }
    }

    #[test]
    fn waves_open_in_order_and_never_close() {
        let staged = rollout(&[(3600, 1), (4 * 3600, 5), (86400, 15)]);
        assert!(staged.check().is_ok());
        assert_eq!(staged.percent_after(-5), 0);
        assert_eq!(staged.percent_after(3599), 0);
        assert_eq!(staged.percent_after(3600), 1);
        assert_eq!(staged.percent_after(86400 * 30), 15);
        assert_eq!(staged.next_wave_after(3600).unwrap().percent, 5);
        assert!(staged.next_wave_after(86400).is_none());
        assert_eq!(
            Rollout {
                waves: vec![],
                ..staged.clone()
            }
            .percent_after(0),
            100
        );
        assert!(rollout(&[(10, 5), (20, 1)]).check().is_err());
        assert!(rollout(&[(10, 5), (10, 6)]).check().is_err());
        assert!(rollout(&[(10, 101)]).check().is_err());
    }

    #[test]
    fn sums_list_the_update_after_the_artifacts() {
        let digest: Sha256Digest =
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap();
        let mut release = ReleaseDocument {
            schema: SCHEMA_VERSION,
            name: "boxcar".into(),
            version: "1.1".into(),
            built_for: "alpha".into(),
            built_at: "2026-11-22T00:00:00Z".into(),
            published_at: "2026-11-22T00:00:00Z".into(),
            usr_root_hash: "00".into(),
            kernel_release: "6.12".into(),
            artifacts: vec![ReleaseArtifact {
                platform: "qemu".into(),
                format: "qcow2".into(),
                role: "disk".into(),
                name: "boxcar-1.1-qemu.qcow2".into(),
                size: 1,
                sha256: digest,
                uncompressed_size: None,
            }],
            evidence: vec![],
            update: None,
            footprint: None,
            secure_boot: None,
        };
        let before = sha256sums(&release);
        release.update = Some(UpdatePayload {
            files: vec![UpdateFile {
                role: UpdateRole::Uki,
                name: "boxcar_1.1.efi.zst".into(),
                size: 1,
                sha256: digest,
                compression: "zstd".into(),
                installed_name: "boxcar_1.1.efi".into(),
                installed_size: 2,
                installed_sha256: digest,
                partition_uuid: None,
            }],
        });
        let after = sha256sums(&release);
        assert_eq!(after, format!("{before}{digest}  boxcar_1.1.efi.zst\n"));
        // A signed release's certificate is a file of it, listed last.
        let mut signed = release.clone();
        signed.secure_boot = Some(ReleaseSecureBoot {
            certificate: "secure-boot.crt".into(),
            size: 1,
            sha256: digest,
            fingerprint_sha256: "ab".repeat(32),
            subject: "CN=Boxcar".into(),
        });
        assert_eq!(
            sha256sums(&signed),
            format!("{after}{digest}  secure-boot.crt\n")
        );
        let json = serde_json::to_value(&signed).unwrap();
        assert_eq!(json["secure_boot"]["certificate"], "secure-boot.crt");
        let read: ReleaseDocument = serde_json::from_value(json).unwrap();
        assert_eq!(read, signed);
        let json = serde_json::to_value(&release).unwrap();
        assert!(json.get("secure_boot").is_none());
        assert_eq!(json["update"]["files"][0]["role"], "uki");
        // A release from before footprints were recorded states none, and
        // reads back the same.
        assert!(json.get("footprint").is_none());
        let read: ReleaseDocument = serde_json::from_value(json).unwrap();
        assert_eq!(read, release);
        release.footprint = Some(BuiltFootprint {
            usr_bytes: 498_000_000,
            usr_files: 7193,
            usr_stored_bytes: 309_000_000,
            packages: 204,
            uki_bytes: 47_889_920,
            initrd_bytes: 103_000_000,
            initrd_stored_bytes: 35_700_000,
        });
        let json = serde_json::to_value(&release).unwrap();
        assert_eq!(json["footprint"]["uki_bytes"], 47_889_920);
        assert_eq!(
            serde_json::from_value::<ReleaseDocument>(json).unwrap(),
            release
        );
    }
}
