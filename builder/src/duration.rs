//! Durations as people write them in configuration: `30m`, `24h`, `7d`,
//! `1d12h`, `0s`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest duration accepted: ten years. Longer is a typo, and adding
/// it to a date could overflow.
const MAX_SECONDS: u64 = 10 * 366 * 86400;

/// A whole number of seconds, written with units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {text:?}: {reason}")]
pub struct InvalidDuration {
    text: String,
    reason: &'static str,
}

impl HumanDuration {
    pub fn from_secs(seconds: u64) -> Self {
        Self(seconds)
    }

    pub fn as_secs(self) -> u64 {
        self.0
    }

    pub fn to_std(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl FromStr for HumanDuration {
    type Err = InvalidDuration;

    fn from_str(text: &str) -> Result<Self, InvalidDuration> {
        let invalid = || InvalidDuration {
            text: text.to_owned(),
            reason: "write a number and a unit (s, m, h, d), e.g. 30m, 24h, 7d or 1d12h",
        };
        let mut total: u64 = 0;
        let mut number = String::new();
        let mut any = false;
        for c in text.trim().chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return Err(invalid()),
            };
            let value: u64 = number.parse().map_err(|_| invalid())?;
            total = value
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(invalid)?;
            number.clear();
            any = true;
        }
        if !number.is_empty() || !any {
            return Err(invalid());
        }
        if total > MAX_SECONDS {
            return Err(InvalidDuration {
                text: text.to_owned(),
                reason: "it is longer than ten years, surely a mistake",
            });
        }
        Ok(Self(total))
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = InvalidDuration;
    fn try_from(text: String) -> Result<Self, InvalidDuration> {
        text.parse()
    }
}

impl From<HumanDuration> for String {
    fn from(duration: HumanDuration) -> String {
        duration.to_string()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, seconds) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
            if rest >= seconds {
                write!(f, "{}{unit}", rest / seconds)?;
                rest %= seconds;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn absurd_durations_are_refused_not_panicked_on() {
        for bad in ["99999999999999d", "3661d", "18446744073709551615s"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
        assert!("3650d".parse::<HumanDuration>().is_ok());
    }

    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        for (text, seconds) in [
            ("0s", 0),
            ("90s", 90),
            ("30m", 1800),
            ("24h", 86400),
            ("7d", 604800),
            ("1d12h", 129600),
        ] {
            let duration: HumanDuration = text.parse().unwrap();
            assert_eq!(duration.as_secs(), seconds, "{text}");
            assert_eq!(
                duration.to_string().parse::<HumanDuration>().unwrap(),
                duration
            );
        }
        assert_eq!(HumanDuration::from_secs(129600).to_string(), "1d12h");
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "24",
            "h",
            "1w",
            "1.5h",
            "-1h",
            "1h 30m",
            "99999999999999999999d",
        ] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
    }
}
