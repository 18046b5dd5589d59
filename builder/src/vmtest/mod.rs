//! `boxcar test`: boot a build in qemu and record evidence of what it is.
//!
//! The image under test is never changed: the VM writes to a qcow2 overlay
//! (which is also larger than the image, so ROOT's growth is exercised).
//! What the guest needs for the test (a script, a container image) comes on
//! a separate disk and through systemd credentials passed by SMBIOS, so the
//! production image carries nothing for it.

pub mod evidence;
pub mod qemu;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;

use crate::buildinfo::BuildInfo;
use crate::hosttools::{self, HostTools, Requirement};
use crate::image::Role;
use crate::process::{terminate, Step};
use crate::progress::{Phase, Progress};
use evidence::{BootOutcome, Evidence, Milestone, TestCase};
use qemu::{AccelChoice, AccelRequest, DiskBus, Firmware, VmSpec};

/// The guest side, shipped inside `boxcar` and put on the test disk.
const GUEST_SCRIPT: &str = include_str!("guest-evidence.sh");
/// The unit that runs it, passed as a credential.
const GUEST_UNIT: &str = include_str!("evidence-unit.service");
const GUEST_UNIT_NAME: &str = "boxcar-evidence.service";

/// The disk the VM sees is this much larger than the image, so the first
/// boot has room to grow ROOT into.
const OVERLAY_SIZE: &str = "8G";

/// Where the busybox that becomes the test container comes from.
const BUSYBOX: &str = "/bin/busybox";

/// In a tamper test, the byte flipped is this far into USR-A: inside the
/// erofs superblock (at 1024), which every mount reads.
pub const TAMPER_OFFSET_IN_USR: u64 = 1024 + 4;

/// The programs `boxcar test` runs.
pub fn requirements() -> Vec<Requirement> {
    vec![
        Requirement {
            program: "qemu-system-x86_64",
            purpose: "boots the image",
            min_version: Some("7.2"),
            version_args: &["--version"],
            package: "qemu-system-x86",
        },
        Requirement {
            program: "qemu-img",
            purpose: "creates the copy-on-write disk the VM writes to",
            min_version: Some("7.2"),
            version_args: &["--version"],
            package: "qemu-utils",
        },
        Requirement {
            program: "tar",
            purpose: "packs the test data disk",
            min_version: None,
            version_args: &[],
            package: "tar",
        },
        Requirement {
            program: "cp",
            purpose: "copies the image for the tamper test",
            min_version: None,
            version_args: &[],
            package: "coreutils",
        },
    ]
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct TestRequest {
    pub build_dir: PathBuf,
    pub case: TestCase,
    pub accel: AccelRequest,
    /// `None`: a default for the accelerator.
    pub timeout: Option<Duration>,
    pub memory_mib: u32,
    pub cpus: u32,
}

/// The result: where the evidence is, and what it says.
#[derive(Debug)]
pub struct TestOutcome {
    pub evidence_dir: PathBuf,
    pub evidence: Evidence,
}

/// Boots the build and writes `evidence/<case>/` into the build directory.
pub fn run(request: &TestRequest, tools: &HostTools, progress: &Progress) -> Result<TestOutcome> {
    let build_dir = std::path::absolute(&request.build_dir)?;
    let request = &TestRequest {
        build_dir,
        ..request.clone()
    };
    let build = BuildInfo::load(&request.build_dir)?;
    let firmware = Firmware::find()?;
    if !hosttools::is_static_elf(Path::new(BUSYBOX)).unwrap_or(false) {
        bail!(
            "{BUSYBOX} is missing or not statically linked; the test container needs Debian's busybox-static ({})",
            hosttools::SETUP_HINT
        );
    }
    let evidence_root = request.build_dir.join("evidence");
    let final_dir = evidence_root.join(request.case.dir_name());
    let work =
        Workdir::create(&evidence_root.join(format!(".{}.partial", request.case.dir_name())))?;

    let phase = progress.phase("prepare");
    let accel = qemu::choose_accel(
        request.accel,
        tools.path("qemu-system-x86_64"),
        &firmware,
        &work.path,
    )?;
    let (base_disk, tampering) = match request.case {
        TestCase::Boot => (request.build_dir.join(&build.disk.file), None),
        TestCase::TamperUsr => {
            let copy = work.path.join("tampered.raw");
            let description = tampered_copy(tools, &build, &request.build_dir, &copy)?;
            (copy, Some(description))
        }
    };
    let overlay = work.path.join("disk.qcow2");
    Step::new(
        "creating the VM's copy-on-write disk",
        tools.path("qemu-img"),
    )
    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
    .arg(&base_disk)
    .arg(&overlay)
    .arg(OVERLAY_SIZE)
    .run()?;
    let vars = work.path.join("efi-vars.fd");
    fs::copy(&firmware.vars_template, &vars)
        .with_context(|| format!("copying {}", firmware.vars_template.display()))?;
    let test_data = work.path.join("testdata.tar");
    write_test_data(tools, &work.path, &test_data)?;
    phase.done(&format!("{} ({})", accel.accel.name(), accel.reason));

    let spec = VmSpec {
        disk: overlay,
        disk_format: "qcow2",
        disk_bus: DiskBus::VirtioBlk,
        firmware_code: firmware.code.clone(),
        firmware_vars: vars,
        test_data,
        evidence_out: work.path.join("evidence.out"),
        console_out: work.path.join(evidence::CONSOLE_LOG),
        memory_mib: request.memory_mib,
        cpus: request.cpus,
        smbios_strings: smbios_strings(),
    };
    let timeout = request.timeout.unwrap_or(match accel.accel {
        qemu::Accel::Kvm => Duration::from_secs(300),
        qemu::Accel::Tcg => Duration::from_secs(900),
    });
    let started_at = crate::build::now_rfc3339();
    let mut phase = progress.phase("boot");
    let run = boot(tools, &spec, &accel, request.case, timeout, &mut phase)?;
    let report_text = fs::read_to_string(&spec.evidence_out).unwrap_or_default();
    let report = evidence::parse_report(&report_text);
    let checks = match request.case {
        TestCase::Boot => evidence::judge_boot(&report, &build, run.outcome),
        TestCase::TamperUsr => evidence::judge_tamper(&report, &run.verity_errors, run.outcome),
    };
    let passed = checks.iter().all(|c| c.passed);
    let mut boot_time = evidence::boot_time(&report);
    if let Some(time) = boot_time.as_mut() {
        evidence::add_early_boot_from_console(time, &run.milestones);
    }
    let evidence = Evidence {
        schema: evidence::SCHEMA_VERSION,
        case: request.case,
        version: build.version.to_string(),
        platform: "qemu-uefi-virtio".to_owned(),
        artifact: build.disk.file.clone(),
        tampering,
        started_at,
        accelerator: accel.accel.name().to_owned(),
        accelerator_reason: accel.reason.clone(),
        qemu_command: run.command,
        outcome: run.outcome,
        wall_seconds: (run.wall.as_secs_f64() * 10.0).round() / 10.0,
        boot_time,
        milestones: run.milestones,
        verity_errors: run.verity_errors,
        guest: report,
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
    let evidence_dir = work.commit(&final_dir, &evidence)?;
    Ok(TestOutcome {
        evidence_dir,
        evidence,
    })
}

/// The SMBIOS strings that turn the image into a test subject for one
/// boot: the evidence unit as a credential, and kernel command line
/// additions (console on the serial port, start the unit).
fn smbios_strings() -> Vec<String> {
    let unit = base64::engine::general_purpose::STANDARD.encode(GUEST_UNIT);
    vec![
        format!("io.systemd.credential.binary:systemd.extra-unit.{GUEST_UNIT_NAME}={unit}"),
        format!(
            "io.systemd.stub.kernel-cmdline-extra=console=ttyS0 systemd.wants={GUEST_UNIT_NAME}"
        ),
    ]
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
    let mut file = fs::OpenOptions::new().read(true).write(true).open(copy)?;
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut byte)?;
    let flipped = byte[0] ^ 0xff;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&[flipped])?;
    file.sync_all()?;
    Ok(format!(
        "byte {} of USR-A (partition {}, disk offset {offset}) flipped from {:#04x} to {flipped:#04x}",
        TAMPER_OFFSET_IN_USR, usr.number, byte[0]
    ))
}

/// The test data disk: a tar archive with the guest script and a one-binary
/// container root file system (static busybox), for `docker import`.
fn write_test_data(tools: &HostTools, work: &Path, out: &Path) -> Result<()> {
    let staging = work.join("testdata");
    let rootfs = staging.join("rootfs");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
    fs::write(staging.join("guest-evidence.sh"), GUEST_SCRIPT)?;
    Step::new("packing the container root file system", tools.path("tar"))
        .arg("-C")
        .arg(&rootfs)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(staging.join("rootfs.tar"))
        .arg(".")
        .run()?;
    Step::new("packing the test data disk", tools.path("tar"))
        .arg("-C")
        .arg(&staging)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(out)
        .args(["guest-evidence.sh", "rootfs.tar"])
        .run()?;
    fs::remove_dir_all(&staging)?;
    Ok(())
}

/// How a VM run went, as seen from outside.
struct BootRun {
    outcome: BootOutcome,
    wall: Duration,
    command: String,
    milestones: Vec<Milestone>,
    verity_errors: Vec<String>,
}

/// Console milestones, in boot order: the text that marks them and what
/// to call them.
const MILESTONES: &[(&str, &str)] = &[
    ("BdsDxe: starting", evidence::LOADER_STARTED),
    ("EFI stub:", evidence::KERNEL_STARTED),
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
    case: TestCase,
    timeout: Duration,
    phase: &mut Phase,
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
    let mut milestone = 0;
    let mut milestones = Vec::new();
    let mut failure_seen: Option<(Instant, BootOutcome)> = None;
    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            let stderr = stderr_reader.join().unwrap_or_default();
            console.poll();
            if status.success() {
                break failure_seen.map_or(BootOutcome::PoweredOff, |(_, o)| o);
            }
            if failure_seen.is_none() {
                info.check_status(status, crate::process::last_lines(&stderr, 20))
                    .context("qemu failed")?;
            }
            break failure_seen.map_or(BootOutcome::QemuFailed, |(_, o)| o);
        }
        console.poll();
        while milestone < MILESTONES.len() && console.text.contains(MILESTONES[milestone].0) {
            let (_, event) = MILESTONES[milestone];
            phase.milestone(event);
            milestones.push(Milestone {
                event: event.to_owned(),
                seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            });
            milestone += 1;
        }
        if failure_seen.is_none() {
            if let Some(outcome) = fatal_sign(&console.text) {
                phase.println(&format!("the guest failed to boot: {outcome:?}"));
                failure_seen = Some((Instant::now(), outcome));
            }
        }
        let stop = if let Some((seen, outcome)) = failure_seen {
            (seen.elapsed() > GRACE_AFTER_FAILURE).then_some(outcome)
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
    if case == TestCase::Boot && outcome == BootOutcome::TimedOut {
        phase.println(&format!("no power-off within {}s", timeout.as_secs()));
    }
    Ok(BootRun {
        outcome,
        wall,
        command,
        milestones,
        verity_errors: verity_errors(&console.text),
    })
}

/// A console line that means the boot cannot succeed.
fn fatal_sign(console: &str) -> Option<BootOutcome> {
    if console.contains("You are in emergency mode")
        || console.contains("Entering emergency mode")
        || console.contains("Cannot open access to console, the root account is locked")
    {
        Some(BootOutcome::EmergencyMode)
    } else if console.contains("Kernel panic") {
        Some(BootOutcome::KernelPanic)
    } else {
        None
    }
}

/// Kernel messages about verity corruption.
/// Kernel messages about verity corruption, each once.
fn verity_errors(console: &str) -> Vec<String> {
    let mut errors: Vec<String> = Vec::new();
    for line in console.lines() {
        if line.contains("verity") && (line.contains("corrupted") || line.contains("corruption")) {
            let message = strip_kernel_timestamp(line).to_owned();
            if !errors.contains(&message) {
                errors.push(message);
            }
        }
    }
    errors
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

    /// Keeps the console log and writes the evidence; everything else
    /// (disk copies, overlays) goes. Replaces earlier evidence of the case.
    fn commit(self, target: &Path, evidence: &Evidence) -> Result<PathBuf> {
        for entry in fs::read_dir(&self.path)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n != evidence::CONSOLE_LOG) {
                if path.is_dir() {
                    fs::remove_dir_all(&path)?;
                } else {
                    fs::remove_file(&path)?;
                }
            }
        }
        let mut json = serde_json::to_string_pretty(evidence)?;
        json.push('\n');
        fs::write(self.path.join(evidence::EVIDENCE_JSON), json)?;
        fs::write(
            self.path.join(evidence::SUMMARY_TXT),
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
    fn smbios_carries_the_unit_and_the_command_line() {
        let strings = smbios_strings();
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
    }
}
