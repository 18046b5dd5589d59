//! The release side: what goes into a store and what its documents say.
//! It reads the build's records (`build.json`, the boot tests' evidence),
//! never the build's or the boot tests' code, and reads the store through
//! the same client library operators and nodes use.
//!
//! | module | what it owns |
//! |---|---|
//! | [`backend`] | where a store is written: the storage seam and its directory implementation |
//! | [`documents`] | the [`documents::Writer`]: the trust a writer starts from, and the channel documents and index it signs |
//! | [`keyring`] | the keyring: root and signing keys, rotation, removal, renewal |
//! | [`renew`] | `boxcar renew`: documents re-signed before they expire |
//! | [`publish`] | `boxcar publish`: a tested build into the store |
//! | [`promote`] | `boxcar promote`: a channel pointed at a release another channel carries |
//! | [`keys`] | signing keys: where they come from, making new ones |

pub mod backend;
pub mod documents;
pub mod keyring;
pub mod keys;
pub mod promote;
pub mod publish;
pub mod renew;
