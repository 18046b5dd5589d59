//! The qemu side of a boot test: firmware, accelerator choice and the
//! command line of the VM.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::process::{terminate, Step};

/// UEFI firmware: the code (read-only) and a template of its variable
/// store (copied per VM, since the firmware writes to it).
#[derive(Clone, Debug)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

/// Where Debian (ovmf) and Fedora (edk2-ovmf) put OVMF.
const FIRMWARE_CANDIDATES: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
];

impl Firmware {
    pub fn find() -> Result<Self> {
        for (code, vars) in FIRMWARE_CANDIDATES {
            if Path::new(code).is_file() && Path::new(vars).is_file() {
                return Ok(Self {
                    code: code.into(),
                    vars_template: vars.into(),
                });
            }
        }
        bail!(
            "no UEFI firmware for qemu found (looked for {}); install Debian's ovmf package ({})",
            FIRMWARE_CANDIDATES
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", "),
            crate::hosttools::SETUP_HINT
        )
    }
}

/// Which accelerator the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelRequest {
    /// KVM if it really runs a VM here, else software emulation.
    Auto,
    /// KVM or fail.
    Kvm,
    /// Software emulation (TCG), even where KVM works.
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The chosen accelerator and why.
#[derive(Clone, Debug)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// How long the KVM probe waits for the firmware to print anything.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Picks the accelerator. `/dev/kvm` existing is not enough: on some hosts
/// (nested, paravirtual KVM) it opens but cannot run firmware. So `auto`
/// starts the real firmware under KVM for a moment and uses KVM only if it
/// gets as far as its boot manager.
pub fn choose_accel(
    request: AccelRequest,
    qemu: &Path,
    firmware: &Firmware,
    scratch: &Path,
) -> Result<AccelChoice> {
    match request {
        AccelRequest::Tcg => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: "requested with --accel tcg".to_owned(),
        }),
        AccelRequest::Kvm => match probe_kvm(qemu, firmware, scratch) {
            Ok(()) => Ok(AccelChoice {
                accel: Accel::Kvm,
                reason: "requested with --accel kvm; the probe VM ran".to_owned(),
            }),
            Err(why) => bail!("--accel kvm was requested but KVM cannot run a VM here: {why}"),
        },
        AccelRequest::Auto => Ok(match probe_kvm(qemu, firmware, scratch) {
            Ok(()) => AccelChoice {
                accel: Accel::Kvm,
                reason: "KVM ran a probe VM to the firmware's boot manager".to_owned(),
            },
            Err(why) => AccelChoice {
                accel: Accel::Tcg,
                reason: format!("KVM unusable ({why}); software emulation"),
            },
        }),
    }
}

/// Boots the firmware alone under KVM; Ok when it reaches its boot manager.
fn probe_kvm(qemu: &Path, firmware: &Firmware, scratch: &Path) -> Result<(), String> {
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm is missing or not accessible".to_owned());
    }
    let serial = scratch.join("kvm-probe.serial");
    let _ = fs::remove_file(&serial);
    let (mut child, _) = Step::new("probing KVM", qemu)
        .args([
            "-accel", "kvm", "-machine", "q35", "-cpu", "host", "-m", "256",
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(file_arg(&serial))
        .arg("-drive")
        .arg(pflash_arg(&firmware.code, true, false))
        .arg("-drive")
        .arg(pflash_arg(&firmware.vars_template, false, true))
        .spawn_with(Stdio::null(), Stdio::piped())
        .map_err(|e| e.to_string())?;
    // qemu reports a KVM failure on stderr at once; watch for it there.
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = child.stderr.take().map(|mut pipe| {
        let stderr = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                stderr.lock().map(|mut s| s.push_str(&text)).ok();
            }
        })
    });
    let stderr_text = || stderr.lock().map(|s| s.clone()).unwrap_or_default();
    let started = Instant::now();
    let verdict = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "qemu exited with {status}: {}",
                stderr_text().lines().next().unwrap_or("no message")
            ));
        }
        if stderr_text().contains("KVM internal error") {
            break Err("KVM internal error while running the firmware".to_owned());
        }
        let printed = fs::read_to_string(&serial).unwrap_or_default();
        if printed.contains("BdsDxe") {
            break Ok(());
        }
        if started.elapsed() > KVM_PROBE_TIMEOUT {
            break Err(format!(
                "the firmware printed nothing in {}s",
                KVM_PROBE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    terminate(&child);
    let _ = child.kill();
    let _ = child.wait();
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    let _ = fs::remove_file(&serial);
    verdict
}

/// How the boot disk is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskBus {
    VirtioBlk,
}

/// One VM to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub disk: PathBuf,
    pub disk_format: &'static str,
    pub disk_bus: DiskBus,
    pub firmware_code: PathBuf,
    /// This VM's own copy of the firmware variables.
    pub firmware_vars: PathBuf,
    /// Raw disk with the test data (a tar archive), attached read-only.
    pub test_data: PathBuf,
    /// Where the guest's evidence port is written.
    pub evidence_out: PathBuf,
    /// Where the serial console is written.
    pub console_out: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// SMBIOS type 11 strings (systemd credentials, stub options).
    pub smbios_strings: Vec<String>,
}

impl VmSpec {
    /// qemu's arguments for this VM under `accel`.
    pub fn arguments(&self, accel: Accel) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        match accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            // thread=multi: one host thread per guest CPU.
            Accel::Tcg => push(&["-accel", "tcg,thread=multi", "-cpu", "max"]),
        }
        push(&[
            "-machine",
            "q35",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ]);
        let memory = self.memory_mib.to_string();
        let cpus = self.cpus.to_string();
        push(&["-m", &memory, "-smp", &cpus]);
        args.push("-drive".into());
        args.push(pflash_arg(&self.firmware_code, true, false));
        args.push("-drive".into());
        args.push(pflash_arg(&self.firmware_vars, false, false));

        let mut disk = OsString::from("if=none,id=boot-disk,format=");
        disk.push(self.disk_format);
        disk.push(",file=");
        disk.push(escape_commas(&self.disk));
        args.push("-drive".into());
        args.push(disk);
        match self.disk_bus {
            DiskBus::VirtioBlk => {
                args.push("-device".into());
                args.push("virtio-blk-pci,drive=boot-disk,bootindex=1".into());
            }
        }

        let mut test_data = OsString::from("if=none,id=test-data,format=raw,readonly=on,file=");
        test_data.push(escape_commas(&self.test_data));
        args.push("-drive".into());
        args.push(test_data);
        args.push("-device".into());
        args.push("virtio-blk-pci,drive=test-data,serial=boxcar-testdata".into());

        // The evidence port, and the console.
        args.push("-device".into());
        args.push("virtio-serial-pci".into());
        let mut chardev = OsString::from("file,id=evidence,path=");
        chardev.push(escape_commas(&self.evidence_out));
        args.push("-chardev".into());
        args.push(chardev);
        args.push("-device".into());
        args.push("virtserialport,chardev=evidence,name=org.boxcar.evidence".into());
        args.push("-serial".into());
        args.push(file_arg(&self.console_out));

        // A NIC with DHCP but no way out: the image must work offline.
        args.push("-netdev".into());
        args.push("user,id=net0,restrict=on".into());
        args.push("-device".into());
        args.push("virtio-net-pci,netdev=net0".into());

        for value in &self.smbios_strings {
            args.push("-smbios".into());
            args.push(format!("type=11,value={}", value.replace(',', ",,")).into());
        }
        args
    }
}

fn pflash_arg(path: &Path, read_only: bool, snapshot: bool) -> OsString {
    let mut arg = OsString::from("if=pflash,format=raw");
    if read_only {
        arg.push(",readonly=on");
    }
    if snapshot {
        arg.push(",snapshot=on");
    }
    arg.push(",file=");
    arg.push(escape_commas(path));
    arg
}

fn file_arg(path: &Path) -> OsString {
    let mut arg = OsString::from("file:");
    arg.push(path);
    arg
}

/// qemu option values separate fields with commas; a literal comma is ",,".
fn escape_commas(path: &Path) -> OsString {
    OsString::from(path.to_string_lossy().replace(',', ",,"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            disk: "/b/disk,1.qcow2".into(),
            disk_format: "qcow2",
            disk_bus: DiskBus::VirtioBlk,
            firmware_code: "/fw/code.fd".into(),
            firmware_vars: "/w/vars.fd".into(),
            test_data: "/w/testdata.tar".into(),
            evidence_out: "/w/evidence.out".into(),
            console_out: "/w/console.log".into(),
            memory_mib: 2048,
            cpus: 2,
            smbios_strings: vec!["io.systemd.stub.kernel-cmdline-extra=console=ttyS0,115200".into()],
        }
    }

    fn joined(accel: Accel) -> String {
        spec()
            .arguments(accel)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_and_kvm_differ_only_in_accelerator_and_cpu() {
        assert!(joined(Accel::Tcg).starts_with("-accel tcg,thread=multi -cpu max -machine q35"));
        assert!(joined(Accel::Kvm).starts_with("-accel kvm -cpu host -machine q35"));
    }

    #[test]
    fn commas_in_paths_and_smbios_values_are_escaped() {
        let args = joined(Accel::Tcg);
        assert!(
            args.contains("format=qcow2,file=/b/disk,,1.qcow2"),
            "{args}"
        );
        assert!(
            args.contains(
                "type=11,value=io.systemd.stub.kernel-cmdline-extra=console=ttyS0,,115200"
            ),
            "{args}"
        );
    }

    #[test]
    fn attaches_test_data_evidence_port_and_console() {
        let args = joined(Accel::Tcg);
        assert!(args.contains("readonly=on,file=/w/testdata.tar -device virtio-blk-pci,drive=test-data,serial=boxcar-testdata"));
        assert!(args.contains("-chardev file,id=evidence,path=/w/evidence.out"));
        assert!(args.contains("name=org.boxcar.evidence"));
        assert!(args.contains("-serial file:/w/console.log"));
        assert!(args.contains("user,id=net0,restrict=on"));
    }
}
