//! `boxcar renew`: re-signs documents before they expire, with the same
//! content, a serial one higher and a new expiry, so a store that sees no
//! promotion for weeks keeps working. Meant for a daily CI job: a channel
//! document is renewed once less than half of its validity is left (or
//! always, with `--all`, which also re-signs every release's release.json
//! and SHA256SUMS with the current key, as a key rotation needs). The
//! index is rewritten whenever anything was renewed. The keyring is signed
//! by root keys, not here: see `boxcar keys renew`.

use anyhow::{Context, Result};
use boxcar_client::layout::{self, SafeName};
use boxcar_signing::documents::{self, ChannelDocument, Kind};
use serde::Serialize;

use super::documents::Writer;
use crate::channel::Channels;

/// One document renewed.
#[derive(Debug, Serialize)]
pub struct RenewedDocument {
    pub path: String,
    /// The serial before and after (channel documents and the index).
    pub serials: Option<(u64, u64)>,
    pub expires_at: Option<String>,
}

/// Renews what is due (or everything, with `all`).
pub fn renew(writer: &Writer, channels: &Channels, all: bool) -> Result<Vec<RenewedDocument>> {
    let mut renewed = Vec::new();
    for name in writer.store.list_channels()? {
        let Some(current) = writer.read_channel(name.as_str())? else {
            continue;
        };
        if all || half_spent(&current, writer.now)? {
            renewed.push(renew_channel(writer, channels, &current)?);
        }
    }
    if all {
        for version in writer.store.list_releases()? {
            renewed.extend(resign_release(writer, &version)?);
        }
    }
    if !renewed.is_empty() {
        let before = writer.read_index()?.map_or(0, |index| index.serial);
        let index = writer.write_index()?;
        renewed.push(RenewedDocument {
            path: layout::INDEX.to_owned(),
            serials: Some((before, index.serial)),
            expires_at: None,
        });
    }
    Ok(renewed)
}

/// Whether less than half of a document's validity is left.
fn half_spent(doc: &ChannelDocument, now: time::OffsetDateTime) -> Result<bool> {
    let what = format!("channels/{}.json", doc.channel);
    let issued = documents::parse_time(&doc.issued_at, &what)?;
    let expires = documents::parse_time(&doc.expires_at, &what)?;
    Ok((expires - now) * 2 < (expires - issued))
}

/// The same channel document, one serial higher, valid from now for the
/// channel's configured time (or, for a channel with no configuration, for
/// as long as the document it replaces was).
fn renew_channel(
    writer: &Writer,
    channels: &Channels,
    current: &ChannelDocument,
) -> Result<RenewedDocument> {
    let what = format!("channels/{}.json", current.channel);
    let valid_for = match channels
        .channels
        .iter()
        .find(|c| c.name.as_str() == current.channel)
    {
        Some(config) => time::Duration::try_from(config.valid_for.to_std())?,
        None => {
            documents::parse_time(&current.expires_at, &what)?
                - documents::parse_time(&current.issued_at, &what)?
        }
    };
    let mut next = current.clone();
    next.serial = writer.next_serial(&current.channel, Some(current))?;
    next.issued_at = documents::format_time(writer.now);
    next.expires_at = documents::format_time(writer.now + valid_for);
    writer.write_channel(&next)?;
    writer.check_written(&next)?;
    Ok(RenewedDocument {
        path: what,
        serials: Some((current.serial, next.serial)),
        expires_at: Some(next.expires_at),
    })
}

/// Signs a release's release.json and SHA256SUMS again with the writer's
/// key (their bytes, and so every digest of them, stay the same).
fn resign_release(writer: &Writer, version: &SafeName) -> Result<Vec<RenewedDocument>> {
    let release = writer.read_release(version.as_str())?;
    let client = &writer.client;
    let sums_path = layout::sums(version);
    client
        .check_sums(&writer.trust, &release.document)
        .with_context(|| format!("checking {sums_path} before signing it again"))?;
    let sums = documents::sha256sums(&release.document);
    let sums_signature = documents::sign_bytes(
        writer.signer,
        sums.as_bytes(),
        Kind::Release,
        &format!("{version} SHA256SUMS"),
    )?;
    let release_path = layout::release_document(version);
    // The bytes that were checked, a newer writer's fields included; read
    // again, they could be what someone without a key put there since.
    let release_signature = documents::sign_bytes(
        writer.signer,
        &release.bytes,
        Kind::Release,
        version.as_str(),
    )?;
    writer
        .store
        .replace_signature(&sums_path, &sums_signature)?;
    writer
        .store
        .replace_signature(&release_path, &release_signature)?;
    Ok(vec![
        RenewedDocument {
            path: release_path,
            serials: None,
            expires_at: None,
        },
        RenewedDocument {
            path: sums_path,
            serials: None,
            expires_at: None,
        },
    ])
}
