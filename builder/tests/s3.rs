//! Stores in S3-compatible object storage, against real servers started
//! here on loopback: s3s-fs (a server that keeps objects on disk, with
//! authentication) and moto (AWS's semantics). Both are installed, pinned,
//! by ci/setup-host.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use common::s3server::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use common::Lab;
use predicates::prelude::*;

/// A lab whose store is `s3://boxcar/PREFIX` on `server`.
struct S3Lab<'a> {
    lab: Lab,
    server: &'a S3Server,
    store: String,
    /// The store's root key pair (lab/root/boxcar.{key,pub}).
    root: PathBuf,
}

impl<'a> S3Lab<'a> {
    fn new(server: &'a S3Server, prefix: &str) -> Self {
        let lab = Lab::new();
        let root = lab.new_key("root");
        Self {
            lab,
            server,
            store: format!("s3://{BUCKET}/{prefix}"),
            root,
        }
    }

    fn root_public(&self) -> String {
        self.root.join("boxcar.pub").display().to_string()
    }

    /// `boxcar ARGS` with the server's endpoint and credentials.
    fn boxcar(&self, args: &[&str]) -> Command {
        let mut command = self.lab.boxcar(args);
        command
            .env("AWS_ENDPOINT_URL", &self.server.endpoint)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("BOXCAR_TRUSTED_KEYS", self.root_public());
        command
    }

    fn init_keyring(&self) {
        let public = self.lab.public_key();
        self.boxcar(&["keys", "init", "--store", &self.store])
            .arg("--root")
            .arg(self.root.join("boxcar.key"))
            .args(["--signing", &public])
            .assert()
            .success();
    }

    fn publish(&self, build: &Path, channel: &str) -> Command {
        let key = self.lab.key();
        let mut command = self.boxcar(&["publish", "--store", &self.store, "--key", &key]);
        command
            .arg("--build")
            .arg(build)
            .args(["--channel", channel]);
        command
    }

    fn promote(&self, to: &str, extra: &[&str]) -> Command {
        let key = self.lab.key();
        let mut command =
            self.boxcar(&["promote", "--store", &self.store, "--key", &key, "--to", to]);
        command.args(extra);
        command
    }

    fn verify(&self) -> Command {
        let key = self.root_public();
        self.boxcar(&["verify", "--store", &self.store, "--key", &key])
    }

    /// The store's URL on the bucket's website (see [`S3Server::website`]).
    fn public_url(&self, website: &common::s3server::Website) -> String {
        let prefix = self.store.trim_start_matches(&format!("s3://{BUCKET}/"));
        format!("{}/{prefix}", website.url)
    }
}

#[test]
fn publish_promote_verify_and_download_through_s3s_fs() {
    let server = S3Server::s3s_fs();
    let lab = S3Lab::new(&server, "store");
    lab.init_keyring();
    let build = lab.lab.full_build("1.0.0", 12 << 20);
    publish_in_parts(&lab, &build).assert().success();
    lab.promote("beta", &[]).assert().success();
    let verified = lab.verify().output().unwrap();
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{report}");
    assert!(
        report.contains("channels/beta.json: serial 1, points at 1.0.0"),
        "{report}"
    );
    assert!(
        report.contains("releases/1.0.0/release.json: signed; 11 files match"),
        "{report}"
    );
    // What s3s-fs keeps on disk is the bucket's website tree: objects at
    // their keys, byte for byte. Stock tools read it there.
    let release = server.dir.path().join(BUCKET).join("store/releases/1.0.0");
    common::assert_sums_check(&release);
    let minisign = Process::new("minisign")
        .args(["-V", "-p", &lab.lab.public_key(), "-m"])
        .arg(release.join("release.json"))
        .output()
        .unwrap();
    assert!(minisign.status.success(), "minisign refused release.json");
    // A release is immutable: publishing another build as 1.0.0 is refused.
    let other = lab.lab.full_build("1.0.0-other", 1 << 20);
    std::fs::rename(&other, lab.lab.path("other")).unwrap();
    let rebuilt = lab.lab.path("other");
    let mut records = vec![rebuilt.join("build.json")];
    for platform in ["qemu", "vmware", "aws", "metal", "pxe"] {
        records.push(
            rebuilt
                .join("evidence")
                .join(platform)
                .join("evidence.json"),
        );
    }
    for record in records {
        let text = std::fs::read_to_string(&record)
            .unwrap()
            .replace("1.0.0-other", "1.0.0");
        std::fs::write(&record, text).unwrap();
    }
    let refused = lab.publish(&rebuilt, "alpha").output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("never replaced"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    lab.verify().assert().success();
}

/// Each boot-test job pulls build.json, its platform's artifacts and the
/// Secure Boot certificate it enrolls, each checked against build.json: a
/// certificate swapped in staging is refused and leaves nothing behind.
#[test]
fn a_boot_test_job_pulls_its_platform_and_the_secure_boot_certificate() {
    let server = S3Server::s3s_fs();
    let lab = S3Lab::new(&server, "staging");
    let build = lab.lab.build("2.0.0", false);
    common::sign_for_secure_boot(&build);
    let stage = format!("s3://{BUCKET}/staging/2.0.0");
    let build_arg = build.display().to_string();
    lab.boxcar(&[
        "--quiet", "stage", "push", "--build", &build_arg, "--to", &stage,
    ])
    .assert()
    .success();
    let pull = |to: &Path| {
        lab.boxcar(&["stage", "pull", "--from", &stage, "--platform", "qemu"])
            .arg("--to")
            .arg(to)
            .output()
            .unwrap()
    };
    let pulled = lab.lab.path("qemu-job");
    let output = pull(&pulled);
    assert!(output.status.success(), "{output:?}");
    let mut names: Vec<String> = std::fs::read_dir(&pulled)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["boxcar-2.0.0-qemu.qcow2", "build.json", "secure-boot.crt"]
    );
    assert_eq!(
        std::fs::read(pulled.join("secure-boot.crt")).unwrap(),
        std::fs::read(build.join("secure-boot.crt")).unwrap()
    );
    std::fs::write(
        server.object_file("staging/2.0.0/secure-boot.crt"),
        "someone else's certificate",
    )
    .unwrap();
    let refused_dir = lab.lab.path("refused-job");
    let refused = pull(&refused_dir);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is not the build's"), "{stderr}");
    assert!(!refused_dir.join("secure-boot.crt").exists());
}

#[test]
fn readers_download_from_the_bucket_without_credentials() {
    let server = S3Server::s3s_fs();
    let lab = S3Lab::new(&server, "pub/store");
    lab.init_keyring();
    let build = lab.lab.full_build("2.0.0", 1 << 20);
    lab.publish(&build, "alpha").assert().success();
    let website = server.website();
    let url = lab.public_url(&website);
    let out = lab.lab.path("downloads");
    let state = lab.lab.path("seen.json");
    // No endpoint, no credentials: the client library over plain HTTP.
    let downloaded = common::boxcar()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["download", "--store", &url])
        .args(["--key", &lab.root_public(), "--channel", "alpha"])
        .args(["--platform", "metal", "--decompress", "--to"])
        .arg(&out)
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&downloaded.stderr).into_owned();
    let verified = common::boxcar()
        .args(["verify", "--store", &url, "--key", &lab.root_public()])
        .output()
        .unwrap();
    drop(website);
    assert!(downloaded.status.success(), "{stderr}");
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let expected = std::fs::read(build.join("metal.raw.expected")).unwrap();
    let got = std::fs::read(out.join("boxcar-2.0.0-metal.raw")).unwrap();
    assert!(got == expected, "the decompressed download differs");
}

#[test]
fn eight_writers_racing_to_promote_each_get_their_own_serial() {
    // On moto, whose conditional writes are atomic as AWS's are. s3s-fs
    // 0.14.1 checks a condition and then writes, so under load two racing
    // writers can both pass the check (this test found it): it serves a
    // single writer, such as a pipeline's one publish job.
    race_eight_promotions(&S3Server::moto());
}

/// Eight writers promote eight releases to beta at once: each that lands
/// holds a serial no other holds, the channel's history is exactly theirs,
/// and the store verifies.
fn race_eight_promotions(server: &S3Server) {
    let lab = S3Lab::new(server, "race");
    lab.init_keyring();
    let versions: Vec<String> = (1..=8).map(|n| format!("3.{n}.0")).collect();
    for version in &versions {
        let build = lab.lab.build(version, true);
        lab.publish(&build, "alpha").assert().success();
    }
    // Eight writers at once, each moving beta to another release.
    let children: Vec<_> = versions
        .iter()
        .map(|version| {
            Process::new(env!("CARGO_BIN_EXE_boxcar"))
                .args(["--project", lab.lab.path("project").to_str().unwrap()])
                .args(["promote", "--store", &lab.store, "--key", &lab.lab.key()])
                .args(["--to", "beta", "--version", version, "--allow-downgrade"])
                .args(["--quiet", "--json"])
                .env("AWS_ENDPOINT_URL", &lab.server.endpoint)
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("BOXCAR_TRUSTED_KEYS", lab.root_public())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut won = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            won.push(result["promotion"]["next_serial"].as_u64().unwrap());
        } else {
            // A writer that gives up says so and wrote nothing.
            assert!(stderr.contains("gave up after"), "{stderr}");
        }
    }
    // Every writer that succeeded holds a serial no other writer holds, and
    // the channel's history is exactly those serials, in order.
    won.sort();
    let mut unique = won.clone();
    unique.dedup();
    assert_eq!(won, unique, "two writers won the same serial");
    assert!(!won.is_empty());
    let channel = read_object(&lab, "channels/beta.json");
    let history: Vec<u64> = channel["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(history, won, "the history is not the winners' serials");
    eprintln!("{} of 8 racing writers landed, serials {won:?}", won.len());
    assert_eq!(channel["serial"].as_u64(), won.last().copied());
    lab.verify().assert().success();
}

/// A JSON document of the lab's store: from the tree s3s-fs keeps, or
/// through moto with a request curl signs.
fn read_object(lab: &S3Lab, path: &str) -> serde_json::Value {
    let prefix = lab.store.trim_start_matches("s3://");
    let on_disk = lab.server.dir.path().join(prefix).join(path);
    if lab.server.dir.path().join(BUCKET).is_dir() {
        return serde_json::from_slice(&std::fs::read(on_disk).unwrap()).unwrap();
    }
    let output = Process::new("curl")
        .args(["-sf", "--aws-sigv4", "aws:amz:us-east-1:s3"])
        .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
        .arg(format!("{}/{prefix}/{path}", lab.server.endpoint))
        .output()
        .unwrap();
    assert!(output.status.success(), "reading {path}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Gives the lab a keyring, publishes `versions` to alpha (the first also
/// promoted to beta), then runs a promotion to beta with `args` that dies
/// with beta.json replaced and its signature still pending.
fn kill_a_promotion_halfway(lab: &S3Lab, versions: &[&str], args: &[&str]) {
    lab.init_keyring();
    for version in versions {
        lab.publish(&lab.lab.build(version, true), "alpha")
            .assert()
            .success();
        if version == &versions[0] {
            lab.promote("beta", &[]).assert().success();
        }
    }
    let killed = lab
        .promote("beta", args)
        .env("BOXCAR_CRASH_AT", "document-half-replaced")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the promotion was meant to die");
}

#[test]
fn a_writer_killed_between_a_document_and_its_signature_is_finished_by_the_next() {
    let server = S3Server::moto();
    let lab = S3Lab::new(&server, "halfway");
    kill_a_promotion_halfway(&lab, &["5.0.0", "5.1.0"], &[]);
    // The new beta.json is in place, its signature is not: readers refuse it.
    let verify = lab.verify().output().unwrap();
    assert!(!verify.status.success());
    let repaired = lab
        .boxcar(&["repair", "--store", &lab.store])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&repaired.stdout);
    assert!(repaired.status.success(), "{said}");
    assert!(
        said.contains("put the signature of s3://boxcar/halfway/channels/beta.json in place"),
        "{said}"
    );
    lab.verify().assert().success();
    assert_eq!(read_object(&lab, "channels/beta.json")["version"], "5.1.0");
}

/// Builds `version` (16 MiB disks) and publishes it to alpha in 5 MiB
/// parts, killed once its first part is sent; returns the build.
fn kill_a_publish_after_its_first_part(lab: &S3Lab, version: &str) -> PathBuf {
    lab.init_keyring();
    let build = lab.lab.full_build(version, 16 << 20);
    let killed = publish_in_parts(lab, &build)
        .env("BOXCAR_CRASH_AT", "s3-part-sent")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the publish was meant to die");
    build
}

/// Publishes `build` to alpha in 5 MiB parts.
fn publish_in_parts(lab: &S3Lab, build: &Path) -> Command {
    let mut command = lab.publish(build, "alpha");
    command.env("BOXCAR_S3_PART_MIB", "5");
    command
}

#[test]
fn a_publish_killed_mid_upload_resumes_where_it_stopped() {
    let server = S3Server::moto();
    let lab = S3Lab::new(&server, "resume");
    let build = kill_a_publish_after_its_first_part(&lab, "4.0.0");
    let parts_before = server.requests().matches("partNumber=").count();
    assert_eq!(parts_before, 1, "one part went up before the crash");
    // Readers see nothing of it: no release, no channel.
    lab.verify().assert().failure();
    publish_in_parts(&lab, &build).assert().success();
    // 16 MiB disks in 5 MiB parts: 4 parts each for qemu, vmware, aws and
    // the pxe initrd and kernel (80 MiB, 20 parts); the part sent before
    // the crash was not sent again.
    let parts = server.requests().matches("partNumber=").count();
    assert_eq!(parts, 20, "{}", server.requests());
    lab.verify().assert().success();
}

/// An object an interrupted publish left, whose bytes someone with write
/// access changed while keeping its sha256 metadata: the publish that
/// resumes reads it back instead of taking the metadata's word, and stops.
#[test]
fn a_resumed_publish_reads_back_what_it_would_take_as_already_there() {
    let server = S3Server::s3s_fs();
    let lab = S3Lab::new(&server, "meddled");
    lab.init_keyring();
    let build = lab.lab.full_build("4.1.0", 1 << 20);
    let killed = lab
        .publish(&build, "alpha")
        .env("BOXCAR_CRASH_AT", "publish-copying")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the publish was meant to die");
    let release_dir = server.object_file("meddled/releases/4.1.0");
    let copied: Vec<PathBuf> = std::fs::read_dir(&release_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && !path.to_string_lossy().contains(".s3s"))
        .collect();
    assert_eq!(copied.len(), 1, "one file was copied: {copied:?}");
    let mut bytes = std::fs::read(&copied[0]).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&copied[0], bytes).unwrap();
    let name = copied[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    lab.publish(&build, "alpha").assert().failure().stderr(
        predicate::str::contains(name).and(predicate::str::contains("but it holds others")),
    );
    lab.verify().assert().failure();
}

#[test]
fn a_server_that_ignores_conditional_writes_is_refused() {
    let server = S3Server::moto();
    let proxy = Proxy::start(&server.endpoint, Meddling::DropConditions);
    let lab = S3Lab::new(&server, "careless");
    let root = &lab.root;
    let public = lab.lab.public_key();
    let refused = lab
        .boxcar(&["keys", "init", "--store", &lab.store])
        .env("AWS_ENDPOINT_URL", &proxy.endpoint)
        .arg("--root")
        .arg(root.join("boxcar.key"))
        .args(["--signing", &public])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("does not honour conditional writes"),
        "{stderr}"
    );
    // Nothing was written but the probe, which is gone again.
    let listing = Process::new("curl")
        .args(["-sf", &format!("{}/{BUCKET}?list-type=2", server.endpoint)])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(!listing.contains("<Key>"), "{listing}");
    // The same server without the proxy is accepted.
    lab.init_keyring();
}

#[test]
fn a_writer_asks_again_when_the_server_fails_a_listing() {
    let server = S3Server::moto();
    let proxy = Proxy::start(&server.endpoint, Meddling::FailListings(2));
    let lab = S3Lab::new(&server, "busy");
    lab.init_keyring();
    let build = lab.lab.build("1.0.0", true);
    // Publishing first lists interrupted writers' leftovers: that listing
    // fails twice, and the third try is answered.
    lab.publish(&build, "alpha")
        .env("AWS_ENDPOINT_URL", &proxy.endpoint)
        .assert()
        .success();
    assert!(proxy.failed() >= 2, "the proxy failed no listing");
    lab.verify().assert().success();
    // A server that keeps failing is asked four times, then the writer
    // stops, having written nothing, and says what the server answered.
    let broken = Proxy::start(&server.endpoint, Meddling::FailListings(usize::MAX));
    lab.promote("beta", &[])
        .env("AWS_ENDPOINT_URL", &broken.endpoint)
        .assert()
        .failure()
        .stderr(predicates::str::contains("500 Internal Server Error"));
    assert_eq!(broken.failed(), 4);
    lab.verify().assert().success();
}

#[test]
fn a_publisher_that_loses_the_race_for_its_version_leaves_the_winners_release_whole() {
    let server = S3Server::moto();
    let lab = S3Lab::new(&server, "race");
    lab.init_keyring();
    let build = lab.lab.build("1.0.0", true);
    lab.publish(&build, "alpha").assert().success();
    // A second publisher of the same build, the same version, which
    // started before the first had written release.json: every check it
    // makes of whether the release exists says no, until its own create of
    // release.json is refused.
    // Its release.json differs by its publication time, to the second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let late = Proxy::start(&server.endpoint, Meddling::HideReleases);
    lab.publish(&build, "alpha")
        .env("AWS_ENDPOINT_URL", &late.endpoint)
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "another publisher of this version got there first",
        ));
    assert!(late.failed() > 0, "the proxy hid nothing");
    // The winner's release.json still has the winner's signature.
    lab.verify().assert().success();
}

#[test]
fn a_signature_settled_while_another_writer_replaced_its_document_is_put_back() {
    let server = S3Server::moto();
    let lab = S3Lab::new(&server, "settle");
    kill_a_promotion_halfway(&lab, &["5.0.0", "5.1.0", "5.2.0"], &["--version", "5.1.0"]);
    // A repair settles that signature; between its reads of beta.json and
    // of the signature it replaces, another writer finishes the pair and
    // promotes 5.2.0, document and signature.
    let other = Arc::new(Mutex::new(Some(lab.promote("beta", &[]))));
    let meddling = Meddling::WriterBeforeRead("/channels/beta.json.minisig", other);
    let proxy = Proxy::start(&server.endpoint, meddling);
    lab.boxcar(&["repair", "--store", &lab.store])
        .env("AWS_ENDPOINT_URL", &proxy.endpoint)
        .assert()
        .success();
    assert_eq!(proxy.failed(), 1, "the other writer did not run");
    // 5.2.0's beta.json keeps its own signature.
    assert_eq!(read_object(&lab, "channels/beta.json")["version"], "5.2.0");
    lab.verify().assert().success();
}

/// What a proxy in front of a real server does to the requests it relays.
#[derive(Clone)]
enum Meddling {
    /// Drops `If-None-Match` and `If-Match` from every request: what a
    /// server (or a middlebox) that ignores conditional writes looks like
    /// to a client.
    DropConditions,
    /// Answers the first `n` listings 500 Internal Server Error, as moto
    /// did under load and as S3 may (it asks clients to retry).
    FailListings(usize),
    /// Answers every read of a release.json 404: what a publisher that
    /// started before another publisher of its version finished sees.
    HideReleases,
    /// Before relaying the first GET of a path ending in `.0`, runs `.1`
    /// (another writer's whole command) to its end: the other writer
    /// slipped in between two reads of this one.
    WriterBeforeRead(&'static str, Arc<Mutex<Option<Command>>>),
}

/// An HTTP proxy on loopback, relaying to a real server with `Meddling`.
struct Proxy {
    endpoint: String,
    /// How many requests it failed on purpose.
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    fn start(upstream: &str, meddling: Meddling) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = failed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, counter) = (upstream.clone(), counter.clone());
                let meddling = meddling.clone();
                std::thread::spawn(move || relay(client, &upstream, &meddling, &counter));
            }
        });
        Self { endpoint, failed }
    }

    fn failed(&self) -> usize {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Relays one request as `meddling` says, then closes.
fn relay(
    mut client: TcpStream,
    upstream: &str,
    meddling: &Meddling,
    failed: &std::sync::atomic::AtomicUsize,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    if let Meddling::WriterBeforeRead(suffix, writer) = meddling {
        let request = text.lines().next().unwrap_or_default();
        let path = request.split(' ').nth(1).unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        if request.starts_with("GET ") && path.ends_with(suffix) {
            if let Some(mut command) = writer.lock().unwrap().take() {
                failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let output = command.output().unwrap();
                assert!(
                    output.status.success(),
                    "the other writer failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    if let Meddling::FailListings(n) = *meddling {
        let listing = text
            .lines()
            .next()
            .is_some_and(|l| l.contains("list-type=2"));
        if listing && failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
            let _ = client.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    }
    if let Meddling::HideReleases = meddling {
        let request = text.lines().next().unwrap_or_default();
        let path = request.split(' ').nth(1).unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        let read = request.starts_with("HEAD ") || request.starts_with("GET ");
        if read && path.ends_with("/release.json") {
            failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = client.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    }
    let mut kept = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        let condition = lower.starts_with("if-none-match:") || lower.starts_with("if-match:");
        if (condition && matches!(meddling, Meddling::DropConditions))
            || lower.starts_with("connection:")
        {
            continue;
        }
        kept.push_str(line);
        kept.push_str("\r\n");
    }
    kept.push_str("Connection: close\r\n\r\n");
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let length = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if client.read_exact(&mut body).is_err() {
        return;
    }
    let _ = server.write_all(kept.as_bytes());
    let _ = server.write_all(&body);
    let mut answer = Vec::new();
    let _ = server.read_to_end(&mut answer);
    let _ = client.write_all(&answer);
}

/// A part an interrupted publish sent, replaced through the S3 API by
/// someone with write access, who also put its ETag into the upload record
/// (which keeps the sha256 of the part the publisher sent): the resumed
/// upload reuses it, so the object it completes is read back, found wrong,
/// and removed with its record; the next publish sends it whole.
#[test]
fn a_resumed_upload_whose_parts_were_changed_is_removed_and_sent_again() {
    use boxcar::objectstore::bucket::{Bucket, Condition};
    use boxcar::objectstore::location::S3Location;

    let server = S3Server::moto();
    let lab = S3Lab::new(&server, "parts");
    let build = kill_a_publish_after_its_first_part(&lab, "4.2.0");
    let meddler = Bucket::new(S3Location {
        endpoint: server.endpoint.parse().unwrap(),
        region: "us-east-1".to_owned(),
        bucket: BUCKET.to_owned(),
        prefix: "parts/".to_owned(),
        path_style: true,
        credentials: rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY),
    })
    .unwrap();
    let records = meddler.list(".uploads/").unwrap();
    assert_eq!(records.len(), 1, "one upload under way");
    let record_path = records[0].path.clone();
    let text = meddler.get(&record_path).unwrap().unwrap().bytes;
    let mut record: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let path = record["path"].as_str().unwrap().to_owned();
    let upload_id = record["upload_id"].as_str().unwrap().to_owned();
    let etag = meddler
        .upload_part(&path, &upload_id, 1, vec![0x5a; 5 << 20])
        .unwrap();
    record["parts"][0]["etag"] = serde_json::json!(etag);
    meddler
        .put(
            &record_path,
            serde_json::to_vec(&record).unwrap(),
            &Condition::None,
        )
        .unwrap();
    publish_in_parts(&lab, &build)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "parts of the upload that was resumed were changed",
        ));
    publish_in_parts(&lab, &build).assert().success();
    lab.verify().assert().success();
}
