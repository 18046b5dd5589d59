//! A store served over HTTP(S): a web server, a CDN, a bucket's website
//! endpoint. Every wait has a deadline: connecting, the answer's headers,
//! and each piece of the body.

use std::time::Duration;

use super::{Body, Chunks, Resume, Transport};
use crate::error::Error;
use crate::layout;
use crate::limits::NetworkSettings;

/// Reads a store from a web server.
pub struct HttpTransport {
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    read_timeout: Duration,
    signer: Option<Box<dyn UrlSigner>>,
}

/// Makes the URL a store path is fetched from, for stores whose reads are
/// signed (a writer reading its S3 bucket through signed URLs). Readers of
/// a public store have none.
pub trait UrlSigner: Send + Sync {
    fn url(&self, path: &str) -> String;
}

impl HttpTransport {
    pub fn new(base: &str, settings: &NetworkSettings) -> Result<Self, Error> {
        reqwest::Url::parse(base).map_err(|e| Error::Refused {
            location: base.to_owned(),
            reason: format!("not a URL: {e}"),
        })?;
        Self::build(base, None, settings)
    }

    /// A store read through URLs `signer` makes; `name` is how it is
    /// described in messages.
    pub fn signed(
        name: &str,
        signer: Box<dyn UrlSigner>,
        settings: &NetworkSettings,
    ) -> Result<Self, Error> {
        Self::build(name, Some(signer), settings)
    }

    fn build(
        base: &str,
        signer: Option<Box<dyn UrlSigner>>,
        settings: &NetworkSettings,
    ) -> Result<Self, Error> {
        let refused = |reason: String| Error::Refused {
            location: base.to_owned(),
            reason,
        };
        // The process's TLS provider: ring. Installing it twice is harmless
        // (the second attempt reports that one is there).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .user_agent(concat!("boxcar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| refused(format!("setting up the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::local("starting the HTTP runtime", e))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
            runtime,
            read_timeout: settings.read_timeout,
            signer,
        })
    }

    fn no_data(&self, url: &str) -> Error {
        Error::Unavailable {
            location: url.to_owned(),
            reason: format!("no data for {}s", self.read_timeout.as_secs()),
        }
    }
}

impl Transport for HttpTransport {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn identity(&self) -> String {
        match reqwest::Url::parse(&self.base) {
            Ok(url) => url.as_str().trim_end_matches('/').to_owned(),
            Err(_) => self.base.clone(),
        }
    }

    fn location(&self, path: &str) -> String {
        format!("{}/{path}", self.base.trim_end_matches('/'))
    }

    fn open(&self, path: &str, from: u64) -> Result<Body<'_>, Error> {
        layout::check_path(path)?;
        let url = self.location(path);
        let fetched = match &self.signer {
            Some(signer) => signer.url(path),
            None => url.clone(),
        };
        let mut request = self.client.get(&fetched);
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(self.read_timeout, request.send()).await })
            .map_err(|_| self.no_data(&url))?
            .map_err(|e| {
                if e.is_timeout() {
                    self.no_data(&url)
                } else {
                    unavailable(&url, &e)
                }
            })?;
        let status = response.status();
        let resume = match status {
            reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE => {
                return Err(Error::NotFound {
                    location: url,
                    detail: format!("HTTP {}", status.as_u16()),
                })
            }
            reqwest::StatusCode::PARTIAL_CONTENT if from > 0 => {
                if range_start(&response) == Some(from) {
                    Resume::Honoured
                } else {
                    Resume::Refused("the server resumed at the wrong place".into())
                }
            }
            reqwest::StatusCode::RANGE_NOT_SATISFIABLE => {
                Resume::Refused("the server refused to resume".into())
            }
            status if status.is_success() && from > 0 => Resume::FromStart,
            status if status.is_success() => Resume::Honoured,
            status
                if status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                return Err(Error::Unavailable {
                    location: url,
                    reason: format!("the server answered {status}"),
                })
            }
            status => {
                return Err(Error::Refused {
                    location: url,
                    reason: format!("the server answered {status}"),
                })
            }
        };
        let length = response.content_length();
        Ok(Body::new(
            resume,
            length,
            Box::new(HttpChunks {
                transport: self,
                response,
                url,
            }),
        ))
    }
}

/// Where a 206 answer says its bytes start.
fn range_start(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

struct HttpChunks<'a> {
    transport: &'a HttpTransport,
    response: reqwest::Response,
    url: String,
}

impl Chunks for HttpChunks<'_> {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let transport = self.transport;
        let piece = transport.runtime.block_on(async {
            tokio::time::timeout(transport.read_timeout, self.response.chunk()).await
        });
        match piece {
            Err(_) => Err(transport.no_data(&self.url)),
            Ok(Err(e)) if e.is_timeout() => Err(transport.no_data(&self.url)),
            Ok(Err(e)) => Err(unavailable(&self.url, &e)),
            Ok(Ok(chunk)) => Ok(chunk.map(|bytes| bytes.to_vec())),
        }
    }
}

/// A request that failed on the way (connecting, a closed connection): it
/// may pass. The message carries the error's whole chain, once.
fn unavailable(url: &str, error: &reqwest::Error) -> Error {
    Error::Unavailable {
        location: url.to_owned(),
        reason: crate::error::with_causes(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ignores_spelling() {
        let settings = NetworkSettings::default();
        let a = HttpTransport::new("HTTP://Example.ORG:80/boxcar/", &settings).unwrap();
        let b = HttpTransport::new("http://example.org/boxcar", &settings).unwrap();
        assert_eq!(a.identity(), b.identity());
        assert_eq!(
            b.location("index.json"),
            "http://example.org/boxcar/index.json"
        );
    }
}
