//! Reading a release store from where it is: a directory, or a web server
//! serving one (`http://`, `https://`; `file://` is a directory).

use std::fs::File;
use std::io::Read;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use boxcar_signing::{DigestingReader, Sha256Digest};

/// A store to read from.
pub enum StoreSource {
    Local(PathBuf),
    Http {
        base: String,
        client: reqwest::blocking::Client,
    },
}

/// How long to wait for a server before giving up on a request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

impl StoreSource {
    /// A directory path, a `file://` URL, or an `http(s)://` URL.
    pub fn parse(location: &str) -> Result<Self> {
        if let Some(path) = location.strip_prefix("file://") {
            return Ok(Self::Local(PathBuf::from(path)));
        }
        if location.starts_with("http://") || location.starts_with("https://") {
            let client = reqwest::blocking::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                // Artifacts are gigabytes: no limit on a whole request.
                .timeout(None)
                .user_agent(concat!("boxcar/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("setting up the HTTP client")?;
            return Ok(Self::Http {
                base: location.trim_end_matches('/').to_owned(),
                client,
            });
        }
        if location.contains("://") {
            bail!("{location}: only http://, https:// and file:// stores (or a directory path) are supported");
        }
        Ok(Self::Local(PathBuf::from(location)))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::Http { base, .. } => base.clone(),
        }
    }

    /// The URL or path of a file of the store.
    pub fn location_of(&self, path: &str) -> String {
        match self {
            Self::Local(root) => root.join(path).display().to_string(),
            Self::Http { base, .. } => format!("{base}/{path}"),
        }
    }

    /// A small file (a document, a signature); `None` if it does not exist.
    pub fn fetch(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.open(path)? {
            None => Ok(None),
            Some(mut reader) => {
                let mut bytes = Vec::new();
                reader
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("reading {}", self.location_of(path)))?;
                Ok(Some(bytes))
            }
        }
    }

    /// Hashes a file while reading it; `None` if it does not exist.
    pub fn hash(&self, path: &str) -> Result<Option<(Sha256Digest, u64)>> {
        if let Self::Local(root) = self {
            let file = root.join(path);
            if !file.exists() {
                return Ok(None);
            }
            return Ok(Some(boxcar_signing::sha256_file(&file)?));
        }
        match self.open(path)? {
            None => Ok(None),
            Some(reader) => {
                let mut reader = DigestingReader::new(reader);
                std::io::copy(&mut reader, &mut std::io::sink())
                    .with_context(|| format!("reading {}", self.location_of(path)))?;
                Ok(Some(reader.finish()))
            }
        }
    }

    /// A reader for a file; `None` if it does not exist.
    pub fn open(&self, path: &str) -> Result<Option<Box<dyn Read>>> {
        if path.split('/').any(|part| part == ".." || part.is_empty()) {
            bail!("{path:?} is not a path inside a store");
        }
        match self {
            Self::Local(root) => {
                let file = root.join(path);
                match File::open(&file) {
                    Ok(f) => Ok(Some(Box::new(f))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("opening {}", file.display())),
                }
            }
            Self::Http { client, .. } => {
                let url = self.location_of(path);
                let response = client
                    .get(&url)
                    .send()
                    .with_context(|| format!("fetching {url}"))?;
                match response.status() {
                    reqwest::StatusCode::NOT_FOUND => Ok(None),
                    status if status.is_success() => Ok(Some(Box::new(response))),
                    status => bail!("fetching {url}: the server answered {status}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert!(matches!(
            StoreSource::parse("/srv/store").unwrap(),
            StoreSource::Local(_)
        ));
        assert!(
            matches!(StoreSource::parse("file:///srv/store").unwrap(), StoreSource::Local(p) if p == Path::new("/srv/store"))
        );
        let http = StoreSource::parse("https://example.org/boxcar/").unwrap();
        assert_eq!(
            http.location_of("index.json"),
            "https://example.org/boxcar/index.json"
        );
        assert!(StoreSource::parse("ftp://example.org").is_err());
    }

    #[test]
    fn local_reads_and_refuses_escapes() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("index.json"), b"{}").unwrap();
        let source = StoreSource::Local(temp.path().to_owned());
        assert_eq!(source.fetch("index.json").unwrap().unwrap(), b"{}");
        assert!(source.fetch("missing.json").unwrap().is_none());
        assert!(source.fetch("../etc/passwd").is_err());
        assert_eq!(source.hash("index.json").unwrap().unwrap().1, 2);
    }
}
