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
}

/// `SHA256SUMS`: a release's digests in the format `sha256sum --check`
/// reads. The publisher writes it, readers compare it with release.json.
pub fn sha256sums(release: &ReleaseDocument) -> String {
    release
        .artifacts
        .iter()
        .map(|a| format!("{}  {}\n", a.sha256, a.name))
        .collect()
}

impl ReleaseDocument {
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
        value["rollout"] = serde_json::json!({"waves": [[1, "1h"]]});
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
}
