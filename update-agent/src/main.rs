//! `boxcar-update`: the node agent's command line. The work is in the
//! library; this parses arguments and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use boxcar_update::agent::{describe, Agent};
use boxcar_update::paths::Paths;
use boxcar_update::{check, config, health, host, identity, state};
use clap::{Parser, Subcommand};
use serde_json::json;

/// Keeps this Boxcar Linux host on its channel: checks the channel's
/// signed documents, downloads and verifies the release's update when the
/// host's rollout wave has come, installs it into the idle A/B slot with
/// systemd-sysupdate, and reboots when the update strategy allows
/// (immediate, periodic windows, FleetLock, or off).
///
/// Settings: /usr/lib/boxcar/update.toml (the image's), overridden key by
/// key by /etc/boxcar/update.toml. Trusted store keys: /usr/lib/boxcar/
/// update-keys/*.pub and /etc/boxcar/update-keys/*.pub.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Treat DIR as the root of the host's file system (for tests and
    /// inspecting a mounted image).
    #[arg(long, value_name = "DIR", global = true, hide = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as the service (boxcar-update.service): settle the last update,
    /// then check on a schedule and reboot by strategy.
    Agent,
    /// Check the channel once now; install (and reboot, as the strategy
    /// allows) if there is an update for this host.
    Check {
        /// Ignore the rollout's waves and any pause.
        #[arg(long)]
        now: bool,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the host runs, follows and waits for, and the last error.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that this boot is healthy (boxcar-update-health.service,
    /// before boot-complete.target). On a trial boot of a new version, an
    /// unhealthy boot reboots, so boot counting can fall back.
    Health,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let paths = cli
        .root
        .as_deref()
        .map_or_else(Paths::default, Paths::under);
    match run(cli.command, paths) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, paths: Paths) -> Result<ExitCode> {
    match command {
        Command::Agent => {
            Agent::load(paths)?.serve()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { now, json } => {
            let round = Agent::load(paths)?.check_once(now)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&round)?);
            } else {
                println!("{}", describe(&round.outcome));
                if let Some(reboot) = &round.reboot {
                    println!("{reboot}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => status(&paths, json),
        Command::Health => health_check(&paths),
    }
}

fn status(paths: &Paths, json: bool) -> Result<ExitCode> {
    let config = config::Config::load(paths)?;
    let state = state::State::load(paths)?;
    let running = host::running_version(paths)?;
    let identity = identity::Identity::load(paths).ok();
    let keys = check::trusted_keys(paths, &config)
        .map(|k| k.ids().iter().map(|id| id.to_string()).collect::<Vec<_>>())
        .unwrap_or_default();
    let report = json!({
        "running_version": running,
        "store": config.store.url,
        "channel": config.store.channel,
        "strategy": config.updates.strategy,
        "node_id": identity.as_ref().map(|i| i.node_id.clone()),
        "rollout_position": identity.as_ref().map(|i| i.position),
        "trusted_keys": keys,
        "state": state.phase,
        "available": state.available,
        "pending": state.pending,
        "bad_versions": state.bad_versions,
        "last_check": state.last_check,
        "last_error": state.last_error,
        "last_update": state.last_update,
        "history": state.history,
        "reboot_required": paths.reboot_required().exists(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("running:   Boxcar Linux {running}");
    if config.store.url.is_empty() {
        println!("following: nothing (no store.url configured)");
    } else {
        println!(
            "following: channel {} of {}",
            config.store.channel, config.store.url
        );
    }
    println!("strategy:  {:?}", config.updates.strategy);
    println!("state:     {:?}", state.phase);
    if let Some(available) = &state.available {
        println!(
            "available: {} (channel serial {}, {:?})",
            available.version, available.channel_serial, available.wave
        );
    }
    if let Some(pending) = &state.pending {
        println!(
            "installed: {} since {}, waiting for a reboot",
            pending.version, pending.installed_at
        );
    }
    for bad in &state.bad_versions {
        println!("bad:       {} ({})", bad.version, bad.reason);
    }
    if let Some(check) = &state.last_check {
        println!("last check: {} at {}", check.message, check.at);
    }
    if let Some(error) = &state.last_error {
        println!("last error: {} at {}", error.message, error.at);
    }
    if let Some(update) = &state.last_update {
        println!("last update: {} at {}", update.message, update.at);
    }
    Ok(ExitCode::SUCCESS)
}

fn health_check(paths: &Paths) -> Result<ExitCode> {
    let config = config::Config::load(paths)?;
    match health::check(paths, &config) {
        Ok(summary) => {
            println!("healthy: {summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("unhealthy: {error:#}");
            if host::is_trial_boot(paths) {
                eprintln!("this is a trial boot of a new version: rebooting, so boot counting can fall back");
                host::reboot()?;
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
