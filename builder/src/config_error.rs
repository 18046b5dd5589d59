//! Errors in configuration files that point at the file, line and key.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem in a configuration file (a channel, a recipe, the platform
/// table), located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key (setting) at fault, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    pub fn new(
        file: &Path,
        line: Option<usize>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_owned(),
            line,
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }

    /// An error about `key`, located at the line that sets it in `text`.
    pub fn at_key(file: &Path, text: &str, key: &str, message: String) -> Self {
        Self::new(file, line_setting(text, key), Some(key), message)
    }

    /// Locates a TOML parse or type error.
    pub fn from_toml(file: &Path, text: &str, error: &toml::de::Error) -> Self {
        let message = error.message().trim().to_owned();
        let span = error.span();
        let line = span.as_ref().map(|s| line_of_offset(text, s.start));
        let key = key_in_message(&message).or_else(|| {
            span.as_ref()
                .and_then(|s| key_at_span(text, s.start, s.end))
        });
        // "missing field" errors point at the whole table; the line of the
        // table header (or line 1) is the best place to send the reader.
        Self {
            file: file.to_owned(),
            line,
            key,
            message,
        }
    }
}

/// 1-based line number of byte `offset` in `text`.
pub fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The first line of `text` that sets `key` (as `key = ...` or `key=...`).
fn line_setting(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

/// serde names the key in backquotes for unknown and missing fields.
fn key_in_message(message: &str) -> Option<String> {
    for prefix in ["unknown field `", "missing field `", "duplicate key `"] {
        if let Some(rest) = message.find(prefix).map(|i| &message[i + prefix.len()..]) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    None
}

/// The key whose value (or which itself) sits at `start..end`.
fn key_at_span(text: &str, start: usize, end: usize) -> Option<String> {
    let spanned = text.get(start..end)?.trim();
    let is_bare_key = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let followed_by_equals = text[end..].trim_start().starts_with('=');
    if is_bare_key(spanned) && followed_by_equals {
        return Some(spanned.to_owned());
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let before_value = &text[line_start..start];
    let key = before_value.split('=').next()?.trim().trim_matches('"');
    is_bare_key(key).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_file_line_and_key() {
        let e = ConfigError::new(Path::new("a/b.toml"), Some(4), Some("name"), "bad");
        assert_eq!(e.to_string(), "a/b.toml:4: key `name`: bad");
        let e = ConfigError::new(Path::new("a/b.toml"), None, None, "bad");
        assert_eq!(e.to_string(), "a/b.toml: bad");
    }

    #[test]
    fn finds_the_line_that_sets_a_key() {
        let text = "# name = x\nname2 = 1\n  name = \"y\"\n";
        assert_eq!(line_setting(text, "name"), Some(3));
        assert_eq!(line_setting(text, "other"), None);
    }

    #[test]
    fn line_numbers_are_one_based() {
        assert_eq!(line_of_offset("a\nb\nc", 0), 1);
        assert_eq!(line_of_offset("a\nb\nc", 2), 2);
        assert_eq!(line_of_offset("a\nb\nc", 99), 3);
    }
}
