//! End to end: a real `boxcar build` of the default recipe, booted for real
//! in qemu, and the ways a build must fail without leaving anything behind.
//!
//! Run with `make test` (or `cargo test -p boxcar-e2e -- --test-threads=1`),
//! as root, with the Debian mirror reachable.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use boxcar_e2e::*;

/// The build directory holds what build.json says, and stock tools agree
/// with it: sfdisk on the partitions, sha256sum on the digests,
/// veritysetup on /usr and its root hash.
#[test]
fn build_produces_a_verity_protected_ab_image_that_stock_tools_confirm() {
    if !can_run("build_produces_a_verity_protected_ab_image_that_stock_tools_confirm") {
        return;
    }
    let dir = shared_build();
    let info = read_json(&dir.join("build.json"));
    assert_eq!(info["version"], "0.0.0-e2e");
    assert_eq!(info["channel"], "alpha");
    assert_eq!(info["usr"]["filesystem"], "erofs");
    let root_hash = info["usr"]["root_hash"].as_str().unwrap();
    assert_eq!(root_hash.len(), 64);
    assert!(info["kernel"]["cmdline"]
        .as_str()
        .unwrap()
        .contains(&format!("usrhash={root_hash}")));

    let roles: Vec<&str> = info["disk"]["partition_table"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "esp",
            "usr-a",
            "usr-a-verity",
            "usr-b",
            "usr-b-verity",
            "root"
        ]
    );
    let sfdisk: serde_json::Value = serde_json::from_str(&host_tool(
        "sfdisk",
        &["--json", dir.join("disk.raw").to_str().unwrap()],
    ))
    .unwrap();
    let labels: Vec<&str> = sfdisk["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels[1], "boxcar_0.0.0-e2e",
        "USR-A carries the version in its label"
    );
    assert_eq!(labels[3], "_empty", "USR-B is an empty slot");
    assert_eq!(labels[4], "_empty");

    let names: Vec<&str> = info["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for expected in [
        "disk.raw",
        "usr.raw",
        "usr-verity.raw",
        "uki.efi",
        "vmlinuz",
        "initrd",
        "manifest.json",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from build.json files"
        );
        assert!(
            dir.join(expected).is_file(),
            "{expected} missing from the build directory"
        );
    }
    // sha256sum --check over the smaller files (the disk image is covered
    // by the boot test, /usr by veritysetup below).
    let sums: String = info["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["size"].as_u64().unwrap() < 512 * 1024 * 1024)
        .map(|f| {
            format!(
                "{}  {}\n",
                f["sha256"].as_str().unwrap(),
                f["name"].as_str().unwrap()
            )
        })
        .collect();
    let sums_file = dir.join("SHA256SUMS.e2e");
    std::fs::write(&sums_file, sums).unwrap();
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS.e2e"])
        .current_dir(dir)
        .output()
        .unwrap();
    std::fs::remove_file(&sums_file).unwrap();
    assert!(
        check.status.success(),
        "sha256sum --check: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    host_tool(
        "veritysetup",
        &[
            "verify",
            dir.join("usr.raw").to_str().unwrap(),
            dir.join("usr-verity.raw").to_str().unwrap(),
            root_hash,
        ],
    );

    let packages: Vec<&str> = info["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for needed in [
        "systemd",
        "containerd",
        "docker.io",
        "docker-cli",
        "linux-image-amd64",
    ] {
        assert!(
            packages.iter().any(|p| p.starts_with(needed)),
            "{needed} not in the package manifest"
        );
    }
    let phases: Vec<&str> = info["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["compose", "collect", "inspect", "digest", "total"]);
    assert!(dir.join("build.log").metadata().unwrap().len() > 0);
}

/// The built image boots, runs /usr from dm-verity with the build's root
/// hash, refuses writes to /usr, grows ROOT, and runs a container.
#[test]
fn built_image_boots_and_proves_itself() {
    if !can_run("built_image_boots_and_proves_itself") {
        return;
    }
    let dir = shared_build();
    let output = boxcar(&["test", "--build", dir.to_str().unwrap(), "--json"]);
    let evidence: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("test --json prints JSON");
    let failed: Vec<&serde_json::Value> = evidence["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] != true)
        .collect();
    assert!(
        output.status.success() && failed.is_empty(),
        "failed checks: {failed:#?}"
    );
    let info = read_json(&dir.join("build.json"));
    assert_eq!(evidence["outcome"], "powered-off");
    assert!(evidence["guest"]["usr_dm_table"]
        .as_str()
        .unwrap()
        .contains(info["usr"]["root_hash"].as_str().unwrap()));
    assert!(evidence["guest"]["usr_write"]
        .as_str()
        .unwrap()
        .contains("Read-only file system"));
    assert_eq!(evidence["guest"]["container_output"], "boxcar-container-ok");
    assert!(evidence["boot_time"]["userspace"].as_f64().unwrap() > 0.0);
    let on_disk = read_json(&dir.join("evidence/boot/evidence.json"));
    assert_eq!(on_disk, evidence);
    let summary = std::fs::read_to_string(dir.join("evidence/boot/summary.txt")).unwrap();
    assert!(summary.contains("PASSED"), "{summary}");
    assert!(
        dir.join("evidence/boot/console.log")
            .metadata()
            .unwrap()
            .len()
            > 0
    );
}

/// One flipped byte in USR-A: dm-verity refuses the data and the system
/// does not come up on it.
#[test]
fn tampered_usr_is_refused_at_boot() {
    if !can_run("tampered_usr_is_refused_at_boot") {
        return;
    }
    let dir = shared_build();
    let disk_digest_before = host_tool("sha256sum", &[dir.join("usr.raw").to_str().unwrap()]);
    let output = boxcar(&[
        "test",
        "--build",
        dir.to_str().unwrap(),
        "--tamper-usr",
        "--json",
    ]);
    let evidence: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("test --json prints JSON");
    assert!(
        output.status.success(),
        "tamper test did not pass: {evidence:#}"
    );
    assert_eq!(evidence["case"], "tamper-usr");
    assert!(evidence["tampering"].as_str().unwrap().contains("USR-A"));
    assert_ne!(
        evidence["outcome"], "powered-off",
        "the tampered system must not complete its boot"
    );
    let errors = evidence["verity_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("is corrupted")),
        "no verity corruption error: {errors:?}"
    );
    assert_ne!(evidence["guest"]["multi_user"], "active");
    // The build itself was not touched: the tampering was done on a copy.
    assert_eq!(
        host_tool("sha256sum", &[dir.join("usr.raw").to_str().unwrap()]),
        disk_digest_before
    );
    assert!(!dir.join("evidence/.tamper-usr.partial").exists());
}

/// A copy of the checkout whose post-installation script fails: mkosi
/// fails late, after the image tree exists, and the build must leave no
/// build directory. (A broken package list would fail too, but it would
/// also make mkosi drop the incremental cache every other build reuses.)
fn broken_project() -> tempfile::TempDir {
    let temp = tempfile::tempdir_in(scratch_dir()).unwrap();
    for dir in ["recipes", "overlays", "channels"] {
        let status = Command::new("cp")
            .arg("-r")
            .arg(project_root().join(dir))
            .arg(temp.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::fs::write(
        temp.path().join("recipes/mkosi.postinst"),
        "#!/bin/sh\necho 'boxcar-e2e: failing on purpose' >&2\nexit 3\n",
    )
    .unwrap();
    temp
}

#[test]
fn failed_build_leaves_no_build_directory_and_keeps_its_log() {
    if !can_run("failed_build_leaves_no_build_directory_and_keeps_its_log") {
        return;
    }
    std::fs::create_dir_all(scratch_dir()).unwrap();
    let project = broken_project();
    let out = project.path().join("out");
    let output = boxcar_captured(&[
        "build",
        "--project",
        project.path().to_str().unwrap(),
        "--version",
        "0.0.1-broken",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("build phase `compose` failed"), "{stderr}");
    assert!(
        stderr.contains("boxcar-e2e: failing on purpose"),
        "the error shows the log's tail: {stderr}"
    );
    assert!(
        !out.join("0.0.1-broken").exists(),
        "a failed build left its directory"
    );
    assert!(
        !out.join(".0.0.1-broken.partial").exists(),
        "a failed build left its staging directory"
    );
    let log = std::fs::read_to_string(out.join("0.0.1-broken.failed.log")).unwrap();
    assert!(log.contains("boxcar-e2e: failing on purpose"));
}

#[test]
fn interrupted_build_leaves_no_build_directory() {
    if !can_run("interrupted_build_leaves_no_build_directory") {
        return;
    }
    std::fs::create_dir_all(scratch_dir()).unwrap();
    let temp = tempfile::tempdir_in(scratch_dir()).unwrap();
    let out = temp.path().join("out");
    let child = Command::new(boxcar_bin())
        .args([
            "build",
            "--version",
            "0.0.2-interrupted",
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(project_root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let mkosi get going, then stop the build the way CI would (SIGTERM).
    let staging = out.join(".0.0.2-interrupted.partial");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !staging.join("build.log").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an interrupted build exits 1: {stderr}"
    );
    assert!(
        stderr.contains("0.0.2-interrupted was interrupted"),
        "{stderr}"
    );
    assert!(!out.join("0.0.2-interrupted").exists());
    assert!(!staging.exists(), "the staging directory was left behind");
    assert!(out.join("0.0.2-interrupted.failed.log").exists());
    assert_no_mkosi_left_running();
}

fn assert_no_mkosi_left_running() {
    std::thread::sleep(Duration::from_secs(2));
    let ps = host_tool("ps", &["-eo", "args"]);
    let leftovers: Vec<&str> = ps
        .lines()
        .filter(|l| l.contains("-m mkosi") && l.contains("0.0.2-interrupted"))
        .collect();
    assert!(leftovers.is_empty(), "mkosi still running: {leftovers:?}");
}

/// Sanity: the e2e helpers point at this checkout.
#[test]
fn suite_finds_the_checkout() {
    assert!(Path::new(&project_root())
        .join("recipes/mkosi.conf")
        .is_file());
}
