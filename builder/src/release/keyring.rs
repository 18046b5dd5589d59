//! Changing a store's keyring: the first one, a key added or removed, a
//! root rotated, a threshold changed, an expiry renewed. Only root keys
//! sign keyrings; see `boxcar_signing::keyring` for the rules readers
//! apply, which this module checks before it writes anything.
//!
//! Every version is kept as `keys/<serial>.json` (created once, never
//! replaced), and `keys.json` is replaced by the newest, so that readers
//! who pinned an old root can walk forward through every rotation.

use anyhow::{bail, Context, Result};
use boxcar_client::error::found;
use boxcar_client::layout;
use boxcar_signing::documents::{self, ExpirationEnforcement};
use boxcar_signing::keyring::{
    sign_keyring, Authority, KeyringDocument, KeyringEntry, Role, KEYRING_SCHEMA,
};
use boxcar_signing::{KeyId, PublicKey, SecretKey, Sign, TrustedKeys};
use serde::Serialize;
use time::OffsetDateTime;

use super::backend::{Expect, StoreBackend};
use super::documents::reader;
use crate::duration::HumanDuration;

/// Which keys a key is listed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Signs keyrings only; kept offline.
    Root,
    /// Signs releases, channel documents and the index.
    Signing,
}

/// What to change.
#[derive(Clone, Debug)]
pub enum Change {
    /// The store's first keyring: the root keys that sign the request are
    /// its root; these are its signing keys.
    Init { signing: Vec<PublicKey> },
    /// List a key in a role.
    Add {
        key: Box<PublicKey>,
        role: KeyRole,
        note: String,
    },
    /// Remove a key from every role it is in.
    Remove { key_id: KeyId },
    /// The same keys, with a new expiry.
    Renew,
}

/// A keyring change and who signs it.
pub struct KeyringRequest {
    /// The root secret keys that sign the new keyring: enough of the
    /// current root's, and (when the root changes) of the new root's.
    pub roots: Vec<SecretKey>,
    pub change: Change,
    /// The root threshold of the new keyring; `None` keeps the current one
    /// (1 for a first keyring).
    pub threshold: Option<u32>,
    /// How long the new keyring is valid.
    pub valid_for: HumanDuration,
}

/// Writes the next keyring. `pinned` are the root keys the caller trusts
/// besides the roots it signs with.
pub fn change(
    store: &dyn StoreBackend,
    pinned: &TrustedKeys,
    request: &KeyringRequest,
    now: OffsetDateTime,
) -> Result<KeyringDocument> {
    if request.roots.is_empty() {
        bail!("no root key: pass --root FILE (one for each root key that must sign)");
    }
    let mut anchors = pinned.clone();
    for root in &request.roots {
        anchors.add(root.public_key());
    }
    let client = reader(store);
    let current = client
        .trust(&anchors, ExpirationEnforcement::Unsafe, now, None)
        .context("following the store's keyring from the root keys given")?
        .keyring;
    let next = next_keyring(current.as_ref(), request, now)?;
    // Proof of possession: a key that becomes a root signs the keyring
    // that makes it one (a mistyped key would lock the store out later).
    if let Change::Add {
        key,
        role: KeyRole::Root,
        ..
    } = &request.change
    {
        if !request.roots.iter().any(|r| r.key_id() == key.id()) {
            bail!(
                "a new root key must sign the keyring that adds it: pass its secret key with --root too"
            );
        }
    }
    let bytes = documents::to_bytes(&next);
    let signers: Vec<&dyn Sign> = request.roots.iter().map(|k| k as &dyn Sign).collect();
    let signatures = sign_keyring(&bytes, &signers)?;
    let authority = match &current {
        Some(current) => Authority::Successor(current),
        None => Authority::Pinned(&anchors),
    };
    KeyringDocument::verify(&bytes, &signatures, authority).context(
        "the new keyring would not be accepted by readers: it needs the threshold of the current root keys and of its own root keys",
    )?;
    let version = layout::keyring_version(next.serial);
    if found(client.document(&version, "keyring", client.limits().keyring))?.is_some() {
        bail!(
            "{} exists already: another keyring has this serial",
            client.location(&version)
        );
    }
    // The versioned copy is created only where none is: of two writers
    // making the same serial, one wins. keys.json then follows it.
    store.replace_document(&version, &bytes, &signatures, &Expect::Absent)?;
    store.replace_document(layout::KEYRING, &bytes, &signatures, &Expect::Anything)?;
    let read_back = reader(store)
        .trust(&anchors, ExpirationEnforcement::Enforce, now, None)
        .context("reading the new keyring back")?;
    if read_back.keyring.as_ref() != Some(&next) {
        bail!("keys.json reads back differently from what was written");
    }
    Ok(next)
}

/// The keyring after `current` (or the first one).
fn next_keyring(
    current: Option<&KeyringDocument>,
    request: &KeyringRequest,
    now: OffsetDateTime,
) -> Result<KeyringDocument> {
    let added_at = documents::format_time(now);
    let (mut root, mut signing, serial) = match (current, &request.change) {
        (None, Change::Init { signing }) => {
            let root = Role {
                threshold: 1,
                keys: request
                    .roots
                    .iter()
                    .map(|k| KeyringEntry::new(&k.public_key(), &added_at, "root"))
                    .collect(),
            };
            let signing = Role {
                threshold: 1,
                keys: signing
                    .iter()
                    .map(|k| KeyringEntry::new(k, &added_at, "signing"))
                    .collect(),
            };
            (root, signing, 1)
        }
        (Some(current), Change::Init { .. }) => bail!(
            "the store has a keyring already (serial {}); change it with `boxcar keys add`, `remove` or `renew`",
            current.serial
        ),
        (None, _) => bail!("the store has no keyring yet; make the first with `boxcar keys init`"),
        (Some(current), change) => {
            let (mut root, mut signing) = (current.root.clone(), current.signing.clone());
            apply(change, &mut root, &mut signing, &added_at)?;
            (root, signing, current.serial + 1)
        }
    };
    if let Some(threshold) = request.threshold {
        root.threshold = threshold;
    }
    signing.threshold = 1;
    if signing.keys.is_empty() {
        bail!("the keyring would have no signing key left: add the new one first");
    }
    if root.keys.is_empty() || root.threshold as usize > root.keys.len() || root.threshold == 0 {
        bail!(
            "the keyring would have a root threshold of {} with {} root keys; pass --threshold",
            root.threshold,
            root.keys.len()
        );
    }
    let expires = now + request.valid_for.to_std();
    Ok(KeyringDocument {
        schema: KEYRING_SCHEMA,
        serial,
        issued_at: added_at,
        expires_at: documents::format_time(expires),
        root,
        signing,
    })
}

/// Applies an add, remove or renew to the roles.
fn apply(change: &Change, root: &mut Role, signing: &mut Role, added_at: &str) -> Result<()> {
    match change {
        Change::Init { .. } => unreachable!("handled by the caller"),
        Change::Renew => {}
        Change::Add { key, role, note } => {
            let target = match role {
                KeyRole::Root => root,
                KeyRole::Signing => signing,
            };
            if target.keys.iter().any(|k| k.key_id == key.id()) {
                bail!("key {} is already a {role:?} key", key.id());
            }
            target.keys.push(KeyringEntry::new(key, added_at, note));
        }
        Change::Remove { key_id } => {
            let before = root.keys.len() + signing.keys.len();
            root.keys.retain(|k| k.key_id != *key_id);
            signing.keys.retain(|k| k.key_id != *key_id);
            if root.keys.len() + signing.keys.len() == before {
                bail!("key {key_id} is not in the keyring");
            }
        }
    }
    Ok(())
}

/// Loads the root secret keys named on the command line.
pub fn load_roots(paths: &[std::path::PathBuf]) -> Result<Vec<SecretKey>> {
    paths
        .iter()
        .map(|path| {
            SecretKey::load(path).with_context(|| format!("loading root key {}", path.display()))
        })
        .collect()
}
