//! `boxcar test`: boot every artifact of a build in qemu, the way its
//! platform presents it, and record evidence of what it is.
//!
//! Artifacts are never changed: a VM writes to a qcow2 overlay (larger than
//! the image, so ROOT's growth is exercised) or to a temporary copy. What
//! the guest needs for the test (a script, a container image) comes on a
//! separate disk and through systemd credentials passed by SMBIOS, so the
//! production image carries nothing for it.

pub mod evidence;
pub mod http;
mod ova_check;
mod provisioning;
pub mod qemu;
pub mod update_agent;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;

use crate::hosttools::{self, HostTools, Requirement};
use crate::image::Role;
use crate::platform::{
    ArtifactRole, ConfigDelivery, DiskBus, Firmware, Format, GuestAgent, HypervisorCpuid,
    MetadataService, Nic, Platform, PlatformId, SmbiosSystem, IMAGE_ID,
};
use crate::process::{terminate, Step};
use crate::progress::{Phase, Progress};
use crate::records::buildinfo::BuildInfo;
use crate::records::evidence::{self as record, BootOutcome, Check, Evidence, Milestone, TestCase};
use evidence::{Expectations, RootExpectation, UpdateExpectation};
use qemu::{
    AccelChoice, AccelRequest, BootSource, Firmware as FirmwareFiles, FirmwareSetup, VmSpec,
};

/// The guest side, shipped inside `boxcar` and put on the test disk.
const GUEST_SCRIPT: &str = include_str!("guest-evidence.sh");
/// The unit that runs it, passed as a credential.
const GUEST_UNIT: &str = include_str!("evidence-unit.service");
const GUEST_UNIT_NAME: &str = "boxcar-evidence.service";

/// The disk the VM sees is this much larger than the image, so the first
/// boot has room to grow ROOT into.
const OVERLAY_SIZE: &str = "8G";
/// The bare-metal image is written onto a disk of this size.
const METAL_DISK_BYTES: u64 = 12 * 1024 * 1024 * 1024;
/// A diskless boot holds /usr and the root in memory.
const PXE_MIN_MEMORY_MIB: u32 = 3072;

/// Where the busybox that becomes the test container comes from.
const BUSYBOX: &str = "/bin/busybox";

/// In a tamper test, the byte flipped is this far into USR-A: inside the
/// erofs superblock (at 1024), which every mount reads.
pub const TAMPER_OFFSET_IN_USR: u64 = 1024 + 4;

/// The imitation metadata services: where the guest looks for them, and
/// the hostname the EC2 one hands out.
const IMDS_ADDRESS: &str = "169.254.169.254:80";
const IMDS_HOSTNAME: &str = "ip-169-254-0-15.boxcar-test.internal";
/// qemu forwards only addresses inside the guest's network, so a guest that
/// needs the link-local metadata address lives in the link-local range.
const IMDS_NETWORK: &str = "169.254.0.0/16";

/// Where the PXE guest finds the HTTP server with the boot files.
const PXE_HTTP_ADDRESS: &str = "10.0.2.100:80";

/// Where a guest finds the HTTP server with a provisioning config (a PXE
/// boot's `ignition.config.url=`, a config's URL that answers 404).
const CONFIG_HTTP_ADDRESS: &str = "10.0.2.101:80";

/// The fw_cfg name Ignition reads its config from on qemu.
const FW_CFG_IGNITION: &str = "opt/com.coreos/config";

/// How the harness imitates a platform's metadata service.
struct MetadataImitation {
    /// Where the guest connects (forwarded to `boxcar internal http-serve`).
    address: &'static str,
    /// The guest's network, which must contain the address.
    network: &'static str,
    /// The hostname the service hands out, which the guest must take.
    hostname: &'static str,
}

/// The imitation of `service`; none where the platform has no service.
fn metadata_imitation(service: MetadataService) -> Option<MetadataImitation> {
    match service {
        MetadataService::None => None,
        MetadataService::Ec2Imds => Some(MetadataImitation {
            address: IMDS_ADDRESS,
            network: IMDS_NETWORK,
            hostname: IMDS_HOSTNAME,
        }),
    }
}

/// The programs `boxcar test` runs.
pub fn requirements() -> Vec<Requirement> {
    vec![
        Requirement {
            program: "qemu-system-x86_64",
            purpose: "boots the artifacts",
            min_version: Some("7.2"),
            version_args: &["--version"],
            package: "qemu-system-x86",
        },
        Requirement {
            program: "qemu-img",
            purpose: "creates the copy-on-write disks the VMs write to",
            min_version: Some("7.2"),
            version_args: &["--version"],
            package: "qemu-utils",
        },
        Requirement {
            program: "tar",
            purpose: "packs the test data disk and unpacks the OVA",
            min_version: None,
            version_args: &[],
            package: "tar",
        },
        Requirement {
            program: "mcopy",
            purpose: "tampers with the UKI on a copy of the ESP",
            min_version: None,
            version_args: &["--version"],
            package: "mtools",
        },
        Requirement {
            program: "virt-fw-vars",
            purpose: "enrolls a signed build's certificate in the firmware's variables",
            min_version: None,
            version_args: &[],
            package: "python3-virt-firmware (bookworm-backports)",
        },
        Requirement {
            program: "cp",
            purpose: "copies the image for the tamper test",
            min_version: None,
            version_args: &[],
            package: "coreutils",
        },
        Requirement {
            program: "zstd",
            purpose: "decompresses the bare-metal image",
            min_version: Some("1.4"),
            version_args: &["--version"],
            package: "zstd",
        },
        Requirement {
            program: "ssh",
            purpose: "logs in to provisioned guests",
            min_version: None,
            version_args: &["-V"],
            package: "openssh-client",
        },
        Requirement {
            program: "ssh-keygen",
            purpose: "makes the key a provisioned guest is given",
            min_version: None,
            version_args: &[],
            package: "openssh-client",
        },
    ]
    .into_iter()
    // The metal case writes its config onto the disk as `boxcar provision` does.
    .chain(crate::provision::requirements())
    .collect()
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct TestRequest {
    pub build_dir: PathBuf,
    /// The platforms to boot; empty for every artifact of the build.
    pub platforms: Vec<PlatformId>,
    /// Boot a tampered copy of the disk image instead.
    pub tamper_usr: bool,
    /// Boot a copy of the disk image with its UKI tampered with, under
    /// Secure Boot, instead (the build must be signed).
    pub tamper_uki: bool,
    /// Boot a copy of the disk image with its /usr root hash signature
    /// altered, under Secure Boot, instead (the build must be signed).
    pub tamper_usr_signature: bool,
    /// Boot this older build's disk image; its update agent updates it to
    /// the build from `stores`.
    pub update_from: Option<PathBuf>,
    /// With `update_from`: a directory of release stores the harness serves
    /// to the guest (see [`update_agent`]); `good/` carries the build.
    pub stores: Option<PathBuf>,
    /// With `update_from`: strategy fleet_lock against a lock server that
    /// refuses first, after checking the other stores.
    pub fleet_lock: bool,
    /// With `update_from`: the new version fails its health check, so boot
    /// counting falls back and the agent marks it bad.
    pub failing_update: bool,
    pub accel: AccelRequest,
    /// `None`: a default for the accelerator.
    pub timeout: Option<Duration>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Boot each platform provisioned: with an Ignition config delivered
    /// the platform's way (where it can be here), logged in to over SSH,
    /// and rebooted once.
    pub provision: bool,
    /// Boot the three configs that must stop a first boot instead.
    pub bad_configs: bool,
}

/// One test's result: where the evidence is, and what it says.
#[derive(Debug)]
pub struct TestOutcome {
    pub evidence_dir: PathBuf,
    pub evidence: Evidence,
}

/// One boot test.
#[derive(Clone, Copy)]
enum Case<'a> {
    /// A platform's artifact, booted the way the platform presents it.
    Platform(&'a Platform),
    /// The disk image with one byte of USR-A flipped, booted on the
    /// hardware of `like` (see [`composed_disk_platform`]).
    TamperUsr { like: &'a Platform },
    /// The signed disk image with one byte of its UKI flipped, booted on
    /// `like`'s hardware under enforcing Secure Boot.
    TamperUki { like: &'a Platform },
    /// The signed disk image with one character of slot A's /usr root
    /// hash signature changed, booted on `like`'s hardware under enforcing
    /// Secure Boot.
    TamperUsrSignature { like: &'a Platform },
    /// An older build's disk image, updated to this build by its own
    /// update agent.
    UpdateFrom {
        older: &'a OlderBuild,
        like: &'a Platform,
        mode: update_agent::Mode,
    },
    /// An older build's disk image, updated by its agent to this build,
    /// which fails its health check: the older build must come back.
    UpdateFallback {
        older: &'a OlderBuild,
        like: &'a Platform,
    },
    /// `like`'s artifact with a config that must stop the first boot.
    BadConfig {
        like: &'a Platform,
        config: BadConfig,
    },
}

/// A config that Ignition must refuse, stopping the first boot.
#[derive(Clone, Copy, Debug)]
enum BadConfig {
    /// Not JSON at all.
    Malformed,
    /// A spec newer than this Ignition (2.14) reads.
    UnsupportedSpec,
    /// A config that points at a URL which answers 404.
    MissingUrl,
    /// A valid config with a file that cannot be written (its parent is a
    /// regular file).
    UnwritableFile,
}

impl BadConfig {
    const ALL: [BadConfig; 4] = [
        BadConfig::Malformed,
        BadConfig::UnsupportedSpec,
        BadConfig::MissingUrl,
        BadConfig::UnwritableFile,
    ];

    fn name(self) -> &'static str {
        match self {
            BadConfig::Malformed => "malformed",
            BadConfig::UnsupportedSpec => "spec-3.4.0",
            BadConfig::MissingUrl => "url-404",
            BadConfig::UnwritableFile => "unwritable-file",
        }
    }

    /// What Ignition 2.14 says when it refuses this config.
    fn expected_error(self) -> &'static str {
        match self {
            BadConfig::Malformed => "config is not valid",
            BadConfig::UnsupportedSpec => "unsupported config version",
            BadConfig::MissingUrl => "resource not found",
            BadConfig::UnwritableFile => "not a directory",
        }
    }

    fn content(self) -> String {
        match self {
            BadConfig::Malformed => "{\"ignition\": {\"version\": \"3.3.0\"".to_owned(),
            BadConfig::UnsupportedSpec => {
                serde_json::json!({ "ignition": { "version": "3.4.0" } }).to_string()
            }
            BadConfig::MissingUrl => serde_json::json!({
                "ignition": {
                    "version": "3.3.0",
                    "config": { "replace": { "source": format!("http://{CONFIG_HTTP_ADDRESS}/missing.ign") } }
                }
            })
            .to_string(),
            BadConfig::UnwritableFile => serde_json::json!({
                "ignition": { "version": "3.3.0" },
                "storage": { "files": [{ "path": "/etc/passwd/cannot-be-written", "contents": { "source": "data:,x" } }] }
            })
            .to_string(),
        }
    }
}

/// The build an update test starts from.
struct OlderBuild {
    dir: PathBuf,
    info: BuildInfo,
}

impl<'a> Case<'a> {
    /// The evidence directory's name.
    fn name(self) -> String {
        match self {
            Case::Platform(platform) => platform.id.to_string(),
            Case::TamperUsr { .. } => "tamper-usr".to_owned(),
            Case::TamperUki { .. } => "tamper-uki".to_owned(),
            Case::TamperUsrSignature { .. } => "tamper-usr-signature".to_owned(),
            Case::UpdateFrom {
                older,
                mode: update_agent::Mode::FleetLock,
                ..
            } => format!("update-fleet-lock-from-{}", older.info.version),
            Case::UpdateFrom { older, .. } => format!("update-from-{}", older.info.version),
            Case::UpdateFallback { older, .. } => {
                format!("update-fallback-from-{}", older.info.version)
            }
            Case::BadConfig { config, .. } => format!("bad-config-{}", config.name()),
        }
    }

    /// The platform the boot presents itself as, for the record.
    fn platform(self) -> &'a Platform {
        match self {
            Case::Platform(platform) => platform,
            Case::TamperUsr { like }
            | Case::TamperUki { like }
            | Case::TamperUsrSignature { like }
            | Case::UpdateFrom { like, .. }
            | Case::UpdateFallback { like, .. }
            | Case::BadConfig { like, .. } => like,
        }
    }

    /// What the boot must come to, and whether a sign of failure ends it.
    fn expectation(self) -> BootExpectation {
        match self {
            Case::Platform(_) | Case::UpdateFrom { .. } => BootExpectation::Success,
            Case::TamperUsr { .. }
            | Case::TamperUki { .. }
            | Case::TamperUsrSignature { .. }
            | Case::BadConfig { .. } => BootExpectation::Failure,
            Case::UpdateFallback { .. } => BootExpectation::SuccessAfterFailures,
        }
    }
}

/// How a case's VM run should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BootExpectation {
    /// Powered off after reporting; a sign of failure ends the run.
    Success,
    /// A failed boot; its first sign ends the run (after a grace period).
    Failure,
    /// Failed boots first (each rebooting), then a report and power-off.
    SuccessAfterFailures,
}

/// What every case shares.
struct TestContext<'a> {
    request: &'a TestRequest,
    build: &'a BuildInfo,
    tools: &'a HostTools,
    firmware: FirmwareFiles,
    /// For a signed build: a variable store with its certificate enrolled
    /// and Secure Boot on, which platform boots start from.
    secure_boot_vars: Option<PathBuf>,
    accel: AccelChoice,
    progress: &'a Progress,
}

/// Runs the requested cases, one after another (each VM uses the CPUs),
/// writing `evidence/<platform>/` (or `evidence/tamper-usr/`) into the
/// build directory.
pub fn run(
    request: &TestRequest,
    tools: &HostTools,
    progress: &Progress,
) -> Result<Vec<TestOutcome>> {
    let request = &TestRequest {
        build_dir: std::path::absolute(&request.build_dir)?,
        ..request.clone()
    };
    let build = BuildInfo::load(&request.build_dir)?;
    let firmware = FirmwareFiles::find()?;
    if !hosttools::is_static_elf(Path::new(BUSYBOX)).unwrap_or(false) {
        bail!(
            "{BUSYBOX} is missing or not statically linked; the test container needs Debian's busybox-static ({})",
            hosttools::SETUP_HINT
        );
    }
    let platforms = select_platforms(&build, &request.platforms)?;
    let older = match &request.update_from {
        Some(dir) => Some(load_older_build(dir, &build)?),
        None => None,
    };
    let evidence_root = request.build_dir.join("evidence");
    fs::create_dir_all(&evidence_root)?;
    let accel = qemu::choose_accel(
        request.accel,
        tools.path("qemu-system-x86_64"),
        &firmware,
        &evidence_root,
    )?;
    progress.note(&format!(
        "accelerator: {} ({})",
        accel.accel.name(),
        accel.reason
    ));
    let secure_boot_vars =
        secure_boot_vars(tools, &firmware, &build, &request.build_dir, &evidence_root)?;
    let context = TestContext {
        request,
        build: &build,
        tools,
        firmware,
        secure_boot_vars,
        accel,
        progress,
    };
    let mut outcomes = Vec::new();
    if let Some(older) = &older {
        let like = composed_disk_platform(&build.platforms)?;
        let case = if request.failing_update {
            Case::UpdateFallback { older, like }
        } else {
            let mode = if request.fleet_lock {
                update_agent::Mode::FleetLock
            } else {
                update_agent::Mode::Immediate
            };
            Case::UpdateFrom { older, like, mode }
        };
        outcomes.push(run_case(&context, case)?);
    } else if request.tamper_usr {
        let like = composed_disk_platform(&build.platforms)?;
        outcomes.push(run_case(&context, Case::TamperUsr { like })?);
    } else if request.tamper_uki {
        require_secure_boot(&context, "nothing would refuse a tampered UKI")?;
        let like = composed_disk_platform(&build.platforms)?;
        outcomes.push(run_case(&context, Case::TamperUki { like })?);
    } else if request.tamper_usr_signature {
        require_secure_boot(&context, "nothing checks its /usr root hash signature")?;
        let like = composed_disk_platform(&build.platforms)?;
        outcomes.push(run_case(&context, Case::TamperUsrSignature { like })?);
    } else if request.bad_configs {
        let like = fw_cfg_platform(&platforms)?;
        for config in BadConfig::ALL {
            outcomes.push(run_case(&context, Case::BadConfig { like, config })?);
        }
    } else {
        for platform in platforms {
            outcomes.push(run_case(&context, Case::Platform(platform))?);
        }
    }
    Ok(outcomes)
}

/// A Secure Boot case needs a signed build: without one, `unchecked`.
fn require_secure_boot(context: &TestContext, unchecked: &str) -> Result<()> {
    if context.secure_boot_vars.is_none() {
        bail!(
            "build {} is not signed for Secure Boot, so {unchecked}; build it with --secure-boot-key",
            context.build.version
        );
    }
    Ok(())
}

/// The owner GUID the test's firmware records with the keys it enrolls.
const KEY_OWNER_GUID: &str = "b0c5ca71-5ec0-4b00-a0c5-ca71b0075ec0";

/// For a signed build, an OVMF variable store with Secure Boot on and the
/// build's certificate enrolled as PK, KEK and db, as an operator would
/// enroll it (nothing else trusted: no Microsoft keys).
fn secure_boot_vars(
    tools: &HostTools,
    firmware: &FirmwareFiles,
    build: &BuildInfo,
    build_dir: &Path,
    evidence_root: &Path,
) -> Result<Option<PathBuf>> {
    let Some(signed) = &build.secure_boot else {
        return Ok(None);
    };
    if firmware.secure_boot_code.is_none() {
        bail!(
            "the build is signed for Secure Boot, but no Secure Boot build of OVMF was found next to {}; install Debian's ovmf package ({})",
            firmware.code.display(),
            hosttools::SETUP_HINT
        );
    }
    let name = boxcar_client::layout::SafeName::new("certificate file", &signed.certificate)?;
    let certificate = build_dir.join(name.as_str());
    let vars = evidence_root.join("secure-boot-vars.fd");
    let _ = fs::remove_file(&vars);
    Step::new(
        "enrolling the build's Secure Boot certificate in the firmware",
        tools.path("virt-fw-vars"),
    )
    .arg("--input")
    .arg(&firmware.vars_template)
    .arg("--output")
    .arg(&vars)
    .args(["--set-pk", KEY_OWNER_GUID])
    .arg(&certificate)
    .args(["--add-kek", KEY_OWNER_GUID])
    .arg(&certificate)
    .args(["--add-db", KEY_OWNER_GUID])
    .arg(&certificate)
    .arg("--secure-boot")
    .run()?;
    Ok(Some(vars))
}

/// Loads the build an update test starts from; it must be older than the
/// build under test, as systemd-sysupdate only ever moves forward.
fn load_older_build(dir: &Path, build: &BuildInfo) -> Result<OlderBuild> {
    let dir = std::path::absolute(dir)?;
    let info = BuildInfo::load(&dir)?;
    if boxcar_client::version::compare(info.version.as_str(), build.version.as_str()).is_ge() {
        bail!(
            "--update-from needs an older build: {} is version {}, not older than {}",
            dir.display(),
            info.version,
            build.version
        );
    }
    Ok(OlderBuild { dir, info })
}

/// The platform whose hardware the tamper and update cases boot the
/// composed disk image on: the first of the build's table with UEFI
/// firmware and a virtio disk, the plainest way to boot a disk in qemu.
/// Only its hardware is borrowed, none of its extras (metadata service,
/// SMBIOS identity, guest agent): the disk image is no platform's artifact.
fn composed_disk_platform(platforms: &[Platform]) -> Result<&Platform> {
    platforms
        .iter()
        .find(|p| p.firmware == Firmware::Uefi && p.disk_bus == DiskBus::Virtio)
        .with_context(|| {
            format!(
                "the tamper and update tests boot the disk image like a platform with UEFI firmware and a virtio disk, and the build's platform table ({}) has none",
                platforms
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The platform the bad-config cases boot: one whose configs arrive through
/// qemu's fw_cfg, so the harness can hand it any config.
fn fw_cfg_platform<'a>(platforms: &[&'a Platform]) -> Result<&'a Platform> {
    platforms
        .iter()
        .copied()
        .find(|p| p.config_delivery == ConfigDelivery::FwCfg)
        .context("the bad-config cases boot a platform that takes its config through qemu's fw_cfg, and none is selected")
}

/// The build's platforms named in `ids` (all of them when empty).
fn select_platforms<'a>(build: &'a BuildInfo, ids: &[PlatformId]) -> Result<Vec<&'a Platform>> {
    let packaged: Vec<&Platform> = build
        .platforms
        .iter()
        .filter(|p| build.artifacts.iter().any(|a| a.platform == p.id))
        .collect();
    for id in ids {
        if !packaged.iter().any(|p| &p.id == id) {
            bail!(
                "the build has no artifact for platform {id}; it has {}",
                packaged
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(packaged
        .into_iter()
        .filter(|p| ids.is_empty() || ids.contains(&p.id))
        .collect())
}

/// The name the console log of a stalled first attempt is kept under, in
/// the evidence of the case's second boot.
const STALLED_CONSOLE_LOG: &str = "stalled-attempt.console.log";

/// Boots one case; if its emulated CPUs stalled (software emulation on a
/// busy host can starve a vCPU's timers until the guest crawls), boots it
/// once more from a fresh copy, and the evidence keeps the first attempt's
/// console. A guest that stalls twice is judged as it is: failed.
fn run_case(context: &TestContext, case: Case) -> Result<TestOutcome> {
    let first = run_case_once(context, case, None)?;
    if first.evidence.outcome != BootOutcome::EmulationStalled {
        return Ok(first);
    }
    context.progress.note(&format!(
        "{}: the emulated CPUs stalled after {:.0}s (RCU stalls on the console); booting it once more",
        case.name(),
        first.evidence.wall_seconds
    ));
    let stalled_console =
        fs::read(first.evidence_dir.join(record::CONSOLE_LOG)).unwrap_or_default();
    let note = format!(
        "the first boot stalled under emulation after {:.0}s; its console log is {STALLED_CONSOLE_LOG}",
        first.evidence.wall_seconds
    );
    let second = run_case_once(context, case, Some(note))?;
    fs::write(
        second.evidence_dir.join(STALLED_CONSOLE_LOG),
        stalled_console,
    )?;
    Ok(second)
}

/// Boots one case once and judges what the guest reported (callers use
/// `run_case`, which boots a stalled case again).
fn run_case_once(
    context: &TestContext,
    case: Case,
    earlier_attempt: Option<String>,
) -> Result<TestOutcome> {
    let build = context.build;
    let case_name = case.name();
    let evidence_root = context.request.build_dir.join("evidence");
    let work = Workdir::create(&evidence_root.join(format!(".{case_name}.partial")))?;

    let phase = context.progress.phase(&format!("prepare {case_name}"));
    let provisioning = match case {
        Case::Platform(platform) if context.request.provision => Some(provisioning::prepare(
            context.tools,
            &work.path,
            platform.id.as_str(),
        )?),
        _ => None,
    };
    let mut prepared = match case {
        Case::Platform(platform) => {
            prepare_platform(context, platform, &work.path, provisioning.as_ref())?
        }
        Case::BadConfig { like, config } => {
            let mut prepared = prepare_platform(context, like, &work.path, None)?;
            prepared.tampering = Some(format!(
                "Ignition config {} through fw_cfg: {}",
                config.name(),
                config.content()
            ));
            let file = work.path.join("bad-config.ign");
            fs::write(&file, config.content())?;
            prepared.fw_cfg.push((FW_CFG_IGNITION.to_owned(), file));
            // Answers 404 to what the config points at.
            prepared.guest_forwards.push((
                CONFIG_HTTP_ADDRESS.to_owned(),
                http_serve_command(&http::Content {
                    dir: Some(work.path.clone()),
                    ..Default::default()
                })?,
            ));
            prepared
        }
        Case::TamperUsr { like } => prepare_tamper(context, like, &work.path)?,
        Case::TamperUki { like } => prepare_tamper_uki(context, like, &work.path)?,
        Case::TamperUsrSignature { like } => {
            prepare_tamper_usr_signature(context, like, &work.path)?
        }
        Case::UpdateFrom { older, like, mode } => {
            prepare_update(context, older, like, mode, &work.path)?
        }
        Case::UpdateFallback { older, like } => prepare_update(
            context,
            older,
            like,
            update_agent::Mode::Failing,
            &work.path,
        )?,
    };
    if !ignition_stand_in(case.platform()).is_empty() {
        prepared
            .hardware
            .push_str(", Ignition reading qemu's fw_cfg (VMware's guestinfo cannot be emulated)");
    }
    let test_data = work.path.join("testdata.tar");
    write_test_data(
        context.tools,
        build,
        &work.path,
        &test_data,
        provisioning.is_some(),
        &prepared.guest_files,
    )?;
    phase.done(&prepared.hardware);

    let network_boot = matches!(prepared.boot, BootSource::Network { .. });
    let spec = VmSpec {
        firmware: if network_boot {
            FirmwareSetup::Bios
        } else {
            let vars = work.path.join("efi-vars.fd");
            let secure_boot = secure_boot_firmware(context, case);
            let (code, template) = match secure_boot {
                Some((code, template)) => (code, template),
                None => (&context.firmware.code, &context.firmware.vars_template),
            };
            fs::copy(template, &vars).with_context(|| format!("copying {}", template.display()))?;
            FirmwareSetup::Uefi {
                code: code.clone(),
                vars,
                secure_boot: secure_boot.is_some(),
            }
        },
        boot: prepared.boot,
        nic: prepared.nic,
        guest_forwards: prepared.guest_forwards,
        smbios_system: prepared.smbios_system,
        hypervisor_cpuid: prepared.hypervisor_cpuid,
        guest_agent_socket: match prepared.guest_agent {
            GuestAgent::None => None,
            GuestAgent::QemuGa => Some(work.path.join("qga.sock")),
        },
        network: prepared.network,
        test_data,
        reboots: matches!(case, Case::UpdateFrom { .. } | Case::UpdateFallback { .. })
            || (provisioning.is_some() && reboots_after_provisioning(case.platform())),
        evidence_out: work.path.join("evidence.out"),
        console_out: work.path.join(record::CONSOLE_LOG),
        memory_mib: context.request.memory_mib.max(prepared.min_memory_mib),
        cpus: context.request.cpus,
        smbios_strings: {
            let mut strings = smbios_strings(!network_boot, &ignition_stand_in(case.platform()));
            if let Some(provisioning) = &provisioning {
                strings.push(provisioning::root_key_credential(provisioning)?);
            }
            strings
        },
        fw_cfg: std::mem::take(&mut prepared.fw_cfg),
        host_forwards: provisioning.iter().map(|p| (p.ssh_port, 22)).collect(),
    };
    let timeout = context
        .request
        .timeout
        .unwrap_or(match context.accel.accel {
            qemu::Accel::Kvm => Duration::from_secs(300),
            qemu::Accel::Tcg => Duration::from_secs(900),
        });
    let started_at = crate::units::now_rfc3339();
    let mut phase = context.progress.phase(&format!("boot {case_name}"));
    let mut logins: Vec<Result<provisioning::Login, String>> = Vec::new();
    let mut on_ready = |boot_number: u32, phase: &mut Phase| {
        let Some(provisioning) = &provisioning else {
            return;
        };
        phase.milestone(&format!("logging in over SSH after boot {boot_number}"));
        logins.push(provisioning::login(context.tools, provisioning).map_err(|e| format!("{e:#}")));
        let again = boot_number == 1 && spec.reboots;
        let _ = provisioning::send(
            context.tools,
            provisioning,
            if again { "reboot" } else { "poweroff" },
        );
    };
    let run = boot(
        context.tools,
        &spec,
        &context.accel,
        case.expectation(),
        timeout,
        &mut phase,
        &mut on_ready,
    )?;
    let report_text = fs::read_to_string(&spec.evidence_out).unwrap_or_default();
    let report = evidence::parse_report(&report_text);
    let boots = evidence::split_boots(&report_text);
    let mut checks = prepared.package_checks;
    checks.extend(match case {
        Case::Platform(platform) => {
            let expectations = Expectations {
                platform,
                all_platforms: &build.platforms,
                root: if platform.format == Format::Pxe {
                    RootExpectation::Tmpfs
                } else {
                    RootExpectation::Grows {
                        built_bytes: build.disk.partition_table.require(Role::Root)?.size,
                    }
                },
                hostname: metadata_imitation(platform.metadata_service)
                    .map(|imitation| imitation.hostname.to_owned()),
                ssh: provisioning.is_some(),
                secure_boot: secure_boot_firmware(context, case).is_some()
                    && platform.firmware == Firmware::Uefi,
            };
            let mut checks = evidence::judge_platform(&report, build, run.outcome, &expectations);
            if let Some(provisioning) = &provisioning {
                checks.extend(judge_provisioning(
                    provisioning,
                    &logins,
                    &boots,
                    spec.reboots,
                ));
            }
            checks
        }
        Case::BadConfig { config, .. } => evidence::judge_bad_config(
            &report,
            &run.ignition_errors,
            config.expected_error(),
            run.halted,
            run.kernel_starts,
            run.outcome,
        ),
        Case::TamperUsr { .. } => evidence::judge_tamper(&report, &run.verity_errors, run.outcome),
        Case::TamperUki { .. } => evidence::judge_tamper_uki(
            &esp_uki_path(build),
            &run.boot_refusals,
            run.kernel_starts,
            run.outcome,
        ),
        Case::TamperUsrSignature { .. } => evidence::judge_tamper_usr_signature(
            &report,
            &run.boot_refusals,
            &run.verity_errors,
            run.outcome,
        ),
        Case::UpdateFrom { older, mode, .. } => {
            let mut checks = evidence::judge_update(
                &report,
                build,
                run.outcome,
                &update_expectation(build, &older.info)?,
            );
            checks.extend(update_agent::judge(
                &report,
                mode,
                older.info.version.as_str(),
                build.version.as_str(),
                &work.path.join(LOCK_LOG),
                run.outcome,
            ));
            checks
        }
        Case::UpdateFallback { older, .. } => {
            let mut checks = evidence::judge_fallback(
                &report,
                &older.info,
                run.outcome,
                &update_expectation(build, &older.info)?,
                run.kernel_starts,
            );
            checks.extend(update_agent::judge(
                &report,
                update_agent::Mode::Failing,
                older.info.version.as_str(),
                build.version.as_str(),
                &work.path.join(LOCK_LOG),
                run.outcome,
            ));
            checks
        }
    });
    // An update under Secure Boot ends on a build whose /usr signature the
    // kernel must have checked like any platform boot's.
    if matches!(case, Case::UpdateFrom { .. } | Case::UpdateFallback { .. })
        && secure_boot_firmware(context, case).is_some()
    {
        checks.extend(evidence::secure_boot_checks(&report));
    }
    let passed = checks.iter().all(|c| c.passed);
    // A platform's boot time is its first boot's: the one that provisions.
    let timed_boot = match case {
        Case::Platform(_) => boots.first().unwrap_or(&report),
        _ => &report,
    };
    let mut boot_time = evidence::boot_time(timed_boot);
    if let Some(time) = boot_time.as_mut() {
        evidence::add_early_boot_from_console(time, &run.milestones);
    }
    let evidence = Evidence {
        schema: record::SCHEMA_VERSION,
        case: match case {
            Case::Platform(_) => TestCase::Platform,
            Case::TamperUsr { .. } => TestCase::TamperUsr,
            Case::TamperUki { .. } => TestCase::TamperUki,
            Case::TamperUsrSignature { .. } => TestCase::TamperUsrSignature,
            Case::UpdateFrom { .. } => TestCase::Update,
            Case::UpdateFallback { .. } => TestCase::UpdateFallback,
            Case::BadConfig { .. } => TestCase::BadConfig,
        },
        version: build.version.to_string(),
        platform: case.platform().id.to_string(),
        artifact: prepared.artifact,
        hardware: prepared.hardware,
        tampering: prepared.tampering,
        started_at,
        accelerator: context.accel.accel.name().to_owned(),
        accelerator_reason: context.accel.reason.clone(),
        qemu_command: run.command,
        outcome: run.outcome,
        wall_seconds: (run.wall.as_secs_f64() * 10.0).round() / 10.0,
        boot_time,
        milestones: run.milestones,
        verity_errors: run.verity_errors,
        boot_refusals: run.boot_refusals,
        guest: report,
        earlier_attempt,
        checks,
        passed,
    };
    if passed {
        phase.done(&format!(
            "{:?} after {:.0}s",
            evidence.outcome, evidence.wall_seconds
        ));
    } else {
        phase.failed();
    }
    let evidence_dir = work.commit(&evidence_root.join(&case_name), &evidence)?;
    Ok(TestOutcome {
        evidence_dir,
        evidence,
    })
}

/// How one case's VM is set up.
struct Prepared {
    boot: BootSource,
    nic: Nic,
    guest_forwards: Vec<(String, String)>,
    smbios_system: Option<SmbiosSystem>,
    hypervisor_cpuid: HypervisorCpuid,
    guest_agent: GuestAgent,
    network: Option<String>,
    min_memory_mib: u32,
    /// Checks of the artifact made before booting it (the OVA's layout).
    package_checks: Vec<Check>,
    /// Files for the guest's test data (path inside it, content).
    guest_files: Vec<(String, String)>,
    /// Files for qemu's fw_cfg device.
    fw_cfg: Vec<(String, PathBuf)>,
    /// The files booted, for the record.
    artifact: String,
    tampering: Option<String>,
    /// How the VM presents it, for people.
    hardware: String,
}

/// Turns a platform's artifact into a bootable medium, the way the
/// platform would present it.
fn prepare_platform(
    context: &TestContext,
    platform: &Platform,
    work: &Path,
    provisioning: Option<&provisioning::Provisioning>,
) -> Result<Prepared> {
    // The config goes the platform's way (recipes/platforms.toml), or through
    // the stand-in where qemu cannot imitate that way.
    let delivery = provisioning.map(|p| (delivery_under_test(platform), p));
    let build_dir = &context.request.build_dir;
    let files = context.build.artifact_files(&platform.id);
    let file_of = |role: ArtifactRole| -> Result<PathBuf> {
        files
            .iter()
            .find(|a| a.role == role)
            .map(|a| build_dir.join(&a.file))
            .with_context(|| {
                format!(
                    "build.json lists no {role:?} file for platform {}",
                    platform.id
                )
            })
    };
    let mut package_checks = Vec::new();
    let mut guest_forwards = Vec::new();
    let boot = match platform.format {
        Format::Qcow2 => overlay_disk(
            context,
            &file_of(ArtifactRole::Disk)?,
            "qcow2",
            platform.disk_bus,
            work,
        )?,
        Format::Raw => overlay_disk(
            context,
            &file_of(ArtifactRole::Disk)?,
            "raw",
            platform.disk_bus,
            work,
        )?,
        Format::Ova => {
            let (vmdk, checks) =
                ova_check::unpack_and_check(context.tools, &file_of(ArtifactRole::Disk)?, work)?;
            package_checks = checks;
            overlay_disk(context, &vmdk, "vmdk", platform.disk_bus, work)?
        }
        Format::RawZstd => {
            let raw = work.join("metal.raw");
            Step::new(
                "decompressing the bare-metal image",
                context.tools.path("zstd"),
            )
            .args(["-d", "-q", "-f", "-o"])
            .arg(&raw)
            .arg(file_of(ArtifactRole::Disk)?)
            .run()?;
            let size = fs::metadata(&raw)?.len();
            package_checks.push(Check {
                name: "the image decompresses to the built disk".to_owned(),
                passed: size == context.build.disk.size,
                expected: format!("{} bytes", context.build.disk.size),
                observed: format!("{size} bytes"),
            });
            // Written onto a larger disk, as on a real machine.
            fs::OpenOptions::new()
                .write(true)
                .open(&raw)?
                .set_len(METAL_DISK_BYTES)?;
            if let Some((ConfigDelivery::Disk, provisioning)) = delivery {
                crate::provision::provision(
                    &crate::provision::ProvisionRequest {
                        disk: raw.clone(),
                        config: provisioning.config.clone(),
                    },
                    context.tools,
                )?;
            }
            BootSource::Disk {
                path: raw,
                format: "raw",
                bus: platform.disk_bus,
            }
        }
        Format::Pxe => {
            let script = file_of(ArtifactRole::BootScript)?;
            let names: Vec<String> = files.iter().map(|a| a.file.clone()).collect();
            let tftp_dir = work.join("tftp");
            fs::create_dir_all(&tftp_dir)?;
            let mut extra = String::new();
            if let Some((ConfigDelivery::KernelCmdlineUrl, provisioning)) = delivery {
                let name = provisioning
                    .config
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                extra = format!(" ignition.config.url=http://{CONFIG_HTTP_ADDRESS}/{name}");
                guest_forwards.push((
                    CONFIG_HTTP_ADDRESS.to_owned(),
                    http_serve_command(&http::Content {
                        dir: provisioning.config.parent().map(Path::to_owned),
                        files: vec![name],
                        ..Default::default()
                    })?,
                ));
            }
            fs::write(
                tftp_dir.join("boot.ipxe"),
                pxe_chain_script(&script, &extra),
            )?;
            guest_forwards.push((
                PXE_HTTP_ADDRESS.to_owned(),
                http_serve_command(&http::Content {
                    dir: Some(build_dir.clone()),
                    files: names,
                    ..Default::default()
                })?,
            ));
            BootSource::Network {
                tftp_dir,
                bootfile: "boot.ipxe".to_owned(),
            }
        }
    };
    let user_data = match delivery {
        Some((ConfigDelivery::Ec2UserData, provisioning)) => Some(provisioning.config.clone()),
        _ => None,
    };
    let fw_cfg = match delivery {
        Some((ConfigDelivery::FwCfg, provisioning)) => {
            vec![(FW_CFG_IGNITION.to_owned(), provisioning.config.clone())]
        }
        _ => Vec::new(),
    };
    Ok(Prepared {
        package_checks,
        fw_cfg,
        artifact: files
            .iter()
            .map(|a| a.file.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        ..present(platform, boot, guest_forwards, user_data)?
    })
}

/// How `platform` presents `boot`: its NIC, and what else its hypervisor
/// offers the guest, as the harness imitates it (a metadata service behind
/// a forwarded address, an SMBIOS identity, the CPUID hypervisor bit, a
/// guest agent channel). `guest_forwards` are the boot's own (PXE's HTTP).
fn present(
    platform: &Platform,
    boot: BootSource,
    mut guest_forwards: Vec<(String, String)>,
    user_data: Option<PathBuf>,
) -> Result<Prepared> {
    let metadata = metadata_imitation(platform.metadata_service);
    if let Some(metadata) = &metadata {
        guest_forwards.push((
            metadata.address.to_owned(),
            http_serve_command(&http::Content {
                imds_hostname: Some(metadata.hostname.to_owned()),
                imds_user_data: user_data,
                ..Default::default()
            })?,
        ));
    }
    let mut hardware = Nic::hardware(platform.firmware, platform.disk_bus, platform.nic);
    if let Some(smbios) = &platform.smbios_system {
        hardware.push_str(&format!(", {} SMBIOS identity", smbios.vendor()));
    }
    Ok(Prepared {
        boot,
        nic: platform.nic,
        guest_forwards,
        smbios_system: platform.smbios_system.clone(),
        hypervisor_cpuid: platform.hypervisor_cpuid,
        guest_agent: platform.guest_agent,
        network: metadata.map(|metadata| metadata.network.to_owned()),
        min_memory_mib: if platform.format == Format::Pxe {
            PXE_MIN_MEMORY_MIB
        } else {
            0
        },
        package_checks: Vec::new(),
        guest_files: Vec::new(),
        fw_cfg: Vec::new(),
        artifact: String::new(),
        tampering: None,
        hardware,
    })
}

/// A copy-on-write overlay over a disk artifact, larger than the image.
fn overlay_disk(
    context: &TestContext,
    base: &Path,
    format: &'static str,
    bus: DiskBus,
    work: &Path,
) -> Result<BootSource> {
    let overlay = work.join("disk.qcow2");
    Step::new(
        "creating the VM's copy-on-write disk",
        context.tools.path("qemu-img"),
    )
    .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
    .arg(base)
    .arg(&overlay)
    .arg(OVERLAY_SIZE)
    .run()?;
    Ok(BootSource::Disk {
        path: overlay,
        format: "qcow2",
        bus,
    })
}

/// The tamper case: a copy of the disk image with one byte of USR-A
/// flipped, booted on `like`'s hardware.
fn prepare_tamper(context: &TestContext, like: &Platform, work: &Path) -> Result<Prepared> {
    let copy = work.join("tampered.raw");
    let tampering = tampered_copy(
        context.tools,
        context.build,
        &context.request.build_dir,
        &copy,
    )?;
    boot_tampered_copy(context, like, &copy, work, tampering)
}

/// The Secure Boot firmware (code, variable template) a case boots with:
/// every case that boots the signed build under test, under enforcing
/// Secure Boot with its certificate enrolled. The update cases boot the
/// older build first and this one after the update, so they run under
/// Secure Boot when the older build was signed with the same certificate
/// (the one enrolled), and on the plain firmware otherwise.
fn secure_boot_firmware<'c>(
    context: &'c TestContext,
    case: Case,
) -> Option<(&'c PathBuf, &'c PathBuf)> {
    let vars = context.secure_boot_vars.as_ref()?;
    let code = context.firmware.secure_boot_code.as_ref()?;
    match case {
        Case::Platform(_)
        | Case::TamperUsr { .. }
        | Case::TamperUki { .. }
        | Case::TamperUsrSignature { .. }
        | Case::BadConfig { .. } => Some((code, vars)),
        Case::UpdateFrom { older, .. } | Case::UpdateFallback { older, .. } => {
            let certificate =
                |info: &BuildInfo| info.secure_boot.as_ref().map(|signed| signed.file_sha256);
            (certificate(&older.info) == certificate(context.build)).then_some((code, vars))
        }
    }
}

/// Where systemd-boot finds the build's UKI on the ESP, as it prints it.
fn esp_uki_path(build: &BuildInfo) -> String {
    format!("\\EFI\\Linux\\{}_{}.efi", IMAGE_ID, build.version)
}

/// The Secure Boot tamper case: a copy of the signed disk image with one
/// byte in the middle of its UKI (inside the kernel) flipped on the ESP,
/// booted on `like`'s hardware.
fn prepare_tamper_uki(context: &TestContext, like: &Platform, work: &Path) -> Result<Prepared> {
    let tools = context.tools;
    let build = context.build;
    let copy = copy_to_tamper(context, work)?;
    let esp = build.disk.partition_table.require(Role::Esp)?;
    let image = format!("{}@@{}", copy.display(), esp.offset);
    let on_esp = format!("::/EFI/Linux/{}_{}.efi", IMAGE_ID, build.version);
    let uki = work.join("uki.efi");
    Step::new("reading the UKI from the ESP", tools.path("mcopy"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-n", "-i", &image, &on_esp])
        .arg(&uki)
        .run()?;
    let offset = fs::metadata(&uki)?.len() / 2;
    let (before, after) = flip_byte(&uki, offset)?;
    Step::new("writing the tampered UKI to the ESP", tools.path("mcopy"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i", &image])
        .arg(&uki)
        .arg(&on_esp)
        .run()?;
    boot_tampered_copy(
        context,
        like,
        &copy,
        work,
        format!(
            "byte {offset} of the UKI {} on the ESP flipped from {before:#04x} to {after:#04x}",
            esp_uki_path(build)
        ),
    )
}

/// The Secure Boot case for the signed /usr: a copy of the signed disk
/// image with one character near the end of the base64 signature in slot
/// A's usr-verity-sig partition changed (still base64, still JSON; see
/// [`signature_character`]), booted on `like`'s hardware.
fn prepare_tamper_usr_signature(
    context: &TestContext,
    like: &Platform,
    work: &Path,
) -> Result<Prepared> {
    let copy = copy_to_tamper(context, work)?;
    let partition = context
        .build
        .disk
        .partition_table
        .require(Role::UsrASignature)?;
    let mut bytes = vec![0u8; partition.size as usize];
    let mut file = fs::OpenOptions::new().read(true).write(true).open(&copy)?;
    file.seek(SeekFrom::Start(partition.offset))?;
    file.read_exact(&mut bytes)?;
    let offset = signature_character(&bytes).with_context(|| {
        format!(
            "partition {} ({}) holds no signature to tamper with",
            partition.number, partition.label
        )
    })?;
    let before = bytes[offset];
    let after = if before == b'A' { b'B' } else { b'A' };
    file.seek(SeekFrom::Start(partition.offset + offset as u64))?;
    file.write_all(&[after])?;
    file.sync_all()?;
    boot_tampered_copy(
        context,
        like,
        &copy,
        work,
        format!(
            "byte {offset} of partition {} ({}), inside its base64 signature, changed from {:?} to {:?}",
            partition.number,
            partition.label,
            before as char,
            after as char
        ),
    )
}

/// A copy of the build's disk image to tamper with, in `work`.
fn copy_to_tamper(context: &TestContext, work: &Path) -> Result<PathBuf> {
    let copy = work.join("tampered.raw");
    Step::new("copying the image to tamper with", context.tools.path("cp"))
        .args(["--sparse=always", "--"])
        .arg(context.request.build_dir.join(&context.build.disk.file))
        .arg(&copy)
        .run()?;
    Ok(copy)
}

/// Boots the tampered `copy` on `like`'s hardware; `tampering` says what
/// was done to it.
fn boot_tampered_copy(
    context: &TestContext,
    like: &Platform,
    copy: &Path,
    work: &Path,
    tampering: String,
) -> Result<Prepared> {
    let boot = overlay_disk(context, copy, "raw", like.disk_bus, work)?;
    Ok(plain_boot(
        like,
        boot,
        format!("{} (tampered copy)", context.build.disk.file),
        Some(tampering),
    ))
}

/// Where to change a signature partition: a character near the end of its
/// base64 `"signature"` value, inside the RSA signature that closes the
/// PKCS#7 structure (its last 256 bytes) and before any `=` padding, so the
/// structure still parses and only the signature itself is wrong.
fn signature_character(partition: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"signature\":\"";
    const FROM_END: usize = 20;
    let start = partition.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let length = partition[start..].iter().position(|&b| b == b'"')?;
    (length > 2 * FROM_END).then(|| start + length - FROM_END)
}

/// A disk image (not a platform's artifact) booted on `like`'s firmware,
/// disk bus and NIC, with no platform extras.
fn plain_boot(
    like: &Platform,
    boot: BootSource,
    artifact: String,
    tampering: Option<String>,
) -> Prepared {
    Prepared {
        boot,
        nic: like.nic,
        guest_forwards: Vec::new(),
        smbios_system: None,
        hypervisor_cpuid: HypervisorCpuid::Visible,
        guest_agent: GuestAgent::None,
        network: None,
        min_memory_mib: 0,
        package_checks: Vec::new(),
        guest_files: Vec::new(),
        fw_cfg: Vec::new(),
        artifact,
        tampering,
        hardware: Nic::hardware(like.firmware, like.disk_bus, like.nic),
    }
}

/// The update cases: the older build's disk image, booted on `like`'s
/// hardware, its agent pointed at the stores the test published (served
/// to the guest), and with FleetLock a lock server.
fn prepare_update(
    context: &TestContext,
    older: &OlderBuild,
    like: &Platform,
    mode: update_agent::Mode,
    work: &Path,
) -> Result<Prepared> {
    let stores = context
        .request
        .stores
        .as_deref()
        .context("an update test needs --stores: the agent updates from a store")?;
    let stores = std::path::absolute(stores)?;
    let boot = overlay_disk(
        context,
        &older.dir.join(&older.info.disk.file),
        "raw",
        like.disk_bus,
        work,
    )?;
    let guest_files = update_agent::guest_files(&stores, mode, context.build)?;
    let mut guest_forwards = Vec::new();
    for (address, content) in update_agent::servers(&stores, mode, &work.join(LOCK_LOG)) {
        guest_forwards.push((address.to_owned(), http_serve_command(&content)?));
    }
    let artifact = format!(
        "{} of {}, updated by its agent to {} from {}/{}",
        older.info.disk.file,
        older.info.version,
        context.build.version,
        stores.display(),
        update_agent::GOOD_STORE
    );
    let tampering = (mode == update_agent::Mode::Failing).then(|| {
        format!(
            "a health check in /etc/boxcar/health.d fails {} on purpose",
            context.build.version
        )
    });
    Ok(Prepared {
        guest_files,
        guest_forwards,
        ..plain_boot(like, boot, artifact, tampering)
    })
}

/// The FleetLock test server's log, in the case's work directory.
const LOCK_LOG: &str = "fleet-lock.log";

/// What an update from `older` to `build` must show: the older image
/// runs from its A slot, and the update lands in its B slot.
fn update_expectation(build: &BuildInfo, older: &BuildInfo) -> Result<UpdateExpectation> {
    let table = &older.disk.partition_table;
    let number = |role| table.require(role).map(|p| p.number);
    Ok(UpdateExpectation {
        old_version: older.version.to_string(),
        new_version: build.version.to_string(),
        old_slot: (number(Role::UsrA)?, number(Role::UsrAVerity)?),
        new_slot: (number(Role::UsrB)?, number(Role::UsrBVerity)?),
        // Older layouts had no signature partitions.
        new_signature: number(Role::UsrBSignature).ok(),
    })
}

/// The script the firmware's iPXE fetches over TFTP: add the test's kernel
/// arguments, then chain the artifact's own script over HTTP.
fn pxe_chain_script(artifact_script: &Path, extra_args: &str) -> String {
    let name = artifact_script
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    format!(
        "#!ipxe
         # boxcar test: the console on the serial port, and the evidence unit.
         set boxcar-extra-args console=ttyS0 systemd.wants={GUEST_UNIT_NAME}{extra_args}
         chain http://{}/{name}
",
        PXE_HTTP_ADDRESS.trim_end_matches(":80")
    )
}

/// The command qemu runs for each forwarded guest connection: this binary,
/// answering HTTP on stdin and stdout.
fn http_serve_command(content: &http::Content) -> Result<String> {
    let exe = std::env::current_exe().context("finding the boxcar binary")?;
    let mut words = vec![
        exe.to_string_lossy().into_owned(),
        "internal".into(),
        "http-serve".into(),
    ];
    if let Some(dir) = &content.dir {
        words.extend(["--dir".into(), dir.to_string_lossy().into_owned()]);
    }
    for file in &content.files {
        words.extend(["--file".into(), file.clone()]);
    }
    if let Some(hostname) = &content.imds_hostname {
        words.extend(["--imds-hostname".into(), hostname.clone()]);
    }
    if let Some(user_data) = &content.imds_user_data {
        words.extend([
            "--imds-user-data".into(),
            user_data.to_string_lossy().into_owned(),
        ]);
    }
    if let Some(store) = &content.store {
        words.extend(["--store".into(), store.to_string_lossy().into_owned()]);
    }
    if let Some(lock) = &content.fleet_lock {
        words.extend([
            "--fleet-lock-log".into(),
            lock.log.to_string_lossy().into_owned(),
            "--fleet-lock-refusals".into(),
            lock.refusals.to_string(),
        ]);
    }
    // qemu hands the command to /bin/sh.
    Ok(crate::process::quote_all(&words))
}

/// Whether a provisioned boot of `platform` is rebooted to check that
/// Ignition does not run again and its work persisted: not a diskless boot
/// (nothing persists by design), and not one provisioned through the
/// stand-in (that is qemu's delivery, whose reboot the qemu boot checks).
fn reboots_after_provisioning(platform: &Platform) -> bool {
    platform.format != Format::Pxe && delivery_under_test(platform) == platform.config_delivery
}

/// How the boot test hands `platform` its config. A platform whose way qemu
/// cannot imitate (VMware's guestinfo, behind a backdoor only VMware
/// answers, whose Ignition provider refuses to run anywhere else and would
/// stop every boot) gets it through qemu's fw_cfg instead; see
/// `ignition_stand_in`.
fn delivery_under_test(platform: &Platform) -> ConfigDelivery {
    if platform.config_delivery.testable_under_qemu() {
        platform.config_delivery
    } else {
        ConfigDelivery::FwCfg
    }
}

/// The kernel command line addition that points Ignition at the stand-in
/// delivery: a later `ignition.platform.id=` wins over the platform's own.
fn ignition_stand_in(platform: &Platform) -> String {
    let delivery = delivery_under_test(platform);
    if delivery == platform.config_delivery {
        String::new()
    } else {
        format!(" ignition.platform.id={}", delivery.ignition_platform())
    }
}

/// The SMBIOS strings that turn the image into a test subject for one
/// boot: the evidence unit as a credential and, where systemd-stub boots
/// the kernel, command line additions (console on the serial port, start
/// the unit). A network boot gets those from its iPXE script instead.
fn smbios_strings(through_stub: bool, extra_cmdline: &str) -> Vec<String> {
    let unit = base64::engine::general_purpose::STANDARD.encode(GUEST_UNIT);
    let mut strings = vec![format!(
        "io.systemd.credential.binary:systemd.extra-unit.{GUEST_UNIT_NAME}={unit}"
    )];
    if through_stub {
        strings.push(format!(
            "io.systemd.stub.kernel-cmdline-extra=console=ttyS0 systemd.wants={GUEST_UNIT_NAME}{extra_cmdline}"
        ));
    }
    strings
}

/// Copies the disk image (sparsely) and flips one byte inside USR-A.
fn tampered_copy(
    tools: &HostTools,
    build: &BuildInfo,
    build_dir: &Path,
    copy: &Path,
) -> Result<String> {
    let usr = build.disk.partition_table.require(Role::UsrA)?;
    Step::new("copying the image to tamper with", tools.path("cp"))
        .args(["--sparse=always", "--"])
        .arg(build_dir.join(&build.disk.file))
        .arg(copy)
        .run()?;
    let offset = usr.offset + TAMPER_OFFSET_IN_USR;
    let (before, after) = flip_byte(copy, offset)?;
    Ok(format!(
        "byte {} of USR-A (partition {}, disk offset {offset}) flipped from {before:#04x} to {after:#04x}",
        TAMPER_OFFSET_IN_USR, usr.number
    ))
}

/// Inverts every bit of the byte at `offset`; returns it before and after.
fn flip_byte(path: &Path, offset: u64) -> Result<(u8, u8)> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut byte)?;
    let flipped = byte[0] ^ 0xff;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&[flipped])?;
    file.sync_all()?;
    Ok((byte[0], flipped))
}

/// The test data disk: a tar archive with the guest script, the list of
/// every platform's agent units, the checks of the agents bound to their
/// hypervisor, and a one-binary container root file system (static
/// busybox) for `docker import`.
fn write_test_data(
    tools: &HostTools,
    build: &BuildInfo,
    work: &Path,
    out: &Path,
    login_wait: bool,
    guest_files: &[(String, String)],
) -> Result<()> {
    let staging = work.join("testdata");
    let rootfs = staging.join("rootfs");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
    fs::write(staging.join("guest-evidence.sh"), GUEST_SCRIPT)?;
    let units: String = build
        .platforms
        .iter()
        .flat_map(|p| p.units.iter().map(move |u| format!("{} {u}\n", p.id)))
        .collect();
    fs::write(staging.join("platform-units"), units)?;
    fs::write(
        staging.join("hypervisor-checks"),
        hypervisor_checks(&build.platforms)?,
    )?;
    Step::new("packing the container root file system", tools.path("tar"))
        .arg("-C")
        .arg(&rootfs)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(staging.join("rootfs.tar"))
        .arg(".")
        .run()?;
    let mut members = vec![
        "guest-evidence.sh",
        "platform-units",
        "hypervisor-checks",
        "rootfs.tar",
    ];
    if login_wait {
        // The guest waits for the host to log in instead of powering off.
        fs::write(staging.join("login-wait"), "")?;
        members.push("login-wait");
    }
    for (name, content) in guest_files {
        let path = staging.join(name);
        fs::create_dir_all(path.parent().expect("a file in the test data"))?;
        fs::write(&path, content)?;
    }
    if guest_files
        .iter()
        .any(|(name, _)| name.starts_with("agent/"))
    {
        members.push("agent");
    }
    Step::new("packing the test data disk", tools.path("tar"))
        .arg("-C")
        .arg(&staging)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(out)
        .args(members)
        .run()?;
    fs::remove_dir_all(&staging)?;
    Ok(())
}

/// The guest's list of checks that show a hypervisor-bound agent it is
/// not on its hypervisor: one "report-key program" pair per line, for every
/// platform (the guest runs those the image has, so every boot reports
/// them). A key the guest script reports itself is refused, as the check
/// would overwrite that fact.
fn hypervisor_checks(platforms: &[Platform]) -> Result<String> {
    let mut lines = Vec::new();
    for agent in platforms.iter().flat_map(|p| &p.hypervisor_bound_agents) {
        let key = agent.report_key();
        if GUEST_SCRIPT.contains(&format!("say {key} ")) {
            bail!(
                "the check {} of {} would be reported as {key}, which the guest already reports; rename it in the platform table",
                agent.check,
                agent.unit
            );
        }
        let line = format!("{key} {}\n", agent.check);
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    Ok(lines.concat())
}

/// How a VM run went, as seen from outside.
struct BootRun {
    outcome: BootOutcome,
    wall: Duration,
    command: String,
    milestones: Vec<Milestone>,
    verity_errors: Vec<String>,
    /// Firmware and boot loader refusals to start an image.
    boot_refusals: Vec<String>,
    /// Ignition's error lines on the console.
    ignition_errors: Vec<String>,
    /// The machine halted (a failed boot that is no update's trial).
    halted: bool,
    /// How many times the console saw a kernel start.
    kernel_starts: usize,
}

/// What the guest script prints when it waits for the host to log in.
const LOGIN_READY: &str = "boxcar-evidence: login.ready=";

/// Console milestones, in boot order: the text that marks them and what
/// to call them.
const MILESTONES: &[(&str, &str)] = &[
    ("BdsDxe: starting", evidence::LOADER_STARTED),
    ("EFI stub:", evidence::KERNEL_STARTED),
    ("Linux version", evidence::KERNEL_RUNNING),
    ("Run /init as init process", "initrd started"),
    (
        "Finished systemd-veritysetup@usr",
        "initrd set up dm-verity for /usr",
    ),
    (
        "Reached target initrd-switch-root.target",
        "switching to the real root",
    ),
    ("Reached target multi-user.target", "multi-user reached"),
    (
        "boxcar-evidence: update.rebooting",
        "update installed; rebooting",
    ),
    ("boxcar-evidence: begin", "collecting evidence"),
    ("boxcar-evidence: end", "evidence recorded; powering off"),
];

/// How long to let the console settle after a fatal sign, so the log
/// holds the whole story.
const GRACE_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Runs the VM until it powers off, fails decisively, or times out,
/// following its console.
fn boot(
    tools: &HostTools,
    spec: &VmSpec,
    accel: &AccelChoice,
    expectation: BootExpectation,
    timeout: Duration,
    phase: &mut Phase,
    on_ready: &mut dyn FnMut(u32, &mut Phase),
) -> Result<BootRun> {
    let step = Step::new(
        "booting the image in qemu",
        tools.path("qemu-system-x86_64"),
    )
    .args(spec.arguments(accel.accel));
    let command = step.command_line();
    let started = Instant::now();
    let (mut child, info) = step.spawn_with(Stdio::null(), Stdio::piped())?;
    let stderr_reader = collect_stderr(&mut child);
    let mut console = ConsoleFollower::new(&spec.console_out);
    let mut seen = [false; MILESTONES.len()];
    let mut milestones = Vec::new();
    let mut failure_seen: Option<(Instant, BootOutcome)> = None;
    // How many times the guest said it waits for a login (once a boot).
    let mut logins_offered = 0;
    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            let stderr = stderr_reader.join().unwrap_or_default();
            console.poll();
            if status.success() {
                break failure_seen.map_or_else(|| exit_outcome(&console.text), |(_, o)| o);
            }
            if failure_seen.is_none() {
                info.check_status(status, crate::process::last_lines(&stderr, 20))
                    .context("qemu failed")?;
            }
            break failure_seen.map_or(BootOutcome::QemuFailed, |(_, o)| o);
        }
        console.poll();
        // Each milestone once, whenever it shows: a network boot has no
        // boot loader line, an emergency stops before the later ones.
        for (index, (marker, event)) in MILESTONES.iter().enumerate() {
            if !seen[index] && console.text.contains(marker) {
                seen[index] = true;
                phase.milestone(event);
                milestones.push(Milestone {
                    event: (*event).to_owned(),
                    seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                });
            }
        }
        let offered = console.text.matches(LOGIN_READY).count();
        if offered > logins_offered {
            logins_offered = offered;
            on_ready(offered as u32, phase);
            // The logins take a while; that is not the guest's time.
            continue;
        }
        // After failures that are part of the plan, only the end counts.
        if failure_seen.is_none() && expectation != BootExpectation::SuccessAfterFailures {
            if let Some(outcome) = fatal_sign(&console.text) {
                phase.println(&format!("the guest failed to boot: {outcome:?}"));
                failure_seen = Some((Instant::now(), outcome));
            }
        }
        let stop = if let Some((seen, outcome)) = failure_seen {
            // Judged again on the whole console: a line forwarded late
            // (a unit's own output reaches the console through journald,
            // after systemd's emergency lines) may name the cause.
            (seen.elapsed() > GRACE_AFTER_FAILURE)
                .then(|| fatal_sign(&console.text).unwrap_or(outcome))
        } else if emulation_stalled(&console.text) {
            phase.println("the emulated CPUs stalled (RCU stalls on the console)");
            Some(BootOutcome::EmulationStalled)
        } else if started.elapsed() > timeout {
            Some(BootOutcome::TimedOut)
        } else if crate::interrupt::requested() {
            Some(BootOutcome::Interrupted)
        } else {
            None
        };
        if let Some(outcome) = stop {
            stop_vm(&mut child);
            console.poll();
            break outcome;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let wall = started.elapsed();
    if outcome == BootOutcome::Interrupted {
        bail!("boot test interrupted");
    }
    if expectation != BootExpectation::Failure && outcome == BootOutcome::TimedOut {
        phase.println(&format!("no power-off within {}s", timeout.as_secs()));
    }
    Ok(BootRun {
        outcome,
        wall,
        command,
        milestones,
        verity_errors: verity_errors(&console.text),
        boot_refusals: boot_refusals(&console.text),
        ignition_errors: console
            .text
            .lines()
            .filter(|l| l.contains("CRITICAL") || l.contains("Ignition failed"))
            .map(|l| l.trim().to_owned())
            .collect(),
        halted: console.text.contains("reboot: System halted"),
        kernel_starts: console.text.matches("Linux version ").count(),
    })
}

/// How a guest that made qemu exit by itself ended: the kernel's last
/// word on the console says whether it powered off or restarted (which
/// ends qemu under -no-reboot).
fn exit_outcome(console: &str) -> BootOutcome {
    let restarted = console.rfind("reboot: Restarting system");
    let powered_off = console.rfind("reboot: Power down");
    if restarted > powered_off {
        BootOutcome::Rebooted
    } else {
        BootOutcome::PoweredOff
    }
}

/// A console line that means the boot cannot succeed. A refusal comes
/// first: it says why, and the emergency mode that follows it does not.
fn fatal_sign(console: &str) -> Option<BootOutcome> {
    if !boot_refusals(console).is_empty() {
        Some(BootOutcome::Refused)
    } else if console.contains("You are in emergency mode")
        || console.contains("Entering emergency mode")
        // recipes/emergency-reboot.conf: the image reboots a failed trial
        // boot, and stops any other failed boot, where it would have
        // started an emergency shell.
        || console.contains("Reboot a failed trial boot, else stop")
        || console.contains("boxcar: the boot failed")
        || console.contains("Cannot open access to console, the root account is locked")
    {
        Some(BootOutcome::EmergencyMode)
    } else if console.contains("Kernel panic") {
        Some(BootOutcome::KernelPanic)
    } else {
        None
    }
}

/// What the kernel prints, about every 21 seconds, while a CPU makes no
/// progress (rcu_preempt or rcu_sched).
const RCU_STALL: &str = "detected stalls on CPUs/tasks";

/// How many stall reports mean the guest will not recover in time: a
/// minute without progress. A healthy boot, even emulated, prints none.
const STALL_REPORTS: usize = 3;

/// Whether the guest's CPUs stopped making progress.
fn emulation_stalled(console: &str) -> bool {
    console.matches(RCU_STALL).count() >= STALL_REPORTS
}

/// Kernel messages about verity corruption, or a root hash signature it
/// refused, each once.
fn verity_errors(console: &str) -> Vec<String> {
    let mut errors: Vec<String> = Vec::new();
    for line in console.lines() {
        let refused_signature =
            line.contains("device-mapper") && line.contains(evidence::KERNEL_REFUSED_ROOT_HASH);
        if refused_signature
            || line.contains("verity")
                && (line.contains("corrupted") || line.contains("corruption"))
        {
            let message = strip_kernel_timestamp(line).to_owned();
            if !errors.contains(&message) {
                errors.push(message);
            }
        }
    }
    errors
}

/// What the initrd (recipes/initrd/usr/lib/boxcar/usr-verity-setup) prints
/// when it will not set up /usr.
const USR_REFUSAL: &str = "refusing to use /usr";

/// Lines where the firmware (OVMF's boot manager) or systemd-boot refused
/// to start an image, or the initrd to use its /usr, each once: what a
/// failed Secure Boot check prints.
/// The firmware also refuses its own built-in shell under Secure Boot
/// ("Security Violation"); that is no refusal of ours and is left out.
fn boot_refusals(console: &str) -> Vec<String> {
    let mut refusals: Vec<String> = Vec::new();
    for line in console.lines() {
        let line = strip_terminal_escapes(line);
        let refused = ((line.contains("BdsDxe: failed to load Boot")
            || line.contains("Error loading \\"))
            && line.to_ascii_lowercase().contains("access denied"))
            // The initrd's usr-verity-setup, refusing /usr.
            || line.contains(USR_REFUSAL);
        if refused && !refusals.contains(&line) {
            refusals.push(line);
        }
    }
    refusals
}

/// A console line without the ANSI escape sequences the firmware draws
/// its screen with.
fn strip_terminal_escapes(line: &str) -> String {
    let mut text = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then one final letter.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            text.push(c);
        }
    }
    text.trim().to_owned()
}

fn strip_kernel_timestamp(line: &str) -> &str {
    let line = line.trim();
    match line.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        Some((_, rest)) => rest.trim(),
        None => line,
    }
}

fn stop_vm(child: &mut Child) {
    terminate(child);
    for _ in 0..20 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn collect_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let pipe = child.stderr.take();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Follows the console file as qemu writes it, without terminal escapes.
struct ConsoleFollower {
    path: PathBuf,
    offset: u64,
    text: String,
}

impl ConsoleFollower {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            text: String::new(),
        }
    }

    fn poll(&mut self) {
        let Ok(mut file) = File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if let Ok(n) = file.read_to_end(&mut bytes) {
            self.offset += n as u64;
            self.text
                .push_str(&strip_ansi(&String::from_utf8_lossy(&bytes)));
        }
    }
}

/// Removes terminal escape sequences (colours, cursor moves) and carriage
/// returns, so console text can be searched.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            _ => out.push(c),
        }
    }
    out
}

/// The evidence work directory: removed unless committed.
struct Workdir {
    path: PathBuf,
}

impl Workdir {
    fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            fs::remove_dir_all(path)?;
        }
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Keeps the console log (and a lock server's log) and writes the
    /// evidence; everything else (disk copies, overlays) goes. Replaces
    /// earlier evidence of the case.
    fn commit(self, target: &Path, evidence: &Evidence) -> Result<PathBuf> {
        for entry in fs::read_dir(&self.path)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n != record::CONSOLE_LOG && n != LOCK_LOG)
            {
                if path.is_dir() {
                    fs::remove_dir_all(&path)?;
                } else {
                    fs::remove_file(&path)?;
                }
            }
        }
        let mut json = serde_json::to_string_pretty(evidence)?;
        json.push('\n');
        fs::write(self.path.join(record::EVIDENCE_JSON), json)?;
        fs::write(
            self.path.join(record::SUMMARY_TXT),
            evidence::summary(evidence),
        )?;
        if target.exists() {
            fs::remove_dir_all(target)
                .with_context(|| format!("replacing {}", target.display()))?;
        }
        fs::rename(&self.path, target)?;
        Ok(target.to_owned())
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The provisioning checks of a platform's boot: the logins after each
/// boot, and what the guest reported of Ignition and SSH each time.
fn judge_provisioning(
    provisioning: &provisioning::Provisioning,
    logins: &[Result<provisioning::Login, String>],
    boots: &[std::collections::BTreeMap<String, String>],
    rebooted: bool,
) -> Vec<Check> {
    let Some(first) = logins.first() else {
        return vec![Check {
            name: "core logs in over SSH with the configured key".to_owned(),
            passed: false,
            expected: "the guest waiting for a login".to_owned(),
            observed: "it never said it was ready".to_owned(),
        }];
    };
    let first = match first {
        Ok(login) => login,
        Err(e) => {
            return vec![Check {
                name: "core logs in over SSH with the configured key".to_owned(),
                passed: false,
                expected: "a shell as core".to_owned(),
                observed: e.clone(),
            }]
        }
    };
    let mut checks = provisioning::judge_first(provisioning, first);
    let ran_first = boots
        .first()
        .and_then(|b| b.get("ignition_messages"))
        .cloned()
        .unwrap_or_default();
    checks.push(Check {
        name: "Ignition ran on the first boot".to_owned(),
        passed: ran_first.parse::<u32>().unwrap_or(0) > 0,
        expected: "Ignition's messages in the first boot's journal".to_owned(),
        observed: format!("{ran_first} messages"),
    });
    if rebooted {
        match (logins.get(1), boots.get(1)) {
            (Some(Ok(second)), Some(report)) => checks.extend(provisioning::judge_second(
                first,
                second,
                report.get("ignition_messages").map_or("", String::as_str),
            )),
            (second, _) => checks.push(Check {
                name: "everything provisioned persisted across the reboot".to_owned(),
                passed: false,
                expected: "a second boot, reported and logged in to".to_owned(),
                observed: match second {
                    Some(Err(e)) => e.clone(),
                    _ => format!("{} boots reported", boots.len()),
                },
            }),
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours_and_carriage_returns() {
        let raw = "[\u{1b}[0;32m  OK  \u{1b}[0m] Reached target \u{1b}[0;1;39mmulti-user.target\u{1b}[0m\r\n";
        assert_eq!(
            strip_ansi(raw),
            "[  OK  ] Reached target multi-user.target\n"
        );
    }

    #[test]
    fn finds_verity_errors_without_timestamps() {
        let console = "[    9.1] device-mapper: verity: 254:0: data block 0 is corrupted\nother\n\
                       [    9.2] device-mapper: verity: 254:0: data block 0 is corrupted\n";
        assert_eq!(
            verity_errors(console),
            ["device-mapper: verity: 254:0: data block 0 is corrupted"]
        );
    }

    #[test]
    fn finds_secure_boot_refusals_and_not_the_firmware_shell() {
        // As OVMF and systemd-boot print them on the serial console.
        let console = "\u{1b}[2J\u{1b}[01;01HBdsDxe: starting Boot0001 \"UEFI Misc Device\"\r\n\
            ../src/boot/boot.c:2576@image_start: Error loading \\EFI\\Linux\\boxcar_1.efi: Access denied\r\n\
            BdsDxe: failed to start Boot0002 \"EFI Internal Shell\": Security Violation\r\n\
            ../src/boot/boot.c:2576@image_start: Error loading \\EFI\\Linux\\boxcar_1.efi: Access denied\r\n\
            BdsDxe: failed to load Boot0003 \"UEFI QEMU HARDDISK QM00001 \" from PciRoot(0x0): Access Denied\n";
        assert_eq!(
            boot_refusals(console),
            [
                "../src/boot/boot.c:2576@image_start: Error loading \\EFI\\Linux\\boxcar_1.efi: Access denied",
                "BdsDxe: failed to load Boot0003 \"UEFI QEMU HARDDISK QM00001 \" from PciRoot(0x0): Access Denied",
            ]
        );
        assert_eq!(fatal_sign(console), Some(BootOutcome::Refused));
        assert!(boot_refusals("BdsDxe: failed to start Boot0002: Security Violation").is_empty());
    }

    #[test]
    fn the_initrd_refusing_usr_is_a_refusal() {
        let console = "[   12.1] usr-verity-setup[301]: boxcar-usr-verity: the kernel refused the /usr root hash signature in /dev/vda4: refusing to use /usr\n";
        assert_eq!(boot_refusals(console).len(), 1);
        assert_eq!(fatal_sign(console), Some(BootOutcome::Refused));
        // systemd's emergency lines may reach the console first; the
        // refusal still names the outcome.
        let both = format!("[  !!  ] Entering emergency mode.\n{console}");
        assert_eq!(fatal_sign(&both), Some(BootOutcome::Refused));
        let kernel = "[   22.3] device-mapper: table: 254:0: verity: Root hash verification failed (-EINVAL)\n";
        assert_eq!(
            verity_errors(kernel),
            ["device-mapper: table: 254:0: verity: Root hash verification failed (-EINVAL)"]
        );
    }

    #[test]
    fn tampers_inside_the_base64_signature() {
        let signature = format!("MIIErAYJKoZIhvcN{}QRSTUVWXYZabcdefghij==", "A".repeat(40));
        let mut partition = format!(
            r#"{{"rootHash":"ab","certificateFingerprint":"cd","signature":"{signature}"}}"#
        )
        .into_bytes();
        partition.resize(16384, 0);
        let offset = signature_character(&partition).unwrap();
        let start = partition
            .windows(13)
            .position(|w| w == b"\"signature\":\"")
            .unwrap()
            + 13;
        assert_eq!(offset, start + signature.len() - 20);
        assert_eq!(partition[offset], b'S');
        assert_eq!(signature_character(&[0; 16384]), None);
        assert_eq!(signature_character(br#"{"signature":"MII"}"#), None);
    }

    #[test]
    fn strips_the_firmware_screen_escapes() {
        assert_eq!(
            strip_terminal_escapes("\u{1b}[0m\u{1b}[30m\u{1b}[47mboxcar\u{1b}[=3h menu\r"),
            "boxcar menu"
        );
    }

    #[test]
    fn recognises_fatal_signs() {
        assert_eq!(
            fatal_sign("...You are in emergency mode. After logging in"),
            Some(BootOutcome::EmergencyMode)
        );
        assert_eq!(
            fatal_sign("Kernel panic - not syncing"),
            Some(BootOutcome::KernelPanic)
        );
        assert_eq!(fatal_sign("Reached target multi-user.target"), None);
    }

    #[test]
    fn a_minute_of_rcu_stall_reports_is_a_stalled_emulation() {
        let report = "[   23.015681] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n\
                      [   23.016571] rcu: \t1-...!: (0 ticks this GP) idle=f658/0/0x0\n";
        let healthy = "[   10.598464] systemd[1]: Successfully made /usr/ read-only.\n";
        assert!(!emulation_stalled(healthy));
        assert!(!emulation_stalled(&format!("{healthy}{report}{report}")));
        assert!(emulation_stalled(&format!(
            "{healthy}{report}{report}{report}"
        )));
        let sched = "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:\n";
        assert!(emulation_stalled(&sched.repeat(3)));
    }

    #[test]
    fn smbios_carries_the_unit_and_the_command_line() {
        let strings = smbios_strings(true, "");
        assert!(strings[0].starts_with(
            "io.systemd.credential.binary:systemd.extra-unit.boxcar-evidence.service="
        ));
        let encoded = strings[0].split_once(".service=").unwrap().1;
        let unit = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(unit, GUEST_UNIT.as_bytes());
        assert!(strings[1].contains("systemd.wants=boxcar-evidence.service"));
        assert!(!strings.iter().any(|s| s.contains(',')));
        assert_eq!(
            smbios_strings(false, "").len(),
            1,
            "a network boot gets its arguments from iPXE"
        );
    }

    fn shipped_platforms() -> Vec<Platform> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(crate::platform::TABLE_FILE);
        crate::platform::PlatformTable::load(&path)
            .unwrap()
            .platforms
    }

    /// What each shipped platform's VM gets besides its disk: the table's
    /// fields, not its id, decide.
    #[test]
    fn each_platform_is_presented_as_its_table_entry_says() {
        let disk = BootSource::Disk {
            path: "/w/disk.qcow2".into(),
            format: "qcow2",
            bus: DiskBus::Virtio,
        };
        let mut seen = Vec::new();
        for platform in shipped_platforms() {
            let prepared = present(&platform, disk.clone(), Vec::new(), None).unwrap();
            let forwards: Vec<&str> = prepared
                .guest_forwards
                .iter()
                .map(|(address, _)| address.as_str())
                .collect();
            seen.push(format!(
                "{}: {} | forwards {forwards:?} | network {:?} | cpuid {:?} | agent {:?}",
                platform.id,
                prepared.hardware,
                prepared.network,
                prepared.hypervisor_cpuid,
                prepared.guest_agent
            ));
            if let Some((_, command)) = prepared.guest_forwards.first() {
                assert!(
                    command.ends_with(&format!("--imds-hostname {IMDS_HOSTNAME}")),
                    "{command}"
                );
            }
        }
        assert_eq!(
            seen,
            [
                "qemu: UEFI firmware, virtio disk, virtio-net NIC | forwards [] | network None | cpuid Visible | agent QemuGa",
                "vmware: UEFI firmware, SATA disk, VMXNET3 NIC, VMware SMBIOS identity | forwards [] | network None | cpuid Hidden | agent None",
                "aws: UEFI firmware, NVMe disk, virtio-net NIC | forwards [\"169.254.169.254:80\"] | network Some(\"169.254.0.0/16\") | cpuid Visible | agent None",
                "metal: UEFI firmware, SATA disk, e1000e NIC | forwards [] | network None | cpuid Visible | agent None",
                "pxe: BIOS (iPXE) firmware, no disk (network boot), virtio-net NIC | forwards [] | network None | cpuid Visible | agent None",
            ]
        );
    }

    #[test]
    fn the_composed_disk_boots_like_the_first_uefi_virtio_platform() {
        let mut platforms = shipped_platforms();
        let pick = |platforms: &[Platform]| -> Result<String> {
            composed_disk_platform(platforms).map(|p| p.id.to_string())
        };
        assert_eq!(pick(&platforms).unwrap(), platforms[0].id.to_string());
        // Moved to the end of the table, it is still the one found.
        platforms.rotate_left(1);
        assert_eq!(pick(&platforms).unwrap(), platforms[4].id.to_string());
        // A table without one is an error that says what is needed.
        for p in &mut platforms {
            if p.disk_bus == DiskBus::Virtio {
                p.disk_bus = DiskBus::Sata;
            }
        }
        let err = pick(&platforms).unwrap_err().to_string();
        assert!(err.contains("UEFI firmware and a virtio disk"), "{err}");
    }

    #[test]
    fn hypervisor_checks_list_every_platforms_check_once() {
        let mut platforms = shipped_platforms();
        assert_eq!(
            hypervisor_checks(&platforms).unwrap(),
            "vmware_checkvm vmware-checkvm\n"
        );
        let vmware = platforms
            .iter()
            .find(|p| !p.hypervisor_bound_agents.is_empty())
            .unwrap()
            .clone();
        platforms.push(vmware.clone());
        assert_eq!(
            hypervisor_checks(&platforms).unwrap(),
            "vmware_checkvm vmware-checkvm\n"
        );
        // A check whose key the guest already reports would overwrite it.
        let mut clash = vmware;
        clash.hypervisor_bound_agents[0].check = "hostname".into();
        let err = hypervisor_checks(&[clash]).unwrap_err().to_string();
        assert!(err.contains("already reports"), "{err}");
    }

    #[test]
    fn pxe_chain_adds_test_arguments_then_chains_over_http() {
        let script = pxe_chain_script(Path::new("/b/boxcar-1-pxe.ipxe"), "");
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains(
            "set boxcar-extra-args console=ttyS0 systemd.wants=boxcar-evidence.service\n"
        ));
        let provisioned = pxe_chain_script(
            Path::new("/b/boxcar-1-pxe.ipxe"),
            " ignition.config.url=http://10.0.2.101/config.ign",
        );
        assert!(provisioned.contains(
            "systemd.wants=boxcar-evidence.service ignition.config.url=http://10.0.2.101/config.ign\n"
        ));
        assert!(
            script.ends_with("chain http://10.0.2.100/boxcar-1-pxe.ipxe\n"),
            "{script}"
        );
    }
}
