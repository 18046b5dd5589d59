//! Whether this boot is good enough to keep. Run before
//! `boot-complete.target` (boxcar-update-health.service): only a healthy
//! boot is blessed by systemd-bless-boot, releases the fleet lock and
//! counts as the update having worked. Healthy means containerd is active,
//! docker is ready to serve (see [`docker`]), and every operator check in
//! `/usr/lib/boxcar/health.d` and `/etc/boxcar/health.d` (executables, run
//! in name order) exits 0.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::config::Config;
use crate::host;
use crate::paths::Paths;

/// Waits (up to the configured timeout) for containerd and docker, then
/// runs the operator's checks. The error names what is unhealthy.
pub fn check(paths: &Paths, config: &Config) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(config.agent.health_timeout_seconds);
    wait_until_active("containerd.service", deadline, config)?;
    let docker = docker(paths, deadline, config)?;
    let passed = run_checks(&operator_checks(paths), deadline, config)?;
    Ok(format!(
        "containerd active; {docker}; {passed} operator checks passed"
    ))
}

/// docker starts on the first use of its socket, or at boot when it has
/// containers or a swarm to bring back (boxcar-docker-at-boot.service).
/// So its socket must listen, and a docker that was started must come up.
/// A trial boot of a new version must also show that this version's
/// docker works: it asks docker for its version, which starts it.
fn docker(paths: &Paths, deadline: Instant, config: &Config) -> Result<&'static str> {
    wait_until_active("docker.socket", deadline, config)?;
    if host::is_trial_boot(paths) {
        let what = "asking docker for its version (a trial boot)";
        let mut ask = Command::new("docker");
        ask.args(["version", "--format", "{{.Server.Version}}"]);
        host::run_until(what, &mut ask, deadline)?;
        wait_until_active("docker.service", deadline, config)?;
        return Ok("docker answered");
    }
    // Not a start still queued: this unit is ordered after docker.service
    // and boxcar-docker-at-boot.service, so any start the boot asked for
    // has run by now.
    if host::unit_state("docker.service")? == "inactive" {
        return Ok("docker listens for its first use");
    }
    wait_until_active("docker.service", deadline, config)?;
    Ok("docker active")
}

/// Waits for a unit to be active; fails at once if it failed, or at the
/// deadline.
fn wait_until_active(unit: &str, deadline: Instant, config: &Config) -> Result<()> {
    loop {
        let state = host::unit_state(unit)?;
        match state.as_str() {
            "active" => return Ok(()),
            "failed" => bail!("{unit} failed"),
            _ if Instant::now() >= deadline => bail!(
                "{unit} is {state:?}, not active, after {} s",
                config.agent.health_timeout_seconds
            ),
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Runs the operator's checks in order, each stopped at the deadline the
/// whole health check has; returns how many passed.
fn run_checks(checks: &[PathBuf], deadline: Instant, config: &Config) -> Result<usize> {
    for check in checks {
        let what = format!(
            "health check {} (within the {} s health timeout)",
            check.display(),
            config.agent.health_timeout_seconds
        );
        host::run_until(&what, &mut Command::new(check), deadline)?;
    }
    Ok(checks.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        crate::test_script::write_script(&path, &format!("#!/bin/sh\n{body}\n"));
        path
    }

    #[test]
    fn a_check_that_hangs_is_stopped_at_the_deadline_and_fails_the_boot() {
        let temp = tempfile::tempdir().unwrap();
        let passing = script(temp.path(), "10-ok", "echo fine");
        // A check that starts a child of its own which hangs, as curl
        // without a timeout would: both are stopped.
        let hanging = script(temp.path(), "20-hangs", "sleep 1000 & wait");
        let config = Config::default();
        let soon = Instant::now() + Duration::from_millis(500);
        let err = run_checks(&[passing.clone(), hanging], soon, &config).unwrap_err();
        assert!(err.to_string().contains("20-hangs"), "{err:#}");
        assert!(
            err.to_string().contains("did not finish in time"),
            "{err:#}"
        );
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(run_checks(&[passing], later, &config).unwrap(), 1);
    }

    #[test]
    fn a_failing_check_is_named_with_what_it_said() {
        let temp = tempfile::tempdir().unwrap();
        let failing = script(
            temp.path(),
            "30-fails",
            "echo 'disk /data missing' >&2; exit 3",
        );
        let later = Instant::now() + Duration::from_secs(60);
        let err = run_checks(&[failing], later, &Config::default()).unwrap_err();
        assert!(err.to_string().contains("disk /data missing"), "{err:#}");
    }
}
