//! The readers' verbs: `boxcar verify` and `boxcar download`. Both read a
//! store through the client library and never change it.

use anyhow::{bail, Result};
use time::OffsetDateTime;

use crate::cmdline::{DownloadArgs, GlobalArgs, VerifyArgs};
use crate::defaults;
use crate::download;
use crate::progress::Progress;
use crate::units::human_bytes;

pub(super) fn verify(global: &GlobalArgs, args: &VerifyArgs, progress: &Progress) -> Result<()> {
    use boxcar_client::audit::Status;
    let trusted = defaults::load_public_keys(&args.keys)?;
    let network = defaults::network(args.network.timeout, args.network.retries);
    let client = if args.store.starts_with("s3://") {
        // The writer's view of a bucket (signed reads), for maintainers.
        let transport = crate::release::backend::S3Backend::reader_of(
            &args.store,
            &global.s3_options(),
            &network,
        )?;
        boxcar_client::Client::new(
            transport,
            network,
            std::sync::Arc::new(crate::progress::TransferProgress::new(progress.clone())),
        )
    } else {
        download::client(&args.store, network, progress)?
    };
    let report = boxcar_client::audit::audit(&client, &trusted, OffsetDateTime::now_utc())?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for finding in &report.findings {
            let mark = match finding.status {
                Status::Ok => "ok  ",
                Status::Warning => "warn",
                Status::Fail => "FAIL",
            };
            out!("{mark}  {}: {}", finding.subject, finding.detail);
        }
    }
    if !report.passed() {
        let failed = report.findings.iter().filter(|f| !f.ok).count();
        bail!("the store {} failed {failed} checks", report.store);
    }
    Ok(())
}

pub(super) fn download(
    global: &GlobalArgs,
    args: &DownloadArgs,
    progress: &Progress,
) -> Result<()> {
    let store = defaults::store(args.store.as_deref());
    let trusted = defaults::trusted_keys(&args.keys)?;
    if trusted.is_empty() {
        bail!(
            "no trusted key: pass --key FILE (the store's public key) or set BOXCAR_TRUSTED_KEYS"
        );
    }
    let network = defaults::network(args.network.timeout, args.network.retries);
    if args.list {
        return list(
            global,
            &store,
            &trusted,
            network,
            args.channel.as_deref(),
            progress,
        );
    }
    let request = download::DownloadRequest {
        store,
        trusted,
        channel: args.channel.clone(),
        version: args.version.clone(),
        platform: args
            .platform
            .clone()
            .expect("clap requires --platform without --list"),
        to: args.to.clone(),
        decompress: args.decompress,
        network,
        state_file: args
            .state
            .clone()
            .unwrap_or_else(boxcar_client::rollback::default_state_file),
    };
    let downloaded = download::download(&request, progress)?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&downloaded)?);
        return Ok(());
    }
    let from = match (&downloaded.channel, downloaded.channel_serial) {
        (Some(channel), Some(serial)) => format!(" from channel {channel} (serial {serial})"),
        _ => String::new(),
    };
    out!(
        "Boxcar Linux {} for {}{from}, /usr root hash {}",
        downloaded.version,
        downloaded.platform,
        downloaded.usr_root_hash
    );
    for file in &downloaded.files {
        let how = if file.already_present {
            "already here"
        } else if file.resumed {
            "resumed"
        } else {
            "downloaded"
        };
        out!(
            "  {}  {}  sha256 {} verified ({how})",
            file.path.display(),
            human_bytes(file.size),
            file.sha256
        );
    }
    if let Some(raw) = &downloaded.decompressed {
        out!("  decompressed to {}", raw.display());
    }
    Ok(())
}

fn list(
    global: &GlobalArgs,
    store: &str,
    trusted: &boxcar_signing::TrustedKeys,
    network: boxcar_client::NetworkSettings,
    channel: Option<&str>,
    progress: &Progress,
) -> Result<()> {
    let listing = download::list(store, trusted, network, channel, progress)?;
    if global.json {
        out!(
            "{}",
            serde_json::json!({ "releases": listing.releases, "channels": listing.channels })
        );
        return Ok(());
    }
    for channel in &listing.channels {
        out!(
            "channel {:<8} -> {} (serial {}, expires {})",
            channel.name,
            channel.version,
            channel.serial,
            channel.expires_at
        );
    }
    for release in &listing.releases {
        out!(
            "release {} (published {})",
            release.version,
            release.published_at
        );
        for artifact in &release.artifacts {
            out!(
                "  {:<8} {:<10} {:>10}  {}",
                artifact.platform,
                artifact.format,
                human_bytes(artifact.size),
                artifact.name
            );
        }
    }
    Ok(())
}
