//! Helpers for the end-to-end suite: the real `boxcar` binary, a real
//! build shared by the tests that need one, and the skip policy.
//!
//! These tests need root, the Debian mirror and a few minutes. Where they
//! cannot run they fail, loudly; they skip (printing why) only when
//! BOXCAR_E2E_ALLOW_SKIP=1 asks for that.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use boxcar_client::files::{free_bytes, SpaceFor};

/// The checkout this suite belongs to.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Scratch space for the suite, under target/ (ignored by git).
pub fn scratch_dir() -> PathBuf {
    project_root().join("target/e2e")
}

/// Free space the whole suite needs on the file system of its scratch
/// directory. A clean-clone `.ci/run` on the documented machine, where the
/// scratch directory, the build cache (/var/cache/boxcar) and /tmp share
/// one file system, used at most 16.9 GB more than before it started
/// (2026-12-06, cargo's target directory included); this adds a margin.
const SUITE_NEEDS_GB: u64 = 20;
const SUITE_NEEDS_BYTES: u64 = SUITE_NEEDS_GB * 1_000_000_000;

/// Returns false (after printing why) when the suite may not run here and
/// skipping was asked for; panics when it may not run and skipping was not
/// asked for.
pub fn can_run(test: &str) -> bool {
    let problem = if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        Some("it must run as root (mkosi builds images as root)".to_owned())
    } else {
        disk_space_problem().clone()
    };
    match problem {
        None => true,
        Some(reason) if std::env::var_os("BOXCAR_E2E_ALLOW_SKIP").is_some_and(|v| v == "1") => {
            eprintln!("SKIPPED {test}: {reason} (BOXCAR_E2E_ALLOW_SKIP=1)");
            false
        }
        Some(reason) => panic!(
            "{test} cannot run: {reason}. Set BOXCAR_E2E_ALLOW_SKIP=1 to skip it explicitly."
        ),
    }
}

/// Why the suite cannot start for lack of disk space, if it cannot. Decided
/// once, before the first test writes anything: later tests see the space
/// the suite itself has taken, which the figure already counts.
fn disk_space_problem() -> &'static Option<String> {
    static PROBLEM: OnceLock<Option<String>> = OnceLock::new();
    PROBLEM.get_or_init(|| {
        let dir = scratch_dir();
        std::fs::create_dir_all(&dir).expect("creating the suite's scratch directory");
        // Not counting the blocks kept back for root: a margin on the figure.
        let free =
            free_bytes(&dir, SpaceFor::AnyUser).expect("free space of the scratch directory");
        (free < SUITE_NEEDS_BYTES).then(|| {
            format!(
                "it needs {SUITE_NEEDS_GB} GB free on the file system of {} (builds, boots, \
                 stores and the build cache), which has {:.1} GB; remove old builds or \
                 target/ directories first",
                dir.display(),
                free as f64 / 1e9
            )
        })
    })
}

/// The `boxcar` binary: $BOXCAR_BIN, else built here in release mode.
pub fn boxcar_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("BOXCAR_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // The node agent too: a build puts the one next to boxcar into the
        // image.
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "boxcar",
                "-p",
                "boxcar-update",
            ])
            .current_dir(project_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of boxcar failed");
        project_root().join("target/release/boxcar")
    })
}

/// `boxcar ARGS` from the checkout with `env` added, echoed, not yet run.
fn boxcar_command(args: &[&str], env: &[(&str, String)]) -> Command {
    eprintln!("$ boxcar {}", args.join(" "));
    let mut command = Command::new(boxcar_bin());
    command
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .current_dir(project_root());
    command
}

/// Runs `boxcar ARGS` from the checkout, stderr passed through (progress
/// stays visible in the test log), stdout captured.
pub fn boxcar(args: &[&str]) -> Output {
    boxcar_in_env(args, &[])
}

/// Like [`boxcar`], with `env` added to its environment.
pub fn boxcar_in_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let output = boxcar_command(args, env)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running boxcar");
    eprintln!("({})", output.status);
    output
}

/// Like [`boxcar`], with stderr captured too.
pub fn boxcar_captured(args: &[&str]) -> Output {
    boxcar_command(args, &[]).output().expect("running boxcar")
}

/// One real build of the default recipe, made once per test run and shared.
pub fn shared_build() -> &'static Path {
    static BUILD: OnceLock<PathBuf> = OnceLock::new();
    BUILD.get_or_init(|| build_like_the_shared_one(&scratch_dir().join("build")))
}

/// A build made exactly as [`shared_build`] is (same version, channel and
/// keys) into `out`, emptied first; returns its build directory.
pub fn build_like_the_shared_one(out: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let output = signed_build(out, "0.0.0-e2e", &["--channel", "alpha"]);
    assert!(output.status.success(), "boxcar build failed");
    let printed: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("build --json prints JSON");
    let dir = PathBuf::from(printed["dir"].as_str().expect("a dir field"));
    assert_eq!(dir, out.join("0.0.0-e2e"));
    dir
}

/// `boxcar build` of `version` into `out`, signed for Secure Boot with the
/// suite's key and pinning the suite's store key, with `extra` arguments.
fn signed_build(out: &Path, version: &str, extra: &[&str]) -> Output {
    let (store_key, secure_boot) = (shared_store_key(), shared_secure_boot_key());
    let (update_key, key, certificate) = (
        store_key.public(),
        secure_boot.key(),
        secure_boot.certificate(),
    );
    let mut args = vec![
        "build",
        "--version",
        version,
        "--out",
        out.to_str().unwrap(),
        "--update-key",
        &update_key,
        "--secure-boot-key",
        &key,
        "--secure-boot-certificate",
        &certificate,
        "--json",
    ];
    args.extend(extra);
    boxcar(&args)
}

/// A second build, newer than `shared_build`, for the update tests: compose
/// only, as an update needs the /usr image, its hash tree and the UKI, not
/// the platform artifacts. Made once per test run, next to the first.
pub fn shared_newer_build() -> &'static Path {
    static BUILD: OnceLock<PathBuf> = OnceLock::new();
    BUILD.get_or_init(|| {
        let out = shared_build().parent().unwrap().to_owned();
        let output = signed_build(&out, "0.0.1-e2e", &["--no-artifacts"]);
        assert!(output.status.success(), "the second build failed");
        out.join("0.0.1-e2e")
    })
}

/// A key pair made with `boxcar keys generate`.
pub struct KeyPair {
    pub dir: PathBuf,
}

impl KeyPair {
    pub fn generate(dir: &Path) -> Self {
        let _ = std::fs::remove_dir_all(dir);
        let output = boxcar(&["keys", "generate", "--out", dir.to_str().unwrap()]);
        assert!(output.status.success(), "keys generate failed");
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn secret(&self) -> String {
        self.dir.join("boxcar.key").display().to_string()
    }

    pub fn public(&self) -> String {
        self.dir.join("boxcar.pub").display().to_string()
    }
}

/// The store key of the suite: the shared builds' agents pin it (a test
/// key is a build input, never a secret in the image), and the update
/// tests' stores are signed with it.
pub fn shared_store_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate(&scratch_dir().join("store-key")))
}

/// The suite's Secure Boot key and self-signed certificate, made with stock
/// openssl as an operator would: the shared builds are signed with it, and
/// `boxcar test` enrolls the certificate in the firmware it boots them on.
pub struct SecureBootKey {
    pub dir: PathBuf,
}

impl SecureBootKey {
    pub fn key(&self) -> String {
        self.dir.join("db.key").display().to_string()
    }

    pub fn certificate(&self) -> String {
        self.dir.join("db.crt").display().to_string()
    }
}

pub fn shared_secure_boot_key() -> &'static SecureBootKey {
    static KEY: OnceLock<SecureBootKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = scratch_dir().join("secure-boot-key");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = SecureBootKey { dir };
        let status = Command::new("openssl")
            .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-keyout", &key.key(), "-out", &key.certificate()])
            .args(["-days", "3650", "-subj", "/CN=Boxcar e2e Secure Boot/"])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running openssl");
        assert!(
            status.success(),
            "openssl could not make the Secure Boot key"
        );
        key
    })
}

/// A copy of the checkout's configuration (recipes, overlays, channels) in
/// `dir`, with `key = value` lines replaced or added in channel files:
/// `(channel, key, value)`.
pub fn project_copy(dir: &Path, channel_settings: &[(&str, &str, &str)]) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for sub in ["recipes", "overlays", "channels"] {
        let status = Command::new("cp")
            .arg("-r")
            .arg(project_root().join(sub))
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    for (channel, key, value) in channel_settings {
        let path = dir.join(format!("channels/{channel}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        // Drop the key's line (and a multi-line array under it).
        let mut kept = Vec::new();
        let mut skipping = false;
        for line in text.lines() {
            if line.starts_with(&format!("{key} =")) {
                skipping = line.trim_end().ends_with('[');
                continue;
            }
            if skipping {
                skipping = line.trim() != "]";
                continue;
            }
            kept.push(line);
        }
        std::fs::write(&path, format!("{}\n{key} = {value}\n", kept.join("\n"))).unwrap();
    }
    dir.to_owned()
}

/// The stores the update tests serve to a node running the shared build,
/// all signed with the shared store key, each carrying the newer build on
/// channel alpha (made once per run):
/// - `good/`: everyone may update at once. Published to an S3 store
///   (s3s-fs) and served from the server's object tree as files, the way a
///   bucket's website endpoint or a CDN serves it: nodes follow an S3 store
///   over plain HTTP, with no credentials;
/// - `paused/`: the same in a directory store, its rollout paused
///   (`promote --pause`);
/// - `waves/`: published with waves that open to nobody for two days;
/// - `tampered/`: `paused/` before the pause, one byte of the update's
///   /usr flipped.
pub fn shared_update_stores() -> &'static Path {
    static STORES: OnceLock<PathBuf> = OnceLock::new();
    STORES.get_or_init(|| {
        let newer = shared_newer_build();
        let root = scratch_dir().join("stores");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let key = shared_store_key();
        // Alpha without the boot-test evidence the newer, unpackaged build
        // lacks; nodes update to what it carries.
        let publish = |name: &str, store: &str, waves: &str, env: &[(&str, String)]| {
            let project = project_copy(
                &scratch_dir().join(format!("project-{name}")),
                &[
                    ("alpha", "evidence", "\"not-required\""),
                    ("alpha", "waves", waves),
                ],
            );
            let output = boxcar_in_env(
                &[
                    "--project",
                    project.to_str().unwrap(),
                    "publish",
                    "--build",
                    newer.to_str().unwrap(),
                    "--store",
                    store,
                    "--key",
                    &key.secret(),
                    "--trust",
                    &key.public(),
                    "--channel",
                    "alpha",
                ],
                env,
            );
            assert!(output.status.success(), "publishing to {store} failed");
            project
        };
        let server = s3server::S3Server::s3s_fs_in(&scratch_dir());
        let good_url = format!("s3://{}/good", s3server::BUCKET);
        publish("good", &good_url, "[]", &server.env());
        std::fs::rename(server.object_file("good"), root.join("good")).unwrap();
        drop(server);
        let in_root = |name: &str| root.join(name).to_str().unwrap().to_owned();
        publish(
            "waves",
            &in_root("waves"),
            "[{ percent = 100, after = \"2d\" }]",
            &[],
        );
        let project = publish("paused", &in_root("paused"), "[]", &[]);
        let status = Command::new("cp")
            .arg("-al")
            .arg(root.join("paused"))
            .arg(root.join("tampered"))
            .status()
            .unwrap();
        assert!(status.success());
        let paused = boxcar(&[
            "--project",
            project.to_str().unwrap(),
            "promote",
            "--store",
            &in_root("paused"),
            "--key",
            &key.secret(),
            "--trust",
            &key.public(),
            "--to",
            "alpha",
            "--pause",
        ]);
        assert!(paused.status.success(), "pausing the rollout failed");
        // A private copy of the update's /usr, one byte flipped.
        let release = root.join("tampered/releases/0.0.1-e2e");
        let usr = std::fs::read_dir(&release)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".usr.raw.zst"))
            .expect("the release carries its /usr");
        let mut bytes = std::fs::read(&usr).unwrap();
        bytes[4096] ^= 0x01;
        std::fs::remove_file(&usr).unwrap();
        std::fs::write(&usr, bytes).unwrap();
        root
    })
}

/// Asserts that `sha256sum --check --strict SUMS` accepts the files in
/// `dir` that the sums file `SUMS` (in `dir`) lists.
pub fn assert_sha256sum_check(dir: &Path, sums: &str) {
    let check = std::process::Command::new("sha256sum")
        .args(["--check", "--strict", sums])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sha256sum --check {sums}: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Asserts that sha256sum agrees with `digests` (sha256, file name in
/// `dir`), through a sums file it writes into `dir` and removes.
pub fn assert_digests_match(dir: &Path, digests: &[(&str, &str)]) {
    let sums: String = digests
        .iter()
        .map(|(sha256, name)| format!("{sha256}  {name}\n"))
        .collect();
    let sums_file = dir.join("SHA256SUMS.e2e");
    std::fs::write(&sums_file, sums).unwrap();
    assert_sha256sum_check(dir, "SHA256SUMS.e2e");
    std::fs::remove_file(&sums_file).unwrap();
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Runs a stock host tool and returns its stdout, panicking on failure.
pub fn host_tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[path = "../builder/tests/common/s3server.rs"]
pub mod s3server;

/// The release pipeline (ci/gitlab-ci.yml) run by gitlab-ci-local on this
/// machine against an s3s-fs server: a store with a keyring (root and
/// signing keys made here), a staging prefix, and the signing key given
/// only to the `release` environment.
pub struct PipelineLab {
    pub server: s3server::S3Server,
    pub dir: tempfile::TempDir,
}

/// What one pipeline run did.
pub struct PipelineRun {
    pub success: bool,
    pub log: String,
}

impl PipelineRun {
    /// The jobs' results as gitlab-ci-local sums them up, one per line.
    pub fn summary(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.starts_with(" PASS ") || l.starts_with(" FAIL "))
            .collect()
    }
}

impl PipelineLab {
    /// Starts the server and makes the store's keyring.
    pub fn start() -> Self {
        let server = s3server::S3Server::s3s_fs();
        let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
        let lab = Self { server, dir };
        for keys in ["root", "signing"] {
            let path = lab.path(keys);
            assert!(
                boxcar(&["keys", "generate", "--out", path.to_str().unwrap()])
                    .status
                    .success()
            );
        }
        let signing_public = lab.path("signing/boxcar.pub");
        let root_key = lab.path("root/boxcar.key");
        let init = lab.boxcar_with_credentials(&[
            "keys",
            "init",
            "--store",
            &lab.store(),
            "--root",
            root_key.to_str().unwrap(),
            "--signing",
            signing_public.to_str().unwrap(),
        ]);
        assert!(init.status.success(), "keys init on the S3 store failed");
        // The signing key, scoped to the `release` environment (the publish
        // job's), in gitlab-ci-local's variables file.
        let key = std::fs::read_to_string(lab.path("signing/boxcar.key")).unwrap();
        let indented: String = key.lines().map(|l| format!("      {l}\n")).collect();
        std::fs::write(
            lab.path("variables.yml"),
            format!("BOXCAR_SIGNING_KEY:\n  values:\n    release: |\n{indented}"),
        )
        .unwrap();
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn store(&self) -> String {
        format!("s3://{}/store", s3server::BUCKET)
    }

    pub fn root_public(&self) -> PathBuf {
        self.path("root/boxcar.pub")
    }

    /// `boxcar ARGS` with the server's endpoint and credentials, stderr
    /// captured.
    pub fn boxcar_with_credentials(&self, args: &[&str]) -> Output {
        boxcar_command(args, &self.server.env())
            .output()
            .expect("running boxcar")
    }

    /// Runs the pipeline (or only `jobs`, in its order) on the build in
    /// `prebuilt` as `version`, staged under s3://boxcar/STAGING/.
    pub fn run(&self, prebuilt: &Path, version: &str, staging: &str, jobs: &[&str]) -> PipelineRun {
        let variables = self
            .path("variables.yml")
            .strip_prefix(project_root())
            .expect("the lab lies inside the checkout")
            .to_owned();
        let mut command = Command::new(s3server::tool("gitlab-ci-local"));
        command
            .current_dir(project_root())
            .args(["--file", "ci/gitlab-ci.yml", "--variables-file"])
            .arg(&variables)
            .args(["--concurrency", "1", "--timestamps", "--no-color"]);
        let mut variable = |name: &str, value: &str| {
            command.arg("--variable").arg(format!("{name}={value}"));
        };
        variable("BOXCAR", boxcar_bin().to_str().unwrap());
        variable("BOXCAR_PREBUILT", prebuilt.to_str().unwrap());
        variable("BOXCAR_VERSION", version);
        variable(
            "BOXCAR_STAGING",
            &format!("s3://{}/{staging}", s3server::BUCKET),
        );
        variable("BOXCAR_STORE", &self.store());
        variable("BOXCAR_ROOT_PUB", self.root_public().to_str().unwrap());
        for (name, value) in self.server.env() {
            variable(name, &value);
        }
        command.args(jobs);
        eprintln!(
            "$ gitlab-ci-local --file ci/gitlab-ci.yml {}",
            jobs.join(" ")
        );
        let output = command.output().expect("running gitlab-ci-local");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(self.path(&format!("pipeline-{version}.log")), &log).unwrap();
        PipelineRun {
            success: output.status.success(),
            log,
        }
    }
}
