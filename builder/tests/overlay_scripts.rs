//! Scripts the image ships in overlays/base, run here on the host. What
//! they read from a device comes from a stand-in for the one tool that
//! talks to the hardware, so each case can say exactly what the device
//! holds; the boot tests run the same scripts against qemu's devices.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn overlay(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../overlays/base")
        .join(path)
}

/// A `nvme` on PATH whose `id-ctrl --raw-binary` prints 4096 bytes of
/// Identify Controller data with `vendor_name` at EC2's offset (3072).
fn fake_nvme(dir: &Path, vendor_name: &[u8]) {
    let mut data = vec![0u8; 4096];
    data[24..50].copy_from_slice(b"Amazon Elastic Block Store");
    data[3072..3072 + vendor_name.len()].copy_from_slice(vendor_name);
    fs::write(dir.join("identify.bin"), data).unwrap();
    let script = format!(
        "#!/bin/sh\n\
         [ \"$1 $2\" = \"id-ctrl --raw-binary\" ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\n\
         cat {}\n",
        dir.join("identify.bin").display()
    );
    // `install` writes it, so this process never holds it open for
    // writing: a child another test thread forks in that moment would keep
    // the descriptor until its exec, and running it would fail with "Text
    // file busy".
    let mut install = Command::new("install")
        .args(["-m", "0755", "/dev/stdin"])
        .arg(dir.join("nvme"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    install
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(install.wait().unwrap().success());
}

fn ebs_device_name(vendor_name: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    fake_nvme(dir.path(), vendor_name);
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    Command::new(overlay("usr/lib/udev/boxcar-ebs-device-name"))
        .arg("/dev/nvme1n1")
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn an_ebs_volume_is_named_as_it_was_attached() {
    for (vendor_name, expected) in [
        (&b"sdf                             "[..], "sdf\n"),
        (&b"/dev/xvdb"[..], "xvdb\n"),
        (&b" sdg\0\0\0"[..], "sdg\n"),
    ] {
        let output = ebs_device_name(vendor_name);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    }
}

#[test]
fn no_name_or_a_name_that_is_not_plain_links_nothing() {
    for vendor_name in [
        &b""[..],
        &b"   "[..],
        &b"../../etc/passwd"[..],
        &b"/dev/disk/by-id/x"[..],
        &b"SDF"[..],
        &b"sd f"[..],
        &b"sd\0f"[..],
    ] {
        let output = ebs_device_name(vendor_name);
        assert_eq!(output.status.code(), Some(1), "{vendor_name:?}: {output:?}");
        assert!(output.stdout.is_empty(), "{vendor_name:?}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("no EBS device name"),
            "{output:?}"
        );
    }
}

#[test]
fn the_ebs_rules_run_the_helper_only_for_ebs_volumes() {
    let rules =
        fs::read_to_string(overlay("usr/lib/udev/rules.d/70-boxcar-ebs-nvme.rules")).unwrap();
    // One rule per logical line (a backslash at a line's end continues it).
    let joined = rules.replace("\\\n", " ");
    let helper_runs: Vec<&str> = joined
        .lines()
        .filter(|rule| !rule.starts_with('#') && rule.contains("boxcar-ebs-device-name"))
        .collect();
    assert_eq!(helper_runs.len(), 2, "{rules}");
    assert!(helper_runs
        .iter()
        .all(|rule| rule.contains("ATTRS{model}==\"Amazon Elastic Block Store\"")));
    let mode = fs::metadata(overlay("usr/lib/udev/boxcar-ebs-device-name"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "udev runs it directly");
}
