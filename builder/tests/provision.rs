//! `boxcar provision` through the real binary, on small disk images made
//! here with the stock tools: a config is checked with ignition-validate
//! before anything is touched, only a disk with Boxcar's partitions is ever
//! written, the config lands in ROOT where the first boot looks for it, and
//! a disk that has booted already is refused.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use common::*;
use predicates::prelude::*;

const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const USR: &str = "8484680C-9521-48C6-9C11-B0720656F69E";
const USR_VERITY: &str = "77FF5F63-E7B6-4633-ACF4-1565B864C0E6";
const ROOT: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

fn run(program: &str, args: &[&str], input: Option<&str>) -> String {
    let mut command = Process::new(program);
    command.args(args);
    if input.is_some() {
        command.stdin(std::process::Stdio::piped());
    }
    command.stdout(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(text) = input {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{program} {args:?} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A 64 MiB GPT disk image with the given partitions ("type,label" each,
/// the last taking the rest), and an ext4 file system in the last one.
fn disk(dir: &Path, partitions: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("disk.img");
    run("truncate", &["-s", "64M", path.to_str().unwrap()], None);
    let mut script = String::from("label: gpt\n");
    for (index, (kind, label)) in partitions.iter().enumerate() {
        let size = if index + 1 == partitions.len() {
            ""
        } else {
            "size=4MiB, "
        };
        script.push_str(&format!("{size}type={kind}, name=\"{label}\"\n"));
    }
    run(
        "sfdisk",
        &["--quiet", path.to_str().unwrap()],
        Some(&script),
    );
    let json: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["--json", path.to_str().unwrap()], None)).unwrap();
    let last = json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let (start, size) = (
        last["start"].as_u64().unwrap() * 512,
        last["size"].as_u64().unwrap() * 512,
    );
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            &format!("offset={start}"),
            path.to_str().unwrap(),
            &format!("{}k", size / 1024),
        ],
        None,
    );
    path
}

fn boxcar_disk(dir: &Path) -> PathBuf {
    disk(
        dir,
        &[
            (ESP, "esp"),
            (USR, "boxcar_1.0.0"),
            (USR_VERITY, "boxcar_1.0.0_verity"),
            (USR, "_empty"),
            (USR_VERITY, "_empty"),
            (ROOT, "root-x86-64"),
        ],
    )
}

fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.ign");
    fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = r#"{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "/etc/hello", "contents": {"source": "data:,hi"}}]}}"#;

fn provision(disk: &Path, config: &Path) -> assert_cmd::Command {
    let mut command = boxcar();
    command
        .args(["provision", "--disk"])
        .arg(disk)
        .arg("--config")
        .arg(config);
    command
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").unwrap().uid() == 0
}

#[test]
fn a_config_ignition_refuses_is_refused_before_the_disk_is_touched() {
    let temp = tempfile::tempdir().unwrap();
    let disk = boxcar_disk(temp.path());
    let before = fs::read(&disk).unwrap();
    for (bad, why) in [
        ("{\"ignition\": ", "not JSON"),
        (r#"{"ignition": {"version": "3.4.0"}}"#, "a spec too new"),
    ] {
        provision(&disk, &config(temp.path(), bad))
            .assert()
            .code(1)
            .stderr(predicate::str::contains(
                "is not a config this image's Ignition",
            ));
        assert!(
            fs::read(&disk).unwrap() == before,
            "{why}: the disk changed"
        );
    }
}

#[test]
fn a_disk_that_is_not_boxcar_is_never_written() {
    let temp = tempfile::tempdir().unwrap();
    let disk = disk(temp.path(), &[(ESP, "esp"), (LINUX, "data")]);
    let before = fs::read(&disk).unwrap();
    provision(&disk, &config(temp.path(), GOOD))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "is not a Boxcar disk; nothing was written",
        ));
    assert!(fs::read(&disk).unwrap() == before, "the disk changed");
}

#[test]
fn the_config_lands_in_root_once_and_never_on_a_disk_that_has_booted() {
    if !is_root() {
        eprintln!("skipping: writing into ROOT attaches a loop device, which needs root");
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let disk = boxcar_disk(temp.path());
    let config = config(temp.path(), GOOD);
    provision(&disk, &config)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "/var/lib/boxcar/provision/config.ign on partition 6",
        ));
    // Read back with the stock tool, through the partition's offset.
    let loop_device = run(
        "losetup",
        &[
            "--find",
            "--show",
            "--read-only",
            "--offset",
            &root_offset(&disk),
            disk.to_str().unwrap(),
        ],
        None,
    );
    let loop_device = loop_device.trim();
    let stat = run(
        "debugfs",
        &[
            "-R",
            "stat /var/lib/boxcar/provision/config.ign",
            loop_device,
        ],
        None,
    );
    let content = run(
        "debugfs",
        &[
            "-R",
            "cat /var/lib/boxcar/provision/config.ign",
            loop_device,
        ],
        None,
    );
    run("losetup", &["--detach", loop_device], None);
    assert_eq!(content, GOOD);
    assert!(stat.contains("Mode:  0600"), "{stat}");
    // Provisioning again replaces the config; once the machine has booted
    // (it leaves a stamp), nothing is written.
    provision(&disk, &config).assert().success();
    let loop_device = run(
        "losetup",
        &[
            "--find",
            "--show",
            "--offset",
            &root_offset(&disk),
            disk.to_str().unwrap(),
        ],
        None,
    );
    let loop_device = loop_device.trim();
    let script = temp.path().join("stamp");
    fs::write(&script, "write /dev/null /var/lib/boxcar/provisioned\n").unwrap();
    run(
        "debugfs",
        &["-w", "-f", script.to_str().unwrap(), loop_device],
        None,
    );
    run("losetup", &["--detach", loop_device], None);
    provision(&disk, &config)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("has booted already"));
}

fn root_offset(disk: &Path) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["--json", disk.to_str().unwrap()], None)).unwrap();
    let last = json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    (last["start"].as_u64().unwrap() * 512).to_string()
}
