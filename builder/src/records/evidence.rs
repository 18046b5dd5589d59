//! `evidence.json`: the record of one boot test, which `boxcar test`
//! writes into `BUILD/evidence/<case>/` (with `summary.txt` and the
//! console log beside it) and `boxcar publish` reads, checks and ships
//! with the release. How the facts in it are judged is the harness's
//! business (`vmtest::evidence`); this is only their shape.

use std::collections::BTreeMap;

use boxcar_signing::documents::BootedFootprint;
use serde::{Deserialize, Serialize};

/// The record's file name inside a case's evidence directory.
pub const EVIDENCE_JSON: &str = "evidence.json";
/// The record for people.
pub const SUMMARY_TXT: &str = "summary.txt";
/// The VM's serial console, as the harness captured it.
pub const CONSOLE_LOG: &str = "console.log";
/// Format version of `evidence.json`.
pub const SCHEMA_VERSION: u32 = 1;

/// Which test was run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestCase {
    /// Boot a platform's artifact the way the platform presents it;
    /// everything must work.
    Platform,
    /// Boot a copy of the disk image with one byte of /usr slot A flipped;
    /// the tampered data must not be used.
    TamperUsr,
    /// Boot an older build, install this build over it as an A/B update,
    /// reboot: this build must run from the other slot.
    Update,
    /// Install a copy of this build with one byte of its /usr flipped over
    /// an older build: every boot of it must fail, and once its tries are
    /// used up the older build must boot again.
    UpdateFallback,
    /// Boot a platform's artifact with a config Ignition must refuse: the
    /// first boot must stop, its error on the console, without rebooting.
    BadConfig,
    /// Boot a copy of a signed disk image with one byte of its UKI flipped,
    /// under enforcing Secure Boot: the boot loader must refuse to start
    /// it.
    TamperUki,
    /// Boot a copy of a signed disk image whose /usr root hash signature
    /// was altered, under enforcing Secure Boot: the kernel must refuse
    /// it and /usr must not be used.
    TamperUsrSignature,
}

impl TestCase {
    pub fn name(self) -> &'static str {
        match self {
            TestCase::Platform => "platform",
            TestCase::TamperUsr => "tamper-usr",
            TestCase::Update => "update",
            TestCase::UpdateFallback => "update-fallback",
            TestCase::BadConfig => "bad-config",
            TestCase::TamperUki => "tamper-uki",
            TestCase::TamperUsrSignature => "tamper-usr-signature",
        }
    }
}

/// How the VM's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootOutcome {
    /// The guest powered itself off (after reporting, in a normal boot).
    PoweredOff,
    /// The guest rebooted where qemu was told to stop at a reboot (a
    /// failed boot reboots rather than wait at an emergency shell).
    Rebooted,
    /// systemd gave up and entered emergency mode.
    EmergencyMode,
    KernelPanic,
    /// Nothing decisive happened before the time limit.
    TimedOut,
    /// qemu itself failed (bad arguments, missing firmware, ...).
    QemuFailed,
    /// The emulated CPUs stopped making progress: the guest kernel kept
    /// reporting RCU stalls. Under software emulation on a busy host that
    /// is the emulator starving, not the image; the case is booted again.
    EmulationStalled,
    /// The firmware or the boot loader refused to start an image: its
    /// Secure Boot signature did not verify.
    Refused,
    /// The user interrupted the test.
    Interrupted,
}

/// One judged fact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub expected: String,
    pub observed: String,
}

/// Boot time, in seconds, the way systemd-analyze splits it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootTime {
    pub firmware: Option<f64>,
    pub loader: Option<f64>,
    pub kernel: f64,
    pub initrd: Option<f64>,
    pub userspace: f64,
    /// From power-on (or kernel start, without firmware figures) to the end
    /// of the boot transaction.
    pub total: f64,
    /// From the start of userspace to multi-user.target.
    pub multi_user_after_userspace: Option<f64>,
    /// The first line of `systemd-analyze time`, as the guest printed it.
    pub systemd_analyze: String,
    /// Where the firmware and loader figures come from: "guest" (the boot
    /// loader's EFI variables) or "host console" (when the console showed
    /// the firmware start the loader and the kernel start, seen from the
    /// host; under emulation the loader cannot time itself).
    pub early_boot_source: Option<String>,
}

/// A console event, timed from qemu's start on the host's clock. The
/// earliest ones (firmware, boot loader) are the only boot times the guest
/// cannot measure itself under emulation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Milestone {
    pub event: String,
    pub seconds: f64,
}

/// The record of one boot test: `evidence.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub schema: u32,
    pub case: TestCase,
    /// The build's version.
    pub version: String,
    /// The platform the artifact was booted as.
    pub platform: String,
    /// The files that were booted, relative to the build directory.
    pub artifact: String,
    /// How the VM presented the artifact (firmware, bus, NIC).
    pub hardware: String,
    /// What was done to the artifact before booting it.
    pub tampering: Option<String>,
    pub started_at: String,
    /// "kvm" or "tcg".
    pub accelerator: String,
    /// Why that accelerator was chosen.
    pub accelerator_reason: String,
    pub qemu_command: String,
    pub outcome: BootOutcome,
    /// Wall-clock seconds from qemu's start to its end.
    pub wall_seconds: f64,
    pub boot_time: Option<BootTime>,
    /// What the console showed, and when.
    pub milestones: Vec<Milestone>,
    /// Kernel lines from the console that report verity corruption.
    pub verity_errors: Vec<String>,
    /// Firmware, boot loader and initrd lines from the console that refused
    /// to start an image or to use its /usr (Secure Boot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_refusals: Vec<String>,
    /// Everything the guest reported, raw.
    pub guest: BTreeMap<String, String>,
    /// When this is the case's second boot: why the first was not judged
    /// (its emulated CPUs stalled), and where its console log is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier_attempt: Option<String>,
    pub checks: Vec<Check>,
    /// True when every check passed.
    pub passed: bool,
}

impl Evidence {
    /// The booted system's footprint as the guest reported it
    /// (`footprint.*` facts, written by guest-evidence.sh) with the boot's
    /// split; `None` when the test did not get that far.
    pub fn booted_footprint(&self) -> Option<BootedFootprint> {
        let number = |key: &str| self.guest.get(key)?.trim().parse::<u64>().ok();
        let boot = self.boot_time.as_ref()?;
        Some(BootedFootprint {
            memory_used_kib: number("footprint.memory_used_kib")?,
            processes: number("footprint.processes")?,
            kernel_seconds: boot.kernel,
            initrd_seconds: boot.initrd,
            userspace_seconds: boot.userspace,
            containers_running: number("footprint.containers_running"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(guest: &[(&str, &str)], boot_time: Option<BootTime>) -> Evidence {
        Evidence {
            schema: 1,
            case: TestCase::Platform,
            version: "1.0".into(),
            platform: "qemu".into(),
            artifact: String::new(),
            hardware: String::new(),
            tampering: None,
            started_at: "2026-12-03T00:00:00Z".into(),
            accelerator: "tcg".into(),
            accelerator_reason: String::new(),
            qemu_command: String::new(),
            outcome: BootOutcome::PoweredOff,
            wall_seconds: 90.0,
            boot_time,
            milestones: vec![],
            verity_errors: vec![],
            boot_refusals: vec![],
            guest: guest
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            earlier_attempt: None,
            checks: vec![],
            passed: true,
        }
    }

    fn boot_time() -> BootTime {
        BootTime {
            firmware: Some(7.5),
            loader: Some(2.0),
            kernel: 7.0,
            initrd: Some(22.0),
            userspace: 41.0,
            total: 79.5,
            multi_user_after_userspace: Some(40.9),
            systemd_analyze: String::new(),
            early_boot_source: None,
        }
    }

    #[test]
    fn the_booted_footprint_joins_the_guest_facts_and_the_boot_split() {
        let facts = [
            ("footprint.memory_used_kib", "330848"),
            ("footprint.processes", "20"),
        ];
        let footprint = evidence(&facts, Some(boot_time()))
            .booted_footprint()
            .unwrap();
        assert_eq!(footprint.memory_used_kib, 330848);
        assert_eq!(footprint.processes, 20);
        assert_eq!(footprint.initrd_seconds, Some(22.0));
        assert_eq!(footprint.userspace_seconds, 41.0);
        // Evidence from before the guest counted containers states none.
        assert_eq!(footprint.containers_running, None);
        let provisioned = [
            ("footprint.memory_used_kib", "330848"),
            ("footprint.processes", "22"),
            ("footprint.containers_running", "1"),
        ];
        let footprint = evidence(&provisioned, Some(boot_time()))
            .booted_footprint()
            .unwrap();
        assert_eq!(footprint.containers_running, Some(1));
    }

    #[test]
    fn a_test_that_measured_no_footprint_states_none() {
        assert!(evidence(&[], Some(boot_time()))
            .booted_footprint()
            .is_none());
        let facts = [
            ("footprint.memory_used_kib", "330848"),
            ("footprint.processes", "20"),
        ];
        assert!(evidence(&facts, None).booted_footprint().is_none());
        let garbled = [
            ("footprint.memory_used_kib", "lots"),
            ("footprint.processes", "20"),
        ];
        assert!(evidence(&garbled, Some(boot_time()))
            .booted_footprint()
            .is_none());
    }
}
