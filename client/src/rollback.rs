//! The highest channel serial this machine has accepted, per store and
//! channel. A store that later offers a lower serial is replaying an old
//! document (a rollback attack, or a stale mirror), and is refused. For the
//! keyring, the digest of the version accepted is kept too: the next read
//! walks forward from exactly that version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use boxcar_signing::Sha256Digest;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::files;

/// The serials seen, kept in a small JSON file.
#[derive(Debug)]
pub struct SerialState {
    path: PathBuf,
    seen: Seen,
}

/// The file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    /// "<store identity> <channel>" -> the highest serial accepted.
    channels: BTreeMap<String, u64>,
    /// Store identity -> the SHA-256 of the keyring accepted last (the
    /// serial is its `#keyring` entry above): the next reader walks forward
    /// from it, not from the pinned keys. Files written before it was kept
    /// have none, and readers then start from the pinned keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    keyrings: BTreeMap<String, Sha256Digest>,
}

impl SerialState {
    /// Loads the state kept at `path`. A missing or empty file is a machine
    /// that has seen nothing yet; a file that is not a state file is an
    /// error naming it (it is never overwritten silently).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::local(format!("reading {}", path.display()), e)),
        };
        let seen = if text.trim().is_empty() {
            Seen::default()
        } else {
            serde_json::from_str(&text).map_err(|e| {
                Error::local(
                    format!(
                        "reading {}: it is not a list of channel serials ({e}); move it away to start afresh",
                        path.display()
                    ),
                    std::io::Error::other("malformed state file"),
                )
            })?
        };
        Ok(Self {
            path: path.to_owned(),
            seen,
        })
    }

    /// The highest serial of `channel` accepted from the store known as
    /// `store` (its transport's identity).
    pub fn highest(&self, store: &str, channel: &str) -> Option<u64> {
        self.seen.channels.get(&key(store, channel)).copied()
    }

    /// The highest keyring serial accepted from `store`.
    pub fn highest_keyring(&self, store: &str) -> Option<u64> {
        self.highest(store, KEYRING_ENTRY)
    }

    /// The keyring accepted last from `store`: its serial and digest.
    pub fn accepted_keyring(&self, store: &str) -> Option<(u64, Sha256Digest)> {
        let serial = self.highest_keyring(store)?;
        Some((serial, *self.seen.keyrings.get(store)?))
    }

    /// Remembers that keyring `serial` of `store`, whose bytes have the
    /// digest `sha256`, was accepted, and saves.
    pub fn accept_keyring(
        &mut self,
        store: &str,
        serial: u64,
        sha256: Sha256Digest,
    ) -> Result<(), Error> {
        if self.accepted_keyring(store) == Some((serial, sha256)) {
            return Ok(());
        }
        if self
            .highest_keyring(store)
            .is_some_and(|seen| seen > serial)
        {
            return Ok(());
        }
        self.seen.channels.insert(key(store, KEYRING_ENTRY), serial);
        self.seen.keyrings.insert(store.to_owned(), sha256);
        self.save()
    }

    /// Remembers that `serial` of `channel` was accepted, and saves.
    pub fn accept(&mut self, store: &str, channel: &str, serial: u64) -> Result<(), Error> {
        let entry = self.seen.channels.entry(key(store, channel)).or_default();
        if *entry >= serial {
            return Ok(());
        }
        *entry = serial;
        self.save()
    }

    fn save(&self) -> Result<(), Error> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::local(format!("creating {}", dir.display()), e))?;
        }
        let bytes = serde_json::to_vec_pretty(&self.seen).expect("the state serializes");
        files::replace(&self.path, &bytes)
    }
}

fn key(store: &str, channel: &str) -> String {
    format!("{store} {channel}")
}

/// The entry of a store's keyring: no channel is named with a `#`.
const KEYRING_ENTRY: &str = "#keyring";

/// Where a user's tools keep the state unless told otherwise:
/// `$XDG_STATE_HOME/boxcar`, else `~/.local/state/boxcar`, else
/// `/var/lib/boxcar`.
pub fn default_state_file() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("boxcar/seen-serials.json");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/") {
        Some(home) => PathBuf::from(home).join(".local/state/boxcar/seen-serials.json"),
        None => PathBuf::from("/var/lib/boxcar/seen-serials.json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_round_trip_and_only_grow() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("state/seen.json");
        let mut state = SerialState::load(&path).unwrap();
        assert_eq!(state.highest("https://x", "stable"), None);
        state.accept("https://x", "stable", 7).unwrap();
        state.accept("https://x", "stable", 3).unwrap();
        let again = SerialState::load(&path).unwrap();
        assert_eq!(again.highest("https://x", "stable"), Some(7));
        assert_eq!(again.highest("https://y", "stable"), None);
    }

    #[test]
    fn an_empty_file_is_no_state_and_garbage_is_named() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("seen.json");
        std::fs::write(&path, "").unwrap();
        assert_eq!(SerialState::load(&path).unwrap().highest("s", "c"), None);
        std::fs::write(&path, "not json").unwrap();
        let err = SerialState::load(&path).unwrap_err();
        assert!(err.to_string().contains("move it away"), "{err}");
    }
}
