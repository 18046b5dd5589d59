//! Trust primitives for Boxcar Linux releases.
//!
//! Everything an operator or a node needs to decide whether a file is what
//! the maintainers published: digests computed while streaming, and (as the
//! crate grows) canonical documents and their signatures. It depends on no
//! build tooling so that it can be audited and trusted on its own.

pub mod digest;
pub mod documents;
pub mod keyring;
pub mod keys;
pub mod minisig;
pub mod usr_signature;

pub use digest::{
    data_regions, sha256_bytes, sha256_file, sha256_reader, DigestingReader, Hasher, Sha256Digest,
};
pub use keys::{KeyId, PublicKey, SecretKey, Sign};
pub use minisig::{TrustedKeys, Verified};
pub use usr_signature::UsrSignature;

fn list_keys(keys: &[KeyId]) -> String {
    if keys.is_empty() {
        "none".to_owned()
    } else {
        keys.iter()
            .map(KeyId::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Error {
    /// Names the document a signature error is about.
    pub fn about(self, what: &str) -> Self {
        match self {
            Error::Malformed {
                what: inner,
                reason,
            } => Error::Malformed {
                what: format!("{inner} of {what}"),
                reason,
            },
            Error::BadSignature { key_id } => Error::Document {
                what: what.to_owned(),
                cause: Box::new(Error::BadSignature { key_id }),
            },
            Error::UnknownKey { key_id, trusted } => Error::Document {
                what: what.to_owned(),
                cause: Box::new(Error::UnknownKey { key_id, trusted }),
            },
            other => other,
        }
    }

    /// Names the file an error was found in.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::Malformed { what, reason } => Error::Malformed {
                what: format!("{what} in {}", path.display()),
                reason,
            },
            other => other,
        }
    }
}

/// Failures a caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed. The io error is the source, not part of this
    /// message, so a caller printing the error chain sees it once.
    #[error("reading {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A digest string is not 64 hexadecimal digits.
    #[error("invalid sha256 digest {text:?}: expected 64 hexadecimal digits")]
    InvalidDigest { text: String },
    /// A key, signature or document is not in the expected form.
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    /// A signature does not match its document (or its trusted comment).
    #[error("bad signature by key {key_id}: the document or the signature was changed")]
    BadSignature { key_id: KeyId },
    /// A signature by a key that is not trusted.
    #[error("signed by key {key_id}, which is not trusted (trusted: {})", list_keys(.trusted))]
    UnknownKey { key_id: KeyId, trusted: Vec<KeyId> },
    /// A document whose validity ended.
    #[error("{what} expired at {expired_at}")]
    Expired { what: String, expired_at: String },
    /// A document older than one already seen.
    #[error("{what} has serial {found}, older than serial {seen} already seen: a rollback")]
    Rollback { what: String, found: u64, seen: u64 },
    /// A signature problem, with the document it concerns. (The inner
    /// error is part of the message, not a separate cause, so that error
    /// chains do not print it twice.)
    #[error("{what}: {cause}")]
    Document { what: String, cause: Box<Error> },
    /// Fewer distinct trusted keys signed than a threshold requires.
    #[error("{what}: needs {needed} signatures, has {} ({})", found.len(), list_keys(found))]
    Threshold {
        what: String,
        needed: u32,
        found: Vec<KeyId>,
    },
    /// Data did not hash to the digest it was expected to have.
    #[error("digest mismatch for {what}: expected sha256 {expected}, calculated {calculated}")]
    DigestMismatch {
        what: String,
        expected: Sha256Digest,
        calculated: Sha256Digest,
    },
}
