//! The running system: which version it runs, whether this boot is a trial
//! of a new version, and the commands that act on it.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths::Paths;

/// The version of the running image (os-release's IMAGE_VERSION).
pub fn running_version(paths: &Paths) -> Result<String> {
    let path = paths.os_release();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("IMAGE_VERSION="))
        .map(|v| v.trim_matches('"').to_owned())
        .with_context(|| format!("{} has no IMAGE_VERSION", path.display()))
}

/// This boot's id: an update waits for its reboot while the boot that
/// installed it is still running.
pub fn boot_id() -> Result<String> {
    let path = "/proc/sys/kernel/random/boot_id";
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_owned())
}

/// Whether systemd-boot counts this boot's tries: a new version on trial,
/// not yet blessed.
pub fn is_trial_boot(paths: &Paths) -> bool {
    paths.boot_count_variable().exists()
}

/// Whether the firmware enforces Secure Boot on this boot.
pub fn secure_boot_on(paths: &Paths) -> bool {
    std::fs::read(paths.secure_boot_variable()).is_ok_and(|bytes| bytes.get(4) == Some(&1))
}

/// Whether a unit is active, as systemctl says.
pub fn unit_state(unit: &str) -> Result<String> {
    let output = Command::new("systemctl")
        .args(["show", "--property=ActiveState", "--value", unit])
        .output()
        .context("running systemctl")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs a command; a failure says what it printed.
pub fn run(what: &str, command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("{what}: running {:?}", command.get_program()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let said = last_lines(
            if stderr.trim().is_empty() {
                &stdout
            } else {
                &stderr
            },
            3,
        );
        bail!("{what} failed ({}): {said}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The last `n` non-empty lines of `text`, on one line.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Asks systemd to reboot (it returns at once; the reboot follows).
pub fn reboot() -> Result<()> {
    run(
        "rebooting",
        Command::new("systemctl").args(["reboot", "--no-block"]),
    )
    .map(drop)
}

/// Now, as documents write it.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

pub fn format_now() -> String {
    boxcar_signing::documents::format_time(now())
}
