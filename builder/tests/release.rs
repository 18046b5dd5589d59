//! The release store through the real `boxcar` binary, on small synthetic
//! builds (the real image's turn is in the end-to-end suite): publish,
//! promote and verify, and one case per way things go wrong. Signatures are
//! also checked with the stock `minisign` and `sha256sum`.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command as Process;

use assert_cmd::Command;
use common::*;
use predicates::prelude::*;

fn stderr_of(command: &mut Command) -> String {
    String::from_utf8_lossy(&command.output().unwrap().stderr).into_owned()
}

#[test]
fn publish_promote_verify_and_stock_tools_agree() {
    let lab = Lab::new();
    let build = lab.build("1.0.0", true);
    lab.publish(&build, Some("alpha"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "channel alpha now points at 1.0.0 (serial 1)",
        ));
    lab.promote("beta", &[])
        .assert()
        .success()
        .stdout(predicate::str::contains("promoted beta: (empty) -> 1.0.0"));
    lab.promote("stable", &[]).assert().success();
    lab.verify_passes_with("channels/stable.json: serial 1, points at 1.0.0");

    let release = lab.store().join("releases/1.0.0");
    common::assert_sums_check(&release);
    match Process::new("minisign")
        .args(["-V", "-m", "release.json", "-p"])
        .arg(lab.public_key())
        .current_dir(&release)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "minisign: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!(
            "SKIPPED the minisign check: minisign is not installed (ci/setup-host installs it)"
        ),
    }
    for document in ["index.json", "channels/beta.json"] {
        if let Ok(out) = Process::new("minisign")
            .args(["-V", "-m", document, "-p"])
            .arg(lab.public_key())
            .current_dir(lab.store())
            .output()
        {
            assert!(
                out.status.success(),
                "{document}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // A promotion that changes nothing writes nothing.
    let before = fs::read(lab.store().join("channels/beta.json")).unwrap();
    lab.promote("beta", &[])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to do"));
    assert_eq!(
        fs::read(lab.store().join("channels/beta.json")).unwrap(),
        before
    );
}

#[test]
fn tampered_artifact_is_caught_by_verify_and_promote() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    let artifact = lab.store().join("releases/1.0.0/boxcar-1.0.0-qemu.qcow2");
    let mut bytes = fs::read(&artifact).unwrap();
    bytes[10] ^= 1;
    fs::write(&artifact, bytes).unwrap();
    lab.verify_fails_with("boxcar-1.0.0-qemu.qcow2: expected");
    lab.promote("beta", &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not match release.json"));
    assert!(!lab.store().join("channels/beta.json").exists());
}

#[test]
fn tampered_release_json_is_a_bad_signature() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    let path = lab.store().join("releases/1.0.0/release.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"qemu\"", "\"qemu \"");
    fs::write(&path, text).unwrap();
    lab.verify_fails_with("bad signature");
    lab.promote("beta", &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("bad signature"));
}

#[test]
fn a_signature_by_an_unknown_key_is_refused() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    let other = lab.path("other");
    boxcar()
        .args(["keys", "generate", "--out", other.to_str().unwrap()])
        .assert()
        .success();
    boxcar()
        .args(["verify", "--store", lab.store().to_str().unwrap(), "--key"])
        .arg(other.join("boxcar.pub"))
        .assert()
        .code(1)
        .stdout(predicate::str::contains("which is not trusted"));
}

#[test]
fn an_expired_channel_document_is_refused() {
    let lab = Lab::new();
    lab.set_channel("alpha", "valid-for", "\"1s\"");
    lab.publish_to_alpha("1.0.0");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    lab.verify_fails_with("channel document alpha (serial 1) expired at");
}

#[test]
fn a_rolled_back_channel_document_is_refused() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    let channel = lab.store().join("channels/alpha.json");
    let old = (
        fs::read(&channel).unwrap(),
        fs::read(channel.with_extension("json.minisig")).unwrap(),
    );
    lab.publish_to_alpha("1.1.0");
    // Replay the old, validly signed document.
    fs::write(&channel, &old.0).unwrap();
    fs::write(channel.with_extension("json.minisig"), &old.1).unwrap();
    lab.verify_fails_with("has serial 1, older than serial 2 already seen: a rollback");
}

#[test]
fn a_channel_pointing_at_a_missing_release_is_refused() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    fs::remove_dir_all(lab.store().join("releases/1.0.0")).unwrap();
    lab.verify_fails_with("points at 1.0.0, which is not a published release");
}

#[test]
fn a_downgrade_needs_to_be_asked_for() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    lab.publish_to_alpha("1.1.0");
    lab.promote("beta", &[]).assert().success();
    lab.promote("beta", &["--version", "1.0.0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "would downgrade it from 1.1.0; pass --allow-downgrade",
        ));
    lab.promote("beta", &["--version", "1.0.0", "--allow-downgrade"])
        .assert()
        .success();
    lab.verify_passes_with("channels/beta.json: serial 2, points at 1.0.0");
}

/// Two pipelines publish 2.0.0 and then 1.0.0 to alpha: alpha stays on
/// 2.0.0, and nothing of 1.0.0 is copied, unless the downgrade is asked for.
#[test]
fn publish_never_moves_a_channel_back_unless_asked() {
    let lab = Lab::new();
    lab.publish_to_alpha("2.0.0");
    let older = lab.build("1.0.0", true);
    lab.publish(&older, Some("alpha")).assert().code(1).stderr(
        predicate::str::contains("not publishing 1.0.0: nothing was copied").and(
            predicate::str::contains(
                "pointing alpha at 1.0.0 would downgrade it from 2.0.0; pass --allow-downgrade",
            ),
        ),
    );
    let releases: Vec<_> = fs::read_dir(lab.store().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(releases, ["2.0.0"]);
    lab.verify_passes_with("channels/alpha.json: serial 1, points at 2.0.0");
    // --allow-downgrade needs a channel to apply to.
    lab.publish(&older, None)
        .arg("--allow-downgrade")
        .assert()
        .code(2);
    lab.publish(&older, Some("alpha"))
        .arg("--allow-downgrade")
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "pointing channel alpha back from 2.0.0 to 1.0.0 (--allow-downgrade)",
        ));
    lab.verify_passes_with("channels/alpha.json: serial 2, points at 1.0.0");
}

/// Publishers racing to one channel: whichever order they take the
/// store's lock in, the channel ends on the newest release, and each
/// publisher of an older one that came too late was refused whole.
#[test]
fn racing_publishers_leave_a_channel_on_the_newest_release() {
    let lab = Lab::new();
    // Started newest first, so that they tend to land newest first.
    let versions = ["1.2.0", "1.1.0", "1.0.0"];
    let builds: Vec<PathBuf> = versions.iter().map(|v| lab.build(v, true)).collect();
    let children: Vec<_> = builds
        .iter()
        .map(|build| {
            Process::new(env!("CARGO_BIN_EXE_boxcar"))
                .args(["--project", lab.path("project").to_str().unwrap()])
                .arg("publish")
                .arg("--build")
                .arg(build)
                .args(["--store", lab.store().to_str().unwrap()])
                .args(["--key", &lab.key(), "--channel", "alpha"])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut landed = Vec::new();
    for (version, child) in versions.iter().zip(children) {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            landed.push(*version);
        } else {
            assert!(stderr.contains("would downgrade it"), "{version}: {stderr}");
            assert!(!lab.store().join("releases").join(version).exists());
        }
    }
    let alpha = read_json(&lab.store().join("channels/alpha.json"));
    assert_eq!(alpha["version"], "1.2.0");
    assert_eq!(alpha["history"].as_array().unwrap().len(), landed.len());
    lab.verify().assert().success();
}

#[test]
fn promotion_without_evidence_is_refused() {
    let lab = Lab::new();
    lab.set_channel("alpha", "evidence", "\"not-required\"");
    lab.publish(&lab.build("1.0.0", false), Some("alpha"))
        .assert()
        .success();
    lab.promote("beta", &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "requires passing boot-test evidence for every platform",
        ));
    // And a channel that requires it refuses to be published to without it.
    lab.publish(&lab.build("1.1.0", false), None)
        .assert()
        .success();
    let failing = lab.build("1.2.0", true);
    write_evidence(&failing, "1.2.0", "metal", false);
    lab.set_channel("alpha", "evidence", "\"required\"");
    lab.publish(&failing, Some("alpha"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("metal: its boot test failed"));
}

#[test]
fn a_published_version_is_never_replaced_but_the_same_build_finishes_its_publish() {
    let lab = Lab::new();
    let build = lab.build("1.0.0", true);
    lab.publish(&build, Some("alpha")).assert().success();
    // The same build again: nothing is copied or replaced, it succeeds.
    lab.publish(&build, Some("alpha"))
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "already in the store with this build's artifacts",
        ));
    // Another build of the same version is refused.
    let path = build.join("build.json");
    let mut info: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    info["usr"]["root_hash"] = serde_json::json!("0".repeat(64));
    fs::write(&path, serde_json::to_vec(&info).unwrap()).unwrap();
    lab.publish(&build, Some("alpha"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already published"));
    lab.verify_passes_with("channels/alpha.json: serial 1, points at 1.0.0");
}

/// A build signed for Secure Boot publishes its certificate as a file of
/// the release: listed in SHA256SUMS, named with its fingerprint in
/// release.json, checked by verify and promote like any artifact; a build
/// of the same version signed with another certificate is another build.
#[test]
fn a_signed_build_publishes_its_secure_boot_certificate() {
    let lab = Lab::new();
    let build = lab.build("1.0.0", true);
    common::sign_for_secure_boot(&build);
    lab.publish(&build, Some("alpha")).assert().success();
    let release = lab.store().join("releases/1.0.0");
    assert_eq!(
        fs::read(release.join("secure-boot.crt")).unwrap(),
        fs::read(build.join("secure-boot.crt")).unwrap()
    );
    let sums = fs::read_to_string(release.join("SHA256SUMS")).unwrap();
    assert!(sums.ends_with("  secure-boot.crt\n"), "{sums}");
    common::assert_sums_check(&release);
    let document = read_json(&release.join("release.json"));
    assert_eq!(document["secure_boot"]["certificate"], "secure-boot.crt");
    assert_eq!(document["secure_boot"]["subject"], "CN=synthetic");
    assert_eq!(
        document["secure_boot"]["fingerprint_sha256"],
        "00".repeat(32)
    );
    lab.verify_passes_with("releases/1.0.0/release.json: signed; 7 files match their digests");
    // Publishing it again finishes nothing new; with another certificate
    // it is another build of a published version, refused.
    lab.publish(&build, Some("alpha")).assert().success();
    fs::write(build.join("secure-boot.crt"), "another certificate").unwrap();
    let path = build.join("build.json");
    let mut info: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    info["secure_boot"]["file_sha256"] = serde_json::json!("0".repeat(64));
    fs::write(&path, serde_json::to_vec(&info).unwrap()).unwrap();
    lab.publish(&build, Some("alpha"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already published"));
    // A certificate swapped in the store is caught.
    fs::write(release.join("secure-boot.crt"), "an attacker's certificate").unwrap();
    lab.verify_fails_with("secure-boot.crt: expected");
    lab.promote("beta", &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not match release.json"));
}

#[test]
fn soak_time_is_enforced() {
    let lab = Lab::new();
    lab.set_channel("beta", "soak", "\"1h\"");
    lab.publish_to_alpha("1.0.0");
    lab.promote("beta", &["--dry-run"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("but beta requires 1h"));
}

#[test]
fn a_crash_in_the_middle_of_publish_leaves_the_store_as_it_was() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    let alpha_before = fs::read(lab.store().join("channels/alpha.json")).unwrap();
    lab.publish_crashing_at("1.1.0", "publish-copying");
    assert!(!lab.store().join("releases/1.1.0").exists());
    assert_eq!(
        fs::read(lab.store().join("channels/alpha.json")).unwrap(),
        alpha_before
    );
    // A reader reports the leftover and leaves it; repairing is a writer's job.
    lab.verify_passes_with("warn  releases/.1.1.0.partial: left by an interrupted writer");
    assert!(lab.store().join("releases/.1.1.0.partial").exists());
    lab.repair()
        .assert()
        .success()
        .stdout(predicate::str::contains("removed the half-published"));
    lab.verify()
        .assert()
        .success()
        .stdout(predicate::str::contains("warn").not());
    // The next publish of that version works.
    lab.publish_to_alpha("1.1.0");
}

#[test]
fn a_crash_between_a_document_and_its_signature_is_rolled_back() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    lab.publish_to_alpha("1.1.0");
    lab.promote("beta", &["--version", "1.0.0"])
        .assert()
        .success();
    let beta_before = fs::read(lab.store().join("channels/beta.json")).unwrap();
    let crashed = lab
        .promote("beta", &[])
        .env("BOXCAR_CRASH_AT", "document-half-replaced")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the promotion was meant to die");
    // Half replaced: the new signature beside the old document. A reader
    // refuses the pair and points at the journal; it changes nothing.
    lab.verify().assert().code(1).stdout(
        predicate::str::contains("FAIL  channels/beta.json")
            .and(predicate::str::contains("bad signature"))
            .and(predicate::str::contains(
                "warn  channels/.beta.json.journal",
            )),
    );
    lab.repair()
        .assert()
        .success()
        .stdout(predicate::str::contains("restored"));
    assert_eq!(
        fs::read(lab.store().join("channels/beta.json")).unwrap(),
        beta_before
    );
    lab.verify_passes_with("channels/beta.json: serial 1, points at 1.0.0");
}

#[test]
fn concurrent_writers_do_not_lose_updates() {
    let lab = Lab::new();
    let builds: Vec<PathBuf> = ["1.0.0", "1.1.0", "1.2.0"]
        .iter()
        .map(|v| lab.build(v, true))
        .collect();
    let children: Vec<_> = builds
        .iter()
        .map(|build| {
            Process::new(env!("CARGO_BIN_EXE_boxcar"))
                .args([
                    "--quiet",
                    "--project",
                    lab.path("project").to_str().unwrap(),
                    "publish",
                    "--build",
                ])
                .arg(build)
                .args([
                    "--store",
                    lab.store().to_str().unwrap(),
                    "--key",
                    &lab.key(),
                    "--channel",
                    "alpha",
                    // They take the lock in any order: this is about
                    // updates lost, not about which release is newest.
                    "--allow-downgrade",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let alpha: serde_json::Value =
        serde_json::from_slice(&fs::read(lab.store().join("channels/alpha.json")).unwrap())
            .unwrap();
    assert_eq!(alpha["serial"], 3);
    assert_eq!(alpha["history"].as_array().unwrap().len(), 3);
    lab.verify().assert().success();
}

#[test]
fn the_signing_key_can_come_from_the_environment_and_is_never_printed() {
    let lab = Lab::new();
    let secret = fs::read_to_string(lab.path("keys/boxcar.key")).unwrap();
    let output = lab
        .boxcar(&[
            "publish",
            "--build",
            lab.build("1.0.0", true).to_str().unwrap(),
            "--store",
            lab.store().to_str().unwrap(),
            "--channel",
            "alpha",
        ])
        .env("BOXCAR_SIGNING_KEY", &secret)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key_line = secret.lines().nth(1).unwrap();
    for stream in [&output.stdout, &output.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains(key_line));
    }
    let err = stderr_of(
        lab.boxcar(&[
            "publish",
            "--build",
            lab.build("1.1.0", true).to_str().unwrap(),
            "--store",
            lab.store().to_str().unwrap(),
        ])
        .env("BOXCAR_SIGNING_KEY", "untrusted comment: x\nnot a key\n")
        .env_remove("BOXCAR_SIGNING_KEY_FILE"),
    );
    assert!(
        err.contains("does not hold a boxcar secret key") && !err.contains("not a key"),
        "{err}"
    );
}

#[test]
fn verify_reads_a_store_over_http() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    let server = common::s3server::Website::serve(&lab.store());
    let url = server.url.clone();
    let mut passed = false;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let output = boxcar()
            .args(["verify", "--store", &url, "--key", &lab.public_key()])
            .output()
            .unwrap();
        if output.status.success() {
            passed = String::from_utf8_lossy(&output.stdout)
                .contains("releases/1.0.0/release.json: signed; 6 files match");
            break;
        }
    }
    drop(server);
    assert!(passed, "verify over HTTP did not pass");
}

#[test]
fn a_promotion_and_a_publish_at_the_same_time_both_land() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    lab.promote("beta", &[]).assert().success();
    let build = lab.build("1.1.0", true);
    let spawn = |args: Vec<String>| {
        Process::new(env!("CARGO_BIN_EXE_boxcar"))
            .args([
                "--quiet",
                "--project",
                lab.path("project").to_str().unwrap(),
            ])
            .args(args)
            .spawn()
            .unwrap()
    };
    let store = lab.store().display().to_string();
    let promotion = spawn(vec![
        "promote".into(),
        "--store".into(),
        store.clone(),
        "--key".into(),
        lab.key(),
        "--to".into(),
        "stable".into(),
    ]);
    let publication = spawn(vec![
        "publish".into(),
        "--build".into(),
        build.display().to_string(),
        "--store".into(),
        store,
        "--key".into(),
        lab.key(),
        "--channel".into(),
        "alpha".into(),
    ]);
    for mut child in [promotion, publication] {
        assert!(child.wait().unwrap().success());
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(lab.store().join("index.json")).unwrap()).unwrap();
    let channels: Vec<(String, String)> = index["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        channels.contains(&("stable".into(), "1.0.0".into())),
        "{channels:?}"
    );
    assert!(
        channels.contains(&("alpha".into(), "1.1.0".into())),
        "{channels:?}"
    );
    lab.verify().assert().success();
}

#[test]
fn a_crash_at_any_point_of_publish_is_repaired_and_the_same_build_publishes_again() {
    for point in [
        "publish-copying",
        "publish-before-rename",
        "publish-before-listing",
        "publish-before-channel",
        "document-half-replaced",
        "publish-before-index",
    ] {
        let lab = Lab::new();
        lab.publish_to_alpha("1.0.0");
        lab.publish_crashing_at("1.1.0", point);
        lab.repair().assert().success();
        // The store is whole: alpha points at 1.0.0, or at 1.1.0 if the
        // crash came after the channel moved.
        let verified = lab.verify().output().unwrap();
        let report = String::from_utf8_lossy(&verified.stdout).into_owned();
        assert!(verified.status.success(), "{point}: {report}");
        // The same build publishes again (or finishes its publish).
        lab.publish_to_alpha("1.1.0");
        lab.verify().assert().success().stdout(
            predicate::str::contains("channels/alpha.json: serial 2, points at 1.1.0")
                .and(predicate::str::contains("warn").not()),
        );
    }
}

#[test]
fn names_in_build_json_that_would_leave_the_store_or_fool_a_terminal_are_refused() {
    let escape = std::env::temp_dir().join(format!("boxcar-escape-{}", std::process::id()));
    for bad in [
        "../../escaped.raw".to_owned(),
        escape.display().to_string(),
        "evil\u{1b}[2J.raw".to_owned(),
    ] {
        let lab = Lab::new();
        let build = lab.build("1.0.0", true);
        let path = build.join("build.json");
        let mut info: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        info["artifacts"][0]["file"] = serde_json::json!(bad);
        fs::write(&path, serde_json::to_vec(&info).unwrap()).unwrap();
        let output = lab.publish(&build, Some("alpha")).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("is not allowed as a name"), "{stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "an escape reached the terminal: {stderr}"
        );
        assert!(!lab.path("escaped.raw").exists() && !escape.exists());
        assert!(!lab.store().join("releases/1.0.0").exists());
    }
}

#[test]
fn writers_never_write_through_a_symlink_left_in_the_store() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    let victim = lab.path("victim");
    fs::write(&victim, "keep").unwrap();
    for planted in [
        "channels/.alpha.json.new",
        ".index.json.new",
        ".index.json.journal",
    ] {
        std::os::unix::fs::symlink(&victim, lab.store().join(planted)).unwrap();
    }
    // A journal left behind is repaired first; the symlinks are replaced,
    // never followed.
    lab.publish_to_alpha("1.1.0");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    lab.verify_passes_with("channels/alpha.json: serial 2, points at 1.1.0");
    fs::remove_file(lab.store().join(".lock")).unwrap();
    std::os::unix::fs::symlink(&victim, lab.store().join(".lock")).unwrap();
    lab.publish(&lab.build("1.2.0", true), Some("alpha"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("symlink"));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
}

/// A release carries its update payload (listed in release.json and
/// SHA256SUMS, checked by verify), and a channel's waves come from its
/// file; a tampered update part is caught like any artifact.
#[test]
fn a_release_carries_its_update_and_its_channel_the_waves() {
    let lab = Lab::new();
    lab.set_channel(
        "alpha",
        "waves",
        r#"[{ percent = 10, after = "1h" }, { percent = 100, after = "2d" }]"#,
    );
    lab.publish_to_alpha("1.0.0");
    let release = read_json(&lab.store().join("releases/1.0.0/release.json"));
    let files = release["update"]["files"].as_array().unwrap();
    let roles: Vec<&str> = files.iter().map(|f| f["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["usr", "usr-verity", "usr-signature", "uki"]);
    assert_eq!(files[3]["installed_name"], "boxcar_1.0.0.efi");
    let sums = fs::read_to_string(lab.store().join("releases/1.0.0/SHA256SUMS")).unwrap();
    for file in files {
        assert!(sums.contains(file["name"].as_str().unwrap()), "{sums}");
    }
    let channel = read_json(&lab.store().join("channels/alpha.json"));
    let rollout = &channel["rollout"];
    assert_eq!(rollout["start"], channel["history"][0]["since"]);
    assert_eq!(rollout["waves"][0]["after_seconds"], 3600);
    assert_eq!(rollout["waves"][1]["percent"], 100);
    assert!(rollout.get("paused_at").is_none());
    lab.verify_passes_with("releases/1.0.0/release.json: signed; 6 files match");

    let uki = lab.store().join("releases/1.0.0/boxcar_1.0.0.efi.zst");
    let mut bytes = fs::read(&uki).unwrap();
    bytes[5] ^= 1;
    fs::write(&uki, bytes).unwrap();
    lab.verify_fails_with("boxcar_1.0.0.efi.zst: expected");
}

/// `promote --pause` stops a rollout in a new signed document; a second
/// pause changes nothing; `--resume` shifts the wave clock by the pause.
#[test]
fn a_rollout_pauses_and_resumes_in_signed_documents() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    lab.promote("alpha", &["--pause"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "paused the rollout of 1.0.0 on alpha (serial 2",
        ));
    let paused = read_json(&lab.store().join("channels/alpha.json"));
    assert_eq!(paused["serial"], 2);
    assert!(paused["rollout"]["paused_at"].is_string());
    lab.promote("alpha", &["--pause"])
        .assert()
        .success()
        .stdout(predicate::str::contains("already paused; nothing written"));
    lab.verify_passes_with("channels/alpha.json: serial 2, points at 1.0.0");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let resumed = lab
        .promote("alpha", &["--resume", "--json"])
        .assert()
        .success();
    let printed: serde_json::Value = serde_json::from_slice(&resumed.get_output().stdout).unwrap();
    assert_eq!(
        (printed["written"].as_bool(), printed["serial"].as_u64()),
        (Some(true), Some(3))
    );
    let channel = read_json(&lab.store().join("channels/alpha.json"));
    assert!(channel["rollout"].get("paused_at").is_none());
    assert!(
        channel["rollout"]["start"].as_str() > paused["rollout"]["start"].as_str(),
        "the wave clock did not move by the pause: {channel:#}"
    );
    lab.promote("alpha", &["--pause", "--version", "1.0.0"])
        .assert()
        .code(2);
    lab.verify_passes_with("channels/alpha.json: serial 3, points at 1.0.0");
}
