//! What the agent remembers between runs (`/var/lib/boxcar-update/
//! state.json`) and what `boxcar-update status` reports from it.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::paths::Paths;
use crate::rollout::WaveStatus;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// What the agent is doing or waiting for.
    pub phase: Phase,
    /// The newest release the channel offers, as last seen.
    pub available: Option<Available>,
    /// An update installed into the idle slot, until a boot settles it.
    pub pending: Option<Pending>,
    /// Versions that failed to boot: never installed again automatically.
    pub bad_versions: Vec<BadVersion>,
    pub last_check: Option<Event>,
    /// The last failure, with its cause; cleared by a round (check and
    /// reboot decision) that works.
    pub last_error: Option<Event>,
    /// Failed rounds in a row (the backoff grows with them).
    pub failures_in_a_row: u32,
    /// The last update that went through, and when.
    pub last_update: Option<Event>,
    /// What the agent did, newest last (installs, reboots, settled boots,
    /// lock releases, failures), the last [`HISTORY_LENGTH`] of it.
    pub history: Vec<Event>,
}

/// How many events the history keeps.
pub const HISTORY_LENGTH: usize = 50;

/// The most a state file may hold: with its history bounded, a real one
/// is a few kilobytes.
pub const STATE_CAP: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing to do until the next check.
    #[default]
    Idle,
    /// Fetching and verifying an update.
    Downloading,
    /// Handing a verified update to systemd-sysupdate.
    Installing,
    /// Installed; waiting for the strategy to allow a reboot.
    RebootPending,
    /// Rebooting into the update.
    Rebooting,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Available {
    pub version: String,
    pub channel_serial: u64,
    /// Where this host stands in the channel's rollout.
    pub wave: WaveStatus,
    /// Bytes a node downloads for it.
    pub download_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub version: String,
    /// The version that installed it.
    pub from_version: String,
    pub installed_at: String,
    /// The boot that installed it: while it is still running, the update
    /// waits for its reboot.
    pub installed_in_boot: String,
    /// Whether the fleet lock was taken for its reboot (released once the
    /// new boot is healthy).
    #[serde(default)]
    pub lock_taken: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BadVersion {
    pub version: String,
    pub reason: String,
    pub at: String,
}

/// Something that happened, when, and what came of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: String,
    pub message: String,
}

impl State {
    /// The state, or a fresh one if the agent never ran. A file that is not
    /// a state file (a symlink, something over [`STATE_CAP`] bytes, not
    /// JSON of a state) is an error naming it.
    pub fn load(paths: &Paths) -> Result<Self> {
        let path = paths.state_file();
        match boxcar_client::files::read_regular(&path, STATE_CAP)? {
            None => Ok(Self::default()),
            Some(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Self::default()),
            Some(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not the agent's state; move it away to start afresh",
                    path.display()
                )
            }),
        }
    }

    /// Saves the state atomically.
    pub fn save(&self, paths: &Paths) -> Result<()> {
        let dir = paths.state_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut bytes = serde_json::to_vec_pretty(self).expect("the state serializes");
        bytes.push(b'\n');
        boxcar_client::files::replace(&paths.state_file(), &bytes)?;
        Ok(())
    }

    /// Adds an event to the history (and says it on stderr: the journal).
    pub fn record(&mut self, message: String) {
        eprintln!("{message}");
        self.history.push(Event {
            at: boxcar_signing::documents::format_time(time::OffsetDateTime::now_utc()),
            message,
        });
        let excess = self.history.len().saturating_sub(HISTORY_LENGTH);
        self.history.drain(..excess);
    }

    /// Like [`State::record`], but a message the history ends with already
    /// is only said, not added again: an update waiting for its window asks
    /// every few minutes, and would push everything else out.
    pub fn record_change(&mut self, message: String) {
        if self.history.last().is_some_and(|e| e.message == message) {
            eprintln!("{message}");
            return;
        }
        self.record(message);
    }

    pub fn is_bad(&self, version: &str) -> Option<&BadVersion> {
        self.bad_versions.iter().find(|b| b.version == version)
    }

    pub fn mark_bad(&mut self, version: &str, reason: String, at: String) {
        if self.is_bad(version).is_none() {
            self.bad_versions.push(BadVersion {
                version: version.to_owned(),
                reason,
                at,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_survives_a_round_trip_and_a_stranger_file_is_named() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::under(root.path());
        assert_eq!(State::load(&paths).unwrap(), State::default());
        let mut state = State::default();
        state.mark_bad("1.2", "fell back".into(), "2026-12-03T00:00:00Z".into());
        state.mark_bad("1.2", "again".into(), "2026-12-03T00:00:00Z".into());
        state.save(&paths).unwrap();
        let loaded = State::load(&paths).unwrap();
        assert_eq!(loaded.bad_versions.len(), 1);
        assert_eq!(loaded.is_bad("1.2").unwrap().reason, "fell back");
        std::fs::write(paths.state_file(), "[1, 2]").unwrap();
        let err = format!("{:#}", State::load(&paths).unwrap_err());
        assert!(err.contains("is not the agent's state"), "{err}");

        // A symlink in its place is refused, not followed; saving replaces
        // the symlink and leaves what it pointed at alone.
        let elsewhere = root.path().join("elsewhere.json");
        std::fs::write(&elsewhere, "{}").unwrap();
        std::fs::remove_file(paths.state_file()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, paths.state_file()).unwrap();
        let err = format!("{:#}", State::load(&paths).unwrap_err());
        assert!(err.contains("symlink, which is never followed"), "{err}");
        state.save(&paths).unwrap();
        assert_eq!(State::load(&paths).unwrap(), state);
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "{}");
    }

    #[test]
    fn a_repeated_message_is_kept_once_until_another_comes_between() {
        let mut state = State::default();
        state.record_change("waiting".into());
        state.record_change("waiting".into());
        state.record_change("rebooting".into());
        state.record_change("waiting".into());
        let messages: Vec<&str> = state.history.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["waiting", "rebooting", "waiting"]);
    }
}
