//! A store that is a directory on this machine (a local path, a mount, a
//! `file://` URL). Reading never changes it: no lock, no repair.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use boxcar_signing::Sha256Digest;

use super::{Body, Chunks, Resume, Transport};
use crate::error::Error;
use crate::layout;

/// Reads a store directory.
pub struct DirTransport {
    root: PathBuf,
}

impl DirTransport {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn open_file(&self, path: &str) -> Result<(File, u64), Error> {
        layout::check_path(path)?;
        let file_path = self.root.join(path);
        let location = file_path.display().to_string();
        let file = match File::open(&file_path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    location,
                    detail: "no such file".into(),
                })
            }
            Err(e) => return Err(Error::local(format!("opening {location}"), e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::local(format!("reading {location}"), e))?;
        if !meta.is_file() {
            return Err(Error::Refused {
                location,
                reason: "not a regular file".into(),
            });
        }
        Ok((file, meta.len()))
    }
}

impl Transport for DirTransport {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn identity(&self) -> String {
        let root = std::fs::canonicalize(&self.root)
            .or_else(|_| std::path::absolute(&self.root))
            .unwrap_or_else(|_| self.root.clone());
        format!("file://{}", root.display())
    }

    fn location(&self, path: &str) -> String {
        self.root.join(path).display().to_string()
    }

    fn open(&self, path: &str, from: u64) -> Result<Body<'_>, Error> {
        let (mut file, length) = self.open_file(path)?;
        let from = from.min(length);
        file.seek(SeekFrom::Start(from))
            .map_err(|e| Error::local(format!("reading {}", self.location(path)), e))?;
        Ok(Body::new(
            Resume::Honoured,
            Some(length - from),
            Box::new(FileChunks {
                file,
                location: self.location(path),
            }),
        ))
    }

    /// Hashes without reading a sparse file's holes from the disk.
    fn digest(&self, path: &str, size: u64) -> Result<(Sha256Digest, u64), Error> {
        let (_, length) = self.open_file(path)?;
        if length > size {
            return Err(super::larger_than_signed(
                &self.location(path),
                size,
                super::STOPPED_READING,
            ));
        }
        boxcar_signing::sha256_file(&self.root.join(path))
            .map_err(|e| Error::Inconsistent(format!("hashing {}: {e}", self.location(path))))
    }

    fn leftovers(&self) -> Result<Vec<String>, Error> {
        let mut found = Vec::new();
        for dir in [
            "",
            layout::CHANNELS_DIR,
            layout::RELEASES_DIR,
            layout::KEYRINGS_DIR,
        ] {
            let path = self.root.join(dir);
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::local(format!("listing {}", path.display()), e)),
            };
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::local(format!("listing {}", path.display()), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if layout::is_leftover(&name) {
                    found.push(if dir.is_empty() {
                        name
                    } else {
                        format!("{dir}/{name}")
                    });
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

struct FileChunks {
    file: File,
    location: String,
}

impl Chunks for FileChunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut buffer = vec![0u8; 1 << 20];
        let n = self
            .file
            .read(&mut buffer)
            .map_err(|e| Error::local(format!("reading {}", self.location), e))?;
        if n == 0 {
            return Ok(None);
        }
        buffer.truncate(n);
        Ok(Some(buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::limits::NetworkSettings;
    use crate::transport::read_document;

    #[test]
    fn reads_documents_and_refuses_escapes_and_oversized_ones() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("index.json"), b"{}").unwrap();
        let store = DirTransport::new(temp.path());
        let settings = NetworkSettings::default();
        let read = |path, limit| {
            read_document(
                &store,
                path,
                "index",
                limit,
                &settings,
                std::time::Instant::now(),
            )
        };
        assert_eq!(read("index.json", 10).unwrap(), b"{}");
        assert_eq!(
            read("missing.json", 10).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert!(read("../etc/passwd", 10).is_err());
        let large = read("index.json", 1).unwrap_err();
        assert!(matches!(large, Error::TooLarge { .. }), "{large}");
        assert_eq!(store.digest("index.json", 2).unwrap().1, 2);
    }

    #[test]
    fn lists_what_writers_left_without_touching_it() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(temp.path().join("releases/.1.0.partial")).unwrap();
        std::fs::create_dir_all(temp.path().join("channels")).unwrap();
        std::fs::write(temp.path().join("channels/.beta.json.journal"), "").unwrap();
        std::fs::write(temp.path().join(".lock"), "").unwrap();
        let store = DirTransport::new(temp.path());
        assert_eq!(
            store.leftovers().unwrap(),
            ["channels/.beta.json.journal", "releases/.1.0.partial"]
        );
        assert!(temp.path().join("releases/.1.0.partial").exists());
    }

    #[test]
    fn identity_does_not_depend_on_spelling() {
        let temp = tempfile::tempdir().unwrap();
        let a = DirTransport::new(temp.path());
        let b = DirTransport::new(temp.path().join("."));
        assert_eq!(a.identity(), b.identity());
    }
}
