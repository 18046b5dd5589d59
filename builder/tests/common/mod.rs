//! Shared by the CLI test files: a scratch "lab" with a copy of the
//! checkout's configuration, a key pair and a store, and small synthetic
//! builds to publish into it.
#![allow(dead_code)]

pub mod s3server;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use assert_cmd::Command;
use boxcar::image::PartitionTable;
use boxcar::platform::{
    ArtifactRole, ConfigDelivery, DiskBus, Firmware, Format, GuestAgent, HypervisorCpuid,
    MetadataService, Nic, Platform,
};
use boxcar::records::buildinfo::*;
use boxcar::records::evidence::{BootOutcome, Check, Evidence, TestCase};
use boxcar_signing::documents::{UpdateFile, UpdatePayload, UpdateRole};
use predicates::prelude::*;

pub fn boxcar() -> Command {
    Command::cargo_bin("boxcar").unwrap()
}

pub fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A scratch area: a copy of the checkout's configuration (whose channel
/// files a test may change), a key pair, and a store.
pub struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("project")).unwrap();
        for sub in ["recipes", "overlays", "channels"] {
            let status = Process::new("cp")
                .arg("-r")
                .arg(checkout().join(sub))
                .arg(dir.path().join("project"))
                .status()
                .unwrap();
            assert!(status.success());
        }
        let lab = Self { dir };
        lab.boxcar(&[
            "keys",
            "generate",
            "--out",
            lab.path("keys").to_str().unwrap(),
        ])
        .assert()
        .success();
        // No waiting for soak times in tests, unless a test sets one.
        lab.set_channel("beta", "soak", "\"0s\"");
        lab.set_channel("stable", "soak", "\"0s\"");
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    pub fn key(&self) -> String {
        self.path("keys/boxcar.key").display().to_string()
    }

    pub fn public_key(&self) -> String {
        self.path("keys/boxcar.pub").display().to_string()
    }

    pub fn boxcar(&self, args: &[&str]) -> Command {
        let mut command = boxcar();
        command
            .args(["--project", self.path("project").to_str().unwrap()])
            .args(args);
        command
    }

    /// Sets `key = value` (TOML) in channels/NAME.toml.
    pub fn set_channel(&self, name: &str, key: &str, value: &str) {
        let path = self.path("project/channels").join(format!("{name}.toml"));
        let text = fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .collect();
        fs::write(&path, format!("{}\n{key} = {value}\n", kept.join("\n"))).unwrap();
    }

    pub fn publish(&self, build: &Path, channel: Option<&str>) -> Command {
        let mut args = vec![
            "publish".to_owned(),
            "--build".into(),
            build.display().to_string(),
            "--store".into(),
            self.store().display().to_string(),
            "--key".into(),
            self.key(),
        ];
        if let Some(channel) = channel {
            args.extend(["--channel".into(), channel.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.boxcar(&args)
    }

    pub fn promote(&self, to: &str, extra: &[&str]) -> Command {
        let store = self.store().display().to_string();
        let key = self.key();
        let mut args = vec!["promote", "--store", &store, "--key", &key, "--to", to];
        args.extend(extra);
        self.boxcar(&args)
    }

    /// Publishes a fresh tested build of `version` to alpha; must succeed.
    pub fn publish_to_alpha(&self, version: &str) {
        self.publish(&self.build(version, true), Some("alpha"))
            .assert()
            .success();
    }

    /// Publishes a fresh build of `version` to alpha, dying on purpose at
    /// the crash point `point` (see BOXCAR_CRASH_AT).
    pub fn publish_crashing_at(&self, version: &str, point: &str) {
        let crashed = self
            .publish(&self.build(version, true), Some("alpha"))
            .env("BOXCAR_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "the publish was meant to die");
    }

    /// `boxcar verify` must pass, reporting `finding`.
    pub fn verify_passes_with(&self, finding: &str) {
        self.verify()
            .assert()
            .success()
            .stdout(predicate::str::contains(finding));
    }

    /// `boxcar verify` must fail, saying `reason`.
    pub fn verify_fails_with(&self, reason: &str) {
        self.verify()
            .assert()
            .code(1)
            .stdout(predicate::str::contains(reason));
    }

    /// Makes a key pair in lab/NAME/ (`boxcar.key`, `boxcar.pub`); returns
    /// the directory.
    pub fn new_key(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        boxcar()
            .args(["keys", "generate", "--out", dir.to_str().unwrap()])
            .assert()
            .success();
        dir
    }

    /// `boxcar keys SUBCOMMAND --store STORE --root DIR/boxcar.key...` with
    /// `args`.
    pub fn keys(&self, subcommand: &str, roots: &[&Path], args: &[&str]) -> Command {
        let mut command = self.boxcar(&["keys", subcommand]);
        command.args(["--store", self.store().to_str().unwrap()]);
        for root in roots {
            command.arg("--root").arg(root.join("boxcar.key"));
        }
        command.args(args);
        command
    }

    /// Gives the store its first keyring: root `root` (a lab key
    /// directory), the lab's key the signing key.
    pub fn init_keyring(&self, root: &Path) {
        let public = self.public_key();
        self.keys("init", &[root], &["--signing", &public])
            .assert()
            .success();
    }

    /// `boxcar repair` of the lab's store.
    pub fn repair(&self) -> Command {
        let store = self.store().display().to_string();
        self.boxcar(&["repair", "--store", &store])
    }

    pub fn verify(&self) -> Command {
        let store = self.store().display().to_string();
        let key = self.public_key();
        self.boxcar(&["verify", "--store", &store, "--key", &key])
    }

    /// A small build of `version` with two platforms' artifacts (qemu and
    /// metal), with passing boot-test evidence unless `evidence` is false.
    pub fn build(&self, version: &str, evidence: bool) -> PathBuf {
        let files = vec![
            synthetic(
                "qemu",
                Format::Qcow2,
                ArtifactRole::Disk,
                format!("boxcar-{version}-qemu.qcow2"),
                format!("qcow2 of {version}").repeat(1000).into_bytes(),
            ),
            synthetic(
                "metal",
                Format::RawZstd,
                ArtifactRole::Disk,
                format!("boxcar-{version}-metal.raw.zst"),
                format!("zstd of {version}").repeat(3000).into_bytes(),
            ),
        ];
        self.build_with(version, evidence, files)
    }

    /// A build with an artifact for every platform, the metal one a real
    /// zstd stream of a small raw disk (so it can be decompressed), and the
    /// disk artifacts `size` bytes each.
    pub fn full_build(&self, version: &str, size: usize) -> PathBuf {
        let raw: Vec<u8> = (0..size)
            .map(|i| if i % 4096 < 512 { (i % 251) as u8 } else { 0 })
            .collect();
        let compressed = compress(&raw);
        let pattern = |seed: u8| -> Vec<u8> { (0..size).map(|i| (i % 241) as u8 ^ seed).collect() };
        let files = vec![
            synthetic(
                "qemu",
                Format::Qcow2,
                ArtifactRole::Disk,
                format!("boxcar-{version}-qemu.qcow2"),
                pattern(1),
            ),
            synthetic(
                "vmware",
                Format::Ova,
                ArtifactRole::Disk,
                format!("boxcar-{version}-vmware.ova"),
                pattern(2),
            ),
            synthetic(
                "aws",
                Format::Raw,
                ArtifactRole::Disk,
                format!("boxcar-{version}-aws.raw"),
                pattern(3),
            ),
            synthetic(
                "metal",
                Format::RawZstd,
                ArtifactRole::Disk,
                format!("boxcar-{version}-metal.raw.zst"),
                compressed,
            ),
            synthetic(
                "pxe",
                Format::Pxe,
                ArtifactRole::Kernel,
                format!("boxcar-{version}-pxe.vmlinuz"),
                pattern(4),
            ),
            synthetic(
                "pxe",
                Format::Pxe,
                ArtifactRole::Initrd,
                format!("boxcar-{version}-pxe.initrd"),
                pattern(5),
            ),
            synthetic(
                "pxe",
                Format::Pxe,
                ArtifactRole::BootScript,
                format!("boxcar-{version}-pxe.ipxe"),
                b"#!ipxe\nboot\n".to_vec(),
            ),
        ];
        let dir = self.build_with(version, true, files);
        fs::write(dir.join("metal.raw.expected"), raw).unwrap();
        dir
    }

    fn build_with(&self, version: &str, evidence: bool, files: Vec<SyntheticFile>) -> PathBuf {
        let dir = self.path(&format!("build/{version}"));
        fs::create_dir_all(&dir).unwrap();
        let mut artifacts = Vec::new();
        let mut platforms: Vec<Platform> = Vec::new();
        for file in files {
            fs::write(dir.join(&file.name), &file.content).unwrap();
            let (sha256, size) = boxcar_signing::sha256_file(&dir.join(&file.name)).unwrap();
            artifacts.push(ArtifactInfo {
                platform: file.platform.parse().unwrap(),
                format: file.format,
                role: file.role,
                file: file.name,
                size,
                sha256,
                kernel_cmdline: format!("usrhash=00 boxcar.platform={}", file.platform),
                // What a real zstd stream decompresses to, as a build records it.
                uncompressed_size: zstd::stream::decode_all(&file.content[..])
                    .ok()
                    .map(|raw| raw.len() as u64),
            });
            if platforms.iter().any(|p| p.id.as_str() == file.platform) {
                continue;
            }
            platforms.push(Platform {
                id: file.platform.parse().unwrap(),
                description: file.platform.into(),
                format: file.format,
                kernel_args: vec![],
                packages: vec![],
                units: vec![],
                firmware: Firmware::Uefi,
                disk_bus: DiskBus::Virtio,
                nic: Nic::Virtio,
                metadata_service: MetadataService::None,
                smbios_system: None,
                hypervisor_cpuid: HypervisorCpuid::Visible,
                guest_agent: GuestAgent::None,
                hypervisor_bound_agents: vec![],
                config_delivery: ConfigDelivery::Disk,
            });
            if evidence {
                write_evidence(&dir, version, file.platform, true);
            }
        }
        let info = BuildInfo {
            schema: SCHEMA_VERSION,
            name: "boxcar".into(),
            version: version.parse().unwrap(),
            channel: "alpha".parse().unwrap(),
            built_at: "2026-11-22T00:00:00Z".into(),
            source_date_epoch: 0,
            source: SourceInfo {
                git_commit: None,
                git_dirty: None,
                recipe_sha256: None,
                overlays_sha256: None,
            },
            usr: UsrInfo {
                root_hash: "ab".repeat(32),
                filesystem: "erofs".into(),
                data_file: "usr.raw".into(),
                hash_file: "usr-verity.raw".into(),
                signature_file: Some("usr-verity-sig.raw".into()),
                signed_by: None,
                data_block_size: 4096,
                hash_block_size: 4096,
                salt: "00".into(),
                filesystem_bytes: 0,
                hash_tree_bytes: 0,
                content_bytes: None,
                content_files: None,
                footprint: None,
            },
            kernel: KernelInfo {
                release: "6.12".into(),
                cmdline: "usrhash=00".into(),
                initrd: None,
                build_packages: Vec::new(),
            },
            dockerd: None,
            disk: DiskInfo {
                file: "disk.raw".into(),
                size: 0,
                allocated: 0,
                partition_table: PartitionTable {
                    disk_uuid: String::new(),
                    sector_size: 512,
                    partitions: vec![],
                },
            },
            files: vec![],
            artifacts,
            update: Some(synthetic_update(&dir, version)),
            update_agent: None,
            secure_boot: None,
            platforms,
            packages: vec![],
            phases: vec![],
            tools: vec![],
            tools_tree: vec![],
        };
        fs::write(
            dir.join("build.json"),
            serde_json::to_string_pretty(&info).unwrap(),
        )
        .unwrap();
        dir
    }
}

/// Marks a synthetic build as signed for Secure Boot: a certificate file
/// (its bytes are never parsed on the release side) recorded in build.json.
pub fn sign_for_secure_boot(build: &Path) {
    let certificate = b"-----BEGIN CERTIFICATE-----\nsynthetic\n-----END CERTIFICATE-----\n";
    fs::write(build.join("secure-boot.crt"), certificate).unwrap();
    let mut info = BuildInfo::load(build).unwrap();
    info.secure_boot = Some(SecureBootInfo {
        certificate: "secure-boot.crt".into(),
        file_sha256: boxcar_signing::digest::sha256_bytes(certificate),
        certificate_sha256: "00".repeat(32),
        subject: "CN=synthetic".into(),
        signed: vec!["uki.efi".into()],
    });
    fs::write(
        build.join("build.json"),
        serde_json::to_string_pretty(&info).unwrap(),
    )
    .unwrap();
}

/// A synthetic build's update payload: four small parts, really
/// compressed, under the names a real build gives them.
fn synthetic_update(dir: &Path, version: &str) -> UpdatePayload {
    let uuid = "0fc63daf-8483-4772-8e79-3d69d8477de4";
    let parts = [
        (
            UpdateRole::Usr,
            format!("boxcar_{version}_{uuid}.usr.raw"),
            Some(uuid),
        ),
        (
            UpdateRole::UsrVerity,
            format!("boxcar_{version}_{uuid}.usr-verity.raw"),
            Some(uuid),
        ),
        (
            UpdateRole::UsrSignature,
            format!("boxcar_{version}.usr-verity-sig.raw"),
            None,
        ),
        (UpdateRole::Uki, format!("boxcar_{version}.efi"), None),
    ];
    let files = parts
        .into_iter()
        .map(|(role, installed_name, uuid)| {
            let raw = format!("{installed_name} ").repeat(500).into_bytes();
            let compressed = compress(&raw);
            let name = format!("{installed_name}.zst");
            fs::write(dir.join(&name), &compressed).unwrap();
            let (sha256, size) = boxcar_signing::sha256_file(&dir.join(&name)).unwrap();
            let (installed_sha256, installed_size) =
                boxcar_signing::sha256_reader(&raw[..]).unwrap();
            UpdateFile {
                role,
                name,
                size,
                sha256,
                compression: "zstd".into(),
                installed_name,
                installed_size,
                installed_sha256,
                partition_uuid: uuid.map(str::to_owned),
            }
        })
        .collect();
    UpdatePayload { files }
}

/// One artifact file of a synthetic build.
pub struct SyntheticFile {
    platform: &'static str,
    format: Format,
    role: ArtifactRole,
    name: String,
    content: Vec<u8>,
}

fn synthetic(
    platform: &'static str,
    format: Format,
    role: ArtifactRole,
    name: String,
    content: Vec<u8>,
) -> SyntheticFile {
    SyntheticFile {
        platform,
        format,
        role,
        name,
        content,
    }
}

/// Compresses with the stock zstd tool (ci/setup-host installs it).
fn compress(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Process::new("zstd")
        .args(["-q", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("zstd is installed");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    output.stdout
}

pub fn write_evidence(build: &Path, version: &str, platform: &str, passed: bool) {
    let evidence = Evidence {
        schema: 1,
        case: TestCase::Platform,
        version: version.into(),
        platform: platform.into(),
        artifact: String::new(),
        hardware: String::new(),
        tampering: None,
        started_at: "2026-11-22T00:00:00Z".into(),
        accelerator: "tcg".into(),
        accelerator_reason: String::new(),
        qemu_command: String::new(),
        outcome: BootOutcome::PoweredOff,
        wall_seconds: 60.0,
        boot_time: None,
        milestones: vec![],
        verity_errors: vec![],
        boot_refusals: vec![],
        guest: Default::default(),
        earlier_attempt: None,
        checks: vec![Check {
            name: "docker ran a container".into(),
            passed,
            expected: String::new(),
            observed: String::new(),
        }],
        passed,
    };
    let dir = build.join("evidence").join(platform);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("evidence.json"),
        serde_json::to_string_pretty(&evidence).unwrap(),
    )
    .unwrap();
}

/// Reads an HTTP request's line and headers from a test server's client:
/// the path (without its leading `/`) and the headers, names lowercased.
pub fn read_request(
    stream: &std::net::TcpStream,
) -> std::io::Result<(String, Vec<(String, String)>)> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    Ok((path, headers))
}

/// Reads a JSON file of the store or a build.
/// `sha256sum --check --strict SHA256SUMS` in a release directory passes.
pub fn assert_sums_check(release: &Path) {
    let sums = Process::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(release)
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Rewrites a JSON file (a build's build.json, say) through `change`.
pub fn edit_json(path: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let mut value = read_json(path);
    change(&mut value);
    fs::write(path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}
