//! The host programs `boxcar build` runs, checked before any work starts
//! (the converters' own list is [`super::convert::requirements`]).

use crate::hosttools::Requirement;

/// The programs `boxcar build` runs.
pub fn requirements() -> Vec<Requirement> {
    vec![
        Requirement {
            program: "mkosi",
            purpose: "composes the image from the recipe",
            min_version: Some("25"),
            version_args: &["--version"],
            package: "mkosi (trixie; ci/setup-host unpacks it under the cache directory)",
        },
        Requirement {
            program: "python3",
            purpose: "runs mkosi",
            min_version: Some("3.9"),
            version_args: &["--version"],
            package: "python3",
        },
        Requirement {
            program: "sfdisk",
            purpose: "reads the image's partition table",
            min_version: Some("2.35"),
            version_args: &["--version"],
            package: "fdisk",
        },
        Requirement {
            program: "dpkg-deb",
            purpose: "packs the initrd's provisioning units as a package",
            min_version: None,
            version_args: &["--version"],
            package: "dpkg",
        },
        Requirement {
            program: "cp",
            purpose: "copies the initrd's files",
            min_version: None,
            version_args: &["--version"],
            package: "coreutils",
        },
        Requirement {
            program: "veritysetup",
            purpose: "checks /usr against its verity root hash",
            min_version: Some("2.3"),
            version_args: &["--version"],
            package: "cryptsetup-bin",
        },
    ]
}
