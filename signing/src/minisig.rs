//! Detached signatures in minisign's format, so that a stock `minisign -V`
//! accepts them: Ed25519 over the BLAKE2b-512 of the document (minisign's
//! "prehashed" mode), plus a global signature binding a trusted comment.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use blake2::{Blake2b512, Digest};
use ed25519_dalek::Signature;

use crate::keys::{KeyId, PublicKey, Sign};
use crate::Error;

/// minisign's tag for prehashed (BLAKE2b-512) Ed25519 signatures.
const PREHASHED: &[u8; 2] = b"ED";

/// The public keys a verifier trusts.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut trusted = Self::default();
        for key in keys {
            trusted.add(key);
        }
        trusted
    }

    pub fn add(&mut self, key: PublicKey) {
        if !self.keys.iter().any(|k| k.id() == key.id()) {
            self.keys.push(key);
        }
    }

    pub fn get(&self, id: KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.id() == id)
    }

    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(PublicKey::id).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a good signature told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub key_id: KeyId,
    /// The signed comment (Boxcar puts the document's name and kind there).
    pub trusted_comment: String,
}

/// Signs `message`, returning the text of its `.minisig` file.
pub fn sign(signer: &dyn Sign, message: &[u8], trusted_comment: &str) -> Result<String, Error> {
    if trusted_comment.contains(['\n', '\r']) {
        return Err(Error::Malformed {
            what: "trusted comment".into(),
            reason: "it must be one line".into(),
        });
    }
    let signature = signer.sign(&Blake2b512::digest(message));
    let mut global_message = signature.to_vec();
    global_message.extend_from_slice(trusted_comment.as_bytes());
    let global = signer.sign(&global_message);
    let mut first = Vec::with_capacity(74);
    first.extend_from_slice(PREHASHED);
    first.extend_from_slice(signer.key_id().as_bytes());
    first.extend_from_slice(&signature);
    Ok(format!(
        "untrusted comment: signature from boxcar key {}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
        signer.key_id(),
        BASE64.encode(first),
        BASE64.encode(global)
    ))
}

/// The key id a signature file names, without checking anything else (to
/// report which key signed a document nobody trusts).
pub fn signer_of(signature_text: &str) -> Result<KeyId, Error> {
    Ok(parse(signature_text)?.key_id)
}

struct Parsed {
    key_id: KeyId,
    signature: [u8; 64],
    trusted_comment: String,
    global: [u8; 64],
}

fn parse(text: &str) -> Result<Parsed, Error> {
    let malformed = |reason: &str| Error::Malformed {
        what: "signature".into(),
        reason: reason.to_owned(),
    };
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 4 || !lines[0].starts_with("untrusted comment:") {
        return Err(malformed("not a minisign signature file (four lines)"));
    }
    let first = BASE64
        .decode(lines[1].trim())
        .map_err(|_| malformed("its signature line is not base64"))?;
    if first.len() != 74 {
        return Err(malformed("its signature line has the wrong length"));
    }
    if &first[..2] != PREHASHED {
        return Err(malformed("not a prehashed (BLAKE2b) Ed25519 signature"));
    }
    let trusted_comment = lines[2]
        .strip_prefix("trusted comment: ")
        .ok_or_else(|| malformed("its third line is not a trusted comment"))?
        .to_owned();
    let global = BASE64
        .decode(lines[3].trim())
        .map_err(|_| malformed("its global signature is not base64"))?;
    Ok(Parsed {
        key_id: KeyId::from_bytes(first[2..10].try_into().expect("8 bytes")),
        signature: first[10..74].try_into().expect("64 bytes"),
        trusted_comment,
        global: global
            .try_into()
            .map_err(|_| malformed("its global signature has the wrong length"))?,
    })
}

/// The signatures in a signature file that holds several, one after
/// another (a keyring signed by several root keys). Each is four lines,
/// from its "untrusted comment:" line; stock minisign reads the first.
pub fn split(signatures: &str) -> Vec<String> {
    let mut each: Vec<String> = Vec::new();
    for line in signatures.lines() {
        if line.starts_with("untrusted comment:") || each.is_empty() {
            each.push(String::new());
        }
        let current = each.last_mut().expect("one started");
        current.push_str(line);
        current.push('\n');
    }
    each
}

/// The distinct trusted keys whose signatures of `message` in the file
/// `signatures` hold. Signatures by other keys, bad ones and malformed
/// ones are ignored: the caller counts what is left against a threshold.
pub fn valid_signers(message: &[u8], signatures: &str, trusted: &TrustedKeys) -> Vec<Verified> {
    let mut found: Vec<Verified> = Vec::new();
    for text in split(signatures) {
        if let Ok(verified) = verify(message, &text, trusted) {
            if !found.iter().any(|f| f.key_id == verified.key_id) {
                found.push(verified);
            }
        }
    }
    found
}

/// Checks a signature of `message` against the trusted keys: the key must
/// be trusted, and both the signature and the global signature (over the
/// trusted comment) must hold.
pub fn verify(
    message: &[u8],
    signature_text: &str,
    trusted: &TrustedKeys,
) -> Result<Verified, Error> {
    let parsed = parse(signature_text)?;
    let key = trusted
        .get(parsed.key_id)
        .ok_or_else(|| Error::UnknownKey {
            key_id: parsed.key_id,
            trusted: trusted.ids(),
        })?;
    let verifying = key.verifying_key();
    verifying
        .verify_strict(
            &Blake2b512::digest(message),
            &Signature::from_bytes(&parsed.signature),
        )
        .map_err(|_| Error::BadSignature {
            key_id: parsed.key_id,
        })?;
    let mut global_message = parsed.signature.to_vec();
    global_message.extend_from_slice(parsed.trusted_comment.as_bytes());
    verifying
        .verify_strict(&global_message, &Signature::from_bytes(&parsed.global))
        .map_err(|_| Error::BadSignature {
            key_id: parsed.key_id,
        })?;
    Ok(Verified {
        key_id: parsed.key_id,
        trusted_comment: parsed.trusted_comment,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn several_signatures_in_one_file_count_once_per_key() {
        let (a, b, c) = (key(1), key(2), key(3));
        let message = b"keyring";
        let mut text = sign(&a, message, "boxcar keyring keys").unwrap();
        text.push_str(&sign(&b, message, "boxcar keyring keys").unwrap());
        text.push_str(&sign(&a, message, "boxcar keyring keys").unwrap());
        text.push_str(&sign(&c, b"something else", "boxcar keyring keys").unwrap());
        let trusted = TrustedKeys::new([a.public_key(), b.public_key(), c.public_key()]);
        let signers: Vec<KeyId> = valid_signers(message, &text, &trusted)
            .into_iter()
            .map(|v| v.key_id)
            .collect();
        assert_eq!(signers, [a.key_id(), b.key_id()]);
        // The first signature alone is what stock minisign reads.
        assert_eq!(verify(message, &text, &trusted).unwrap().key_id, a.key_id());
    }

    /// A key and a signature made by stock minisign 0.11 (`minisign -G -W`,
    /// then `minisign -S -t "boxcar keyring keys"` of "boxcar fixture\n"):
    /// an operator may keep an offline root key in minisign itself.
    const MINISIGN_PUBLIC: &str = "untrusted comment: minisign public key 8872CC162AC6AE4D\nRWRNrsYqFsxyiAc5AWpHmmJ3v9caeb8vk2klquP2eY7Yvsu15z+BeZSx\n";
    const MINISIGN_SIGNATURE: &str = "untrusted comment: signature from minisign secret key\nRURNrsYqFsxyiPOCVClSpd2cjlYPnFCCSKyCw8Wj581TbOIjzoEKMbtQtBsQ36RkRcaE7UR94SIPTwDMg2MYQpPsswnjrHmwdw4=\ntrusted comment: boxcar keyring keys\nXQFyTz2H0+mVim5dMagvIoE9vpJCNtdqmnuQ466tDiteTuQm85Am4PAcGkPPdaz1xFmI4DCm63u/w57/6lF3DA==\n";

    #[test]
    fn keys_and_signatures_made_by_stock_minisign_are_accepted() {
        let key = crate::PublicKey::from_file_text(MINISIGN_PUBLIC).unwrap();
        assert_eq!(key.id().to_string(), "8872CC162AC6AE4D");
        let trusted = TrustedKeys::new([key]);
        let verified = verify(b"boxcar fixture\n", MINISIGN_SIGNATURE, &trusted).unwrap();
        assert_eq!(verified.trusted_comment, "boxcar keyring keys");
        assert!(verify(b"boxcar fixture!\n", MINISIGN_SIGNATURE, &trusted).is_err());
    }

    use super::*;
    use crate::keys::SecretKey;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32])
    }

    #[test]
    fn signs_and_verifies() {
        let signer = key(1);
        let text = sign(&signer, b"release", "file:release.json").unwrap();
        let verified = verify(b"release", &text, &TrustedKeys::new([signer.public_key()])).unwrap();
        assert_eq!(verified.key_id, signer.key_id());
        assert_eq!(verified.trusted_comment, "file:release.json");
    }

    #[test]
    fn tampered_message_is_a_bad_signature() {
        let signer = key(1);
        let text = sign(&signer, b"release", "c").unwrap();
        let err = verify(b"releasE", &text, &TrustedKeys::new([signer.public_key()])).unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    }

    #[test]
    fn tampered_trusted_comment_is_a_bad_signature() {
        let signer = key(1);
        let text = sign(&signer, b"release", "channel:beta").unwrap();
        let forged = text.replace("channel:beta", "channel:stable");
        let err = verify(
            b"release",
            &forged,
            &TrustedKeys::new([signer.public_key()]),
        )
        .unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = sign(&key(1), b"release", "c").unwrap();
        let err = verify(b"release", &text, &TrustedKeys::new([key(2).public_key()])).unwrap_err();
        match err {
            Error::UnknownKey { key_id, trusted } => {
                assert_eq!(key_id, key(1).key_id());
                assert_eq!(trusted, [key(2).key_id()]);
            }
            other => panic!("{other}"),
        }
        assert_eq!(signer_of(&text).unwrap(), key(1).key_id());
    }

    #[test]
    fn garbage_is_malformed() {
        let trusted = TrustedKeys::new([key(1).public_key()]);
        for bad in [
            "",
            "one line",
            "untrusted comment: x\nAAAA\ntrusted comment: y\nAAAA\n",
        ] {
            assert!(
                matches!(verify(b"x", bad, &trusted), Err(Error::Malformed { .. })),
                "{bad:?}"
            );
        }
        assert!(sign(&key(1), b"x", "two\nlines").is_err());
    }
}
