//! Ed25519 signing keys and their files.
//!
//! The public key file is minisign's format, so an operator can hand it to
//! `minisign -V -p boxcar.pub` as it is. The secret key file is Boxcar's own
//! (minisign's secret keys are password-encrypted; a CI signing key is
//! protected by where it is kept, not by a password typed at a prompt).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Error;

/// minisign's algorithm tag for Ed25519 keys.
const KEY_ALGORITHM: &[u8; 2] = b"Ed";
/// The tag of Boxcar's secret key files.
const SECRET_ALGORITHM: &[u8; 2] = b"BS";

/// A key's id: 8 bytes that signatures name their key by. Boxcar's keys
/// take the first 8 bytes of the SHA-256 of the public key; keys made by
/// stock `minisign -G` have random ones. Shown as 16 uppercase hex digits,
/// as minisign shows its ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn of(public: &VerifyingKey) -> Self {
        let digest = Sha256::digest(public.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }

    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // minisign prints the id as a little-endian integer.
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        let value = u64::from_str_radix(text, 16).map_err(|_| Error::Malformed {
            what: "key id".into(),
            reason: format!("{text:?} is not 16 hexadecimal digits"),
        })?;
        if text.len() != 16 {
            return Err(Error::Malformed {
                what: "key id".into(),
                reason: format!("{text:?} is not 16 hexadecimal digits"),
            });
        }
        Ok(Self(value.to_le_bytes()))
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A public key that signatures are checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    id: KeyId,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether both are the same key, whatever ids they carry.
    pub fn same_key_as(&self, other: &PublicKey) -> bool {
        self.key == other.key
    }

    /// The one-line form: base64 of "Ed", the key id and the key, as in the
    /// second line of a minisign public key file (what `minisign -P` takes).
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(42);
        bytes.extend_from_slice(KEY_ALGORITHM);
        bytes.extend_from_slice(self.id.as_bytes());
        bytes.extend_from_slice(self.key.as_bytes());
        BASE64.encode(bytes)
    }

    /// Parses the one-line form (see [`PublicKey::to_base64`]).
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let malformed = |reason: &str| Error::Malformed {
            what: "public key".into(),
            reason: reason.to_owned(),
        };
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| malformed("not base64"))?;
        if bytes.len() != 42 || &bytes[..2] != KEY_ALGORITHM {
            return Err(malformed(
                "not an Ed25519 minisign public key (42 bytes starting with \"Ed\")",
            ));
        }
        let key_bytes: [u8; 32] = bytes[10..42].try_into().expect("32 bytes");
        let key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| malformed("not a valid Ed25519 point"))?;
        // minisign picks a key's id at random when it makes the key; Boxcar
        // derives it from the key. Either is the key's id: signatures name
        // it, and a signature must then verify with the key itself.
        let id = KeyId(bytes[2..10].try_into().expect("8 bytes"));
        Ok(Self { id, key })
    }

    /// The contents of a minisign public key file.
    pub fn to_file_text(&self) -> String {
        format!(
            "untrusted comment: boxcar public key {}\n{}\n",
            self.id,
            self.to_base64()
        )
    }

    /// Parses a minisign public key file (or just its key line).
    pub fn from_file_text(text: &str) -> Result<Self, Error> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| Error::Malformed {
                what: "public key file".into(),
                reason: "it holds no key line".into(),
            })?;
        Self::from_base64(line)
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = read_text(path)?;
        Self::from_file_text(&text).map_err(|e| e.in_file(path))
    }
}

/// The public key files (`*.pub`) in a key directory, sorted by name; none
/// when the directory does not exist.
pub fn public_key_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Anything that can sign: a key file today, a KMS or hardware token later.
pub trait Sign {
    fn key_id(&self) -> KeyId;
    fn public_key(&self) -> PublicKey;
    fn sign(&self, message: &[u8]) -> [u8; 64];
}

/// A secret key held in memory, from a key file.
pub struct SecretKey {
    key: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public.id)
    }
}

impl SecretKey {
    /// A new key from the kernel's random number generator.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|source| Error::Io {
                what: "/dev/urandom".into(),
                source,
            })?;
        Ok(Self::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let verifying = key.verifying_key();
        let public = PublicKey {
            id: KeyId::of(&verifying),
            key: verifying,
        };
        Self { key, public }
    }

    /// The contents of a secret key file.
    pub fn to_file_text(&self) -> String {
        let mut bytes = Vec::with_capacity(42);
        bytes.extend_from_slice(SECRET_ALGORITHM);
        bytes.extend_from_slice(self.public.id.as_bytes());
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "untrusted comment: boxcar secret key {} (keep it private; never commit it)\n{}\n",
            self.public.id,
            BASE64.encode(bytes)
        )
    }

    pub fn from_file_text(text: &str) -> Result<Self, Error> {
        let malformed = |reason: &str| Error::Malformed {
            what: "secret key".into(),
            reason: reason.to_owned(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| malformed("it holds no key line"))?;
        let bytes = BASE64.decode(line).map_err(|_| malformed("not base64"))?;
        if bytes.len() != 42 || &bytes[..2] != SECRET_ALGORITHM {
            return Err(malformed(
                "not a boxcar secret key (42 bytes starting with \"BS\")",
            ));
        }
        let key = Self::from_seed(bytes[10..42].try_into().expect("32 bytes"));
        if key.public.id.as_bytes() != &bytes[2..10] {
            return Err(malformed("its key id does not belong to its key"));
        }
        Ok(key)
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = read_text(path)?;
        Self::from_file_text(&text).map_err(|e| e.in_file(path))
    }
}

impl Sign for SecretKey {
    fn key_id(&self) -> KeyId {
        self.public.id
    }

    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip() {
        let secret = SecretKey::generate().unwrap();
        let again = SecretKey::from_file_text(&secret.to_file_text()).unwrap();
        assert_eq!(again.public_key(), secret.public_key());
        let public = PublicKey::from_file_text(&secret.public_key().to_file_text()).unwrap();
        assert_eq!(public, secret.public_key());
        assert_eq!(PublicKey::from_base64(&public.to_base64()).unwrap(), public);
        assert_eq!(
            public.id().to_string().parse::<KeyId>().unwrap(),
            public.id()
        );
    }

    #[test]
    fn different_keys_have_different_ids() {
        assert_ne!(
            SecretKey::from_seed([1; 32]).key_id(),
            SecretKey::from_seed([2; 32]).key_id()
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(PublicKey::from_base64("not base64!").is_err());
        assert!(PublicKey::from_file_text("untrusted comment: x\n").is_err());
        let public = SecretKey::from_seed([3; 32]).public_key();
        let mut bytes = BASE64.decode(public.to_base64()).unwrap();
        bytes[3] ^= 1; // the same key under another id, as minisign allows
        let relabelled = PublicKey::from_base64(&BASE64.encode(&bytes)).unwrap();
        assert_ne!(relabelled.id(), public.id());
        // A public key is not a secret key, and the other way round.
        assert!(SecretKey::from_file_text(&public.to_file_text()).is_err());
        assert!(PublicKey::from_file_text(&SecretKey::from_seed([3; 32]).to_file_text()).is_err());
    }
}
