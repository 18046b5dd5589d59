//! The store's signed metadata, as writers make it: channel documents and
//! the index (the keyring has its own module).
//!
//! A [`Writer`] starts from the same trust a reader has: the keys it is
//! configured to pin (the store's root keys) and its own, followed through
//! the store's keyring exactly as a client follows it. It never builds on
//! a document that does not verify against that trust (a channel document
//! or index planted by someone who can write files into the store is an
//! error, not a base for the next serial), and it refuses to sign with a
//! key the keyring does not list: readers would refuse what it signs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use boxcar_client::error::found;
use boxcar_client::layout::{self, SafeName};
use boxcar_client::{Client, NetworkSettings, Trust, Verified};
use boxcar_signing::documents::{
    self, ChannelDocument, ChannelEntry, ExpirationEnforcement, IndexChannel, IndexDocument,
    IndexRelease, Kind, ReleaseDocument,
};
use boxcar_signing::{Sha256Digest, Sign, TrustedKeys};
use time::OffsetDateTime;

use super::backend::{retrying_conflicts, Expect, StoreBackend};
use crate::channel::ChannelConfig;

/// A client reading the store a writer is about to change. The store is
/// the writer's own backend: no retries are needed.
pub fn reader(store: &dyn StoreBackend) -> Client {
    Client::new(
        store.reader(),
        NetworkSettings::default(),
        Arc::new(boxcar_client::Silent),
    )
}

/// A writer at work on a store, holding its lock.
///
/// It replaces only documents it has read, as it read them: each read of a
/// channel document or the index records what was there, and the write
/// that follows expects exactly that ([`Expect`]). Another writer's change
/// in between makes the write fail with a conflict rather than be lost.
pub struct Writer<'a> {
    pub store: &'a dyn StoreBackend,
    pub signer: &'a dyn Sign,
    pub trust: Trust,
    pub client: Client,
    pub now: OffsetDateTime,
    /// What each document path held when this writer last read it.
    read: RefCell<HashMap<String, Expect>>,
}

/// How many times the index is rebuilt when other writers keep changing it.
const INDEX_ATTEMPTS: u32 = 10;

impl<'a> Writer<'a> {
    /// A writer signing with `signer`, trusting what `pinned` (the store's
    /// root keys, as configured) and its own key lead to. Refuses an
    /// expired keyring and a signer the keyring does not list.
    pub fn new(
        store: &'a dyn StoreBackend,
        signer: &'a dyn Sign,
        pinned: &TrustedKeys,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let client = reader(store);
        let mut anchors = pinned.clone();
        anchors.add(signer.public_key());
        let trust = client
            .trust(&anchors, ExpirationEnforcement::Unsafe, now, None)
            .context(
                "following the store's keyring from the keys this writer trusts \
                 (pass the store's root public key with --trust, or set BOXCAR_TRUSTED_KEYS)",
            )?;
        if let Some(keyring) = &trust.keyring {
            keyring.check_expiry(now, ExpirationEnforcement::Enforce).context(
                "readers refuse the store until its keyring is renewed: run `boxcar keys renew` with the root keys",
            )?;
            if trust.keys.get(signer.key_id()).is_none() {
                bail!(
                    "key {} is not a signing key in {} (serial {}): readers would refuse what it signs; add it with `boxcar keys add --role signing`",
                    signer.key_id(),
                    client.location(layout::KEYRING),
                    keyring.serial
                );
            }
        }
        Ok(Self {
            store,
            signer,
            trust,
            client,
            now,
            read: RefCell::new(HashMap::new()),
        })
    }

    /// Records what `path` held when it was read.
    fn saw(&self, path: &str, sha256: Option<Sha256Digest>) {
        let expect = sha256.map_or(Expect::Absent, Expect::Sha256);
        self.read.borrow_mut().insert(path.to_owned(), expect);
    }

    /// What a write of `path` expects: what this writer read there (a
    /// document it never read must not exist yet).
    fn expected(&self, path: &str) -> Expect {
        self.read
            .borrow()
            .get(path)
            .cloned()
            .unwrap_or(Expect::Absent)
    }

    /// A channel's current document, checked; `None` if the channel has
    /// none yet. Expiry is not enforced: a writer may replace an expired
    /// document.
    pub fn read_channel(&self, name: &str) -> Result<Option<ChannelDocument>> {
        let name = SafeName::new("channel", name)?;
        let path = layout::channel(&name);
        let verified =
            found(
                self.client
                    .channel(&self.trust, &name, ExpirationEnforcement::Unsafe, self.now),
            )
            .map_err(|e| self.not_building_on(&path, e))?;
        self.saw(&path, verified.as_ref().map(|v| v.sha256));
        Ok(verified.map(|verified| verified.document))
    }

    /// The signed index; `None` if the store has none yet.
    pub fn read_index(&self) -> Result<Option<IndexDocument>> {
        let verified = found(self.client.index(&self.trust))
            .map_err(|e| self.not_building_on(layout::INDEX, e))?;
        self.saw(layout::INDEX, verified.as_ref().map(|v| v.sha256));
        Ok(verified.map(|verified| verified.document))
    }

    /// Why a writer stops at a document it cannot verify.
    fn not_building_on(&self, path: &str, error: boxcar_client::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "{error}\n{} does not verify against the store's keys, so no writer builds on it: \
             it may have been planted by someone who can write to the store. Investigate, \
             then restore it from a backup or remove it (the next document continues from \
             the serial the index records)",
            self.client.location(path)
        )
    }

    /// A published release's release.json, checked.
    pub fn read_release(&self, version: &str) -> Result<Verified<ReleaseDocument>> {
        let version = SafeName::new("version", version)?;
        found(self.client.release(&self.trust, &version))?.with_context(|| {
            format!(
                "release {version} is not published in {}",
                self.client.transport().describe()
            )
        })
    }

    /// The serial the next document of channel `name` gets: one above both
    /// its current document's and what the index records, so a removed or
    /// restored document never makes a serial go back.
    pub fn next_serial(&self, name: &str, previous: Option<&ChannelDocument>) -> Result<u64> {
        let indexed = self
            .read_index()?
            .and_then(|index| index.channels.into_iter().find(|c| c.name == name))
            .map_or(0, |c| c.serial);
        Ok(previous.map_or(0, |p| p.serial).max(indexed) + 1)
    }

    /// Points a channel at a published release: writes the document after
    /// `previous` (what this writer read last, and judged), then reads it
    /// back and checks it. Returns the new serial.
    pub fn point_channel(
        &self,
        config: &ChannelConfig,
        previous: Option<&ChannelDocument>,
        version: &str,
        release_sha256: Sha256Digest,
    ) -> Result<u64> {
        let serial = self.next_serial(config.name.as_str(), previous)?;
        let document =
            next_channel_document(config, previous, serial, version, release_sha256, self.now);
        self.write_channel(&document)?;
        self.check_written(&document)?;
        Ok(document.serial)
    }

    /// Reads a channel document back after writing it: it must be what was
    /// written, signed (or a later one another writer built on it).
    pub fn check_written(&self, written: &ChannelDocument) -> Result<()> {
        let read = self
            .read_channel(&written.channel)?
            .context("the channel document vanished after writing it")?;
        // Another writer may already have built on this one (object
        // storage has no lock): a later serial whose history holds ours.
        let built_on = read.serial > written.serial
            && read
                .history
                .iter()
                .any(|e| e.serial == written.serial && e.version == written.version);
        if &read != written && !built_on {
            bail!(
                "channels/{}.json reads back differently from what was written (serial {} pointing at {} written, serial {} pointing at {} read)",
                written.channel,
                written.serial,
                written.version,
                read.serial,
                read.version
            );
        }
        Ok(())
    }

    /// Signs and writes a channel document.
    pub fn write_channel(&self, document: &ChannelDocument) -> Result<()> {
        let name = SafeName::new("channel", &document.channel)?;
        let path = layout::channel(&name);
        let bytes = documents::to_bytes(document);
        let signature =
            documents::sign_bytes(self.signer, &bytes, Kind::Channel, &document.channel)?;
        self.store
            .replace_document(&path, &bytes, &signature, &self.expected(&path))
    }

    /// Rewrites index.json from the store's releases and channels. The
    /// index is derived from them, so when another writer replaced it in
    /// between, it is simply built again from what is there now.
    pub fn write_index(&self) -> Result<IndexDocument> {
        retrying_conflicts(
            INDEX_ATTEMPTS,
            std::time::Duration::from_millis(50),
            &|_, _| {},
            || self.write_index_once(),
        )
    }

    fn write_index_once(&self) -> Result<IndexDocument> {
        let previous_serial = self.read_index()?.map_or(0, |index| index.serial);
        let mut versions = self.store.list_releases()?;
        versions.sort_by(|a, b| boxcar_client::version::compare(a.as_str(), b.as_str()));
        let mut releases = Vec::new();
        for version in versions {
            let release = self.read_release(version.as_str())?;
            releases.push(IndexRelease {
                version: version.to_string(),
                published_at: release.document.published_at,
                release_sha256: release.sha256,
                artifacts: release.document.artifacts,
            });
        }
        let mut channels = Vec::new();
        for name in self.store.list_channels()? {
            if let Some(doc) = self.read_channel(name.as_str())? {
                channels.push(IndexChannel {
                    name: name.to_string(),
                    version: doc.version,
                    serial: doc.serial,
                    expires_at: doc.expires_at,
                });
            }
        }
        let index = IndexDocument {
            schema: documents::SCHEMA_VERSION,
            serial: previous_serial + 1,
            issued_at: documents::format_time(self.now),
            releases,
            channels,
        };
        let bytes = documents::to_bytes(&index);
        let signature = documents::sign_bytes(self.signer, &bytes, Kind::Index, "index")?;
        self.store.replace_document(
            layout::INDEX,
            &bytes,
            &signature,
            &self.expected(layout::INDEX),
        )?;
        Ok(index)
    }
}

/// Whether a channel may be pointed at an older release than it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Downgrade {
    /// Refused: a channel only moves forward unless someone asks.
    Refuse,
    /// Allowed (`--allow-downgrade`): a channel rolled back on purpose.
    Allow,
}

impl Downgrade {
    /// From an `--allow-downgrade` flag.
    pub fn allowed_if(flag: bool) -> Self {
        if flag {
            Self::Allow
        } else {
            Self::Refuse
        }
    }
}

/// Checks that pointing `channel` from `current` to `version` does not take
/// it to an older release, or that `downgrade` allows that. Returns whether
/// it does (allowed), for the caller to report. Publish and promote both
/// move channels, and both go through here.
pub fn check_downgrade(
    channel: &str,
    current: &str,
    version: &str,
    downgrade: Downgrade,
) -> Result<bool> {
    if boxcar_client::version::compare(version, current).is_ge() {
        return Ok(false);
    }
    if downgrade == Downgrade::Refuse {
        bail!(
            "pointing {channel} at {version} would downgrade it from {current}; pass --allow-downgrade if that is the intent"
        );
    }
    Ok(true)
}

/// The channel document that points `config`'s channel at `version` with
/// `serial`, after `previous`.
pub fn next_channel_document(
    config: &ChannelConfig,
    previous: Option<&ChannelDocument>,
    serial: u64,
    version: &str,
    release_sha256: Sha256Digest,
    now: OffsetDateTime,
) -> ChannelDocument {
    let mut history = previous.map(|p| p.history.clone()).unwrap_or_default();
    history.push(ChannelEntry {
        serial,
        version: version.to_owned(),
        release_sha256,
        since: documents::format_time(now),
    });
    ChannelDocument {
        schema: documents::SCHEMA_VERSION,
        channel: config.name.to_string(),
        serial,
        issued_at: documents::format_time(now),
        expires_at: documents::format_time(now + config.valid_for.to_std()),
        version: version.to_owned(),
        release_sha256,
        history,
        // A new release starts its waves from the first.
        rollout: Some(config.rollout.starting(&documents::format_time(now))),
    }
}
