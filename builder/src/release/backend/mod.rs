//! Where a store is written: the seam between the release logic (what to
//! publish, what a channel points at, what to sign) and the storage that
//! keeps it. Publishing and promotion need only what this trait offers. A
//! directory ([`DirBackend`]: a lock file, renames, a journal) and
//! S3-compatible object storage ([`S3Backend`]: conditional writes, no
//! lock) implement it.
//!
//! What the release logic relies on:
//! - a store repaired of interrupted writers' leftovers before it writes
//!   ([`StoreBackend::lock`], which in a directory also waits for the other
//!   writers);
//! - release objects created only where nothing is ([`ReleaseDraft`]),
//!   and a release visible whole or not at all ([`ReleaseDraft::commit`]);
//! - a document replaced together with its signature, only if it is still
//!   the one the writer built on ([`StoreBackend::replace_document`]):
//!   otherwise [`Conflict`], and the writer reads again and retries;
//! - listing what is published.
//!
//! Reads go through the same client code operators and nodes use
//! ([`StoreBackend::reader`]), so a writer sees exactly what they will.

mod dir;
pub mod s3;

use std::path::Path;

use anyhow::Result;
use boxcar_client::layout::SafeName;
use boxcar_client::Transport;
use boxcar_signing::Sha256Digest;

pub use crate::objectstore::S3Options;
pub use dir::DirBackend;
pub use s3::S3Backend;

/// What a writer expects where it replaces a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No document: the writer makes the first one.
    Absent,
    /// The document whose bytes have this sha256: the one the writer read.
    Sha256(Sha256Digest),
    /// Whatever is there (a derived document, or one whose serial was
    /// claimed by a create-only write first).
    Anything,
}

/// A document changed (or appeared) since the writer read it: another
/// writer got there first. Nothing of this writer's document was written.
#[derive(Debug, thiserror::Error)]
#[error("{location} changed since this writer read it: another writer replaced it first")]
pub struct Conflict {
    pub location: String,
}

impl Conflict {
    pub fn new(location: String) -> Self {
        Self { location }
    }
}

/// Whether `error` is a [`Conflict`] (worth reading again and retrying).
pub fn is_conflict(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| e.downcast_ref::<Conflict>().is_some())
}

/// Runs `operation` (which reads the store afresh each time) again while it
/// fails with a [`Conflict`], at most `attempts` times in all, telling
/// `retrying` of each new attempt. The pause grows with each attempt from
/// `pause`, and differs between processes so that writers that collided
/// spread out.
pub fn retrying_conflicts<T>(
    attempts: u32,
    pause: std::time::Duration,
    retrying: &dyn Fn(&anyhow::Error, u32),
    mut operation: impl FnMut() -> Result<T>,
) -> Result<T> {
    let spread = pause + pause * (std::process::id() % 7) * 3 / 5;
    let mut attempt = 1;
    loop {
        match operation() {
            Err(e) if is_conflict(&e) && attempt < attempts => {
                retrying(&e, attempt + 1);
                std::thread::sleep(spread * attempt);
                attempt += 1;
            }
            Err(e) if is_conflict(&e) => {
                return Err(e.context(format!(
                    "other writers kept changing the store; gave up after {attempts} attempts (nothing of this one's was written)"
                )))
            }
            other => return other,
        }
    }
}

/// A store this process may write to.
pub trait StoreBackend {
    /// Where the store is, for messages.
    fn describe(&self) -> String;

    /// The store as a client reads it.
    fn reader(&self) -> Box<dyn Transport>;

    /// Waits for the other writers, then undoes what interrupted ones left
    /// half done. Writing is allowed while the returned lock is held.
    fn lock(&self, waiting: &dyn Fn(&str)) -> Result<WriterLock>;

    /// Undoes what interrupted writers left, under the lock the caller
    /// holds; returns one line per repair.
    fn repair(&self) -> Result<Vec<String>>;

    /// Whether a release of `version` is published.
    fn release_exists(&self, version: &SafeName) -> Result<bool>;

    /// Starts assembling release `version`, invisible to readers until it
    /// is committed. Refuses a version that is published.
    fn begin_release<'a>(&'a self, version: &SafeName) -> Result<Box<dyn ReleaseDraft + 'a>>;

    /// Writes a document and its detached signature as one step, if the
    /// document there is what `expect` says ([`Conflict`] otherwise): the
    /// pair is the old one or the new one once the step is done, even if
    /// the writer dies in the middle (in object storage, the next writer
    /// finishes an interrupted pair).
    fn replace_document(
        &self,
        path: &str,
        bytes: &[u8],
        signature: &str,
        expect: &Expect,
    ) -> Result<()>;

    /// Replaces only the detached signature of the file at `path` (its
    /// bytes stay as they are): a release re-signed after a key rotation.
    fn replace_signature(&self, path: &str, signature: &str) -> Result<()>;

    /// The published versions, unsorted.
    fn list_releases(&self) -> Result<Vec<SafeName>>;

    /// The channels that have a document, sorted.
    fn list_channels(&self) -> Result<Vec<SafeName>>;
}

/// A release being assembled.
pub trait ReleaseDraft {
    /// Copies the file at `source` in as `name` (a path inside the release,
    /// such as `evidence/qemu.json`), hashing it in the same pass; calls
    /// `copied` with the bytes copied so far. Refuses a name that exists.
    fn copy_in(
        &mut self,
        name: &str,
        source: &Path,
        copied: &dyn Fn(u64),
    ) -> Result<(Sha256Digest, u64)>;

    /// Writes `bytes` as `name`. Refuses a name that exists.
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()>;

    /// Makes the release visible to readers, whole.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Held while writing. Dropping it lets the next writer in.
pub struct WriterLock {
    _held: Box<dyn std::any::Any>,
    /// What taking the lock repaired.
    pub repaired: Vec<String>,
}

impl WriterLock {
    pub fn new(held: Box<dyn std::any::Any>, repaired: Vec<String>) -> Self {
        Self {
            _held: held,
            repaired,
        }
    }
}

/// Opens the store at `location` for writing: `s3://BUCKET/PREFIX` (the
/// server probed for conditional writes first), or a directory (created if
/// it does not exist).
pub fn open(location: &str, s3: &S3Options) -> Result<Box<dyn StoreBackend>> {
    if location.starts_with("s3://") {
        return Ok(Box::new(S3Backend::open(location, s3)?));
    }
    if location.contains("://") {
        anyhow::bail!(
            "{location}: a store to write is a directory or an s3://BUCKET/PREFIX location"
        );
    }
    Ok(Box::new(DirBackend::open(Path::new(location))?))
}

pub use crate::interrupt::crash_point;
