//! The platform table, `recipes/platforms.toml`: every platform Boxcar
//! ships for, its artifact format, kernel command line additions, agents,
//! the hardware it presents (firmware, disk bus, NIC), what else its
//! hypervisor offers the guest (a metadata service, an SMBIOS identity, a
//! guest agent channel) and how it delivers first-boot configuration. The
//! build, its record, the boot tests and `boxcar platforms` all read this
//! one table; no code asks for a platform by its id.

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

/// The instance metadata service a platform offers: where the guest reads
/// its identity (its hostname) from, and what the boot test imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetadataService {
    /// None: the hostname is the image's own.
    None,
    /// Amazon EC2's instance metadata service (IMDSv2: a session token,
    /// then GETs) at 169.254.169.254.
    Ec2Imds,
}

/// The SMBIOS system (type 1) identity the platform's hypervisor presents,
/// which the guest (systemd-detect-virt, the agents) reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SmbiosSystem {
    pub manufacturer: String,
    pub product: String,
}

impl SmbiosSystem {
    /// The vendor, for people: the manufacturer without its legal suffix
    /// ("VMware, Inc." is VMware).
    pub fn vendor(&self) -> &str {
        self.manufacturer
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
    }
}

/// Whether the boot test shows the guest the CPUID hypervisor bit (and
/// with it qemu's CPUID signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HypervisorCpuid {
    Visible,
    /// Hidden, so the guest identifies the hypervisor by its SMBIOS
    /// identity (as it does on VMware) instead of by qemu's signature,
    /// which no other hypervisor shows.
    Hidden,
}

/// The guest agent channel the platform's hypervisor offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestAgent {
    None,
    /// The qemu guest agent's virtio-serial port
    /// (`org.qemu.guest_agent.0`).
    QemuGa,
}

/// How the platform delivers first-boot provisioning configuration
/// (Ignition) to the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigDelivery {
    /// qemu's firmware configuration device (fw_cfg).
    FwCfg,
    /// The EC2 instance's user data, from the metadata service.
    Ec2UserData,
    /// VMware's guestinfo variables (the VM's extra configuration).
    VmwareGuestinfo,
    /// A URL on the kernel command line, fetched at boot.
    KernelCmdlineUrl,
    /// A file written onto the disk along with the image.
    Disk,
}

/// The guestinfo keys Ignition's vmware provider reads: the OVA's descriptor
/// offers them as user-settable properties, and its boot test checks it does.
pub const VMWARE_IGNITION_GUESTINFO: [&str; 2] = [
    "guestinfo.ignition.config.data",
    "guestinfo.ignition.config.data.encoding",
];

impl ConfigDelivery {
    /// The platform id Ignition reads its config with
    /// (`ignition.platform.id=`): qemu's fw_cfg, EC2's user data, VMware's
    /// guestinfo; on bare metal a URL on the kernel command line
    /// (`ignition.config.url=`) or, without one, the config written onto the
    /// disk.
    pub fn ignition_platform(self) -> &'static str {
        match self {
            ConfigDelivery::FwCfg => "qemu",
            ConfigDelivery::Ec2UserData => "aws",
            ConfigDelivery::VmwareGuestinfo => "vmware",
            ConfigDelivery::KernelCmdlineUrl | ConfigDelivery::Disk => "metal",
        }
    }

    /// Whether a boot test can deliver a config this way under qemu:
    /// VMware's guestinfo goes through a backdoor port only VMware answers.
    pub fn testable_under_qemu(self) -> bool {
        self != ConfigDelivery::VmwareGuestinfo
    }

    pub fn name(self) -> &'static str {
        match self {
            ConfigDelivery::FwCfg => "qemu fw_cfg",
            ConfigDelivery::Ec2UserData => "EC2 user data",
            ConfigDelivery::VmwareGuestinfo => "VMware guestinfo",
            ConfigDelivery::KernelCmdlineUrl => "a URL on the kernel command line",
            ConfigDelivery::Disk => "a file on the disk",
        }
    }
}

/// A platform agent that talks to its hypervisor through an interface qemu
/// cannot offer the guest (open-vm-tools needs VMware's backdoor I/O port,
/// which VMware answers from guest user space and qemu does not). Under
/// qemu the boot test can only show that systemd starts it where its
/// platform condition holds, and that the agent's own check says this is
/// not its hypervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HypervisorBoundAgent {
    /// The agent's unit: one of the platform's `units`.
    pub unit: String,
    /// A program in the image, run without arguments, that tells whether
    /// the hypervisor is the real one (`vmware-checkvm`).
    pub check: String,
    /// What the check prints when it runs outside the real hypervisor.
    pub check_outside: String,
}

impl HypervisorBoundAgent {
    /// The key the guest reports the check's output under: the program's
    /// name with `_` for `-` (`vmware_checkvm`).
    pub fn report_key(&self) -> String {
        self.check.replace('-', "_")
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
    /// The metadata service the platform offers the guest.
    pub metadata_service: MetadataService,
    /// The SMBIOS system identity the hypervisor presents; none for qemu's
    /// own.
    pub smbios_system: Option<SmbiosSystem>,
    pub hypervisor_cpuid: HypervisorCpuid,
    pub guest_agent: GuestAgent,
    /// Agents among `units` that need the real hypervisor to run.
    pub hypervisor_bound_agents: Vec<HypervisorBoundAgent>,
    /// How first-boot configuration reaches the machine.
    pub config_delivery: ConfigDelivery,
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
        [
            format!("boxcar.platform={}", self.id),
            format!(
                "ignition.platform.id={}",
                self.config_delivery.ignition_platform()
            ),
        ]
        .into_iter()
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
        "| platform | artifact | kernel command line adds | agents | first-boot config from | boot test presents |\n|---|---|---|---|---|---|\n",
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
            "| **{}**: {} | {} | `{}` | {} | {} | {} |\n",
            p.id,
            p.description,
            files.join("<br>"),
            p.kernel_cmdline(),
            agents,
            p.config_delivery.name(),
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
    for agent in &platform.hypervisor_bound_agents {
        if !platform.units.contains(&agent.unit) {
            return Err((
                "hypervisor-bound-agents",
                format!("{:?} is not one of the platform's units", agent.unit),
            ));
        }
        let valid_check = agent.check.starts_with(|c: char| c.is_ascii_lowercase())
            && agent
                .check
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_check {
            return Err((
                "hypervisor-bound-agents",
                format!(
                    "check {:?} is not a program name (lowercase letters, digits and -)",
                    agent.check
                ),
            ));
        }
        if agent.check_outside.trim().is_empty() {
            return Err((
                "hypervisor-bound-agents",
                format!(
                    "check-outside for {} is empty; it must be what {} prints outside the real hypervisor",
                    agent.unit, agent.check
                ),
            ));
        }
    }
    if let Some(smbios) = &platform.smbios_system {
        if smbios.manufacturer.trim().is_empty() || smbios.product.trim().is_empty() {
            return Err((
                "smbios-system",
                "give both a manufacturer and a product".to_owned(),
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
    if network_boot && platform.config_delivery == ConfigDelivery::Disk {
        return Err((
            "config-delivery",
            "a diskless platform cannot deliver configuration on a disk".to_owned(),
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
metadata-service = "none"
hypervisor-cpuid = "visible"
guest-agent = "qemu-ga"
hypervisor-bound-agents = []
config-delivery = "fw-cfg"
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
            "boxcar.platform=qemu ignition.platform.id=qemu console=ttyS0,115200n8"
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
        let text = ENTRY.replace(
            "hypervisor-bound-agents = []",
            "hypervisor-bound-agents = [{ unit = \"qemu-guest-agent.service\", check = \"x\", check-outside = \"y\", probe = 1 }]",
        );
        let err = parse(&text).unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(15), Some("probe")));
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
            (Some(19), Some("kernel-args"))
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

    /// An entry with a VMware-like SMBIOS identity and a hypervisor-bound
    /// agent, in place of ENTRY's qemu-like lines.
    fn vmware_like(bound_agents: &str) -> String {
        ENTRY
            .replace(
                "hypervisor-cpuid = \"visible\"",
                "smbios-system = { manufacturer = \"VMware, Inc.\", product = \"VMware Virtual Platform\" }\nhypervisor-cpuid = \"hidden\"",
            )
            .replace("guest-agent = \"qemu-ga\"", "guest-agent = \"none\"")
            .replace(
                "hypervisor-bound-agents = []",
                &format!("hypervisor-bound-agents = [{bound_agents}]"),
            )
            .replace("\"fw-cfg\"", "\"vmware-guestinfo\"")
    }

    const BOUND_AGENT: &str = "{ unit = \"qemu-guest-agent.service\", check = \"vmware-checkvm\", check-outside = \"not VMware\" }";

    #[test]
    fn parses_what_the_hypervisor_offers_and_how_config_arrives() {
        let qemu = parse(ENTRY).unwrap().platforms.remove(0);
        assert_eq!(qemu.metadata_service, MetadataService::None);
        assert_eq!(qemu.smbios_system, None);
        assert_eq!(qemu.hypervisor_cpuid, HypervisorCpuid::Visible);
        assert_eq!(qemu.guest_agent, GuestAgent::QemuGa);
        assert_eq!(qemu.config_delivery, ConfigDelivery::FwCfg);
        assert!(qemu.hypervisor_bound_agents.is_empty());

        let vmware = parse(&vmware_like(BOUND_AGENT))
            .unwrap()
            .platforms
            .remove(0);
        let smbios = vmware.smbios_system.as_ref().unwrap();
        assert_eq!(
            (smbios.manufacturer.as_str(), smbios.product.as_str()),
            ("VMware, Inc.", "VMware Virtual Platform")
        );
        assert_eq!(smbios.vendor(), "VMware");
        assert_eq!(vmware.hypervisor_cpuid, HypervisorCpuid::Hidden);
        assert_eq!(vmware.guest_agent, GuestAgent::None);
        assert_eq!(vmware.config_delivery, ConfigDelivery::VmwareGuestinfo);
        assert_eq!(
            vmware.hypervisor_bound_agents,
            [HypervisorBoundAgent {
                unit: "qemu-guest-agent.service".into(),
                check: "vmware-checkvm".into(),
                check_outside: "not VMware".into(),
            }]
        );
        assert_eq!(
            vmware.hypervisor_bound_agents[0].report_key(),
            "vmware_checkvm"
        );

        let aws = ENTRY
            .replace("\"none\"", "\"ec2-imds\"")
            .replace("\"fw-cfg\"", "\"ec2-user-data\"");
        let aws = parse(&aws).unwrap().platforms.remove(0);
        assert_eq!(aws.metadata_service, MetadataService::Ec2Imds);
        assert_eq!(aws.config_delivery, ConfigDelivery::Ec2UserData);
    }

    #[test]
    fn new_fields_are_required_and_their_values_checked() {
        for key in [
            "metadata-service",
            "hypervisor-cpuid",
            "guest-agent",
            "hypervisor-bound-agents",
            "config-delivery",
        ] {
            let text: String = ENTRY
                .lines()
                .filter(|line| !line.starts_with(key))
                .map(|line| format!("{line}\n"))
                .collect();
            let err = parse(&text).unwrap_err();
            assert!(err.message.contains(key), "{key}: {err}");
        }
        for (from, to, line, key) in [
            ("\"none\"", "\"gce-metadata\"", 12, "metadata-service"),
            ("\"visible\"", "\"off\"", 13, "hypervisor-cpuid"),
            ("\"qemu-ga\"", "\"vmtoolsd\"", 14, "guest-agent"),
            ("\"fw-cfg\"", "\"floppy\"", 16, "config-delivery"),
        ] {
            let err = parse(&ENTRY.replace(from, to)).unwrap_err();
            assert_eq!(err.line, Some(line), "{key}: {err}");
            assert!(err.message.contains(&to[1..to.len() - 1]), "{key}: {err}");
        }
        let smbios_typo = vmware_like("").replace("product =", "model =");
        let err = parse(&smbios_typo).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("model"), "{err}");
    }

    #[test]
    fn semantic_errors_in_the_new_fields_name_their_key() {
        let key_of = |text: &str| parse(text).unwrap_err().key;
        let not_a_unit = vmware_like(&BOUND_AGENT.replace("qemu-guest-agent", "open-vm-tools"));
        let err = parse(&not_a_unit).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("hypervisor-bound-agents"));
        assert!(
            err.message.contains("not one of the platform's units"),
            "{err}"
        );
        let bad_check = vmware_like(&BOUND_AGENT.replace("vmware-checkvm", "/bin/sh -c x"));
        assert_eq!(
            key_of(&bad_check).as_deref(),
            Some("hypervisor-bound-agents")
        );
        let no_text = vmware_like(&BOUND_AGENT.replace("not VMware", " "));
        assert_eq!(key_of(&no_text).as_deref(), Some("hypervisor-bound-agents"));
        let no_product = vmware_like("").replace("VMware Virtual Platform", "");
        assert_eq!(key_of(&no_product).as_deref(), Some("smbios-system"));
        let diskless_disk_config = ENTRY
            .replace("\"qcow2\"", "\"pxe\"")
            .replace("\"uefi\"", "\"bios\"")
            .replace("disk-bus = \"virtio\"", "disk-bus = \"none\"")
            .replace("\"fw-cfg\"", "\"disk\"");
        let err = parse(&diskless_disk_config).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("config-delivery"))
        );
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
        let by_id = |id: &str| table.get(&id.parse().unwrap()).unwrap().clone();
        let (qemu, vmware, aws) = (by_id("qemu"), by_id("vmware"), by_id("aws"));
        assert_eq!(aws.metadata_service, MetadataService::Ec2Imds);
        assert_eq!(qemu.guest_agent, GuestAgent::QemuGa);
        assert_eq!(
            vmware.smbios_system.as_ref().map(SmbiosSystem::vendor),
            Some("VMware")
        );
        assert_eq!(vmware.hypervisor_cpuid, HypervisorCpuid::Hidden);
        assert_eq!(
            vmware.hypervisor_bound_agents[0].unit,
            "open-vm-tools.service"
        );
        assert_eq!(
            vmware.hypervisor_bound_agents[0].report_key(),
            "vmware_checkvm"
        );
        let delivery: Vec<ConfigDelivery> =
            table.platforms.iter().map(|p| p.config_delivery).collect();
        assert_eq!(
            delivery,
            [
                ConfigDelivery::FwCfg,
                ConfigDelivery::VmwareGuestinfo,
                ConfigDelivery::Ec2UserData,
                ConfigDelivery::Disk,
                ConfigDelivery::KernelCmdlineUrl,
            ]
        );
    }
}
