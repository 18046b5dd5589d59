//! How much a reader accepts and how long it waits: every document has a
//! size cap far above any real one, checked before its bytes are kept, and
//! every request has deadlines.

use std::time::{Duration, Instant};

use crate::retry::RetryPolicy;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The largest document of each kind a reader accepts. A document larger
/// than its cap is refused as soon as the size is known (a Content-Length,
/// a file's length) or, when it is not announced, as soon as one byte too
/// many has arrived; it is never read into memory whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `keys.json`: a few keys, a few KiB.
    pub keyring: u64,
    /// `index.json`: about 2 KiB per release; 32 MiB holds ten thousand
    /// releases with room to spare.
    pub index: u64,
    /// `channels/<c>.json`: about 200 bytes per promotion in its history.
    pub channel: u64,
    /// `release.json`: one entry per artifact and platform, about 10 KiB.
    pub release: u64,
    /// `SHA256SUMS`: one line per artifact.
    pub sums: u64,
    /// `*.minisig`: about 300 bytes.
    pub signature: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            keyring: MIB,
            index: 32 * MIB,
            channel: 4 * MIB,
            release: 4 * MIB,
            sums: MIB,
            signature: 16 * KIB,
        }
    }
}

/// How patient to be with a store's server.
#[derive(Clone, Copy, Debug)]
pub struct NetworkSettings {
    /// Give up on connecting after this long.
    pub connect_timeout: Duration,
    /// Give up on a request that receives nothing for this long.
    pub read_timeout: Duration,
    /// Give up on a whole document (not an artifact) after this long, even
    /// if bytes keep trickling in: documents are small.
    pub document_deadline: Duration,
    /// What to do after a failure that may pass.
    pub retry: RetryPolicy,
}

/// The slowest a download may be, on average over the file, before it is
/// given up for now (its part file kept, to resume): 32 KiB/s, so a
/// 250 MiB image has over two hours. A mirror that sends a byte just often
/// enough to beat the read timeout must not hold a reader for days.
pub const MIN_DOWNLOAD_RATE: u64 = 32 * KIB;

impl NetworkSettings {
    /// When a download of `size` bytes starting at `started` is given up:
    /// the document deadline, plus the file at [`MIN_DOWNLOAD_RATE`].
    pub fn download_deadline(&self, started: Instant, size: u64) -> Instant {
        started + self.document_deadline + Duration::from_secs(size / MIN_DOWNLOAD_RATE)
    }
}

impl NetworkSettings {
    /// Settings with a read timeout of `read_timeout`; the document
    /// deadline is four times that, and connecting may take half of it (at
    /// least a second).
    pub fn with_read_timeout(read_timeout: Duration, retry: RetryPolicy) -> Self {
        Self {
            connect_timeout: (read_timeout / 2).max(Duration::from_secs(1)),
            read_timeout,
            document_deadline: read_timeout * 4,
            retry,
        }
    }
}

impl Default for NetworkSettings {
    /// 30 s without data, two minutes per document, five retries.
    fn default() -> Self {
        Self::with_read_timeout(Duration::from_secs(30), RetryPolicy::default())
    }
}
