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

/// Returns false (after printing why) when the suite may not run here and
/// skipping was asked for; panics when it may not run and skipping was not
/// asked for.
pub fn can_run(test: &str) -> bool {
    let problem = if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        Some("it must run as root (mkosi builds images as root)")
    } else {
        None
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

/// The `boxcar` binary: $BOXCAR_BIN, else built here in release mode.
pub fn boxcar_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("BOXCAR_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", "boxcar"])
            .current_dir(project_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of boxcar failed");
        project_root().join("target/release/boxcar")
    })
}

/// Runs `boxcar ARGS` from the checkout, stderr passed through (progress
/// stays visible in the test log), stdout captured.
pub fn boxcar(args: &[&str]) -> Output {
    eprintln!("$ boxcar {}", args.join(" "));
    let output = Command::new(boxcar_bin())
        .args(args)
        .current_dir(project_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running boxcar");
    eprintln!("(exit status {})", output.status);
    output
}

/// Like [`boxcar`], with stderr captured too.
pub fn boxcar_captured(args: &[&str]) -> Output {
    eprintln!("$ boxcar {}", args.join(" "));
    Command::new(boxcar_bin())
        .args(args)
        .current_dir(project_root())
        .output()
        .expect("running boxcar")
}

/// One real build of the default recipe, made once per test run and shared.
pub fn shared_build() -> &'static Path {
    static BUILD: OnceLock<PathBuf> = OnceLock::new();
    BUILD.get_or_init(|| {
        let out = scratch_dir().join("build");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let out_arg = out.to_str().unwrap();
        let output = boxcar(&[
            "build",
            "--channel",
            "alpha",
            "--version",
            "0.0.0-e2e",
            "--out",
            out_arg,
            "--json",
        ]);
        assert!(output.status.success(), "boxcar build failed");
        let printed: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("build --json prints JSON");
        let dir = PathBuf::from(printed["dir"].as_str().expect("a dir field"));
        assert_eq!(dir, out.join("0.0.0-e2e"));
        dir
    })
}

/// A second build, newer than `shared_build`, for the update tests: compose
/// only, as an update needs the /usr image, its hash tree and the UKI, not
/// the platform artifacts. Made once per test run, next to the first.
pub fn shared_newer_build() -> &'static Path {
    static BUILD: OnceLock<PathBuf> = OnceLock::new();
    BUILD.get_or_init(|| {
        let out = shared_build().parent().unwrap().to_owned();
        let output = boxcar(&[
            "build",
            "--version",
            "0.0.1-e2e",
            "--out",
            out.to_str().unwrap(),
            "--no-artifacts",
            "--json",
        ]);
        assert!(output.status.success(), "the second build failed");
        out.join("0.0.1-e2e")
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
