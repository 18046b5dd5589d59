//! `boxcar build`, `boxcar check`, `boxcar platforms`, `boxcar footprint`
//! and `boxcar compare`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;
use time::OffsetDateTime;

use crate::build::convert;
use crate::build::{self, BuildPlan, BuildRequest};
use crate::channel::Channels;
use crate::cmdline::{BuildArgs, CheckArgs, CompareArgs, FootprintArgs, GlobalArgs, PlatformsArgs};
use crate::hosttools::{self, Locator};
use crate::platform::{Nic, PlatformTable};
use crate::progress::Progress;
use crate::project::{Cache, Project};
use crate::recipe::Recipe;
use crate::records::buildinfo::{BuildInfo, FootprintEntry};
use crate::units::human_bytes;
use crate::vmtest;

/// Where to find the host's tools: mkosi from $BOXCAR_MKOSI or the cache's
/// wrapper first.
pub(super) fn locator(cache: &Cache) -> Locator {
    let mut mkosi = Vec::new();
    if let Some(path) = std::env::var_os("BOXCAR_MKOSI") {
        mkosi.push(PathBuf::from(path));
    }
    mkosi.push(cache.mkosi_wrapper());
    Locator {
        preferred: BTreeMap::from([("mkosi", mkosi)]),
    }
}

fn require_root(what: &str) -> Result<()> {
    // /proc/self belongs to the effective user.
    let uid = std::fs::metadata("/proc/self")?.uid();
    if uid != 0 {
        bail!("{what} must run as root (mkosi needs it to install packages and build file systems); try sudo");
    }
    Ok(())
}

pub(super) fn build(global: &GlobalArgs, args: &BuildArgs, progress: &Progress) -> Result<()> {
    // First, before anything is created: the host's umask must not change
    // the image or break its packaging.
    build::umask::set_for_build();
    let project = Project::discover(global.project.as_deref())?;
    let cache = Cache::new(global.cache_dir.as_deref())?;
    let request = BuildRequest {
        channel: args.channel.clone(),
        version: args.version.clone(),
        out_dir: args.out.clone(),
        refresh: args.refresh,
        platforms: args.platforms.clone(),
        package: !args.no_artifacts,
        update_agent: args.update_agent.clone(),
        update_keys: args.update_keys.clone(),
        update_store: args.update_store.clone(),
        secure_boot_key: args.secure_boot_key.clone(),
        secure_boot_certificate: args.secure_boot_certificate.clone(),
    };
    let plan = BuildPlan::new(project, cache, &request, OffsetDateTime::now_utc())?;
    require_root("boxcar build")?;
    let mut requirements = build::requirements();
    requirements.extend(convert::requirements(&plan.selected()));
    if plan.secure_boot.is_some() {
        requirements.extend(build::secure_boot_requirements());
    }
    let tools = hosttools::check(&requirements, &locator(&plan.cache), "build")?;
    progress.note(&format!(
        "building {} {} for channel {} (cache {})",
        crate::platform::IMAGE_ID,
        plan.version,
        plan.channel.name,
        plan.cache.root.display()
    ));
    let outcome = build::run(&plan, &tools, progress)?;
    if global.json {
        #[derive(Serialize)]
        struct Output<'a> {
            dir: &'a std::path::Path,
            #[serde(flatten)]
            info: &'a crate::records::buildinfo::BuildInfo,
        }
        out!(
            "{}",
            serde_json::to_string_pretty(&Output {
                dir: &outcome.dir,
                info: &outcome.info
            })?
        );
        return Ok(());
    }
    let info = &outcome.info;
    let total = info
        .phases
        .iter()
        .find(|p| p.name == "total")
        .map_or(0.0, |p| p.seconds);
    out!(
        "Built {} {} for channel {} in {total:.1}s: {}",
        info.name,
        info.version,
        info.channel,
        outcome.dir.display()
    );
    out!("  /usr root hash  {}", info.usr.root_hash);
    out!("  kernel          {}", info.kernel.release);
    out!("  packages        {}", info.packages.len());
    out!(
        "  disk.raw        {} ({} allocated)",
        human_bytes(info.disk.size),
        human_bytes(info.disk.allocated)
    );
    out!("  artifacts:");
    for artifact in &info.artifacts {
        out!(
            "    {:<8} {:<36} {:>10}  sha256 {}",
            artifact.platform,
            artifact.file,
            human_bytes(artifact.size),
            artifact.sha256
        );
    }
    Ok(())
}

pub(super) fn platforms(global: &GlobalArgs, args: &PlatformsArgs) -> Result<()> {
    let project = Project::discover(global.project.as_deref())?;
    let table = PlatformTable::load(&project.root.join(crate::platform::TABLE_FILE))?;
    if args.markdown {
        out_raw!("{}", crate::platform::markdown_table(&table.platforms));
        return Ok(());
    }
    if global.json {
        out!("{}", serde_json::to_string_pretty(&table.platforms)?);
        return Ok(());
    }
    let version: crate::version::Version = "0".parse().expect("a valid version");
    for platform in &table.platforms {
        out!("{}  {}", platform.id, platform.description);
        out!("  format       {}", platform.format.name());
        let files: Vec<String> = platform
            .artifact_files(&version)
            .into_iter()
            .map(|(_, file)| file.replacen("-0-", "-VERSION-", 1))
            .collect();
        out!("  files        {}", files.join(", "));
        out!("  kernel args  {}", platform.kernel_cmdline());
        if !platform.units.is_empty() {
            out!(
                "  agents       {} (packages: {})",
                platform.units.join(", "),
                platform.packages.join(", ")
            );
        }
        out!(
            "  boots with   {}",
            Nic::hardware(platform.firmware, platform.disk_bus, platform.nic)
        );
        out!("  config from  {}", platform.config_delivery.name());
    }
    Ok(())
}

pub(super) fn footprint(global: &GlobalArgs, args: &FootprintArgs) -> Result<()> {
    let info = BuildInfo::load(&args.build)?;
    let Some(usr) = &info.usr.footprint else {
        bail!(
            "{}/build.json has no footprint: the build was made by a recipe that does not list /usr's files \
             and packages (mkosi.postinst and mkosi.finalize in recipes/ do)",
            args.build.display()
        );
    };
    let initrd = info.kernel.initrd.as_ref();
    if global.json {
        let both = serde_json::json!({ "usr": usr, "initrd": initrd });
        out!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(());
    }
    out!(
        "/usr of {} {}: {} in {} files (before compression), {} as stored ({})",
        info.name,
        info.version,
        human_bytes(usr.bytes),
        usr.files,
        human_bytes(info.usr.filesystem_bytes),
        info.usr.filesystem
    );
    print_biggest("packages", &usr.packages, usr.bytes, args.top);
    print_biggest("directories", &usr.directories, usr.bytes, args.top);
    print_biggest("files", &usr.biggest_files, usr.bytes, args.top);
    if let Some(initrd) = initrd {
        out!("");
        out!(
            "the UKI's initrd: {} in {} files (decompressed), {} as stored",
            human_bytes(initrd.bytes),
            initrd.files,
            human_bytes(initrd.stored_bytes)
        );
        print_biggest("directories", &initrd.directories, initrd.bytes, args.top);
        print_biggest("files", &initrd.biggest_files, initrd.bytes, args.top);
    }
    Ok(())
}

/// The first `top` of `entries` with their share of `total`.
fn print_biggest(title: &str, entries: &[FootprintEntry], total: u64, top: usize) {
    out!("");
    out!("biggest {title} (of {}):", entries.len());
    for entry in entries.iter().take(top) {
        let share = 100.0 * entry.bytes as f64 / total.max(1) as f64;
        out!(
            "  {:>10}  {share:>5.1}%  {:>6} files  {}",
            human_bytes(entry.bytes),
            entry.files,
            entry.name
        );
    }
}

pub(super) fn check(global: &GlobalArgs, _args: &CheckArgs) -> Result<()> {
    #[derive(Serialize)]
    struct Report {
        project: PathBuf,
        recipe_files: usize,
        channels: Vec<String>,
        tools: Vec<hosttools::FoundTool>,
        problems: Vec<String>,
    }
    let project = Project::discover(global.project.as_deref())?;
    let cache = Cache::new(global.cache_dir.as_deref())?;
    let recipe = Recipe::load(&project.recipes_dir())?;
    let channels = Channels::load(&project.channels_dir())?;
    let table = PlatformTable::load(&project.root.join(crate::platform::TABLE_FILE))?;
    let locator = locator(&cache);
    let mut report = Report {
        project: project.root.clone(),
        recipe_files: recipe.files().count(),
        channels: channels
            .channels
            .iter()
            .map(|c| c.name.to_string())
            .collect(),
        tools: Vec::new(),
        problems: Vec::new(),
    };
    let mut build_requirements = build::requirements();
    build_requirements.extend(convert::requirements(&table.select(&[])?));
    for (command, requirements) in [
        ("build", build_requirements),
        ("test", vmtest::requirements()),
    ] {
        match hosttools::check(&requirements, &locator, command) {
            Ok(tools) => report.tools.extend(tools.all().cloned()),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    if global.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("checkout  {}", report.project.display());
        out!("recipe    {} files, all valid", report.recipe_files);
        out!("channels  {}", report.channels.join(", "));
        for tool in &report.tools {
            out!(
                "tool      {} {} ({})",
                tool.program,
                tool.version.as_deref().unwrap_or("(any version)"),
                tool.path.display()
            );
        }
        for problem in &report.problems {
            out!("{problem}");
        }
    }
    if !report.problems.is_empty() {
        bail!("the host is missing tools; see above");
    }
    Ok(())
}

pub(super) fn compare(global: &GlobalArgs, args: &CompareArgs, progress: &Progress) -> Result<()> {
    let comparison = build::comparison::compare(&args.build, &args.with, progress)?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print_comparison(&comparison, args);
    }
    let differing = comparison.differing().count();
    if differing > 0 {
        bail!(
            "the builds differ in {differing} of {} outputs",
            comparison.outputs.len()
        );
    }
    Ok(())
}

fn print_comparison(comparison: &build::comparison::Comparison, args: &CompareArgs) {
    let (a, b) = (args.build.display(), args.with.display());
    if comparison.inputs.is_empty() {
        out!("inputs: the same in both build.json files");
    } else {
        out!("inputs that differ ({a} | {b}):");
        for input in &comparison.inputs {
            out!("  {}: {} | {}", input.input, input.build, input.with);
        }
    }
    let same = comparison.outputs.iter().filter(|o| o.same).count();
    out!("outputs: {same} of {} identical", comparison.outputs.len());
    for output in comparison.differing() {
        let detail = match (
            &output.build_sha256,
            &output.with_sha256,
            &output.first_difference,
        ) {
            (None, _, _) => format!("only in {b}"),
            (_, None, _) => format!("only in {a}"),
            (_, _, Some(first)) => match &first.within {
                Some(within) => format!("first differs at byte {} ({within})", first.offset),
                None => format!("first differs at byte {}", first.offset),
            },
            _ => "differs".to_owned(),
        };
        out!("  differs  {}: {detail}", output.name);
    }
    if let Some(first) = comparison
        .differing()
        .find(|o| o.first_difference.is_some())
    {
        out!(
            "explain: diffoscope {a}/{name} {b}/{name}",
            name = first.name
        );
    }
}
