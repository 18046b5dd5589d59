//! The store's keys over the years, through the real binary: a keyring
//! that vouches for itself, planned and emergency rotations, root
//! rotations, readers pinned long ago, renewal before and after expiry.
//! Each test is one attack or one operator procedure from the README.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use boxcar_signing::documents::{self, Kind};
use boxcar_signing::keyring::{sign_keyring, KeyringDocument, KeyringEntry, Role};
use boxcar_signing::{SecretKey, Sign};
use common::*;
use predicates::prelude::*;

fn secret(dir: &Path) -> SecretKey {
    SecretKey::load(&dir.join("boxcar.key")).unwrap()
}

fn public(dir: &Path) -> String {
    dir.join("boxcar.pub").display().to_string()
}

/// `boxcar download` of alpha's qemu artifact, pinning `pinned`, keeping
/// its rollback state in lab/STATE.
fn download(lab: &Lab, pinned: &Path, state: &str) -> assert_cmd::Command {
    let mut command = lab.boxcar(&["download", "--channel", "alpha", "--platform", "qemu"]);
    command
        .args(["--store", lab.store().to_str().unwrap()])
        .args(["--key", &public(pinned)])
        .args(["--to", lab.path("out").to_str().unwrap()])
        .args(["--state", lab.path(state).to_str().unwrap()]);
    command
}

/// `boxcar verify` pinning `pinned`.
fn verify(lab: &Lab, pinned: &Path) -> assert_cmd::Command {
    let mut command = lab.boxcar(&["verify"]);
    command
        .args(["--store", lab.store().to_str().unwrap()])
        .args(["--key", &public(pinned)]);
    command
}

/// A writer's command (`publish`, `promote`, `renew`) signing with
/// `key`, trusting `root`.
fn writer(lab: &Lab, verb: &str, key: &Path, root: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut command = lab.boxcar(&[verb]);
    command
        .args(["--store", lab.store().to_str().unwrap()])
        .args(["--key", key.join("boxcar.key").to_str().unwrap()])
        .args(["--trust", &public(root)])
        .args(args);
    command
}

fn publish_with(lab: &Lab, version: &str, key: &Path, root: &Path) -> assert_cmd::Command {
    let build = lab.build(version, true);
    writer(
        lab,
        "publish",
        key,
        root,
        &["--build", build.to_str().unwrap(), "--channel", "alpha"],
    )
}

/// Signs a channel document as a holder of `key` would, with a serial far
/// ahead, pointing alpha at what it already points at.
fn forge_channel(lab: &Lab, key: &SecretKey) {
    let path = lab.store().join("channels/alpha.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    doc["serial"] = serde_json::json!(1000);
    let bytes = documents::to_bytes(&doc);
    let signature = documents::sign_bytes(key, &bytes, Kind::Channel, "alpha").unwrap();
    fs::write(&path, &bytes).unwrap();
    fs::write(lab.store().join("channels/alpha.json.minisig"), signature).unwrap();
}

fn key_id(dir: &Path) -> String {
    secret(dir).key_id().to_string()
}

#[test]
fn a_keyring_that_vouches_for_itself_is_refused_by_readers_and_writers() {
    let lab = Lab::new();
    let real = lab.path("keys");
    lab.publish_to_alpha("1.0.0");
    let alpha_before = fs::read(lab.store().join("channels/alpha.json")).unwrap();
    let alpha_signature = fs::read(lab.store().join("channels/alpha.json.minisig")).unwrap();
    // Someone who can write files into the store lists their key beside
    // the real one, as root and signer, signed by their key alone.
    let attacker = secret(&lab.new_key("attacker"));
    let entries = |keys: &[&SecretKey]| Role {
        threshold: 1,
        keys: keys
            .iter()
            .map(|k| KeyringEntry::new(&k.public_key(), "2026-12-01T00:00:00Z", "x"))
            .collect(),
    };
    let keyring = KeyringDocument {
        schema: boxcar_signing::keyring::KEYRING_SCHEMA,
        serial: 1,
        issued_at: "2026-12-01T00:00:00Z".into(),
        expires_at: "2036-12-01T00:00:00Z".into(),
        root: entries(&[&secret(&real), &attacker]),
        signing: entries(&[&secret(&real), &attacker]),
    };
    let bytes = documents::to_bytes(&keyring);
    let signature = sign_keyring(&bytes, &[&attacker as &dyn Sign]).unwrap();
    for path in ["keys.json", "keys/1.json"] {
        let file = lab.store().join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, &bytes).unwrap();
        fs::write(format!("{}.minisig", file.display()), &signature).unwrap();
    }
    forge_channel(&lab, &attacker);
    let planted = fs::read(lab.store().join("channels/alpha.json")).unwrap();
    // The real writer does not sign on top of it...
    lab.publish(&lab.build("1.1.0", true), Some("alpha"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "no version of the keyring is signed by the keys you pinned",
        ));
    assert_eq!(
        fs::read(lab.store().join("channels/alpha.json")).unwrap(),
        planted
    );
    // ...and readers refuse the store.
    download(&lab, &real, "state.json")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no version of the keyring"));
    // Once the planted files are gone, the writer does not take the
    // attacker's serial either (it was never verified).
    fs::remove_dir_all(lab.store().join("keys")).unwrap();
    for name in ["keys.json", "keys.json.minisig"] {
        fs::remove_file(lab.store().join(name)).unwrap();
    }
    fs::write(lab.store().join("channels/alpha.json"), &alpha_before).unwrap();
    fs::write(
        lab.store().join("channels/alpha.json.minisig"),
        &alpha_signature,
    )
    .unwrap();
    lab.publish(&lab.build("1.1.0", true), Some("alpha"))
        .assert()
        .success()
        .stdout(predicate::str::contains("(serial 2)"));
}

#[test]
fn a_planted_channel_document_is_never_built_upon() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    forge_channel(&lab, &secret(&lab.new_key("attacker")));
    lab.publish(&lab.build("1.1.0", true), Some("alpha"))
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("no writer builds on it")
                .and(predicate::str::contains("which is not trusted")),
        );
}

#[test]
fn planned_rotation_of_the_signing_key() {
    let lab = Lab::new();
    let (old, root, new) = (lab.path("keys"), lab.new_key("root"), lab.new_key("new"));
    lab.init_keyring(&root);
    publish_with(&lab, "1.0.0", &old, &root).assert().success();
    download(&lab, &root, "state.json").assert().success();
    // The procedure: add the new key, re-sign everything with it, publish
    // with it, then retire the old one.
    lab.keys("add", &[&root], &["--public", &public(&new)])
        .assert()
        .success();
    writer(&lab, "renew", &new, &root, &["--all"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "renewed releases/1.0.0/release.json",
        ));
    lab.keys("remove", &[&root], &["--key-id", &key_id(&old)])
        .assert()
        .success();
    publish_with(&lab, "1.1.0", &new, &root).assert().success();
    verify(&lab, &root)
        .assert()
        .success()
        .stdout(predicate::str::contains("keys.json: serial 3"));
    download(&lab, &root, "state.json")
        .assert()
        .success()
        .stdout(predicate::str::contains("Boxcar Linux 1.1.0"));
    // The retired key signs nothing anybody accepts, writers included.
    publish_with(&lab, "1.2.0", &old, &root)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not a signing key"));
}

#[test]
fn after_a_key_is_compromised_its_new_documents_are_refused_by_clients_that_followed() {
    // A store signed by one key, which every client pinned, until that key
    // leaks. The procedure: a keyring whose first root is the leaked key
    // (so clients that pinned it can follow), a new root and a new signing
    // key, everything re-signed, the leaked key removed.
    let lab = Lab::new();
    let (leaked, root, signer) = (lab.path("keys"), lab.new_key("root"), lab.new_key("signer"));
    lab.publish_to_alpha("1.0.0");
    download(&lab, &leaked, "state.json").assert().success();
    let signing = public(&signer);
    lab.keys(
        "init",
        &[&leaked],
        &["--signing", &public(&leaked), "--signing", &signing],
    )
    .assert()
    .success();
    lab.keys(
        "add",
        &[&leaked, &root],
        &["--public", &public(&root), "--role", "root"],
    )
    .assert()
    .success();
    writer(&lab, "renew", &signer, &root, &["--all"])
        .assert()
        .success();
    lab.keys("remove", &[&root], &["--key-id", &key_id(&leaked)])
        .assert()
        .success();
    // The client that pinned only the leaked key follows the rotation...
    download(&lab, &leaked, "state.json").assert().success();
    // ...and refuses what the leaked key signs from now on.
    forge_channel(&lab, &secret(&leaked));
    download(&lab, &leaked, "state.json")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("which is not trusted"));
    verify(&lab, &leaked)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("FAIL  channels/alpha.json"));
    // Dropping the keyring to go back to the leaked key's world is refused
    // by a client that has seen it.
    fs::remove_file(lab.store().join("keys.json")).unwrap();
    download(&lab, &leaked, "state.json")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("dropped its keyring"));
}

#[test]
fn a_root_rotation_must_be_signed_by_both_roots() {
    let lab = Lab::new();
    let (first, second) = (lab.new_key("root1"), lab.new_key("root2"));
    lab.init_keyring(&first);
    let new_root = public(&second);
    lab.keys("add", &[&first], &["--public", &new_root, "--role", "root"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "must sign the keyring that adds it",
        ));
    lab.keys(
        "add",
        &[&first, &second],
        &["--public", &new_root, "--role", "root"],
    )
    .assert()
    .success();
    // A threshold of two: one root alone can no longer change the keyring.
    lab.keys("renew", &[&first, &second], &["--threshold", "2"])
        .assert()
        .success();
    lab.keys("renew", &[&first], &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("needs 2 signatures, has 1"));
}

#[test]
fn a_reader_pinned_three_rotations_back_walks_forward_and_the_newest_root_alone_works() {
    let lab = Lab::new();
    let roots: Vec<PathBuf> = (1..=4).map(|n| lab.new_key(&format!("root{n}"))).collect();
    lab.init_keyring(&roots[0]);
    for pair in roots.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        lab.keys(
            "add",
            &[old, new],
            &["--public", &public(new), "--role", "root"],
        )
        .assert()
        .success();
        lab.keys("remove", &[new], &["--key-id", &key_id(old)])
            .assert()
            .success();
    }
    writer(&lab, "publish", &lab.path("keys"), &roots[3], &[])
        .args(["--build", lab.build("1.0.0", true).to_str().unwrap()])
        .args(["--channel", "alpha"])
        .assert()
        .success();
    for pinned in [&roots[0], &roots[3]] {
        verify(&lab, pinned)
            .assert()
            .success()
            .stdout(predicate::str::contains("keys.json: serial 7"));
    }
    download(&lab, &roots[0], "old.json").assert().success();
    // A missing version in the middle breaks the walk for the old reader,
    // not for the one that pinned the current root.
    fs::remove_file(lab.store().join("keys/4.json")).unwrap();
    verify(&lab, &roots[0]).assert().code(1);
    verify(&lab, &roots[3]).assert().success();
}

#[test]
fn renewal_keeps_a_quiet_channel_alive_before_and_after_it_expires() {
    let lab = Lab::new();
    lab.set_channel("alpha", "valid-for", "\"1h\"");
    lab.publish_to_alpha("1.0.0");
    let key = lab.path("keys");
    let renew = |later: &str| {
        let mut command = lab.boxcar(&["renew", "--store", lab.store().to_str().unwrap()]);
        command.args(["--key", key.join("boxcar.key").to_str().unwrap()]);
        at(command, later)
    };
    renew("+0")
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing is due"));
    // Ten minutes left: less than a quarter of its validity, verify warns.
    at(lab.verify(), "+50m")
        .assert()
        .success()
        .stdout(predicate::str::contains("warn  channels/alpha.json"));
    renew("+50m")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "renewed channels/alpha.json: serial 1 -> 2",
        ));
    // Renewed at 50 minutes for an hour: expired at two hours.
    at(download(&lab, &key, "state.json"), "+2h")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("expired at"));
    renew("+2h")
        .assert()
        .success()
        .stdout(predicate::str::contains("serial 2 -> 3"));
    at(download(&lab, &key, "state.json"), "+2h")
        .assert()
        .success();
    at(lab.verify(), "+2h")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "ok    channels/alpha.json: serial 3, points at 1.0.0",
        ));
}

/// `command` run with its clock moved `later` (libfaketime's offsets:
/// "+50m", "+2h"), so that a test of expiry waits for nothing and a busy
/// machine cannot make it late.
fn at(mut command: assert_cmd::Command, later: &str) -> assert_cmd::Command {
    let library = Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    assert!(
        library.is_file(),
        "{} is missing: ci/setup-host installs faketime",
        library.display()
    );
    command.env("LD_PRELOAD", library).env("FAKETIME", later);
    command
}

/// Everything stderr said.
fn stderr_of(command: &mut assert_cmd::Command) -> (bool, String) {
    let output = command.output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), said)
}

#[test]
fn a_keyring_change_killed_before_keys_json_followed_is_finished_by_the_next() {
    let lab = Lab::new();
    let (root, spare) = (lab.new_key("root"), lab.new_key("spare"));
    // A first keyring killed after keys/1.json: init again finishes it.
    let (signing, spare_public) = (lab.public_key(), public(&spare));
    let init = &["--signing", signing.as_str(), "--signing", &spare_public];
    lab.keys("init", &[&root], init)
        .env("BOXCAR_CRASH_AT", "keyring-before-current")
        .assert()
        .failure();
    assert!(lab.store().join("keys/1.json").exists() && !lab.store().join("keys.json").exists());
    let (ok, said) = stderr_of(&mut lab.keys("init", &[&root], init));
    assert!(!ok, "{said}");
    assert!(
        said.contains("finishing it")
            && said.contains("keys.json is now serial 1")
            && said.contains("was not made"),
        "{said}"
    );
    // The emergency: the spare signing key leaked, and its removal is
    // killed between the two writes.
    let leaked = key_id(&spare);
    lab.keys("remove", &[&root], &["--key-id", &leaked])
        .env("BOXCAR_CRASH_AT", "keyring-before-current")
        .assert()
        .failure();
    assert_eq!(read_json(&lab.store().join("keys.json"))["serial"], 1);
    assert!(lab.store().join("keys/2.json").exists());
    // Running it again finishes the removal and says so...
    let (ok, said) = stderr_of(&mut lab.keys("remove", &[&root], &["--key-id", &leaked]));
    assert!(!ok && said.contains("keys.json is now serial 2"), "{said}");
    let keyring = read_json(&lab.store().join("keys.json"));
    assert!(!keyring.to_string().contains(&leaked), "{keyring:#}");
    // ...and keyring changes work again.
    lab.keys("renew", &[&root], &[])
        .assert()
        .success()
        .stdout(predicate::str::contains("serial 3"));
    publish_with(&lab, "1.0.0", &lab.path("keys"), &root)
        .assert()
        .success();
    verify(&lab, &root)
        .assert()
        .success()
        .stdout(predicate::str::contains("keys.json: serial 3"));
}

#[test]
fn a_next_keyring_version_that_is_not_the_successor_is_refused_with_what_to_do() {
    let lab = Lab::new();
    let (root, attacker) = (lab.new_key("root"), lab.new_key("attacker"));
    lab.init_keyring(&root);
    // keys/2.json planted by someone who can write files into the store,
    // listing their key, signed by it alone.
    let mut keyring: KeyringDocument =
        serde_json::from_value(read_json(&lab.store().join("keys.json"))).unwrap();
    keyring.serial = 2;
    let key = secret(&attacker);
    keyring.signing.keys.push(KeyringEntry::new(
        &key.public_key(),
        "2026-12-01T00:00:00Z",
        "x",
    ));
    let bytes = documents::to_bytes(&keyring);
    let signature = sign_keyring(&bytes, &[&key as &dyn Sign]).unwrap();
    fs::write(lab.store().join("keys/2.json"), &bytes).unwrap();
    fs::write(lab.store().join("keys/2.json.minisig"), &signature).unwrap();
    let before = fs::read(lab.store().join("keys.json")).unwrap();
    let (ok, said) = stderr_of(&mut lab.keys("renew", &[&root], &[]));
    assert!(!ok, "{said}");
    assert!(
        said.contains("keys/2.json exists already, but it is not the successor of")
            && said.contains("move it and its signature out of the store"),
        "{said}"
    );
    assert_eq!(fs::read(lab.store().join("keys.json")).unwrap(), before);
    // Once it is moved away, the change goes through.
    fs::remove_file(lab.store().join("keys/2.json")).unwrap();
    fs::remove_file(lab.store().join("keys/2.json.minisig")).unwrap();
    lab.keys("renew", &[&root], &[])
        .assert()
        .success()
        .stdout(predicate::str::contains("serial 2"));
}
