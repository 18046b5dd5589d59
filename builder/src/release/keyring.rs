//! Changing a store's keyring: the first one, a key added or removed, a
//! root rotated, a threshold changed, an expiry renewed. Only root keys
//! sign keyrings; see `boxcar_signing::keyring` for the rules readers
//! apply, which this module checks before it writes anything.
//!
//! Every version is kept as `keys/<serial>.json` (created once, never
//! replaced), and `keys.json` is replaced by the newest, so that readers
//! who pinned an old root can walk forward through every rotation. A change
//! killed between the two writes is finished by the next one.

use anyhow::{bail, Context, Result};
use boxcar_client::error::{found, ErrorKind};
use boxcar_client::layout;
use boxcar_signing::documents::{self, ExpirationEnforcement};
use boxcar_signing::keyring::{
    sign_keyring, Authority, KeyringDocument, KeyringEntry, Role, KEYRING_SCHEMA,
};
use boxcar_signing::{KeyId, PublicKey, SecretKey, Sign, TrustedKeys};
use serde::Serialize;
use time::OffsetDateTime;

use super::backend::{crash_point, Expect, StoreBackend};
use super::documents::reader;
use crate::duration::HumanDuration;
use crate::progress::Progress;

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
    progress: &Progress,
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
    finish_interrupted(store, current.as_ref(), &anchors, now, progress)?;
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
    // The versioned copy is created only where none is: of two writers
    // making the same serial, one wins. keys.json then follows it.
    let version = layout::keyring_version(next.serial);
    store.replace_document(&version, &bytes, &signatures, &Expect::Absent)?;
    crash_point("keyring-before-current");
    let signed = (bytes.as_slice(), signatures.as_str());
    make_current(
        store,
        &next,
        signed,
        &anchors,
        now,
        ExpirationEnforcement::Enforce,
    )?;
    Ok(next)
}

/// Replaces keys.json with `keyring` (`signed`: its bytes and signatures),
/// then reads it back from `anchors` as a reader would.
fn make_current(
    store: &dyn StoreBackend,
    keyring: &KeyringDocument,
    (bytes, signatures): (&[u8], &str),
    anchors: &TrustedKeys,
    now: OffsetDateTime,
    expiry: ExpirationEnforcement,
) -> Result<()> {
    store.replace_document(layout::KEYRING, bytes, signatures, &Expect::Anything)?;
    let read_back = reader(store)
        .trust(anchors, expiry, now, None)
        .context("reading the new keyring back")?;
    if read_back.keyring.as_ref() != Some(keyring) {
        bail!("keys.json reads back differently from what was written");
    }
    Ok(())
}

/// A change killed between writing `keys/N.json` and keys.json leaves
/// serial N taken while keys.json is still N-1, and every later change
/// (an emergency removal too) would stop at it. When that version is the
/// current keyring's successor, signed as readers require, the earlier
/// change is finished (keys.json follows it) and this one stops: the
/// operator decides on their own change against the keyring now in place.
/// Anything else at that serial is refused, saying what to do.
fn finish_interrupted(
    store: &dyn StoreBackend,
    current: Option<&KeyringDocument>,
    anchors: &TrustedKeys,
    now: OffsetDateTime,
    progress: &Progress,
) -> Result<()> {
    let client = reader(store);
    let serial = current.map_or(1, |c| c.serial + 1);
    let version = layout::keyring_version(serial);
    let (location, keys_json) = (client.location(&version), client.location(layout::KEYRING));
    let blocked = |why: anyhow::Error| {
        let expected = match current {
            Some(c) => format!(
                "the successor of {keys_json} (serial {}), signed by the root keys of both",
                c.serial
            ),
            None => "a first keyring signed by the root keys given or pinned".to_owned(),
        };
        anyhow::anyhow!(
            "{location} exists already, but it is not {expected}: {why:#}. It was not left by an \
             interrupted keyring change, and no keyring change can be made while it holds serial \
             {serial}. Readers ignore it (keys.json does not lead to it). Investigate it (someone \
             who can write to the store may have planted it), move it and its signature out of \
             the store, and run the command again"
        )
    };
    let limit = client.limits().keyring;
    let (bytes, signatures) = match found(client.signed_pair(&version, "keyring", limit)) {
        Ok(None) => return Ok(()),
        Ok(Some(pair)) => pair,
        // No signature, too large: not a version a writer made.
        Err(e) if e.kind() == ErrorKind::Reject => return Err(blocked(e.into())),
        Err(e) => return Err(e).with_context(|| format!("reading {location}")),
    };
    let authority = match current {
        Some(current) => Authority::Successor(current),
        None => Authority::Pinned(anchors),
    };
    let keyring =
        KeyringDocument::verify(&bytes, &signatures, authority).map_err(|e| blocked(e.into()))?;
    if keyring.serial != serial {
        return Err(blocked(anyhow::anyhow!("it has serial {}", keyring.serial)));
    }
    progress.note(&format!(
        "{location} is a keyring change that was interrupted before {keys_json} followed it; finishing it"
    ));
    // Expired or not, it is what the interrupted change made: the operator
    // renews it next if need be.
    let signed = (bytes.as_slice(), signatures.as_str());
    make_current(
        store,
        &keyring,
        signed,
        anchors,
        now,
        ExpirationEnforcement::Unsafe,
    )?;
    bail!(
        "finished an interrupted keyring change: {keys_json} is now serial {serial} ({}). \
         The change you asked for was not made: check it against this keyring, and run the \
         command again if it is still needed",
        describe(&keyring)
    )
}

/// The keys of a keyring and its expiry, in a line.
fn describe(keyring: &KeyringDocument) -> String {
    let ids = |role: &Role| -> String {
        let ids: Vec<String> = role.keys.iter().map(|k| k.key_id.to_string()).collect();
        format!("{} (threshold {})", ids.join(", "), role.threshold)
    };
    format!(
        "root keys {}; signing keys {}; expires {}",
        ids(&keyring.root),
        ids(&keyring.signing),
        keyring.expires_at
    )
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
