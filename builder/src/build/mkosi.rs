//! Driving mkosi: the command line a build plan turns into, and running it
//! with its output in the build log and its steps on the progress line.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::process::Step;
use crate::progress::Phase;

/// mkosi marks each step of its work with this symbol at the start of a line.
const STEP_MARK: char = '‣';

/// What mkosi needs to know beyond the recipe.
#[derive(Clone, Debug)]
pub struct MkosiRun {
    pub recipe_dir: PathBuf,
    pub image_version: String,
    pub output_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub package_cache_dir: PathBuf,
    pub workspace_dir: PathBuf,
    /// Kept between builds for the build scripts (the kernel's tree).
    pub build_dir: PathBuf,
    pub source_date_epoch: i64,
    /// Drop the incremental cache so packages are resolved afresh.
    pub refresh: bool,
    /// Packages beyond the recipe's own (the platforms' agents).
    pub packages: Vec<String>,
    /// File trees merged into the image beyond the recipe's own.
    pub extra_trees: Vec<PathBuf>,
    /// Directories of packages built for this build (never cached).
    pub volatile_package_dirs: Vec<PathBuf>,
    /// Variables for the recipe's scripts.
    pub environment: Vec<(String, String)>,
    /// Further options, by name (the Secure Boot signing key).
    pub options: Vec<(&'static str, OsString)>,
}

impl MkosiRun {
    /// The arguments after `mkosi`.
    pub fn arguments(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--directory".into(), self.recipe_dir.clone().into()];
        let mut option = |name: &str, value: OsString| {
            let mut arg = OsString::from(format!("--{name}="));
            arg.push(value);
            args.push(arg);
        };
        option("image-version", self.image_version.clone().into());
        option("output-directory", self.output_dir.clone().into());
        option("cache-directory", self.cache_dir.clone().into());
        option("package-cache-dir", self.package_cache_dir.clone().into());
        option("workspace-directory", self.workspace_dir.clone().into());
        option("build-directory", self.build_dir.clone().into());
        option(
            "source-date-epoch",
            self.source_date_epoch.to_string().into(),
        );
        for package in &self.packages {
            option("package", package.into());
        }
        for tree in &self.extra_trees {
            option("extra-tree", tree.clone().into());
        }
        for dir in &self.volatile_package_dirs {
            option("volatile-package-directory", dir.clone().into());
        }
        for (key, value) in &self.environment {
            option("environment", format!("{key}={value}").into());
        }
        for (name, value) in &self.options {
            option(name, value.clone());
        }
        // One --force replaces a previous build's outputs; a second one also
        // drops the incremental cache.
        args.push("--force".into());
        if self.refresh {
            args.push("--force".into());
        }
        args.push("build".into());
        args
    }

    /// Runs mkosi, logging everything to `log` and showing its steps.
    pub fn run(&self, mkosi: &Path, log: &mut File, phase: &mut Phase) -> Result<()> {
        Step::new("composing the image with mkosi", mkosi)
            .args(self.arguments())
            .install_hint(crate::hosttools::SETUP_HINT)
            .run_logged(log, |line| {
                if let Some(step) = step_of(line) {
                    phase.status(step);
                }
            })?;
        Ok(())
    }
}

/// The step name if `line` is one of mkosi's step lines.
fn step_of(line: &str) -> Option<&str> {
    let step = line.trim_start().strip_prefix(STEP_MARK)?.trim();
    (!step.is_empty()).then_some(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(refresh: bool) -> Vec<String> {
        MkosiRun {
            recipe_dir: "/src/recipes".into(),
            image_version: "1.2.3".into(),
            output_dir: "/cache/output".into(),
            cache_dir: "/cache/mkosi".into(),
            package_cache_dir: "/cache/packages".into(),
            workspace_dir: "/cache/workspace".into(),
            build_dir: "/cache/build".into(),
            source_date_epoch: 1_700_000_000,
            refresh,
            packages: vec!["open-vm-tools".into()],
            extra_trees: vec!["/b/.platform-units".into()],
            volatile_package_dirs: vec!["/b/.initrd-package".into()],
            environment: vec![(
                "BOXCAR_PLATFORM_CMDLINE_qemu".into(),
                "boxcar.platform=qemu console=ttyS0".into(),
            )],
            options: vec![("secure-boot", "yes".into())],
        }
        .arguments()
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect()
    }

    #[test]
    fn arguments_carry_version_directories_and_epoch() {
        let args = run(false);
        assert_eq!(&args[..2], ["--directory", "/src/recipes"]);
        for expected in [
            "--image-version=1.2.3",
            "--output-directory=/cache/output",
            "--cache-directory=/cache/mkosi",
            "--package-cache-dir=/cache/packages",
            "--workspace-directory=/cache/workspace",
            "--build-directory=/cache/build",
            "--source-date-epoch=1700000000",
            "--package=open-vm-tools",
            "--extra-tree=/b/.platform-units",
            "--environment=BOXCAR_PLATFORM_CMDLINE_qemu=boxcar.platform=qemu console=ttyS0",
        ] {
            assert!(
                args.contains(&expected.to_owned()),
                "{expected} missing from {args:?}"
            );
        }
        assert_eq!(args.iter().filter(|a| *a == "--force").count(), 1);
        assert_eq!(args.last().unwrap(), "build");
    }

    #[test]
    fn refresh_drops_the_incremental_cache() {
        assert_eq!(run(true).iter().filter(|a| *a == "--force").count(), 2);
    }

    #[test]
    fn recognises_step_lines() {
        assert_eq!(step_of("‣  Installing Debian"), Some("Installing Debian"));
        assert_eq!(
            step_of("  ‣ Building boxcar image"),
            Some("Building boxcar image")
        );
        assert_eq!(step_of("Unpacking perl (5.40)"), None);
        assert_eq!(step_of("‣"), None);
    }
}
