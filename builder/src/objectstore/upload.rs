//! Putting one file of a release into the bucket, create-only, and
//! resumably: a file larger than a part goes up as a multipart upload whose
//! progress is recorded in the bucket (`.uploads/...`), so a publish killed
//! mid-upload, run again, sends only the parts that are not there yet.
//! A part is skipped only when the local bytes hash to what the record
//! says was sent; the object is made by completing the upload with
//! `If-None-Match: *`, so it never replaces one that is there. Records and
//! sha256 metadata are only what some writer said, so what a publish takes
//! on their word (an object already there, an upload that reused parts) is
//! read back and hashed before it counts as put.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use boxcar_signing::{DigestingReader, Sha256Digest};
use serde::{Deserialize, Serialize};

use super::bucket::{Bucket, Condition, Written};
use crate::interrupt::crash_point;
use crate::sparse::{open_source, HoleFilledReader};

/// The size of a part: S3 allows 10,000, so up to 640 GB per file.
pub const PART_SIZE: u64 = 64 << 20;

/// The part size in use: [`PART_SIZE`], or `BOXCAR_S3_PART_MIB` MiB (at
/// least S3's minimum of 5), for slow links and for tests.
pub fn part_size() -> u64 {
    std::env::var("BOXCAR_S3_PART_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(PART_SIZE, |mib| mib.max(5) << 20)
}

/// Where an upload's progress is recorded.
const UPLOADS_DIR: &str = ".uploads";

/// The record of a multipart upload in progress.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UploadRecord {
    /// The store path the upload makes.
    path: String,
    upload_id: String,
    part_size: u64,
    /// The parts sent, in order: each part's sha256 and the ETag the
    /// server gave it.
    parts: Vec<SentPart>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SentPart {
    sha256: Sha256Digest,
    etag: String,
}

/// What to do when the key holds an object with other bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse: a release object is never replaced.
    Refuse,
    /// Replace it (a CI job's staged output, written again by a retry).
    Replace,
}

/// What putting a file did.
pub struct Put {
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// A local file's contents if it fits in one part (read once, whole);
/// otherwise only its sha256 and size, read with holes filled from memory.
enum Local {
    Small(Vec<u8>),
    Large(Sha256Digest, u64),
}

fn read_local(source: &Path) -> Result<Local> {
    let (mut file, length) = open_source(source)?;
    let reading = || format!("reading {}", source.display());
    if length <= part_size() {
        let mut bytes = Vec::with_capacity(length as usize);
        file.read_to_end(&mut bytes).with_context(reading)?;
        return Ok(Local::Small(bytes));
    }
    let mut reader = DigestingReader::new(HoleFilledReader::new(file, length));
    std::io::copy(&mut reader, &mut std::io::sink()).with_context(reading)?;
    let (sha256, size) = reader.finish();
    Ok(Local::Large(sha256, size))
}

/// Puts `source` as `path`, create-only. An object already there with the
/// same sha256 (an interrupted publish of the same build) counts as put; one
/// with other bytes is an error, or replaced if `existing` says so.
pub fn put_file(
    bucket: &Bucket,
    path: &str,
    source: &Path,
    existing: Existing,
    copied: &dyn Fn(u64),
) -> Result<Put> {
    let local = read_local(source)?;
    let (sha256, size) = match &local {
        Local::Small(bytes) => (boxcar_signing::sha256_bytes(bytes), bytes.len() as u64),
        Local::Large(sha256, size) => (*sha256, *size),
    };
    let condition = match existing {
        Existing::Refuse => Condition::CreateOnly,
        Existing::Replace => Condition::None,
    };
    let there = match existing {
        Existing::Refuse => already_there(bucket, path, &sha256)?.is_some(),
        Existing::Replace => {
            bucket
                .head(path)?
                .is_some_and(|head| head.sha256 == Some(sha256.to_string()))
                && holds(bucket, path, &sha256)?
        }
    };
    if there {
        copied(size);
        return Ok(Put { sha256, size });
    }
    match local {
        Local::Small(bytes) => {
            if condition == Condition::CreateOnly {
                put_bytes(bucket, path, bytes, &sha256)?;
            } else {
                bucket.put(path, bytes, &condition)?;
            }
            copied(size);
        }
        Local::Large(..) => {
            put_in_parts(bucket, path, source, (&sha256, size), &condition, copied)?;
        }
    }
    Ok(Put { sha256, size })
}

/// Puts a small object (whose sha256 is `sha256`) create-only, accepting
/// the same bytes already there.
pub fn put_bytes(bucket: &Bucket, path: &str, bytes: Vec<u8>, sha256: &Sha256Digest) -> Result<()> {
    match bucket.put(path, bytes, &Condition::CreateOnly)? {
        Written::Done(_) => Ok(()),
        Written::ConditionFailed => match already_there(bucket, path, sha256)? {
            Some(()) => Ok(()),
            None => bail!(
                "{} appeared while it was being written, with other bytes: another writer is publishing this version",
                bucket.describe(path)
            ),
        },
    }
}

/// `Some` when `path` holds an object with `sha256`'s bytes; an error when
/// it holds another one.
fn already_there(bucket: &Bucket, path: &str, sha256: &Sha256Digest) -> Result<Option<()>> {
    let Some(head) = bucket.head(path)? else {
        return Ok(None);
    };
    if head.sha256.as_deref() == Some(sha256.to_string().as_str()) {
        if holds(bucket, path, sha256)? {
            return Ok(Some(()));
        }
        bail!(
            "{} says in its metadata that it holds this build's bytes (sha256 {sha256}), but it holds others: \
             someone with write access to the bucket wrote it. A release object is never replaced: \
             remove it once you know who wrote it, and publish again",
            bucket.describe(path)
        );
    }
    bail!(
        "{} exists with other bytes (sha256 {}, this build's is {sha256}): a release object is never replaced. \
         An interrupted publish of another build of this version left it: publish under a new version",
        bucket.describe(path),
        head.sha256.as_deref().unwrap_or("unrecorded")
    )
}

/// Whether the object at `path` holds `sha256`'s bytes, read back and
/// hashed. Its metadata only says what its writer claims, and any writer
/// can set it, so an object a put would otherwise skip is checked this
/// way. That happens only when the object is already there: a resumed
/// publish, or a build staged again (where the read replaces an upload of
/// the same size, and a wrong object is written over instead of failing
/// the job that pulls it).
fn holds(bucket: &Bucket, path: &str, sha256: &Sha256Digest) -> Result<bool> {
    Ok(bucket
        .digest(path)?
        .is_some_and(|(held, _)| held == *sha256))
}

/// Sends a large file in parts, continuing a recorded upload of the same
/// bytes, and completes it create-only.
fn put_in_parts(
    bucket: &Bucket,
    path: &str,
    source: &Path,
    (sha256, size): (&Sha256Digest, u64),
    condition: &Condition,
    copied: &dyn Fn(u64),
) -> Result<()> {
    // Named by the bytes (keys have length limits on some servers); the
    // record says which path it is for.
    let record_path = format!("{UPLOADS_DIR}/{sha256}.json");
    let mut record = resumable_record(bucket, path, &record_path)?.unwrap_or_default();
    if record.upload_id.is_empty() {
        record.path = path.to_owned();
        record.upload_id = bucket.create_multipart(path, sha256)?;
        record.part_size = part_size();
        save_record(bucket, &record_path, &record)?;
    }
    let (file, length) = open_source(source)?;
    let mut reader = DigestingReader::new(HoleFilledReader::new(file, length));
    let mut etags = Vec::new();
    // Parts sent by an earlier run are taken from the record, which anyone
    // with write access could have rewritten: the object they make is
    // read back once it is complete.
    let mut resumed = false;
    let mut position = 0u64;
    let mut number = 0u16;
    loop {
        let mut part = Vec::with_capacity(record.part_size as usize);
        (&mut reader)
            .take(record.part_size)
            .read_to_end(&mut part)
            .with_context(|| format!("reading {}", source.display()))?;
        if part.is_empty() {
            break;
        }
        let part_sha256 = boxcar_signing::sha256_bytes(&part);
        let index = number as usize;
        number += 1;
        position += part.len() as u64;
        match record.parts.get(index) {
            Some(done) if done.sha256 == part_sha256 => {
                resumed = true;
                etags.push(done.etag.clone());
            }
            _ => {
                let etag = bucket.upload_part(path, &record.upload_id, number, part)?;
                record.parts.truncate(index);
                record.parts.push(SentPart {
                    sha256: part_sha256,
                    etag: etag.clone(),
                });
                save_record(bucket, &record_path, &record)?;
                etags.push(etag);
                crash_point("s3-part-sent");
            }
        }
        copied(position);
    }
    let (read_sha256, read_size) = reader.finish();
    if (read_sha256, read_size) != (*sha256, size) {
        bail!("{} changed while it was being published", source.display());
    }
    match bucket.complete_multipart(path, &record.upload_id, &etags, condition)? {
        Written::Done(_) if resumed && !holds(bucket, path, sha256)? => {
            bucket.delete(path)?;
            bucket.delete(&record_path)?;
            bail!(
                "{} came out with other bytes than {}: parts of the upload that was resumed were changed \
                 in the bucket. The object and its upload record are removed; publish again to send it whole",
                bucket.describe(path),
                source.display()
            );
        }
        Written::Done(_) => {}
        Written::ConditionFailed => {
            bucket.abort_multipart(path, &record.upload_id)?;
            if already_there(bucket, path, sha256)?.is_none() {
                bail!("{} could not be created", bucket.describe(path));
            }
        }
    }
    bucket.delete(&record_path)
}

/// The recorded upload of these bytes, if the server still has it.
fn resumable_record(
    bucket: &Bucket,
    path: &str,
    record_path: &str,
) -> Result<Option<UploadRecord>> {
    let Some(object) = bucket.get(record_path)? else {
        return Ok(None);
    };
    let Ok(record) = serde_json::from_slice::<UploadRecord>(&object.bytes) else {
        return Ok(None);
    };
    if record.part_size == 0 || record.path != path {
        return Ok(None);
    }
    let Some(listed) = bucket.list_parts(path, &record.upload_id)? else {
        return Ok(None);
    };
    // Keep the recorded parts the server has, in order, with the same ETag.
    let mut kept = UploadRecord {
        path: record.path,
        upload_id: record.upload_id,
        part_size: record.part_size,
        parts: Vec::new(),
    };
    for (index, part) in record.parts.into_iter().enumerate() {
        let number = index as u16 + 1;
        if !listed
            .iter()
            .any(|(n, etag, _)| *n == number && same_etag(etag, &part.etag))
        {
            break;
        }
        kept.parts.push(part);
    }
    Ok(Some(kept))
}

fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

fn save_record(bucket: &Bucket, record_path: &str, record: &UploadRecord) -> Result<()> {
    bucket.put(record_path, serde_json::to_vec(record)?, &Condition::None)?;
    Ok(())
}
