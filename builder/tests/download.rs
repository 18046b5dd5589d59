//! `boxcar download` through the real binary, against a real HTTP server
//! started by the test on loopback, which misbehaves on purpose: it closes
//! connections mid-transfer, ignores Range requests, answers 404, and
//! sends slowly or not at all. Every failure must leave nothing under the
//! file's final name.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use predicates::prelude::*;

/// How the server misbehaves.
#[derive(Clone, Debug, Default)]
struct Behaviour {
    /// Close the next artifact response after this many body bytes.
    close_after: Option<u64>,
    /// Answer every Range request with the whole file (200).
    ignore_range: bool,
    /// Stop sending (without closing) after this many body bytes.
    stall_after: Option<u64>,
    /// Wait this long between 64 KiB pieces.
    slow: Option<Duration>,
}

/// A request the server saw: the path and its Range header.
type Seen = (String, Option<String>);

struct Server {
    port: u16,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (b, s) = (Arc::clone(&behaviour), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, b, s) = (root.clone(), Arc::clone(&b), Arc::clone(&s));
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &b, &s);
                });
            }
        });
        Self {
            port,
            behaviour,
            seen,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn behave(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn requests_for(&self, suffix: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.ends_with(suffix))
            .cloned()
            .collect()
    }
}

fn serve(
    mut stream: TcpStream,
    root: &Path,
    behaviour: &Mutex<Behaviour>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let (path, headers) = read_request(&stream)?;
    let range = headers
        .into_iter()
        .find(|(name, _)| name == "range")
        .map(|(_, value)| value);
    seen.lock().unwrap().push((path.clone(), range.clone()));
    let file = root.join(&path);
    if path.contains("..") || !file.is_file() {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let mut content = Vec::new();
    fs::File::open(&file)?.read_to_end(&mut content)?;
    let is_artifact =
        path.starts_with("releases/") && !path.ends_with(".json") && !path.ends_with(".minisig");
    let mut b = behaviour.lock().unwrap().clone();
    if is_artifact {
        // A close happens once: the retry (or the next run) gets through.
        behaviour.lock().unwrap().close_after = None;
    } else {
        b = Behaviour::default();
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| !b.ignore_range);
    let (status, body) = match start {
        Some(start) => (
            format!(
                "206 Partial Content\r\nContent-Range: bytes {start}-{}/{}",
                content.len() - 1,
                content.len()
            ),
            &content[start..],
        ),
        None => ("200 OK".to_owned(), &content[..]),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    let mut sent = 0u64;
    for piece in body.chunks(64 * 1024) {
        if let Some(limit) = b.close_after {
            if sent + piece.len() as u64 > limit {
                stream.write_all(&piece[..(limit - sent) as usize])?;
                return Ok(()); // dropped: the connection closes mid-transfer
            }
        }
        if let Some(limit) = b.stall_after {
            if sent + piece.len() as u64 > limit {
                stream.write_all(&piece[..(limit - sent) as usize])?;
                std::thread::sleep(Duration::from_secs(20));
                return Ok(());
            }
        }
        stream.write_all(piece)?;
        sent += piece.len() as u64;
        if let Some(delay) = b.slow {
            std::thread::sleep(delay);
        }
    }
    Ok(())
}

/// A lab with one published release (every platform) and a server for it.
fn published(size: usize) -> (Lab, Server) {
    let lab = Lab::new();
    let build = lab.full_build("2.0.0", size);
    lab.publish(&build, Some("alpha")).assert().success();
    let server = Server::start(lab.store());
    (lab, server)
}

/// `boxcar download` from the lab's server, into lab/out.
fn download(lab: &Lab, server: &Server, args: &[&str]) -> assert_cmd::Command {
    let mut command = boxcar();
    command
        .args([
            "download",
            "--store",
            &server.url(),
            "--key",
            &lab.public_key(),
        ])
        .args(["--to", lab.path("out").to_str().unwrap()])
        .args(["--state", lab.path("state.json").to_str().unwrap()])
        .args(args)
        .env("BOXCAR_RETRY_BACKOFF_MS", "50");
    command
}

fn out(lab: &Lab, name: &str) -> PathBuf {
    lab.path("out").join(name)
}

const QCOW2: &str = "boxcar-2.0.0-qemu.qcow2";

#[test]
fn every_platform_artifact_downloads_and_verifies() {
    let (lab, server) = published(300_000);
    for platform in ["qemu", "vmware", "aws", "metal", "pxe"] {
        download(
            &lab,
            &server,
            &["--channel", "alpha", "--platform", platform, "--json"],
        )
        .assert()
        .success()
        .stdout(predicate::str::contains("\"version\": \"2.0.0\""));
    }
    for name in fs::read_dir(lab.path("build/2.0.0"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
    {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("boxcar-") {
            assert_eq!(
                fs::read(out(&lab, &name)).unwrap(),
                fs::read(lab.path("build/2.0.0").join(&name)).unwrap(),
                "{name}"
            );
        }
    }
    let leftovers: Vec<_> = fs::read_dir(lab.path("out"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".part")
        })
        .collect();
    assert!(leftovers.is_empty());
    // A second run finds the files there and verified.
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .success()
        .stdout(predicate::str::contains("already here"));
}

/// A release signed for Secure Boot gives every platform's download the
/// certificate to enroll with it, verified like the image.
#[test]
fn a_signed_release_downloads_with_its_secure_boot_certificate() {
    let lab = Lab::new();
    let build = lab.full_build("2.0.0", 100_000);
    common::sign_for_secure_boot(&build);
    lab.publish(&build, Some("alpha")).assert().success();
    let server = Server::start(lab.store());
    let output = download(
        &lab,
        &server,
        &["--channel", "alpha", "--platform", "aws", "--json"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("the Secure Boot certificate to enroll (subject CN=synthetic"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let paths: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("/secure-boot.crt")),
        "{paths:?}"
    );
    assert_eq!(
        fs::read(out(&lab, "secure-boot.crt")).unwrap(),
        fs::read(build.join("secure-boot.crt")).unwrap()
    );
}

#[test]
fn decompress_turns_the_metal_image_into_the_raw_disk() {
    let (lab, server) = published(1_000_000);
    download(
        &lab,
        &server,
        &["--channel", "alpha", "--platform", "metal", "--decompress"],
    )
    .assert()
    .success();
    assert_eq!(
        fs::read(out(&lab, "boxcar-2.0.0-metal.raw")).unwrap(),
        fs::read(lab.path("build/2.0.0/metal.raw.expected")).unwrap()
    );
    assert!(!out(&lab, "boxcar-2.0.0-metal.raw.zst").exists());
}

#[test]
fn list_shows_versions_platforms_and_sizes() {
    let (lab, server) = published(1000);
    download(&lab, &server, &["--list"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("channel alpha    -> 2.0.0 (serial 1")
                .and(predicate::str::contains(QCOW2)),
        );
    let mut list = boxcar();
    list.args([
        "download",
        "--list",
        "--channel",
        "alpha",
        "--store",
        &server.url(),
        "--key",
        &lab.public_key(),
        "--json",
    ]);
    let output = list.output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed["releases"][0]["version"], "2.0.0");
}

#[test]
fn works_against_a_file_store() {
    let (lab, _server) = published(1000);
    boxcar()
        .args([
            "download",
            "--channel",
            "alpha",
            "--platform",
            "qemu",
            "--key",
            &lab.public_key(),
        ])
        .args(["--store", &format!("file://{}", lab.store().display())])
        .args([
            "--to",
            lab.path("out").to_str().unwrap(),
            "--state",
            lab.path("state.json").to_str().unwrap(),
        ])
        .assert()
        .success();
    assert!(out(&lab, QCOW2).is_file());
}

#[test]
fn a_tampered_artifact_is_removed_and_fails() {
    let (lab, server) = published(300_000);
    let stored = lab.store().join("releases/2.0.0").join(QCOW2);
    let mut bytes = fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&stored, bytes).unwrap();
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("does not match the signed release")
                .and(predicate::str::contains("the download was removed")),
        );
    assert!(!out(&lab, QCOW2).exists());
    assert!(!out(&lab, &format!("{QCOW2}.part")).exists());
}

#[test]
fn a_tampered_channel_document_fails() {
    let (lab, server) = published(1000);
    let channel = lab.store().join("channels/alpha.json");
    let text = fs::read_to_string(&channel)
        .unwrap()
        .replace("\"serial\": 1", "\"serial\": 2");
    fs::write(&channel, text).unwrap();
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("bad signature"));
    assert!(!out(&lab, QCOW2).exists());
}

#[test]
fn the_wrong_key_fails() {
    let (lab, server) = published(1000);
    let other = lab.path("other");
    boxcar()
        .args(["keys", "generate", "--out", other.to_str().unwrap()])
        .assert()
        .success();
    boxcar()
        .args([
            "download",
            "--store",
            &server.url(),
            "--channel",
            "alpha",
            "--platform",
            "qemu",
            "--key",
        ])
        .arg(other.join("boxcar.pub"))
        .args([
            "--to",
            lab.path("out").to_str().unwrap(),
            "--state",
            lab.path("state.json").to_str().unwrap(),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("which is not trusted"));
    assert!(!out(&lab, QCOW2).exists());
}

#[test]
fn an_expired_channel_document_fails() {
    let lab = Lab::new();
    lab.set_channel("alpha", "valid-for", "\"1s\"");
    lab.publish(&lab.full_build("2.0.0", 1000), Some("alpha"))
        .assert()
        .success();
    let server = Server::start(lab.store());
    std::thread::sleep(Duration::from_millis(2100));
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("expired at"));
    assert!(!out(&lab, QCOW2).exists());
}

#[test]
fn a_serial_rollback_fails() {
    let (lab, server) = published(1000);
    let key = format!("{} alpha", server.url());
    fs::write(
        lab.path("state.json"),
        serde_json::json!({ "channels": { key: 7 } }).to_string(),
    )
    .unwrap();
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "has serial 1, older than serial 7 already seen: a rollback",
        ));
    assert!(!out(&lab, QCOW2).exists());
}

#[test]
fn a_connection_closed_mid_transfer_resumes_on_the_next_run() {
    let (lab, server) = published(2_000_000);
    server.behave(Behaviour {
        close_after: Some(700_000),
        ..Default::default()
    });
    download(
        &lab,
        &server,
        &["--channel", "alpha", "--platform", "qemu", "--retries", "0"],
    )
    .assert()
    .code(1)
    .stderr(predicate::str::contains("the connection closed after"));
    assert!(!out(&lab, QCOW2).exists(), "nothing under the final name");
    let part = fs::metadata(out(&lab, &format!("{QCOW2}.part")))
        .unwrap()
        .len();
    assert!(part > 0 && part < 2_000_000, "{part}");
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .success()
        .stdout(predicate::str::contains("(resumed)"));
    assert_eq!(
        fs::read(out(&lab, QCOW2)).unwrap(),
        fs::read(lab.path("build/2.0.0").join(QCOW2)).unwrap()
    );
    let requests = server.requests_for(QCOW2);
    assert_eq!(
        requests.last().unwrap().1.as_deref(),
        Some(format!("bytes={part}-").as_str()),
        "{requests:?}"
    );
}

#[test]
fn a_transient_failure_is_retried_within_the_run() {
    let (lab, server) = published(2_000_000);
    server.behave(Behaviour {
        close_after: Some(500_000),
        ..Default::default()
    });
    download(
        &lab,
        &server,
        &["--channel", "alpha", "--platform", "qemu", "--retries", "3"],
    )
    .assert()
    .success()
    .stderr(predicate::str::contains("retrying"));
    assert_eq!(
        fs::read(out(&lab, QCOW2)).unwrap(),
        fs::read(lab.path("build/2.0.0").join(QCOW2)).unwrap()
    );
    assert_eq!(server.requests_for(QCOW2).len(), 2);
}

#[test]
fn a_server_ignoring_range_gets_a_full_download() {
    let (lab, server) = published(2_000_000);
    fs::create_dir_all(lab.path("out")).unwrap();
    let original = fs::read(lab.path("build/2.0.0").join(QCOW2)).unwrap();
    fs::write(out(&lab, &format!("{QCOW2}.part")), &original[..800_000]).unwrap();
    server.behave(Behaviour {
        ignore_range: true,
        ..Default::default()
    });
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .success()
        .stderr(predicate::str::contains("ignored the range request"));
    assert_eq!(fs::read(out(&lab, QCOW2)).unwrap(), original);
    assert!(
        server.requests_for(QCOW2)[0].1.is_some(),
        "a range was asked for"
    );
}

#[test]
fn a_404_is_not_retried() {
    let (lab, server) = published(1000);
    fs::remove_file(lab.store().join("releases/2.0.0").join(QCOW2)).unwrap();
    download(
        &lab,
        &server,
        &["--channel", "alpha", "--platform", "qemu", "--retries", "3"],
    )
    .assert()
    .code(1)
    .stderr(predicate::str::contains("not found (HTTP 404)"));
    assert_eq!(server.requests_for(QCOW2).len(), 1, "a 404 is final");
    assert!(!out(&lab, QCOW2).exists());
}

#[test]
fn a_slow_server_shows_progress_and_a_stalled_one_times_out() {
    let (lab, server) = published(3_000_000);
    server.behave(Behaviour {
        slow: Some(Duration::from_millis(100)),
        ..Default::default()
    });
    let output = download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let progress_lines = stderr
        .lines()
        .filter(|l| l.contains(QCOW2) && l.contains("%)"))
        .count();
    assert!(progress_lines >= 2, "progress should keep moving: {stderr}");
    fs::remove_file(out(&lab, QCOW2)).unwrap();

    server.behave(Behaviour {
        stall_after: Some(600_000),
        ..Default::default()
    });
    download(
        &lab,
        &server,
        &[
            "--channel",
            "alpha",
            "--platform",
            "qemu",
            "--timeout",
            "1",
            "--retries",
            "0",
        ],
    )
    .assert()
    .code(1)
    .stderr(predicate::str::contains("no data for 1s"));
    assert!(!out(&lab, QCOW2).exists());
}

#[test]
fn a_replayed_old_channel_document_fails_even_on_a_first_download() {
    let lab = Lab::new();
    lab.publish(&lab.full_build("2.0.0", 1000), Some("alpha"))
        .assert()
        .success();
    let channel = lab.store().join("channels/alpha.json");
    let old = (
        fs::read(&channel).unwrap(),
        fs::read(channel.with_extension("json.minisig")).unwrap(),
    );
    lab.publish(&lab.full_build("2.1.0", 1000), Some("alpha"))
        .assert()
        .success();
    fs::write(&channel, &old.0).unwrap();
    fs::write(channel.with_extension("json.minisig"), &old.1).unwrap();
    let server = Server::start(lab.store());
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "has serial 1, older than serial 2 already seen: a rollback",
        ));
}

#[test]
fn rollback_state_does_not_depend_on_how_the_store_url_is_spelled() {
    let (lab, server) = published(1000);
    let key = format!("{} alpha", server.url());
    fs::write(
        lab.path("state.json"),
        serde_json::json!({ "channels": { key: 7 } }).to_string(),
    )
    .unwrap();
    let spelled = format!("{}/", server.url().replace("http://", "HTTP://"));
    boxcar()
        .args(["download", "--store", &spelled, "--key", &lab.public_key()])
        .args(["--channel", "alpha", "--platform", "qemu"])
        .args(["--to", lab.path("out").to_str().unwrap()])
        .args(["--state", lab.path("state.json").to_str().unwrap()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("older than serial 7 already seen"));
}

#[test]
fn a_symlinked_part_file_is_never_followed() {
    let (lab, server) = published(1000);
    let victim = lab.path("victim");
    fs::write(&victim, "keep").unwrap();
    fs::create_dir_all(lab.path("out")).unwrap();
    std::os::unix::fs::symlink(&victim, out(&lab, &format!("{QCOW2}.part"))).unwrap();
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("symlink"));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    assert!(!out(&lab, QCOW2).exists());
}

#[test]
fn an_empty_state_file_is_a_machine_that_has_seen_nothing() {
    let (lab, server) = published(1000);
    fs::write(lab.path("state.json"), "").unwrap();
    download(&lab, &server, &["--channel", "alpha", "--platform", "qemu"])
        .assert()
        .success();
}

#[test]
fn decompress_writes_no_more_than_the_signed_size_and_leaves_nothing_on_failure() {
    let lab = Lab::new();
    let build = lab.full_build("2.0.0", 1_000_000);
    // A release that signs a smaller raw size than its image decompresses
    // to, as a compression bomb would.
    let path = build.join("build.json");
    let mut info: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    for artifact in info["artifacts"].as_array_mut().unwrap() {
        if artifact["platform"] == "metal" {
            artifact["uncompressed_size"] = serde_json::json!(65536);
        }
    }
    fs::write(&path, serde_json::to_vec(&info).unwrap()).unwrap();
    lab.publish(&build, Some("alpha")).assert().success();
    let server = Server::start(lab.store());
    download(
        &lab,
        &server,
        &["--channel", "alpha", "--platform", "metal", "--decompress"],
    )
    .assert()
    .code(1)
    .stderr(predicate::str::contains(
        "decompresses to more than the 65536 bytes",
    ));
    assert!(!out(&lab, "boxcar-2.0.0-metal.raw").exists());
    assert!(!out(&lab, "boxcar-2.0.0-metal.raw.part").exists());
}
