//! The /usr root hash signature partition (`usr-verity-sig` in the
//! Discoverable Partitions Specification), as systemd-repart writes it: a
//! JSON object, `{"rootHash", "certificateFingerprint", "signature"}`, the
//! signature a detached PKCS#7 (DER, base64) over the root hash in hex,
//! padded with zeros to the partition's size.
//!
//! The build reads it to record and check what it signed, the node agent
//! to check an update's signature names the update's /usr. The kernel is
//! what verifies the signature at boot (the initrd hands it over); an
//! unsigned build's partition is all zeros.

use base64::Engine;
use serde::Deserialize;

/// Largest signature partition read: systemd-repart makes them 16 KiB.
pub const MAX_PARTITION_BYTES: usize = 1024 * 1024;

/// A root hash signature, as read from its partition.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsrSignature {
    /// The verity root hash it signs (hex, lowercase).
    pub root_hash: String,
    /// The SHA-256 fingerprint (hex) of the signer's certificate.
    pub certificate_fingerprint: String,
    /// The PKCS#7 signature, base64.
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsrSignatureError {
    #[error("the signature partition is {0} bytes, more than any signature partition holds")]
    TooLarge(usize),
    #[error("the signature partition holds no JSON signature object: {0}")]
    Malformed(String),
    #[error("the signature partition's signature is not base64")]
    NotBase64,
    #[error("reading the signature partition: {0}")]
    Io(String),
}

impl UsrSignature {
    /// Reads a signature partition image from `path`, refusing one larger
    /// than any signature partition before reading it.
    pub fn read_file(path: &std::path::Path) -> Result<Option<Self>, UsrSignatureError> {
        let io = |e: std::io::Error| UsrSignatureError::Io(format!("{}: {e}", path.display()));
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_PARTITION_BYTES as u64 {
            return Err(UsrSignatureError::TooLarge(size as usize));
        }
        Self::parse(&std::fs::read(path).map_err(io)?)
    }

    /// Reads a signature partition's bytes: `None` when it is empty (all
    /// zeros, an unsigned build's).
    pub fn parse(partition: &[u8]) -> Result<Option<Self>, UsrSignatureError> {
        if partition.len() > MAX_PARTITION_BYTES {
            return Err(UsrSignatureError::TooLarge(partition.len()));
        }
        let end = partition
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        if end == 0 {
            return Ok(None);
        }
        let mut signature: Self = serde_json::from_slice(&partition[..end])
            .map_err(|e| UsrSignatureError::Malformed(e.to_string()))?;
        signature.root_hash = signature.root_hash.to_ascii_lowercase();
        signature.certificate_fingerprint = signature.certificate_fingerprint.to_ascii_lowercase();
        signature.der()?;
        Ok(Some(signature))
    }

    /// The PKCS#7 signature itself (DER), what the kernel checks.
    pub fn der(&self) -> Result<Vec<u8>, UsrSignatureError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| UsrSignatureError::NotBase64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(json: &str) -> Vec<u8> {
        let mut bytes = json.as_bytes().to_vec();
        bytes.resize(16384, 0);
        bytes
    }

    #[test]
    fn reads_what_repart_writes() {
        let bytes =
            partition(r#"{"rootHash":"AB12","certificateFingerprint":"E9F9","signature":"MIIE"}"#);
        let signature = UsrSignature::parse(&bytes).unwrap().unwrap();
        assert_eq!(signature.root_hash, "ab12");
        assert_eq!(signature.certificate_fingerprint, "e9f9");
        assert_eq!(signature.der().unwrap(), [0x30, 0x82, 0x04]);
    }

    #[test]
    fn files_are_read_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usr-verity-sig.raw");
        std::fs::write(&path, [0; 16384]).unwrap();
        assert_eq!(UsrSignature::read_file(&path).unwrap(), None);
        std::fs::write(&path, vec![0; MAX_PARTITION_BYTES + 1]).unwrap();
        assert_eq!(
            UsrSignature::read_file(&path),
            Err(UsrSignatureError::TooLarge(MAX_PARTITION_BYTES + 1))
        );
        assert!(matches!(
            UsrSignature::read_file(&dir.path().join("missing")),
            Err(UsrSignatureError::Io(_))
        ));
    }

    #[test]
    fn an_empty_partition_is_unsigned() {
        assert_eq!(UsrSignature::parse(&[0; 16384]).unwrap(), None);
        assert_eq!(UsrSignature::parse(&[]).unwrap(), None);
    }

    #[test]
    fn anything_else_is_refused() {
        assert!(matches!(
            UsrSignature::parse(&partition("garbage")),
            Err(UsrSignatureError::Malformed(_))
        ));
        assert!(matches!(
            UsrSignature::parse(&partition(r#"{"rootHash":"ab"}"#)),
            Err(UsrSignatureError::Malformed(_))
        ));
        let bad = r#"{"rootHash":"ab","certificateFingerprint":"cd","signature":"!!"}"#;
        assert_eq!(
            UsrSignature::parse(&partition(bad)),
            Err(UsrSignatureError::NotBase64)
        );
        assert_eq!(
            UsrSignature::parse(&vec![1; MAX_PARTITION_BYTES + 1]),
            Err(UsrSignatureError::TooLarge(MAX_PARTITION_BYTES + 1))
        );
    }
}
