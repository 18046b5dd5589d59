//! The store's signed metadata: channel documents, the index and the
//! keyring. Writers read what is there (checking its signature), change it,
//! write it as a pair with its signature, and read it back.

use std::path::Path;

use anyhow::{bail, Context, Result};
use boxcar_signing::documents::{
    self, ChannelDocument, ChannelEntry, IndexChannel, IndexDocument, IndexRelease,
    KeyringDocument, KeyringEntry, Kind, ReleaseDocument,
};
use boxcar_signing::{PublicKey, Sha256Digest, Sign, TrustedKeys};
use time::OffsetDateTime;

use crate::channel::ChannelConfig;
use crate::store::Store;

/// The keys a writer (holding `signer`) trusts in `store`: its own and,
/// when the store has a keyring, the keys it lists. The keyring must be
/// signed by one of its own keys and list the writer's key. (Readers check
/// it against the keys they pinned; see [`extend_with_keyring`].)
pub fn writer_trust(store: &Store, signer: &dyn Sign) -> Result<TrustedKeys> {
    let mut trusted = TrustedKeys::new([signer.public_key()]);
    let path = keyring_path(store);
    let Some((bytes, signature)) = store.read_signed(&path)? else {
        return Ok(trusted);
    };
    let listed: KeyringDocument =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let mut own = TrustedKeys::default();
    for entry in &listed.keys {
        own.add(PublicKey::from_base64(&entry.public_key)?);
    }
    KeyringDocument::extend_trust(&bytes, &signature, &mut own)
        .with_context(|| format!("checking {}", path.display()))?;
    if own.get(signer.key_id()).is_none() {
        bail!(
            "key {} is not listed in {}; introduce it with `boxcar keys add`, signed by a key readers trust",
            signer.key_id(),
            path.display()
        );
    }
    for id in own.ids() {
        trusted.add(own.get(id).expect("listed").clone());
    }
    Ok(trusted)
}

/// Adds the keys of the store's keyring, if it has one that a trusted key
/// signed. A keyring nobody trusted signed is an error.
pub fn extend_with_keyring(
    store: &Store,
    trusted: &mut TrustedKeys,
) -> Result<Option<KeyringDocument>> {
    let path = store.root.join("keys.json");
    let Some((bytes, signature)) = store.read_signed(&path)? else {
        return Ok(None);
    };
    let keyring = KeyringDocument::extend_trust(&bytes, &signature, trusted)
        .with_context(|| format!("checking {}", path.display()))?;
    Ok(Some(keyring))
}

/// Reads and checks a channel document (signature, history); `None` if the
/// channel has none yet. Expiry is not enforced here: a writer may replace
/// an expired document.
pub fn read_channel(
    store: &Store,
    name: &str,
    trusted: &TrustedKeys,
) -> Result<Option<ChannelDocument>> {
    let path = store.channel_path(name);
    let Some((bytes, signature)) = store.read_signed(&path)? else {
        return Ok(None);
    };
    let what = format!("channels/{name}.json");
    let (doc, _): (ChannelDocument, _) =
        documents::verify(&bytes, &signature, trusted, Kind::Channel, name, &what)?;
    if doc.channel != name {
        bail!("{what} is the document of channel {}", doc.channel);
    }
    doc.check_history()?;
    Ok(Some(doc))
}

/// Reads and checks a release's release.json; returns it with the digest
/// of its bytes.
pub fn read_release(
    store: &Store,
    version: &str,
    trusted: &TrustedKeys,
) -> Result<(ReleaseDocument, Sha256Digest)> {
    let path = store.release_dir(version).join("release.json");
    let Some((bytes, signature)) = store.read_signed(&path)? else {
        bail!(
            "release {version} is not published in {}",
            store.root.display()
        );
    };
    let what = format!("releases/{version}/release.json");
    let (release, _): (ReleaseDocument, _) =
        documents::verify(&bytes, &signature, trusted, Kind::Release, version, &what)?;
    if release.version != version {
        bail!("{what} describes version {}", release.version);
    }
    let digest = boxcar_signing::sha256_reader(&bytes[..])?.0;
    Ok((release, digest))
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
    store: &Store,
    signer: &dyn Sign,
    config: &ChannelConfig,
    version: &str,
    release_sha256: Sha256Digest,
    now: OffsetDateTime,
) -> Result<u64> {
    let trusted = writer_trust(store, signer)?;
    let previous = read_channel(store, config.name.as_str(), &trusted)?;
    let document = next_channel_document(config, previous.as_ref(), version, release_sha256, now);
    write_channel(store, signer, &document)?;
    let written = read_channel(store, config.name.as_str(), &trusted)?
        .context("the channel document vanished after writing it")?;
    if written != document {
        bail!(
            "channels/{}.json reads back differently from what was written",
            config.name
        );
    }
    Ok(document.serial)
}

/// Signs and writes a channel document.
pub fn write_channel(store: &Store, signer: &dyn Sign, document: &ChannelDocument) -> Result<()> {
    let bytes = documents::to_bytes(document);
    let signature = documents::sign_bytes(signer, &bytes, Kind::Channel, &document.channel)?;
    store.replace_signed(&store.channel_path(&document.channel), &bytes, &signature)
}

/// Rewrites index.json from the store's releases and channels.
pub fn write_index(store: &Store, signer: &dyn Sign, now: OffsetDateTime) -> Result<IndexDocument> {
    let trusted = writer_trust(store, signer)?;
    let path = store.root.join("index.json");
    let previous_serial = match store.read_signed(&path)? {
        Some((bytes, signature)) => {
            let (previous, _): (IndexDocument, _) = documents::verify(
                &bytes,
                &signature,
                &trusted,
                Kind::Index,
                "index",
                "index.json",
            )?;
            previous.serial
        }
        None => 0,
    };
    let mut versions = store.versions()?;
    versions.sort_by(|a, b| compare_versions(a, b));
    let mut releases = Vec::new();
    for version in versions {
        let (release, release_sha256) = read_release(store, &version, &trusted)?;
        releases.push(IndexRelease {
            version,
            published_at: release.published_at,
            release_sha256,
            artifacts: release.artifacts,
        });
    }
    let mut channels = Vec::new();
    for name in channel_names(store)? {
        if let Some(doc) = read_channel(store, &name, &trusted)? {
            channels.push(IndexChannel {
                name,
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
    store.replace_signed(&path, &bytes, &signature)?;
    Ok(index)
}

/// The channels that have a document in the store, sorted.
pub fn channel_names(store: &Store) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(store.root.join("channels"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(channel) = name.strip_suffix(".json") {
            if !channel.starts_with('.') {
                names.push(channel.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Adds `new_key` to the store's keyring, signed by `signer` (a key the
/// readers already trust), so installs that pinned `signer`'s key learn it.
pub fn add_key(
    store: &Store,
    signer: &dyn Sign,
    new_key: &PublicKey,
    note: &str,
    now: OffsetDateTime,
) -> Result<KeyringDocument> {
    let mut trusted = TrustedKeys::new([signer.public_key()]);
    let previous = extend_with_keyring(store, &mut trusted)?;
    let mut keys = previous
        .as_ref()
        .map(|k| k.keys.clone())
        .unwrap_or_default();
    if keys.iter().any(|k| k.key_id == new_key.id()) {
        bail!(
            "key {} is already in {}",
            new_key.id(),
            store.root.join("keys.json").display()
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
        serial: previous.map_or(1, |p| p.serial + 1),
        issued_at: documents::format_time(now),
        keys,
    };
    let bytes = documents::to_bytes(&keyring);
    let signature = documents::sign_bytes(signer, &bytes, Kind::Keyring, "keys")?;
    store.replace_signed(&store.root.join("keys.json"), &bytes, &signature)?;
    Ok(keyring)
}

/// Orders versions the way systemd and Debian do for ours: dot-separated
/// numbers compared numerically, other parts as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let split =
        |v: &str| -> Vec<String> { v.split(['.', '-', '+', '~']).map(str::to_owned).collect() };
    let (a_parts, b_parts) = (split(a), split(b));
    for (x, y) in a_parts.iter().zip(&b_parts) {
        let ordering = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if ordering.is_ne() {
            return ordering;
        }
    }
    a_parts.len().cmp(&b_parts.len())
}

/// A keyring document's path in a store, for messages.
pub fn keyring_path(store: &Store) -> std::path::PathBuf {
    store.root.join("keys.json")
}

/// Loads the trusted keys an operator names: public key files.
pub fn load_public_keys(paths: &[impl AsRef<Path>]) -> Result<TrustedKeys> {
    let mut trusted = TrustedKeys::default();
    for path in paths {
        let path = path.as_ref();
        trusted.add(
            PublicKey::load(path)
                .with_context(|| format!("loading public key {}", path.display()))?,
        );
    }
    Ok(trusted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_order_numerically() {
        assert_eq!(
            compare_versions("2026.1122.040506", "2026.1122.120506"),
            Less
        );
        assert_eq!(compare_versions("1.10", "1.9"), Greater);
        assert_eq!(compare_versions("1.0", "1.0"), Equal);
        assert_eq!(compare_versions("1.0", "1.0.1"), Less);
    }
}
