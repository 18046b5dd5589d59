//! Every file and directory the agent reads or writes, in one place. Tests
//! (and `--root`) move them all under another directory.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Paths {
    root: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self::under(Path::new("/"))
    }
}

impl Paths {
    /// The paths of a system whose root is `root`.
    pub fn under(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The image's defaults.
    pub fn vendor_config(&self) -> PathBuf {
        self.at("/usr/lib/boxcar/update.toml")
    }

    /// The host's settings, over the defaults.
    pub fn host_config(&self) -> PathBuf {
        self.at("/etc/boxcar/update.toml")
    }

    /// The store keys the image was built to trust (`*.pub`).
    pub fn pinned_keys(&self) -> PathBuf {
        self.at("/usr/lib/boxcar/update-keys")
    }

    /// Keys the host adds (`*.pub`), e.g. through provisioning.
    pub fn host_keys(&self) -> PathBuf {
        self.at("/etc/boxcar/update-keys")
    }

    /// The operator's own health checks (executables).
    pub fn health_checks(&self) -> [PathBuf; 2] {
        [
            self.at("/usr/lib/boxcar/health.d"),
            self.at("/etc/boxcar/health.d"),
        ]
    }

    /// What the agent keeps between runs.
    pub fn state_dir(&self) -> PathBuf {
        self.at("/var/lib/boxcar-update")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// The highest channel and keyring serials accepted.
    pub fn serials_file(&self) -> PathBuf {
        self.state_dir().join("serials.json")
    }

    /// Compressed downloads, kept across a failure that may pass so the
    /// next check resumes them.
    pub fn downloads(&self) -> PathBuf {
        self.state_dir().join("downloads")
    }

    /// The verified, decompressed files systemd-sysupdate installs from
    /// (its transfers' source directory).
    pub fn staging(&self) -> PathBuf {
        self.at("/var/lib/boxcar/updates")
    }

    /// Written once an update waits for a reboot (kured and friends watch it).
    pub fn reboot_required(&self) -> PathBuf {
        self.at("/run/reboot-required")
    }

    /// systemd-update-done's stamps: while they are as new as /usr, the
    /// units with `ConditionNeedsUpdate=` (ldconfig, sysusers, the journal
    /// catalog) skip their work.
    pub fn update_done_stamps(&self) -> [PathBuf; 2] {
        [self.at("/etc/.updated"), self.at("/var/.updated")]
    }

    /// The image's own systemd-sysupdate (systemd keeps it off PATH).
    /// Under `--root` it is the root's: a test host's fake, never the
    /// machine's own, which would write the machine's disks.
    pub fn sysupdate(&self) -> PathBuf {
        self.at("/usr/lib/systemd/systemd-sysupdate")
    }

    pub fn os_release(&self) -> PathBuf {
        self.at("/usr/lib/os-release")
    }

    pub fn machine_id(&self) -> PathBuf {
        self.at("/etc/machine-id")
    }

    /// The EFI variable systemd-boot sets on a boot whose entry still has
    /// tries left (a trial of a new version).
    pub fn boot_count_variable(&self) -> PathBuf {
        self.at(
            "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f",
        )
    }

    /// The UEFI global variable that says whether the firmware enforces
    /// Secure Boot (four attribute bytes, then 1 or 0).
    pub fn secure_boot_variable(&self) -> PathBuf {
        self.at("/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c")
    }
}
