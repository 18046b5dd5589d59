//! The inspect phase: the composed image read back and checked against the
//! design (partition table, the UKI's usrhash= against the /usr partition
//! UUIDs, the verity header and tree, each platform addon's command line),
//! and what it found, for build.json.

use std::fs::{self, File};
use std::path::Path;

use anyhow::{bail, Context, Result};
use boxcar_signing::UsrSignature;

use super::collect::{
    take_dockerd_build, take_kernel_build_packages, take_usr_footprint, take_usr_stats,
};
use super::convert;
use super::footprint;
use super::plan::BuildPlan;
use super::uki;
use crate::hosttools::HostTools;
use crate::image::{self, PartitionTable, Role};
use crate::process::Step;
use crate::records::buildinfo::{KernelInfo, ProgramBuild, UsrInfo};

/// What inspecting the composed image found.
pub(super) struct Inspected {
    pub(super) table: PartitionTable,
    pub(super) usr: UsrInfo,
    pub(super) kernel: KernelInfo,
    pub(super) dockerd: Option<ProgramBuild>,
    /// The /usr root hash signature, when the build signs /usr.
    pub(super) usr_signature: Option<UsrSignature>,
}

/// Slot A's root hash signature partition, as a file of the build.
pub const USR_SIGNATURE_FILE: &str = "usr-verity-sig.raw";

/// Reads the image back and checks it is what the design says: the UKI's
/// usrhash= matches the /usr partition UUIDs, the split /usr and verity
/// files are the slot-A partitions, and the verity tree checks out.
pub(super) fn inspect(plan: &BuildPlan, tools: &HostTools, staging: &Path) -> Result<Inspected> {
    let disk = staging.join("disk.raw");
    let usr_file = staging.join("usr.raw");
    let hash_file = staging.join("usr-verity.raw");
    let signature_file = staging.join(USR_SIGNATURE_FILE);
    let table = image::read_partition_table(tools.path("sfdisk"), &disk)?;
    for role in Role::LAYOUT {
        table.require(role)?;
    }
    let usr_a = table.require(Role::UsrA)?;
    let usr_a_verity = table.require(Role::UsrAVerity)?;
    let uki = uki::read_uki(&staging.join("uki.efi"))?;
    let Some(usrhash) = uki.cmdline_value("usrhash") else {
        bail!(
            "the UKI's kernel command line has no usrhash=: {:?}",
            uki.cmdline
        );
    };
    let from_uuids = image::root_hash_from_uuids(&usr_a.uuid, &usr_a_verity.uuid);
    if usrhash != from_uuids {
        bail!("the UKI's usrhash={usrhash} does not match the /usr partition UUIDs, which encode {from_uuids}");
    }
    let usr_a_signature = table.require(Role::UsrASignature)?;
    for (file, partition) in [
        (&usr_file, usr_a),
        (&hash_file, usr_a_verity),
        (&signature_file, usr_a_signature),
    ] {
        let size = fs::metadata(file)?.len();
        if size != partition.size {
            bail!(
                "{} is {size} bytes but partition {} ({}) is {} bytes; they should be the same partition",
                file.display(),
                partition.number,
                partition.label,
                partition.size
            );
        }
    }
    let verity = read_verity_header(tools, &hash_file)?;
    let usr_signature = read_usr_signature(&signature_file, usrhash, plan.secure_boot.is_some())?;
    let (content_bytes, content_files) = take_usr_stats(staging)?;
    let footprint = take_usr_footprint(staging)?;
    for platform in &plan.platform_table.platforms {
        let addon = staging.join(convert::Parts::addon_name(&platform.id));
        let cmdline = uki::read_addon_cmdline(&addon)?;
        if cmdline != platform.kernel_cmdline() {
            bail!(
                "the UKI addon for platform {} carries {cmdline:?}, but the platform table says {:?}",
                platform.id,
                platform.kernel_cmdline()
            );
        }
    }
    Step::new(
        "checking /usr against its verity root hash",
        tools.path("veritysetup"),
    )
    .arg("verify")
    .arg(&usr_file)
    .arg(&hash_file)
    .arg(usrhash)
    .run()?;
    Ok(Inspected {
        usr: UsrInfo {
            root_hash: usrhash.to_owned(),
            filesystem: filesystem_of(&usr_file)?,
            data_file: "usr.raw".to_owned(),
            hash_file: "usr-verity.raw".to_owned(),
            signature_file: Some(USR_SIGNATURE_FILE.to_owned()),
            signed_by: usr_signature
                .as_ref()
                .map(|s| s.certificate_fingerprint.clone()),
            data_block_size: verity.data_block_size,
            hash_block_size: verity.hash_block_size,
            salt: verity.salt,
            filesystem_bytes: verity.data_blocks * verity.data_block_size,
            hash_tree_bytes: verity.hash_device_bytes,
            content_bytes,
            content_files,
            footprint,
        },
        kernel: KernelInfo {
            release: uki.kernel_release.clone(),
            cmdline: uki.cmdline.clone(),
            initrd: Some(footprint::initrd_footprint(&staging.join("initrd"))?),
            build_packages: take_kernel_build_packages(staging)?,
        },
        dockerd: take_dockerd_build(staging)?,
        table,
        usr_signature,
    })
}

/// Slot A's signature partition: a signed build's carries the signature
/// of this /usr's root hash (the secure boot phase checks it against the
/// certificate), an unsigned build's is empty.
fn read_usr_signature(file: &Path, usrhash: &str, signed: bool) -> Result<Option<UsrSignature>> {
    let signature =
        UsrSignature::read_file(file).with_context(|| format!("reading {}", file.display()))?;
    match (signature, signed) {
        (Some(signature), true) if signature.root_hash == usrhash => Ok(Some(signature)),
        (Some(signature), true) => bail!(
            "{} signs /usr root hash {}, but the UKI boots usrhash={usrhash}",
            file.display(),
            signature.root_hash
        ),
        (None, true) => bail!(
            "the build signs /usr, but {} is empty: the recipe's {}/signed definition must have Verity=signature",
            file.display(),
            crate::recipe::USR_SIGNATURE_DIR
        ),
        (Some(_), false) => bail!(
            "the build does not sign /usr, but {} holds a signature",
            file.display()
        ),
        (None, false) => Ok(None),
    }
}

struct VerityHeader {
    hash_device_bytes: u64,
    data_blocks: u64,
    data_block_size: u64,
    hash_block_size: u64,
    salt: String,
}

fn read_verity_header(tools: &HostTools, hash_file: &Path) -> Result<VerityHeader> {
    let dump = Step::new("reading the verity superblock", tools.path("veritysetup"))
        .arg("dump")
        .arg(hash_file)
        .output_text()?;
    parse_verity_dump(&dump)
}

/// Parses `veritysetup dump` output.
fn parse_verity_dump(dump: &str) -> Result<VerityHeader> {
    let field = |name: &str| -> Result<String> {
        dump.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_owned())
            })
            .with_context(|| format!("veritysetup dump printed no {name:?} field"))
    };
    let hash_device = field("Hash device size")?;
    Ok(VerityHeader {
        hash_device_bytes: hash_device
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()?,
        data_blocks: field("Data blocks")?.parse()?,
        data_block_size: field("Data block size")?.parse()?,
        hash_block_size: field("Hash block size")?.parse()?,
        salt: field("Salt")?,
    })
}

/// Names the file system at the start of a partition image by its magic.
fn filesystem_of(path: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut superblock = [0u8; 4];
    file.seek(SeekFrom::Start(1024))?;
    file.read_exact(&mut superblock)?;
    Ok(match superblock {
        [0xe2, 0xe1, 0xf5, 0xe0] => "erofs",
        _ => "unknown",
    }
    .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_veritysetup_dump() {
        let dump = "VERITY header information for x\nUUID:            \tabc\nHash type:       \t1\n\
                    Data blocks:     \t78163\nData block size: \t4096\nHash blocks:     \t617\n\
                    Hash block size: \t4096\nHash algorithm:  \tsha256\nSalt:            \tdeadbeef\n\
                    Hash device size: \t2711552 [bytes]\n";
        let header = parse_verity_dump(dump).unwrap();
        assert_eq!(
            (header.data_block_size, header.hash_block_size),
            (4096, 4096)
        );
        assert_eq!(header.salt, "deadbeef");
        assert_eq!(header.data_blocks, 78163);
        assert_eq!(header.hash_device_bytes, 2711552);
        assert!(parse_verity_dump("nothing").is_err());
    }
}
