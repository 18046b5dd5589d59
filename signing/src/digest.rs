//! SHA-256 digests, computed while streaming.
//!
//! A disk image is gigabytes: it is never read into memory. The `sha2`
//! crate picks the CPU's SHA extensions at run time when present, which is
//! what keeps hashing at the speed of the disk.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::Error;

/// Read buffer size: large enough that the per-call overhead vanishes next
/// to the hashing, small enough to stay in cache.
const CHUNK_SIZE: usize = 256 * 1024;

/// A SHA-256 digest; shown and serialized as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Returns an error naming `what` unless `self` equals `expected`.
    pub fn expect(self, expected: Sha256Digest, what: &str) -> Result<(), Error> {
        if self == expected {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                what: what.to_owned(),
                expected,
                calculated: self,
            })
        }
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl FromStr for Sha256Digest {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidDigest {
            text: text.to_owned(),
        };
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.to_ascii_lowercase(), &mut bytes).map_err(|_| invalid())?;
        Ok(Self(bytes))
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The sha256 of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> Sha256Digest {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    Sha256Digest(hasher.finalize().into())
}

/// Hashes everything `reader` yields; returns the digest and the byte count.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<(Sha256Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK_SIZE];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    Ok((Sha256Digest(hasher.finalize().into()), total))
}

/// Hashes a file by streaming it; returns the digest and the file's size.
///
/// Disk images are sparse: most of a 5 GB image is holes. The holes are
/// found with SEEK_DATA/SEEK_HOLE and hashed from a buffer of zeros instead
/// of being read, which spares the kernel from producing gigabytes of zero
/// pages. Where the file system cannot report holes, the file is read.
pub fn sha256_file(path: &Path) -> Result<(Sha256Digest, u64), Error> {
    let io_error = |source| Error::Io {
        what: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let length = file.metadata().map_err(io_error)?.len();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK_SIZE];
    let zeros = vec![0u8; CHUNK_SIZE];
    let mut position = 0u64;
    while position < length {
        let Some((data_start, data_end)) = next_data_region(&file, position, length) else {
            // No hole information: read the rest.
            file.seek(SeekFrom::Start(position)).map_err(io_error)?;
            copy_into(
                &mut (&mut file).take(length - position),
                &mut hasher,
                &mut buffer,
                length - position,
            )
            .map_err(io_error)?;
            break;
        };
        hash_zeros(&mut hasher, &zeros, data_start - position);
        if data_start >= length {
            break;
        }
        file.seek(SeekFrom::Start(data_start)).map_err(io_error)?;
        copy_into(
            &mut (&mut file).take(data_end - data_start),
            &mut hasher,
            &mut buffer,
            data_end - data_start,
        )
        .map_err(io_error)?;
        position = data_end;
    }
    Ok((Sha256Digest(hasher.finalize().into()), length))
}

/// The regions of `file` (of `length` bytes) that hold data, in order; the
/// rest are holes that read as zeros. One region spanning the whole file
/// when the file system cannot tell.
pub fn data_regions(file: &File, length: u64) -> Vec<std::ops::Range<u64>> {
    let mut regions = Vec::new();
    let mut position = 0;
    while position < length {
        match next_data_region(file, position, length) {
            None => {
                regions.push(position..length);
                break;
            }
            Some((start, _)) if start >= length => break,
            Some((start, end)) => {
                regions.push(start..end);
                position = end;
            }
        }
    }
    regions
}

/// The next region of data at or after `from`, as (start, end); a start of
/// `length` means only a hole remains. `None` when the file system does not
/// support SEEK_DATA.
fn next_data_region(file: &File, from: u64, length: u64) -> Option<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom as RawSeek};
    let start = match seek(file, RawSeek::Data(from)) {
        Ok(start) => start.min(length),
        // ENXIO: no data after `from`.
        Err(rustix::io::Errno::NXIO) => return Some((length, length)),
        Err(_) => return None,
    };
    let end = seek(file, RawSeek::Hole(start)).map_or(length, |end| end.min(length));
    Some((start, end))
}

fn hash_zeros(hasher: &mut Sha256, zeros: &[u8], mut count: u64) {
    while count > 0 {
        let n = count.min(zeros.len() as u64) as usize;
        hasher.update(&zeros[..n]);
        count -= n as u64;
    }
}

/// Feeds exactly `expected` bytes of `reader` to `hasher`; a file that ends
/// early (it shrank while being read) is an error.
fn copy_into(
    reader: &mut impl Read,
    hasher: &mut Sha256,
    buffer: &mut [u8],
    expected: u64,
) -> io::Result<()> {
    let mut copied = 0u64;
    loop {
        let n = match reader.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        copied += n as u64;
    }
    if copied != expected {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "expected {expected} bytes, read {copied}: the file changed while it was hashed"
            ),
        ));
    }
    Ok(())
}

/// An incremental SHA-256, for data that arrives in pieces (a download,
/// possibly resumed).
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    bytes: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.bytes += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> (Sha256Digest, u64) {
        (Sha256Digest(self.inner.finalize().into()), self.bytes)
    }
}

/// A reader that hashes what passes through it, so data can be copied and
/// digested in one pass (a download, a copy into the release store).
pub struct DigestingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> DigestingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything read, and its length.
    pub fn finish(self) -> (Sha256Digest, u64) {
        (Sha256Digest(self.hasher.finalize().into()), self.bytes)
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    // FIPS 180-2 test vectors.
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_vectors() {
        assert_eq!(sha256_reader(&b""[..]).unwrap().0.to_hex(), EMPTY);
        assert_eq!(
            sha256_reader(&b"abc"[..]).unwrap(),
            (ABC.parse().unwrap(), 3)
        );
    }

    #[test]
    fn file_larger_than_one_chunk_matches_in_memory_hash() {
        let data: Vec<u8> = (0..(CHUNK_SIZE * 3 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&data).unwrap();
        let expected = Sha256Digest(Sha256::digest(&data).into());
        assert_eq!(
            sha256_file(file.path()).unwrap(),
            (expected, data.len() as u64)
        );
    }

    #[test]
    fn sparse_file_hashes_like_its_bytes() {
        // data, a hole, data, and a trailing hole.
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut handle = file.reopen().unwrap();
        handle.write_all(&[7u8; 5000]).unwrap();
        handle.seek(SeekFrom::Start(3 * 1024 * 1024)).unwrap();
        handle.write_all(b"middle").unwrap();
        handle.set_len(9 * 1024 * 1024 + 3).unwrap();
        let mut expected = vec![0u8; 9 * 1024 * 1024 + 3];
        expected[..5000].fill(7);
        expected[3 * 1024 * 1024..3 * 1024 * 1024 + 6].copy_from_slice(b"middle");
        let digest = Sha256Digest(Sha256::digest(&expected).into());
        assert_eq!(
            sha256_file(file.path()).unwrap(),
            (digest, expected.len() as u64)
        );
    }

    #[test]
    fn data_regions_skip_holes() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut handle = file.reopen().unwrap();
        handle.seek(SeekFrom::Start(8 * 1024 * 1024)).unwrap();
        handle.write_all(&[1u8; 4096]).unwrap();
        handle.set_len(16 * 1024 * 1024).unwrap();
        let regions = data_regions(file.as_file(), 16 * 1024 * 1024);
        assert_eq!(regions.len(), 1, "{regions:?}");
        assert!(regions[0].start <= 8 * 1024 * 1024 && regions[0].end >= 8 * 1024 * 1024 + 4096);
        assert!(
            regions[0].end - regions[0].start < 4 * 1024 * 1024,
            "{regions:?}"
        );
    }

    #[test]
    fn empty_and_all_hole_files() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(sha256_file(file.path()).unwrap().0.to_hex(), EMPTY);
        file.as_file().set_len(1024 * 1024).unwrap();
        let expected = Sha256Digest(Sha256::digest(vec![0u8; 1024 * 1024]).into());
        assert_eq!(sha256_file(file.path()).unwrap().0, expected);
    }

    #[test]
    fn digesting_reader_sees_what_it_passes_on() {
        let mut reader = DigestingReader::new(&b"abc"[..]);
        let mut copy = Vec::new();
        reader.read_to_end(&mut copy).unwrap();
        assert_eq!(copy, b"abc");
        assert_eq!(reader.finish(), (ABC.parse().unwrap(), 3));
    }

    #[test]
    fn parsing_rejects_malformed_digests() {
        for bad in [
            "",
            "abc",
            &EMPTY[..63],
            &format!("{}0", EMPTY),
            &EMPTY.replace('e', "g"),
        ] {
            assert!(matches!(
                bad.parse::<Sha256Digest>(),
                Err(Error::InvalidDigest { .. })
            ));
        }
        assert_eq!(
            EMPTY
                .to_uppercase()
                .parse::<Sha256Digest>()
                .unwrap()
                .to_hex(),
            EMPTY
        );
    }

    #[test]
    fn mismatch_reports_both_digests() {
        let abc: Sha256Digest = ABC.parse().unwrap();
        let empty: Sha256Digest = EMPTY.parse().unwrap();
        let message = abc.expect(empty, "disk.raw").unwrap_err().to_string();
        assert!(message.contains(ABC) && message.contains(EMPTY) && message.contains("disk.raw"));
    }
}
