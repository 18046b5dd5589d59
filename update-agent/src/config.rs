//! The agent's settings: the image's defaults in `/usr/lib/boxcar/
//! update.toml`, the host's own in `/etc/boxcar/update.toml` (written by
//! provisioning, say), key by key over them. The layout follows Zincati's,
//! so a Fedora CoreOS user recognises it:
//!
//! ```toml
//! [store]
//! url = "https://updates.example.com/boxcar"
//! channel = "stable"
//!
//! [updates]
//! strategy = "fleet_lock"          # immediate | periodic | fleet_lock | off
//!
//! [updates.fleet_lock]
//! base_url = "http://locks.example.com:8080"
//! group = "workers"
//!
//! [[updates.periodic.window]]      # UTC; with fleet_lock too, both apply
//! days = ["Sat", "Sun"]
//! start_time = "22:30"
//! length_minutes = 60
//!
//! [agent]
//! check_interval_seconds = 3600
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::paths::Paths;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub updates: UpdatesConfig,
    pub agent: AgentConfig,
}

/// Which store and channel the host follows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The store's URL (https://, http:// or a directory); empty: the host
    /// follows nothing.
    pub url: String,
    pub channel: String,
    /// More trusted key files, besides those in the key directories.
    pub keys: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdatesConfig {
    pub strategy: StrategyName,
    pub fleet_lock: FleetLockConfig,
    pub periodic: PeriodicConfig,
}

/// When an installed update may reboot the host, named as Zincati names
/// its strategies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    /// As soon as the update is installed.
    #[default]
    Immediate,
    /// Only inside one of the maintenance windows.
    Periodic,
    /// Only once a FleetLock server grants a reboot slot (and inside a
    /// window, if any are set).
    FleetLock,
    /// Never: install, then say a reboot is required.
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetLockConfig {
    pub base_url: String,
    pub group: String,
}

impl Default for FleetLockConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            group: "default".to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeriodicConfig {
    /// Only "UTC": a host's local time is not worth a reboot at the wrong
    /// hour after a time zone change.
    pub time_zone: String,
    pub window: Vec<WindowConfig>,
}

impl Default for PeriodicConfig {
    fn default() -> Self {
        Self {
            time_zone: "UTC".to_owned(),
            window: Vec::new(),
        }
    }
}

/// A weekly maintenance window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// "Mon" .. "Sun".
    pub days: Vec<String>,
    /// "HH:MM", UTC.
    pub start_time: String,
    pub length_minutes: u32,
}

/// How often the agent does what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The first check, this long after the agent starts (after a healthy
    /// boot).
    pub first_check_seconds: u64,
    /// Then a check this often...
    pub check_interval_seconds: u64,
    /// ...give or take up to this much, so a fleet does not knock at once.
    pub jitter_seconds: u64,
    /// An installed update waiting for its window or lock asks again this
    /// often.
    pub reboot_retry_seconds: u64,
    /// After a failed check, wait this long, doubling with each failure in
    /// a row up to `check_interval_seconds` * 4.
    pub failure_backoff_seconds: u64,
    /// How long a new boot has to become healthy.
    pub health_timeout_seconds: u64,
    /// Give up on a store's server that sends nothing for this long.
    pub read_timeout_seconds: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            first_check_seconds: 300,
            check_interval_seconds: 3600,
            jitter_seconds: 300,
            reboot_retry_seconds: 300,
            failure_backoff_seconds: 300,
            health_timeout_seconds: 300,
            read_timeout_seconds: 30,
        }
    }
}

impl Config {
    /// The image's defaults with the host's settings over them.
    pub fn load(paths: &Paths) -> Result<Self> {
        let mut merged = toml::Table::new();
        for path in [paths.vendor_config(), paths.host_config()] {
            if let Some(table) = read_table(&path)? {
                overlay(&mut merged, table);
            }
        }
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .context("combining the update settings")?;
        config.check()?;
        Ok(config)
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<()> {
        if self.updates.periodic.time_zone != "UTC" {
            bail!(
                "updates.periodic.time_zone is {:?}: only \"UTC\" is supported",
                self.updates.periodic.time_zone
            );
        }
        for window in &self.updates.periodic.window {
            crate::strategy::Window::parse(window)?;
        }
        match self.updates.strategy {
            StrategyName::Periodic if self.updates.periodic.window.is_empty() => {
                bail!("updates.strategy is \"periodic\" but no [[updates.periodic.window]] is set")
            }
            StrategyName::FleetLock if self.updates.fleet_lock.base_url.is_empty() => {
                bail!(
                    "updates.strategy is \"fleet_lock\" but updates.fleet_lock.base_url is not set"
                )
            }
            _ => {}
        }
        if !self.store.url.is_empty() && self.store.channel.is_empty() {
            bail!(
                "store.url is set but store.channel is not: which channel should the host follow?"
            );
        }
        Ok(())
    }
}

/// One settings file, checked on its own so an error names it.
fn read_table(path: &Path) -> Result<Option<toml::Table>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    toml::from_str::<Config>(&text).with_context(|| format!("{} is not valid", path.display()))?;
    let table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(table))
}

/// Puts `over`'s keys into `base`: tables merge, anything else replaces.
fn overlay(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                overlay(existing, table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_with(vendor: &str, host: Option<&str>) -> (tempfile::TempDir, Paths) {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        std::fs::create_dir_all(paths.vendor_config().parent().unwrap()).unwrap();
        std::fs::write(paths.vendor_config(), vendor).unwrap();
        if let Some(host) = host {
            std::fs::create_dir_all(paths.host_config().parent().unwrap()).unwrap();
            std::fs::write(paths.host_config(), host).unwrap();
        }
        (root, paths)
    }

    #[test]
    fn the_host_overrides_the_image_key_by_key() {
        let (_root, paths) = paths_with(
            "[store]\nurl = \"https://a\"\nchannel = \"stable\"\n[agent]\njitter_seconds = 1\n",
            Some("[store]\nchannel = \"beta\"\n[updates]\nstrategy = \"off\"\n"),
        );
        let config = Config::load(&paths).unwrap();
        assert_eq!(config.store.url, "https://a");
        assert_eq!(config.store.channel, "beta");
        assert_eq!(config.updates.strategy, StrategyName::Off);
        assert_eq!(config.agent.jitter_seconds, 1);
        assert_eq!(config.agent.check_interval_seconds, 3600);
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let (_root, paths) = paths_with("", Some("[updates]\nstrategy = \"sometimes\"\n"));
        let err = format!("{:#}", Config::load(&paths).unwrap_err());
        assert!(
            err.contains("/etc/boxcar/update.toml is not valid"),
            "{err}"
        );
        assert!(err.contains("sometimes"), "{err}");
        let (_root, paths) = paths_with("", Some("[updates]\nstrategy = \"fleet_lock\"\n"));
        let err = format!("{:#}", Config::load(&paths).unwrap_err());
        assert!(err.contains("base_url is not set"), "{err}");
        let (_root, paths) = paths_with(
            "",
            Some("[updates.periodic]\ntime_zone = \"Europe/Paris\"\n"),
        );
        assert!(Config::load(&paths).is_err());
    }
}
