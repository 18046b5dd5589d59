//! A small signed store made with the signing crate alone (the agent never
//! links the builder), a loopback web server that serves it and misbehaves
//! on request, and a host root for `boxcar-update --root`.

#![allow(dead_code)]

#[path = "../../src/test_script.rs"]
mod test_script;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxcar_signing::documents::{
    self, ChannelDocument, ChannelEntry, IndexChannel, IndexDocument, IndexRelease, Kind,
    ReleaseDocument, ReleaseSecureBoot, Rollout, UpdateFile, UpdatePayload, UpdateRole, Wave,
};
use boxcar_signing::{SecretKey, Sha256Digest};

/// How the server answers one path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Misbehaviour {
    /// Bytes without end.
    Endless,
    /// Headers, then a few bytes, then nothing.
    Stall,
    /// The file, then more bytes than it has.
    Longer,
}

pub struct Store {
    pub dir: tempfile::TempDir,
    pub key: SecretKey,
    pub url: String,
    misbehaving: Arc<Mutex<HashMap<String, Misbehaviour>>>,
}

/// One release's update, made for real: a /usr image with a dm-verity
/// hash tree made by veritysetup, and a UKI whose .cmdline names its root
/// hash.
pub struct Release {
    pub version: String,
    pub root_hash: String,
}

impl Store {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let misbehaving = Arc::new(Mutex::new(HashMap::new()));
        let url = serve(dir.path().to_owned(), misbehaving.clone());
        Self {
            dir,
            key: SecretKey::from_seed([42; 32]),
            url,
            misbehaving,
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn misbehave(&self, path: &str, how: Misbehaviour) {
        self.misbehaving
            .lock()
            .unwrap()
            .insert(format!("/{path}"), how);
    }

    pub fn public_key_text(&self) -> String {
        use boxcar_signing::Sign;
        self.key.public_key().to_file_text()
    }

    fn write_signed(&self, path: &str, bytes: &[u8], kind: Kind, subject: &str) {
        let file = self.path(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, bytes).unwrap();
        let signature = documents::sign_bytes(&self.key, bytes, kind, subject).unwrap();
        std::fs::write(format!("{}.minisig", file.display()), signature).unwrap();
    }

    /// Publishes `version` with a real update payload; returns the
    /// release.json digest.
    pub fn publish(&self, version: &str) -> (Release, Sha256Digest) {
        self.publish_signed(version, UsrSigning::Unsigned)
    }

    /// Publishes `version`, its /usr root hash signed as `signing` says.
    pub fn publish_signed(&self, version: &str, signing: UsrSigning) -> (Release, Sha256Digest) {
        let work = tempfile::tempdir().unwrap();
        let usr = work.path().join("usr");
        let data: Vec<u8> = (0..(2u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&usr, &data).unwrap();
        let verity = work.path().join("verity");
        let out = Command::new("veritysetup")
            .arg("format")
            .arg(&usr)
            .arg(&verity)
            .output()
            .expect("veritysetup (ci/setup-host installs cryptsetup-bin)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let root_hash = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:").map(|h| h.trim().to_owned()))
            .unwrap();
        let uki = tiny_uki(&format!("rw usrhash={root_hash} quiet"));
        let (usr_uuid, verity_uuid) = boxcar_update::install::slot_uuids(&root_hash).unwrap();
        let parts = [
            (
                UpdateRole::Usr,
                format!("boxcar_{version}_{usr_uuid}.usr.raw"),
                data,
                Some(usr_uuid),
            ),
            (
                UpdateRole::UsrVerity,
                format!("boxcar_{version}_{verity_uuid}.usr-verity.raw"),
                std::fs::read(&verity).unwrap(),
                Some(verity_uuid),
            ),
            (
                UpdateRole::UsrSignature,
                format!("boxcar_{version}.usr-verity-sig.raw"),
                signing.partition(&root_hash),
                None,
            ),
            (UpdateRole::Uki, format!("boxcar_{version}.efi"), uki, None),
        ];
        let mut files = Vec::new();
        for (role, installed_name, raw, partition_uuid) in parts {
            let compressed = zstd::encode_all(&raw[..], 3).unwrap();
            let name = format!("{installed_name}.zst");
            let path = self.path(&format!("releases/{version}/{name}"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &compressed).unwrap();
            let (sha256, size) = boxcar_signing::sha256_reader(&compressed[..]).unwrap();
            let (installed_sha256, installed_size) =
                boxcar_signing::sha256_reader(&raw[..]).unwrap();
            files.push(UpdateFile {
                role,
                name,
                size,
                sha256,
                compression: "zstd".into(),
                installed_name,
                installed_size,
                installed_sha256,
                partition_uuid,
            });
        }
        if let Some(certificate) = signing.certificate() {
            std::fs::write(
                self.path(&format!("releases/{version}/{}", certificate.certificate)),
                b"",
            )
            .unwrap();
        }
        let release = ReleaseDocument {
            schema: documents::SCHEMA_VERSION,
            name: "boxcar".into(),
            version: version.into(),
            built_for: "alpha".into(),
            built_at: now(),
            published_at: now(),
            usr_root_hash: root_hash.clone(),
            kernel_release: "6.12".into(),
            artifacts: vec![],
            evidence: vec![],
            update: Some(UpdatePayload { files }),
            footprint: None,
            secure_boot: signing.certificate(),
        };
        let digest = self.write_release(&release);
        (
            Release {
                version: version.into(),
                root_hash,
            },
            digest,
        )
    }

    /// Signs and writes a release.json (and its SHA256SUMS) as is.
    pub fn write_release(&self, release: &ReleaseDocument) -> Sha256Digest {
        let bytes = documents::to_bytes(release);
        let dir = format!("releases/{}", release.version);
        self.write_signed(
            &format!("{dir}/release.json"),
            &bytes,
            Kind::Release,
            &release.version,
        );
        let sums = documents::sha256sums(release);
        self.write_signed(
            &format!("{dir}/SHA256SUMS"),
            sums.as_bytes(),
            Kind::Release,
            &format!("{} SHA256SUMS", release.version),
        );
        boxcar_signing::sha256_reader(&bytes[..]).unwrap().0
    }

    /// Points channel alpha at `version` with `serial`, valid for
    /// `valid_hours` from `issued`, with `rollout`; and writes the index.
    pub fn point_alpha(
        &self,
        version: &str,
        digest: Sha256Digest,
        serial: u64,
        rollout: Option<Rollout>,
        expired: bool,
    ) {
        let issued = if expired {
            time::OffsetDateTime::now_utc() - time::Duration::days(10)
        } else {
            time::OffsetDateTime::now_utc()
        };
        let channel = ChannelDocument {
            schema: documents::SCHEMA_VERSION,
            channel: "alpha".into(),
            serial,
            issued_at: documents::format_time(issued),
            expires_at: documents::format_time(issued + time::Duration::days(7)),
            version: version.into(),
            release_sha256: digest,
            history: vec![ChannelEntry {
                serial,
                version: version.into(),
                release_sha256: digest,
                since: documents::format_time(issued),
            }],
            rollout,
        };
        self.write_signed(
            "channels/alpha.json",
            &documents::to_bytes(&channel),
            Kind::Channel,
            "alpha",
        );
        let index = IndexDocument {
            schema: documents::SCHEMA_VERSION,
            serial,
            issued_at: now(),
            releases: vec![IndexRelease {
                version: version.into(),
                published_at: now(),
                release_sha256: digest,
                artifacts: vec![],
            }],
            channels: vec![IndexChannel {
                name: "alpha".into(),
                version: version.into(),
                serial,
                expires_at: channel.expires_at.clone(),
            }],
        };
        self.write_signed(
            "index.json",
            &documents::to_bytes(&index),
            Kind::Index,
            "index",
        );
    }
}

/// A rollout started `hours_ago`, one wave of `percent` after `after_hours`.
/// How a test release's /usr root hash is signed (the agent checks what
/// the signature names; the kernel checks the signature itself at boot).
#[derive(Clone, Copy)]
pub enum UsrSigning<'a> {
    /// An empty signature partition and no Secure Boot certificate.
    Unsigned,
    /// A signature of the release's own root hash.
    Signed,
    /// A signature of this other root hash.
    SignedFor(&'a str),
}

/// The fingerprint test releases give their certificate.
pub const CERTIFICATE_FINGERPRINT: &str =
    "e9f9f2267797ee9e3b1673676783cfa326061f5a94e41267419d2374abe36c73";

impl UsrSigning<'_> {
    /// The signature partition as systemd-repart writes it: JSON, zeros.
    fn partition(self, root_hash: &str) -> Vec<u8> {
        let signed = match self {
            UsrSigning::Unsigned => None,
            UsrSigning::Signed => Some(root_hash),
            UsrSigning::SignedFor(other) => Some(other),
        };
        let mut bytes = signed
            .map(|hash| {
                format!(
                    r#"{{"rootHash":"{hash}","certificateFingerprint":"{CERTIFICATE_FINGERPRINT}","signature":"MIIE"}}"#
                )
                .into_bytes()
            })
            .unwrap_or_default();
        bytes.resize(16384, 0);
        bytes
    }

    fn certificate(self) -> Option<ReleaseSecureBoot> {
        match self {
            UsrSigning::Unsigned => None,
            UsrSigning::Signed | UsrSigning::SignedFor(_) => Some(ReleaseSecureBoot {
                certificate: "secure-boot.crt".into(),
                size: 0,
                sha256: boxcar_signing::sha256_bytes(b""),
                fingerprint_sha256: CERTIFICATE_FINGERPRINT.into(),
                subject: "CN=Boxcar test".into(),
            }),
        }
    }
}

pub fn rollout(hours_ago: i64, waves: &[(u64, u8)], paused: bool) -> Rollout {
    let start = time::OffsetDateTime::now_utc() - time::Duration::hours(hours_ago);
    Rollout {
        start: documents::format_time(start),
        paused_at: paused.then(now),
        waves: waves
            .iter()
            .map(|&(hours, percent)| Wave {
                after_seconds: hours * 3600,
                percent,
            })
            .collect(),
    }
}

pub fn now() -> String {
    documents::format_time(time::OffsetDateTime::now_utc())
}

/// A host's root for `boxcar-update --root`: running `version`, following
/// the store's alpha channel, trusting its key.
pub struct Host {
    pub root: tempfile::TempDir,
}

impl Host {
    pub fn new(store: &Store, version: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let at = |p: &str| root.path().join(p);
        for dir in [
            "etc/boxcar",
            "usr/lib/boxcar/update-keys",
            "var/lib/boxcar/updates",
        ] {
            std::fs::create_dir_all(at(dir)).unwrap();
        }
        std::fs::write(at("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(
            at("usr/lib/os-release"),
            format!("ID=boxcar\nIMAGE_VERSION={version}\n"),
        )
        .unwrap();
        std::fs::write(
            at("usr/lib/boxcar/update-keys/store.pub"),
            store.public_key_text(),
        )
        .unwrap();
        std::fs::write(
            at("etc/boxcar/update.toml"),
            format!(
                "[store]\nurl = \"{}\"\nchannel = \"alpha\"\n[agent]\nread_timeout_seconds = 2\n",
                store.url
            ),
        )
        .unwrap();
        let host = Self { root };
        // A test reaching a reboot must never reboot the machine it runs on.
        host.fake_tool(
            "systemctl",
            "echo 'a test host does not reboot' >&2; exit 1",
        );
        host
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    pub fn boxcar_update(&self, args: &[&str]) -> assert_cmd::Command {
        let mut command = assert_cmd::Command::cargo_bin("boxcar-update").unwrap();
        command
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .env("PATH", self.search_path())
            .timeout(Duration::from_secs(120));
        command
    }

    /// `boxcar-update agent`, the service, running until dropped.
    pub fn start_service(&self) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_boxcar-update"))
            .arg("--root")
            .arg(self.root.path())
            .arg("agent")
            .env("PATH", self.search_path())
            .spawn()
            .unwrap();
        Service { child }
    }

    /// The fake tools first, then the real ones.
    fn search_path(&self) -> String {
        let real = std::env::var("PATH").unwrap_or_default();
        format!("{}:{real}", self.path("fake-bin").display())
    }

    /// Puts a shell script named `name` ahead of the real tool on the
    /// agent's PATH. It notes each call's arguments first (see
    /// [`Host::calls_of`]), then runs `script`.
    pub fn fake_tool(&self, name: &str, script: &str) {
        write_fake(&self.path("fake-bin").join(name), script);
    }

    /// The arguments of each call of the fake tool `name`.
    pub fn calls_of(&self, name: &str) -> Vec<String> {
        calls_of(&self.path("fake-bin").join(name))
    }

    /// Puts a fake systemd-sysupdate where the agent runs it from under
    /// `--root`, and a fake `bootctl` naming an empty ESP, so an update
    /// gets as far as installing.
    pub fn fake_sysupdate(&self, script: &str) {
        let esp = self.path("boot");
        std::fs::create_dir_all(&esp).unwrap();
        self.fake_tool("bootctl", &format!("echo {}", esp.display()));
        write_fake(&self.path(SYSUPDATE), script);
    }

    /// The arguments of each call of the fake systemd-sysupdate.
    pub fn sysupdate_calls(&self) -> Vec<String> {
        calls_of(&self.path(SYSUPDATE))
    }

    /// Replaces the host's settings (`/etc/boxcar/update.toml`).
    pub fn configure(&self, toml: &str) {
        std::fs::write(self.path("etc/boxcar/update.toml"), toml).unwrap();
    }

    /// Leaves the state as the agent leaves it once it has installed
    /// `version` in this very boot: waiting for its reboot.
    pub fn install_pending(&self, version: &str) {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let state = serde_json::json!({
            "phase": "reboot-pending",
            "pending": {
                "version": version,
                "from_version": "1.0.0",
                "installed_at": now(),
                "installed_in_boot": boot_id.trim(),
            },
        });
        let dir = self.path("var/lib/boxcar-update");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
        std::fs::create_dir_all(self.path("run")).unwrap();
        std::fs::write(self.path("run/reboot-required"), "*** restart ***\n").unwrap();
    }

    /// The agent's state file as it is on disk (null before the first).
    pub fn state_file(&self) -> serde_json::Value {
        match std::fs::read(self.path("var/lib/boxcar-update/state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Waits up to a minute for the state file to satisfy `condition`.
    pub fn wait_for_state(&self, what: &str, condition: impl Fn(&serde_json::Value) -> bool) {
        for _ in 0..600 {
            if condition(&self.state_file()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the state never showed {what}: {:#}", self.state_file());
    }

    /// The messages of the state's history, oldest first.
    pub fn history(&self) -> Vec<String> {
        let state = self.state_file();
        let events = state["history"].as_array().cloned().unwrap_or_default();
        events
            .iter()
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.boxcar_update(&["status", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Files in the staging area and the downloads.
    pub fn staged_files(&self) -> Vec<String> {
        let mut found = Vec::new();
        for dir in ["var/lib/boxcar/updates", "var/lib/boxcar-update/downloads"] {
            if let Ok(entries) = std::fs::read_dir(self.path(dir)) {
                found
                    .extend(entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()));
            }
        }
        found
    }
}

/// Where systemd-sysupdate is, under the host's root.
const SYSUPDATE: &str = "usr/lib/systemd/systemd-sysupdate";

/// Writes a shell script at `path` that notes each call's arguments in
/// `<path>.calls`, then runs `script`.
fn write_fake(path: &Path, script: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = format!("#!/bin/sh\necho \"$*\" >> \"$0.calls\"\n{script}\n");
    test_script::write_script(path, &text);
}

/// The arguments of each call of the fake at `path`.
fn calls_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(format!("{}.calls", path.display())).unwrap_or_default();
    text.lines().map(str::to_owned).collect()
}

/// A running `boxcar-update agent`, stopped when dropped.
pub struct Service {
    child: std::process::Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal PE file whose `.cmdline` section holds `cmdline`.
pub fn tiny_uki(cmdline: &str) -> Vec<u8> {
    let mut pe = vec![0u8; 0x200];
    pe[0..2].copy_from_slice(b"MZ");
    pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    pe[0x86..0x88].copy_from_slice(&1u16.to_le_bytes());
    pe[0x94..0x96].copy_from_slice(&0xf0u16.to_le_bytes());
    let entry = 0x84 + 20 + 0xf0;
    pe[entry..entry + 8].copy_from_slice(b".cmdline");
    pe[entry + 8..entry + 12].copy_from_slice(&(cmdline.len() as u32).to_le_bytes());
    pe[entry + 20..entry + 24].copy_from_slice(&0x200u32.to_le_bytes());
    pe.extend_from_slice(cmdline.as_bytes());
    pe
}

/// Serves `root` over HTTP on loopback (GET with `Range: bytes=N-`),
/// misbehaving on the paths in `misbehaving`. Returns the base URL.
fn serve(root: PathBuf, misbehaving: Arc<Mutex<HashMap<String, Misbehaviour>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            let misbehaving = misbehaving.clone();
            std::thread::spawn(move || answer(stream, &root, &misbehaving));
        }
    });
    url
}

fn answer(
    stream: std::net::TcpStream,
    root: &Path,
    misbehaving: &Mutex<HashMap<String, Misbehaviour>>,
) {
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut from = 0u64;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(range) = line.to_lowercase().strip_prefix("range: bytes=") {
            from = range.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let mut stream = reader.into_inner();
    let how = misbehaving.lock().unwrap().get(&path).copied();
    let file = root.join(path.trim_start_matches('/'));
    let body = match std::fs::read(&file) {
        Ok(body) => body,
        Err(_) if how != Some(Misbehaviour::Endless) => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            );
            return;
        }
        Err(_) => Vec::new(),
    };
    match how {
        None => {
            let from = (from as usize).min(body.len());
            let status = if from > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len() - from
            );
            let _ = stream.write_all(&body[from..]);
        }
        Some(Misbehaviour::Endless) => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
            let chunk = vec![b' '; 64 * 1024];
            while stream.write_all(&chunk).is_ok() {}
        }
        Some(Misbehaviour::Stall) => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body[..body.len().min(100)]);
            std::thread::sleep(Duration::from_secs(30));
        }
        Some(Misbehaviour::Longer) => {
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len() + 4096
            );
            let _ = stream.write_all(&body);
            let _ = stream.write_all(&[7u8; 4096]);
        }
    }
}
