//! The diskless artifact: the kernel, an initrd that carries /usr, and an
//! iPXE script.
//!
//! /usr stays verity-protected over the network: the initrd is the build's
//! own (the UKI's) plus one more cpio archive holding a small GPT disk image
//! with the slot-A /usr, verity and signature partitions (same types and
//! UUIDs as on disk, so the same `usrhash=` finds them, and under Secure
//! Boot the initrd the signature), two units that attach it as a
//! loop device and fill the tmpfs root with the image's /etc and /var, and
//! that root tree. The kernel unpacks concatenated cpio archives into one
//! initramfs.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};

use crate::hosttools::HostTools;
use crate::image::{Partition, PartitionTable, Role};
use crate::process::Step;

/// Where the initrd keeps what it carries.
const CARRIED_DIR: &str = "boxcar";
const USR_DISK: &str = "usr.img";
const ROOT_TAR: &str = "root.tar";

/// Attaches the carried /usr disk; its partitions then appear under
/// /dev/disk/by-partuuid/ where systemd-veritysetup-generator looks for them.
const USR_UNIT: &str = "\
[Unit]
Description=Attach the /usr image carried by the network-boot initrd
DefaultDependencies=no
ConditionPathExists=/boxcar/usr.img
After=systemd-udevd.service systemd-modules-load.service
Before=cryptsetup-pre.target veritysetup-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=-/usr/sbin/modprobe loop
ExecStart=/usr/sbin/losetup --read-only --partscan --find --show /boxcar/usr.img
";

/// Unpacks the image's /etc and /var into the tmpfs root (`root=tmpfs`).
const ROOT_UNIT: &str = "\
[Unit]
Description=Fill the tmpfs root with the image's /etc and /var
DefaultDependencies=no
ConditionPathExists=/boxcar/root.tar
Requires=sysroot.mount
After=sysroot.mount
Before=initrd-root-fs.target sysroot-usr.mount

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/tar --extract --file /boxcar/root.tar --directory /sysroot --numeric-owner --xattrs --acls --preserve-permissions
";

/// The partitions of the carried disk start at 1 MiB.
const FIRST_PARTITION_OFFSET: u64 = 1024 * 1024;
const SECTOR: u64 = 512;

/// What the PXE artifact is made from.
pub struct PxeInputs<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub usr: &'a Path,
    pub usr_verity: &'a Path,
    /// Slot A's signature partition, whole (16 KiB).
    pub usr_signature: &'a Path,
    pub root_tar: &'a Path,
    pub table: &'a PartitionTable,
    /// Bytes of /usr that verity covers (the file system).
    pub usr_bytes: u64,
    /// Bytes of the verity hash tree, superblock included.
    pub verity_bytes: u64,
    /// The kernel command line: the UKI's, then root=tmpfs, then the
    /// platform's additions.
    pub cmdline: String,
    /// Every file the initrd addition carries is stamped with this time.
    pub source_date_epoch: i64,
}

/// Where the three files go.
pub struct PxeOutputs<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub script: &'a Path,
}

pub fn write_pxe(
    tools: &HostTools,
    inputs: &PxeInputs,
    outputs: &PxeOutputs,
    work: &Path,
) -> Result<()> {
    fs::copy(inputs.kernel, outputs.kernel)
        .with_context(|| format!("copying {}", inputs.kernel.display()))?;

    let tree = work.join("pxe-tree");
    let carried = tree.join(CARRIED_DIR);
    fs::create_dir_all(&carried)?;
    write_usr_disk(tools, inputs, &carried.join(USR_DISK))?;
    fs::copy(inputs.root_tar, carried.join(ROOT_TAR))?;
    install_unit(&tree, "boxcar-pxe-usr.service", USR_UNIT, "sysinit.target")?;
    install_unit(
        &tree,
        "boxcar-pxe-root.service",
        ROOT_UNIT,
        "initrd-root-fs.target",
    )?;
    mask_unit(&tree, "systemd-repart.service")?;
    let cpio = work.join("pxe.cpio");
    write_cpio(tools, &tree, &cpio, inputs.source_date_epoch)?;
    fs::remove_dir_all(&tree)?;

    // The build's initrd, then ours: the kernel unpacks both. It reads an
    // uncompressed cpio archive only at a multiple of 4 bytes into the
    // initrd (zeros before it are skipped), so the build's is padded.
    let mut initrd = File::create(outputs.initrd)?;
    let build_bytes = io::copy(&mut File::open(inputs.initrd)?, &mut initrd)?;
    io::Write::write_all(&mut initrd, &[0; 3][..cpio_padding(build_bytes)])?;
    io::copy(&mut File::open(&cpio)?, &mut initrd)?;
    initrd.sync_all()?;
    fs::remove_file(&cpio)?;

    let kernel_name = file_name(outputs.kernel);
    let initrd_name = file_name(outputs.initrd);
    fs::write(
        outputs.script,
        ipxe_script(&kernel_name, &initrd_name, &inputs.cmdline),
    )?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The iPXE script. The kernel and initrd are named relative to the script,
/// so chaining it over HTTP fetches them over HTTP from the same place.
pub fn ipxe_script(kernel: &str, initrd: &str, cmdline: &str) -> String {
    let mut script = String::new();
    let _ = writeln!(script, "#!ipxe");
    let _ = writeln!(
        script,
        "# Boxcar Linux, diskless: chain this script over HTTP; the kernel and"
    );
    let _ = writeln!(
        script,
        "# initrd are fetched from next to it. Set boxcar-extra-args before"
    );
    let _ = writeln!(script, "# chaining to add kernel arguments.");
    let _ = writeln!(
        script,
        "kernel {kernel} initrd={initrd} {cmdline} ${{boxcar-extra-args}}"
    );
    let _ = writeln!(script, "initrd {initrd}");
    let _ = writeln!(script, "boot");
    script
}

/// A GPT disk image holding just USR-A, its verity tree (both trimmed to
/// the bytes verity covers) and its signature, with the partition types,
/// UUIDs and labels of the built disk.
fn write_usr_disk(tools: &HostTools, inputs: &PxeInputs, out: &Path) -> Result<()> {
    let usr = inputs.table.require(Role::UsrA)?;
    let verity = inputs.table.require(Role::UsrAVerity)?;
    let signature = inputs.table.require(Role::UsrASignature)?;
    let usr_size = round_up(inputs.usr_bytes, FIRST_PARTITION_OFFSET);
    let verity_size = round_up(inputs.verity_bytes, FIRST_PARTITION_OFFSET);
    let verity_offset = FIRST_PARTITION_OFFSET + usr_size;
    let signature_offset = verity_offset + verity_size;
    let signature_bytes = fs::metadata(inputs.usr_signature)
        .with_context(|| format!("reading {}", inputs.usr_signature.display()))?
        .len();
    let signature_size = round_up(signature_bytes, FIRST_PARTITION_OFFSET);
    // Room for the backup GPT at the end.
    let disk_size = signature_offset + signature_size + FIRST_PARTITION_OFFSET;
    let file = File::create(out)?;
    file.set_len(disk_size)?;
    drop(file);
    // A disk GUID of its own, derived from the build's (sfdisk would pick a
    // random one, and the artifact must be reproducible).
    let script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nsector-size: {SECTOR}\n{}\n{}\n{}\n",
        derived_uuid(&format!("boxcar pxe usr disk {}", inputs.table.disk_uuid)),
        sfdisk_line(usr, FIRST_PARTITION_OFFSET, usr_size),
        sfdisk_line(verity, verity_offset, verity_size),
        sfdisk_line(signature, signature_offset, signature_size)
    );
    let script_path = out.with_extension("sfdisk");
    fs::write(&script_path, script)?;
    Step::new("partitioning the PXE /usr disk", tools.path("sfdisk"))
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe=always",
        ])
        .arg(out)
        .stdin_file(&script_path)
        .run()?;
    fs::remove_file(&script_path)?;
    copy_range(inputs.usr, out, FIRST_PARTITION_OFFSET, inputs.usr_bytes)?;
    copy_range(inputs.usr_verity, out, verity_offset, inputs.verity_bytes)?;
    copy_range(inputs.usr_signature, out, signature_offset, signature_bytes)?;
    Ok(())
}

fn sfdisk_line(partition: &Partition, offset: u64, size: u64) -> String {
    format!(
        "start={}, size={}, type={}, uuid={}, name=\"{}\", attrs=\"GUID:60\"",
        offset / SECTOR,
        size / SECTOR,
        partition.type_uuid,
        partition.uuid,
        partition.label
    )
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// Copies the first `length` bytes of `from` into `to` at `offset`.
fn copy_range(from: &Path, to: &Path, offset: u64, length: u64) -> Result<()> {
    let mut source = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut target = fs::OpenOptions::new().write(true).open(to)?;
    target.seek(SeekFrom::Start(offset))?;
    let copied = io::copy(&mut io::Read::take(&mut source, length), &mut target)?;
    if copied != length {
        anyhow::bail!(
            "{} is shorter than the {length} bytes to copy",
            from.display()
        );
    }
    Ok(())
}

/// Writes a unit into the initrd tree and enables it for `target`.
fn install_unit(tree: &Path, name: &str, text: &str, target: &str) -> Result<()> {
    let units = tree.join("usr/lib/systemd/system");
    fs::create_dir_all(units.join(format!("{target}.wants")))?;
    fs::write(units.join(name), text)?;
    std::os::unix::fs::symlink(
        format!("../{name}"),
        units.join(format!("{target}.wants/{name}")),
    )?;
    Ok(())
}

/// Masks a unit of the build's initrd. systemd-repart is the one: with a
/// tmpfs root it would take the carried /usr disk for the root disk and
/// fail trying to fit a root partition into it (the booted system's own
/// copy is skipped by a condition in overlays/base).
fn mask_unit(tree: &Path, name: &str) -> Result<()> {
    let units = tree.join("etc/systemd/system");
    fs::create_dir_all(&units)?;
    std::os::unix::fs::symlink("/dev/null", units.join(name))?;
    Ok(())
}

/// A UUID (version 4 form) that depends only on `seed`.
fn derived_uuid(seed: &str) -> String {
    let (digest, _) =
        boxcar_signing::sha256_reader(seed.as_bytes()).expect("hashing memory cannot fail");
    let hex = digest.to_string();
    let variant = ["8", "9", "a", "b"][usize::from(hex.as_bytes()[16] % 4)];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// A newc cpio archive of `tree`, owned by root, in a stable order, every
/// entry stamped with `epoch` (cpio keeps modification times, and the
/// files were made just now).
fn write_cpio(tools: &HostTools, tree: &Path, out: &Path, epoch: i64) -> Result<()> {
    let mut paths = Vec::new();
    collect_paths(tree, tree, &mut paths)?;
    paths.sort();
    for path in &paths {
        stamp(&tree.join(path), epoch)?;
    }
    let list = out.with_extension("list");
    fs::write(&list, paths.join("\n") + "\n")?;
    Step::new("packing the PXE initrd addition", tools.path("cpio"))
        .args([
            "--create",
            "--format=newc",
            "--owner=0:0",
            "--quiet",
            "--reproducible",
        ])
        .current_dir(tree)
        .stdin_file(&list)
        .stdout_file(out)
        .run()?;
    fs::remove_file(&list)?;
    Ok(())
}

/// Sets a file's (or a symlink's own) access and modification times.
fn stamp(path: &Path, epoch: i64) -> Result<()> {
    use rustix::fs::{utimensat, AtFlags, Timestamps, CWD};
    let time = rustix::fs::Timespec {
        tv_sec: epoch,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .with_context(|| format!("setting the times of {}", path.display()))
}

fn collect_paths(root: &Path, dir: &Path, paths: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
        paths.push(relative);
        if path.is_dir() && !path.is_symlink() {
            collect_paths(root, &path, paths)?;
        }
    }
    Ok(())
}

/// Zero bytes that bring `length` to a multiple of 4.
fn cpio_padding(length: u64) -> usize {
    ((4 - length % 4) % 4) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carried_archive_starts_at_a_multiple_of_four_bytes() {
        assert_eq!(cpio_padding(23_335_411), 1);
        assert_eq!(cpio_padding(23_335_412), 0);
        assert_eq!(cpio_padding(5), 3);
        assert_eq!(cpio_padding(6), 2);
    }

    #[test]
    fn script_chains_relative_files_and_takes_extra_arguments() {
        let script = ipxe_script("b-1-pxe.vmlinuz", "b-1-pxe.initrd", "usrhash=ab root=tmpfs");
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains("kernel b-1-pxe.vmlinuz initrd=b-1-pxe.initrd usrhash=ab root=tmpfs ${boxcar-extra-args}\n"));
        assert!(script.contains("\ninitrd b-1-pxe.initrd\nboot\n"));
    }

    #[test]
    fn units_order_around_the_generated_ones() {
        assert!(ROOT_UNIT.contains("Before=initrd-root-fs.target sysroot-usr.mount"));
        assert!(USR_UNIT.contains("--partscan"));
    }

    #[test]
    fn masking_links_the_unit_to_dev_null() {
        let tree = tempfile::tempdir().unwrap();
        mask_unit(tree.path(), "systemd-repart.service").unwrap();
        let link = tree
            .path()
            .join("etc/systemd/system/systemd-repart.service");
        assert_eq!(fs::read_link(link).unwrap(), Path::new("/dev/null"));
    }

    #[test]
    fn the_carried_tree_is_stamped_with_the_epoch_and_uuids_are_stable() {
        let tree = tempfile::tempdir().unwrap();
        mask_unit(tree.path(), "systemd-repart.service").unwrap();
        let link = tree
            .path()
            .join("etc/systemd/system/systemd-repart.service");
        stamp(&link, 1_700_000_000).unwrap();
        stamp(tree.path(), 1_700_000_000).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::symlink_metadata(&link).unwrap().mtime(), 1_700_000_000);
        assert_eq!(fs::metadata(tree.path()).unwrap().mtime(), 1_700_000_000);
        let uuid = derived_uuid("a");
        assert_eq!(uuid, derived_uuid("a"));
        assert_ne!(uuid, derived_uuid("b"));
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(1, 1024 * 1024), 1024 * 1024);
        assert_eq!(round_up(2 * 1024 * 1024, 1024 * 1024), 2 * 1024 * 1024);
    }
}
