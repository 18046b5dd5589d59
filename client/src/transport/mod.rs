//! Getting bytes from a store, wherever it is: a directory (or a
//! `file://` URL) or a web server (`http://`, `https://`). A transport
//! knows nothing of signatures; it fetches, with deadlines, and a caller
//! caps what it keeps ([`read_document`]).

mod dir;
mod http;

use std::path::PathBuf;
use std::time::Instant;

use boxcar_signing::{Hasher, Sha256Digest};

pub use dir::DirTransport;
pub use http::{HttpTransport, UrlSigner};

use crate::error::Error;
use crate::layout;
use crate::limits::NetworkSettings;

/// A store to read from.
pub trait Transport: Send + Sync {
    /// Where the store is, as the user named it (for messages).
    fn describe(&self) -> String;

    /// The store's identity however it was spelled (`HTTP://Host/x/`,
    /// `http://host/x`): what rollback state is kept under.
    fn identity(&self) -> String;

    /// The URL or file path of a store path (for messages).
    fn location(&self, path: &str) -> String;

    /// Starts reading the file at `path`, `from` bytes in. The transport
    /// may not honour `from`: [`Body::resume`] says what it did.
    fn open(&self, path: &str, from: u64) -> Result<Body<'_>, Error>;

    /// The sha256 and size of a file, read in full (a transport that can
    /// skip a sparse file's holes does), unless it is larger than `size`,
    /// what a signed document says it is: a server that sends without end
    /// is refused there.
    fn digest(&self, path: &str, size: u64) -> Result<(Sha256Digest, u64), Error> {
        let mut body = self.open(path, 0)?;
        let mut hasher = Hasher::new();
        while let Some(chunk) = body.next_chunk()? {
            hasher.update(&chunk);
            if hasher.bytes() > size {
                return Err(larger_than_signed(
                    &self.location(path),
                    size,
                    STOPPED_READING,
                ));
            }
        }
        Ok(hasher.finish())
    }

    /// What interrupted writers left in the store, where the transport can
    /// list it (a directory); empty where it cannot (a web server).
    fn leftovers(&self) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
}

/// What a transport did with a request to start part-way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The body starts where it was asked to.
    Honoured,
    /// The body is the whole file, from its first byte (a server that
    /// ignores Range requests).
    FromStart,
    /// The transport cannot continue from there (a server that refused the
    /// range or answered for another one): start again from the beginning.
    Refused(String),
}

/// The bytes of a file, in chunks, as they arrive.
pub struct Body<'a> {
    pub resume: Resume,
    /// How many bytes the body will hold, when the transport knows.
    pub length: Option<u64>,
    chunks: Box<dyn Chunks + 'a>,
}

/// Where a body's chunks come from.
pub trait Chunks {
    /// The next piece; `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error>;
}

impl<'a> Body<'a> {
    pub fn new(resume: Resume, length: Option<u64>, chunks: Box<dyn Chunks + 'a>) -> Self {
        Self {
            resume,
            length,
            chunks,
        }
    }

    /// The next piece; `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        self.chunks.next_chunk()
    }
}

/// Where a store is, as [`open_store`] reads a location. One definition,
/// so that a writer of settings (the image's update.toml, written by
/// `boxcar build`) can check a location the way the agent will read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A web server: an `http://` or `https://` URL that parses.
    Http(String),
    /// A directory: a path, or a `file://` URL's path.
    Directory(PathBuf),
}

impl StoreLocation {
    pub fn parse(location: &str) -> Result<Self, Error> {
        let refused = |reason: String| Error::Refused {
            location: location.to_owned(),
            reason,
        };
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            reqwest::Url::parse(location).map_err(|e| refused(format!("not a URL: {e}")))?;
            return Ok(Self::Http(location.to_owned()));
        }
        if let Some(path) = location.strip_prefix("file://") {
            return Ok(Self::Directory(path.into()));
        }
        if location.contains("://") {
            return Err(refused(
                "only http://, https:// and file:// stores (or a directory path) are supported"
                    .into(),
            ));
        }
        Ok(Self::Directory(location.into()))
    }
}

/// Opens the store at `location`: an `http://` or `https://` URL, a
/// `file://` URL or a directory path.
pub fn open_store(location: &str, settings: &NetworkSettings) -> Result<Box<dyn Transport>, Error> {
    Ok(match StoreLocation::parse(location)? {
        StoreLocation::Http(url) => Box::new(HttpTransport::new(&url, settings)?),
        StoreLocation::Directory(path) => Box::new(DirTransport::new(path)),
    })
}

/// The error for a file longer than the size its release signs, saying
/// what became of what was read (`outcome`).
pub fn larger_than_signed(location: &str, size: u64, outcome: &str) -> Error {
    Error::Inconsistent(format!(
        "{location} is larger than the {size} bytes its release signs; {outcome}"
    ))
}

/// What verify and promote say when they stop hashing an oversized file.
pub const STOPPED_READING: &str = "stopped reading there";

/// Reads a whole document of kind `what`, refusing one larger than
/// `limit` bytes before keeping more than `limit` of it, and giving up
/// once the document deadline has passed since `started` (the first try,
/// when this one is a retry).
pub fn read_document(
    transport: &dyn Transport,
    path: &str,
    what: &'static str,
    limit: u64,
    settings: &NetworkSettings,
    started: Instant,
) -> Result<Vec<u8>, Error> {
    layout::check_path(path)?;
    let location = || transport.location(path);
    let too_large = || Error::TooLarge {
        location: location(),
        what,
        limit,
    };
    let mut body = transport.open(path, 0)?;
    if body.length.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next_chunk()? {
        if bytes.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
        if started.elapsed() > settings.document_deadline {
            return Err(Error::Unavailable {
                location: location(),
                reason: format!(
                    "still arriving after {}s, longer than any document may take",
                    settings.document_deadline.as_secs()
                ),
            });
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_is_a_web_server_a_directory_or_refused() {
        let parse = |text: &str| StoreLocation::parse(text);
        assert_eq!(
            parse("HTTPS://updates.example.com/boxcar").unwrap(),
            StoreLocation::Http("HTTPS://updates.example.com/boxcar".into())
        );
        assert_eq!(
            parse("file:///srv/store").unwrap(),
            StoreLocation::Directory("/srv/store".into())
        );
        assert_eq!(
            parse("stores/good").unwrap(),
            StoreLocation::Directory("stores/good".into())
        );
        assert!(parse("https://[::1").is_err());
        assert!(parse("s3://bucket/prefix").is_err());
    }
}
