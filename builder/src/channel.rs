//! Release channels (alpha, beta, stable) and their configuration files,
//! `channels/<name>.toml`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config_error::ConfigError;
use crate::duration::HumanDuration;

/// A channel's name: lowercase letters, digits and `-`; it names files.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChannelName(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid channel name {0:?}: use lowercase letters, digits and '-', starting with a letter"
)]
pub struct InvalidChannelName(String);

impl FromStr for ChannelName {
    type Err = InvalidChannelName;
    fn from_str(text: &str) -> Result<Self, InvalidChannelName> {
        let valid = text.len() <= 32
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidChannelName(text.to_owned()))
        }
    }
}

impl TryFrom<String> for ChannelName {
    type Error = InvalidChannelName;
    fn try_from(text: String) -> Result<Self, InvalidChannelName> {
        text.parse()
    }
}

impl From<ChannelName> for String {
    fn from(name: ChannelName) -> String {
        name.0
    }
}

impl ChannelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `channels/<name>.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChannelConfig {
    /// Must equal the file's name without `.toml`.
    pub name: ChannelName,
    /// One line for people choosing a channel.
    pub description: String,
    /// The channel releases are promoted from; none for the channel CI
    /// publishes to directly.
    #[serde(default)]
    pub promotes_from: Option<ChannelName>,
    /// How long a release must have been in the source channel before it
    /// may be promoted here.
    #[serde(default = "no_soak")]
    pub soak: HumanDuration,
    /// Whether a release needs passing boot-test evidence for every platform
    /// to enter this channel.
    #[serde(default)]
    pub evidence: EvidencePolicy,
    /// How long a signed channel document stays valid. Clients refuse an
    /// expired one, so a store that stops being updated cannot hold its
    /// nodes on an old release unnoticed; re-sign before it runs out.
    #[serde(default = "default_validity")]
    pub valid_for: HumanDuration,
    /// How a release the channel moves to reaches the fleet: its waves.
    #[serde(default, rename = "waves")]
    pub rollout: RolloutConfig,
}

/// `waves = [...]`: the waves a channel's new release opens in, each a
/// share of the fleet from some time after the channel moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RolloutConfig {
    pub waves: Vec<WaveConfig>,
}

/// One wave: from `after` past the move, `percent` of the fleet (in all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveConfig {
    pub percent: u8,
    pub after: HumanDuration,
}

/// Bottlerocket's default waves: 1 % after an hour, all after six days.
impl Default for RolloutConfig {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        const DAY: u64 = 24 * HOUR;
        let waves = [
            (1, HOUR),
            (5, 4 * HOUR),
            (15, DAY),
            (40, 2 * DAY),
            (60, 4 * DAY),
            (90, 5 * DAY),
            (100, 6 * DAY),
        ];
        Self {
            waves: waves
                .into_iter()
                .map(|(percent, after)| WaveConfig {
                    percent,
                    after: HumanDuration::from_secs(after),
                })
                .collect(),
        }
    }
}

impl RolloutConfig {
    /// The waves as the signed channel document states them.
    pub fn waves(&self) -> Vec<boxcar_signing::documents::Wave> {
        self.waves
            .iter()
            .map(|w| boxcar_signing::documents::Wave {
                after_seconds: w.after.as_secs(),
                percent: w.percent,
            })
            .collect()
    }

    /// A rollout of these waves starting at `start`.
    pub fn starting(&self, start: &str) -> boxcar_signing::documents::Rollout {
        boxcar_signing::documents::Rollout {
            start: start.to_owned(),
            paused_at: None,
            waves: self.waves(),
        }
    }
}

/// Whether boot-test evidence gates a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvidencePolicy {
    /// Every platform's artifact must have passed its boot test (the
    /// default: an untested artifact does not ship).
    #[default]
    Required,
    /// Evidence is recorded when present but not demanded.
    NotRequired,
}

/// No soak unless a channel asks for one: the channel CI publishes to
/// receives releases directly.
fn no_soak() -> HumanDuration {
    HumanDuration::from_secs(0)
}

/// A week: long enough to ride out a broken pipeline over a weekend, short
/// enough that a frozen store is noticed.
fn default_validity() -> HumanDuration {
    HumanDuration::from_secs(7 * 86400)
}

impl ChannelConfig {
    /// Parses `text`, read from `path`. Errors name the file, line and key.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: ChannelConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        let expected = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if config.name.as_str() != expected {
            return Err(ConfigError::at_key(
                path,
                text,
                "name",
                format!(
                    "the channel is named {:?} but its file is {}; they must match",
                    config.name.as_str(),
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
            ));
        }
        if let Err(e) = config.rollout.starting("").check() {
            return Err(ConfigError::at_key(path, text, "waves", e.to_string()));
        }
        if config.promotes_from.as_ref() == Some(&config.name) {
            return Err(ConfigError::at_key(
                path,
                text,
                "promotes-from",
                "a channel cannot promote from itself".to_owned(),
            ));
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading channel file {}", path.display()))?;
        Ok(Self::parse(path, &text)?)
    }
}

/// Every channel under `channels/`, sorted by name.
pub struct Channels {
    pub dir: PathBuf,
    pub channels: Vec<ChannelConfig>,
}

impl Channels {
    /// Loads and checks every `*.toml` in `dir`: each parses, and every
    /// `promotes-from` names a channel that exists.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut channels = Vec::new();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("listing channels in {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                channels.push(ChannelConfig::load(&path)?);
            }
        }
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        for channel in &channels {
            if let Some(source) = &channel.promotes_from {
                if !channels.iter().any(|c| &c.name == source) {
                    bail!(
                        "{}: channel {} promotes from {source}, which has no file in {}",
                        dir.join(format!("{}.toml", channel.name)).display(),
                        channel.name,
                        dir.display()
                    );
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            channels,
        })
    }

    /// The channel called `name`, or an error listing the ones that exist.
    pub fn get(&self, name: &ChannelName) -> Result<&ChannelConfig> {
        self.channels
            .iter()
            .find(|c| &c.name == name)
            .with_context(|| {
                let known: Vec<&str> = self.channels.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "unknown channel {name}: {} has {}",
                    self.dir.display(),
                    if known.is_empty() {
                        "no channel files".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(file: &str, text: &str) -> Result<ChannelConfig, ConfigError> {
        ChannelConfig::parse(Path::new(file), text)
    }

    #[test]
    fn parses_a_channel() {
        let config = parse(
            "channels/beta.toml",
            "name = \"beta\"\ndescription = \"Soaking\"\npromotes-from = \"alpha\"\n",
        )
        .unwrap();
        assert_eq!(config.promotes_from.unwrap().as_str(), "alpha");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse(
            "channels/beta.toml",
            "name = \"beta\"\ndescription = \"x\"\npromote-from = \"alpha\"\n",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key.as_deref(), Some("promote-from"));
        let message = err.to_string();
        assert!(message.starts_with("channels/beta.toml:3:"), "{message}");
        assert!(message.contains("promote-from"), "{message}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let err = parse("channels/beta.toml", "name = \"beta\"\ndescription = 5\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.key.as_deref(), Some("description"));
    }

    #[test]
    fn name_must_match_file() {
        let err = parse(
            "channels/beta.toml",
            "name = \"alpha\"\ndescription = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(1), Some("name")));
    }

    #[test]
    fn bad_channel_name_is_refused() {
        let err = parse(
            "channels/Beta.toml",
            "name = \"Beta\"\ndescription = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(1), Some("name")));
        for bad in ["", "Beta", "1st", "a/b", "..", "a_b"] {
            assert!(bad.parse::<ChannelName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn policies_and_durations_parse_with_defaults() {
        let config = parse(
            "channels/beta.toml",
            "name = \"beta\"\ndescription = \"x\"\nsoak = \"24h\"\nevidence = \"not-required\"\n",
        )
        .unwrap();
        assert_eq!(config.soak.as_secs(), 86400);
        assert_eq!(config.evidence, EvidencePolicy::NotRequired);
        assert_eq!(config.valid_for.as_secs(), 7 * 86400);
        let err = parse(
            "channels/beta.toml",
            "name = \"beta\"\ndescription = \"x\"\nsoak = \"a day\"\n",
        )
        .unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("soak")));
        let err = parse(
            "channels/beta.toml",
            "name = \"beta\"\ndescription = \"x\"\nevidence = \"maybe\"\n",
        )
        .unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("evidence")));
    }

    #[test]
    fn waves_default_to_bottlerockets_and_must_grow() {
        let config = parse(
            "channels/beta.toml",
            "name = \"beta\"\ndescription = \"x\"\n",
        )
        .unwrap();
        let waves = config.rollout.waves();
        assert_eq!((waves[0].percent, waves[0].after_seconds), (1, 3600));
        assert_eq!(waves.last().unwrap().percent, 100);
        let config = parse(
            "channels/beta.toml",
            "name = \"beta\"\ndescription = \"x\"\nwaves = []\n",
        )
        .unwrap();
        assert_eq!(config.rollout.starting("now").percent_after(0), 100);
        let err = parse(
            "channels/beta.toml",
            "name = \"beta\"\ndescription = \"x\"\nwaves = [\n  { percent = 50, after = \"1h\" },\n  { percent = 10, after = \"2h\" },\n]\n",
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("waves"));
        assert!(err.to_string().contains("must grow"), "{err}");
    }

    #[test]
    fn missing_key_is_named() {
        let err = parse("channels/beta.toml", "name = \"beta\"\n").unwrap_err();
        assert!(err.to_string().contains("description"), "{err}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// The real channel files parse, and promotion runs alpha -> beta -> stable.
    #[test]
    fn every_shipped_channel_file_is_valid() {
        let channels =
            Channels::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../channels")).unwrap();
        let names: Vec<&str> = channels.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta", "stable"]);
        let source = |name: &str| {
            channels
                .get(&name.parse().unwrap())
                .unwrap()
                .promotes_from
                .as_ref()
                .map(|c| c.to_string())
        };
        assert_eq!(source("alpha"), None);
        assert_eq!(source("beta").as_deref(), Some("alpha"));
        assert_eq!(source("stable").as_deref(), Some("beta"));
    }
}
