//! `boxcar download` and `boxcar download --list`: an operator fetches a
//! verified image for a platform from a channel. The work (the signed
//! chain, rollback state, verified resumable transfers) is the client
//! library's; this is the command's side of it: which store and keys,
//! progress on the terminal, and `--decompress`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use boxcar_client::chain::Selector;
use boxcar_client::fetch::FetchedFile;
use boxcar_client::layout::SafeName;
use boxcar_client::rollback::SerialState;
use boxcar_client::{Client, NetworkSettings};
use boxcar_signing::documents::{ExpirationEnforcement, IndexChannel, IndexRelease};
use boxcar_signing::TrustedKeys;
use serde::Serialize;
use time::OffsetDateTime;

use crate::progress::{Progress, TransferProgress};
use crate::units::human_bytes;

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct DownloadRequest {
    pub store: String,
    pub trusted: TrustedKeys,
    pub channel: Option<String>,
    pub version: Option<String>,
    pub platform: String,
    pub to: PathBuf,
    pub decompress: bool,
    pub network: NetworkSettings,
    /// Where the highest channel serials seen are remembered.
    pub state_file: PathBuf,
}

/// The outcome.
#[derive(Debug, Serialize)]
pub struct Downloaded {
    pub version: String,
    pub platform: String,
    pub channel: Option<String>,
    pub channel_serial: Option<u64>,
    pub usr_root_hash: String,
    pub files: Vec<FetchedFile>,
    /// The decompressed disk image, with --decompress.
    pub decompressed: Option<PathBuf>,
}

/// A client for `store` that shows its progress.
pub fn client(store: &str, network: NetworkSettings, progress: &Progress) -> Result<Client> {
    Ok(Client::open(
        store,
        network,
        Arc::new(TransferProgress::new(progress.clone())),
    )?)
}

/// Downloads and verifies one platform's artifact.
pub fn download(request: &DownloadRequest, progress: &Progress) -> Result<Downloaded> {
    let client = client(&request.store, request.network, progress)?;
    let mut state = SerialState::load(&request.state_file)?;
    let now = OffsetDateTime::now_utc();
    let trust = client.trust(
        &request.trusted,
        ExpirationEnforcement::Enforce,
        now,
        Some(&mut state),
    )?;
    let selector = match (&request.channel, &request.version) {
        (Some(channel), version) => Selector::Channel {
            name: SafeName::new("channel", channel)?,
            version: version
                .as_deref()
                .map(boxcar_client::version::parse)
                .transpose()?,
        },
        (None, Some(version)) => Selector::Version(boxcar_client::version::parse(version)?),
        (None, None) => bail!("name a --channel (its current release) or a --version"),
    };
    let resolved = client
        .resolve(&trust, &selector, &mut state, now)
        .map_err(|e| with_hint(e, &selector))?;
    let release = &resolved.release.document;
    let artifacts: Vec<_> = release
        .artifacts
        .iter()
        .filter(|a| a.platform == request.platform)
        .collect();
    if artifacts.is_empty() {
        bail!(
            "release {} has no artifact for platform {}; it has: {}",
            resolved.version,
            boxcar_client::layout::shown(&request.platform),
            release.platforms().join(", ")
        );
    }
    fs::create_dir_all(&request.to)
        .with_context(|| format!("creating {}", request.to.display()))?;
    let mut files = Vec::new();
    let mut limit = None;
    for artifact in artifacts {
        limit = limit.or(artifact.uncompressed_size);
        let started = Instant::now();
        let file = client.fetch_artifact(&resolved.version, artifact, &request.to)?;
        if !file.already_present {
            let seconds = started.elapsed().as_secs_f64().max(0.001);
            progress.note(&format!(
                "{}: {} in {seconds:.1}s ({}/s), sha256 verified",
                artifact.name,
                human_bytes(artifact.size),
                human_bytes((artifact.size as f64 / seconds) as u64)
            ));
        }
        files.push(file);
    }
    // A signed release's certificate comes with every image: it is what
    // the operator enrolls for the image to boot under Secure Boot.
    if let (Some(certificate), Some(signed)) =
        (release.secure_boot_certificate(), &release.secure_boot)
    {
        let file = client.fetch_file(&resolved.version, certificate, &request.to)?;
        progress.note(&format!(
            "{}: the Secure Boot certificate to enroll (subject {}, SHA-256 fingerprint {}), sha256 verified",
            certificate.name, signed.subject, signed.fingerprint_sha256
        ));
        files.push(file);
    }
    let decompressed = if request.decompress {
        decompress_if_compressed(&files, limit, progress)?
    } else {
        None
    };
    Ok(Downloaded {
        version: resolved.version.to_string(),
        platform: request.platform.clone(),
        channel: resolved.channel.as_ref().map(|(name, _)| name.to_string()),
        channel_serial: resolved.channel.as_ref().map(|(_, serial)| *serial),
        usr_root_hash: release.usr_root_hash.clone(),
        files,
        decompressed,
    })
}

/// Points a user at `--list` when what they named is not there.
fn with_hint(error: boxcar_client::Error, selector: &Selector) -> anyhow::Error {
    let hint = match (&error, selector) {
        (boxcar_client::Error::Inconsistent(message), Selector::Channel { name, .. })
            if message.contains("never carried") =>
        {
            format!("; see `boxcar download --list --channel {name}`")
        }
        (boxcar_client::Error::NotFound { .. }, Selector::Version(_)) => {
            "; see `boxcar download --list`".to_owned()
        }
        _ => return error.into(),
    };
    anyhow::anyhow!("{error}{hint}")
}

/// What a store offers: every release (or those a channel has carried)
/// and where each channel points.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub releases: Vec<IndexRelease>,
    pub channels: Vec<IndexChannel>,
}

/// Lists a store's releases, from its signed index; with `channel`, only
/// those the channel has carried (its signed history says).
pub fn list(
    store: &str,
    trusted: &TrustedKeys,
    network: NetworkSettings,
    channel: Option<&str>,
    progress: &Progress,
) -> Result<Listing> {
    let client = client(store, network, progress)?;
    let trust = client.trust(
        trusted,
        ExpirationEnforcement::Enforce,
        OffsetDateTime::now_utc(),
        None,
    )?;
    let index = client.index(&trust)?.document;
    let mut releases = index.releases;
    if let Some(channel) = channel {
        let Some(pointer) = index.channels.iter().find(|c| c.name == channel) else {
            bail!(
                "the store has no channel {}",
                boxcar_client::layout::shown(channel)
            );
        };
        // The index lists where channels point now; the channel's own
        // history says what it has carried.
        let name = SafeName::new("channel", channel)?;
        let doc = client
            .channel(
                &trust,
                &name,
                ExpirationEnforcement::Unsafe,
                OffsetDateTime::now_utc(),
            )?
            .document;
        releases.retain(|r| doc.history.iter().any(|e| e.version == r.version));
        progress.note(&format!(
            "channel {channel}: {} (serial {})",
            pointer.version, pointer.serial
        ));
    }
    Ok(Listing {
        releases,
        channels: index.channels,
    })
}

/// The most --decompress writes when the release does not say how large
/// the image is (releases published before it did).
const UNSIGNED_DECOMPRESS_LIMIT: u64 = 64 << 30;

/// With --decompress: a verified `.zst` becomes the raw image next to it
/// (written sparsely), and the compressed file goes. It writes no more than
/// the size release.json signs (a compression bomb stops there), and on
/// any failure (a full disk) leaves no partial file behind.
fn decompress_if_compressed(
    files: &[FetchedFile],
    signed_size: Option<u64>,
    progress: &Progress,
) -> Result<Option<PathBuf>> {
    let Some(file) = files
        .iter()
        .find(|f| f.path.extension().is_some_and(|e| e == "zst"))
    else {
        progress.note("nothing to decompress: the artifact is not a compressed raw image");
        return Ok(None);
    };
    let target = file.path.with_extension("");
    let part = target.with_extension("raw.part");
    let started = Instant::now();
    let limit = signed_size.unwrap_or(UNSIGNED_DECOMPRESS_LIMIT);
    let written = decompress_sparse(&file.path, &part, limit)
        .and_then(|written| match signed_size {
            Some(expected) if written != expected => bail!(
                "{} decompresses to {written} bytes, but the signed release says {expected}",
                file.path.display()
            ),
            _ => Ok(written),
        })
        .inspect_err(|_| {
            let _ = fs::remove_file(&part);
        })?;
    fs::rename(&part, &target)?;
    fs::remove_file(&file.path)?;
    progress.note(&format!(
        "decompressed to {} ({}) in {:.1}s",
        target.display(),
        human_bytes(written),
        started.elapsed().as_secs_f64()
    ));
    Ok(Some(target))
}

/// Decompresses `from` into the new file `to`, leaving holes for zeros,
/// refusing to write more than `limit` bytes.
fn decompress_sparse(from: &Path, to: &Path, limit: u64) -> Result<u64> {
    let _ = fs::remove_file(to);
    Ok(boxcar_client::decompress::zstd_sparse(from, to, limit)?.1)
}
