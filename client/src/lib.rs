//! Reading a Boxcar Linux release store, for everyone who trusts one: an
//! operator's `boxcar download` and `boxcar verify`, the writers' own reads
//! before they sign anything, and the agent on every node.
//!
//! Nothing here builds, signs or writes a store. What it owns:
//!
//! | module | what it owns |
//! |---|---|
//! | [`layout`] | where each document and file lives in a store, the one check every name passes before it becomes a path, and the names of a writer's leftovers |
//! | [`version`] | how release versions are ordered |
//! | [`limits`] | how large each kind of document may be, and how patient to be with the network |
//! | [`transport`] | getting bytes from a store: a directory (or `file://`) or a web server, with timeouts and size caps |
//! | [`retry`] | trying again after a failure that may pass, with backoff |
//! | [`error`] | what went wrong, sorted by what a caller should do about it |
//! | [`chain`] | the signed documents, each checked against the keys trusted so far: keyring, index, channel, release |
//! | [`rollback`] | the highest channel serials this machine has accepted |
//! | [`fetch`] | downloading an artifact into a file, verified while it arrives, resumable |
//! | [`decompress`] | a verified `.zst` into the sparse file it compresses, within the signed size |
//! | [`audit`] | checking a whole store the way a careful client would, without changing it |
//! | [`files`] | creating local files safely: new, never through a symlink |
//!
//! The model is `tough`'s client: one transport abstraction, one set of
//! limits on every fetch, one loader that takes trust, limits, rollback
//! state and an expiration policy.

pub mod audit;
pub mod chain;
pub mod decompress;
pub mod error;
pub mod fetch;
pub mod files;
pub mod layout;
pub mod limits;
pub mod retry;
pub mod rollback;
pub mod transport;
pub mod version;

pub use chain::{Client, Trust, Verified};
pub use error::{Error, ErrorKind};
pub use limits::{Limits, NetworkSettings};
pub use transport::{open_store, Transport};

/// Told about what takes time or goes wrong on the way, so a program can
/// show it (a progress bar, a log line). Every method does nothing by
/// default.
pub trait Observer: Send + Sync {
    /// Something a person watching should know: a retry and its reason, a
    /// server that ignored a range request.
    fn notice(&self, _message: &str) {}
    /// A transfer of `name` (`total` bytes) starts, `from` bytes in.
    fn transfer_started(&self, _name: &str, _total: u64, _from: u64) {}
    /// `position` bytes of `name` are here.
    fn transfer_progress(&self, _name: &str, _position: u64) {}
    /// The transfer of `name` ended, well or not.
    fn transfer_finished(&self, _name: &str) {}
}

/// An observer that tells nobody.
pub struct Silent;

impl Observer for Silent {}
