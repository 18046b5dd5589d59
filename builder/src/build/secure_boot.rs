//! Secure Boot signing: the key a build signs its boot chain with, where it
//! comes from, and the check that everything the firmware and systemd-boot
//! will load carries that signature.
//!
//! mkosi signs systemd-boot (on the ESP and as the `.efi.signed` copy in
//! /usr that `bootctl update` installs later) and the UKI; this module signs
//! the platform addons, which the recipe's finalize script writes unsigned.
//! Under Secure Boot systemd-stub skips an addon it cannot verify, and the
//! node would boot without its platform's command line.
//!
//! The key never enters the build directory, a log or a command line shown
//! to the user. Its certificate is public: it ships in the build as
//! [`CERTIFICATE_FILE`] for operators to enroll, and `boxcar test` enrolls
//! it in the firmware of its Secure Boot boots.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use boxcar_signing::digest::sha256_bytes;
use boxcar_signing::{Sha256Digest, UsrSignature};
use tempfile::NamedTempFile;

use crate::hosttools::{HostTools, Requirement};
use crate::process::Step;
use crate::records::buildinfo::SecureBootInfo;

/// The certificate's name in the build directory.
pub const CERTIFICATE_FILE: &str = "secure-boot.crt";

/// Where the boot loader sits on the ESP: the removable-media path the
/// firmware falls back to, and systemd-boot's own.
const ESP_BOOT_LOADERS: &[&str] = &["EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"];

/// The key and certificate a build signs with.
#[derive(Debug)]
pub struct SigningKey {
    pub key: PathBuf,
    pub certificate: PathBuf,
    /// The key, when it came as text in $BOXCAR_SECURE_BOOT_KEY, in a
    /// private file that lives as long as the build.
    _key_file: Option<NamedTempFile>,
}

impl SigningKey {
    /// The signing key from the command line, else the environment:
    /// $BOXCAR_SECURE_BOOT_KEY_FILE (a path) or $BOXCAR_SECURE_BOOT_KEY
    /// (the PEM text, as CI systems hand out secrets), with the certificate
    /// from $BOXCAR_SECURE_BOOT_CERTIFICATE_FILE. `None`: an unsigned build.
    pub fn resolve(
        key: Option<&Path>,
        certificate: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>> {
        let env = |name: &str| env(name).filter(|value| !value.is_empty());
        let certificate = certificate
            .map(Path::to_owned)
            .or_else(|| env("BOXCAR_SECURE_BOOT_CERTIFICATE_FILE").map(PathBuf::from));
        let (key, key_file) = if let Some(path) = key {
            (Some(path.to_owned()), None)
        } else if let Some(path) = env("BOXCAR_SECURE_BOOT_KEY_FILE") {
            (Some(PathBuf::from(path)), None)
        } else if let Some(text) = env("BOXCAR_SECURE_BOOT_KEY") {
            let file = private_key_file(&text)?;
            (Some(file.path().to_owned()), Some(file))
        } else {
            (None, None)
        };
        match (key, certificate) {
            (None, None) => Ok(None),
            (Some(_), None) => bail!(
                "a Secure Boot key needs its certificate: pass --secure-boot-certificate FILE \
                 or set BOXCAR_SECURE_BOOT_CERTIFICATE_FILE"
            ),
            (None, Some(_)) => bail!(
                "a Secure Boot certificate needs its key: pass --secure-boot-key FILE, \
                 or set BOXCAR_SECURE_BOOT_KEY_FILE or BOXCAR_SECURE_BOOT_KEY"
            ),
            (Some(key), Some(certificate)) => {
                for (what, path) in [("key", &key), ("certificate", &certificate)] {
                    if !path.is_file() {
                        bail!(
                            "the Secure Boot {what} {} is not a readable file",
                            path.display()
                        );
                    }
                }
                Ok(Some(Self {
                    key,
                    certificate,
                    _key_file: key_file,
                }))
            }
        }
    }

    /// Checks, before anything is built, that the certificate is one and
    /// that the key is its private half.
    pub fn check(&self, tools: &HostTools) -> Result<()> {
        let from_certificate =
            Step::new("reading the Secure Boot certificate", tools.path("openssl"))
                .args(["x509", "-noout", "-pubkey", "-in"])
                .arg(&self.certificate)
                .output_text()
                .context("the Secure Boot certificate is not a PEM X.509 certificate")?;
        let from_key = Step::new("reading the Secure Boot key", tools.path("openssl"))
            .args(["pkey", "-pubout", "-in"])
            .arg(&self.key)
            .output_text()
            .context("the Secure Boot key is not a PEM private key")?;
        if from_certificate.trim() != from_key.trim() {
            bail!(
                "the Secure Boot key {} is not the key of certificate {}",
                self.key.display(),
                self.certificate.display()
            );
        }
        Ok(())
    }

    /// mkosi's options that sign systemd-boot and the UKI, and the /usr
    /// root hash. The root hash is signed with the same key: the kernel
    /// trusts a signature when its certificate is in the firmware's db,
    /// where an operator enrolls this one for Secure Boot anyway.
    pub fn mkosi_options(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("secure-boot", "yes".into()),
            ("secure-boot-key", self.key.clone().into()),
            ("secure-boot-certificate", self.certificate.clone().into()),
            ("verity-key", self.key.clone().into()),
            ("verity-certificate", self.certificate.clone().into()),
        ]
    }

    /// Signs `file` in place (through a new file renamed over it), at
    /// `epoch`: sbsign stamps the signature with the time it reads, so the
    /// clock is frozen there (faketime) and a rebuild signs alike.
    pub fn sign(&self, tools: &HostTools, file: &Path, epoch: i64) -> Result<()> {
        let signed = file.with_extension("efi.signing");
        let _ = fs::remove_file(&signed);
        Step::new(
            format!("signing {} for Secure Boot", file.display()),
            tools.path("faketime"),
        )
        .env("TZ", "UTC")
        .arg("-f")
        .arg(frozen_time(epoch)?)
        .arg(tools.path("sbsign"))
        .arg("--key")
        .arg(&self.key)
        .arg("--cert")
        .arg(&self.certificate)
        .arg("--output")
        .arg(&signed)
        .arg(file)
        .run()?;
        fs::rename(&signed, file).with_context(|| format!("replacing {}", file.display()))
    }
}

/// libfaketime's frozen clock at `epoch` ("2026-12-01 10:00:00", UTC).
fn frozen_time(epoch: i64) -> Result<String> {
    let time = time::OffsetDateTime::from_unix_timestamp(epoch)
        .with_context(|| format!("SOURCE_DATE_EPOCH {epoch} is out of range"))?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    Ok(time.format(&format)?)
}

/// What the private key files are called: the prefix, then the pid of
/// the build that made it.
const KEY_FILE_PREFIX: &str = "boxcar-secure-boot-";

/// Writes key text to a new private file (mode 0600, never through a
/// symlink: `NamedTempFile` creates it exclusively), named with this
/// process's pid. The file goes when the build ends, and with a second
/// Ctrl-C; a build killed outright leaves it, so the next build removes
/// those whose build is gone.
fn private_key_file(text: &str) -> Result<NamedTempFile> {
    if !text.contains("PRIVATE KEY-----") {
        bail!("$BOXCAR_SECURE_BOOT_KEY does not hold a PEM private key");
    }
    let dir = std::env::temp_dir();
    remove_abandoned_key_files(&dir);
    let mut file = tempfile::Builder::new()
        .prefix(&format!("{KEY_FILE_PREFIX}{}-", std::process::id()))
        .suffix(".key")
        .tempfile_in(&dir)
        .context("creating a private file for the Secure Boot key")?;
    file.write_all(text.as_bytes())?;
    file.flush()?;
    crate::interrupt::remove_on_exit(file.path());
    Ok(file)
}

/// Removes key files in `dir` left by builds that no longer run (killed
/// outright: SIGKILL, the OOM killer, a lost machine).
fn remove_abandoned_key_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(KEY_FILE_PREFIX)
            .filter(|rest| rest.ends_with(".key"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Checks that every file in `signed` (paths in the build directory, and
/// the boot loaders inside the ESP of `disk` at `esp_offset`) verifies
/// against the certificate, copies the certificate into the build, and
/// describes both for build.json.
pub fn verify_build(
    tools: &HostTools,
    key: &SigningKey,
    staging: &Path,
    signed: &[String],
    esp_offset: u64,
) -> Result<SecureBootInfo> {
    let certificate = staging.join(CERTIFICATE_FILE);
    let file_sha256 = copy_new(&key.certificate, &certificate)?;
    let mut verified = Vec::new();
    for name in signed {
        sbverify(tools, &certificate, &staging.join(name), name)?;
        verified.push(name.clone());
    }
    let scratch = tempfile::tempdir()?;
    let disk = staging.join("disk.raw");
    for loader in ESP_BOOT_LOADERS {
        let copy = scratch.path().join("loader.efi");
        let _ = fs::remove_file(&copy);
        Step::new(
            format!("reading {loader} from the ESP"),
            tools.path("mcopy"),
        )
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-n", "-i"])
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg(format!("::/{loader}"))
        .arg(&copy)
        .run()?;
        let shown = format!("disk.raw:ESP/{loader}");
        sbverify(tools, &certificate, &copy, &shown)?;
        verified.push(shown);
    }
    let fingerprint = Step::new("reading the Secure Boot certificate", tools.path("openssl"))
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&certificate)
        .output_text()?;
    let subject = Step::new("reading the Secure Boot certificate", tools.path("openssl"))
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&certificate)
        .output_text()?;
    Ok(SecureBootInfo {
        certificate: CERTIFICATE_FILE.to_owned(),
        file_sha256,
        certificate_sha256: fingerprint_hex(&fingerprint)?,
        subject: subject
            .trim()
            .trim_start_matches("subject=")
            .trim()
            .to_owned(),
        signed: verified,
    })
}

/// Checks the /usr root hash signature as the kernel will: a PKCS#7
/// signature over the root hash (hex) by the build's certificate, which
/// the signature partition also names by fingerprint.
pub fn verify_usr_signature(
    tools: &HostTools,
    info: &SecureBootInfo,
    staging: &Path,
    signature: &UsrSignature,
) -> Result<()> {
    if signature.certificate_fingerprint != info.certificate_sha256 {
        bail!(
            "the /usr root hash is signed by certificate {}, not the build's ({})",
            signature.certificate_fingerprint,
            info.certificate_sha256
        );
    }
    let scratch = tempfile::tempdir()?;
    let der = scratch.path().join("usr.p7s");
    let content = scratch.path().join("roothash");
    fs::write(&der, signature.der()?)?;
    fs::write(&content, &signature.root_hash)?;
    let certificate = staging.join(&info.certificate);
    Step::new(
        "checking the /usr root hash signature",
        tools.path("openssl"),
    )
    // The signer must be this certificate (-nointern: not one the
    // signature carries); like the kernel, no chain is built above it.
    .args([
        "smime",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-noverify",
        "-nointern",
    ])
    .arg("-in")
    .arg(&der)
    .arg("-content")
    .arg(&content)
    .arg("-certfile")
    .arg(&certificate)
    .arg("-out")
    .arg("/dev/null")
    .run()
    .context("the /usr root hash signature does not verify against the build's certificate")
}

fn sbverify(tools: &HostTools, certificate: &Path, file: &Path, shown: &str) -> Result<()> {
    Step::new(
        format!("checking the Secure Boot signature of {shown}"),
        tools.path("sbverify"),
    )
    .arg("--cert")
    .arg(certificate)
    .arg(file)
    .run()
    .with_context(|| format!("{shown} is not signed with the build's Secure Boot key"))
}

/// Copies `from` to a new file `to`; returns the sha256 of what it wrote.
fn copy_new(from: &Path, to: &Path) -> Result<Sha256Digest> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    file.write_all(&bytes)?;
    Ok(sha256_bytes(&bytes))
}

/// The hex digits of openssl's `sha256 Fingerprint=AB:CD:...` line.
fn fingerprint_hex(line: &str) -> Result<String> {
    let Some((_, value)) = line.trim().split_once('=') else {
        bail!("openssl printed no fingerprint: {line:?}");
    };
    Ok(value.replace(':', "").to_ascii_lowercase())
}

/// The programs a signed build needs besides the others.
pub fn requirements() -> Vec<Requirement> {
    vec![
        Requirement {
            program: "openssl",
            purpose: "checks the Secure Boot key against its certificate",
            min_version: None,
            version_args: &["version"],
            package: "openssl",
        },
        Requirement {
            program: "sbsign",
            purpose: "signs the platform addons for Secure Boot",
            min_version: None,
            version_args: &["--version"],
            package: "sbsigntool",
        },
        Requirement {
            program: "faketime",
            purpose: "signs at SOURCE_DATE_EPOCH, so a rebuild signs alike",
            min_version: None,
            version_args: &["--version"],
            package: "faketime",
        },
        Requirement {
            program: "sbverify",
            purpose: "checks every signed boot file against the certificate",
            min_version: None,
            version_args: &["--version"],
            package: "sbsigntool",
        },
        Requirement {
            program: "mcopy",
            purpose: "reads the boot loader back from the ESP",
            min_version: None,
            version_args: &["--version"],
            package: "mtools",
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn signatures_are_dated_at_the_epoch_in_utc() {
        assert_eq!(frozen_time(1_764_583_200).unwrap(), "2025-12-01 10:00:00");
        assert!(frozen_time(i64::MAX).is_err());
    }

    #[test]
    fn the_secure_boot_key_signs_the_usr_root_hash_too() {
        let dir = tempfile::tempdir().unwrap();
        let (key, crt) = (dir.path().join("db.key"), dir.path().join("db.crt"));
        fs::write(&key, "k").unwrap();
        fs::write(&crt, "c").unwrap();
        let signing = SigningKey::resolve(Some(&key), Some(&crt), no_env)
            .unwrap()
            .unwrap();
        let options = signing.mkosi_options();
        let value = |name: &str| {
            options
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| PathBuf::from(v))
        };
        assert_eq!(value("verity-key"), value("secure-boot-key"));
        assert_eq!(
            value("verity-certificate"),
            value("secure-boot-certificate")
        );
        assert_eq!(value("verity-certificate"), Some(crt));
    }

    #[test]
    fn no_key_anywhere_is_an_unsigned_build() {
        assert!(SigningKey::resolve(None, None, no_env).unwrap().is_none());
    }

    #[test]
    fn a_key_without_its_certificate_is_refused_and_vice_versa() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("db.key");
        fs::write(&key, "x").unwrap();
        let err = SigningKey::resolve(Some(&key), None, no_env).unwrap_err();
        assert!(err.to_string().contains("needs its certificate"), "{err}");
        let err = SigningKey::resolve(None, Some(&key), no_env).unwrap_err();
        assert!(err.to_string().contains("needs its key"), "{err}");
    }

    #[test]
    fn the_command_line_wins_over_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let (key, crt) = (dir.path().join("a.key"), dir.path().join("a.crt"));
        fs::write(&key, "k").unwrap();
        fs::write(&crt, "c").unwrap();
        let env = |name: &str| match name {
            "BOXCAR_SECURE_BOOT_KEY_FILE" => Some("/nonexistent.key".to_owned()),
            "BOXCAR_SECURE_BOOT_CERTIFICATE_FILE" => Some(crt.display().to_string()),
            _ => None,
        };
        let signing = SigningKey::resolve(Some(&key), None, env).unwrap().unwrap();
        assert_eq!(signing.key, key);
        assert_eq!(signing.certificate, crt);
    }

    #[test]
    fn key_text_from_the_environment_goes_to_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let crt = dir.path().join("a.crt");
        fs::write(&crt, "c").unwrap();
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let env = |name: &str| match name {
            "BOXCAR_SECURE_BOOT_KEY" => Some(pem.to_owned()),
            _ => None,
        };
        let signing = SigningKey::resolve(None, Some(&crt), env).unwrap().unwrap();
        assert_eq!(fs::read_to_string(&signing.key).unwrap(), pem);
        let mode = fs::metadata(&signing.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is private");
        let path = signing.key.clone();
        drop(signing);
        assert!(!path.exists(), "the key file goes with the build");
    }

    #[test]
    fn key_files_of_builds_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            fs::write(&path, "key").unwrap();
            path
        };
        // pid_max is at most 2^22: no process has this pid.
        let abandoned = file("boxcar-secure-boot-99999999-a1b2.key");
        let running = file(&format!(
            "boxcar-secure-boot-{}-c3d4.key",
            std::process::id()
        ));
        let other = file("boxcar-secure-boot-notes.txt");
        remove_abandoned_key_files(dir.path());
        assert!(!abandoned.exists());
        assert!(running.exists() && other.exists());
    }

    #[test]
    fn key_text_that_is_not_a_private_key_is_refused_without_showing_it() {
        let env = |name: &str| match name {
            "BOXCAR_SECURE_BOOT_KEY" => Some("hunter2".to_owned()),
            _ => None,
        };
        let err = SigningKey::resolve(None, None, env).unwrap_err();
        assert!(!format!("{err:#}").contains("hunter2"));
    }

    #[test]
    fn reads_openssl_fingerprints() {
        assert_eq!(
            fingerprint_hex("sha256 Fingerprint=AB:0C:FF\n").unwrap(),
            "ab0cff"
        );
        assert!(fingerprint_hex("nothing").is_err());
    }
}
