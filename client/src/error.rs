//! What went wrong reading a store, sorted by what the caller should do
//! about it ([`ErrorKind`]): a node agent retries later what may pass,
//! and never uses what was rejected. Every message is whole on its own:
//! it names the file or URL and the cause once.

use crate::layout::NameError;

/// What a caller should do about an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store does not have it. Trying again will not help unless the
    /// store changes.
    NotFound,
    /// The store could not be reached, or failed in a way that may pass
    /// (a timeout, a closed connection, a server error): try again later.
    RetryLater,
    /// What the store offered must not be used: not signed by a trusted
    /// key, expired, a rollback, too large, not what was signed, or not a
    /// store at all.
    Reject,
    /// This machine failed: a file could not be written (a full disk, a
    /// missing permission).
    Local,
}

/// A failure to read from a store, or to trust what was read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{location}: not found ({detail})")]
    NotFound { location: String, detail: String },

    /// A failure that may pass.
    #[error("{location}: {reason}")]
    Unavailable { location: String, reason: String },

    /// The server (or the location itself) refused in a way that will
    /// not pass: a 403, an unsupported URL.
    #[error("{location}: {reason}")]
    Refused { location: String, reason: String },

    #[error("{location} is larger than the {limit} bytes a {what} may have; refused without reading the rest")]
    TooLarge {
        location: String,
        what: &'static str,
        limit: u64,
    },

    /// A signature, expiry, rollback or format check failed.
    #[error("checking {location}: {error}")]
    Untrusted {
        location: String,
        error: boxcar_signing::Error,
    },

    /// A downloaded or stored file is not what the signed release says.
    #[error("{location} does not match the signed release: expected {expected_size} bytes with sha256 {expected}, got {size} bytes with sha256 {sha256}{note}")]
    Mismatch {
        location: String,
        /// What became of the file ("; the download was removed"), or empty.
        note: &'static str,
        expected_size: u64,
        expected: boxcar_signing::Sha256Digest,
        size: u64,
        sha256: boxcar_signing::Sha256Digest,
    },

    /// Signed documents that contradict each other (a release.json that
    /// is not the one its channel names, a channel document for another
    /// channel).
    #[error("{0}")]
    Inconsistent(String),

    /// A name from a document that cannot be used as a path.
    #[error("{0}")]
    Name(#[from] NameError),

    #[error("{what}: {error}")]
    Local { what: String, error: std::io::Error },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Unavailable { .. } => ErrorKind::RetryLater,
            Error::Local { .. } => ErrorKind::Local,
            Error::Refused { .. }
            | Error::TooLarge { .. }
            | Error::Untrusted { .. }
            | Error::Mismatch { .. }
            | Error::Inconsistent(_)
            | Error::Name(_) => ErrorKind::Reject,
        }
    }

    /// A local failure while doing `what`.
    pub fn local(what: impl Into<String>, error: std::io::Error) -> Self {
        Error::Local {
            what: what.into(),
            error,
        }
    }

    /// A signature or document check of the file at `location` failed.
    pub fn untrusted(location: impl Into<String>, error: boxcar_signing::Error) -> Self {
        Error::Untrusted {
            location: location.into(),
            error,
        }
    }

    /// The same failure, saying that retrying did not help.
    pub(crate) fn after_retries(self, tries: u32) -> Self {
        match self {
            Error::Unavailable { location, reason } => Error::Unavailable {
                location,
                reason: format!("{reason} (gave up after {tries} retries)"),
            },
            other => other,
        }
    }
}

/// Turns "not found" into `None`: for documents a store may not have yet
/// (a channel nobody published to, a keyring before the first rotation).
pub fn found<T>(result: Result<T, Error>) -> Result<Option<T>, Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// An error and every error beneath it, in one line (`a: b: c`): what a
/// failed HTTP request says, from the request down to the socket.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}
