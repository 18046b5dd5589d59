//! The store's signed metadata, as writers make it: channel documents, the
//! index and the keyring. A writer reads what is there through the same
//! client code readers use (checking every signature against the trust it
//! starts from), works out the next document, signs it, replaces it
//! together with its signature, and reads it back.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use boxcar_client::error::found;
use boxcar_client::layout::{self, SafeName};
use boxcar_client::{Client, NetworkSettings, Trust, Verified};
use boxcar_signing::documents::{
    self, ChannelDocument, ChannelEntry, ExpirationEnforcement, IndexChannel, IndexDocument,
    IndexRelease, KeyringDocument, KeyringEntry, Kind, ReleaseDocument,
};
use boxcar_signing::{PublicKey, Sha256Digest, Sign, TrustedKeys};
use time::OffsetDateTime;

use super::backend::StoreBackend;
use crate::channel::ChannelConfig;

/// A client reading the store a writer is about to change. The store is
/// local to the writer or its own backend: no retries are needed.
pub fn reader(store: &dyn StoreBackend) -> Client {
    Client::new(
        store.reader(),
        NetworkSettings::default(),
        Arc::new(boxcar_client::Silent),
    )
}

/// The keys a writer (holding `signer`) trusts in `store`: its own and,
/// when the store has a keyring, the keys it lists. The keyring must be
/// signed by one of its own keys and list the writer's key.
pub fn writer_trust(store: &dyn StoreBackend, signer: &dyn Sign) -> Result<Trust> {
    let mut trusted = TrustedKeys::new([signer.public_key()]);
    let client = reader(store);
    let location = client.location(layout::KEYRING);
    let Some((bytes, signature)) =
        found(client.signed_pair(layout::KEYRING, "keyring", client.limits().keyring))?
    else {
        return Ok(Trust::of(trusted));
    };
    let listed: KeyringDocument =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {location}"))?;
    let mut own = TrustedKeys::default();
    for entry in &listed.keys {
        own.add(PublicKey::from_base64(&entry.public_key)?);
    }
    KeyringDocument::extend_trust(&bytes, &signature, &mut own)
        .with_context(|| format!("checking {location}"))?;
    if own.get(signer.key_id()).is_none() {
        bail!(
            "key {} is not listed in {location}; introduce it with `boxcar keys add`, signed by a key readers trust",
            signer.key_id(),
        );
    }
    for id in own.ids() {
        trusted.add(own.get(id).expect("listed").clone());
    }
    Ok(Trust {
        keys: trusted,
        keyring: Some(listed),
    })
}

/// A channel's current document, checked; `None` if the channel has none
/// yet. Expiry is not enforced: a writer may replace an expired document.
pub fn read_channel(
    client: &Client,
    trust: &Trust,
    name: &str,
    now: OffsetDateTime,
) -> Result<Option<ChannelDocument>> {
    let name = SafeName::new("channel", name)?;
    Ok(
        found(client.channel(trust, &name, ExpirationEnforcement::Unsafe, now))?
            .map(|verified| verified.document),
    )
}

/// A published release's release.json, checked.
pub fn read_release(
    client: &Client,
    trust: &Trust,
    version: &str,
) -> Result<Verified<ReleaseDocument>> {
    let version = SafeName::new("version", version)?;
    found(client.release(trust, &version))?.with_context(|| {
        format!(
            "release {version} is not published in {}",
            client.transport().describe()
        )
    })
}

/// The channel document that points `config`'s channel at `version`, after
/// `previous`.
pub fn next_channel_document(
    config: &ChannelConfig,
    previous: Option<&ChannelDocument>,
    version: &str,
    release_sha256: Sha256Digest,
    now: OffsetDateTime,
) -> ChannelDocument {
    let serial = previous.map_or(1, |p| p.serial + 1);
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
    }
}

/// Points a channel at a published release: writes the next channel
/// document, then reads it back and checks it. Returns the new serial.
pub fn point_channel(
    store: &dyn StoreBackend,
    signer: &dyn Sign,
    config: &ChannelConfig,
    version: &str,
    release_sha256: Sha256Digest,
    now: OffsetDateTime,
) -> Result<u64> {
    let trust = writer_trust(store, signer)?;
    let client = reader(store);
    let previous = read_channel(&client, &trust, config.name.as_str(), now)?;
    let document = next_channel_document(config, previous.as_ref(), version, release_sha256, now);
    write_channel(store, signer, &document)?;
    check_written(&client, &trust, &document, now)?;
    Ok(document.serial)
}

/// Reads a channel document back after writing it: it must be what was
/// written, signed.
pub fn check_written(
    client: &Client,
    trust: &Trust,
    written: &ChannelDocument,
    now: OffsetDateTime,
) -> Result<()> {
    let read = read_channel(client, trust, &written.channel, now)?
        .context("the channel document vanished after writing it")?;
    if &read != written {
        bail!(
            "channels/{}.json reads back differently from what was written",
            written.channel
        );
    }
    Ok(())
}

/// Signs and writes a channel document.
pub fn write_channel(
    store: &dyn StoreBackend,
    signer: &dyn Sign,
    document: &ChannelDocument,
) -> Result<()> {
    let name = SafeName::new("channel", &document.channel)?;
    let bytes = documents::to_bytes(document);
    let signature = documents::sign_bytes(signer, &bytes, Kind::Channel, &document.channel)?;
    store.replace_document(&layout::channel(&name), &bytes, &signature)
}

/// Rewrites index.json from the store's releases and channels.
pub fn write_index(
    store: &dyn StoreBackend,
    signer: &dyn Sign,
    now: OffsetDateTime,
) -> Result<IndexDocument> {
    let trust = writer_trust(store, signer)?;
    let client = reader(store);
    let previous_serial = found(client.index(&trust))?.map_or(0, |index| index.document.serial);
    let mut versions = store.list_releases()?;
    versions.sort_by(|a, b| boxcar_client::version::compare(a.as_str(), b.as_str()));
    let mut releases = Vec::new();
    for version in versions {
        let release = read_release(&client, &trust, version.as_str())?;
        releases.push(IndexRelease {
            version: version.to_string(),
            published_at: release.document.published_at,
            release_sha256: release.sha256,
            artifacts: release.document.artifacts,
        });
    }
    let mut channels = Vec::new();
    for name in store.list_channels()? {
        if let Some(doc) = read_channel(&client, &trust, name.as_str(), now)? {
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
        issued_at: documents::format_time(now),
        releases,
        channels,
    };
    let bytes = documents::to_bytes(&index);
    let signature = documents::sign_bytes(signer, &bytes, Kind::Index, "index")?;
    store.replace_document(layout::INDEX, &bytes, &signature)?;
    Ok(index)
}

/// Adds `new_key` to the store's keyring, signed by `signer` (a key the
/// readers already trust), so installs that pinned `signer`'s key learn it.
pub fn add_key(
    store: &dyn StoreBackend,
    signer: &dyn Sign,
    new_key: &PublicKey,
    note: &str,
    now: OffsetDateTime,
) -> Result<KeyringDocument> {
    let client = reader(store);
    let trust = client.trust(&TrustedKeys::new([signer.public_key()]))?;
    let mut keys = trust
        .keyring
        .as_ref()
        .map(|k| k.keys.clone())
        .unwrap_or_default();
    if keys.iter().any(|k| k.key_id == new_key.id()) {
        bail!(
            "key {} is already in {}",
            new_key.id(),
            client.location(layout::KEYRING)
        );
    }
    if keys.is_empty() {
        keys.push(KeyringEntry {
            key_id: signer.key_id(),
            public_key: signer.public_key().to_base64(),
            added_at: documents::format_time(now),
            note: "the key that signed this keyring first".to_owned(),
        });
    }
    keys.push(KeyringEntry {
        key_id: new_key.id(),
        public_key: new_key.to_base64(),
        added_at: documents::format_time(now),
        note: note.to_owned(),
    });
    let keyring = KeyringDocument {
        schema: documents::SCHEMA_VERSION,
        serial: trust.keyring.as_ref().map_or(1, |p| p.serial + 1),
        issued_at: documents::format_time(now),
        keys,
    };
    let bytes = documents::to_bytes(&keyring);
    let signature = documents::sign_bytes(signer, &bytes, Kind::Keyring, "keys")?;
    store.replace_document(layout::KEYRING, &bytes, &signature)?;
    Ok(keyring)
}
