//! The build plan: what the user asked for, checked against the checkout,
//! and everything decided from it before anything runs (version, paths,
//! the parts mkosi must write, the mkosi invocation).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Result};
use base64::Engine;
use time::OffsetDateTime;

use super::agent_tree::AgentInputs;
use super::convert;
use super::mkosi::MkosiRun;
use super::secure_boot::SigningKey;
use super::source::{source_date_epoch, source_info};
use crate::channel::{ChannelConfig, ChannelName, Channels};
use crate::platform::{Platform, PlatformId, PlatformTable, IMAGE_ID};
use crate::project::{Cache, Project};
use crate::recipe::Recipe;
use crate::records::buildinfo::{FileKind, SourceInfo};
use crate::version::Version;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub channel: ChannelName,
    /// `None`: derived from the time.
    pub version: Option<Version>,
    /// The parent of the build directory (`build/`).
    pub out_dir: PathBuf,
    /// Re-resolve packages from the mirror instead of reusing the
    /// incremental cache.
    pub refresh: bool,
    /// The platforms to package; empty for all of them.
    pub platforms: Vec<PlatformId>,
    /// Package artifacts at all (false: compose and record the parts only).
    pub package: bool,
    /// The node agent's binary; `None`: the one next to this program.
    pub update_agent: Option<PathBuf>,
    /// The store keys the image pins; empty: the project's signing/keys.
    pub update_keys: Vec<PathBuf>,
    /// The store nodes follow by default.
    pub update_store: Option<String>,
    /// The Secure Boot key and certificate files; `None`: from the
    /// environment, else an unsigned build.
    pub secure_boot_key: Option<PathBuf>,
    pub secure_boot_certificate: Option<PathBuf>,
}

/// Everything a build will do, decided and checked up front.
#[derive(Debug)]
pub struct BuildPlan {
    pub project: Project,
    pub cache: Cache,
    pub recipe: Recipe,
    pub channel: ChannelConfig,
    pub version: Version,
    /// `out/<version>`: where the result appears, all at once.
    pub final_dir: PathBuf,
    /// `out/.<version>.partial`: where it is assembled.
    pub staging_dir: PathBuf,
    pub source_date_epoch: i64,
    pub source: SourceInfo,
    pub refresh: bool,
    /// The whole platform table: every platform's agents and command line
    /// go into the one composed image.
    pub platform_table: PlatformTable,
    /// The platforms whose artifacts this build packages.
    pub selected_platforms: Vec<PlatformId>,
    /// The node agent and what it trusts.
    pub agent: AgentInputs,
    /// The key the boot chain is signed with; `None`: an unsigned build.
    pub secure_boot: Option<SigningKey>,
}

/// A file mkosi writes that becomes a part of the build.
#[derive(Clone, Debug)]
pub(super) struct Part {
    /// mkosi's name for it, after `boxcar_<version>`.
    pub(super) mkosi_suffix: String,
    /// Its name in the build directory.
    pub(super) name: String,
    pub(super) kind: FileKind,
    /// The platform it belongs to, for per-platform parts.
    pub(super) platform: Option<PlatformId>,
}

/// The parts every build has, besides the per-platform addons.
const COMMON_PARTS: &[(&str, &str, FileKind)] = &[
    (".raw", "disk.raw", FileKind::Disk),
    (".usr.raw", "usr.raw", FileKind::Usr),
    (".usr-verity.raw", "usr-verity.raw", FileKind::UsrVerity),
    (
        ".usr-verity-sig.raw",
        "usr-verity-sig.raw",
        FileKind::UsrSignature,
    ),
    (".efi", "uki.efi", FileKind::Uki),
    (".vmlinuz", "vmlinuz", FileKind::Kernel),
    (".initrd", "initrd", FileKind::Initrd),
    (".manifest", "manifest.json", FileKind::Manifest),
    (".root.tar", "root.tar", FileKind::RootTree),
];

impl BuildPlan {
    /// Checks the request against the checkout and decides every path.
    pub fn new(
        project: Project,
        cache: Cache,
        request: &BuildRequest,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let channels = Channels::load(&project.channels_dir())?;
        let channel = channels.get(&request.channel)?.clone();
        let recipe = Recipe::load(&project.recipes_dir())?;
        let platform_table = PlatformTable::load(&project.root.join(crate::platform::TABLE_FILE))?;
        let selected_platforms = if request.package {
            platform_table
                .select(&request.platforms)?
                .into_iter()
                .map(|p| p.id.clone())
                .collect()
        } else {
            Vec::new()
        };
        let version = request
            .version
            .clone()
            .unwrap_or_else(|| Version::from_time(now));
        let out_dir = std::path::absolute(&request.out_dir)?;
        let final_dir = out_dir.join(version.as_str());
        if final_dir.exists() {
            bail!(
                "{} already exists: version {version} was built before; pass another --version or remove it",
                final_dir.display()
            );
        }
        let staging_dir = out_dir.join(format!(".{version}.partial"));
        let agent = AgentInputs::resolve(
            request.update_agent.as_deref(),
            &request.update_keys,
            request.update_store.as_deref(),
            &project.root,
        )?;
        let secure_boot = SigningKey::resolve(
            request.secure_boot_key.as_deref(),
            request.secure_boot_certificate.as_deref(),
            |name| std::env::var(name).ok(),
        )?;
        let source = source_info(&project)?;
        let source_date_epoch = source_date_epoch(
            &project.root,
            std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
            now.unix_timestamp(),
        )?;
        Ok(Self {
            project,
            cache,
            recipe,
            channel,
            version,
            final_dir,
            staging_dir,
            source_date_epoch,
            source,
            refresh: request.refresh,
            platform_table,
            selected_platforms,
            agent,
            secure_boot,
        })
    }

    /// The mkosi invocation.
    pub fn mkosi_run(&self) -> MkosiRun {
        MkosiRun {
            recipe_dir: self.recipe.dir.clone(),
            image_version: self.version.to_string(),
            output_dir: self.cache.mkosi_output(),
            cache_dir: self.cache.mkosi_cache(),
            package_cache_dir: self.cache.packages(),
            workspace_dir: self.cache.workspace(),
            build_dir: self.cache.build_dir(),
            source_date_epoch: self.source_date_epoch,
            refresh: self.refresh,
            packages: self.platform_packages(),
            extra_trees: vec![self.platform_units_dir(), self.agent_tree_dir()],
            volatile_package_dirs: vec![self.initrd_package_dir()],
            // mkosi splits environment values at spaces; the command lines
            // travel base64-encoded.
            environment: self
                .platform_table
                .platforms
                .iter()
                .map(|p| {
                    let encoded =
                        base64::engine::general_purpose::STANDARD.encode(p.kernel_cmdline());
                    (format!("BOXCAR_PLATFORM_CMDLINE_{}", p.id), encoded)
                })
                .collect(),
            options: self.mkosi_options(),
        }
    }

    /// Signing options, and the repart directory with slot A's signature
    /// partition for a signed or an unsigned build.
    fn mkosi_options(&self) -> Vec<(&'static str, OsString)> {
        let mut options = self
            .secure_boot
            .as_ref()
            .map(SigningKey::mkosi_options)
            .unwrap_or_default();
        let signature_dir = self.recipe.usr_signature_dir(self.secure_boot.is_some());
        options.push(("repart-directory", signature_dir.into()));
        options
    }

    /// Every platform's agent packages, once each, sorted (the list is part
    /// of mkosi's cache key, so its order must not wobble).
    pub fn platform_packages(&self) -> Vec<String> {
        let packages: std::collections::BTreeSet<&String> = self
            .platform_table
            .platforms
            .iter()
            .flat_map(|p| &p.packages)
            .collect();
        packages.into_iter().cloned().collect()
    }

    /// The generated file tree that makes each platform's units conditional
    /// on its platform id (inside the staging directory).
    pub fn platform_units_dir(&self) -> PathBuf {
        self.staging_dir.join(".platform-units")
    }

    /// The node agent's files for the image (inside the staging directory).
    pub fn agent_tree_dir(&self) -> PathBuf {
        self.staging_dir.join(".update-agent")
    }

    /// Where the boxcar-initrd package is packed for mkosi (inside the
    /// staging directory).
    pub fn initrd_package_dir(&self) -> PathBuf {
        self.staging_dir.join(".initrd-package")
    }

    /// The selected platforms' table entries.
    pub fn selected(&self) -> Vec<&Platform> {
        self.platform_table
            .platforms
            .iter()
            .filter(|p| self.selected_platforms.contains(&p.id))
            .collect()
    }

    /// The parts mkosi writes for this build.
    pub(super) fn parts(&self) -> Vec<Part> {
        let common = COMMON_PARTS.iter().map(|(suffix, name, kind)| Part {
            mkosi_suffix: (*suffix).to_owned(),
            name: (*name).to_owned(),
            kind: *kind,
            platform: None,
        });
        let addons = self.platform_table.platforms.iter().map(|p| Part {
            mkosi_suffix: format!(".platform-{}.addon.efi", p.id),
            name: convert::Parts::addon_name(&p.id),
            kind: FileKind::Addon,
            platform: Some(p.id.clone()),
        });
        common.chain(addons).collect()
    }

    /// mkosi's name for an output: `boxcar_<version><suffix>`.
    pub fn mkosi_output_name(&self, suffix: &str) -> String {
        format!("{IMAGE_ID}_{}{suffix}", self.version)
    }

    /// Where the log of a failed build is kept (the staging directory goes).
    pub fn failed_log_path(&self) -> PathBuf {
        self.staging_dir
            .with_file_name(format!("{}.failed.log", self.version))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::process::Step;
    use time::macros::datetime;

    /// A throwaway checkout with the real recipes and channels.
    fn project_copy() -> (tempfile::TempDir, Project) {
        let temp = tempfile::tempdir().unwrap();
        let project = project_in(temp.path());
        (temp, project)
    }

    /// The real recipes and channels copied into `dir`, as a checkout.
    fn project_in(dir: &Path) -> Project {
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for part in ["recipes", "channels"] {
            Step::new("copying", "cp")
                .arg("-r")
                .arg(real.join(part))
                .arg(dir)
                .run()
                .unwrap();
        }
        Project::at(dir).unwrap()
    }

    /// A plan for a checkout copied into `dir`, building into `dir/build`,
    /// for tests of what happens around the phases.
    pub(in crate::build) fn plan_in(dir: &Path) -> BuildPlan {
        let project = project_in(dir);
        let cache = Cache::new(Some(&dir.join("cache"))).unwrap();
        let request = request(&dir.join("build"));
        BuildPlan::new(project, cache, &request, OffsetDateTime::now_utc()).unwrap()
    }

    fn request(out: &Path) -> BuildRequest {
        let agent = out.with_file_name("boxcar-update");
        fs::write(&agent, b"an agent").unwrap();
        BuildRequest {
            channel: "alpha".parse().unwrap(),
            version: None,
            out_dir: out.to_owned(),
            refresh: false,
            platforms: Vec::new(),
            package: true,
            update_agent: Some(agent),
            update_keys: Vec::new(),
            update_store: None,
            secure_boot_key: None,
            secure_boot_certificate: None,
        }
    }

    #[test]
    fn plan_decides_version_paths_and_mkosi_arguments() {
        let (temp, project) = project_copy();
        let cache = Cache::new(Some(&temp.path().join("cache"))).unwrap();
        let out = temp.path().join("build");
        let now = datetime!(2026-11-22 10:20:30 UTC);
        let plan = BuildPlan::new(project, cache, &request(&out), now).unwrap();
        assert_eq!(plan.version.as_str(), "2026.1122.102030");
        assert_eq!(plan.final_dir, out.join("2026.1122.102030"));
        assert_eq!(plan.staging_dir, out.join(".2026.1122.102030.partial"));
        assert_eq!(
            plan.failed_log_path(),
            out.join("2026.1122.102030.failed.log")
        );
        assert_eq!(plan.channel.name.as_str(), "alpha");
        // Not a git checkout: the epoch falls back to the build time.
        assert_eq!(plan.source_date_epoch, now.unix_timestamp());
        let args: Vec<String> = plan
            .mkosi_run()
            .arguments()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(args.contains(&"--image-version=2026.1122.102030".to_owned()));
        assert!(args.contains(&format!(
            "--output-directory={}",
            temp.path().join("cache/output").display()
        )));
        // Not signed: slot A's signature partition is the empty one, and
        // mkosi gets no key to sign the root hash with.
        assert!(args.contains(&format!(
            "--repart-directory={}",
            temp.path().join("recipes/usr-signature/unsigned").display()
        )));
        assert!(!args.iter().any(|a| a.starts_with("--verity-key")));
        assert_eq!(
            plan.mkosi_output_name(".raw"),
            "boxcar_2026.1122.102030.raw"
        );
    }

    #[test]
    fn plan_refuses_an_existing_version() {
        let (temp, project) = project_copy();
        let cache = Cache::new(Some(&temp.path().join("cache"))).unwrap();
        let out = temp.path().join("build");
        fs::create_dir_all(out.join("1.0.0")).unwrap();
        let mut req = request(&out);
        req.version = Some("1.0.0".parse().unwrap());
        let err = BuildPlan::new(project, cache, &req, OffsetDateTime::now_utc()).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[test]
    fn plan_refuses_an_unknown_channel_and_lists_the_known_ones() {
        let (temp, project) = project_copy();
        let cache = Cache::new(Some(&temp.path().join("cache"))).unwrap();
        let mut req = request(&temp.path().join("build"));
        req.channel = "nightly".parse().unwrap();
        let err = BuildPlan::new(project, cache, &req, OffsetDateTime::now_utc()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "unknown channel nightly: {} has alpha, beta, stable",
                temp.path().join("channels").display()
            )
        );
    }

    #[test]
    fn plan_refuses_a_broken_recipe_naming_file_and_line() {
        let (temp, project) = project_copy();
        let conf = temp.path().join("recipes/mkosi.conf.d/10-base.conf");
        let text = fs::read_to_string(&conf).unwrap();
        fs::write(&conf, format!("{text}\n[Content]\nPackagez=vim\n")).unwrap();
        let cache = Cache::new(Some(&temp.path().join("cache"))).unwrap();
        let err = BuildPlan::new(
            project,
            cache,
            &request(&temp.path().join("b")),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        let line = text.lines().count() + 3;
        assert!(
            err.to_string()
                .starts_with(&format!("{}:{line}: key `Packagez`", conf.display())),
            "{err}"
        );
    }
}
