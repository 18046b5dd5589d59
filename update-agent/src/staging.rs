//! Getting an update's files onto the host: each compressed part is
//! downloaded (resumable, verified against release.json as it arrives),
//! then decompressed into systemd-sysupdate's source directory under the
//! name its transfer matches, verified again against the installed digest.
//! Nothing reaches that directory unverified, and [`clean`] empties it
//! whatever happened.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boxcar_client::fetch::part_file_name;
use boxcar_client::files::SpaceFor;
use boxcar_client::layout::SafeName;
use boxcar_client::Client;
use boxcar_signing::documents::{StoredFile, UpdateFile, UpdatePayload, UpdateRole};

use crate::paths::Paths;

/// An update's files, verified and in place for systemd-sysupdate.
#[derive(Debug)]
pub struct Staged {
    pub files: Vec<(UpdateRole, PathBuf)>,
    /// Bytes still to fetch when this run started (a resumed download
    /// counts only what it lacked).
    pub downloaded_bytes: u64,
    pub download_time: Duration,
    pub decompress_time: Duration,
}

impl Staged {
    pub fn path(&self, role: UpdateRole) -> Result<&Path> {
        self.files
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p.as_path())
            .with_context(|| format!("the update has no {role:?} part"))
    }
}

/// Downloads and stages `payload` of release `version`.
pub fn stage(
    client: &Client,
    paths: &Paths,
    version: &SafeName,
    payload: &UpdatePayload,
) -> Result<Staged> {
    let downloads = paths.downloads();
    let staging = paths.staging();
    for dir in [&downloads, &staging] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clean_dir(&staging)?;
    keep_only_partial_downloads_of(&downloads, payload)?;
    let needed = check_room(&downloads, &staging, payload)?;
    let mut staged = Staged {
        files: Vec::new(),
        downloaded_bytes: needed,
        download_time: Duration::ZERO,
        decompress_time: Duration::ZERO,
    };
    for file in &payload.files {
        let started = Instant::now();
        let stored = StoredFile {
            name: &file.name,
            size: file.size,
            sha256: file.sha256,
        };
        let fetched = client.fetch_file(version, stored, &downloads)?;
        staged.download_time += started.elapsed();
        let started = Instant::now();
        let path = decompress(&fetched.path, &staging, file)?;
        std::fs::remove_file(&fetched.path)
            .with_context(|| format!("removing {}", fetched.path.display()))?;
        staged.decompress_time += started.elapsed();
        staged.files.push((file.role, path));
    }
    Ok(staged)
}

/// Decompresses one verified part into the staging directory, checking
/// the result against the installed size and digest.
fn decompress(compressed: &Path, staging: &Path, file: &UpdateFile) -> Result<PathBuf> {
    if file.compression != "zstd" {
        bail!(
            "{} is compressed with {:?}, which this agent does not read",
            file.name,
            file.compression
        );
    }
    let name = SafeName::new("update file name", &file.installed_name)?;
    let target = staging.join(name.as_str());
    let partial = staging.join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let (sha256, size) =
        boxcar_client::decompress::zstd_sparse(compressed, &partial, file.installed_size)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("staging {}", file.installed_name))?;
    if (sha256, size) != (file.installed_sha256, file.installed_size) {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{} decompresses to {size} bytes with sha256 {sha256}, but the signed release says {} bytes with sha256 {}",
            file.name,
            file.installed_size,
            file.installed_sha256
        );
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    Ok(target)
}

/// Empties the staging directory and the downloads, keeping partial
/// downloads when `keep_partial` (a failure that may pass: the next check
/// resumes them).
pub fn clean(paths: &Paths, keep_partial: bool) -> Result<()> {
    clean_dir(&paths.staging())?;
    let downloads = paths.downloads();
    if !keep_partial {
        clean_dir(&downloads)?;
    } else if downloads.is_dir() {
        for entry in std::fs::read_dir(&downloads)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "part") {
                remove(&path)?;
            }
        }
    }
    Ok(())
}

fn clean_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        remove(&entry?.path())?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.with_context(|| format!("removing {}", path.display()))
}

/// Drops partial downloads that belong to another update.
fn keep_only_partial_downloads_of(downloads: &Path, payload: &UpdatePayload) -> Result<()> {
    let wanted: Vec<String> = payload
        .files
        .iter()
        .map(|f| part_file_name(&f.name))
        .collect();
    for entry in std::fs::read_dir(downloads)? {
        let entry = entry?;
        if !wanted.iter().any(|w| entry.file_name() == w.as_str()) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// Refuses to start unless the disks hold what is still to download and
/// the decompressed files beside it (counted whole, though written
/// sparsely); returns the bytes still to download. Filling /var would
/// also stop the containers that write there.
fn check_room(downloads: &Path, staging: &Path, payload: &UpdatePayload) -> Result<u64> {
    let to_download = still_to_download(downloads, payload);
    let decompressed: u64 = payload.files.iter().map(|f| f.installed_size).sum();
    let same_disk = device_of(downloads)? == device_of(staging)?;
    let needs = if same_disk {
        vec![(
            downloads,
            to_download + decompressed,
            "the download and its decompressed files",
        )]
    } else {
        vec![
            (downloads, to_download, "the download"),
            (staging, decompressed, "the decompressed files"),
        ]
    };
    for (dir, needed, what) in needs {
        let free = free_bytes(dir)?;
        if free < needed {
            bail!(
                "the staging disk is full: {} needs {needed} more bytes for {what} and has {free} free",
                dir.display()
            );
        }
    }
    Ok(to_download)
}

fn device_of(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .dev())
}

/// Bytes still to fetch, counting what partial downloads already hold.
fn still_to_download(downloads: &Path, payload: &UpdatePayload) -> u64 {
    payload
        .files
        .iter()
        .map(|f| {
            let have =
                std::fs::metadata(downloads.join(part_file_name(&f.name))).map_or(0, |m| m.len());
            f.size.saturating_sub(have)
        })
        .sum()
}

/// Bytes the agent (root) may still write on the file system of `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    Ok(boxcar_client::files::free_bytes(path, SpaceFor::Root)?)
}
