//! Whether this boot is good enough to keep. Run before
//! `boot-complete.target` (boxcar-update-health.service): only a healthy
//! boot is blessed by systemd-bless-boot, releases the fleet lock and
//! counts as the update having worked. Healthy means containerd and docker
//! are active and every operator check in `/usr/lib/boxcar/health.d` and
//! `/etc/boxcar/health.d` (executables, run in name order) exits 0.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::config::Config;
use crate::host;
use crate::paths::Paths;

/// The services a container host is for.
pub const REQUIRED_UNITS: [&str; 2] = ["containerd.service", "docker.service"];

/// Waits (up to the configured timeout) for the required units, then runs
/// the operator's checks. The error names what is unhealthy.
pub fn check(paths: &Paths, config: &Config) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(config.agent.health_timeout_seconds);
    for unit in REQUIRED_UNITS {
        loop {
            let state = host::unit_state(unit)?;
            match state.as_str() {
                "active" => break,
                "failed" => bail!("{unit} failed"),
                _ if Instant::now() >= deadline => bail!(
                    "{unit} is {state:?}, not active, after {} s",
                    config.agent.health_timeout_seconds
                ),
                _ => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }
    let checks = operator_checks(paths);
    for check in &checks {
        host::run(
            &format!("health check {}", check.display()),
            &mut Command::new(check),
        )?;
    }
    Ok(format!(
        "{} active; {} operator checks passed",
        REQUIRED_UNITS.join(" and "),
        checks.len()
    ))
}

/// The executables in the health.d directories, in name order.
fn operator_checks(paths: &Paths) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut checks: Vec<PathBuf> = paths
        .health_checks()
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect();
    checks.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    checks
}
