//! A store in S3-compatible object storage, written with S3's own
//! guarantees rather than a directory's: there is no lock and no rename.
//!
//! - Release objects are immutable: each is created with
//!   `If-None-Match: *` (large ones as resumable multipart uploads), and
//!   records its sha256 in its metadata, so a publish run again after an
//!   interruption recognises what it already sent. `release.json` is
//!   written last, create-only: it is what makes a release exist, and of
//!   two publishers of one version exactly one gets it. Its signature
//!   follows it through `.pending/`, as a document's does (below), so the
//!   other's never lands beside it.
//! - A document is replaced with `If-Match` on the ETag of the one the
//!   writer built on (`If-None-Match: *` for a first one): of two writers
//!   racing, one wins and the other gets [`Conflict`] and nothing of its
//!   document is left. Its signature follows: the writer first leaves the
//!   new signature under `.pending/`, named by the new document's sha256,
//!   then replaces the document, then the signature. A writer that dies
//!   between the two leaves the signature where any later writer (and
//!   `boxcar repair`) finds it and finishes the pair.
//! - At opening, the server is probed: one that lets a create-only write
//!   replace an object, or an `If-Match` on a wrong ETag succeed, is
//!   refused, since on it two writers could both win.
//!
//! Readers need none of this: they read the same paths over HTTP(S)
//! (through a CDN or the bucket's website endpoint, no credentials); the
//! writer reads through signed URLs.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use boxcar_client::layout::{self, SafeName};
use boxcar_client::transport::{HttpTransport, UrlSigner};
use boxcar_client::{NetworkSettings, Transport};
use boxcar_signing::Sha256Digest;

use crate::objectstore::{upload, Bucket, Condition, S3Location, S3Options, Written};

use super::{crash_point, Conflict, Expect, ReleaseDraft, StoreBackend, WriterLock};

/// Where a document's next signature waits until it is in place.
const PENDING_DIR: &str = ".pending";
/// Where the probe of the server's conditional writes is made.
const PROBE_DIR: &str = ".probe";
/// How old a pending signature of a document that never landed must be
/// before repair removes it (a live writer's is seconds old).
const STALE_PENDING_SECS: i64 = 3600;

/// A store in a bucket this process may write to.
pub struct S3Backend {
    bucket: Arc<Bucket>,
}

impl S3Backend {
    /// Opens the store at `location` and probes that the server honours
    /// conditional writes.
    pub fn open(location: &str, options: &S3Options) -> Result<Self> {
        let bucket = Bucket::new(S3Location::parse(location, options)?)?;
        let backend = Self {
            bucket: Arc::new(bucket),
        };
        backend.probe()?;
        Ok(backend)
    }

    /// A reader of the store at `location` through signed URLs, for
    /// `boxcar verify`: it sends no write, not even the probe.
    pub fn reader_of(
        location: &str,
        options: &S3Options,
        network: &NetworkSettings,
    ) -> Result<Box<dyn Transport>> {
        let bucket = Arc::new(Bucket::new(S3Location::parse(location, options)?)?);
        let name = bucket.location().describe();
        Ok(Box::new(HttpTransport::signed(
            &name,
            Box::new(SignedUrls(bucket)),
            network,
        )?))
    }

    /// Refuses a server that ignores `If-None-Match: *` or `If-Match`.
    fn probe(&self) -> Result<()> {
        let path = format!("{PROBE_DIR}/{}", probe_name());
        let refuse = |what: &str| {
            anyhow::anyhow!(
                "{} does not honour conditional writes ({what}): on it two writers could both win \
                 and overwrite each other's releases and documents, so boxcar will not write to it. \
                 Use a server that implements If-None-Match and If-Match on PUT (AWS S3, s3s-fs, moto, ...)",
                self.bucket.location().describe()
            )
        };
        let first = self
            .bucket
            .put(&path, b"1".to_vec(), &Condition::CreateOnly)?;
        let result = (|| {
            let Written::Done(etag) = first else {
                bail!(refuse("a create-only write of a new key failed"));
            };
            if self
                .bucket
                .put(&path, b"2".to_vec(), &Condition::CreateOnly)?
                != Written::ConditionFailed
            {
                bail!(refuse("If-None-Match: * replaced an object"));
            }
            let wrong = if etag == "\"0\"" { "\"1\"" } else { "\"0\"" };
            if self
                .bucket
                .put(&path, b"3".to_vec(), &Condition::IfMatch(wrong.to_owned()))?
                != Written::ConditionFailed
            {
                bail!(refuse("If-Match with a wrong ETag replaced an object"));
            }
            Ok(())
        })();
        self.bucket.delete(&path)?;
        result
    }

    /// The object at `path` as (sha256 of its bytes, ETag), if any.
    fn current(&self, path: &str) -> Result<Option<(Sha256Digest, String)>> {
        Ok(self
            .bucket
            .get(path)?
            .map(|object| (boxcar_signing::sha256_bytes(&object.bytes), object.etag)))
    }

    fn pending_path(path: &str, digest: &Sha256Digest) -> String {
        format!("{PENDING_DIR}/{}.{digest}", layout::signature_of(path))
    }

    /// Puts the signature of whatever document is at `path` now in place,
    /// if one is waiting under `.pending/` (or is `ours`, for the document
    /// this writer just wrote). Conditional on the signature's ETag, so
    /// writers settling one pair at once end with the current document's;
    /// and checked after: a document replaced (and its signature settled)
    /// between this writer's reads and its write gets its signature back.
    fn settle_signature(&self, path: &str, ours: Option<(&Sha256Digest, &str)>) -> Result<bool> {
        let signature_path = layout::signature_of(path);
        for _ in 0..20 {
            let Some((digest, _)) = self.current(path)? else {
                return Ok(false);
            };
            let wanted = match ours {
                Some((our_digest, signature)) if *our_digest == digest => {
                    signature.as_bytes().to_vec()
                }
                _ => match self.bucket.get(&Self::pending_path(path, &digest))? {
                    Some(pending) => pending.bytes,
                    // Settled already, or its writer is still at work.
                    None => return Ok(false),
                },
            };
            let replaced = self.bucket.get(&signature_path)?;
            let condition = match &replaced {
                Some(current) if current.bytes == wanted => return Ok(true),
                Some(current) => Condition::IfMatch(current.etag.clone()),
                None => Condition::CreateOnly,
            };
            let Written::Done(written) = self.bucket.put(&signature_path, wanted, &condition)?
            else {
                continue;
            };
            if self.current(path)?.is_some_and(|(now, _)| now == digest) {
                return Ok(true);
            }
            // The document changed under this writer: the signature it
            // replaced may be the new document's. Put it back, unless yet
            // another writer has written since, and look again.
            if let Some(replaced) = replaced {
                self.bucket.put(
                    &signature_path,
                    replaced.bytes,
                    &Condition::IfMatch(written),
                )?;
            }
        }
        bail!(
            "{}: its signature kept changing under this writer; run `boxcar repair` when the other writers are done",
            self.bucket.describe(path)
        )
    }
}

impl StoreBackend for S3Backend {
    fn describe(&self) -> String {
        self.bucket.location().describe()
    }

    fn reader(&self) -> Box<dyn Transport> {
        let signer = SignedUrls(self.bucket.clone());
        Box::new(
            HttpTransport::signed(
                &self.describe(),
                Box::new(signer),
                &NetworkSettings::default(),
            )
            .expect("an HTTP client and its runtime start"),
        )
    }

    fn lock(&self, _waiting: &dyn Fn(&str)) -> Result<WriterLock> {
        // No lock: every write is conditional. Interrupted writers' pairs
        // are finished first.
        let repaired = self.repair()?;
        Ok(WriterLock::new(Box::new(()), repaired))
    }

    fn repair(&self) -> Result<Vec<String>> {
        let mut repaired = Vec::new();
        let now = time::OffsetDateTime::now_utc();
        for pending in self.bucket.list(&format!("{PENDING_DIR}/"))? {
            let Some((signature_path, digest)) = pending
                .path
                .strip_prefix(&format!("{PENDING_DIR}/"))
                .and_then(|rest| rest.rsplit_once('.'))
            else {
                continue;
            };
            let Some(path) = signature_path.strip_suffix(layout::SIGNATURE_SUFFIX) else {
                continue;
            };
            if layout::check_path(path).is_err() {
                continue;
            }
            let current = self.current(path)?;
            if current
                .as_ref()
                .is_some_and(|(d, _)| d.to_string() == digest)
            {
                if self.settle_signature(path, None)? {
                    repaired.push(format!(
                        "put the signature of {} in place (an interrupted writer left it pending)",
                        self.bucket.describe(path)
                    ));
                }
                self.bucket.delete(&pending.path)?;
            } else if age_secs(pending.last_modified.as_deref(), now) > STALE_PENDING_SECS {
                self.bucket.delete(&pending.path)?;
                repaired.push(format!(
                    "removed {}, the signature of a document that never landed",
                    self.bucket.describe(&pending.path)
                ));
            }
        }
        Ok(repaired)
    }

    fn release_exists(&self, version: &SafeName) -> Result<bool> {
        let path = format!(
            "{}/{}",
            layout::release_dir(version),
            layout::RELEASE_DOCUMENT
        );
        Ok(self.bucket.head(&path)?.is_some())
    }

    fn begin_release<'a>(&'a self, version: &SafeName) -> Result<Box<dyn ReleaseDraft + 'a>> {
        if self.release_exists(version)? {
            bail!(
                "version {version} is already published at {}; a published version is never replaced",
                self.bucket.describe(&layout::release_dir(version))
            );
        }
        Ok(Box::new(S3Draft {
            backend: self,
            bucket: &self.bucket,
            dir: layout::release_dir(version),
            documents: Vec::new(),
        }))
    }

    fn replace_document(
        &self,
        path: &str,
        bytes: &[u8],
        signature: &str,
        expect: &Expect,
    ) -> Result<()> {
        layout::check_path(path)?;
        let current = self.current(path)?;
        let condition = match (&current, expect) {
            (None, Expect::Absent | Expect::Anything) => Condition::CreateOnly,
            (Some((digest, etag)), Expect::Sha256(expected)) if digest == expected => {
                Condition::IfMatch(etag.clone())
            }
            (Some((_, etag)), Expect::Anything) => Condition::IfMatch(etag.clone()),
            _ => return Err(Conflict::new(self.bucket.describe(path)).into()),
        };
        let digest = boxcar_signing::sha256_bytes(bytes);
        let pending = Self::pending_path(path, &digest);
        self.bucket
            .put(&pending, signature.as_bytes().to_vec(), &Condition::None)?;
        match self.bucket.put(path, bytes.to_vec(), &condition)? {
            Written::Done(_) => {}
            Written::ConditionFailed => {
                self.bucket.delete(&pending)?;
                return Err(Conflict::new(self.bucket.describe(path)).into());
            }
        }
        crash_point("document-half-replaced");
        self.settle_signature(path, Some((&digest, signature)))?;
        self.bucket.delete(&pending)
    }

    fn replace_signature(&self, path: &str, signature: &str) -> Result<()> {
        let path = layout::signature_of(path);
        layout::check_path(&path)?;
        self.bucket
            .put(&path, signature.as_bytes().to_vec(), &Condition::None)?;
        Ok(())
    }

    fn list_releases(&self) -> Result<Vec<SafeName>> {
        let suffix = format!("/{}", layout::RELEASE_DOCUMENT);
        self.names_under(layout::RELEASES_DIR, &suffix)?
            .iter()
            .map(|version| Ok(SafeName::new("version", version)?))
            .collect()
    }

    fn list_channels(&self) -> Result<Vec<SafeName>> {
        let mut names = self
            .names_under(layout::CHANNELS_DIR, ".json")?
            .iter()
            .map(|channel| Ok(SafeName::new("channel", channel)?))
            .collect::<Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }
}

impl S3Backend {
    /// The NAMEs of the objects `DIR/NAME<suffix>` (NAME one component, not
    /// a writer's hidden one).
    fn names_under(&self, dir: &str, suffix: &str) -> Result<Vec<String>> {
        let prefix = format!("{dir}/");
        Ok(self
            .bucket
            .list(&prefix)?
            .into_iter()
            .filter_map(|listed| {
                let name = listed.path.strip_prefix(&prefix)?.strip_suffix(suffix)?;
                (!name.contains('/') && !name.starts_with('.')).then(|| name.to_owned())
            })
            .collect())
    }
}

/// A release being put into the bucket: its files go up create-only as
/// they come; its documents wait for [`ReleaseDraft::commit`], which writes
/// release.json last.
struct S3Draft<'a> {
    backend: &'a S3Backend,
    bucket: &'a Bucket,
    dir: String,
    documents: Vec<(String, Vec<u8>)>,
}

impl S3Draft<'_> {
    fn path(&self, name: &str) -> Result<String> {
        for part in name.split('/') {
            SafeName::new("file name", part)?;
        }
        Ok(format!("{}/{name}", self.dir))
    }
}

impl ReleaseDraft for S3Draft<'_> {
    fn copy_in(
        &mut self,
        name: &str,
        source: &Path,
        copied: &dyn Fn(u64),
    ) -> Result<(Sha256Digest, u64)> {
        let path = self.path(name)?;
        let put = upload::put_file(self.bucket, &path, source, upload::Existing::Refuse, copied)?;
        Ok((put.sha256, put.size))
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(name)?;
        if self.documents.iter().any(|(p, _)| *p == path) {
            bail!("{} is written twice", self.bucket.describe(&path));
        }
        self.documents.push((path, bytes.to_vec()));
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let release_json = format!("{}/{}", self.dir, layout::RELEASE_DOCUMENT);
        let release_signature = layout::signature_of(&release_json);
        let (mut release, mut signature) = (None, None);
        // Every document is created, never written over: a publisher of
        // this version that lost the race must not replace the winner's
        // SHA256SUMS. A rerun after an interruption finds its own bytes.
        for (path, bytes) in self.documents {
            if path == release_json {
                release = Some(bytes);
            } else if path == release_signature {
                signature = Some(bytes);
            } else {
                let digest = boxcar_signing::sha256_bytes(&bytes);
                upload::put_bytes(self.bucket, &path, bytes, &digest)?;
            }
        }
        let (Some(release), Some(signature)) = (release, signature) else {
            bail!("{release_json} and its signature are written together");
        };
        // release.json, created, is the commit point. Its signature waits
        // under .pending/ until then, so that only the publisher whose
        // release.json landed puts its signature beside it, and one that
        // dies in between leaves it for the next writer to finish.
        let digest = boxcar_signing::sha256_bytes(&release);
        let pending = S3Backend::pending_path(&release_json, &digest);
        self.bucket
            .put(&pending, signature.clone(), &Condition::None)?;
        crash_point("publish-before-rename");
        if let Err(e) = upload::put_bytes(self.bucket, &release_json, release, &digest) {
            self.bucket.delete(&pending)?;
            return Err(
                e.context("another publisher of this version got there first: its release stands")
            );
        }
        let signature = String::from_utf8(signature)?;
        self.backend
            .settle_signature(&release_json, Some((&digest, &signature)))?;
        self.bucket.delete(&pending)
    }
}

/// Signs the store reader's GETs.
struct SignedUrls(Arc<Bucket>);

impl UrlSigner for SignedUrls {
    fn url(&self, path: &str) -> String {
        self.0.signed_get(path)
    }
}

/// Seconds since an S3 `LastModified` time; 0 when it cannot be read.
fn age_secs(last_modified: Option<&str>, now: time::OffsetDateTime) -> i64 {
    last_modified
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(0, |t| (now - t).whole_seconds())
}

/// A name no other writer's probe has: this process and this instant.
fn probe_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", std::process::id(), now.as_nanos())
}
