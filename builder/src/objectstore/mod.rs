//! S3-compatible object storage, as boxcar's writers use it: requests
//! signed with SigV4 ([`bucket`]), where a bucket and its credentials come
//! from ([`location`]), and files put create-only or replaced, large ones
//! in resumable multipart uploads ([`upload`]). The release store's S3
//! backend and the CI pipeline's staging both stand on it.

pub mod bucket;
pub mod location;
pub mod upload;

pub use bucket::{Bucket, Condition, Written};
pub use location::{S3Location, S3Options};
pub use upload::{put_file, Existing};
