//! The update payload: what a node downloads to update itself to this
//! build. The /usr image, its verity hash tree, its root hash signature
//! partition and the UKI, each compressed
//! with zstd under the name systemd-sysupdate's transfers in the image
//! (overlays/base/usr/lib/sysupdate.d) match, plus `.zst`.
//!
//! The /usr image fills its 1 GiB slot, mostly with zeros after the erofs
//! data, and its hash partition mostly with zeros after the tree. Only the
//! data dm-verity covers (the file system's bytes, what `usrhash=` vouches
//! for) and the hash tree itself are shipped: the rest of each slot is
//! never read.
//! A node downloads, decompresses and hashes about the size of the data,
//! which matters on small machines and under emulation.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use boxcar_signing::documents::{UpdateFile, UpdatePayload, UpdateRole};
use boxcar_signing::Hasher;

use super::convert::feed_sparse;
use crate::image::{PartitionTable, Role};
use crate::records::buildinfo::{FileInfo, FileKind, UsrInfo};
use crate::version::Version;

/// How hard zstd works: level 3 (its default) compresses the erofs image
/// within a few percent of level 19 in a fraction of the time (see
/// BENCHMARKS.md).
const ZSTD_LEVEL: i32 = 3;

/// The name systemd-sysupdate matches for each part (the transfers'
/// `MatchPattern`s: `boxcar_@v_@u.usr.raw`, `boxcar_@v_@u.usr-verity.raw`,
/// `boxcar_@v.usr-verity-sig.raw`, `boxcar_@v.efi`), and the partition
/// UUID it carries.
pub fn installed_name(
    role: UpdateRole,
    version: &Version,
    table: &PartitionTable,
) -> Result<(String, Option<String>)> {
    let uuid = |role| table.require(role).map(|p| p.uuid.to_lowercase());
    Ok(match role {
        UpdateRole::Usr => {
            let uuid = uuid(Role::UsrA)?;
            (format!("boxcar_{version}_{uuid}.usr.raw"), Some(uuid))
        }
        UpdateRole::UsrVerity => {
            let uuid = uuid(Role::UsrAVerity)?;
            (
                format!("boxcar_{version}_{uuid}.usr-verity.raw"),
                Some(uuid),
            )
        }
        // Nothing finds a signature partition by its UUID: the initrd
        // reads every one for the signature of its root hash.
        UpdateRole::UsrSignature => (format!("boxcar_{version}.usr-verity-sig.raw"), None),
        UpdateRole::Uki => (format!("boxcar_{version}.efi"), None),
    })
}

/// Compresses the build's /usr (its first `usr.filesystem_bytes`, the data
/// verity covers), hash tree (its first `usr.hash_tree_bytes`) and UKI
/// (listed in `files`) into the build directory `dir`.
pub(super) fn write_payload(
    dir: &Path,
    version: &Version,
    table: &PartitionTable,
    files: &[FileInfo],
    usr: &UsrInfo,
) -> Result<UpdatePayload> {
    let parts = [
        (UpdateRole::Usr, FileKind::Usr),
        (UpdateRole::UsrVerity, FileKind::UsrVerity),
        (UpdateRole::UsrSignature, FileKind::UsrSignature),
        (UpdateRole::Uki, FileKind::Uki),
    ];
    let mut payload = Vec::new();
    for (role, kind) in parts {
        let part = files
            .iter()
            .find(|f| f.kind == kind)
            .with_context(|| format!("the build has no {kind:?} part for the update"))?;
        let (installed_name, partition_uuid) = installed_name(role, version, table)?;
        let name = format!("{installed_name}.zst");
        let length = match role {
            UpdateRole::Usr => usr.filesystem_bytes.min(part.size),
            UpdateRole::UsrVerity => usr.hash_tree_bytes.min(part.size),
            // Whole, zeros included: they overwrite what an older
            // signature left in the slot.
            UpdateRole::UsrSignature | UpdateRole::Uki => part.size,
        };
        let compressed = compress(&dir.join(&part.name), length, &dir.join(&name))
            .with_context(|| format!("compressing {} into {name}", part.name))?;
        payload.push(UpdateFile {
            role,
            name,
            size: compressed.size,
            sha256: compressed.sha256,
            compression: "zstd".to_owned(),
            installed_name,
            installed_size: length,
            installed_sha256: compressed.installed_sha256,
            partition_uuid,
        });
    }
    Ok(UpdatePayload { files: payload })
}

/// A compressed part: its digest and size, and the digest of what it
/// decompresses to.
struct Compressed {
    sha256: boxcar_signing::Sha256Digest,
    size: u64,
    installed_sha256: boxcar_signing::Sha256Digest,
}

/// Compresses the first `length` bytes of `from` into the new file `to`,
/// its holes fed from memory.
fn compress(from: &Path, length: u64, to: &Path) -> Result<Compressed> {
    let source = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let regions: Vec<std::ops::Range<u64>> =
        boxcar_signing::data_regions(&source, source.metadata()?.len())
            .into_iter()
            .filter(|r| r.start < length)
            .map(|r| r.start..r.end.min(length))
            .collect();
    let out = boxcar_client::files::create_new(to, 0o644)?;
    let hashing = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, out),
        hasher: Hasher::new(),
    };
    let mut encoder = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    let mut raw = HashingWriter {
        inner: encoder,
        hasher: Hasher::new(),
    };
    feed_sparse(&source, length, &regions, &mut raw)?;
    let (installed_sha256, _) = raw.hasher.finish();
    let mut hashing = raw.inner.finish()?;
    hashing.inner.flush()?;
    let file = hashing.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let (sha256, size) = hashing.hasher.finish();
    Ok(Compressed {
        sha256,
        size,
        installed_sha256,
    })
}

/// Hashes what it passes on.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
