//! `boxcar-update check` and `status` against a store on a loopback server
//! that misbehaves on request: every refusal names its cause, is recorded
//! as the last error, and leaves the staging area empty.

mod common;

use common::*;
use predicates::prelude::*;

fn assert_refused(host: &Host, cause: &str) {
    host.boxcar_update(&["check", "--now"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(cause));
    let status = host.status();
    let error = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains(cause), "status: {status:#}");
    assert_eq!(status["state"], "idle");
    assert!(status["pending"].is_null());
    let staged = host.staged_files();
    assert!(
        staged.iter().all(|f| f.ends_with(".part")),
        "left in staging: {staged:?}"
    );
}

/// A good update goes through every check the host can make before
/// installing: signatures, digests while downloading, the decompressed
/// digests, the UKI's usrhash against the release, the partition UUIDs and
/// `veritysetup verify`; here it stops at finding the ESP (the test host
/// has none), and the staging area is emptied.
#[test]
fn a_good_update_passes_every_check_before_installing() {
    let store = Store::new();
    let (release, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    let host = Host::new(&store, "1.0.0");
    host.boxcar_update(&["check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("finding the ESP"));
    let status = host.status();
    assert_eq!(status["available"]["version"], "2.0.0");
    assert_eq!(status["available"]["wave"]["wave"], "open");
    assert!(host.staged_files().is_empty(), "{:?}", host.staged_files());
    assert_eq!(release.root_hash.len(), 64);

    // The same host is up to date once it runs 2.0.0.
    std::fs::write(host.path("usr/lib/os-release"), "IMAGE_VERSION=2.0.0\n").unwrap();
    host.boxcar_update(&["check", "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"outcome\": \"up-to-date\""));
}

/// The /usr signature an update carries must sign that update's /usr.
#[test]
fn a_signature_of_another_usr_is_refused() {
    let store = Store::new();
    let other = "cd".repeat(32);
    let (_, digest) = store.publish_signed("2.0.0", UsrSigning::SignedFor(&other));
    store.point_alpha("2.0.0", digest, 1, None, false);
    let host = Host::new(&store, "1.0.0");
    assert_refused(&host, &format!("signature is for root hash {other}"));
}

/// A node whose firmware enforces Secure Boot takes a signed release (and
/// goes on to the ESP), and refuses an unsigned one, whose UKI its
/// firmware would refuse, before installing anything.
#[test]
fn a_node_under_secure_boot_takes_only_signed_releases() {
    let store = Store::new();
    let (_, digest) = store.publish_signed("2.0.0", UsrSigning::Signed);
    store.point_alpha("2.0.0", digest, 1, None, false);
    let host = Host::new(&store, "1.0.0");
    let variable =
        host.path("sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c");
    std::fs::create_dir_all(variable.parent().unwrap()).unwrap();
    std::fs::write(&variable, [6, 0, 0, 0, 1]).unwrap();
    host.boxcar_update(&["check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("finding the ESP"));

    let (_, digest) = store.publish("2.0.1");
    store.point_alpha("2.0.1", digest, 2, None, false);
    assert_refused(&host, "is not signed for it");
}

#[test]
fn a_tampered_payload_is_refused_with_the_digest_mismatch() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    let usr = std::fs::read_dir(store.path("releases/2.0.0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".usr.raw.zst"))
        .unwrap();
    let mut bytes = std::fs::read(&usr).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&usr, bytes).unwrap();
    let host = Host::new(&store, "1.0.0");
    assert_refused(&host, "does not match the signed release");
}

#[test]
fn a_usrhash_that_is_not_the_release_root_hash_is_refused() {
    let store = Store::new();
    let (_, _) = store.publish("2.0.0");
    let path = store.path("releases/2.0.0/release.json");
    let mut release: boxcar_signing::documents::ReleaseDocument =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    release.usr_root_hash = "ab".repeat(32);
    let digest = store.write_release(&release);
    store.point_alpha("2.0.0", digest, 1, None, false);
    let host = Host::new(&store, "1.0.0");
    assert_refused(&host, "the staged UKI boots usrhash=");
}

#[test]
fn an_expired_channel_is_refused() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, true);
    assert_refused(&Host::new(&store, "1.0.0"), "expired");
}

#[test]
fn a_channel_serial_below_one_seen_is_a_rollback() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha(
        "2.0.0",
        digest,
        5,
        Some(rollout(0, &[(100, 100)], false)),
        false,
    );
    let host = Host::new(&store, "1.0.0");
    host.boxcar_update(&["check"])
        .assert()
        .success()
        .stdout(predicate::str::contains("not yet to this host"));
    store.point_alpha("2.0.0", digest, 3, None, false);
    assert_refused(&host, "rollback");
}

/// A release.json from another version, and update parts of another
/// version in a release's own document: both refused.
#[test]
fn mixed_and_matched_releases_are_refused() {
    let store = Store::new();
    let (_, digest_two) = store.publish("2.0.0");
    let (_, _) = store.publish("3.0.0");
    // 2.0.0's document offered as 3.0.0's.
    std::fs::copy(
        store.path("releases/2.0.0/release.json"),
        store.path("releases/3.0.0/release.json"),
    )
    .unwrap();
    std::fs::copy(
        store.path("releases/2.0.0/release.json.minisig"),
        store.path("releases/3.0.0/release.json.minisig"),
    )
    .unwrap();
    store.point_alpha("3.0.0", digest_two, 1, None, false);
    let host = Host::new(&store, "1.0.0");
    assert_refused(&host, "wrong place");

    // 3.0.0 signed, listing 2.0.0's parts.
    let two: boxcar_signing::documents::ReleaseDocument =
        serde_json::from_slice(&std::fs::read(store.path("releases/2.0.0/release.json")).unwrap())
            .unwrap();
    let mut three = two.clone();
    three.version = "3.0.0".into();
    let digest = store.write_release(&three);
    store.point_alpha("3.0.0", digest, 2, None, false);
    assert_refused(&host, "of another version");
}

#[test]
fn an_endless_channel_document_is_refused_without_reading_it_all() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    store.misbehave("channels/alpha.json", Misbehaviour::Endless);
    assert_refused(&Host::new(&store, "1.0.0"), "is larger than");
}

#[test]
fn a_payload_longer_than_declared_is_refused_and_removed() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    let uki = "releases/2.0.0/boxcar_2.0.0.efi.zst";
    store.misbehave(uki, Misbehaviour::Longer);
    let host = Host::new(&store, "1.0.0");
    assert_refused(&host, "is larger than the");
    assert!(host.staged_files().is_empty(), "{:?}", host.staged_files());
}

/// A server that stops sending is given up on after the read timeout; the
/// partial download is kept to resume, the staging area is empty.
#[test]
fn a_stalled_server_times_out_and_the_download_resumes_later() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    let uki = "releases/2.0.0/boxcar_2.0.0.efi.zst";
    store.misbehave(uki, Misbehaviour::Stall);
    let host = Host::new(&store, "1.0.0");
    assert_refused(&host, "no data for 2s");
    assert_eq!(host.staged_files(), ["boxcar_2.0.0.efi.zst.part"]);
}

/// A staging disk too small for the download, or for the files it
/// decompresses to: refused before fetching, with what it needs and has.
#[test]
fn a_full_staging_disk_is_refused_with_its_cause() {
    for (dir, size, cause) in [
        ("var/lib/boxcar-update/downloads", "64k", "for the download"),
        ("var/lib/boxcar/updates", "4k", "for the decompressed files"),
    ] {
        let store = Store::new();
        let (_, digest) = store.publish("2.0.0");
        store.point_alpha("2.0.0", digest, 1, None, false);
        let host = Host::new(&store, "1.0.0");
        let small = host.path(dir);
        std::fs::create_dir_all(&small).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&small)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            mounted,
            "mounting a small tmpfs (the test suite runs as root)"
        );
        let result = std::panic::catch_unwind(|| {
            assert_refused(&host, "the staging disk is full");
            assert_refused(&host, cause);
        });
        let _ = std::process::Command::new("umount").arg(&small).status();
        result.unwrap();
    }
}

#[test]
fn a_paused_rollout_and_a_wave_not_reached_download_nothing() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha(
        "2.0.0",
        digest,
        1,
        Some(rollout(2, &[(1, 100)], true)),
        false,
    );
    let host = Host::new(&store, "1.0.0");
    host.boxcar_update(&["check"])
        .assert()
        .success()
        .stdout(predicate::str::contains("rollout is paused"));
    assert_eq!(host.status()["available"]["wave"]["wave"], "paused");
    store.point_alpha(
        "2.0.0",
        digest,
        2,
        Some(rollout(2, &[(1, 0), (48, 100)], false)),
        false,
    );
    let out = host.boxcar_update(&["check", "--json"]).assert().success();
    let round: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(round["outcome"], "waiting");
    assert_eq!(round["wave"]["wave"], "not-yet");
    assert!(round["wave"]["next_wave_at"].is_string());
    assert!(host.staged_files().is_empty());
    assert!(!host.path("var/lib/boxcar-update/downloads").exists());
}
