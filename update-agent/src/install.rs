//! Before anything is written to the idle slot, the staged update is
//! checked as a whole: the staged UKI boots the /usr staged next to it,
//! that /usr and its hash tree really have that root hash (`veritysetup
//! verify`), the partition UUIDs are the halves of the root hash (how the
//! boot finds the slot), the root hash signature is for that /usr and by
//! the release's certificate (a node under Secure Boot takes only signed
//! releases), and the UKI fits on the ESP. Then the image's own
//! systemd-sysupdate installs it: hash tree, /usr, signature, and the UKI
//! last.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use boxcar_signing::documents::{ReleaseDocument, UpdateRole};
use boxcar_signing::UsrSignature;

use crate::host;
use crate::paths::Paths;
use crate::staging::Staged;
use crate::uki;

/// Checks the staged update of `release` (on a node whose firmware
/// enforces Secure Boot when `secure_boot`).
pub fn check_staged(staged: &Staged, release: &ReleaseDocument, secure_boot: bool) -> Result<()> {
    let root_hash = release.usr_root_hash.to_lowercase();
    let uki_path = staged.path(UpdateRole::Uki)?;
    let cmdline = uki::cmdline(uki_path)?;
    let usrhash = uki::usrhash(&cmdline)
        .with_context(|| format!("the staged UKI's command line has no usrhash=: {cmdline}"))?;
    if usrhash.to_lowercase() != root_hash {
        bail!(
            "the staged UKI boots usrhash={usrhash}, but release {} has /usr root hash {root_hash}",
            release.version
        );
    }
    check_partition_uuids(release, &root_hash)?;
    check_usr_signature(
        staged.path(UpdateRole::UsrSignature)?,
        release,
        &root_hash,
        secure_boot,
    )?;
    let usr = staged.path(UpdateRole::Usr)?;
    let verity = staged.path(UpdateRole::UsrVerity)?;
    host::run(
        "checking the staged /usr against its hash tree (veritysetup verify)",
        Command::new("veritysetup")
            .arg("verify")
            .arg(usr)
            .arg(verity)
            .arg(&root_hash),
    )?;
    check_esp_space(staged)?;
    Ok(())
}

/// The new slots get the UUIDs the root hash names: the first half for
/// /usr, the second for its hash tree.
fn check_partition_uuids(release: &ReleaseDocument, root_hash: &str) -> Result<()> {
    let payload = release
        .update
        .as_ref()
        .context("the release has no update")?;
    let Some((usr, verity)) = slot_uuids(root_hash) else {
        bail!("release {} has no 256-bit /usr root hash", release.version);
    };
    for (role, expected) in [(UpdateRole::Usr, usr), (UpdateRole::UsrVerity, verity)] {
        let file = payload
            .file(role)
            .with_context(|| format!("the update has no {role:?} part"))?;
        if file.partition_uuid.as_deref().map(str::to_lowercase) != Some(expected.clone()) {
            bail!(
                "{} would get partition UUID {:?}, but the root hash makes it {expected}: the boot would not find it",
                file.installed_name,
                file.partition_uuid
            );
        }
    }
    Ok(())
}

/// The staged signature partition goes with this release: a signed
/// release's signs its /usr root hash with its Secure Boot certificate's
/// key (the kernel checks the signature itself at boot), an unsigned
/// release's is empty, and a node under Secure Boot, whose firmware would
/// refuse an unsigned UKI, takes only a signed release.
fn check_usr_signature(
    path: &Path,
    release: &ReleaseDocument,
    root_hash: &str,
    secure_boot: bool,
) -> Result<()> {
    let signature = UsrSignature::read_file(path)
        .with_context(|| format!("reading the staged {}", path.display()))?;
    let version = &release.version;
    match (signature, &release.secure_boot) {
        (Some(signature), Some(certificate)) => {
            if signature.root_hash != root_hash {
                bail!(
                    "the staged /usr signature is for root hash {}, but release {version} has /usr root hash {}",
                    signature.root_hash,
                    release.usr_root_hash
                );
            }
            if signature.certificate_fingerprint != certificate.fingerprint_sha256.to_lowercase() {
                bail!(
                    "the staged /usr signature is by certificate {}, but release {version} ships certificate {}",
                    signature.certificate_fingerprint,
                    certificate.fingerprint_sha256
                );
            }
            Ok(())
        }
        (None, None) if secure_boot => bail!(
            "this node boots with Secure Boot on, and release {version} is not signed for it: its UKI would be refused"
        ),
        (None, None) => Ok(()),
        (None, Some(_)) => bail!(
            "release {version} is signed for Secure Boot, but its /usr signature partition is empty"
        ),
        (Some(_), None) => bail!(
            "release {version} ships no Secure Boot certificate, but its /usr signature partition holds a signature"
        ),
    }
}

/// The partition UUIDs of the /usr slot and its hash tree that a verity
/// root hash (64 hex digits) names: its two halves, as UUIDs.
pub fn slot_uuids(root_hash: &str) -> Option<(String, String)> {
    if root_hash.len() != 64 || !root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let uuid = |hex: &str| {
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    };
    Some((uuid(&root_hash[..32]), uuid(&root_hash[32..])))
}

/// The ESP must hold the new UKI (systemd-sysupdate removes UKIs beyond
/// two first, so an ESP that holds two holds the update).
fn check_esp_space(staged: &Staged) -> Result<()> {
    let uki = staged.path(UpdateRole::Uki)?;
    let size = std::fs::metadata(uki)?.len();
    let esp = host::run(
        "finding the ESP",
        Command::new("bootctl").arg("--print-esp-path"),
    )?;
    let esp = std::path::PathBuf::from(esp.trim());
    let linux = esp.join("EFI/Linux");
    let mut free = crate::staging::free_bytes(&esp)?;
    let mut ukis: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir(&linux)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .collect()
        })
        .unwrap_or_default();
    ukis.sort();
    // With two there, systemd-sysupdate removes the older first.
    if ukis.len() >= 2 {
        free += ukis[0].1;
    }
    if free < size {
        bail!(
            "the ESP ({}) has {free} bytes free, and the new UKI needs {size}",
            esp.display()
        );
    }
    Ok(())
}

/// Has the next boot bring /etc and /var up to date for the new /usr.
/// systemd decides that from /usr's time against the stamps, and two
/// builds of one commit share that time (SOURCE_DATE_EPOCH), so a rebuild's
/// new packages would otherwise boot without their linker cache entries,
/// system users and journal catalog. A fallback to the older /usr redoes
/// the same work for it, which does no harm.
pub fn forget_update_done(paths: &Paths) -> Result<()> {
    for stamp in paths.update_done_stamps() {
        match std::fs::remove_file(&stamp) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("removing {}", stamp.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Installs the staged `version` into the idle slot.
pub fn install(paths: &Paths, version: &str) -> Result<()> {
    host::run(
        "installing with systemd-sysupdate",
        Command::new(paths.sysupdate()).args(["--no-pager", "update", version]),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_update_done_removes_both_stamps_and_minds_no_missing_one() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        let [etc, var] = paths.update_done_stamps();
        for dir in ["etc", "var"] {
            std::fs::create_dir(root.path().join(dir)).unwrap();
        }
        std::fs::write(&etc, "TIMESTAMP_NSEC=1\n").unwrap();
        forget_update_done(&paths).unwrap();
        assert!(!etc.exists() && !var.exists());
        // Nothing left to remove is no error either.
        forget_update_done(&paths).unwrap();
    }

    #[test]
    fn a_stamp_that_cannot_be_removed_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        // A directory where the stamp should be: remove_file refuses it.
        std::fs::create_dir_all(root.path().join("etc/.updated")).unwrap();
        let error = forget_update_done(&paths).unwrap_err();
        assert!(format!("{error:#}").contains("etc/.updated"), "{error:#}");
    }
}
