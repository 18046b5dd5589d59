//! Reading a build's files for publishing: a disk image is mostly holes,
//! and reading gigabytes of zeros from the disk to hash them is the slow
//! part of a publish. Holes are filled from memory instead.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Opens a file a publish reads: a regular file, never through a symlink
/// (a build directory is not trusted to point elsewhere).
pub fn open_source(path: &Path) -> Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .with_context(|| format!("opening {} (symlinks are not followed)", path.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok((file, meta.len()))
}

/// Reads a sparse file's holes from memory instead of from the disk.
pub struct HoleFilledReader {
    file: File,
    length: u64,
    regions: Vec<std::ops::Range<u64>>,
    position: u64,
}

impl HoleFilledReader {
    pub fn new(file: File, length: u64) -> Self {
        let regions = boxcar_signing::data_regions(&file, length);
        Self {
            file,
            length,
            regions,
            position: 0,
        }
    }
}

impl Read for HoleFilledReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.length || buf.is_empty() {
            return Ok(0);
        }
        let in_region = self.regions.iter().find(|r| r.end > self.position);
        let n = match in_region {
            Some(region) if region.start <= self.position => {
                let n = buf.len().min((region.end - self.position) as usize);
                self.file.seek(SeekFrom::Start(self.position))?;
                let n = self.file.read(&mut buf[..n])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while being read",
                    ));
                }
                n
            }
            next => {
                let hole_end = next.map_or(self.length, |r| r.start);
                let n = buf.len().min((hole_end - self.position) as usize);
                buf[..n].fill(0);
                n
            }
        };
        self.position += n as u64;
        Ok(n)
    }
}
