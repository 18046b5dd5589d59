//! `evidence.json`: the record of one boot test, which `boxcar test`
//! writes into `BUILD/evidence/<case>/` (with `summary.txt` and the
//! console log beside it) and `boxcar publish` reads, checks and ships
//! with the release. How the facts in it are judged is the harness's
//! business (`vmtest::evidence`); this is only their shape.

use std::collections::BTreeMap;

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
}

impl TestCase {
    pub fn name(self) -> &'static str {
        match self {
            TestCase::Platform => "platform",
            TestCase::TamperUsr => "tamper-usr",
            TestCase::Update => "update",
            TestCase::UpdateFallback => "update-fallback",
            TestCase::BadConfig => "bad-config",
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
