//! Where operators download from, and whom they trust, unless told
//! otherwise: the one place these are configured.
//!
//! `--store` and `--key` override them per command; `$BOXCAR_STORE` and
//! `$BOXCAR_TRUSTED_KEYS` (public key files, separated by `:`) per
//! environment.

/// The project's release store.
pub const STORE: &str = "https://downloads.boxcar-linux.org";

/// The project's release public keys, as the second line of their minisign
/// files. Empty until the first production key is made (see
/// signing/keys/README.md): until then every download names its key.
pub const TRUSTED_KEYS: &[&str] = &[];

/// The store to use: `explicit`, else `$BOXCAR_STORE`, else [`STORE`].
pub fn store(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var("BOXCAR_STORE").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| STORE.to_owned())
}

/// The trusted key files to load: `explicit`, else `$BOXCAR_TRUSTED_KEYS`.
/// Empty means: use [`TRUSTED_KEYS`].
pub fn trusted_key_files(explicit: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    std::env::var_os("BOXCAR_TRUSTED_KEYS")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default()
}

/// The built-in trusted keys.
pub fn builtin_keys() -> anyhow::Result<boxcar_signing::TrustedKeys> {
    let mut trusted = boxcar_signing::TrustedKeys::default();
    for line in TRUSTED_KEYS {
        trusted.add(boxcar_signing::PublicKey::from_base64(line)?);
    }
    Ok(trusted)
}
