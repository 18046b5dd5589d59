//! The signed documents of a store, each fetched within its size limit and
//! checked against the keys trusted so far: the keyring extends the pinned
//! keys, and those judge the index, the channels and the releases.
//!
//! A [`Client`] never trusts what it has not checked: a document comes
//! back as [`Verified`] only after its signature (by a trusted key, with
//! the trusted comment of its kind and subject), its shape, and the names
//! in it that will become paths have passed.

use std::sync::Arc;

use boxcar_signing::documents::{
    self, ChannelDocument, ExpirationEnforcement, IndexDocument, Kind, ReleaseDocument,
};
use boxcar_signing::keyring::{Authority, KeyringDocument};
use boxcar_signing::{KeyId, Sha256Digest, TrustedKeys};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::error::{found, Error, ErrorKind};
use crate::layout::{self, SafeName};
use crate::limits::{Limits, NetworkSettings};
use crate::rollback::SerialState;
use crate::transport::{self, Transport};
use crate::Observer;

/// Reads one store.
pub struct Client {
    transport: Box<dyn Transport>,
    limits: Limits,
    network: NetworkSettings,
    observer: Arc<dyn Observer>,
}

/// The keys that judge a store's documents: the signing keys of the
/// store's current keyring, reached from the pinned root keys; or, in a
/// store without a keyring, the pinned keys themselves.
#[derive(Clone, Debug)]
pub struct Trust {
    /// The keys whose signatures on releases, channels and the index count.
    pub keys: TrustedKeys,
    /// The current keyring, if the store has one.
    pub keyring: Option<KeyringDocument>,
}

/// A keyring with more versions than this is refused: a store renews its
/// keyring about once a year and rotates keys more rarely still, and a
/// hostile one must not make a reader fetch forever.
const MAX_KEYRING_VERSIONS: u64 = 1_000;

/// Just the serial of a keyring not yet trusted: how far there is to walk.
#[derive(serde::Deserialize)]
struct SerialOnly {
    serial: u64,
}

impl Trust {
    /// Exactly these keys, with no keyring.
    pub fn of(keys: TrustedKeys) -> Self {
        Self {
            keys,
            keyring: None,
        }
    }
}

/// A document whose signature checked out.
#[derive(Clone, Debug)]
pub struct Verified<T> {
    pub document: T,
    /// The sha256 of its bytes (what channels and the index record of a
    /// release.json).
    pub sha256: Sha256Digest,
    pub signed_by: KeyId,
    /// The bytes checked: what a writer signs again, never a second read,
    /// which could be someone else's.
    pub bytes: Vec<u8>,
}

/// How long a reader waits before reading again a document pair that did
/// not verify (a writer puts a signature in place milliseconds after its
/// document), and how many times it reads again. Writers racing to replace
/// one document can keep a reader between pairs more than once; a pair
/// that is really bad costs its reader 1.2 s more before it is refused.
const PAIR_SETTLE: std::time::Duration = std::time::Duration::from_millis(300);
const PAIR_REREADS: u32 = 4;

/// What an operator or a node asks for.
#[derive(Clone, Debug)]
pub enum Selector {
    /// What a channel points at now, or (with a version) a release the
    /// channel has carried.
    Channel {
        name: SafeName,
        version: Option<SafeName>,
    },
    /// A release by version, from the index.
    Version(SafeName),
}

/// A release found through the signed chain.
#[derive(Debug)]
pub struct Resolved {
    pub version: SafeName,
    pub release: Verified<ReleaseDocument>,
    /// The channel it came through and the channel document's serial.
    pub channel: Option<(SafeName, u64)>,
    /// That channel's document, checked (its rollout, its history).
    pub channel_document: Option<ChannelDocument>,
}

impl Client {
    pub fn new(
        transport: Box<dyn Transport>,
        network: NetworkSettings,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            transport,
            limits: Limits::default(),
            network,
            observer,
        }
    }

    /// A client for the store at `location` (see [`transport::open_store`]).
    pub fn open(
        location: &str,
        network: NetworkSettings,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, Error> {
        Ok(Self::new(
            transport::open_store(location, &network)?,
            network,
            observer,
        ))
    }

    /// The same client with other size limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }

    pub fn network(&self) -> &NetworkSettings {
        &self.network
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The URL or path of a store path, for messages.
    pub fn location(&self, path: &str) -> String {
        self.transport.location(path)
    }

    /// A whole document of kind `what`, at most `limit` bytes, retried when
    /// the failure may pass, all within the document deadline: a server
    /// that trickles it in is not given that deadline again at every try.
    pub fn document(&self, path: &str, what: &'static str, limit: u64) -> Result<Vec<u8>, Error> {
        let started = std::time::Instant::now();
        let deadline = started + self.network.document_deadline;
        self.network
            .retry
            .run_until(Some(deadline), path, self.observer(), || {
                transport::read_document(
                    self.transport(),
                    path,
                    what,
                    limit,
                    &self.network,
                    started,
                )
            })
    }

    /// A document and its detached signature. A document without its
    /// signature is refused, not "not found".
    pub fn signed_pair(
        &self,
        path: &str,
        what: &'static str,
        limit: u64,
    ) -> Result<(Vec<u8>, String), Error> {
        let bytes = self.document(path, what, limit)?;
        let signature_path = layout::signature_of(path);
        let signature = found(self.document(&signature_path, "signature", self.limits.signature))?
            .ok_or_else(|| {
                Error::Inconsistent(format!(
                    "{} has no signature ({} does not exist)",
                    self.location(path),
                    self.location(&signature_path)
                ))
            })?;
        let signature = String::from_utf8(signature).map_err(|_| {
            Error::untrusted(
                self.location(&signature_path),
                boxcar_signing::Error::Malformed {
                    what: "signature".into(),
                    reason: "it is not text".into(),
                },
            )
        })?;
        Ok((bytes, signature))
    }

    /// Fetches and checks a signed JSON document.
    fn verified<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
        limit: u64,
        trust: &Trust,
        kind: Kind,
        subject: &str,
    ) -> Result<Verified<T>, Error> {
        let read = || -> Result<(T, KeyId, Vec<u8>), Error> {
            let (bytes, signature) = self.signed_pair(path, what, limit)?;
            let (document, signed_by) =
                documents::verify(&bytes, &signature, &trust.keys, kind, subject, path)
                    .map_err(|e| Error::untrusted(self.location(path), e))?;
            Ok((document, signed_by, bytes))
        };
        // A store in object storage replaces a document and then its
        // signature (two objects, no rename): a reader can catch the pair
        // in between, and judges a later read. Failures that may pass were
        // retried already, by the transport.
        let mut result = read();
        for _ in 0..PAIR_REREADS {
            match &result {
                Err(e) if e.kind() == ErrorKind::Reject => {
                    std::thread::sleep(PAIR_SETTLE);
                    result = read();
                }
                _ => break,
            }
        }
        let (document, signed_by, bytes) = result?;
        Ok(Verified {
            document,
            sha256: boxcar_signing::sha256_bytes(&bytes),
            signed_by,
            bytes,
        })
    }

    /// The keys to judge the store's documents by, reached from the keys
    /// the caller pinned: the store's keyring is followed from the oldest
    /// version those keys signed, through every rotation since, to the
    /// current one (see [`boxcar_signing::keyring`]). Its expiry is
    /// enforced unless `expiry` says otherwise. With `state`, its serial
    /// must not be below one this machine accepted, and the walk starts
    /// from the version this machine accepted last, which must be unchanged;
    /// the one accepted now is remembered.
    pub fn trust(
        &self,
        pinned: &TrustedKeys,
        expiry: ExpirationEnforcement,
        now: OffsetDateTime,
        state: Option<&mut SerialState>,
    ) -> Result<Trust, Error> {
        let identity = self.transport.identity();
        let location = self.location(layout::KEYRING);
        let seen = state.as_ref().and_then(|s| s.highest_keyring(&identity));
        let accepted = state.as_ref().and_then(|s| s.accepted_keyring(&identity));
        let Some((keyring, sha256)) = self.keyring_chain(pinned, accepted)? else {
            if let Some(seen) = seen {
                return Err(Error::Inconsistent(format!(
                    "{location} is gone, but this machine has accepted its serial {seen}: refusing a store that dropped its keyring"
                )));
            }
            return Ok(Trust::of(pinned.clone()));
        };
        let untrusted = |e| Error::untrusted(location.clone(), e);
        keyring.check_expiry(now, expiry).map_err(untrusted)?;
        keyring.check_serial(seen).map_err(untrusted)?;
        if let Some(state) = state {
            state.accept_keyring(&identity, keyring.serial, sha256)?;
        }
        Ok(Trust {
            keys: keyring.signing_keys().map_err(untrusted)?,
            keyring: Some(keyring),
        })
    }

    /// The store's current keyring and the digest of its bytes, verified
    /// from the version `accepted` names if there is one, else from
    /// `pinned`; `None` if the store has no keyring.
    fn keyring_chain(
        &self,
        pinned: &TrustedKeys,
        accepted: Option<(u64, Sha256Digest)>,
    ) -> Result<Option<(KeyringDocument, Sha256Digest)>, Error> {
        let limit = self.limits.keyring;
        let Some(latest) = found(self.signed_pair(layout::KEYRING, "keyring", limit))? else {
            return Ok(None);
        };
        let location = self.location(layout::KEYRING);
        let latest_serial = serde_json::from_slice::<SerialOnly>(&latest.0)
            .map_err(|e| {
                Error::untrusted(
                    &location,
                    boxcar_signing::Error::Malformed {
                        what: "keys.json".into(),
                        reason: e.to_string(),
                    },
                )
            })?
            .serial;
        if latest_serial > MAX_KEYRING_VERSIONS {
            return Err(Error::Inconsistent(format!(
                "{location} has serial {latest_serial}: more versions than a reader walks ({MAX_KEYRING_VERSIONS})"
            )));
        }
        let version = |serial: u64| -> Result<Option<(Vec<u8>, String)>, Error> {
            if serial == latest_serial {
                return Ok(Some(latest.clone()));
            }
            found(self.signed_pair(&layout::keyring_version(serial), "keyring", limit))
        };
        // Never the newest version the pinned keys signed: a root key that
        // was removed, or one of several that must sign together, could
        // sign a new keyring on its own. Its chain must start where the
        // reader's trust started and hold at every step.
        let mut current = match accepted {
            Some((serial, sha256)) => {
                self.accepted_anchor(serial, sha256, latest_serial, version)?
            }
            None => self.pinned_anchor(pinned, latest_serial, version)?,
        };
        while current.serial < latest_serial {
            let serial = current.serial + 1;
            let path = layout::keyring_version(serial);
            let (bytes, signatures) = version(serial)?.ok_or_else(|| Error::NotFound {
                location: self.location(&path),
                detail: "a keyring version between the trusted one and the current one is missing"
                    .into(),
            })?;
            current = KeyringDocument::verify(&bytes, &signatures, Authority::Successor(&current))
                .map_err(|e| Error::untrusted(self.location(&path), e))?;
        }
        Ok(Some((current, boxcar_signing::sha256_bytes(&latest.0))))
    }

    /// The oldest keyring version the pinned keys signed (to its root's
    /// threshold). Versions that are missing or that they did not sign are
    /// passed over: a reader may pin a root added long after the first.
    fn pinned_anchor(
        &self,
        pinned: &TrustedKeys,
        latest_serial: u64,
        version: impl Fn(u64) -> Result<Option<(Vec<u8>, String)>, Error>,
    ) -> Result<KeyringDocument, Error> {
        let mut why_not = None;
        for serial in 1..=latest_serial {
            let Some((bytes, signatures)) = version(serial)? else {
                continue;
            };
            match KeyringDocument::verify(&bytes, &signatures, Authority::Pinned(pinned)) {
                Ok(keyring) if keyring.serial == serial => return Ok(keyring),
                Ok(_) => {}
                Err(e) => {
                    why_not = Some(e);
                }
            }
        }
        let why = why_not.map_or_else(String::new, |e| format!(" ({e})"));
        Err(Error::Inconsistent(format!(
            "{}: no version of the keyring is signed by the keys you pinned{why}; pin the store's root key",
            self.location(layout::KEYRING)
        )))
    }

    /// The keyring version this machine accepted last, read again: it was
    /// verified then, so it must be byte for byte what was accepted.
    fn accepted_anchor(
        &self,
        serial: u64,
        sha256: Sha256Digest,
        latest_serial: u64,
        version: impl Fn(u64) -> Result<Option<(Vec<u8>, String)>, Error>,
    ) -> Result<KeyringDocument, Error> {
        let path = layout::keyring_version(serial);
        let location = self.location(&path);
        if serial > latest_serial {
            return Err(Error::untrusted(
                self.location(layout::KEYRING),
                boxcar_signing::Error::Rollback {
                    what: "keys.json".into(),
                    found: latest_serial,
                    seen: serial,
                },
            ));
        }
        let (bytes, _) = version(serial)?.ok_or_else(|| {
            Error::Inconsistent(format!(
                "{location} is gone, but this machine accepted it: refusing a store that dropped part of its keyring's history"
            ))
        })?;
        let found = boxcar_signing::sha256_bytes(&bytes);
        if found != sha256 {
            return Err(Error::Inconsistent(format!(
                "{location} is not the keyring this machine accepted (sha256 {found}, accepted {sha256}): its history was rewritten"
            )));
        }
        KeyringDocument::parse(&bytes).map_err(|e| Error::untrusted(location, e))
    }

    /// The signed index of every release and channel.
    pub fn index(&self, trust: &Trust) -> Result<Verified<IndexDocument>, Error> {
        let verified: Verified<IndexDocument> = self.verified(
            layout::INDEX,
            "index",
            self.limits.index,
            trust,
            Kind::Index,
            "index",
        )?;
        // Everything in it is shown to people or becomes a path: names must
        // be names and times must be times.
        let index = &verified.document;
        let time = |text: &str| {
            documents::parse_time(text, "index.json")
                .map_err(|e| Error::untrusted(self.location(layout::INDEX), e))
        };
        for release in &index.releases {
            SafeName::new("version", &release.version)?;
            time(&release.published_at)?;
            for artifact in &release.artifacts {
                SafeName::new("artifact name", &artifact.name)?;
                SafeName::new("platform", &artifact.platform)?;
                SafeName::new("format", &artifact.format)?;
            }
        }
        for channel in &index.channels {
            SafeName::new("channel", &channel.name)?;
            SafeName::new("version", &channel.version)?;
            time(&channel.expires_at)?;
        }
        Ok(verified)
    }

    /// A channel's signed document, its history checked, and its expiry
    /// enforced unless `expiry` says otherwise (a writer may replace an
    /// expired document; nobody may run what it says).
    pub fn channel(
        &self,
        trust: &Trust,
        name: &SafeName,
        expiry: ExpirationEnforcement,
        now: OffsetDateTime,
    ) -> Result<Verified<ChannelDocument>, Error> {
        let path = layout::channel(name);
        let verified: Verified<ChannelDocument> = self.verified(
            &path,
            "channel document",
            self.limits.channel,
            trust,
            Kind::Channel,
            name.as_str(),
        )?;
        let doc = &verified.document;
        if doc.channel != name.as_str() {
            return Err(Error::Inconsistent(format!(
                "{} is the document of channel {}",
                self.location(&path),
                layout::shown(&doc.channel)
            )));
        }
        let untrusted = |e| Error::untrusted(self.location(&path), e);
        doc.check_history().map_err(untrusted)?;
        doc.check_expiry(now, expiry).map_err(untrusted)?;
        documents::parse_time(&doc.issued_at, &path).map_err(untrusted)?;
        for entry in &doc.history {
            SafeName::new("version", &entry.version)?;
            documents::parse_time(&entry.since, &path).map_err(untrusted)?;
        }
        if let Some(rollout) = &doc.rollout {
            rollout.check().map_err(untrusted)?;
            documents::parse_time(&rollout.start, &path).map_err(untrusted)?;
            if let Some(paused_at) = &rollout.paused_at {
                documents::parse_time(paused_at, &path).map_err(untrusted)?;
            }
        }
        Ok(verified)
    }

    /// A release's signed release.json; every name in it that becomes a
    /// path (artifacts, platforms) is checked.
    pub fn release(
        &self,
        trust: &Trust,
        version: &SafeName,
    ) -> Result<Verified<ReleaseDocument>, Error> {
        let path = layout::release_document(version);
        let verified: Verified<ReleaseDocument> = self.verified(
            &path,
            "release document",
            self.limits.release,
            trust,
            Kind::Release,
            version.as_str(),
        )?;
        let release = &verified.document;
        if release.version != version.as_str() {
            return Err(Error::Inconsistent(format!(
                "{} describes version {}",
                self.location(&path),
                layout::shown(&release.version)
            )));
        }
        for artifact in &release.artifacts {
            SafeName::new("artifact name", &artifact.name)?;
            SafeName::new("platform", &artifact.platform)?;
        }
        for evidence in &release.evidence {
            SafeName::new("platform", &evidence.platform)?;
        }
        if let Some(certificate) = release.secure_boot_certificate() {
            SafeName::new("Secure Boot certificate", certificate.name)?;
        }
        // A node hands the installed names to systemd-sysupdate as files
        // in its staging directory: they are paths too.
        for file in release.update.iter().flat_map(|u| &u.files) {
            SafeName::new("update file name", &file.name)?;
            SafeName::new("update file name", &file.installed_name)?;
        }
        Ok(verified)
    }

    /// Checks a release's SHA256SUMS: signed, and listing exactly the
    /// digests of its release.json.
    pub fn check_sums(&self, trust: &Trust, release: &ReleaseDocument) -> Result<(), Error> {
        let version = SafeName::new("version", &release.version)?;
        let path = layout::sums(&version);
        let (bytes, signature) = self.signed_pair(&path, "SHA256SUMS", self.limits.sums)?;
        documents::verify_signature(
            &bytes,
            &signature,
            &trust.keys,
            Kind::Release,
            &format!("{version} SHA256SUMS"),
            &path,
        )
        .map_err(|e| Error::untrusted(self.location(&path), e))?;
        if bytes != documents::sha256sums(release).as_bytes() {
            return Err(Error::Inconsistent(format!(
                "{} does not list the digests release.json gives",
                self.location(&path)
            )));
        }
        Ok(())
    }

    /// Follows the chain to the release `selector` names: the index, then
    /// the channel document (unexpired, its serial not below the highest
    /// this machine accepted nor below the index's), then release.json,
    /// whose digest must be the one the channel or the index signed.
    /// Accepting the channel's serial is recorded in `state`.
    pub fn resolve(
        &self,
        trust: &Trust,
        selector: &Selector,
        state: &mut SerialState,
        now: OffsetDateTime,
    ) -> Result<Resolved, Error> {
        // The index, signed separately, also records each channel's
        // serial: a channel document behind it is a rollback even on a
        // first download.
        let index = self.index(trust)?.document;
        let mut channel_document = None;
        let (version, expected, channel) = match selector {
            Selector::Channel { name, version } => {
                let doc = self
                    .channel(trust, name, ExpirationEnforcement::Enforce, now)?
                    .document;
                let identity = self.transport.identity();
                let indexed = index
                    .channels
                    .iter()
                    .find(|c| c.name == name.as_str())
                    .map(|c| c.serial);
                let highest = state.highest(&identity, name.as_str()).max(indexed);
                doc.check_serial(highest)
                    .map_err(|e| Error::untrusted(self.location(&layout::channel(name)), e))?;
                state.accept(&identity, name.as_str(), doc.serial)?;
                let (version, expected) = match version {
                    None => (SafeName::new("version", &doc.version)?, doc.release_sha256),
                    Some(version) => {
                        let entry = doc
                            .history
                            .iter()
                            .rev()
                            .find(|e| e.version == version.as_str())
                            .ok_or_else(|| {
                                Error::Inconsistent(format!(
                                    "channel {name} has never carried {version}"
                                ))
                            })?;
                        (version.clone(), entry.release_sha256)
                    }
                };
                let serial = doc.serial;
                channel_document = Some(doc);
                (version, expected, Some((name.clone(), serial)))
            }
            Selector::Version(version) => {
                let entry = index
                    .releases
                    .iter()
                    .find(|r| r.version == version.as_str())
                    .ok_or_else(|| Error::NotFound {
                        location: self.transport.describe(),
                        detail: format!("the store has no release {version}"),
                    })?;
                (version.clone(), entry.release_sha256, None)
            }
        };
        let release = self.release(trust, &version)?;
        if release.sha256 != expected {
            return Err(Error::Inconsistent(format!(
                "{} has sha256 {}, but the signed channel or index says {expected}",
                self.location(&layout::release_document(&version)),
                release.sha256
            )));
        }
        Ok(Resolved {
            version,
            release,
            channel,
            channel_document,
        })
    }
}
