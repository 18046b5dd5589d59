//! The platform table, `recipes/platforms.toml`: every platform Boxcar
//! ships for, its artifact format, kernel command line additions, agents,
//! and the hardware it presents (firmware, disk bus, NIC). The build, its
//! record, the boot tests and `boxcar platforms` all read this one table.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config_error::{line_of_offset, ConfigError};
use crate::version::Version;

/// Where the table lives in a checkout.
pub const TABLE_FILE: &str = "recipes/platforms.toml";

/// The OS name: mkosi's ImageId, os-release's ID, the prefix of every
/// artifact's file name.
pub const IMAGE_ID: &str = "boxcar";

/// A platform's id: lowercase letters and digits, starting with a letter. It
/// appears on the kernel command line (`boxcar.platform=<id>`), in file
/// names and in environment variable names, so nothing else is allowed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlatformId(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid platform id {0:?}: use lowercase letters and digits, starting with a letter")]
pub struct InvalidPlatformId(String);

impl FromStr for PlatformId {
    type Err = InvalidPlatformId;
    fn from_str(text: &str) -> Result<Self, InvalidPlatformId> {
        let valid = (1..=16).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidPlatformId(text.to_owned()))
        }
    }
}

impl TryFrom<String> for PlatformId {
    type Error = InvalidPlatformId;
    fn try_from(text: String) -> Result<Self, InvalidPlatformId> {
        text.parse()
    }
}

impl From<PlatformId> for String {
    fn from(id: PlatformId) -> String {
        id.0
    }
}

impl PlatformId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlatformId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The artifact a platform consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A compressed qcow2 disk.
    Qcow2,
    /// An OVF 1.0 package: descriptor, manifest and streamOptimized VMDK.
    Ova,
    /// A raw disk image.
    Raw,
    /// A raw disk image compressed with zstd.
    RawZstd,
    /// A kernel, an initrd carrying /usr, and an iPXE script.
    Pxe,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Ova => "ova",
            Format::Raw => "raw",
            Format::RawZstd => "raw-zstd",
            Format::Pxe => "pxe",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    Uefi,
    /// Legacy BIOS (the PXE case: iPXE loads the kernel directly).
    Bios,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Uefi => "UEFI",
            Firmware::Bios => "BIOS (iPXE)",
        }
    }
}

/// How the platform attaches its boot disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskBus {
    Virtio,
    /// VMware's paravirtual SCSI controller.
    Pvscsi,
    Nvme,
    /// AHCI.
    Sata,
    /// No disk (network boot).
    None,
}

impl DiskBus {
    pub fn name(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio disk",
            DiskBus::Pvscsi => "PVSCSI disk",
            DiskBus::Nvme => "NVMe disk",
            DiskBus::Sata => "SATA disk",
            DiskBus::None => "no disk (network boot)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nic {
    Virtio,
    Vmxnet3,
    E1000e,
}

impl Nic {
    pub fn name(self) -> &'static str {
        match self {
            Nic::Virtio => "virtio-net NIC",
            Nic::Vmxnet3 => "VMXNET3 NIC",
            Nic::E1000e => "e1000e NIC",
        }
    }

    /// One line for people: firmware, disk and NIC.
    pub fn hardware(firmware: Firmware, bus: DiskBus, nic: Nic) -> String {
        format!(
            "{} firmware, {}, {}",
            firmware.name(),
            bus.name(),
            nic.name()
        )
    }
}

/// One `[[platform]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Platform {
    pub id: PlatformId,
    pub description: String,
    pub format: Format,
    /// Added to the UKI's command line on this platform (after
    /// `boxcar.platform=<id>`), one argument per entry.
    pub kernel_args: Vec<String>,
    /// Packages for this platform's agents, installed in the shared /usr.
    pub packages: Vec<String>,
    /// Units that run only on this platform.
    pub units: Vec<String>,
    pub firmware: Firmware,
    pub disk_bus: DiskBus,
    pub nic: Nic,
}

/// What one artifact file of a platform is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactRole {
    /// The disk (or disk package) the platform boots.
    Disk,
    /// PXE: the kernel.
    Kernel,
    /// PXE: the initrd that carries /usr.
    Initrd,
    /// PXE: the iPXE script.
    BootScript,
}

impl Platform {
    /// The kernel command line additions: the platform id first.
    pub fn kernel_cmdline(&self) -> String {
        std::iter::once(format!("boxcar.platform={}", self.id))
            .chain(self.kernel_args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The files of this platform's artifact, by role.
    pub fn artifact_files(&self, version: &Version) -> Vec<(ArtifactRole, String)> {
        let base = format!("{}-{version}-{}", IMAGE_ID, self.id);
        match self.format {
            Format::Qcow2 => vec![(ArtifactRole::Disk, format!("{base}.qcow2"))],
            Format::Ova => vec![(ArtifactRole::Disk, format!("{base}.ova"))],
            Format::Raw => vec![(ArtifactRole::Disk, format!("{base}.raw"))],
            Format::RawZstd => vec![(ArtifactRole::Disk, format!("{base}.raw.zst"))],
            Format::Pxe => vec![
                (ArtifactRole::Kernel, format!("{base}.vmlinuz")),
                (ArtifactRole::Initrd, format!("{base}.initrd")),
                (ArtifactRole::BootScript, format!("{base}.ipxe")),
            ],
        }
    }

    /// The converter tools this platform's format needs.
    pub fn converter_tools(&self) -> &'static [&'static str] {
        match self.format {
            Format::Qcow2 => &["qemu-img", "mcopy"],
            Format::Ova => &["mcopy", "tar"],
            Format::Raw => &["mcopy"],
            Format::RawZstd => &["mcopy", "zstd"],
            Format::Pxe => &["sfdisk", "cpio"],
        }
    }
}

/// The table as Markdown, for the README (between its `platforms` markers;
/// a test keeps the two the same).
pub fn markdown_table(platforms: &[Platform]) -> String {
    let version: Version = "0".parse().expect("a valid version");
    let mut text = String::from(
        "| platform | artifact | kernel command line adds | agents | boot test presents |\n|---|---|---|---|---|\n",
    );
    for p in platforms {
        let files: Vec<String> = p
            .artifact_files(&version)
            .into_iter()
            .map(|(_, f)| format!("`{}`", f.replacen("-0-", "-VERSION-", 1)))
            .collect();
        let agents = if p.packages.is_empty() {
            "none".to_owned()
        } else {
            p.packages.join(", ")
        };
        text.push_str(&format!(
            "| **{}**: {} | {} | `{}` | {} | {} |\n",
            p.id,
            p.description,
            files.join("<br>"),
            p.kernel_cmdline(),
            agents,
            Nic::hardware(p.firmware, p.disk_bus, p.nic)
        ));
    }
    text
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    platform: Vec<Spanned<Platform>>,
}

/// The parsed, checked table.
#[derive(Clone, Debug)]
pub struct PlatformTable {
    pub path: PathBuf,
    pub platforms: Vec<Platform>,
}

impl PlatformTable {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the platform table {}", path.display()))?;
        Ok(Self::parse(path, &text)?)
    }

    /// Parses and checks the table; errors name the file, line and key.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: TableFile =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        if file.platform.is_empty() {
            return Err(ConfigError::new(
                path,
                None,
                Some("platform"),
                "the table has no [[platform]] entries",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut platforms = Vec::new();
        for entry in file.platform {
            let line = id_line(text, entry.span());
            let platform = entry.into_inner();
            let error =
                |key: &str, message: String| ConfigError::new(path, Some(line), Some(key), message);
            if !seen.insert(platform.id.clone()) {
                return Err(error(
                    "id",
                    format!("platform {} is listed twice", platform.id),
                ));
            }
            check_platform(&platform).map_err(|(key, message)| {
                error(key, format!("platform {}: {message}", platform.id))
            })?;
            platforms.push(platform);
        }
        Ok(Self {
            path: path.to_owned(),
            platforms,
        })
    }

    /// The platforms named in `ids`, in table order; all of them when `ids`
    /// is empty. An unknown id is an error that lists the known ones.
    pub fn select(&self, ids: &[PlatformId]) -> Result<Vec<&Platform>> {
        for id in ids {
            if !self.platforms.iter().any(|p| &p.id == id) {
                anyhow::bail!(
                    "unknown platform {id}: {} lists {}",
                    self.path.display(),
                    self.platforms
                        .iter()
                        .map(|p| p.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(self
            .platforms
            .iter()
            .filter(|p| ids.is_empty() || ids.contains(&p.id))
            .collect())
    }

    pub fn get(&self, id: &PlatformId) -> Option<&Platform> {
        self.platforms.iter().find(|p| &p.id == id)
    }
}

/// The line of an entry's `id = ...` (where a reader looks for the entry),
/// else the line of its `[[platform]]` header, where `span` points.
fn id_line(text: &str, span: std::ops::Range<usize>) -> usize {
    let header = line_of_offset(text, span.start);
    text[span.start..]
        .lines()
        .enumerate()
        .skip(1)
        .take_while(|(_, line)| !line.trim_start().starts_with('['))
        .find(|(_, line)| line.trim_start().starts_with("id"))
        .map_or(header, |(index, _)| header + index)
}

/// Checks one entry for what the types cannot say: (key, message) on error.
fn check_platform(platform: &Platform) -> Result<(), (&'static str, String)> {
    for arg in &platform.kernel_args {
        if arg.is_empty() || arg.chars().any(char::is_whitespace) {
            return Err((
                "kernel-args",
                format!("{arg:?} is not one argument; give one argument per entry"),
            ));
        }
        let key = arg.split('=').next().unwrap_or_default();
        if ["usrhash", "root", "mount.usr", "boxcar.platform"].contains(&key) {
            return Err((
                "kernel-args",
                format!("{key}= is set by the build and cannot come from the platform table"),
            ));
        }
    }
    for unit in &platform.units {
        let valid_suffix = [".service", ".socket", ".timer", ".path"]
            .iter()
            .any(|s| unit.ends_with(s));
        if !valid_suffix || unit.contains('/') {
            return Err((
                "units",
                format!("{unit:?} is not a unit name (name.service, .socket, .timer or .path)"),
            ));
        }
    }
    for package in &platform.packages {
        let valid = !package.is_empty()
            && package
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !valid {
            return Err((
                "packages",
                format!("{package:?} is not a Debian package name"),
            ));
        }
    }
    let network_boot = platform.format == Format::Pxe;
    if network_boot != (platform.disk_bus == DiskBus::None) {
        return Err((
            "disk-bus",
            "a pxe platform has disk-bus = \"none\", and only a pxe platform does".to_owned(),
        ));
    }
    if !network_boot && platform.firmware != Firmware::Uefi {
        return Err((
            "firmware",
            "disk images boot through systemd-boot and need UEFI firmware".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = r#"
[[platform]]
id = "qemu"
description = "QEMU"
format = "qcow2"
kernel-args = ["console=ttyS0,115200n8"]
packages = ["qemu-guest-agent"]
units = ["qemu-guest-agent.service"]
firmware = "uefi"
disk-bus = "virtio"
nic = "virtio"
"#;

    fn parse(text: &str) -> Result<PlatformTable, ConfigError> {
        PlatformTable::parse(Path::new("recipes/platforms.toml"), text)
    }

    #[test]
    fn parses_an_entry_and_builds_its_command_line_and_files() {
        let table = parse(ENTRY).unwrap();
        let qemu = &table.platforms[0];
        assert_eq!(
            qemu.kernel_cmdline(),
            "boxcar.platform=qemu console=ttyS0,115200n8"
        );
        let version: Version = "1.2.3".parse().unwrap();
        assert_eq!(
            qemu.artifact_files(&version),
            [(ArtifactRole::Disk, "boxcar-1.2.3-qemu.qcow2".to_owned())]
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let text = ENTRY.replace("nic = \"virtio\"", "nic = \"virtio\"\nnics = 2");
        let err = parse(&text).unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(12), Some("nics")));
    }

    #[test]
    fn unknown_format_is_located() {
        let err = parse(&ENTRY.replace("\"qcow2\"", "\"vhdx\"")).unwrap_err();
        assert_eq!(err.line, Some(5));
        assert!(err.message.contains("vhdx"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_entry_line_and_key() {
        let two = format!(
            "{ENTRY}{}",
            ENTRY
                .replace("\"qemu\"", "\"vmware\"")
                .replace("console=ttyS0,115200n8", "root=/dev/sda")
        );
        let err = parse(&two).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(14), Some("kernel-args"))
        );
        assert!(err.message.contains("platform vmware"), "{err}");
        let dup = format!("{ENTRY}{ENTRY}");
        assert_eq!(parse(&dup).unwrap_err().key.as_deref(), Some("id"));
        let spaced = ENTRY.replace("console=ttyS0,115200n8", "quiet splash");
        assert_eq!(
            parse(&spaced).unwrap_err().key.as_deref(),
            Some("kernel-args")
        );
        let pxe_with_disk = ENTRY.replace("\"qcow2\"", "\"pxe\"");
        assert_eq!(
            parse(&pxe_with_disk).unwrap_err().key.as_deref(),
            Some("disk-bus")
        );
        let bios_disk = ENTRY.replace("\"uefi\"", "\"bios\"");
        assert_eq!(
            parse(&bios_disk).unwrap_err().key.as_deref(),
            Some("firmware")
        );
        let bad_unit = ENTRY.replace("qemu-guest-agent.service", "qemu-guest-agent");
        assert_eq!(parse(&bad_unit).unwrap_err().key.as_deref(), Some("units"));
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in ["", "VMware", "open-stack", "1qemu", "a_b"] {
            assert!(bad.parse::<PlatformId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn selection_refuses_unknown_platforms() {
        let table = parse(ENTRY).unwrap();
        assert_eq!(table.select(&[]).unwrap().len(), 1);
        let err = table.select(&["azure".parse().unwrap()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown platform azure: recipes/platforms.toml lists qemu"
        );
    }

    /// The README's platform table is the shipped table's rendering.
    #[test]
    fn readme_table_matches_the_shipped_table() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let table = PlatformTable::load(&root.join(TABLE_FILE)).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let start = "<!-- platforms: generated by `boxcar platforms --markdown` -->\n";
        let section = readme
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once("<!-- platforms end -->"))
            .map(|(section, _)| section)
            .expect("README.md has the platforms markers");
        assert_eq!(
            section,
            markdown_table(&table.platforms),
            "README.md is out of date: paste `boxcar platforms --markdown` between its markers"
        );
    }

    /// The shipped table parses, and covers the platforms the project promises.
    #[test]
    fn shipped_table_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(TABLE_FILE);
        let table = PlatformTable::load(&path).unwrap();
        let ids: Vec<&str> = table.platforms.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["qemu", "vmware", "aws", "metal", "pxe"]);
    }
}
