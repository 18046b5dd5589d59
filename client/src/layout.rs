//! Where things live in a release store, and the one check every name
//! passes before it becomes part of a path.
//!
//! ```text
//! keys.json                                 the keyring (its latest version)
//! keys/<serial>.json                        every version of the keyring
//! index.json                                every release and channel
//! channels/<channel>.json                   what a channel points at
//! releases/<version>/release.json           a release's artifacts and digests
//! releases/<version>/SHA256SUMS             the same digests, for sha256sum --check
//! releases/<version>/<artifact>             the artifacts
//! releases/<version>/evidence/<platform>.json  the boot tests' evidence
//! ```
//!
//! Every document and `SHA256SUMS` has a detached signature next to it,
//! `NAME.minisig`. Names starting with `.` belong to writers at work (a
//! lock, a release being assembled, a document being replaced); readers
//! never fetch them, and report them when they can list a store.

use std::fmt;

pub const KEYRING: &str = "keys.json";
/// Every version of the keyring, `keys/<serial>.json`.
pub const KEYRINGS_DIR: &str = "keys";
pub const INDEX: &str = "index.json";
pub const CHANNELS_DIR: &str = "channels";
pub const RELEASES_DIR: &str = "releases";
pub const RELEASE_DOCUMENT: &str = "release.json";
pub const SUMS: &str = "SHA256SUMS";
pub const EVIDENCE_DIR: &str = "evidence";
/// The suffix of a detached signature.
pub const SIGNATURE_SUFFIX: &str = ".minisig";
/// The writers' lock file at the top of a directory store.
pub const WRITER_LOCK: &str = ".lock";

/// Longest name accepted: far longer than any version, channel, platform
/// or artifact name, short enough to show in one line.
pub const MAX_NAME_LEN: usize = 128;

/// A name that is safe as one component of a path in a store and in a
/// download directory, and safe to print: a version, a channel, a platform
/// id, an artifact's file name.
///
/// It starts with an ASCII letter or digit and holds only ASCII letters,
/// digits and `. _ + ~ ^ -`; no `..`. So it cannot climb out of a
/// directory, name a hidden file, be absolute, or carry a control
/// character or escape sequence to a terminal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafeName(String);

/// A name that failed [`SafeName::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {shown} is not allowed as a name: {reason}")]
pub struct NameError {
    /// What the name was for ("version", "artifact name", ...).
    pub what: String,
    /// The name, escaped so that it cannot fool a terminal, and cut short.
    pub shown: String,
    pub reason: &'static str,
}

impl SafeName {
    /// Checks `text` as the name of `what`.
    pub fn new(what: &str, text: &str) -> Result<Self, NameError> {
        let refuse = |reason| NameError {
            what: what.to_owned(),
            shown: shown(text),
            reason,
        };
        if text.is_empty() {
            return Err(refuse("it is empty"));
        }
        if text.len() > MAX_NAME_LEN {
            return Err(refuse("it is longer than 128 characters"));
        }
        if !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(refuse("it must start with an ASCII letter or digit"));
        }
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~^-".contains(c))
        {
            return Err(refuse(
                "only ASCII letters, digits and . _ + ~ ^ - are allowed",
            ));
        }
        if text.contains("..") {
            return Err(refuse("it must not contain '..'"));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SafeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// `text` quoted and escaped for a message, at most 64 characters of it.
pub fn shown(text: &str) -> String {
    let mut escaped: String = text.chars().take(64).flat_map(char::escape_debug).collect();
    if text.chars().count() > 64 {
        escaped.push_str("...");
    }
    format!("\"{escaped}\"")
}

/// `keys/<serial>.json`: one version of the keyring.
pub fn keyring_version(serial: u64) -> String {
    format!("{KEYRINGS_DIR}/{serial}.json")
}

/// `channels/<channel>.json`
pub fn channel(name: &SafeName) -> String {
    format!("{CHANNELS_DIR}/{name}.json")
}

/// `releases/<version>`
pub fn release_dir(version: &SafeName) -> String {
    format!("{RELEASES_DIR}/{version}")
}

/// `releases/<version>/release.json`
pub fn release_document(version: &SafeName) -> String {
    format!("{RELEASES_DIR}/{version}/{RELEASE_DOCUMENT}")
}

/// `releases/<version>/SHA256SUMS`
pub fn sums(version: &SafeName) -> String {
    format!("{RELEASES_DIR}/{version}/{SUMS}")
}

/// `releases/<version>/<name>`: an artifact.
pub fn release_file(version: &SafeName, name: &SafeName) -> String {
    format!("{RELEASES_DIR}/{version}/{name}")
}

/// `releases/<version>/evidence/<platform>.json`
pub fn evidence(version: &SafeName, platform: &SafeName) -> String {
    format!("{RELEASES_DIR}/{version}/{EVIDENCE_DIR}/{platform}.json")
}

/// The detached signature of the file at `path`.
pub fn signature_of(path: &str) -> String {
    format!("{path}{SIGNATURE_SUFFIX}")
}

/// Refuses a store path with an empty, `.` or `..` component, or one that
/// names a writer's hidden file: every path a reader fetches is built from
/// checked names, and this is the last guard before a transport uses it.
pub fn check_path(path: &str) -> Result<(), NameError> {
    let bad = path.is_empty()
        || path
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.') || part.contains('\\'));
    if bad || path.chars().any(char::is_control) {
        return Err(NameError {
            what: "store path".into(),
            shown: shown(path),
            reason: "it is not a path inside a store",
        });
    }
    Ok(())
}

/// The names a writer uses while it works, next to the file they concern.
/// Writers create them; readers recognise them as leftovers.
pub mod pending {
    /// The new content of `file`, before it takes the file's place.
    pub fn new_name(file: &str) -> String {
        format!(".{file}.new")
    }

    /// The previous content of `file`, kept until the replacement is whole.
    pub fn old_name(file: &str) -> String {
        format!(".{file}.old")
    }

    /// The journal that says `file` is being replaced (or created).
    pub fn journal_name(file: &str) -> String {
        format!(".{file}.journal")
    }

    /// The document a journal concerns.
    pub fn journal_subject(name: &str) -> Option<&str> {
        name.strip_prefix('.')?.strip_suffix(".journal")
    }

    /// A release being assembled, before it is renamed into place.
    pub fn partial_release_name(version: &str) -> String {
        format!(".{version}.partial")
    }
}

/// Whether a file name in a store's directories is something an
/// interrupted writer left behind (anything hidden but the writers' lock).
pub fn is_leftover(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name != WRITER_LOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_safe() {
        for good in [
            "1",
            "2026.1122.143005",
            "1.0.0-rc1",
            "4081.2.0+git~1",
            "alpha",
            "boxcar-1.0.0-qemu.qcow2",
            "boxcar_1.0_0f1e.usr.raw",
        ] {
            assert_eq!(SafeName::new("name", good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn names_that_climb_hide_or_fool_a_terminal_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            ".hidden",
            "-rf",
            "a..b",
            "a\\b",
            "a b",
            "x\u{1b}[2Jy",
            "line\nbreak",
            "caf\u{e9}",
            &"a".repeat(129),
        ] {
            let err = SafeName::new("version", bad).unwrap_err();
            assert!(!err.to_string().contains('\u{1b}'), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn paths_are_built_from_checked_names() {
        let v = SafeName::new("version", "1.0").unwrap();
        let a = SafeName::new("artifact", "boxcar-1.0-aws.raw").unwrap();
        assert_eq!(release_file(&v, &a), "releases/1.0/boxcar-1.0-aws.raw");
        assert_eq!(
            signature_of(&release_document(&v)),
            "releases/1.0/release.json.minisig"
        );
        assert!(check_path("releases/1.0/x").is_ok());
        for bad in [
            "../x",
            "releases//x",
            "/etc/passwd",
            "releases/.1.partial/x",
            "",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn leftovers_are_recognised_by_their_names() {
        assert!(is_leftover(&pending::new_name("beta.json")));
        assert!(is_leftover(&pending::journal_name("index.json")));
        assert!(is_leftover(&pending::partial_release_name("1.0")));
        assert!(!is_leftover(WRITER_LOCK));
        assert!(!is_leftover("beta.json"));
        assert_eq!(
            pending::journal_subject(&pending::journal_name("beta.json")),
            Some("beta.json")
        );
    }
}
