//! The modes of the files a build makes. The trees `boxcar build` writes
//! for the image (the node agent's, the platform drop-ins, the initrd's
//! package, the PXE addition) are created under the process's umask, and
//! mkosi, dpkg-deb and cpio copy those modes into /usr, the initrd and the
//! package; mkosi itself runs under it too. So a build sets it first.

use rustix::fs::Mode;

/// Sets the umask to 022: directories 0755, files 0644, whatever the
/// host's. Under root's 027 dpkg-deb refuses the initrd package ("control
/// directory has bad permissions 750"); under 002 or 077 the agent's files
/// in /usr get other modes, and /usr's verity root hash changes with the
/// host that built it.
pub fn set_for_build() {
    rustix::process::umask(Mode::WGRP | Mode::WOTH);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::build::agent_tree::AgentInputs;
    use crate::build::initrd_package;
    use crate::hosttools::{self, Locator};
    use crate::process::Step;

    /// Every entry under `dir` with its permission bits.
    fn modes(dir: &Path) -> BTreeMap<String, u32> {
        let mut found = BTreeMap::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let mode = fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o7777;
            found.insert(path.display().to_string(), mode);
            if path.is_dir() {
                found.extend(modes(&path));
            }
        }
        found
    }

    /// A recipe directory with an initrd tree, as the checkout has one.
    fn initrd_recipe(dir: &Path) -> PathBuf {
        let units = dir.join("initrd/usr/lib/systemd/system");
        fs::create_dir_all(&units).unwrap();
        fs::write(units.join("boxcar-test.service"), "[Unit]\n").unwrap();
        let postinst = dir.join("initrd/postinst");
        fs::write(&postinst, "#!/bin/sh\nset -eu\n").unwrap();
        fs::set_permissions(&postinst, fs::Permissions::from_mode(0o755)).unwrap();
        dir.to_owned()
    }

    #[test]
    fn a_build_under_a_strict_umask_writes_the_usual_modes() {
        if !crate::isolated::in_own_process(
            module_path!(),
            "a_build_under_a_strict_umask_writes_the_usual_modes",
        ) {
            return;
        }
        // A host as strict as a root account can be.
        rustix::process::umask(Mode::RWXG | Mode::RWXO);
        set_for_build();
        let temp = tempfile::tempdir().unwrap();

        let agent = temp.path().join("boxcar-update");
        fs::write(&agent, b"an agent").unwrap();
        let inputs = AgentInputs {
            binary: agent,
            keys: Vec::new(),
            store: None,
        };
        let tree = temp.path().join("agent-tree");
        inputs.write_tree(&tree, &"beta".parse().unwrap()).unwrap();
        for (path, mode) in modes(&tree) {
            let expected =
                if path.ends_with("/boxcar-update") || fs::metadata(&path).unwrap().is_dir() {
                    0o755
                } else {
                    0o644
                };
            assert_eq!(mode, expected, "{path} has mode {mode:o}");
        }

        let wanted: Vec<_> = crate::build::requirements()
            .into_iter()
            .filter(|r| ["cp", "dpkg-deb"].contains(&r.program))
            .collect();
        let locator = Locator {
            preferred: BTreeMap::new(),
        };
        let Ok(tools) = hosttools::check(&wanted, &locator, "build") else {
            eprintln!("SKIPPED the initrd package: cp or dpkg-deb is not installed");
            return;
        };
        let recipe = initrd_recipe(&temp.path().join("recipe"));
        // dpkg-deb refuses a DEBIAN directory that is not 0755 to 0775.
        let deb =
            initrd_package::write(&tools, &recipe, "1.0", &temp.path().join("package")).unwrap();
        let listing = Step::new("listing the package", tools.path("dpkg-deb"))
            .arg("--contents")
            .arg(&deb)
            .output_text()
            .unwrap();
        for line in listing.lines() {
            assert!(
                ["drwxr-xr-x ", "-rw-r--r-- ", "-rwxr-xr-x "]
                    .iter()
                    .any(|mode| line.starts_with(mode)),
                "{line}"
            );
        }
    }
}
