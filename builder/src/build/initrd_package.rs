//! The `boxcar-initrd` package: `recipes/initrd/` (the units that run
//! Ignition on the first boot) packed as a Debian package, which mkosi
//! installs into the UKI's initrd (`InitrdVolatilePackages=` in the recipe,
//! from the package directory this module fills). mkosi's default initrd
//! takes packages, not file trees; a package is also how its files get
//! their owners and modes right.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::hosttools::HostTools;
use crate::process::Step;

/// The package's name, as the recipe lists it.
pub const PACKAGE: &str = "boxcar-initrd";

/// Where Ignition reads a user config from (`user.ign`), relative to /.
const IGNITION_CONFIG_DIR: &str = "usr/lib/ignition";

/// The tree under the recipe directory that becomes the package.
pub const TREE: &str = "initrd";

/// The package's maintainer script in that tree, which trims the initrd
/// once every package is in.
const POSTINST: &str = "postinst";

/// Packs `recipe_dir/initrd` into `out_dir/boxcar-initrd_<version>_all.deb`.
pub fn write(
    tools: &HostTools,
    recipe_dir: &Path,
    version: &str,
    out_dir: &Path,
) -> Result<PathBuf> {
    let source = recipe_dir.join(TREE);
    let root = out_dir.join("root");
    if out_dir.exists() {
        fs::remove_dir_all(out_dir).with_context(|| format!("removing {}", out_dir.display()))?;
    }
    fs::create_dir_all(root.join("DEBIAN"))?;
    Step::new("copying the initrd's files", tools.path("cp"))
        .args([
            "--recursive",
            "--no-dereference",
            "--preserve=mode,links",
            "--",
        ])
        .arg(source.join("usr"))
        .arg(&root)
        .run()?;
    // The initrd's / is read-only once systemd runs, so the directory where
    // Ignition looks for a user config must exist in the package: the
    // config a disk carries is put there on a tmpfs mounted over it.
    fs::create_dir_all(root.join(IGNITION_CONFIG_DIR))?;
    fs::write(root.join("DEBIAN/control"), control(version))?;
    // fs::copy keeps the script's executable mode, which dpkg-deb requires.
    fs::copy(source.join(POSTINST), root.join("DEBIAN").join(POSTINST))
        .with_context(|| format!("copying {}", source.join(POSTINST).display()))?;
    let deb = out_dir.join(format!("{PACKAGE}_{}_all.deb", debian_version(version)));
    Step::new("packing the initrd's files", tools.path("dpkg-deb"))
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&deb)
        .run()?;
    fs::remove_dir_all(&root)?;
    Ok(deb)
}

/// The package's control file.
fn control(version: &str) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {}\n\
         Architecture: all\n\
         Section: admin\n\
         Priority: optional\n\
         Maintainer: Boxcar Linux maintainers <maintainers@boxcar-linux.org>\n\
         Depends: ignition\n\
         Description: Boxcar Linux's additions to the initrd\n \
         First-boot provisioning: Ignition's stages as units of the systemd initrd.\n",
        debian_version(version)
    )
}

/// An image version as a Debian version: the characters Debian does not
/// allow (`^`, `_`) become `+`.
fn debian_version(version: &str) -> String {
    version.replace(['^', '_'], "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_file_names_the_package_and_its_dependency() {
        let control = control("2026.1202.143005");
        assert!(control.contains("Package: boxcar-initrd\n"));
        assert!(control.contains("Version: 2026.1202.143005\n"));
        assert!(control.contains("Depends: ignition\n"));
        assert_eq!(debian_version("1.0^rc1"), "1.0+rc1");
    }

    #[test]
    fn the_shipped_postinst_is_an_executable_script_that_stops_on_errors() {
        use std::os::unix::fs::PermissionsExt;
        let postinst = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../recipes")
            .join(TREE)
            .join(POSTINST);
        let mode = fs::metadata(&postinst).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "dpkg-deb needs it executable");
        let text = fs::read_to_string(&postinst).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"));
        assert!(text.contains("\nset -eu\n"));
    }

    #[test]
    fn the_shipped_tree_has_the_units_and_their_wiring() {
        let tree = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../recipes")
            .join(TREE);
        let units = tree.join("usr/lib/systemd/system");
        for unit in [
            "ignition-fetch-offline.service",
            "ignition-fetch.service",
            "ignition-files.service",
            "boxcar-provisioned.service",
        ] {
            let text = fs::read_to_string(units.join(unit)).unwrap();
            assert!(
                text.contains("ConditionPathExists=!/sysroot/var/lib/boxcar/provisioned"),
                "{unit} runs on every boot"
            );
            assert!(units
                .join("boxcar-provision.target.requires")
                .join(unit)
                .symlink_metadata()
                .is_ok());
        }
        assert!(units
            .join("initrd.target.requires/boxcar-provision.target")
            .symlink_metadata()
            .is_ok());
    }
}
