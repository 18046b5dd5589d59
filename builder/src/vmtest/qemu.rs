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

use crate::platform::{DiskBus, HypervisorCpuid, Nic, SmbiosSystem};
use crate::process::{terminate, Step};

/// UEFI firmware: the code (read-only) and a template of its variable
/// store (copied per VM, since the firmware writes to it).
#[derive(Clone, Debug)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
    /// The build of the same firmware that can enforce Secure Boot (its
    /// variable store protected by SMM), when installed.
    pub secure_boot_code: Option<PathBuf>,
}

/// Where Debian (ovmf) and Fedora (edk2-ovmf) put OVMF: its code, the
/// empty variable store, and the Secure Boot build of the code.
const FIRMWARE_CANDIDATES: &[(&str, &str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
        "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
        "/usr/share/OVMF/OVMF_CODE.secboot.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        "/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd",
    ),
];

impl Firmware {
    pub fn find() -> Result<Self> {
        for (code, vars, secure_boot_code) in FIRMWARE_CANDIDATES {
            if Path::new(code).is_file() && Path::new(vars).is_file() {
                return Ok(Self {
                    code: code.into(),
                    vars_template: vars.into(),
                    secure_boot_code: Some(PathBuf::from(secure_boot_code))
                        .filter(|path| path.is_file()),
                });
            }
        }
        bail!(
            "no UEFI firmware for qemu found (looked for {}); install Debian's ovmf package ({})",
            FIRMWARE_CANDIDATES
                .iter()
                .map(|(c, _, _)| *c)
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

/// What the VM boots from.
#[derive(Clone, Debug)]
pub enum BootSource {
    /// A disk image on the platform's bus.
    Disk {
        path: PathBuf,
        format: &'static str,
        bus: DiskBus,
    },
    /// The network: the firmware's PXE client (iPXE) fetches `bootfile`
    /// from qemu's TFTP server, serving `tftp_dir`.
    Network { tftp_dir: PathBuf, bootfile: String },
}

/// Which firmware runs.
#[derive(Clone, Debug)]
pub enum FirmwareSetup {
    /// OVMF, with this VM's own copy of the variable store. With
    /// `secure_boot`, `code` is the Secure Boot build and the machine has
    /// the SMM mode that build needs to protect its variables.
    Uefi {
        code: PathBuf,
        vars: PathBuf,
        secure_boot: bool,
    },
    /// qemu's default SeaBIOS (with iPXE option ROMs on its NICs).
    Bios,
}

/// One VM to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub boot: BootSource,
    pub firmware: FirmwareSetup,
    pub nic: Nic,
    /// Guest TCP connections to (address:port) are handed to a command run
    /// for each connection on the host.
    pub guest_forwards: Vec<(String, String)>,
    /// SMBIOS system manufacturer and product (what the platform's
    /// hypervisor would present).
    pub smbios_system: Option<SmbiosSystem>,
    /// Whether the guest sees the CPUID hypervisor bit; hidden, it
    /// identifies the hypervisor by its SMBIOS identity (as it does on
    /// VMware) instead of qemu's CPUID signature.
    pub hypervisor_cpuid: HypervisorCpuid,
    /// A socket for the qemu guest agent's virtio-serial port.
    pub guest_agent_socket: Option<PathBuf>,
    /// The user network's address range, when not qemu's 10.0.2.0/24 (a
    /// forwarded address must lie inside it).
    pub network: Option<String>,
    /// Raw disk with the test data (a tar archive), attached read-only.
    pub test_data: PathBuf,
    /// Let the guest reboot (an update test does); otherwise a reboot ends
    /// the VM.
    pub reboots: bool,
    /// Where the guest's evidence port is written.
    pub evidence_out: PathBuf,
    /// Where the serial console is written.
    pub console_out: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// SMBIOS type 11 strings (systemd credentials, stub options).
    pub smbios_strings: Vec<String>,
    /// Files handed to the guest through qemu's firmware configuration
    /// device (fw_cfg), by name (`opt/com.coreos/config`).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Host ports on loopback forwarded to guest ports (SSH).
    pub host_forwards: Vec<(u16, u16)>,
}

impl VmSpec {
    /// qemu's arguments for this VM under `accel`.
    pub fn arguments(&self, accel: Accel) -> Vec<OsString> {
        let mut args = Arguments::default();
        let hide = match self.hypervisor_cpuid {
            HypervisorCpuid::Visible => "",
            HypervisorCpuid::Hidden => ",-hypervisor",
        };
        match accel {
            Accel::Kvm => args.push(&["-accel", "kvm", "-cpu", &format!("host{hide}")]),
            // thread=multi: one host thread per guest CPU.
            Accel::Tcg => args.push(&["-accel", "tcg,thread=multi", "-cpu", &format!("max{hide}")]),
        }
        let secure_boot = matches!(
            self.firmware,
            FirmwareSetup::Uefi {
                secure_boot: true,
                ..
            }
        );
        let machine = if secure_boot { "q35,smm=on" } else { "q35" };
        args.push(&["-machine", machine, "-nodefaults", "-display", "none"]);
        if secure_boot {
            // Only code running in SMM may write the variable store, so the
            // guest cannot change the enrolled keys behind the firmware.
            args.push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        if !self.reboots {
            args.push(&["-no-reboot"]);
        }
        args.push(&[
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        if let FirmwareSetup::Uefi { code, vars, .. } = &self.firmware {
            args.pair("-drive", pflash_arg(code, true, false));
            args.pair("-drive", pflash_arg(vars, false, false));
        }
        match &self.boot {
            BootSource::Disk { path, format, bus } => {
                let mut drive =
                    OsString::from(format!("if=none,id=boot-disk,format={format},file="));
                drive.push(escape_commas(path));
                args.pair("-drive", drive);
                for device in disk_devices(*bus) {
                    args.pair("-device", device.into());
                }
            }
            BootSource::Network { .. } => args.push(&["-boot", "n"]),
        }

        // The guest finds these by serial: /dev/disk/by-id/virtio-SERIAL.
        read_only_virtio_disk(&mut args, "test-data", &self.test_data, "boxcar-testdata");

        // The evidence port, the guest agent's port, and the console.
        args.push(&["-device", "virtio-serial-pci"]);
        let mut chardev = OsString::from("file,id=evidence,path=");
        chardev.push(escape_commas(&self.evidence_out));
        args.pair("-chardev", chardev);
        args.push(&[
            "-device",
            "virtserialport,chardev=evidence,name=org.boxcar.evidence",
        ]);
        if let Some(socket) = &self.guest_agent_socket {
            let mut chardev = OsString::from("socket,id=qga,server=on,wait=off,path=");
            chardev.push(escape_commas(socket));
            args.pair("-chardev", chardev);
            args.push(&[
                "-device",
                "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            ]);
        }
        args.pair("-serial", file_arg(&self.console_out));

        // A NIC with DHCP but no way out: the image must work offline. Only
        // explicit forwards (and the PXE TFTP server) reach the host.
        let mut netdev = String::from("user,id=net0,restrict=on");
        if let Some(network) = &self.network {
            netdev.push_str(&format!(",net={network}"));
        }
        if let BootSource::Network { tftp_dir, bootfile } = &self.boot {
            netdev.push_str(&format!(
                ",tftp={},bootfile={}",
                tftp_dir.to_string_lossy().replace(',', ",,"),
                bootfile.replace(',', ",,")
            ));
        }
        for (host, guest) in &self.host_forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        for (address, command) in &self.guest_forwards {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{address}-cmd:{}",
                command.replace(',', ",,")
            ));
        }
        args.pair("-netdev", netdev.into());
        args.pair(
            "-device",
            format!("{},netdev=net0", nic_device(self.nic)).into(),
        );

        if let Some(system) = &self.smbios_system {
            args.pair(
                "-smbios",
                format!(
                    "type=1,manufacturer={},product={}",
                    system.manufacturer.replace(',', ",,"),
                    system.product.replace(',', ",,")
                )
                .into(),
            );
        }
        for (name, file) in &self.fw_cfg {
            let mut value = OsString::from(format!("name={name},file="));
            value.push(escape_commas(file));
            args.pair("-fw_cfg", value);
        }
        for value in &self.smbios_strings {
            args.pair(
                "-smbios",
                format!("type=11,value={}", value.replace(',', ",,")).into(),
            );
        }
        args.0
    }
}

#[derive(Default)]
struct Arguments(Vec<OsString>);

impl Arguments {
    fn push(&mut self, items: &[&str]) {
        self.0.extend(items.iter().map(OsString::from));
    }

    fn pair(&mut self, option: &str, value: OsString) {
        self.0.push(option.into());
        self.0.push(value);
    }
}

/// A raw file attached read-only as a virtio disk with a serial number.
fn read_only_virtio_disk(args: &mut Arguments, id: &str, file: &Path, serial: &str) {
    let mut drive = OsString::from(format!("if=none,id={id},format=raw,readonly=on,file="));
    drive.push(escape_commas(file));
    args.pair("-drive", drive);
    args.pair(
        "-device",
        format!("virtio-blk-pci,drive={id},serial={serial}").into(),
    );
}

/// The devices that put the boot disk on the platform's bus.
fn disk_devices(bus: DiskBus) -> Vec<&'static str> {
    match bus {
        DiskBus::Virtio => vec!["virtio-blk-pci,drive=boot-disk,bootindex=1"],
        DiskBus::Pvscsi => vec![
            "pvscsi,id=scsi0",
            "scsi-hd,drive=boot-disk,bus=scsi0.0,bootindex=1",
        ],
        DiskBus::Nvme => vec!["nvme,drive=boot-disk,serial=boxcar-boot,bootindex=1"],
        // q35's built-in AHCI controller.
        DiskBus::Sata => vec!["ide-hd,drive=boot-disk,bus=ide.0,bootindex=1"],
        DiskBus::None => vec![],
    }
}

fn nic_device(nic: Nic) -> &'static str {
    match nic {
        Nic::Virtio => "virtio-net-pci",
        Nic::Vmxnet3 => "vmxnet3",
        Nic::E1000e => "e1000e",
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
            boot: BootSource::Disk {
                path: "/b/disk,1.qcow2".into(),
                format: "qcow2",
                bus: DiskBus::Virtio,
            },
            firmware: FirmwareSetup::Uefi {
                code: "/fw/code.fd".into(),
                vars: "/w/vars.fd".into(),
                secure_boot: false,
            },
            nic: Nic::Virtio,
            guest_forwards: Vec::new(),
            smbios_system: None,
            hypervisor_cpuid: HypervisorCpuid::Visible,
            guest_agent_socket: None,
            network: None,
            test_data: "/w/testdata.tar".into(),
            reboots: false,
            evidence_out: "/w/evidence.out".into(),
            console_out: "/w/console.log".into(),
            memory_mib: 2048,
            cpus: 2,
            smbios_strings: vec!["io.systemd.stub.kernel-cmdline-extra=console=ttyS0,115200".into()],
            fw_cfg: Vec::new(),
            host_forwards: Vec::new(),
        }
    }

    fn joined(spec: &VmSpec, accel: Accel) -> String {
        spec.arguments(accel)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn secure_boot_firmware_gets_smm_and_a_protected_variable_store() {
        let plain = joined(&spec(), Accel::Tcg);
        assert!(plain.contains("-machine q35 "), "{plain}");
        assert!(!plain.contains("smm") && !plain.contains("cfi.pflash01"));
        let mut secure = spec();
        secure.firmware = FirmwareSetup::Uefi {
            code: "/fw/code.secboot.fd".into(),
            vars: "/w/vars.fd".into(),
            secure_boot: true,
        };
        let args = joined(&secure, Accel::Tcg);
        assert!(args.contains("-machine q35,smm=on "), "{args}");
        assert!(
            args.contains("-global driver=cfi.pflash01,property=secure,value=on"),
            "{args}"
        );
        assert!(args.contains("file=/fw/code.secboot.fd"), "{args}");
    }

    #[test]
    fn provisioning_hands_the_config_through_fw_cfg_and_forwards_ssh() {
        let mut provisioned = spec();
        provisioned.fw_cfg = vec![("opt/com.coreos/config".into(), "/w/config,1.ign".into())];
        provisioned.host_forwards = vec![(2222, 22)];
        let args = joined(&provisioned, Accel::Tcg);
        assert!(
            args.contains("-fw_cfg name=opt/com.coreos/config,file=/w/config,,1.ign"),
            "{args}"
        );
        assert!(args.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{args}");
    }

    #[test]
    fn tcg_and_kvm_differ_only_in_accelerator_and_cpu() {
        assert!(joined(&spec(), Accel::Tcg)
            .starts_with("-accel tcg,thread=multi -cpu max -machine q35"));
        assert!(joined(&spec(), Accel::Kvm).starts_with("-accel kvm -cpu host -machine q35"));
    }

    #[test]
    fn commas_in_paths_and_smbios_values_are_escaped() {
        let mut vmware = spec();
        vmware.smbios_system = Some(SmbiosSystem {
            manufacturer: "VMware, Inc.".into(),
            product: "VMware Virtual Platform".into(),
        });
        vmware.hypervisor_cpuid = HypervisorCpuid::Hidden;
        let args = joined(&vmware, Accel::Tcg);
        assert!(args.contains("-cpu max,-hypervisor"), "{args}");
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
        assert!(
            args.contains("type=1,manufacturer=VMware,, Inc.,product=VMware Virtual Platform"),
            "{args}"
        );
    }

    #[test]
    fn attaches_test_data_evidence_port_and_console() {
        let args = joined(&spec(), Accel::Tcg);
        assert!(args.contains("readonly=on,file=/w/testdata.tar -device virtio-blk-pci,drive=test-data,serial=boxcar-testdata"));
        assert!(args.contains("-chardev file,id=evidence,path=/w/evidence.out"));
        assert!(args.contains("name=org.boxcar.evidence"));
        assert!(args.contains("-serial file:/w/console.log"));
        assert!(
            args.contains("-netdev user,id=net0,restrict=on -device virtio-net-pci,netdev=net0")
        );
    }

    #[test]
    fn an_update_test_lets_the_guest_reboot() {
        let plain = joined(&spec(), Accel::Tcg);
        assert!(plain.contains("-no-reboot"));
        let mut update = spec();
        update.reboots = true;
        let args = joined(&update, Accel::Tcg);
        assert!(!args.contains("-no-reboot"));
    }

    #[test]
    fn each_platform_bus_and_nic() {
        let mut vmware = spec();
        vmware.boot = BootSource::Disk {
            path: "/w/d.vmdk".into(),
            format: "vmdk",
            bus: DiskBus::Pvscsi,
        };
        vmware.nic = Nic::Vmxnet3;
        let args = joined(&vmware, Accel::Tcg);
        assert!(args.contains(
            "-device pvscsi,id=scsi0 -device scsi-hd,drive=boot-disk,bus=scsi0.0,bootindex=1"
        ));
        assert!(args.contains("-device vmxnet3,netdev=net0"));
        let mut aws = spec();
        aws.boot = BootSource::Disk {
            path: "/w/d.raw".into(),
            format: "raw",
            bus: DiskBus::Nvme,
        };
        aws.guest_forwards = vec![(
            "169.254.169.254:80".into(),
            "/bin/boxcar internal http-serve".into(),
        )];
        aws.network = Some("169.254.0.0/16".into());
        let args = joined(&aws, Accel::Tcg);
        assert!(args.contains("-device nvme,drive=boot-disk,serial=boxcar-boot,bootindex=1"));
        assert!(
            args.contains("guestfwd=tcp:169.254.169.254:80-cmd:/bin/boxcar internal http-serve")
        );
        assert!(
            args.contains("user,id=net0,restrict=on,net=169.254.0.0/16,guestfwd="),
            "{args}"
        );
        let mut metal = spec();
        metal.boot = BootSource::Disk {
            path: "/w/d.raw".into(),
            format: "raw",
            bus: DiskBus::Sata,
        };
        metal.nic = Nic::E1000e;
        let args = joined(&metal, Accel::Tcg);
        assert!(args.contains("-device ide-hd,drive=boot-disk,bus=ide.0,bootindex=1"));
        assert!(args.contains("-device e1000e,netdev=net0"));
    }

    #[test]
    fn network_boot_uses_bios_tftp_and_no_disk() {
        let mut pxe = spec();
        pxe.boot = BootSource::Network {
            tftp_dir: "/w/tftp".into(),
            bootfile: "boot.ipxe".into(),
        };
        pxe.firmware = FirmwareSetup::Bios;
        let args = joined(&pxe, Accel::Tcg);
        assert!(
            !args.contains("pflash") && !args.contains("boot-disk"),
            "{args}"
        );
        assert!(args.contains("-boot n"));
        assert!(args.contains("user,id=net0,restrict=on,tftp=/w/tftp,bootfile=boot.ipxe"));
    }
}
