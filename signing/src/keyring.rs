//! `keys.json`: who may sign what in a store, and how that changes over
//! the years. The design follows TUF's root role:
//!
//! - **Root keys**, kept offline, sign only the keyring. A keyring names
//!   them and how many of them must sign (the threshold).
//! - **Signing keys** sign everything else: releases, SHA256SUMS, channel
//!   documents, the index. A key not listed here (any more) signs nothing
//!   a reader accepts.
//! - Every keyring has a serial, an issue time and an expiry. The next
//!   keyring (serial + 1) replaces it whole, so keys can be removed, and
//!   must be signed by the threshold of the previous root *and* of its own
//!   root: a root rotation is signed by both the old and the new root.
//!   Every version stays in the store (`keys/<serial>.json`), so a reader
//!   that pinned a root key several rotations ago walks forward to the
//!   current one.
//! - A reader starts from keys it pinned, never from what a keyring says of
//!   itself: the first keyring it accepts must be signed, to its own root's
//!   threshold, by root keys the reader pinned. A keyring that lists its
//!   author among the roots and signs itself vouches for nothing. It is the
//!   oldest such version, not the newest: a removed root, or one root of
//!   several, can sign a new version alone, but not its place in the chain.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::documents::{parse_time, trusted_comment, ExpirationEnforcement, Kind};
use crate::keys::{KeyId, PublicKey};
use crate::minisig::{self, TrustedKeys};
use crate::Error;

/// The keyring's schema. Version 1 (one flat list of keys, trusted by
/// whoever signed it) was replaced because it could not remove a key.
pub const KEYRING_SCHEMA: u32 = 2;

/// The subject of a keyring's signatures' trusted comment.
pub const KEYRING_SUBJECT: &str = "keys";

/// `keys.json` (and `keys/<serial>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringDocument {
    pub schema: u32,
    /// One more than the keyring it replaces; the first is 1.
    pub serial: u64,
    pub issued_at: String,
    /// After this, readers refuse the keyring (and so the store): root
    /// holders must renew it, which shows they still hold the keys.
    pub expires_at: String,
    /// The keys that sign keyrings.
    pub root: Role,
    /// The keys that sign releases, channel documents and the index.
    pub signing: Role,
}

/// A set of keys and how many of them must sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub threshold: u32,
    pub keys: Vec<KeyringEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringEntry {
    pub key_id: KeyId,
    /// The public key, as the second line of its minisign file.
    pub public_key: String,
    pub added_at: String,
    /// Who holds it, or why it is here.
    pub note: String,
}

impl KeyringEntry {
    pub fn new(key: &PublicKey, added_at: &str, note: &str) -> Self {
        Self {
            key_id: key.id(),
            public_key: key.to_base64(),
            added_at: added_at.to_owned(),
            note: note.to_owned(),
        }
    }
}

/// Who must have signed a keyring for a reader to accept it.
#[derive(Clone, Copy, Debug)]
pub enum Authority<'a> {
    /// The first keyring a reader accepts: its own root's threshold of
    /// signatures, counting only root keys the reader pinned.
    Pinned(&'a TrustedKeys),
    /// The keyring after `previous`: the previous root's threshold and its
    /// own root's threshold, and a serial one higher.
    Successor(&'a KeyringDocument),
}

fn malformed(reason: String) -> Error {
    Error::Malformed {
        what: "keys.json".into(),
        reason,
    }
}

impl Role {
    /// The role's keys, checked: each entry's id is its key's, no id or key
    /// twice, and a threshold between 1 and the number of keys. (A key id
    /// is not signed: one key listed again under another id would count
    /// twice towards the threshold with a relabelled copy of its signature.)
    pub fn trusted(&self, name: &str) -> Result<TrustedKeys, Error> {
        let mut keys = TrustedKeys::default();
        let mut loaded: Vec<PublicKey> = Vec::new();
        for entry in &self.keys {
            let key = PublicKey::from_base64(&entry.public_key)?;
            if key.id() != entry.key_id {
                return Err(malformed(format!(
                    "{name} entry {} holds the key {}",
                    entry.key_id,
                    key.id()
                )));
            }
            if keys.get(key.id()).is_some() {
                return Err(malformed(format!("{name} lists key {} twice", key.id())));
            }
            if let Some(twin) = loaded.iter().find(|k| k.same_key_as(&key)) {
                return Err(malformed(format!(
                    "{name} lists one key twice, as {} and as {}",
                    twin.id(),
                    key.id()
                )));
            }
            loaded.push(key.clone());
            keys.add(key);
        }
        if self.threshold == 0 || self.threshold as usize > self.keys.len() {
            return Err(malformed(format!(
                "its {name} threshold is {} with {} keys",
                self.threshold,
                self.keys.len()
            )));
        }
        Ok(keys)
    }

    /// Counts the role's keys among `signers` against its threshold.
    fn require(&self, name: &str, signers: &[KeyId], among: &TrustedKeys) -> Result<(), Error> {
        let counted: Vec<KeyId> = signers
            .iter()
            .copied()
            .filter(|id| among.get(*id).is_some() && self.keys.iter().any(|k| k.key_id == *id))
            .collect();
        if (counted.len() as u32) < self.threshold {
            return Err(Error::Threshold {
                what: format!("keys.json: {name}"),
                needed: self.threshold,
                found: counted,
            });
        }
        Ok(())
    }
}

impl KeyringDocument {
    /// The root keys, checked.
    pub fn root_keys(&self) -> Result<TrustedKeys, Error> {
        self.root.trusted("root")
    }

    /// The keys that sign releases, channel documents and the index.
    pub fn signing_keys(&self) -> Result<TrustedKeys, Error> {
        self.signing.trusted("signing")
    }

    /// Refuses an expired keyring (under [`ExpirationEnforcement::Enforce`]).
    pub fn check_expiry(
        &self,
        now: OffsetDateTime,
        enforcement: ExpirationEnforcement,
    ) -> Result<(), Error> {
        let expires = parse_time(&self.expires_at, "keys.json")?;
        if enforcement == ExpirationEnforcement::Enforce && now > expires {
            return Err(Error::Expired {
                what: format!("keys.json (serial {})", self.serial),
                expired_at: self.expires_at.clone(),
            });
        }
        Ok(())
    }

    /// Refuses a keyring older than one already seen.
    pub fn check_serial(&self, seen: Option<u64>) -> Result<(), Error> {
        match seen {
            Some(seen) if self.serial < seen => Err(Error::Rollback {
                what: "keys.json".into(),
                found: self.serial,
                seen,
            }),
            _ => Ok(()),
        }
    }

    /// A keyring's bytes read and its roles checked, its signatures not:
    /// for a keyring verified before (see [`KeyringDocument::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<KeyringDocument, Error> {
        let keyring: KeyringDocument =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        if keyring.schema != KEYRING_SCHEMA {
            return Err(malformed(format!(
                "its schema is {}, this reader knows {KEYRING_SCHEMA}",
                keyring.schema
            )));
        }
        keyring.root_keys()?;
        keyring.signing_keys()?;
        Ok(keyring)
    }

    /// Checks a keyring's bytes and signatures against `authority` (see
    /// [`Authority`]); its expiry is the caller's to check.
    pub fn verify(
        bytes: &[u8],
        signatures: &str,
        authority: Authority,
    ) -> Result<KeyringDocument, Error> {
        let keyring = Self::parse(bytes)?;
        let own_root = keyring.root_keys()?;
        let comment = trusted_comment(Kind::Keyring, KEYRING_SUBJECT);
        let signers_among = |keys: &TrustedKeys| -> Vec<KeyId> {
            minisig::valid_signers(bytes, signatures, keys)
                .into_iter()
                .filter(|v| v.trusted_comment == comment)
                .map(|v| v.key_id)
                .collect()
        };
        match authority {
            Authority::Pinned(pinned) => {
                let pinned_roots = TrustedKeys::new(
                    own_root
                        .ids()
                        .into_iter()
                        .filter_map(|id| pinned.get(id).cloned()),
                );
                let signers = signers_among(&pinned_roots);
                keyring
                    .root
                    .require("root keys you pinned", &signers, &pinned_roots)?;
            }
            Authority::Successor(previous) => {
                if keyring.serial != previous.serial + 1 {
                    return Err(malformed(format!(
                        "serial {} does not follow serial {}",
                        keyring.serial, previous.serial
                    )));
                }
                let previous_root = previous.root_keys()?;
                let signers = signers_among(&previous_root);
                previous
                    .root
                    .require("the previous keyring's root", &signers, &previous_root)?;
                let signers = signers_among(&own_root);
                keyring.root.require("its own root", &signers, &own_root)?;
            }
        }
        Ok(keyring)
    }
}

/// Signs keyring bytes with each of `roots`; returns the signature file
/// holding all of them.
pub fn sign_keyring(bytes: &[u8], roots: &[&dyn crate::Sign]) -> Result<String, Error> {
    let comment = trusted_comment(Kind::Keyring, KEYRING_SUBJECT);
    let mut text = String::new();
    for root in roots {
        text.push_str(&minisig::sign(*root, bytes, &comment)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::to_bytes;
    use crate::keys::{SecretKey, Sign};

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32])
    }

    fn role(threshold: u32, keys: &[&SecretKey]) -> Role {
        Role {
            threshold,
            keys: keys
                .iter()
                .map(|k| KeyringEntry::new(&k.public_key(), "2026-12-01T00:00:00Z", "test"))
                .collect(),
        }
    }

    fn keyring(serial: u64, root: Role, signing: Role) -> KeyringDocument {
        KeyringDocument {
            schema: KEYRING_SCHEMA,
            serial,
            issued_at: "2026-12-01T00:00:00Z".into(),
            expires_at: "2027-12-01T00:00:00Z".into(),
            root,
            signing,
        }
    }

    fn signed(doc: &KeyringDocument, by: &[&SecretKey]) -> (Vec<u8>, String) {
        let bytes = to_bytes(doc);
        let signers: Vec<&dyn Sign> = by.iter().map(|k| *k as &dyn Sign).collect();
        let signatures = sign_keyring(&bytes, &signers).unwrap();
        (bytes, signatures)
    }

    #[test]
    fn a_keyring_is_accepted_only_from_pinned_roots() {
        let (root, ci, attacker) = (key(1), key(2), key(3));
        let pinned = TrustedKeys::new([root.public_key()]);
        let first = keyring(1, role(1, &[&root]), role(1, &[&ci]));
        let (bytes, sigs) = signed(&first, &[&root]);
        assert_eq!(
            KeyringDocument::verify(&bytes, &sigs, Authority::Pinned(&pinned)).unwrap(),
            first
        );
        // The self-vouching keyring: it lists the pinned root beside its
        // author's key and is signed by its author only.
        let forged = keyring(2, role(1, &[&root, &attacker]), role(1, &[&attacker]));
        let (bytes, sigs) = signed(&forged, &[&attacker]);
        let err = KeyringDocument::verify(&bytes, &sigs, Authority::Pinned(&pinned)).unwrap_err();
        assert!(matches!(err, Error::Threshold { .. }), "{err}");
        let err = KeyringDocument::verify(&bytes, &sigs, Authority::Successor(&first)).unwrap_err();
        assert!(matches!(err, Error::Threshold { .. }), "{err}");
    }

    #[test]
    fn a_root_rotation_needs_both_roots_and_thresholds_count_distinct_keys() {
        let (old_a, old_b, new) = (key(1), key(2), key(4));
        let first = keyring(1, role(2, &[&old_a, &old_b]), role(1, &[&new]));
        let next = keyring(2, role(1, &[&new]), role(1, &[&new]));
        // Only the old root: the new root has not agreed.
        let (bytes, sigs) = signed(&next, &[&old_a, &old_b]);
        assert!(KeyringDocument::verify(&bytes, &sigs, Authority::Successor(&first)).is_err());
        // One old root key twice is still one key, short of two.
        let (bytes, sigs) = signed(&next, &[&old_a, &old_a, &new]);
        assert!(KeyringDocument::verify(&bytes, &sigs, Authority::Successor(&first)).is_err());
        let (bytes, sigs) = signed(&next, &[&old_a, &old_b, &new]);
        assert!(KeyringDocument::verify(&bytes, &sigs, Authority::Successor(&first)).is_ok());
        // A serial that skips is refused.
        let skipping = keyring(3, role(1, &[&new]), role(1, &[&new]));
        let (bytes, sigs) = signed(&skipping, &[&old_a, &old_b, &new]);
        assert!(KeyringDocument::verify(&bytes, &sigs, Authority::Successor(&first)).is_err());
    }

    /// A root of two entries that are one key: the second under another id.
    fn relabelled_twin(key: &SecretKey) -> Role {
        let mut role = role(2, &[key, key]);
        use base64::{engine::general_purpose::STANDARD, Engine};
        let mut blob = STANDARD.decode(&role.keys[1].public_key).unwrap();
        blob[2] ^= 0xff;
        let twin = PublicKey::from_base64(&STANDARD.encode(&blob)).unwrap();
        role.keys[1] = KeyringEntry::new(&twin, "2026-12-01T00:00:00Z", "twin");
        role
    }

    #[test]
    fn malformed_roles_are_refused() {
        let root = key(1);
        let pinned = TrustedKeys::new([root.public_key()]);
        for bad in [
            keyring(1, role(0, &[&root]), role(1, &[&root])),
            keyring(1, role(2, &[&root]), role(1, &[&root])),
            keyring(1, role(1, &[&root, &root]), role(1, &[&root])),
            keyring(1, relabelled_twin(&root), role(1, &[&root])),
            keyring(1, role(1, &[&root]), role(1, &[])),
        ] {
            let (bytes, sigs) = signed(&bad, &[&root]);
            assert!(KeyringDocument::verify(&bytes, &sigs, Authority::Pinned(&pinned)).is_err());
        }
    }

    #[test]
    fn expiry_and_rollback() {
        let root = key(1);
        let doc = keyring(3, role(1, &[&root]), role(1, &[&root]));
        assert!(doc
            .check_expiry(
                time::macros::datetime!(2027-12-02 00:00 UTC),
                ExpirationEnforcement::Enforce
            )
            .is_err());
        assert!(doc.check_serial(Some(3)).is_ok());
        assert!(doc.check_serial(Some(4)).is_err());
    }
}
