//! Image versions: a newtype that is safe to use in file names, GPT labels
//! and os-release.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Longest version accepted. The /usr partition's GPT label is
/// `boxcar_<version>_verity`, and a GPT label holds 36 characters.
pub const MAX_VERSION_LEN: usize = 22;

/// An image version such as `2026.1122.143005` or `1.2.0-rc1`.
///
/// It must start with a digit and may contain ASCII letters, digits and
/// `.`, `+`, `~`, `^`, `-`. No `/` and no `..` (it names directories), no
/// `_` (it separates fields of partition labels and sysupdate patterns).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid version {text:?}: {reason}")]
pub struct InvalidVersion {
    pub text: String,
    pub reason: &'static str,
}

impl Version {
    /// The default version of a build started at `now`: `YYYY.MMDD.HHMMSS`
    /// in UTC, so versions sort in build order.
    pub fn from_time(now: OffsetDateTime) -> Self {
        let now = now.to_offset(time::UtcOffset::UTC);
        Self(format!(
            "{:04}.{:02}{:02}.{:02}{:02}{:02}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Version {
    type Err = InvalidVersion;

    fn from_str(text: &str) -> Result<Self, InvalidVersion> {
        let invalid = |reason| InvalidVersion {
            text: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        if text.len() > MAX_VERSION_LEN {
            return Err(invalid(
                "it is longer than 22 characters (it must fit a GPT partition label)",
            ));
        }
        if !text.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(invalid("it must start with a digit"));
        }
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~^-".contains(c))
        {
            return Err(invalid(
                "only ASCII letters, digits and . + ~ ^ - are allowed",
            ));
        }
        if text.contains("..") {
            return Err(invalid("it must not contain '..'"));
        }
        Ok(Self(text.to_owned()))
    }
}

impl TryFrom<String> for Version {
    type Error = InvalidVersion;
    fn try_from(text: String) -> Result<Self, InvalidVersion> {
        text.parse()
    }
}

impl From<Version> for String {
    fn from(version: Version) -> String {
        version.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn default_version_is_utc_time_and_sorts() {
        let early = Version::from_time(datetime!(2026-11-22 04:05:06 UTC));
        let late = Version::from_time(datetime!(2026-11-22 14:05:06 +02:00));
        assert_eq!(early.as_str(), "2026.1122.040506");
        assert_eq!(late.as_str(), "2026.1122.120506");
        assert!(early.as_str() < late.as_str());
        assert!(early.as_str().parse::<Version>().is_ok());
    }

    #[test]
    fn accepts_ordinary_versions() {
        for good in [
            "1",
            "1.2.3",
            "2026.1122.040506",
            "1.0.0-rc1",
            "4081.2.0+git~1",
        ] {
            assert_eq!(good.parse::<Version>().unwrap().as_str(), good);
        }
    }

    #[test]
    fn refuses_what_would_break_paths_or_labels() {
        for bad in [
            "",
            "v1",
            "1/2",
            "1..2",
            "../1",
            "1_2",
            "1 2",
            "1.2.3.4.5.6.7.8.9.10.11.12",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad} was accepted");
        }
    }
}
