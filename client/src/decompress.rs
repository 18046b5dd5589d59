//! Turning a verified `.zst` file into the file it compresses: written
//! sparsely (a disk or partition image is mostly zeros), hashed as it is
//! written, and never larger than the size the signed release gives, so a
//! compression bomb stops there.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use boxcar_signing::{Hasher, Sha256Digest};

use crate::error::Error;
use crate::files;

/// Decompresses the zstd file `from` into the new file `to` (mode 0644),
/// leaving holes for zeros and writing at most `limit` bytes. Returns the
/// sha256 and size of what was written; on a failure after `to` was
/// created, it is removed (a file that was there already is left alone).
pub fn zstd_sparse(from: &Path, to: &Path, limit: u64) -> Result<(Sha256Digest, u64), Error> {
    let reading = |e| Error::local(format!("decompressing {}", from.display()), e);
    let source = File::open(from).map_err(reading)?;
    let decoder = zstd::stream::read::Decoder::new(source).map_err(reading)?;
    let out = files::create_new(to, 0o644)?;
    let result = write_sparse(decoder, from, out, to, limit);
    if result.is_err() {
        let _ = fs::remove_file(to);
    }
    result
}

fn write_sparse(
    mut decoder: impl Read,
    from: &Path,
    mut out: File,
    to: &Path,
    limit: u64,
) -> Result<(Sha256Digest, u64), Error> {
    let reading = |e| Error::local(format!("decompressing {}", from.display()), e);
    let writing = |e| Error::local(format!("writing {}", to.display()), e);
    let mut hasher = Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = decoder.read(&mut buffer).map_err(reading)?;
        if n == 0 {
            break;
        }
        if hasher.bytes() + n as u64 > limit {
            return Err(Error::Inconsistent(format!(
                "{} decompresses to more than the {limit} bytes the signed release gives; stopped there",
                from.display()
            )));
        }
        let chunk = &buffer[..n];
        if chunk.iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64)).map_err(writing)?;
        } else {
            out.write_all(chunk).map_err(writing)?;
        }
        hasher.update(chunk);
    }
    let (sha256, size) = hasher.finish();
    out.set_len(size)
        .and_then(|()| out.sync_all())
        .map_err(writing)?;
    Ok((sha256, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_stay_holes_and_the_limit_holds() {
        let temp = tempfile::tempdir().unwrap();
        let mut raw = vec![0u8; 8 << 20];
        raw[5 << 20] = 7;
        let packed = temp.path().join("a.zst");
        fs::write(&packed, zstd::encode_all(&raw[..], 3).unwrap()).unwrap();
        let out = temp.path().join("a");
        let (sha256, size) = zstd_sparse(&packed, &out, raw.len() as u64).unwrap();
        assert_eq!(
            (sha256, size),
            boxcar_signing::sha256_reader(&raw[..]).unwrap()
        );
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&out).unwrap().blocks() * 512 < 2 << 20);
        fs::remove_file(&out).unwrap();
        let err = zstd_sparse(&packed, &out, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("more than the"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn a_file_already_there_is_refused_and_kept() {
        let temp = tempfile::tempdir().unwrap();
        let packed = temp.path().join("a.zst");
        fs::write(&packed, zstd::encode_all(&b"new"[..], 3).unwrap()).unwrap();
        let out = temp.path().join("a");
        fs::write(&out, "kept").unwrap();
        assert!(zstd_sparse(&packed, &out, 3).is_err());
        assert_eq!(fs::read_to_string(&out).unwrap(), "kept");
    }
}
