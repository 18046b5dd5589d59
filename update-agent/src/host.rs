//! The running system: which version it runs, whether this boot is a trial
//! of a new version, and the commands that act on it.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    judged(what, output)
}

/// As [`run`], but the command, and whatever it started, is killed at
/// `deadline`: a command that hangs (an operator's check calling a server
/// without a timeout) must not hold up the boot for ever.
pub fn run_until(what: &str, command: &mut Command, deadline: Instant) -> Result<String> {
    use std::os::unix::process::CommandExt;
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: running {:?}", command.get_program()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
            bail!("{what} did not finish in time, and was stopped");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let collected = |pipe: JoinHandle<Vec<u8>>| pipe.join().unwrap_or_default();
    let output = Output {
        status,
        stdout: collected(stdout),
        stderr: collected(stderr),
    };
    judged(what, output)
}

/// Everything a child writes to `pipe`, read on a thread of its own (so a
/// full pipe never stops the child).
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// A finished command's stdout, or an error naming `what` with the last
/// lines it said.
fn judged(what: &str, output: Output) -> Result<String> {
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
