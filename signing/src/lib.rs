//! Trust primitives for Boxcar Linux releases.
//!
//! Everything an operator or a node needs to decide whether a file is what
//! the maintainers published: digests computed while streaming, and (as the
//! crate grows) canonical documents and their signatures. It depends on no
//! build tooling so that it can be audited and trusted on its own.

pub mod digest;

pub use digest::{data_regions, sha256_file, sha256_reader, DigestingReader, Sha256Digest};

/// Failures a caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the data to digest failed.
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A digest string is not 64 hexadecimal digits.
    #[error("invalid sha256 digest {text:?}: expected 64 hexadecimal digits")]
    InvalidDigest { text: String },
    /// Data did not hash to the digest it was expected to have.
    #[error("digest mismatch for {what}: expected sha256 {expected}, calculated {calculated}")]
    DigestMismatch {
        what: String,
        expected: Sha256Digest,
        calculated: Sha256Digest,
    },
}
