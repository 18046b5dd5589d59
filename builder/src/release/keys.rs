//! The keys writers sign with: where the secret key comes from, and making
//! a new key pair. Secret keys never enter the repository, a command line
//! or a log.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use boxcar_client::files;
use boxcar_signing::{SecretKey, Sign};

/// The signing key: `explicit`, else the file named by
/// $BOXCAR_SIGNING_KEY_FILE, else the key text in $BOXCAR_SIGNING_KEY.
/// Errors never show key material.
pub fn load_signer(explicit: Option<&Path>) -> Result<SecretKey> {
    if let Some(path) = explicit {
        return Ok(SecretKey::load(path)?);
    }
    if let Some(path) = std::env::var_os("BOXCAR_SIGNING_KEY_FILE") {
        return Ok(SecretKey::load(Path::new(&path))?);
    }
    if let Ok(text) = std::env::var("BOXCAR_SIGNING_KEY") {
        return SecretKey::from_file_text(&text)
            .map_err(|_| anyhow::anyhow!("$BOXCAR_SIGNING_KEY does not hold a boxcar secret key"));
    }
    bail!("no signing key: pass --key FILE, or set BOXCAR_SIGNING_KEY_FILE or BOXCAR_SIGNING_KEY")
}

/// A key pair made by [`generate`].
pub struct Generated {
    pub key: SecretKey,
    pub secret_path: PathBuf,
    pub public_path: PathBuf,
}

/// Makes a key pair in `dir`: `NAME.key` (secret, mode 0600) and
/// `NAME.pub` (minisign's public key format). Neither may exist.
pub fn generate(dir: &Path, name: &str) -> Result<Generated> {
    let name = boxcar_client::layout::SafeName::new("key name", name)?;
    std::fs::create_dir_all(dir)?;
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for path in [&secret_path, &public_path] {
        if std::fs::symlink_metadata(path).is_ok() {
            bail!("{} exists; not replacing a key", path.display());
        }
    }
    let key = SecretKey::generate()?;
    write_new(&secret_path, key.to_file_text().as_bytes(), 0o600)?;
    write_new(
        &public_path,
        key.public_key().to_file_text().as_bytes(),
        0o644,
    )?;
    Ok(Generated {
        key,
        secret_path,
        public_path,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = files::create_new(path, mode)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
