//! Downloading an artifact into a file, verified while it arrives.
//!
//! The file is written as `NAME.part` and hashed as it grows; it becomes
//! `NAME` only when its size and sha256 are the ones release.json signed.
//! A mismatch removes it. An interrupted download resumes from the
//! `.part` on the next attempt (a range request), and is still verified
//! from its first byte.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use boxcar_signing::documents::{ReleaseArtifact, StoredFile};
use boxcar_signing::{Hasher, Sha256Digest};
use serde::Serialize;

use crate::chain::Client;
use crate::error::{Error, ErrorKind};
use crate::files;
use crate::layout::{self, SafeName};
use crate::transport::Resume;

/// One file fetched.
#[derive(Debug, Serialize)]
pub struct FetchedFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// The file was already there, complete and verified.
    pub already_present: bool,
    /// The download continued an earlier, interrupted one.
    pub resumed: bool,
}

impl Client {
    /// Fetches `artifact` of release `version` into directory `to`, verified
    /// against its signed size and digest. A file already at the final name
    /// must be exactly that artifact.
    pub fn fetch_artifact(
        &self,
        version: &SafeName,
        artifact: &ReleaseArtifact,
        to: &Path,
    ) -> Result<FetchedFile, Error> {
        let file = StoredFile {
            name: &artifact.name,
            size: artifact.size,
            sha256: artifact.sha256,
        };
        self.fetch_file(version, file, to)
    }

    /// Fetches any file of release `version` (an artifact, an update part)
    /// into directory `to`, as [`Client::fetch_artifact`] does.
    pub fn fetch_file(
        &self,
        version: &SafeName,
        artifact: StoredFile<'_>,
        to: &Path,
    ) -> Result<FetchedFile, Error> {
        let name = SafeName::new("file name", artifact.name)?;
        let target = to.join(name.as_str());
        if let Some(present) = already_present(&target, artifact)? {
            return Ok(present);
        }
        let part = to.join(part_file_name(name.as_str()));
        let path = layout::release_file(version, &name);
        self.observer()
            .transfer_started(artifact.name, artifact.size, 0);
        let mut resumed = false;
        let deadline = self
            .network()
            .download_deadline(std::time::Instant::now(), artifact.size);
        let result = self
            .network()
            .retry
            .run_until(Some(deadline), &path, self.observer(), || {
                self.fetch_once(&path, &part, artifact, &mut resumed, deadline)
            });
        self.observer().transfer_finished(artifact.name);
        if let Err(error) = result {
            // What the store sent is wrong, or gone: nothing of it is kept.
            // (A failure that may pass keeps the part file to resume.)
            if matches!(error.kind(), ErrorKind::Reject | ErrorKind::NotFound) {
                let _ = fs::remove_file(&part);
            }
            return Err(error);
        }
        fs::rename(&part, &target).map_err(|e| {
            Error::local(
                format!("renaming {} to {}", part.display(), target.display()),
                e,
            )
        })?;
        Ok(FetchedFile {
            path: target,
            size: artifact.size,
            sha256: artifact.sha256,
            already_present: false,
            resumed,
        })
    }

    /// One attempt: continue the part file, then check it whole.
    fn fetch_once(
        &self,
        path: &str,
        part: &Path,
        artifact: StoredFile<'_>,
        resumed: &mut bool,
        deadline: std::time::Instant,
    ) -> Result<(), Error> {
        let location = self.location(path);
        let mut state = PartFile::open(part)?;
        if state.len() > artifact.size {
            state.truncate()?;
        }
        if state.len() > 0 && state.len() < artifact.size {
            *resumed = true;
        }
        self.observer()
            .transfer_progress(artifact.name, state.len());
        if state.len() < artifact.size {
            let mut body = self.transport().open(path, state.len())?;
            match body.resume {
                Resume::Honoured => {}
                Resume::FromStart => {
                    self.observer().notice(&format!(
                        "{location}: the server ignored the range request; downloading from the start"
                    ));
                    state.truncate()?;
                    self.observer().transfer_progress(artifact.name, 0);
                }
                Resume::Refused(why) => {
                    state.truncate()?;
                    return Err(Error::Unavailable {
                        location,
                        reason: why,
                    });
                }
            }
            while let Some(chunk) = body
                .next_chunk()
                .map_err(|e| closed_early(e, &state, &artifact))?
            {
                if state.len() + chunk.len() as u64 > artifact.size {
                    return Err(crate::transport::larger_than_signed(
                        &location,
                        artifact.size,
                        "the download was removed",
                    ));
                }
                state.append(&chunk)?;
                self.observer()
                    .transfer_progress(artifact.name, state.len());
                if std::time::Instant::now() > deadline {
                    return Err(Error::Unavailable {
                        location,
                        reason: format!(
                            "slower than {} KiB/s: {} of {} bytes in the time allowed; the part kept is resumed by the next try",
                            crate::limits::MIN_DOWNLOAD_RATE / 1024,
                            state.len(),
                            artifact.size
                        ),
                    });
                }
            }
        }
        if state.len() < artifact.size {
            return Err(Error::Unavailable {
                location,
                reason: format!(
                    "the connection closed after {} of {} bytes",
                    state.len(),
                    artifact.size
                ),
            });
        }
        let (sha256, size) = state.finish()?;
        if (sha256, size) != (artifact.sha256, artifact.size) {
            return Err(Error::Mismatch {
                location,
                note: "; the download was removed",
                expected_size: artifact.size,
                expected: artifact.sha256,
                size,
                sha256,
            });
        }
        Ok(())
    }
}

/// The name a download of `name` grows under until it is whole and
/// verified (and which a later attempt resumes).
pub fn part_file_name(name: &str) -> String {
    format!("{name}.part")
}

/// A read that failed mid-transfer says how far it got.
fn closed_early(error: Error, state: &PartFile, artifact: &StoredFile<'_>) -> Error {
    match error {
        Error::Unavailable { location, reason } if reason.starts_with("no data for") => {
            Error::Unavailable {
                location,
                reason: format!("{reason} (at {} of {} bytes)", state.len(), artifact.size),
            }
        }
        Error::Unavailable { location, reason } => Error::Unavailable {
            location,
            reason: format!(
                "the connection closed after {} of {} bytes ({reason})",
                state.len(),
                artifact.size
            ),
        },
        other => other,
    }
}

/// The artifact, if it is already at `target`, verified. Something else
/// there (another file, a symlink) is an error: it is never overwritten.
fn already_present(target: &Path, artifact: StoredFile<'_>) -> Result<Option<FetchedFile>, Error> {
    let meta = match fs::symlink_metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::local(format!("reading {}", target.display()), e)),
    };
    if !meta.is_file() {
        return Err(Error::local(
            format!(
                "{} exists and is not a regular file; move it away first",
                target.display()
            ),
            std::io::Error::other("not a regular file"),
        ));
    }
    let (sha256, size) = boxcar_signing::sha256_file(target)
        .map_err(|e| Error::Inconsistent(format!("hashing {}: {e}", target.display())))?;
    if (sha256, size) != (artifact.sha256, artifact.size) {
        return Err(Error::Inconsistent(format!(
            "{} exists and is not the signed file (sha256 {sha256}); move it away first",
            target.display()
        )));
    }
    Ok(Some(FetchedFile {
        path: target.to_owned(),
        size,
        sha256,
        already_present: true,
        resumed: false,
    }))
}

/// A `.part` file and the running hash of what it holds.
struct PartFile {
    file: File,
    hasher: Hasher,
    path: PathBuf,
}

impl PartFile {
    /// Opens (or creates) the part file, never through a symlink, and
    /// hashes what it already holds.
    fn open(path: &Path) -> Result<Self, Error> {
        let mut file = files::open_regular(path)?;
        let mut hasher = Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buffer)
                .map_err(|e| Error::local(format!("reading {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok(Self {
            file,
            hasher,
            path: path.to_owned(),
        })
    }

    fn len(&self) -> u64 {
        self.hasher.bytes()
    }

    fn truncate(&mut self) -> Result<(), Error> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|e| Error::local(format!("truncating {}", self.path.display()), e))?;
        self.hasher = Hasher::new();
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        self.file
            .write_all(data)
            .map_err(|e| Error::local(format!("writing {}", self.path.display()), e))?;
        self.hasher.update(data);
        Ok(())
    }

    fn finish(self) -> Result<(Sha256Digest, u64), Error> {
        self.file
            .sync_all()
            .map_err(|e| Error::local(format!("syncing {}", self.path.display()), e))?;
        Ok(self.hasher.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_files_hash_what_they_hold() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("a.part");
        fs::write(&path, b"ab").unwrap();
        let mut part = PartFile::open(&path).unwrap();
        assert_eq!(part.len(), 2);
        part.append(b"c").unwrap();
        assert_eq!(
            part.finish().unwrap(),
            boxcar_signing::sha256_reader(&b"abc"[..]).unwrap()
        );
        let mut part = PartFile::open(&path).unwrap();
        part.truncate().unwrap();
        assert_eq!(part.len(), 0);
    }
}
