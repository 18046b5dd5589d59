//! `boxcar provision`: writes an Ignition config onto a Boxcar disk before
//! its first boot (a downloaded image file, or the disk it was written to),
//! as `flatcar-install -i` and `coreos-installer install --ignition-file`
//! do, for platforms that have no other way to hand a machine its config
//! (bare metal).
//!
//! The config is checked with `ignition-validate` first, and written only
//! onto a disk whose partition table is a Boxcar one, that has never booted:
//! into ROOT, as `/var/lib/boxcar/provision/config.ign` (mode 0600), where
//! the first boot's initrd hands it to Ignition and removes it once applied
//! (recipes/initrd/). ROOT is ext4 and written with `debugfs`, so nothing is
//! mounted and the host needs no file system drivers.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::hosttools::{HostTools, Requirement};
use crate::image::{self, PartitionTable, Role};
use crate::process::Step;

/// Where the first boot looks for a config written onto the disk.
pub const CONFIG_PATH: &str = "/var/lib/boxcar/provision/config.ign";
/// What the first boot leaves behind once provisioning succeeded.
pub const STAMP_PATH: &str = "/var/lib/boxcar/provisioned";
/// An Ignition config larger than this is surely not one.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct ProvisionRequest {
    /// A disk image file or a block device.
    pub disk: PathBuf,
    /// An Ignition config (JSON).
    pub config: PathBuf,
}

/// What was written.
#[derive(Debug, Serialize)]
pub struct Provisioned {
    pub disk: PathBuf,
    pub root_partition: u32,
    pub path: &'static str,
    pub bytes: u64,
}

/// The programs `boxcar provision` runs.
pub fn requirements() -> Vec<Requirement> {
    vec![
        Requirement {
            program: "ignition-validate",
            purpose: "checks the config before it is written",
            min_version: None,
            version_args: &["--version"],
            package: "ignition",
        },
        Requirement {
            program: "sfdisk",
            purpose: "reads the disk's partition table",
            min_version: Some("2.35"),
            version_args: &["--version"],
            package: "fdisk",
        },
        Requirement {
            program: "losetup",
            purpose: "reaches ROOT inside the disk",
            min_version: None,
            version_args: &["--version"],
            package: "mount",
        },
        Requirement {
            program: "debugfs",
            purpose: "writes the config into ROOT without mounting it",
            min_version: None,
            version_args: &["-V"],
            package: "e2fsprogs",
        },
    ]
}

/// Validates the config and writes it onto the disk.
pub fn provision(request: &ProvisionRequest, tools: &HostTools) -> Result<Provisioned> {
    // One copy of the config is validated and written, so that what was
    // checked is what lands even if the file changes meanwhile.
    let bytes = read_config(&request.config)?;
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), &bytes)?;
    validate(tools, config.path()).with_context(|| {
        format!(
            "{} is not a config this image's Ignition (2.14: specs 3.0 to 3.3) accepts",
            request.config.display()
        )
    })?;
    let not_boxcar = || {
        format!(
            "{} is not a Boxcar disk; nothing was written (it takes a raw image or a block device: decompress a .zst first)",
            request.disk.display()
        )
    };
    let table = image::read_partition_table(tools.path("sfdisk"), &request.disk)
        .with_context(not_boxcar)?;
    check_boxcar_table(&table).with_context(not_boxcar)?;
    let root = table.require(Role::Root)?;
    let device = LoopDevice::attach(tools, &request.disk, root.offset, root.size)?;
    if exists(tools, &device.path, STAMP_PATH)? {
        bail!(
            "{} has booted already ({STAMP_PATH} is there): Ignition runs only on a machine's first boot",
            request.disk.display()
        );
    }
    write_file(tools, &device.path, config.path(), CONFIG_PATH)?;
    let read_back = read_file(tools, &device.path, CONFIG_PATH)?;
    if read_back != bytes {
        bail!("{CONFIG_PATH} reads back differently from what was written");
    }
    Ok(Provisioned {
        disk: request.disk.clone(),
        root_partition: root.number,
        path: CONFIG_PATH,
        bytes: bytes.len() as u64,
    })
}

fn read_config(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        bail!(
            "{} is {} bytes: not an Ignition config",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `ignition-validate`, whose findings become the error.
fn validate(tools: &HostTools, config: &Path) -> Result<()> {
    Step::new(
        "validating the Ignition config",
        tools.path("ignition-validate"),
    )
    .arg(config)
    .run()?;
    Ok(())
}

/// A Boxcar disk: an ESP, both /usr slots with their hash trees, a root,
/// and nothing else.
fn check_boxcar_table(table: &PartitionTable) -> Result<()> {
    for role in [
        Role::Esp,
        Role::UsrA,
        Role::UsrAVerity,
        Role::UsrB,
        Role::UsrBVerity,
        Role::Root,
    ] {
        table.require(role)?;
    }
    if let Some(other) = table.partitions.iter().find(|p| p.role == Role::Other) {
        bail!(
            "partition {} ({}) is not one of Boxcar's",
            other.number,
            other.type_name
        );
    }
    let usr = table.require(Role::UsrA)?;
    if !usr
        .label
        .starts_with(&format!("{}_", crate::platform::IMAGE_ID))
    {
        bail!(
            "its /usr partition is labelled {:?}, not as Boxcar's are",
            usr.label
        );
    }
    Ok(())
}

/// A loop device over part of a file or device, detached when dropped.
struct LoopDevice<'a> {
    tools: &'a HostTools,
    path: PathBuf,
}

impl<'a> LoopDevice<'a> {
    fn attach(tools: &'a HostTools, disk: &Path, offset: u64, size: u64) -> Result<Self> {
        let output = Step::new("attaching ROOT as a loop device", tools.path("losetup"))
            .args(["--find", "--show"])
            .arg(format!("--offset={offset}"))
            .arg(format!("--sizelimit={size}"))
            .arg(disk)
            .output_text()?;
        Ok(Self {
            tools,
            path: PathBuf::from(output.trim()),
        })
    }
}

impl Drop for LoopDevice<'_> {
    fn drop(&mut self) {
        let _ = Step::new("detaching the loop device", self.tools.path("losetup"))
            .arg("--detach")
            .arg(&self.path)
            .run();
    }
}

/// Whether `path` exists in the ext4 file system on `device`.
fn exists(tools: &HostTools, device: &Path, path: &str) -> Result<bool> {
    let output = Step::new("looking into ROOT", tools.path("debugfs"))
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(device)
        .output_text()?;
    // debugfs says "not found" on stderr and exits 0; a found file's
    // details, on stdout, start with its inode.
    Ok(output.contains("Inode:"))
}

/// Writes the host file `source` to `path` in ROOT (mode 0600, root's).
fn write_file(tools: &HostTools, device: &Path, source: &Path, path: &str) -> Result<()> {
    let dir = Path::new(path).parent().expect("an absolute path");
    let mut commands = String::new();
    let mut partial = PathBuf::from("/");
    for part in dir.components().skip(1) {
        partial.push(part);
        commands.push_str(&format!("mkdir {}\n", partial.display()));
    }
    commands.push_str(&format!("rm {path}\n"));
    commands.push_str(&format!("write {} {path}\n", source.display()));
    commands.push_str(&format!("set_inode_field {path} mode 0100600\n"));
    commands.push_str(&format!("set_inode_field {path} uid 0\n"));
    commands.push_str(&format!("set_inode_field {path} gid 0\n"));
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), commands)?;
    Step::new("writing the config into ROOT", tools.path("debugfs"))
        .args(["-w", "-f"])
        .arg(script.path())
        .arg(device)
        .run()?;
    Ok(())
}

/// The bytes of `path` in ROOT.
fn read_file(tools: &HostTools, device: &Path, path: &str) -> Result<Vec<u8>> {
    let output = Step::new("reading the config back", tools.path("debugfs"))
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(device)
        .output()?;
    Ok(output)
}
