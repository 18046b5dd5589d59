//! `boxcar download`: fetch a verified image for a platform from a
//! channel, as an operator would.
//!
//! Nothing is trusted before its signature checks out against the pinned
//! keys: the channel document (and its expiry, and its serial against the
//! highest one this machine has seen), then release.json, whose digests
//! then judge every byte downloaded. A file is written as `NAME.part`,
//! hashed as it arrives, and renamed to `NAME` only when its size and
//! sha256 match; a mismatch removes it. An interrupted download resumes
//! from the `.part` with an HTTP Range request.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boxcar_signing::documents::{
    self, ChannelDocument, ExpirationEnforcement, IndexDocument, KeyringDocument, Kind,
    ReleaseArtifact, ReleaseDocument,
};
use boxcar_signing::{Hasher, Sha256Digest, TrustedKeys};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::progress::{Mode, Progress};

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct DownloadRequest {
    pub store: String,
    pub trusted: TrustedKeys,
    pub channel: Option<String>,
    pub version: Option<String>,
    pub platform: String,
    pub to: PathBuf,
    pub decompress: bool,
    pub network: NetworkSettings,
    /// Where the highest channel serials seen are remembered.
    pub state_file: PathBuf,
}

/// How patient to be with the network.
#[derive(Clone, Copy, Debug)]
pub struct NetworkSettings {
    /// Give up on a request that receives nothing for this long.
    pub read_timeout: Duration,
    /// Retries after a transient failure (connection lost, timeout, 5xx).
    pub retries: u32,
    /// The first wait before retrying; doubles each time, up to 30 s.
    pub backoff: Duration,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(30),
            retries: 5,
            backoff: Duration::from_secs(1),
        }
    }
}

/// One downloaded file.
#[derive(Debug, Serialize)]
pub struct DownloadedFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// Whether the file was already there, complete and verified.
    pub already_present: bool,
    /// Whether the download resumed an earlier, interrupted one.
    pub resumed: bool,
}

/// The outcome.
#[derive(Debug, Serialize)]
pub struct Downloaded {
    pub version: String,
    pub platform: String,
    pub channel: Option<String>,
    pub channel_serial: Option<u64>,
    pub usr_root_hash: String,
    pub files: Vec<DownloadedFile>,
    /// The decompressed disk image, with --decompress.
    pub decompressed: Option<PathBuf>,
}

/// A failed fetch, sorted by whether trying again can help.
#[derive(Debug)]
enum FetchError {
    NotFound(String),
    Transient(String),
    Permanent(anyhow::Error),
}

impl FetchError {
    fn into_error(self) -> anyhow::Error {
        match self {
            FetchError::NotFound(what) => {
                anyhow::anyhow!("{what}: not found (HTTP 404); not retried")
            }
            FetchError::Transient(why) => anyhow::anyhow!("{why}"),
            FetchError::Permanent(e) => e,
        }
    }
}

/// Reads from a store: a directory (or `file://`) or a web server.
pub struct Fetcher {
    source: Source,
    settings: NetworkSettings,
    progress: Progress,
}

enum Source {
    Local(PathBuf),
    Http {
        base: String,
        client: reqwest::Client,
        runtime: tokio::runtime::Runtime,
    },
}

impl Fetcher {
    pub fn new(location: &str, settings: NetworkSettings, progress: Progress) -> Result<Self> {
        let source = if location.starts_with("http://") || location.starts_with("https://") {
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(settings.read_timeout)
                .user_agent(concat!("boxcar/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("setting up the HTTP client")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the HTTP runtime")?;
            Source::Http {
                base: location.trim_end_matches('/').to_owned(),
                client,
                runtime,
            }
        } else if let Some(path) = location.strip_prefix("file://") {
            Source::Local(PathBuf::from(path))
        } else if location.contains("://") {
            bail!("{location}: only http://, https:// and file:// stores (or a directory) are supported");
        } else {
            Source::Local(PathBuf::from(location))
        };
        Ok(Self {
            source,
            settings,
            progress,
        })
    }

    fn location_of(&self, path: &str) -> String {
        match &self.source {
            Source::Local(root) => root.join(path).display().to_string(),
            Source::Http { base, .. } => format!("{base}/{path}"),
        }
    }

    /// A small file, retried on transient failures; `None` if not found.
    pub fn fetch_small(&self, path: &str) -> Result<Option<Vec<u8>>> {
        check_store_path(path)?;
        self.with_retries(path, || match &self.source {
            Source::Local(root) => match fs::read(root.join(path)) {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(FetchError::NotFound(self.location_of(path)))
                }
                Err(e) => Err(FetchError::Permanent(anyhow::anyhow!(
                    "reading {}: {e}",
                    self.location_of(path)
                ))),
            },
            Source::Http {
                client, runtime, ..
            } => {
                let url = self.location_of(path);
                runtime.block_on(async {
                    let response = client
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| transient(&url, &e))?;
                    let status = response.status();
                    if status == reqwest::StatusCode::NOT_FOUND {
                        return Err(FetchError::NotFound(url.clone()));
                    }
                    if status.is_server_error() {
                        return Err(FetchError::Transient(format!(
                            "{url}: the server answered {status}"
                        )));
                    }
                    if !status.is_success() {
                        return Err(FetchError::Permanent(anyhow::anyhow!(
                            "{url}: the server answered {status}"
                        )));
                    }
                    let bytes = response.bytes().await.map_err(|e| transient(&url, &e))?;
                    Ok(bytes.to_vec())
                })
            }
        })
        .map(Some)
        .or_else(|e| match e {
            FetchError::NotFound(_) => Ok(None),
            other => Err(other.into_error()),
        })
    }

    /// Retries `attempt` on transient failures, with a doubling backoff.
    fn with_retries<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut wait = self.settings.backoff;
        let mut tries = 0;
        loop {
            match attempt() {
                Err(FetchError::Transient(why)) if tries < self.settings.retries => {
                    tries += 1;
                    self.progress.note(&format!(
                        "{why}; retrying {what} in {:.1}s ({tries} of {})",
                        wait.as_secs_f64(),
                        self.settings.retries
                    ));
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                Err(FetchError::Transient(why)) if tries > 0 => {
                    return Err(FetchError::Transient(format!(
                        "{why} (gave up after {tries} retries)"
                    )))
                }
                other => return other,
            }
        }
    }

    /// Downloads `path` into `part`, resuming from what `part` holds, and
    /// checks the result against `expected`. Returns whether it resumed.
    fn download(&self, path: &str, part: &Path, expected: &ReleaseArtifact) -> Result<bool> {
        check_store_path(path)?;
        let mut resumed = false;
        let bar = self.progress.download_bar(&expected.name, expected.size);
        let result = self.with_retries(path, || {
            let mut state = PartFile::open(part).map_err(FetchError::Permanent)?;
            if state.len() > expected.size {
                state.truncate().map_err(FetchError::Permanent)?;
            }
            if state.len() > 0 && state.len() < expected.size {
                resumed = true;
            }
            bar.set_position(state.len());
            match &self.source {
                Source::Local(root) => copy_local(&root.join(path), &mut state, &bar),
                Source::Http { client, runtime, .. } => {
                    runtime.block_on(self.download_http(client, path, &mut state, expected.size, &bar))
                }
            }?;
            if state.len() < expected.size {
                return Err(FetchError::Transient(format!(
                    "{}: the connection closed after {} of {} bytes",
                    self.location_of(path),
                    state.len(),
                    expected.size
                )));
            }
            let (digest, size) = state.finish().map_err(FetchError::Permanent)?;
            if (digest, size) != (expected.sha256, expected.size) {
                let _ = fs::remove_file(part);
                return Err(FetchError::Permanent(anyhow::anyhow!(
                    "{} does not match the signed release: expected {} bytes with sha256 {}, got {size} bytes with sha256 {digest}; the download was removed",
                    self.location_of(path),
                    expected.size,
                    expected.sha256
                )));
            }
            Ok(())
        });
        bar.finish_and_clear();
        match result {
            Ok(()) => Ok(resumed),
            Err(FetchError::NotFound(url)) => {
                let _ = fs::remove_file(part);
                bail!("{url}: not found (HTTP 404); the store lists a file it does not have")
            }
            Err(e) => Err(e.into_error()),
        }
    }

    async fn download_http(
        &self,
        client: &reqwest::Client,
        path: &str,
        state: &mut PartFile,
        expected_size: u64,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), FetchError> {
        let url = self.location_of(path);
        let mut request = client.get(&url);
        let from = state.len();
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let mut response = request.send().await.map_err(|e| transient(&url, &e))?;
        let status = response.status();
        match status {
            reqwest::StatusCode::NOT_FOUND => return Err(FetchError::NotFound(url)),
            reqwest::StatusCode::PARTIAL_CONTENT if from > 0 => {
                let starts_at = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if starts_at != Some(from) {
                    state.truncate().map_err(FetchError::Permanent)?;
                    return Err(FetchError::Transient(format!(
                        "{url}: the server resumed at the wrong place"
                    )));
                }
            }
            reqwest::StatusCode::RANGE_NOT_SATISFIABLE => {
                state.truncate().map_err(FetchError::Permanent)?;
                return Err(FetchError::Transient(format!(
                    "{url}: the server refused to resume"
                )));
            }
            status if status.is_success() => {
                if from > 0 {
                    self.progress.note(&format!(
                        "{url}: the server ignored the range request; downloading from the start"
                    ));
                    state.truncate().map_err(FetchError::Permanent)?;
                    bar.set_position(0);
                }
            }
            status if status.is_server_error() => {
                return Err(FetchError::Transient(format!(
                    "{url}: the server answered {status}"
                )))
            }
            status => {
                return Err(FetchError::Permanent(anyhow::anyhow!(
                    "{url}: the server answered {status}"
                )))
            }
        }
        loop {
            let chunk = tokio::time::timeout(self.settings.read_timeout, response.chunk()).await;
            let chunk = match chunk {
                Err(_) => {
                    return Err(FetchError::Transient(format!(
                        "{url}: no data for {}s (at {} of {expected_size} bytes)",
                        self.settings.read_timeout.as_secs(),
                        state.len()
                    )))
                }
                Ok(Err(e)) if e.is_timeout() => {
                    return Err(FetchError::Transient(format!(
                        "{url}: no data for {}s (at {} of {expected_size} bytes)",
                        self.settings.read_timeout.as_secs(),
                        state.len()
                    )))
                }
                Ok(Err(e)) => {
                    return Err(FetchError::Transient(format!(
                        "{url}: the connection closed after {} of {expected_size} bytes ({e})",
                        state.len()
                    )))
                }
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(chunk))) => chunk,
            };
            if state.len() + chunk.len() as u64 > expected_size {
                let _ = state.truncate();
                return Err(FetchError::Permanent(anyhow::anyhow!(
                    "{url} is longer than the {expected_size} bytes the signed release gives; the download was removed"
                )));
            }
            state.append(&chunk).map_err(FetchError::Permanent)?;
            bar.set_position(state.len());
        }
    }
}

fn transient(url: &str, error: &reqwest::Error) -> FetchError {
    let mut message = format!("{url}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    FetchError::Transient(message)
}

fn check_store_path(path: &str) -> Result<()> {
    if path.split('/').any(|part| part.is_empty() || part == "..") {
        bail!("{path:?} is not a path inside a store");
    }
    Ok(())
}

/// A `.part` file and the running hash of what it holds.
struct PartFile {
    file: File,
    hasher: Hasher,
}

impl PartFile {
    /// Opens (or creates) the part file and hashes what it already holds.
    fn open(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok(Self { file, hasher })
    }

    fn len(&self) -> u64 {
        self.hasher.bytes()
    }

    fn truncate(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = Hasher::new();
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data)?;
        self.hasher.update(data);
        Ok(())
    }

    fn finish(self) -> Result<(Sha256Digest, u64)> {
        self.file.sync_all()?;
        Ok(self.hasher.finish())
    }
}

fn copy_local(
    source: &Path,
    state: &mut PartFile,
    bar: &indicatif::ProgressBar,
) -> Result<(), FetchError> {
    let mut file = match File::open(source) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FetchError::NotFound(source.display().to_string()))
        }
        Err(e) => {
            return Err(FetchError::Permanent(anyhow::anyhow!(
                "opening {}: {e}",
                source.display()
            )))
        }
    };
    file.seek(SeekFrom::Start(state.len()))
        .map_err(|e| FetchError::Permanent(e.into()))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| FetchError::Permanent(e.into()))?;
        if n == 0 {
            return Ok(());
        }
        state.append(&buffer[..n]).map_err(FetchError::Permanent)?;
        bar.set_position(state.len());
    }
}

/// The highest channel serial this machine has accepted, per store and
/// channel: a store that later offers a lower one is rolling back.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SeenSerials {
    channels: std::collections::BTreeMap<String, u64>,
}

impl SeenSerials {
    fn load(path: &Path) -> Result<Self> {
        match fs::read_to_string(path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let temp = path.with_extension("tmp");
        fs::write(&temp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&temp, path)?;
        Ok(())
    }

    fn key(store: &str, channel: &str) -> String {
        format!("{} {channel}", store.trim_end_matches('/'))
    }
}

/// Where this machine remembers channel serials by default.
pub fn default_state_file() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("boxcar/seen-serials.json");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/") {
        Some(home) => PathBuf::from(home).join(".local/state/boxcar/seen-serials.json"),
        None => PathBuf::from("/var/lib/boxcar/seen-serials.json"),
    }
}

/// Fetches and checks a signed document.
fn fetch_signed<T: serde::de::DeserializeOwned>(
    fetcher: &Fetcher,
    path: &str,
    trusted: &TrustedKeys,
    kind: Kind,
    subject: &str,
) -> Result<(T, Sha256Digest)> {
    let bytes = fetcher
        .fetch_small(path)?
        .with_context(|| format!("{} does not exist", fetcher.location_of(path)))?;
    let signature = fetcher
        .fetch_small(&format!("{path}.minisig"))?
        .with_context(|| format!("{} has no signature", fetcher.location_of(path)))?;
    let (document, _) = documents::verify(
        &bytes,
        &String::from_utf8_lossy(&signature),
        trusted,
        kind,
        subject,
        path,
    )
    .with_context(|| format!("checking {}", fetcher.location_of(path)))?;
    Ok((document, boxcar_signing::sha256_reader(&bytes[..])?.0))
}

/// Pinned keys plus those a keyring the pinned keys signed introduces.
fn trust(fetcher: &Fetcher, pinned: &TrustedKeys) -> Result<TrustedKeys> {
    let mut trusted = pinned.clone();
    if let (Some(bytes), Some(signature)) = (
        fetcher.fetch_small("keys.json")?,
        fetcher.fetch_small("keys.json.minisig")?,
    ) {
        KeyringDocument::extend_trust(&bytes, &String::from_utf8_lossy(&signature), &mut trusted)
            .context("checking keys.json")?;
    }
    Ok(trusted)
}

/// The signed index (every release and channel).
pub fn fetch_index(fetcher: &Fetcher, pinned: &TrustedKeys) -> Result<IndexDocument> {
    let trusted = trust(fetcher, pinned)?;
    Ok(fetch_signed(fetcher, "index.json", &trusted, Kind::Index, "index")?.0)
}

/// Downloads and verifies one platform's artifact.
pub fn download(request: &DownloadRequest, progress: &Progress) -> Result<Downloaded> {
    let fetcher = Fetcher::new(&request.store, request.network, progress.clone())?;
    let trusted = trust(&fetcher, &request.trusted)?;
    let now = OffsetDateTime::now_utc();

    // The index, signed separately, also records each channel's serial: a
    // channel document behind it is a rollback even on a first download.
    let (index, _): (IndexDocument, _) =
        fetch_signed(&fetcher, "index.json", &trusted, Kind::Index, "index")?;
    let mut channel_serial = None;
    let (version, expected_release) = match (&request.channel, &request.version) {
        (Some(channel), version) => {
            let (doc, _): (ChannelDocument, _) = fetch_signed(
                &fetcher,
                &format!("channels/{channel}.json"),
                &trusted,
                Kind::Channel,
                channel,
            )?;
            doc.check_expiry(now, ExpirationEnforcement::Enforce)?;
            doc.check_history()?;
            let mut seen = SeenSerials::load(&request.state_file)?;
            let key = SeenSerials::key(&request.store, channel);
            let indexed = index
                .channels
                .iter()
                .find(|c| &c.name == channel)
                .map(|c| c.serial);
            let highest_seen = seen.channels.get(&key).copied().max(indexed);
            doc.check_serial(highest_seen)?;
            seen.channels.insert(key, doc.serial);
            seen.save(&request.state_file)?;
            channel_serial = Some(doc.serial);
            match version {
                None => (doc.version.clone(), doc.release_sha256),
                Some(version) => {
                    let entry = doc.history.iter().rev().find(|e| &e.version == version).with_context(|| {
                        format!("channel {channel} has never carried {version}; see `boxcar download --list --channel {channel}`")
                    })?;
                    (version.clone(), entry.release_sha256)
                }
            }
        }
        (None, Some(version)) => {
            let entry = index
                .releases
                .iter()
                .find(|r| &r.version == version)
                .with_context(|| {
                    format!("the store has no release {version}; see `boxcar download --list`")
                })?;
            (version.clone(), entry.release_sha256)
        }
        (None, None) => bail!("name a --channel (its current release) or a --version"),
    };
    crate::store::check_version_name(&version)?;
    let (release, release_sha256): (ReleaseDocument, _) = fetch_signed(
        &fetcher,
        &format!("releases/{version}/release.json"),
        &trusted,
        Kind::Release,
        &version,
    )?;
    if release_sha256 != expected_release {
        bail!(
            "releases/{version}/release.json has sha256 {release_sha256}, but the signed channel or index says {expected_release}"
        );
    }
    let artifacts: Vec<&ReleaseArtifact> = release
        .artifacts
        .iter()
        .filter(|a| a.platform == request.platform)
        .collect();
    if artifacts.is_empty() {
        bail!(
            "release {version} has no artifact for platform {}; it has: {}",
            request.platform,
            release.platforms().join(", ")
        );
    }
    fs::create_dir_all(&request.to)
        .with_context(|| format!("creating {}", request.to.display()))?;
    let mut files = Vec::new();
    for artifact in artifacts {
        files.push(fetch_artifact(&fetcher, &version, artifact, &request.to)?);
    }
    let decompressed = if request.decompress {
        decompress_if_compressed(&files, progress)?
    } else {
        None
    };
    Ok(Downloaded {
        version,
        platform: request.platform.clone(),
        channel: request.channel.clone(),
        channel_serial,
        usr_root_hash: release.usr_root_hash,
        files,
        decompressed,
    })
}

fn fetch_artifact(
    fetcher: &Fetcher,
    version: &str,
    artifact: &ReleaseArtifact,
    to: &Path,
) -> Result<DownloadedFile> {
    if artifact.name.contains('/') || artifact.name.starts_with('.') {
        bail!(
            "release.json names the file {:?}, which is not a plain file name",
            artifact.name
        );
    }
    let target = to.join(&artifact.name);
    if target.exists() {
        let (sha256, size) = boxcar_signing::sha256_file(&target)?;
        if (sha256, size) == (artifact.sha256, artifact.size) {
            return Ok(DownloadedFile {
                path: target,
                size,
                sha256,
                already_present: true,
                resumed: false,
            });
        }
        bail!(
            "{} exists and is not the signed file (sha256 {sha256}); move it away first",
            target.display()
        );
    }
    let part = to.join(format!("{}.part", artifact.name));
    let started = Instant::now();
    let resumed = fetcher.download(
        &format!("releases/{version}/{}", artifact.name),
        &part,
        artifact,
    )?;
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    fetcher.progress.note(&format!(
        "{}: {} in {seconds:.1}s ({}/s), sha256 verified",
        artifact.name,
        crate::units::human_bytes(artifact.size),
        crate::units::human_bytes((artifact.size as f64 / seconds) as u64)
    ));
    fs::rename(&part, &target)
        .with_context(|| format!("renaming {} to {}", part.display(), target.display()))?;
    Ok(DownloadedFile {
        path: target,
        size: artifact.size,
        sha256: artifact.sha256,
        already_present: false,
        resumed,
    })
}

/// With --decompress: a verified `.zst` becomes the raw image next to it
/// (written sparsely), and the compressed file goes.
fn decompress_if_compressed(
    files: &[DownloadedFile],
    progress: &Progress,
) -> Result<Option<PathBuf>> {
    let Some(file) = files
        .iter()
        .find(|f| f.path.extension().is_some_and(|e| e == "zst"))
    else {
        progress.note("nothing to decompress: the artifact is not a compressed raw image");
        return Ok(None);
    };
    let target = file.path.with_extension("");
    let part = target.with_extension("raw.part");
    let source = File::open(&file.path)?;
    let mut decoder = zstd::stream::read::Decoder::new(source)
        .with_context(|| format!("reading {}", file.path.display()))?;
    let mut out = File::create(&part)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let started = Instant::now();
    loop {
        let n = decoder
            .read(&mut buffer)
            .with_context(|| format!("decompressing {}", file.path.display()))?;
        if n == 0 {
            break;
        }
        if buffer[..n].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buffer[..n])?;
        }
        written += n as u64;
    }
    out.set_len(written)?;
    out.sync_all()?;
    fs::rename(&part, &target)?;
    fs::remove_file(&file.path)?;
    progress.note(&format!(
        "decompressed to {} ({}) in {:.1}s",
        target.display(),
        crate::units::human_bytes(written),
        started.elapsed().as_secs_f64()
    ));
    Ok(Some(target))
}

/// Progress for downloads.
impl Progress {
    /// A byte bar with rate and ETA on a terminal; a line every few seconds
    /// in plain mode; nothing when quiet.
    pub fn download_bar(&self, name: &str, total: u64) -> indicatif::ProgressBar {
        match self.mode() {
            Mode::Terminal => {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(name.to_owned());
                bar
            }
            Mode::Plain => {
                let bar = indicatif::ProgressBar::with_draw_target(
                    Some(total),
                    indicatif::ProgressDrawTarget::term_like_with_hz(
                        Box::new(PlainLines::new(name)),
                        1,
                    ),
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bytes}/{total_bytes} ({percent}%) {binary_bytes_per_sec}",
                    )
                    .expect("valid template"),
                );
                bar
            }
            Mode::Quiet => indicatif::ProgressBar::hidden(),
        }
    }
}

/// Draws a progress bar as one plain line per update (for logs), at most
/// every few seconds.
#[derive(Debug)]
struct PlainLines {
    name: String,
    last: std::sync::Mutex<Option<Instant>>,
}

impl PlainLines {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            last: std::sync::Mutex::new(None),
        }
    }
}

impl indicatif::TermLike for PlainLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        self.write_str(line)
    }
    fn write_str(&self, text: &str) -> std::io::Result<()> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().expect("progress lock");
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            eprintln!("    {}: {text}", self.name);
            *last = Some(Instant::now());
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_serials_round_trip_and_key_by_store_and_channel() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("state/seen.json");
        let mut seen = SeenSerials::load(&path).unwrap();
        seen.channels
            .insert(SeenSerials::key("https://x/", "stable"), 7);
        seen.save(&path).unwrap();
        let again = SeenSerials::load(&path).unwrap();
        assert_eq!(
            again.channels.get(&SeenSerials::key("https://x", "stable")),
            Some(&7)
        );
    }

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

    #[test]
    fn store_paths_cannot_escape() {
        assert!(check_store_path("releases/1/x").is_ok());
        for bad in ["../x", "releases//x", "/etc/passwd"] {
            assert!(check_store_path(bad).is_err(), "{bad}");
        }
    }
}
