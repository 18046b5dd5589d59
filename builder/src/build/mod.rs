//! `boxcar build`: from recipe to a checked build directory.
//!
//! The plan is worked out, and every input checked, before anything runs.
//! The build then composes into a staging directory next to the final one
//! and renames it into place only when everything, build.json included, is
//! written: a failed or interrupted build leaves no `build/<version>/`.

pub mod convert;
mod mkosi;
mod uki;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use boxcar_signing::{sha256_file, Sha256Digest};
use time::OffsetDateTime;

use crate::channel::{ChannelConfig, ChannelName, Channels};
use crate::hosttools::{HostTools, Requirement};
use crate::image::{self, PartitionTable, Role};
use crate::platform::{Format, Platform, PlatformId, PlatformTable, IMAGE_ID};
use crate::process::Step;
use crate::progress::Progress;
use crate::project::{Cache, Project};
use crate::recipe::Recipe;
use crate::records::buildinfo::{
    ArtifactInfo, BuildInfo, DiskInfo, FileInfo, FileKind, KernelInfo, PackageInfo, PhaseTiming,
    SourceInfo, ToolVersion, UsrInfo, BUILD_JSON, SCHEMA_VERSION,
};
use crate::units::{human_bytes, now_rfc3339};
use crate::version::Version;

use mkosi::MkosiRun;

/// The build's log, inside the build directory.
pub const BUILD_LOG: &str = "build.log";

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
            program: "veritysetup",
            purpose: "checks /usr against its verity root hash",
            min_version: Some("2.3"),
            version_args: &["--version"],
            package: "cryptsetup-bin",
        },
    ]
}

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
}

/// A file mkosi writes that becomes a part of the build.
#[derive(Clone, Debug)]
struct Part {
    /// mkosi's name for it, after `boxcar_<version>`.
    mkosi_suffix: String,
    /// Its name in the build directory.
    name: String,
    kind: FileKind,
    /// The platform it belongs to, for per-platform parts.
    platform: Option<PlatformId>,
}

/// The parts every build has, besides the per-platform addons.
const COMMON_PARTS: &[(&str, &str, FileKind)] = &[
    (".raw", "disk.raw", FileKind::Disk),
    (".usr.raw", "usr.raw", FileKind::Usr),
    (".usr-verity.raw", "usr-verity.raw", FileKind::UsrVerity),
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
        let source = git_source(&project.root);
        let source_date_epoch =
            git_commit_time(&project.root).unwrap_or_else(|| now.unix_timestamp());
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
            source_date_epoch: self.source_date_epoch,
            refresh: self.refresh,
            packages: self.platform_packages(),
            extra_trees: vec![self.platform_units_dir()],
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
        }
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

    /// The selected platforms' table entries.
    pub fn selected(&self) -> Vec<&Platform> {
        self.platform_table
            .platforms
            .iter()
            .filter(|p| self.selected_platforms.contains(&p.id))
            .collect()
    }

    /// The parts mkosi writes for this build.
    fn parts(&self) -> Vec<Part> {
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

/// A finished build.
#[derive(Debug)]
pub struct BuildOutcome {
    pub dir: PathBuf,
    pub info: BuildInfo,
}

/// Runs the plan. On failure nothing is left at `final_dir`; the log is
/// kept next to it and named in the error.
pub fn run(plan: &BuildPlan, tools: &HostTools, progress: &Progress) -> Result<BuildOutcome> {
    let started = Instant::now();
    for dir in [
        plan.cache.mkosi_output(),
        plan.cache.mkosi_cache(),
        plan.cache.packages(),
        plan.cache.workspace(),
    ] {
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating cache directory {}", dir.display()))?;
    }
    let _lock = CacheLock::acquire(&plan.cache, progress)?;
    let out_dir = plan
        .staging_dir
        .parent()
        .expect("the staging directory has a parent");
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let staging = Staging::create(&plan.staging_dir)?;
    let log_path = staging.path.join(BUILD_LOG);
    let mut log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut timings = Vec::new();
    let result = assemble(plan, tools, progress, &staging.path, &mut log, &mut timings);
    let mut info = match result {
        Ok(info) => info,
        Err(error) => {
            drop(log);
            let kept = plan.failed_log_path();
            let _ = fs::rename(&log_path, &kept);
            let what = if crate::interrupt::requested() {
                "was interrupted"
            } else {
                "failed"
            };
            return Err(error.context(format!(
                "building {IMAGE_ID} {} {what}; the full log is {}",
                plan.version,
                kept.display()
            )));
        }
    };
    info.phases.push(PhaseTiming {
        name: "total".to_owned(),
        seconds: round_seconds(started.elapsed()),
    });
    write_build_json(&staging.path, &info)?;
    let dir = staging.commit(&plan.final_dir)?;
    Ok(BuildOutcome { dir, info })
}

/// The phases of a build, in order, run inside the staging directory.
fn assemble(
    plan: &BuildPlan,
    tools: &HostTools,
    progress: &Progress,
    staging: &Path,
    log: &mut File,
    timings: &mut Vec<PhaseTiming>,
) -> Result<BuildInfo> {
    timed(progress, timings, "compose", |phase| {
        remove_stale_outputs(&plan.cache.mkosi_output())?;
        write_platform_units(&plan.platform_table, &plan.platform_units_dir())?;
        plan.mkosi_run().run(tools.path("mkosi"), log, phase)?;
        fs::remove_dir_all(plan.platform_units_dir())?;
        Ok(((), String::new()))
    })?;
    timed(progress, timings, "collect", |_| {
        collect_outputs(plan, staging)?;
        Ok(((), format!("moved into {}", plan.final_dir.display())))
    })?;
    let inspected = timed(progress, timings, "inspect", |_| {
        let inspected = inspect(plan, tools, staging)?;
        let summary = format!("/usr verity root hash {}", inspected.usr.root_hash);
        Ok((inspected, summary))
    })?;
    let selected = plan.selected();
    let (packaged, platform_timings) = timed(progress, timings, "package", |_| {
        let parts = convert::Parts {
            dir: staging,
            version: &plan.version,
            table: &inspected.table,
            disk: "disk.raw",
            kernel: "vmlinuz",
            initrd: "initrd",
            usr: "usr.raw",
            usr_verity: "usr-verity.raw",
            root_tar: "root.tar",
            uki_cmdline: &inspected.kernel.cmdline,
            usr_bytes: inspected.usr.filesystem_bytes,
            verity_bytes: inspected.usr.hash_tree_bytes,
            source_date_epoch: plan.source_date_epoch,
        };
        let result = convert::package_all(&parts, &selected, tools, progress)?;
        let summary = format!(
            "{} artifacts for {} platforms",
            result.0.len(),
            selected.len()
        );
        Ok((result, summary))
    })?;
    for timing in &platform_timings {
        timings.push(PhaseTiming {
            name: format!("package {}", timing.platform),
            seconds: round_seconds(timing.elapsed),
        });
    }
    let (files, artifact_digests) = timed(progress, timings, "digest", |_| {
        let part_names: Vec<(String, FileKind, Option<PlatformId>)> = plan
            .parts()
            .into_iter()
            .map(|p| (p.name, p.kind, p.platform))
            .collect();
        let artifact_names: Vec<String> = packaged.iter().map(|a| a.file.clone()).collect();
        let (files, artifacts) = digest_outputs(staging, &part_names, &artifact_names, progress)?;
        let total: u64 = files
            .iter()
            .map(|f| f.size)
            .chain(artifacts.iter().map(|a| a.1))
            .sum();
        let summary = format!(
            "sha256 of {} files, {}",
            files.len() + artifacts.len(),
            human_bytes(total)
        );
        Ok(((files, artifacts), summary))
    })?;
    let artifacts = packaged
        .iter()
        .zip(artifact_digests)
        .map(|(packaged, (sha256, size))| {
            let platform = plan
                .platform_table
                .get(&packaged.platform)
                .expect("packaged platforms are in the table");
            ArtifactInfo {
                platform: packaged.platform.clone(),
                format: packaged.format,
                role: packaged.role,
                file: packaged.file.clone(),
                size,
                sha256,
                kernel_cmdline: effective_cmdline(&inspected.kernel.cmdline, platform),
            }
        })
        .collect();
    let disk_path = staging.join("disk.raw");
    let disk_meta =
        fs::metadata(&disk_path).with_context(|| format!("reading {}", disk_path.display()))?;
    let packages = read_manifest(&staging.join("manifest.json"))?;
    Ok(BuildInfo {
        schema: SCHEMA_VERSION,
        name: IMAGE_ID.to_owned(),
        version: plan.version.clone(),
        channel: plan.channel.name.clone(),
        built_at: now_rfc3339(),
        source_date_epoch: plan.source_date_epoch,
        source: plan.source.clone(),
        usr: inspected.usr,
        kernel: inspected.kernel,
        disk: DiskInfo {
            file: "disk.raw".to_owned(),
            size: disk_meta.len(),
            allocated: allocated_bytes(&disk_meta),
            partition_table: inspected.table,
        },
        files,
        artifacts,
        platforms: plan.platform_table.platforms.clone(),
        packages,
        phases: timings.clone(),
        tools: tool_versions(tools),
    })
}

/// The kernel command line a platform's artifact boots with.
fn effective_cmdline(uki_cmdline: &str, platform: &Platform) -> String {
    match platform.format {
        Format::Pxe => format!("{uki_cmdline} root=tmpfs {}", platform.kernel_cmdline()),
        _ => format!("{uki_cmdline} {}", platform.kernel_cmdline()),
    }
}

/// Drop-ins that make every platform's units run only on that platform:
/// `ConditionKernelCommandLine=boxcar.platform=<id>`. Generated from the
/// table so that a platform is one table entry.
fn write_platform_units(table: &PlatformTable, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    let units_dir = dir.join("usr/lib/systemd/system");
    for platform in &table.platforms {
        for unit in &platform.units {
            let dropin_dir = units_dir.join(format!("{unit}.d"));
            fs::create_dir_all(&dropin_dir)?;
            fs::write(
                dropin_dir.join("50-boxcar-platform.conf"),
                format!(
                    "# Generated by boxcar build from {}: this unit belongs to platform {}.\n\
                     [Unit]\nConditionKernelCommandLine=boxcar.platform={}\n",
                    crate::platform::TABLE_FILE,
                    platform.id,
                    platform.id
                ),
            )?;
        }
    }
    fs::create_dir_all(&units_dir)?;
    Ok(())
}

/// Runs one phase with a progress line and records its duration.
fn timed<T>(
    progress: &Progress,
    timings: &mut Vec<PhaseTiming>,
    name: &str,
    work: impl FnOnce(&mut crate::progress::Phase) -> Result<(T, String)>,
) -> Result<T> {
    let mut phase = progress.phase(name);
    match work(&mut phase) {
        Ok((value, summary)) => {
            let elapsed = phase.done(&summary);
            timings.push(PhaseTiming {
                name: name.to_owned(),
                seconds: round_seconds(elapsed),
            });
            Ok(value)
        }
        Err(error) => {
            phase.failed();
            Err(error.context(format!("build phase `{name}` failed")))
        }
    }
}

fn round_seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 100.0).round() / 100.0
}

/// Removes image outputs an earlier (crashed) build left in mkosi's output
/// directory; the tools tree there is kept.
fn remove_stale_outputs(output_dir: &Path) -> Result<()> {
    for entry in
        fs::read_dir(output_dir).with_context(|| format!("listing {}", output_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(&format!("{IMAGE_ID}_")) {
            let path = entry.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.with_context(|| format!("removing stale output {}", path.display()))?;
        }
    }
    Ok(())
}

/// Moves mkosi's outputs into the staging directory under their build names.
fn collect_outputs(plan: &BuildPlan, staging: &Path) -> Result<()> {
    let output_dir = plan.cache.mkosi_output();
    for part in plan.parts() {
        let source = output_dir.join(plan.mkosi_output_name(&part.mkosi_suffix));
        if !source.is_file() {
            bail!(
                "mkosi finished but did not write {}; the recipe must produce a disk image with split /usr and \
                 usr-verity partitions, a UKI, a manifest, and (from mkosi.finalize) the root tree and one addon \
                 per platform",
                source.display()
            );
        }
        move_file(&source, &staging.join(&part.name))?;
    }
    // mkosi also leaves a convenience symlink without a suffix.
    let _ = fs::remove_file(output_dir.join(plan.mkosi_output_name("")));
    let stats = output_dir.join(plan.mkosi_output_name(USR_STATS_SUFFIX));
    if stats.is_file() {
        move_file(&stats, &staging.join(USR_STATS_FILE))?;
    }
    Ok(())
}

/// What the recipe's finalize script writes: /usr's size before compression.
const USR_STATS_SUFFIX: &str = ".usr-stats";
/// Its name while the build is assembled; it goes into build.json, not the
/// build directory.
const USR_STATS_FILE: &str = ".usr-stats";

/// Reads and removes the /usr statistics, if the recipe wrote them.
fn take_usr_stats(staging: &Path) -> Result<(Option<u64>, Option<u64>)> {
    let path = staging.join(USR_STATS_FILE);
    if !path.exists() {
        return Ok((None, None));
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    fs::remove_file(&path)?;
    let value = |key: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(key)?
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
    };
    Ok((value("content_bytes"), value("files")))
}

/// Renames, or copies (keeping holes) when the cache is on another file
/// system than the build directory.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    const CROSS_DEVICE: i32 = 18; // EXDEV
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(CROSS_DEVICE) => {
            Step::new(format!("copying {}", from.display()), "cp")
                .args(["--sparse=always", "--"])
                .arg(from)
                .arg(to)
                .run()?;
            fs::remove_file(from).with_context(|| format!("removing {}", from.display()))
        }
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", from.display(), to.display())),
    }
}

/// What inspecting the composed image found.
struct Inspected {
    table: PartitionTable,
    usr: UsrInfo,
    kernel: KernelInfo,
}

/// Reads the image back and checks it is what the design says: the UKI's
/// usrhash= matches the /usr partition UUIDs, the split /usr and verity
/// files are the slot-A partitions, and the verity tree checks out.
fn inspect(plan: &BuildPlan, tools: &HostTools, staging: &Path) -> Result<Inspected> {
    let disk = staging.join("disk.raw");
    let usr_file = staging.join("usr.raw");
    let hash_file = staging.join("usr-verity.raw");
    let table = image::read_partition_table(tools.path("sfdisk"), &disk)?;
    for role in [
        Role::Esp,
        Role::UsrA,
        Role::UsrAVerity,
        Role::UsrB,
        Role::UsrBVerity,
        Role::Root,
    ] {
        table.require(role)?;
    }
    let usr_a = table.require(Role::UsrA)?;
    let usr_a_verity = table.require(Role::UsrAVerity)?;
    let uki = uki::read_uki(&staging.join("uki.efi"))?;
    let Some(usrhash) = uki.cmdline_value("usrhash") else {
        bail!(
            "the UKI's kernel command line has no usrhash=: {:?}",
            uki.cmdline
        );
    };
    let from_uuids = image::root_hash_from_uuids(&usr_a.uuid, &usr_a_verity.uuid);
    if usrhash != from_uuids {
        bail!("the UKI's usrhash={usrhash} does not match the /usr partition UUIDs, which encode {from_uuids}");
    }
    for (file, partition) in [(&usr_file, usr_a), (&hash_file, usr_a_verity)] {
        let size = fs::metadata(file)?.len();
        if size != partition.size {
            bail!(
                "{} is {size} bytes but partition {} ({}) is {} bytes; they should be the same partition",
                file.display(),
                partition.number,
                partition.label,
                partition.size
            );
        }
    }
    let verity = read_verity_header(tools, &hash_file)?;
    let (content_bytes, content_files) = take_usr_stats(staging)?;
    for platform in &plan.platform_table.platforms {
        let addon = staging.join(convert::Parts::addon_name(&platform.id));
        let cmdline = uki::read_addon_cmdline(&addon)?;
        if cmdline != platform.kernel_cmdline() {
            bail!(
                "the UKI addon for platform {} carries {cmdline:?}, but the platform table says {:?}",
                platform.id,
                platform.kernel_cmdline()
            );
        }
    }
    Step::new(
        "checking /usr against its verity root hash",
        tools.path("veritysetup"),
    )
    .arg("verify")
    .arg(&usr_file)
    .arg(&hash_file)
    .arg(usrhash)
    .run()?;
    Ok(Inspected {
        usr: UsrInfo {
            root_hash: usrhash.to_owned(),
            filesystem: filesystem_of(&usr_file)?,
            data_file: "usr.raw".to_owned(),
            hash_file: "usr-verity.raw".to_owned(),
            data_block_size: verity.data_block_size,
            hash_block_size: verity.hash_block_size,
            salt: verity.salt,
            filesystem_bytes: verity.data_blocks * verity.data_block_size,
            hash_tree_bytes: verity.hash_device_bytes,
            content_bytes,
            content_files,
        },
        kernel: KernelInfo {
            release: uki.kernel_release.clone(),
            cmdline: uki.cmdline.clone(),
        },
        table,
    })
}

struct VerityHeader {
    hash_device_bytes: u64,
    data_blocks: u64,
    data_block_size: u64,
    hash_block_size: u64,
    salt: String,
}

fn read_verity_header(tools: &HostTools, hash_file: &Path) -> Result<VerityHeader> {
    let dump = Step::new("reading the verity superblock", tools.path("veritysetup"))
        .arg("dump")
        .arg(hash_file)
        .output_text()?;
    parse_verity_dump(&dump)
}

/// Parses `veritysetup dump` output.
fn parse_verity_dump(dump: &str) -> Result<VerityHeader> {
    let field = |name: &str| -> Result<String> {
        dump.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_owned())
            })
            .with_context(|| format!("veritysetup dump printed no {name:?} field"))
    };
    let hash_device = field("Hash device size")?;
    Ok(VerityHeader {
        hash_device_bytes: hash_device
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()?,
        data_blocks: field("Data blocks")?.parse()?,
        data_block_size: field("Data block size")?.parse()?,
        hash_block_size: field("Hash block size")?.parse()?,
        salt: field("Salt")?,
    })
}

/// Names the file system at the start of a partition image by its magic.
fn filesystem_of(path: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut superblock = [0u8; 4];
    file.seek(SeekFrom::Start(1024))?;
    file.read_exact(&mut superblock)?;
    Ok(match superblock {
        [0xe2, 0xe1, 0xf5, 0xe0] => "erofs",
        _ => "unknown",
    }
    .to_owned())
}

/// Hashes every part and artifact. The work is spread over as many threads
/// as there are CPUs, largest files first, so a disk image does not wait
/// behind small files. Returns the parts' records and the artifacts'
/// (digest, size), in the order given.
#[allow(clippy::type_complexity)]
fn digest_outputs(
    staging: &Path,
    parts: &[(String, FileKind, Option<PlatformId>)],
    artifacts: &[String],
    progress: &Progress,
) -> Result<(Vec<FileInfo>, Vec<(Sha256Digest, u64)>)> {
    let names: Vec<&String> = parts
        .iter()
        .map(|(name, _, _)| name)
        .chain(artifacts)
        .collect();
    let mut jobs: Vec<(usize, PathBuf, u64)> = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let path = staging.join(name);
        let size = fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        jobs.push((index, path, size));
    }
    jobs.sort_by_key(|job| std::cmp::Reverse(job.2));
    let total: u64 = jobs.iter().map(|job| job.2).sum();
    let bar = progress.bytes("sha256", total);
    let queue = std::sync::Mutex::new(jobs.into_iter());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(names.len().max(1));
    let results: Vec<Result<(usize, Sha256Digest, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().expect("digest queue").next();
                        let Some((index, path, _)) = next else {
                            break done;
                        };
                        done.push(sha256_file(&path).map_err(anyhow::Error::from).map(
                            |(digest, size)| {
                                bar.inc(size);
                                (index, digest, size)
                            },
                        ));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("digest thread panicked"))
            .collect()
    });
    bar.finish_and_clear();
    let mut digests = results.into_iter().collect::<Result<Vec<_>>>()?;
    digests.sort_by_key(|(index, _, _)| *index);
    let mut digests = digests.into_iter().map(|(_, digest, size)| (digest, size));
    let files = parts
        .iter()
        .zip(digests.by_ref())
        .map(|((name, kind, platform), (sha256, size))| FileInfo {
            name: name.clone(),
            kind: *kind,
            size,
            sha256,
            platform: platform.clone(),
        })
        .collect();
    Ok((files, digests.collect()))
}

/// mkosi's JSON manifest: the installed packages.
fn read_manifest(path: &Path) -> Result<Vec<PackageInfo>> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        packages: Vec<ManifestPackage>,
    }
    #[derive(serde::Deserialize)]
    struct ManifestPackage {
        name: String,
        version: String,
        architecture: String,
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("parsing mkosi manifest {}", path.display()))?;
    let mut packages: Vec<PackageInfo> = manifest
        .packages
        .into_iter()
        .map(|p| PackageInfo {
            name: p.name,
            version: p.version,
            architecture: p.architecture,
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(packages)
}

fn write_build_json(dir: &Path, info: &BuildInfo) -> Result<()> {
    let path = dir.join(BUILD_JSON);
    let mut text = serde_json::to_string_pretty(info)?;
    text.push('\n');
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn tool_versions(tools: &HostTools) -> Vec<ToolVersion> {
    let mut versions = vec![ToolVersion {
        name: "boxcar".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }];
    versions.extend(tools.all().filter_map(|tool| {
        Some(ToolVersion {
            name: tool.program.clone(),
            version: tool.version.clone()?,
        })
    }));
    versions
}

fn allocated_bytes(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

/// git's view of the checkout; `None` fields when git or the repository is
/// not there (a source tarball builds too).
fn git_source(root: &Path) -> SourceInfo {
    let git = |args: &[&str]| -> Option<String> {
        Step::new("asking git about the checkout", "git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output_text()
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|status| !status.is_empty());
    SourceInfo {
        git_commit: commit,
        git_dirty: dirty,
    }
}

/// The commit time of HEAD: a reproducible SOURCE_DATE_EPOCH.
fn git_commit_time(root: &Path) -> Option<i64> {
    Step::new("asking git for the commit time", "git")
        .arg("-C")
        .arg(root)
        .args(["log", "-1", "--format=%ct"])
        .output_text()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The staging directory: removed on drop unless committed.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            // Left by a build that was killed outright.
            fs::remove_dir_all(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            committed: false,
        })
    }

    /// Renames the staging directory to `target`: the build appears whole.
    fn commit(mut self, target: &Path) -> Result<PathBuf> {
        if target.exists() {
            bail!(
                "{} appeared while building; not replacing it",
                target.display()
            );
        }
        fs::rename(&self.path, target)
            .with_context(|| format!("renaming {} to {}", self.path.display(), target.display()))?;
        self.committed = true;
        Ok(target.to_owned())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// An exclusive lock on the cache for the duration of a build.
struct CacheLock {
    _file: File,
}

impl CacheLock {
    fn acquire(cache: &Cache, progress: &Progress) -> Result<Self> {
        let path = cache.lock_file();
        let file = File::create(&path)
            .with_context(|| format!("creating lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                progress.note(&format!(
                    "another build is using {}; waiting for it to finish",
                    cache.root.display()
                ));
                file.lock()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// A throwaway checkout with the real recipes and channels.
    fn project_copy() -> (tempfile::TempDir, Project) {
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let temp = tempfile::tempdir().unwrap();
        for dir in ["recipes", "channels"] {
            Step::new("copying", "cp")
                .arg("-r")
                .arg(real.join(dir))
                .arg(temp.path())
                .run()
                .unwrap();
        }
        let project = Project::at(temp.path()).unwrap();
        (temp, project)
    }

    fn request(out: &Path) -> BuildRequest {
        BuildRequest {
            channel: "alpha".parse().unwrap(),
            version: None,
            out_dir: out.to_owned(),
            refresh: false,
            platforms: Vec::new(),
            package: true,
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

    #[test]
    fn staging_is_removed_unless_committed() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join(".1.partial");
        {
            let staging = Staging::create(&path).unwrap();
            fs::write(staging.path.join("disk.raw"), b"half").unwrap();
        }
        assert!(!path.exists());
        let staging = Staging::create(&path).unwrap();
        let target = temp.path().join("1");
        staging.commit(&target).unwrap();
        assert!(target.is_dir() && !path.exists());
    }

    #[test]
    fn stale_outputs_go_but_the_tools_tree_stays() {
        let temp = tempfile::tempdir().unwrap();
        fs::create_dir(temp.path().join("tools")).unwrap();
        fs::write(temp.path().join("boxcar_1.raw"), b"").unwrap();
        fs::create_dir(temp.path().join("boxcar_1.dir")).unwrap();
        remove_stale_outputs(temp.path()).unwrap();
        let left: Vec<_> = fs::read_dir(temp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["tools"]);
    }

    #[test]
    fn parses_veritysetup_dump() {
        let dump = "VERITY header information for x\nUUID:            \tabc\nHash type:       \t1\n\
                    Data blocks:     \t78163\nData block size: \t4096\nHash blocks:     \t617\n\
                    Hash block size: \t4096\nHash algorithm:  \tsha256\nSalt:            \tdeadbeef\n\
                    Hash device size: \t2711552 [bytes]\n";
        let header = parse_verity_dump(dump).unwrap();
        assert_eq!(
            (header.data_block_size, header.hash_block_size),
            (4096, 4096)
        );
        assert_eq!(header.salt, "deadbeef");
        assert_eq!(header.data_blocks, 78163);
        assert_eq!(header.hash_device_bytes, 2711552);
        assert!(parse_verity_dump("nothing").is_err());
    }

    #[test]
    fn usr_stats_are_read_and_removed() {
        let temp = tempfile::tempdir().unwrap();
        assert_eq!(take_usr_stats(temp.path()).unwrap(), (None, None));
        fs::write(
            temp.path().join(USR_STATS_FILE),
            "content_bytes=522000000\nfiles=20931\n",
        )
        .unwrap();
        assert_eq!(
            take_usr_stats(temp.path()).unwrap(),
            (Some(522_000_000), Some(20931))
        );
        assert!(!temp.path().join(USR_STATS_FILE).exists());
    }
}
