//! The release side: what goes into a store and what its documents say.
//! It reads the build's records (`build.json`, the boot tests' evidence),
//! never the build's or the boot tests' code, and reads the store through
//! the same client library operators and nodes use.
//!
//! | module | what it owns |
//! |---|---|
//! | [`backend`] | where a store is written: the storage seam and its directory implementation |
//! | [`documents`] | the signed channel documents, index and keyring, as writers make them |
//! | [`publish`] | `boxcar publish`: a tested build into the store |
//! | [`promote`] | `boxcar promote`: a channel pointed at a release another channel carries |
//! | [`keys`] | signing keys: where they come from, making new ones |

pub mod backend;
pub mod documents;
pub mod keys;
pub mod promote;
pub mod publish;
