//! Scripts of the recipe run here on the host, against stand-ins for what
//! they reach during a build: recipes/dockerd/fetch-source against a Debian
//! archive served on loopback and signed with the test's own key. (A real
//! build runs it against Debian's archive, but only when dockerd is built
//! afresh; the cached build skips it.)

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::s3server::Website;

const PACKAGE: &str = "docker.io";
const VERSION: &str = "26.1.5+dfsg1-9+deb13u1";

fn fetch_source_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/dockerd/fetch-source")
}

/// A Debian archive in a directory: one suite ("trixie") whose source
/// index lists a package's tarballs, and a key to sign its InRelease.
struct Archive {
    root: tempfile::TempDir,
    gnupg_home: tempfile::TempDir,
}

impl Archive {
    fn new() -> Self {
        let archive = Self {
            root: tempfile::tempdir().unwrap(),
            gnupg_home: tempfile::tempdir().unwrap(),
        };
        archive.gpg(&[
            "--quick-generate-key",
            "Stand-in archive key <archive@example.invalid>",
            "ed25519",
            "sign",
            "never",
        ]);
        archive
    }

    fn gpg(&self, args: &[&str]) -> Vec<u8> {
        let output = Command::new("gpg")
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .env("GNUPGHOME", self.gnupg_home.path())
            .output()
            .expect("gpg runs (installed by ci/setup-host)");
        assert!(output.status.success(), "gpg {args:?}: {output:?}");
        output.stdout
    }

    /// The public key, as a keyring file gpgv reads.
    fn keyring(&self, dir: &Path) -> PathBuf {
        let path = dir.join("keyring.gpg");
        fs::write(&path, self.gpg(&["--export"])).unwrap();
        path
    }

    /// Publishes `files` (name, contents) as the package's source at
    /// VERSION; `listed` may differ from what is served, to play a
    /// tampered mirror.
    fn publish(&self, files: &[(&str, &[u8])], listed: &[(&str, &[u8])]) {
        let directory = "pool/main/d/docker.io";
        let pool = self.root.path().join(directory);
        fs::create_dir_all(&pool).unwrap();
        for (name, contents) in files {
            fs::write(pool.join(name), contents).unwrap();
        }
        let mut checksums = String::new();
        for (name, contents) in listed {
            checksums.push_str(&format!(
                " {} {} {name}\n",
                sha256_hex(contents),
                contents.len()
            ));
        }
        let sources = format!(
            "Package: hello\nVersion: 1.0-1\nDirectory: pool/main/h/hello\n\n\
             Package: {PACKAGE}\nVersion: {VERSION}\nDirectory: {directory}\n\
             Checksums-Sha256:\n{checksums}Section: admin\n"
        );
        let suite = self.root.path().join("dists/trixie");
        let sources_dir = suite.join("main/source");
        fs::create_dir_all(&sources_dir).unwrap();
        let sources_xz = sources_dir.join("Sources.xz");
        fs::write(sources_dir.join("Sources"), sources).unwrap();
        let status = Command::new("xz")
            .args(["--keep", "--force"])
            .arg(sources_dir.join("Sources"))
            .status()
            .unwrap();
        assert!(status.success());
        let index = fs::read(&sources_xz).unwrap();
        let release = format!(
            "Suite: trixie\nSHA256:\n {} {} main/source/Sources.xz\n",
            sha256_hex(&index),
            index.len()
        );
        fs::write(suite.join("Release"), release).unwrap();
        self.gpg(&[
            "--yes",
            "--clearsign",
            "--output",
            suite.join("InRelease").to_str().unwrap(),
            suite.join("Release").to_str().unwrap(),
        ]);
    }

    fn fetch(&self, keyring: &Path, version: &str, into: &Path) -> Output {
        let website = Website::serve(self.root.path());
        Command::new(fetch_source_script())
            .args([PACKAGE, version])
            .arg(into)
            .env("BOXCAR_SOURCE_KEYRING", keyring)
            .env("BOXCAR_SOURCE_ARCHIVES", format!("{} trixie", website.url))
            .output()
            .unwrap()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    boxcar_signing::digest::sha256_bytes(bytes).to_string()
}

const ORIG: (&str, &[u8]) = ("docker.io_26.1.5+dfsg1.orig.tar.xz", b"the engine's source");
const DEBIAN: (&str, &[u8]) = (
    "docker.io_26.1.5+dfsg1-9+deb13u1.debian.tar.xz",
    b"Debian's packaging",
);
const DSC: (&str, &[u8]) = ("docker.io_26.1.5+dfsg1-9+deb13u1.dsc", b"not needed");

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_tarballs_debian_signed_for_are_downloaded() {
    let archive = Archive::new();
    archive.publish(&[ORIG, DEBIAN, DSC], &[DSC, ORIG, DEBIAN]);
    let work = tempfile::tempdir().unwrap();
    let keyring = archive.keyring(work.path());
    let into = work.path().join("download");
    let output = archive.fetch(&keyring, VERSION, &into);
    assert!(output.status.success(), "{}", stderr(&output));
    for (name, contents) in [ORIG, DEBIAN] {
        assert_eq!(fs::read(into.join(name)).unwrap(), contents, "{name}");
    }
    // The .dsc is not fetched: the tarballs are what building takes.
    assert!(!into.join(DSC.0).exists());
}

#[test]
fn an_archive_signed_by_another_key_is_refused() {
    let archive = Archive::new();
    archive.publish(&[ORIG, DEBIAN], &[ORIG, DEBIAN]);
    let other = Archive::new();
    let work = tempfile::tempdir().unwrap();
    let keyring = other.keyring(work.path());
    let into = work.path().join("download");
    let output = archive.fetch(&keyring, VERSION, &into);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is not signed by Debian's archive keys"),
        "{}",
        stderr(&output)
    );
    assert!(!into.join(ORIG.0).exists());
}

#[test]
fn a_tarball_that_is_not_what_the_index_lists_is_refused() {
    let archive = Archive::new();
    archive.publish(
        &[ORIG, DEBIAN],
        &[(ORIG.0, b"what Debian released"), DEBIAN],
    );
    let work = tempfile::tempdir().unwrap();
    let keyring = archive.keyring(work.path());
    let output = archive.fetch(&keyring, VERSION, &work.path().join("download"));
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("does not have the SHA-256 Debian signed for it")
            || error.contains("Maximum file size exceeded"),
        "{error}"
    );
}

#[test]
fn a_version_no_suite_has_is_a_clear_error() {
    let archive = Archive::new();
    archive.publish(&[ORIG, DEBIAN], &[ORIG, DEBIAN]);
    let work = tempfile::tempdir().unwrap();
    let keyring = archive.keyring(work.path());
    let output = archive.fetch(&keyring, "26.1.5+dfsg1-9", &work.path().join("download"));
    assert!(!output.status.success());
    assert!(
        stderr(&output)
            .contains("no suite of Debian trixie has source package docker.io 26.1.5+dfsg1-9"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_index_naming_a_path_is_refused() {
    let archive = Archive::new();
    archive.publish(&[ORIG], &[("../escape.tar.xz", ORIG.1)]);
    let work = tempfile::tempdir().unwrap();
    let keyring = archive.keyring(work.path());
    let output = archive.fetch(&keyring, VERSION, &work.path().join("download"));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("strange file"),
        "{}",
        stderr(&output)
    );
}
