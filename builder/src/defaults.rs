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

/// The network settings for a read timeout of `timeout_seconds` and
/// `retries` retries. The first wait before a retry is a second, or
/// $BOXCAR_RETRY_BACKOFF_MS milliseconds (tests use a short one).
pub fn network(timeout_seconds: u64, retries: u32) -> boxcar_client::NetworkSettings {
    let first_wait = std::time::Duration::from_millis(
        std::env::var("BOXCAR_RETRY_BACKOFF_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    boxcar_client::NetworkSettings::with_read_timeout(
        std::time::Duration::from_secs(timeout_seconds.max(1)),
        boxcar_client::retry::RetryPolicy {
            retries,
            first_wait,
            ..Default::default()
        },
    )
}

/// The keys to trust: those in the files named by `explicit`, else by
/// $BOXCAR_TRUSTED_KEYS, else the built-in ones.
pub fn trusted_keys(
    explicit: &[std::path::PathBuf],
) -> anyhow::Result<boxcar_signing::TrustedKeys> {
    let files = trusted_key_files(explicit);
    if files.is_empty() {
        builtin_keys()
    } else {
        load_public_keys(&files)
    }
}

/// The built-in trusted keys.
pub fn builtin_keys() -> anyhow::Result<boxcar_signing::TrustedKeys> {
    let mut trusted = boxcar_signing::TrustedKeys::default();
    for line in TRUSTED_KEYS {
        trusted.add(boxcar_signing::PublicKey::from_base64(line)?);
    }
    Ok(trusted)
}

/// Loads public keys from their files (minisign's format).
pub fn load_public_keys(
    paths: &[impl AsRef<std::path::Path>],
) -> anyhow::Result<boxcar_signing::TrustedKeys> {
    use anyhow::Context;
    let mut trusted = boxcar_signing::TrustedKeys::default();
    for path in paths {
        let path = path.as_ref();
        trusted.add(
            boxcar_signing::PublicKey::load(path)
                .with_context(|| format!("loading public key {}", path.display()))?,
        );
    }
    Ok(trusted)
}
