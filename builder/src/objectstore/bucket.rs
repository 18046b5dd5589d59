//! The requests a writer sends to an S3-compatible bucket: each one signed
//! by rusty-s3 (query-string signatures, so the body is never hashed twice)
//! and sent with a deadline. Answers are sorted into what the store logic
//! needs to tell apart: written, "the condition did not hold", not there.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use boxcar_signing::Sha256Digest;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2, ListParts};
use rusty_s3::{Credentials, S3Action, UrlStyle};

use super::location::S3Location;

/// How long a signed URL stays valid: far longer than any one request.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// The largest object read whole into memory (documents, upload records).
const SMALL_OBJECT_LIMIT: u64 = 16 << 20;
/// How many times a request that changes nothing (a read, a listing, a
/// delete) is sent when the server fails it in a way that may pass: a 5xx
/// answer (S3 asks clients to retry 500 and 503 "slow down") or a
/// connection that could not be made. Not a request that ran out of time:
/// its deadline is long enough for a whole upload, and a hung server would
/// hold the writer four times as long. Conditional writes are sent once: a
/// write the server applied but whose answer was lost would come back as a
/// failed condition, a conflict that is not one.
const IDEMPOTENT_TRIES: u32 = 4;
/// The pause before the second try, doubling for each one after.
const FIRST_PAUSE: Duration = Duration::from_millis(200);

/// What a conditional write asks of the object already at the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Write whatever is there.
    None,
    /// Write only if nothing is there (`If-None-Match: *`).
    CreateOnly,
    /// Write only if the object there has this ETag (`If-Match`).
    IfMatch(String),
}

/// What a conditional write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written; the new object's ETag.
    Done(String),
    /// The condition did not hold: another writer got there first.
    ConditionFailed,
}

/// An object's head: its ETag, size and the sha256 a writer recorded.
#[derive(Clone, Debug)]
pub struct Head {
    pub etag: String,
    pub size: u64,
    pub sha256: Option<String>,
}

/// An object read whole.
#[derive(Clone, Debug)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: String,
}

/// One entry of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The key, with the store's prefix taken off.
    pub path: String,
    pub last_modified: Option<String>,
}

/// The metadata key under which a writer records an object's sha256.
const SHA256_META: &str = "x-amz-meta-sha256";

/// A bucket and prefix, with the credentials to write to it.
pub struct Bucket {
    location: S3Location,
    bucket: rusty_s3::Bucket,
    credentials: Credentials,
    http: Client,
}

impl Bucket {
    pub fn new(location: S3Location) -> Result<Self> {
        let credentials = location.credentials.clone();
        let style = if location.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = rusty_s3::Bucket::new(
            location.endpoint.clone(),
            style,
            location.bucket.clone(),
            location.region.clone(),
        )
        .with_context(|| format!("the bucket {} at {}", location.bucket, location.endpoint))?;
        // TLS through the same provider as the client library (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(15))
            // A part is at most 64 MiB: ten minutes is a 100 kB/s link.
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("boxcar/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("setting up the HTTP client")?;
        Ok(Self {
            location,
            bucket,
            credentials,
            http,
        })
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// The object key of a store path.
    pub fn key(&self, path: &str) -> String {
        format!("{}{path}", self.location.prefix)
    }

    /// A signed URL that reads `path` with a plain GET (what the store's
    /// reader fetches).
    pub fn signed_get(&self, path: &str) -> String {
        let key = self.key(path);
        self.bucket
            .get_object(Some(&self.credentials), &key)
            .sign(SIGNED_FOR)
            .to_string()
    }

    /// Writes `bytes` as `path` if `condition` holds, recording their
    /// sha256 in the object's metadata.
    pub fn put(&self, path: &str, bytes: Vec<u8>, condition: &Condition) -> Result<Written> {
        let sha256 = boxcar_signing::sha256_bytes(&bytes).to_string();
        let key = self.key(path);
        let mut action = self.bucket.put_object(Some(&self.credentials), &key);
        action.headers_mut().insert(SHA256_META, sha256.clone());
        add_condition(action.headers_mut(), condition);
        let request = self
            .http
            .put(action.sign(SIGNED_FOR))
            .header(reqwest::header::CONTENT_LENGTH, bytes.len())
            .header(SHA256_META, sha256)
            .body(bytes);
        self.written(path, with_condition(request, condition).send())
    }

    /// A GET of the object at `path` under way; `None` if there is none.
    fn open(&self, path: &str) -> Result<Option<Response>> {
        let key = self.key(path);
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &key)
            .sign(SIGNED_FOR);
        self.answer(path, resent(|| self.http.get(url.clone()).send()))
    }

    /// The object at `path`, read whole; `None` if there is none.
    pub fn get(&self, path: &str) -> Result<Option<Object>> {
        let Some(response) = self.open(path)? else {
            return Ok(None);
        };
        let etag = etag_of(&response);
        if response.content_length().unwrap_or(0) > SMALL_OBJECT_LIMIT {
            bail!("{} is larger than any document", self.describe(path));
        }
        let bytes = response
            .bytes()
            .with_context(|| format!("reading {}", self.describe(path)))?;
        Ok(Some(Object {
            bytes: bytes.to_vec(),
            etag,
        }))
    }

    /// Streams the object at `path` into `file` (created new by the caller);
    /// returns the sha256 and size of what arrived, and the sha256 the
    /// writer recorded in its metadata.
    pub fn download(
        &self,
        path: &str,
        file: &mut std::fs::File,
    ) -> Result<(Sha256Digest, u64, Option<String>)> {
        use std::io::{Seek, Write};
        let (sha256, size, recorded) = self
            .stream(path, |chunk| {
                if chunk.iter().all(|&b| b == 0) {
                    // Disk images are mostly zeros: leave holes.
                    file.seek(std::io::SeekFrom::Current(chunk.len() as i64))?;
                } else {
                    file.write_all(chunk)?;
                }
                Ok(())
            })?
            .with_context(|| format!("{} is not there", self.describe(path)))?;
        file.set_len(size)?;
        file.sync_all()?;
        Ok((sha256, size, recorded))
    }

    /// The sha256 and size of the bytes the object at `path` holds, read
    /// and hashed here: unlike its metadata, which any writer sets, they
    /// cannot claim what they are not. `None` if there is no object.
    pub fn digest(&self, path: &str) -> Result<Option<(Sha256Digest, u64)>> {
        Ok(self
            .stream(path, |_| Ok(()))?
            .map(|(sha256, size, _)| (sha256, size)))
    }

    /// Reads the object at `path` in chunks handed to `sink`, hashing them;
    /// its sha256, size and recorded sha256, or `None` if there is none.
    fn stream(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<Option<(Sha256Digest, u64, Option<String>)>> {
        use std::io::Read;
        let Some(mut response) = self.open(path)? else {
            return Ok(None);
        };
        let recorded = recorded_sha256(&response);
        let mut hasher = boxcar_signing::Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = response
                .read(&mut buffer)
                .with_context(|| format!("downloading {}", self.describe(path)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            sink(&buffer[..n]).with_context(|| format!("storing {}", self.describe(path)))?;
        }
        let (sha256, size) = hasher.finish();
        Ok(Some((sha256, size, recorded)))
    }

    /// The head of the object at `path`; `None` if there is none.
    pub fn head(&self, path: &str) -> Result<Option<Head>> {
        let key = self.key(path);
        let url = self
            .bucket
            .head_object(Some(&self.credentials), &key)
            .sign(SIGNED_FOR);
        Ok(self
            .answer(path, resent(|| self.http.head(url.clone()).send()))?
            .map(|response| Head {
                etag: etag_of(&response),
                size: response.content_length().unwrap_or(0),
                sha256: recorded_sha256(&response),
            }))
    }

    /// Deletes the object at `path` (nothing there is not an error).
    pub fn delete(&self, path: &str) -> Result<()> {
        let key = self.key(path);
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), &key)
            .sign(SIGNED_FOR);
        self.answer(path, resent(|| self.http.delete(url.clone()).send()))?;
        Ok(())
    }

    /// Every object under `path_prefix`, in key order.
    pub fn list(&self, path_prefix: &str) -> Result<Vec<Listed>> {
        let prefix = self.key(path_prefix);
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            action.with_prefix(prefix.clone());
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let response = self.send(path_prefix, resent(|| self.http.get(url.clone()).send()))?;
            let text = self.success(path_prefix, response)?.text()?;
            let page = ListObjectsV2::parse_response(&text).map_err(|e| {
                anyhow!("{}: an unreadable listing: {e}", self.describe(path_prefix))
            })?;
            for object in page.contents {
                let Some(path) = object.key.strip_prefix(&self.location.prefix) else {
                    continue;
                };
                listed.push(Listed {
                    path: path.to_owned(),
                    last_modified: object.last_modified,
                });
            }
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(listed)
    }

    /// Starts a multipart upload of `path`; returns its upload id.
    pub fn create_multipart(&self, path: &str, sha256: &Sha256Digest) -> Result<String> {
        let sha256 = sha256.to_string();
        let key = self.key(path);
        let mut action = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), &key);
        action.headers_mut().insert(SHA256_META, sha256.clone());
        let request = self
            .http
            .post(action.sign(SIGNED_FOR))
            .header(SHA256_META, sha256);
        let response = self.send(path, request.send())?;
        let text = self.success(path, response)?.text()?;
        let parsed = CreateMultipartUpload::parse_response(&text)
            .map_err(|e| anyhow!("{}: an unreadable answer: {e}", self.describe(path)))?;
        Ok(parsed.upload_id().to_owned())
    }

    /// Uploads part `number` (from 1) of an upload; returns its ETag.
    pub fn upload_part(
        &self,
        path: &str,
        upload_id: &str,
        number: u16,
        bytes: Vec<u8>,
    ) -> Result<String> {
        let key = self.key(path);
        let action = self
            .bucket
            .upload_part(Some(&self.credentials), &key, number, upload_id);
        let request = self
            .http
            .put(action.sign(SIGNED_FOR))
            .header(reqwest::header::CONTENT_LENGTH, bytes.len())
            .body(bytes);
        let response = self.send(path, request.send())?;
        Ok(etag_of(&self.success(path, response)?))
    }

    /// The parts an upload holds, as (number, ETag, size); `None` if the
    /// server no longer knows the upload (completed, aborted, expired).
    pub fn list_parts(
        &self,
        path: &str,
        upload_id: &str,
    ) -> Result<Option<Vec<(u16, String, u64)>>> {
        let key = self.key(path);
        let mut parts = Vec::new();
        let mut marker: Option<u16> = None;
        loop {
            let mut action = ListParts::new(&self.bucket, Some(&self.credentials), &key, upload_id);
            if let Some(marker) = marker {
                action.set_part_number_marker(marker);
            }
            let url = action.sign(SIGNED_FOR);
            let Some(response) = self.answer(path, resent(|| self.http.get(url.clone()).send()))?
            else {
                return Ok(None);
            };
            let text = response.text()?;
            // Read leniently: servers differ in namespaces and field order.
            let page = PartList::parse(&text)
                .with_context(|| format!("{}: an unreadable part list", self.describe(path)))?;
            parts.extend(page.parts);
            match page.next_marker {
                Some(next) if page.truncated && next > marker.unwrap_or(0) => marker = Some(next),
                _ => break,
            }
        }
        Ok(Some(parts))
    }

    /// Completes an upload from its parts' ETags, in order, if `condition`
    /// holds for the object it makes.
    pub fn complete_multipart(
        &self,
        path: &str,
        upload_id: &str,
        etags: &[String],
        condition: &Condition,
    ) -> Result<Written> {
        let key = self.key(path);
        let mut action = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            &key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        add_condition(action.headers_mut(), condition);
        let url = action.sign(SIGNED_FOR);
        let request = self.http.post(url).body(action.body());
        self.written(path, with_condition(request, condition).send())
    }

    /// Gives up an upload, freeing its parts.
    pub fn abort_multipart(&self, path: &str, upload_id: &str) -> Result<()> {
        let key = self.key(path);
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), &key, upload_id)
            .sign(SIGNED_FOR);
        self.answer(path, self.http.delete(url).send())?;
        Ok(())
    }

    /// `s3://bucket/prefix/path`, for messages.
    pub fn describe(&self, path: &str) -> String {
        format!("{}{path}", self.location.describe())
    }

    fn send(&self, path: &str, sent: reqwest::Result<Response>) -> Result<Response> {
        sent.map_err(|e| {
            anyhow!(
                "{}: {}",
                self.describe(path),
                boxcar_client::error::with_causes(&e)
            )
        })
    }

    /// A successful answer; `None` for "not there" (404).
    fn answer(&self, path: &str, sent: reqwest::Result<Response>) -> Result<Option<Response>> {
        let response = self.send(path, sent)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(self.success(path, response)?))
    }

    /// The answer of a write whose condition may fail.
    fn written(&self, path: &str, sent: reqwest::Result<Response>) -> Result<Written> {
        let response = self.send(path, sent)?;
        // 409 is AWS's answer to a conditional write racing another one.
        if matches!(
            response.status(),
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT
        ) {
            return Ok(Written::ConditionFailed);
        }
        let response = self.success(path, response)?;
        let etag = etag_of(&response);
        // A completed multipart upload can answer 200 with an error inside.
        if etag.is_empty() {
            let text = response.text().unwrap_or_default();
            return answer_in_body(&text).with_context(|| {
                format!(
                    "{}: the server failed the request: {}",
                    self.describe(path),
                    shorten(&text)
                )
            });
        }
        Ok(Written::Done(etag))
    }

    fn success(&self, path: &str, response: Response) -> Result<Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().unwrap_or_default();
        bail!(
            "{}: the server answered {status}{}",
            self.describe(path),
            if text.is_empty() {
                String::new()
            } else {
                format!(": {}", shorten(&text))
            }
        )
    }
}

/// Sends a request that changes nothing on the server (see
/// [`IDEMPOTENT_TRIES`]) until it gets an answer that is not a failure that
/// may pass, or runs out of tries; returns the last outcome.
fn resent(send: impl Fn() -> reqwest::Result<Response>) -> reqwest::Result<Response> {
    let mut pause = FIRST_PAUSE;
    for _ in 1..IDEMPOTENT_TRIES {
        let sent = send();
        let may_pass = match &sent {
            Ok(response) => response.status().is_server_error(),
            Err(error) => error.is_connect(),
        };
        if !may_pass {
            return sent;
        }
        std::thread::sleep(pause);
        pause *= 2;
    }
    send()
}

/// What the body of a successful write without an ETag header says: a
/// completed multipart upload's ETag, or the error some servers send with
/// a 200 (a failed condition, or `None` for any other error).
fn answer_in_body(text: &str) -> Option<Written> {
    let Ok(document) = roxmltree::Document::parse(text) else {
        return Some(Written::Done(String::new()));
    };
    let root = document.root_element();
    if root.tag_name().name() != "Error" {
        return Some(Written::Done(child_text(root, "ETag").unwrap_or_default()));
    }
    match child_text(root, "Code").as_deref() {
        Some("PreconditionFailed" | "ConditionalRequestConflict") => Some(Written::ConditionFailed),
        _ => None,
    }
}

/// The trimmed text of `node`'s first child element called `name`.
fn child_text(node: roxmltree::Node, name: &str) -> Option<String> {
    node.children()
        .find(|c| c.tag_name().name() == name)
        .and_then(|c| c.text())
        .map(str::trim)
        .map(str::to_owned)
}

/// One page of a ListParts answer.
struct PartList {
    parts: Vec<(u16, String, u64)>,
    truncated: bool,
    next_marker: Option<u16>,
}

impl PartList {
    fn parse(text: &str) -> Result<Self> {
        let document = roxmltree::Document::parse(text)?;
        let root = document.root_element();
        let mut parts = Vec::new();
        for part in root.children().filter(|c| c.tag_name().name() == "Part") {
            let number = child_text(part, "PartNumber").context("a part without a number")?;
            parts.push((
                number.parse()?,
                child_text(part, "ETag").unwrap_or_default(),
                child_text(part, "Size")
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or(0),
            ));
        }
        Ok(Self {
            parts,
            truncated: child_text(root, "IsTruncated").as_deref() == Some("true"),
            next_marker: child_text(root, "NextPartNumberMarker").and_then(|m| m.parse().ok()),
        })
    }
}

/// Adds the headers a condition signs.
fn add_condition(headers: &mut rusty_s3::Map<'_>, condition: &Condition) {
    match condition {
        Condition::None => {}
        Condition::CreateOnly => headers.insert("if-none-match", "*"),
        Condition::IfMatch(etag) => headers.insert("if-match", etag.clone()),
    }
}

/// Sends the condition headers [`add_condition`] signed.
fn with_condition(request: RequestBuilder, condition: &Condition) -> RequestBuilder {
    match condition {
        Condition::None => request,
        Condition::CreateOnly => request.header(reqwest::header::IF_NONE_MATCH, "*"),
        Condition::IfMatch(etag) => request.header(reqwest::header::IF_MATCH, etag),
    }
}

/// The sha256 a writer recorded in an object's metadata.
fn recorded_sha256(response: &Response) -> Option<String> {
    response
        .headers()
        .get(SHA256_META)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// An answer's ETag (empty if it has none).
fn etag_of(response: &Response) -> String {
    response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The first line or so of a server's error body.
fn shorten(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_upload_is_read_from_the_answer_body() {
        let done = r#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>boxcar</Bucket><Key>a</Key><ETag>&quot;3858f62230ac3c915f300c664312c11f-9&quot;</ETag>
</CompleteMultipartUploadResult>"#;
        assert_eq!(
            answer_in_body(done),
            Some(Written::Done(
                "\"3858f62230ac3c915f300c664312c11f-9\"".to_owned()
            ))
        );
        for code in ["PreconditionFailed", "ConditionalRequestConflict"] {
            let failed = format!("<Error><Code>{code}</Code><Message>no</Message></Error>");
            assert_eq!(answer_in_body(&failed), Some(Written::ConditionFailed));
        }
        let other =
            "<Error><Code>InternalError</Code><Message>PreconditionFailed</Message></Error>";
        assert_eq!(answer_in_body(other), None);
        assert_eq!(answer_in_body(""), Some(Written::Done(String::new())));
    }
}
