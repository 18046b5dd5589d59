//! Readers never write, never wait forever, never swallow an endless
//! document, and read documents from newer writers: `boxcar verify` and
//! `boxcar download` through the real binary, against a store on a
//! read-only path and a hostile server on loopback.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use boxcar_signing::documents::{self, Kind};
use common::*;
use predicates::prelude::*;

/// Every file under `dir` with its size and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            }
            found.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    found.sort();
    found
}

fn chmod(path: &Path, mode: &str) {
    let status = std::process::Command::new("chmod")
        .args(["-R", mode])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn verify_on_a_read_only_store_reports_leftovers_and_changes_nothing() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    lab.publish_crashing_at("1.1.0", "publish-copying");
    // The store is read-only to the user running verify. Root ignores
    // permissions, so as root verify runs as nobody, from a copy of the
    // binary nobody can reach.
    let binary = lab.path("boxcar");
    fs::copy(env!("CARGO_BIN_EXE_boxcar"), &binary).unwrap();
    chmod(&lab.path(""), "go+rX");
    chmod(&lab.store(), "a-w");
    let before = listing(&lab.store());
    let mut command = if nix_is_root() {
        let mut command = assert_cmd::Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&binary);
        command
    } else {
        assert_cmd::Command::new(&binary)
    };
    command
        .args(["verify", "--store"])
        .arg(lab.store())
        .args(["--key", &lab.public_key()])
        .env("HOME", "/nonexistent")
        .assert()
        .success()
        .stdout(
            predicate::str::contains("warn  releases/.1.1.0.partial")
                .and(predicate::str::contains("ok    channels/alpha.json")),
        );
    assert_eq!(listing(&lab.store()), before, "verify changed the store");
    chmod(&lab.store(), "u+w");
}

fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A server that accepts connections and never answers.
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn verify_gives_up_on_a_stalled_server_after_its_timeout() {
    let lab = Lab::new();
    boxcar()
        .args([
            "verify",
            "--store",
            &silent_server(),
            "--key",
            &lab.public_key(),
        ])
        .args(["--timeout", "1", "--retries", "1"])
        .env("BOXCAR_RETRY_BACKOFF_MS", "10")
        .timeout(Duration::from_secs(120))
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("keys.json: no data for 1s")
                .and(predicate::str::contains("gave up after 1 retries")),
        );
}

/// How the hostile server answers one path.
#[derive(Clone, Copy)]
enum Hostile {
    /// Zeros without end, no length announced.
    Endless,
    /// A Content-Length of 1 GiB, then zeros.
    Huge,
    /// The file `path.stale` next to it, the first `times` it is asked
    /// for: a store caught by its readers between a writer's document and
    /// that writer's signature, again and again.
    Stale { times: usize },
    /// A byte every 0.3 s, without end: never silent for a read timeout.
    Dripping,
}

/// Serves `root`, except `path`, which it answers as `how`.
fn hostile_server(root: PathBuf, path: &'static str, how: Hostile) -> String {
    hostile_server_counting(root, path, how).0
}

/// As [`hostile_server`], and how many times `path` was asked for.
fn hostile_server_counting(
    root: PathBuf,
    path: &'static str,
    how: Hostile,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (root, asked) = (root.clone(), asked.clone());
            std::thread::spawn(move || {
                let _ = answer(stream, &root, path, how, &asked);
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), counter)
}

fn answer(
    mut stream: TcpStream,
    root: &Path,
    hostile: &str,
    how: Hostile,
    asked: &AtomicUsize,
) -> std::io::Result<()> {
    let (mut path, _) = read_request(&stream)?;
    if path == hostile {
        let times_before = asked.fetch_add(1, Ordering::SeqCst);
        match how {
            Hostile::Endless => {
                return zeros_forever(stream, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            }
            Hostile::Huge => {
                return zeros_forever(
                    stream,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n",
                )
            }
            Hostile::Stale { times } => {
                if times_before < times {
                    path.push_str(".stale");
                }
            }
            Hostile::Dripping => {
                stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
                loop {
                    std::thread::sleep(Duration::from_millis(300));
                    stream.write_all(b" ")?;
                }
            }
        }
    }
    let file = root.join(&path);
    if path.contains("..") || !file.is_file() {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let mut content = Vec::new();
    fs::File::open(&file)?.read_to_end(&mut content)?;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    )?;
    stream.write_all(&content)
}

/// Sends `head`, then zeros until the reader hangs up.
fn zeros_forever(mut stream: TcpStream, head: &[u8]) -> std::io::Result<()> {
    stream.write_all(head)?;
    let zeros = vec![0u8; 64 * 1024];
    loop {
        stream.write_all(&zeros)?;
    }
}

/// The largest resident set of any child this test process has waited
/// for, in bytes.
fn children_peak_rss() -> u64 {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    usage.max_rss() as u64 * 1024
}

#[test]
fn endless_and_huge_documents_are_refused_without_reading_them_into_memory() {
    let lab = Lab::new();
    lab.publish_to_alpha("2.0.0");
    let root = lab.new_key("root");
    lab.init_keyring(&root);
    let root_public = root.join("boxcar.pub").display().to_string();
    let cases = [
        ("channels/alpha.json", Hostile::Endless, "channel document"),
        (
            "releases/2.0.0/release.json",
            Hostile::Endless,
            "release document",
        ),
        ("keys.json", Hostile::Huge, "keyring"),
    ];
    for (path, how, what) in cases {
        let url = hostile_server(lab.store(), path, how);
        let refused = format!("{url}/{path} is larger than");
        boxcar()
            .args(["download", "--store", &url, "--key", &root_public])
            .args(["--channel", "alpha", "--platform", "qemu", "--retries", "0"])
            .args(["--to", lab.path("out").to_str().unwrap()])
            .args(["--state", lab.path("state.json").to_str().unwrap()])
            .timeout(Duration::from_secs(120))
            .assert()
            .code(1)
            .stderr(predicate::str::contains(&refused).and(predicate::str::contains(what)));
        boxcar()
            .args([
                "verify",
                "--store",
                &url,
                "--key",
                &root_public,
                "--retries",
                "0",
            ])
            .timeout(Duration::from_secs(120))
            .assert()
            .code(1)
            .stdout(predicate::str::contains(&refused).or(predicate::str::contains("index.json")));
    }
    let peak = children_peak_rss();
    eprintln!("peak resident memory of the readers: {} MiB", peak >> 20);
    assert!(
        peak < 96 << 20,
        "a reader held {} MiB at its peak: a document was read into memory",
        peak >> 20
    );
}

#[test]
fn verify_stops_reading_an_endless_artifact_at_its_signed_size() {
    let lab = Lab::new();
    lab.publish_to_alpha("2.0.0");
    let artifact = "releases/2.0.0/boxcar-2.0.0-qemu.qcow2";
    let url = hostile_server(lab.store(), artifact, Hostile::Endless);
    boxcar()
        .args(["verify", "--store", &url, "--key", &lab.public_key()])
        .args(["--retries", "0"])
        .timeout(Duration::from_secs(120))
        .assert()
        .code(1)
        .stdout(predicate::str::contains(format!(
            "{url}/{artifact} is larger than the"
        )));
}

#[test]
fn a_document_trickling_in_gets_its_deadline_once_not_once_per_retry() {
    let lab = Lab::new();
    lab.publish_to_alpha("2.0.0");
    let (url, asked) = hostile_server_counting(lab.store(), "keys.json", Hostile::Dripping);
    // --timeout 1: a read may wait 1 s, a document may take 4 s in all.
    boxcar()
        .args(["verify", "--store", &url, "--key", &lab.public_key()])
        .args(["--timeout", "1", "--retries", "3"])
        .env("BOXCAR_RETRY_BACKOFF_MS", "10")
        .timeout(Duration::from_secs(120))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "keys.json: still arriving after 4s",
        ));
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "keys.json was asked for again"
    );
}

#[test]
fn a_download_trickling_in_is_given_up_at_its_minimum_rate_and_kept_to_resume() {
    let lab = Lab::new();
    lab.publish_to_alpha("2.0.0");
    let artifact = "releases/2.0.0/boxcar-2.0.0-qemu.qcow2";
    let (url, asked) = hostile_server_counting(lab.store(), artifact, Hostile::Dripping);
    // --timeout 1: 4 s, plus the file's size at 32 KiB/s.
    boxcar()
        .args(["download", "--store", &url, "--key", &lab.public_key()])
        .args(["--channel", "alpha", "--platform", "qemu"])
        .args(["--timeout", "1", "--retries", "3"])
        .args(["--to", lab.path("out").to_str().unwrap()])
        .env("BOXCAR_RETRY_BACKOFF_MS", "10")
        .timeout(Duration::from_secs(120))
        .assert()
        .failure()
        .stderr(predicate::str::contains("slower than 32 KiB/s"));
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the artifact was asked for again"
    );
    assert!(lab.path("out/boxcar-2.0.0-qemu.qcow2.part").is_file());
}

#[test]
fn a_reader_waits_out_writers_caught_between_a_document_and_its_signature() {
    let lab = Lab::new();
    lab.publish_to_alpha("2.0.0");
    let signature = lab.store().join("channels/alpha.json.minisig");
    let older = fs::read(&signature).unwrap();
    lab.publish_to_alpha("2.1.0");
    fs::write(lab.path("store/channels/alpha.json.minisig.stale"), older).unwrap();
    let download = |times: usize| {
        let url = hostile_server(
            lab.store(),
            "channels/alpha.json.minisig",
            Hostile::Stale { times },
        );
        let _ = fs::remove_dir_all(lab.path("out"));
        boxcar()
            .args(["download", "--store", &url, "--key", &lab.public_key()])
            .args(["--channel", "alpha", "--platform", "qemu", "--retries", "0"])
            .args(["--to", lab.path("out").to_str().unwrap()])
            .timeout(Duration::from_secs(120))
            .assert()
    };
    // The new document with the older signature four reads in a row, as
    // writers racing to promote can leave it: the fifth read is whole.
    download(4).success();
    assert!(lab.path("out/boxcar-2.1.0-qemu.qcow2").is_file());
    // A pair that never verifies is refused, with why.
    download(usize::MAX).code(1).stderr(
        predicate::str::contains("channels/alpha.json").and(predicate::str::contains("signature")),
    );
}

/// Adds a field this version does not know to a JSON document, as a newer
/// writer would, and signs it again.
fn rewrite(
    lab: &Lab,
    path: &str,
    kind: Kind,
    subject: &str,
    change: impl Fn(&mut serde_json::Value),
) -> boxcar_signing::Sha256Digest {
    let file = lab.store().join(path);
    let mut value: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    change(&mut value);
    let bytes = documents::to_bytes(&value);
    let key = boxcar_signing::SecretKey::load(Path::new(&lab.key())).unwrap();
    let signature = documents::sign_bytes(&key, &bytes, kind, subject).unwrap();
    fs::write(&file, &bytes).unwrap();
    fs::write(format!("{}.minisig", file.display()), signature).unwrap();
    boxcar_signing::sha256_reader(&bytes[..]).unwrap().0
}

#[test]
fn documents_with_fields_from_a_newer_writer_verify_and_are_read() {
    let lab = Lab::new();
    lab.publish_to_alpha("1.0.0");
    let release_sha = rewrite(
        &lab,
        "releases/1.0.0/release.json",
        Kind::Release,
        "1.0.0",
        |v| {
            v["sbom"] = serde_json::json!({"format": "spdx", "file": "sbom.json"});
            v["artifacts"][0]["compressed_sha256"] = serde_json::json!("0".repeat(64));
        },
    );
    let sha = serde_json::json!(release_sha.to_string());
    rewrite(&lab, "channels/alpha.json", Kind::Channel, "alpha", |v| {
        v["rollout"]["strategy"] = serde_json::json!("canaries first");
        v["waves_v2"] = serde_json::json!({"paused": false, "waves": [[1, "1h"]]});
        v["release_sha256"] = sha.clone();
        v["history"][0]["release_sha256"] = sha.clone();
        v["history"][0]["note"] = serde_json::json!("from a newer writer");
    });
    rewrite(&lab, "index.json", Kind::Index, "index", |v| {
        v["releases"][0]["release_sha256"] = sha.clone();
        v["mirrors"] = serde_json::json!(["https://mirror.example"]);
    });
    lab.verify_passes_with("ok    channels/alpha.json: serial 1, points at 1.0.0");
    lab.boxcar(&[
        "download",
        "--store",
        lab.store().to_str().unwrap(),
        "--key",
        &lab.public_key(),
    ])
    .args(["--channel", "alpha", "--platform", "qemu"])
    .args(["--to", lab.path("out").to_str().unwrap()])
    .args(["--state", lab.path("state.json").to_str().unwrap()])
    .assert()
    .success()
    .stdout(predicate::str::contains("Boxcar Linux 1.0.0 for qemu"));
}

#[test]
fn names_in_signed_documents_that_could_fool_a_terminal_or_leave_a_directory_are_refused() {
    for bad in ["evil\u{1b}]0;owned\u{7}.qcow2", "../../.bashrc"] {
        let lab = Lab::new();
        lab.publish_to_alpha("1.0.0");
        // Signed with the store's own key: a compromised or buggy writer.
        let release_sha = rewrite(
            &lab,
            "releases/1.0.0/release.json",
            Kind::Release,
            "1.0.0",
            |v| {
                v["artifacts"][0]["name"] = serde_json::json!(bad);
            },
        );
        let sha = serde_json::json!(release_sha.to_string());
        rewrite(&lab, "channels/alpha.json", Kind::Channel, "alpha", |v| {
            v["release_sha256"] = sha.clone();
            v["history"][0]["release_sha256"] = sha.clone();
        });
        let output = lab
            .boxcar(&["download", "--store", lab.store().to_str().unwrap()])
            .args([
                "--key",
                &lab.public_key(),
                "--channel",
                "alpha",
                "--platform",
                "qemu",
            ])
            .args(["--to", lab.path("out").to_str().unwrap()])
            .args(["--state", lab.path("state.json").to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("is not allowed as a name"), "{stderr}");
        assert!(!stderr.contains(['\u{1b}', '\u{7}']), "{stderr}");
        assert!(!lab.path(".bashrc").exists());
        let verified = lab.verify().output().unwrap();
        let stdout = String::from_utf8_lossy(&verified.stdout);
        assert!(
            !verified.status.success() && !stdout.contains('\u{1b}'),
            "{stdout}"
        );
    }
}
