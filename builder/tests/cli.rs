//! The real `boxcar` binary, run the way a user runs it: help, usage
//! errors, and configuration mistakes that must be reported (with file,
//! line and key) before any work starts.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn boxcar() -> Command {
    Command::cargo_bin("boxcar").unwrap()
}

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A copy of the checkout's configuration to break on purpose.
fn project_copy() -> tempfile::TempDir {
    let temp = tempfile::tempdir().unwrap();
    for dir in ["recipes", "overlays", "channels"] {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(checkout().join(dir))
            .arg(temp.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    temp
}

#[test]
fn help_explains_every_command() {
    boxcar().arg("--help").assert().success().stdout(
        predicate::str::contains("build")
            .and(predicate::str::contains("test"))
            .and(predicate::str::contains("check")),
    );
    boxcar()
        .args(["build", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("build.json").and(predicate::str::contains("--channel")));
    boxcar().args(["test", "--help"]).assert().success().stdout(
        predicate::str::contains("--tamper-usr").and(predicate::str::contains("evidence.json")),
    );
}

#[test]
fn usage_errors_exit_2() {
    boxcar()
        .args(["build", "--version", "../evil"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid version"));
    boxcar()
        .args(["build", "--channel", "Stable"])
        .assert()
        .code(2);
    boxcar().arg("frobnicate").assert().code(2);
}

#[test]
fn unknown_channel_is_refused_before_any_work() {
    let project = project_copy();
    boxcar()
        .args(["build", "--channel", "nightly", "--project"])
        .arg(project.path())
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("unknown channel nightly")
                .and(predicate::str::contains("alpha, beta, stable")),
        );
}

/// `boxcar build` on `project` fails with exit status 1 and an error that
/// starts with `file:line: key `key``.
fn assert_build_refused_at(project: &Path, file: &Path, line: usize, key: &str) {
    boxcar()
        .args(["build", "--project"])
        .arg(project)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "{}:{line}: key `{key}`",
            file.display()
        )));
}

#[test]
fn malformed_channel_file_names_file_line_and_key() {
    let project = project_copy();
    let beta = project.path().join("channels/beta.toml");
    let text = std::fs::read_to_string(&beta).unwrap();
    std::fs::write(&beta, format!("{text}soak-hours = 24\n")).unwrap();
    assert_build_refused_at(
        project.path(),
        &beta,
        text.lines().count() + 1,
        "soak-hours",
    );
}

#[test]
fn malformed_recipe_names_file_line_and_key() {
    let project = project_copy();
    let repart = project.path().join("recipes/mkosi.repart/10-usr-a.conf");
    let text = std::fs::read_to_string(&repart).unwrap();
    std::fs::write(&repart, text.replace("Verity=data", "Verity=yes")).unwrap();
    let line = text.lines().position(|l| l == "Verity=data").unwrap() + 1;
    assert_build_refused_at(project.path(), &repart, line, "Verity");
}

#[test]
fn check_reports_the_configuration() {
    // The tools part depends on the host; the configuration part must hold
    // everywhere.
    let output = boxcar()
        .args(["check", "--json", "--project"])
        .arg(checkout())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["channels"],
        serde_json::json!(["alpha", "beta", "stable"])
    );
    assert!(report["recipe_files"].as_u64().unwrap() >= 8);
}

#[test]
fn test_of_a_missing_build_says_what_is_missing() {
    let temp = tempfile::tempdir().unwrap();
    let output = boxcar()
        .args(["test", "--build"])
        .arg(temp.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Either the host lacks qemu (and says so), or the build.json is missing.
    assert!(
        stderr.contains("build.json") || stderr.contains("cannot run `boxcar test`"),
        "{stderr}"
    );
}

#[test]
fn malformed_platform_entry_names_file_line_and_key() {
    let project = project_copy();
    let table = project.path().join("recipes/platforms.toml");
    let text = std::fs::read_to_string(&table).unwrap();
    std::fs::write(
        &table,
        text.replacen("format = \"ova\"", "format = \"vhdx\"", 1),
    )
    .unwrap();
    let line = text.lines().position(|l| l == "format = \"ova\"").unwrap() + 1;
    let output = boxcar()
        .args(["build", "--project"])
        .arg(project.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:{line}", table.display())),
        "{stderr}"
    );
    assert!(stderr.contains("vhdx"), "{stderr}");
}

#[test]
fn unknown_platform_is_refused_before_any_work() {
    let project = project_copy();
    let out = project.path().join("out");
    boxcar()
        .args(["build", "--platform", "azure", "--project"])
        .arg(project.path())
        .arg("--out")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("unknown platform azure")
                .and(predicate::str::contains("qemu, vmware, aws, metal, pxe")),
        );
    assert!(!out.exists(), "nothing is written before the checks pass");
}

/// With the converters out of reach, the build stops before mkosi runs and
/// names every missing tool. (As root: a non-root user is stopped earlier,
/// by the root check.)
#[test]
fn missing_converter_tools_are_named_before_any_work() {
    let project = project_copy();
    let out = project.path().join("out");
    let output = boxcar()
        .args(["build", "--project"])
        .arg(project.path())
        .arg("--out")
        .arg(&out)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("must run as root") {
        return;
    }
    for tool in [
        "mcopy is not installed",
        "zstd is not installed",
        "cpio is not installed",
    ] {
        assert!(stderr.contains(tool), "{tool}: {stderr}");
    }
    assert!(stderr.contains("ci/setup-host"), "{stderr}");
    assert!(!out.exists(), "nothing is written before the checks pass");
}

#[test]
fn platforms_lists_the_table() {
    let output = boxcar()
        .args(["platforms", "--json", "--project"])
        .arg(checkout())
        .output()
        .unwrap();
    assert!(output.status.success());
    let platforms: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<&str> = platforms
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["qemu", "vmware", "aws", "metal", "pxe"]);
    boxcar()
        .args(["platforms", "--project"])
        .arg(checkout())
        .assert()
        .success()
        .stdout(
            predicate::str::contains("boxcar-VERSION-vmware.ova")
                .and(predicate::str::contains("boxcar.platform=aws")),
        );
}

#[test]
fn a_missing_key_file_is_named_and_its_cause_given_once() {
    let output = boxcar()
        .args(["download", "--list", "--store", "/nonexistent-store"])
        .args(["--key", "/nonexistent-key.pub"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("loading public key /nonexistent-key.pub"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_secure_boot_key_without_its_certificate_is_refused_before_any_work() {
    let project = project_copy();
    let out = project.path().join("out");
    let key = project.path().join("db.key");
    std::fs::write(&key, "not read").unwrap();
    boxcar()
        .args(["build", "--project"])
        .arg(project.path())
        .arg("--out")
        .arg(&out)
        .arg("--secure-boot-key")
        .arg(&key)
        .env_remove("BOXCAR_SECURE_BOOT_CERTIFICATE_FILE")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "a Secure Boot key needs its certificate",
        ));
    assert!(!out.exists(), "nothing is written before the checks pass");
}

/// A key that is not the certificate's would sign images no firmware
/// trusting that certificate boots: refused before mkosi runs.
#[test]
fn a_secure_boot_key_that_is_not_the_certificates_is_refused_before_any_work() {
    let project = project_copy();
    let out = project.path().join("out");
    let dir = project.path();
    for name in ["one", "two"] {
        let status = std::process::Command::new("openssl")
            .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .arg("-keyout")
            .arg(dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(dir.join(format!("{name}.crt")))
            .args(["-days", "1", "-subj", "/CN=test/"])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let output = boxcar()
        .args(["build", "--project"])
        .arg(dir)
        .arg("--out")
        .arg(&out)
        .arg("--secure-boot-key")
        .arg(dir.join("one.key"))
        .arg("--secure-boot-certificate")
        .arg(dir.join("two.crt"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("must run as root") {
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not the key of certificate"), "{stderr}");
    assert!(!out.exists(), "nothing is written before the checks pass");
}

/// A store ending in a carriage return (pasted from a Windows file) would
/// be written into the image's update.toml for every node to fetch from.
#[test]
fn an_update_store_the_agent_cannot_follow_is_refused_before_any_work() {
    let project = project_copy();
    let out = project.path().join("out");
    let agent = project.path().join("boxcar-update");
    std::fs::write(&agent, "an agent").unwrap();
    for store in [
        "https://updates.example.com/boxcar\r",
        "ftp://updates.example.com",
    ] {
        boxcar()
            .args(["build", "--project"])
            .arg(project.path())
            .arg("--out")
            .arg(&out)
            .arg("--update-agent")
            .arg(&agent)
            .args(["--update-store", store])
            .assert()
            .code(1)
            .stderr(predicate::str::contains(
                "is not a store the image's agent can follow",
            ));
    }
    assert!(!out.exists(), "nothing is written before the checks pass");
}
