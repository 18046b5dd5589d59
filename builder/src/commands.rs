//! The verbs: one function per subcommand, from parsed arguments to a
//! printed result.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use time::OffsetDateTime;

use crate::build::{self, convert, BuildPlan, BuildRequest};
use crate::channel::Channels;
use crate::cmdline::{AccelArg, BuildArgs, CheckArgs, Cli, Command, GlobalArgs, TestArgs};
use crate::hosttools::{self, Locator};
use crate::platform::{Nic, PlatformTable};
use crate::progress::Progress;
use crate::project::{Cache, Project};
use crate::recipe::Recipe;
use crate::units::human_bytes;
use crate::vmtest::{self, qemu::AccelRequest, TestRequest};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    crate::interrupt::install();
    let progress = Progress::new(cli.global.quiet);
    match cli.command {
        Command::Build(args) => build(&cli.global, &args, &progress),
        Command::Test(args) => test(&cli.global, &args, &progress),
        Command::Check(args) => check(&cli.global, &args, &progress),
        Command::Platforms(args) => platforms(&cli.global, &args),
        Command::Internal(args) => internal(&args),
        Command::Keys(args) => keys(&cli.global, &args),
        Command::Publish(args) => publish(&cli.global, &args, &progress),
        Command::Promote(args) => promote(&cli.global, &args, &progress),
        Command::Verify(args) => verify(&cli.global, &args),
        Command::Download(args) => download(&cli.global, &args, &progress),
    }
}

fn locator(cache: &Cache) -> Locator {
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

fn build(global: &GlobalArgs, args: &BuildArgs, progress: &Progress) -> Result<()> {
    let project = Project::discover(global.project.as_deref())?;
    let cache = Cache::new(global.cache_dir.as_deref())?;
    let request = BuildRequest {
        channel: args.channel.clone(),
        version: args.version.clone(),
        out_dir: args.out.clone(),
        refresh: args.refresh,
        platforms: args.platforms.clone(),
        package: !args.no_artifacts,
    };
    let plan = BuildPlan::new(project, cache, &request, OffsetDateTime::now_utc())?;
    require_root("boxcar build")?;
    let mut requirements = build::requirements();
    requirements.extend(convert::requirements(&plan.selected()));
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

fn platforms(global: &GlobalArgs, args: &crate::cmdline::PlatformsArgs) -> Result<()> {
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
    }
    Ok(())
}

fn test(global: &GlobalArgs, args: &TestArgs, progress: &Progress) -> Result<()> {
    let cache = Cache::new(global.cache_dir.as_deref())?;
    let tools = hosttools::check(&vmtest::requirements(), &locator(&cache), "test")?;
    let request = TestRequest {
        build_dir: args.build.clone(),
        platforms: args.platforms.clone(),
        tamper_usr: args.tamper_usr,
        update_from: args.update_from.clone(),
        accel: match args.accel {
            AccelArg::Auto => AccelRequest::Auto,
            AccelArg::Kvm => AccelRequest::Kvm,
            AccelArg::Tcg => AccelRequest::Tcg,
        },
        timeout: args.timeout.map(Duration::from_secs),
        memory_mib: args.memory,
        cpus: args.cpus,
    };
    let outcomes = vmtest::run(&request, &tools, progress)?;
    if global.json {
        let all: Vec<&vmtest::evidence::Evidence> = outcomes.iter().map(|o| &o.evidence).collect();
        out!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for outcome in &outcomes {
            out_raw!("{}", vmtest::evidence::summary(&outcome.evidence));
            out!("evidence: {}\n", outcome.evidence_dir.display());
        }
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.evidence.passed)
        .map(|o| {
            let checks: Vec<&str> = o
                .evidence
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name.as_str())
                .collect();
            format!(
                "{} ({}; console log {})",
                o.evidence.platform,
                checks.join(", "),
                o.evidence_dir.join(vmtest::evidence::CONSOLE_LOG).display()
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("boot tests failed: {}", failed.join("; "));
    }
    Ok(())
}

/// `boxcar internal http-serve`: answers HTTP on stdin/stdout for one guest
/// connection (qemu runs it per connection during boot tests).
fn internal(args: &crate::cmdline::InternalArgs) -> Result<()> {
    match &args.command {
        crate::cmdline::InternalCommand::HttpServe(serve) => {
            let content = vmtest::http::Content {
                dir: serve.dir.clone(),
                files: serve.files.clone(),
                imds_hostname: serve.imds_hostname.clone(),
            };
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            let mut output = std::io::BufWriter::new(std::io::stdout().lock());
            vmtest::http::serve_connection(&mut input, &mut output, &content)?;
            Ok(())
        }
    }
}

fn check(global: &GlobalArgs, _args: &CheckArgs, _progress: &Progress) -> Result<()> {
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

/// The signing key: `--key FILE`, else $BOXCAR_SIGNING_KEY_FILE, else the
/// key text in $BOXCAR_SIGNING_KEY. Errors never show key material.
fn load_signer(key: Option<&std::path::Path>) -> Result<boxcar_signing::SecretKey> {
    use boxcar_signing::SecretKey;
    if let Some(path) = key {
        return Ok(SecretKey::load(path)?);
    }
    if let Some(path) = std::env::var_os("BOXCAR_SIGNING_KEY_FILE") {
        return Ok(SecretKey::load(std::path::Path::new(&path))?);
    }
    if let Ok(text) = std::env::var("BOXCAR_SIGNING_KEY") {
        return SecretKey::from_file_text(&text)
            .map_err(|_| anyhow::anyhow!("$BOXCAR_SIGNING_KEY does not hold a boxcar secret key"));
    }
    bail!("no signing key: pass --key FILE, or set BOXCAR_SIGNING_KEY_FILE or BOXCAR_SIGNING_KEY")
}

fn keys(global: &GlobalArgs, args: &crate::cmdline::KeysArgs) -> Result<()> {
    use crate::cmdline::KeysCommand;
    use boxcar_signing::Sign;
    match &args.command {
        KeysCommand::Generate(generate) => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(&generate.out)?;
            let secret_path = generate.out.join(format!("{}.key", generate.name));
            let public_path = generate.out.join(format!("{}.pub", generate.name));
            for path in [&secret_path, &public_path] {
                if path.exists() {
                    bail!("{} exists; not replacing a key", path.display());
                }
            }
            let key = boxcar_signing::SecretKey::generate()?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&secret_path)?;
            std::io::Write::write_all(&mut file, key.to_file_text().as_bytes())?;
            file.sync_all()?;
            std::fs::write(&public_path, key.public_key().to_file_text())?;
            if global.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "key_id": key.key_id().to_string(),
                        "secret_key": secret_path,
                        "public_key": public_path,
                        "public_key_line": key.public_key().to_base64(),
                    })
                );
            } else {
                out!("key {}", key.key_id());
                out!(
                    "  secret  {} (keep private: never commit it, never print it)",
                    secret_path.display()
                );
                out!(
                    "  public  {} (pin this; `minisign -V -p` reads it)",
                    public_path.display()
                );
            }
            Ok(())
        }
        KeysCommand::Add(add) => {
            let signer = load_signer(add.key.as_deref())?;
            let new_key = boxcar_signing::PublicKey::load(&add.public)?;
            let store = crate::store::Store::open(&add.store)?;
            let _lock = store.lock(&Progress::new(global.quiet))?;
            let keyring = crate::channeldoc::add_key(
                &store,
                &signer,
                &new_key,
                &add.note,
                OffsetDateTime::now_utc(),
            )?;
            if global.json {
                out!("{}", serde_json::to_string_pretty(&keyring)?);
            } else {
                out!(
                    "{} now lists {} keys (serial {}), signed by {}",
                    crate::channeldoc::keyring_path(&store).display(),
                    keyring.keys.len(),
                    keyring.serial,
                    signer.key_id()
                );
            }
            Ok(())
        }
    }
}

fn publish(
    global: &GlobalArgs,
    args: &crate::cmdline::PublishArgs,
    progress: &Progress,
) -> Result<()> {
    let project = Project::discover(global.project.as_deref())?;
    let channels = Channels::load(&project.channels_dir())?;
    let channel = args
        .channel
        .as_ref()
        .map(|name| channels.get(name))
        .transpose()?;
    let signer = load_signer(args.key.as_deref())?;
    let store = crate::store::Store::open(&args.store)?;
    let _lock = store.lock(progress)?;
    let published = crate::publish::publish(&store, &args.build, &signer, channel, progress)?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&published)?);
    } else {
        out!(
            "published {} ({} artifacts, {}) to {}",
            published.version,
            published.artifacts,
            human_bytes(published.bytes),
            published.release_dir.display()
        );
        out!("  release.json sha256 {}", published.release_sha256);
        if let Some((channel, serial)) = &published.channel {
            out!(
                "  channel {channel} now points at {} (serial {serial})",
                published.version
            );
        }
    }
    Ok(())
}

fn promote(
    global: &GlobalArgs,
    args: &crate::cmdline::PromoteArgs,
    progress: &Progress,
) -> Result<()> {
    let project = Project::discover(global.project.as_deref())?;
    let channels = Channels::load(&project.channels_dir())?;
    let signer = load_signer(args.key.as_deref())?;
    let store = crate::store::Store::open(&args.store)?;
    let _lock = store.lock(progress)?;
    let now = OffsetDateTime::now_utc();
    let request = crate::promote::PromoteRequest {
        to: args.to.clone(),
        version: args.version.clone(),
        allow_downgrade: args.allow_downgrade,
    };
    let promotion = crate::promote::plan(&store, &channels, &signer, &request, now)?;
    let change = match (&promotion.current, promotion.unchanged) {
        (_, true) => format!(
            "{} already points at {}: nothing to do",
            promotion.to, promotion.version
        ),
        (Some(current), false) => format!(
            "{}: {current} (serial {}) -> {} (serial {}), from {}",
            promotion.to,
            promotion.current_serial.unwrap_or(0),
            promotion.version,
            promotion.next_serial,
            promotion.from
        ),
        (None, false) => format!(
            "{}: (empty) -> {} (serial {}), from {}",
            promotion.to, promotion.version, promotion.next_serial, promotion.from
        ),
    };
    progress.note(&change);
    for check in &promotion.checks {
        progress.note(&format!("  ok  {}: {}", check.name, check.detail));
    }
    let applied = !promotion.unchanged && !args.dry_run;
    if applied {
        crate::promote::apply(&store, &signer, &promotion, now)?;
    }
    if global.json {
        out!(
            "{}",
            serde_json::json!({
                "promotion": &promotion,
                "dry_run": args.dry_run,
                "written": applied,
            })
        );
    } else if promotion.unchanged {
        out!("{change}");
    } else if args.dry_run {
        out!("dry run: would promote {change}");
    } else {
        out!(
            "promoted {change}; channel document expires {}",
            promotion.expires_at
        );
    }
    Ok(())
}

fn verify(global: &GlobalArgs, args: &crate::cmdline::VerifyArgs) -> Result<()> {
    let trusted = crate::channeldoc::load_public_keys(&args.keys)?;
    let source = crate::storesource::StoreSource::parse(&args.store)?;
    let report = crate::verify::verify(&source, &trusted, OffsetDateTime::now_utc())?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for finding in &report.findings {
            out!(
                "{}  {}: {}",
                if finding.ok { "ok  " } else { "FAIL" },
                finding.subject,
                finding.detail
            );
        }
    }
    if !report.passed() {
        let failed = report.findings.iter().filter(|f| !f.ok).count();
        bail!("the store {} failed {failed} checks", report.store);
    }
    Ok(())
}

fn download(
    global: &GlobalArgs,
    args: &crate::cmdline::DownloadArgs,
    progress: &Progress,
) -> Result<()> {
    use crate::download;
    let store = crate::defaults::store(args.store.as_deref());
    let key_files = crate::defaults::trusted_key_files(&args.keys);
    let trusted = if key_files.is_empty() {
        crate::defaults::builtin_keys()?
    } else {
        crate::channeldoc::load_public_keys(&key_files)?
    };
    if trusted.is_empty() {
        bail!(
            "no trusted key: pass --key FILE (the store's public key) or set BOXCAR_TRUSTED_KEYS"
        );
    }
    let network = download::NetworkSettings {
        read_timeout: Duration::from_secs(args.timeout.max(1)),
        retries: args.retries,
        backoff: Duration::from_millis(
            std::env::var("BOXCAR_RETRY_BACKOFF_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000),
        ),
    };
    if args.list {
        return list_store(
            global,
            &store,
            &trusted,
            network,
            args.channel.as_deref(),
            progress,
        );
    }
    let request = download::DownloadRequest {
        store,
        trusted,
        channel: args.channel.clone(),
        version: args.version.clone(),
        platform: args
            .platform
            .clone()
            .expect("clap requires --platform without --list"),
        to: args.to.clone(),
        decompress: args.decompress,
        network,
        state_file: args
            .state
            .clone()
            .unwrap_or_else(download::default_state_file),
    };
    let downloaded = download::download(&request, progress)?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&downloaded)?);
        return Ok(());
    }
    let from = match (&downloaded.channel, downloaded.channel_serial) {
        (Some(channel), Some(serial)) => format!(" from channel {channel} (serial {serial})"),
        _ => String::new(),
    };
    out!(
        "Boxcar Linux {} for {}{from}, /usr root hash {}",
        downloaded.version,
        downloaded.platform,
        downloaded.usr_root_hash
    );
    for file in &downloaded.files {
        let how = if file.already_present {
            "already here"
        } else if file.resumed {
            "resumed"
        } else {
            "downloaded"
        };
        out!(
            "  {}  {}  sha256 {} verified ({how})",
            file.path.display(),
            human_bytes(file.size),
            file.sha256
        );
    }
    if let Some(raw) = &downloaded.decompressed {
        out!("  decompressed to {}", raw.display());
    }
    Ok(())
}

fn list_store(
    global: &GlobalArgs,
    store: &str,
    trusted: &boxcar_signing::TrustedKeys,
    network: crate::download::NetworkSettings,
    channel: Option<&str>,
    progress: &Progress,
) -> Result<()> {
    let fetcher = crate::download::Fetcher::new(store, network, progress.clone())?;
    let index = crate::download::fetch_index(&fetcher, trusted)?;
    let mut releases: Vec<&boxcar_signing::documents::IndexRelease> =
        index.releases.iter().collect();
    if let Some(channel) = channel {
        let Some(pointer) = index.channels.iter().find(|c| c.name == channel) else {
            bail!("the store has no channel {channel}");
        };
        // The index lists where channels point now; the channel's own
        // history says what it has carried.
        let path = format!("channels/{channel}.json");
        let doc: boxcar_signing::documents::ChannelDocument = {
            let bytes = fetcher
                .fetch_small(&path)?
                .context("the channel document is missing")?;
            let signature = fetcher
                .fetch_small(&format!("{path}.minisig"))?
                .context("the channel document is unsigned")?;
            boxcar_signing::documents::verify(
                &bytes,
                &String::from_utf8_lossy(&signature),
                trusted,
                boxcar_signing::documents::Kind::Channel,
                channel,
                &path,
            )?
            .0
        };
        let carried: Vec<&str> = doc.history.iter().map(|e| e.version.as_str()).collect();
        releases.retain(|r| carried.contains(&r.version.as_str()));
        progress.note(&format!(
            "channel {channel}: {} (serial {})",
            pointer.version, pointer.serial
        ));
    }
    if global.json {
        out!(
            "{}",
            serde_json::json!({ "releases": releases, "channels": index.channels })
        );
        return Ok(());
    }
    for channel in &index.channels {
        out!(
            "channel {:<8} -> {} (serial {}, expires {})",
            channel.name,
            channel.version,
            channel.serial,
            channel.expires_at
        );
    }
    for release in releases {
        out!(
            "release {} (published {})",
            release.version,
            release.published_at
        );
        for artifact in &release.artifacts {
            out!(
                "  {:<8} {:<10} {:>10}  {}",
                artifact.platform,
                artifact.format,
                human_bytes(artifact.size),
                artifact.name
            );
        }
    }
    Ok(())
}
