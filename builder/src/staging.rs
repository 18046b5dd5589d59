//! Handing a build from one CI job to the next through object storage
//! (`boxcar stage push` and `pull`), so the jobs of a pipeline share no
//! disk: the build job pushes the build to a staging prefix, each platform's
//! boot-test job pulls build.json and that platform's artifacts and pushes
//! its evidence back, the publish job pulls everything.
//!
//! Every file pulled is checked: artifacts and update parts against the
//! digests build.json records, everything else against the sha256 its
//! pusher recorded on the object. Pushing replaces what is staged (a
//! retried job writes its outputs again); large files go up in resumable
//! parts, as a publish's do.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use boxcar_client::fetch::part_file_name;
use boxcar_client::files;
use boxcar_client::layout::SafeName;
use boxcar_signing::Sha256Digest;
use serde::Serialize;

use crate::objectstore::{put_file, Bucket, Existing, S3Location, S3Options};
use crate::platform::PlatformId;
use crate::records::buildinfo::{BuildInfo, BUILD_JSON};

const EVIDENCE_DIR: &str = "evidence";

/// Which files of a build to move.
#[derive(Clone, Debug)]
pub enum Selection {
    /// build.json, every artifact and update part, and (pulling) the
    /// evidence the boot-test jobs pushed. A build is pushed without its
    /// evidence: each boot-test job makes and pushes its own.
    Everything,
    /// build.json and one platform's artifacts (what its boot test needs).
    Platform(PlatformId),
    /// One platform's boot-test evidence (what its boot test made).
    Evidence(PlatformId),
}

/// One file moved.
#[derive(Debug, Serialize)]
pub struct Moved {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// A staging prefix, `s3://BUCKET/PREFIX`.
pub struct Staging {
    bucket: Bucket,
}

impl Staging {
    pub fn open(location: &str, options: &S3Options) -> Result<Self> {
        Ok(Self {
            bucket: Bucket::new(S3Location::parse(location, options)?)?,
        })
    }

    pub fn describe(&self) -> String {
        self.bucket.location().describe()
    }

    /// Pushes the selected files of the build in `build_dir`.
    pub fn push(
        &self,
        build_dir: &Path,
        selection: &Selection,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<Moved>> {
        let names = match selection {
            Selection::Evidence(platform) => evidence_files(build_dir, platform)?,
            _ => {
                let build = BuildInfo::load(build_dir)?;
                let files = build_files(&build, selection.platform());
                let mut names = vec![BUILD_JSON.to_owned()];
                names.extend(files.into_iter().map(|(name, _)| name));
                names
            }
        };
        let mut moved = Vec::new();
        for name in names {
            progress(&name);
            let source = inside(build_dir, &name)?;
            let put = put_file(&self.bucket, &name, &source, Existing::Replace, &|_| {})
                .with_context(|| format!("staging {}", source.display()))?;
            moved.push(Moved {
                name,
                size: put.size,
                sha256: put.sha256,
            });
        }
        Ok(moved)
    }

    /// Pulls the selected files into `build_dir` (created if needed),
    /// build.json first, each file checked.
    pub fn pull(
        &self,
        build_dir: &Path,
        selection: &Selection,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<Moved>> {
        fs::create_dir_all(build_dir)
            .with_context(|| format!("creating {}", build_dir.display()))?;
        let mut moved = Vec::new();
        // Artifacts and update parts are checked against build.json's
        // digests, evidence against what its pusher recorded.
        let mut files: Vec<(String, Option<Sha256Digest>)> = Vec::new();
        if !matches!(selection, Selection::Evidence(_)) {
            moved.push(self.pull_file(build_dir, BUILD_JSON, None)?);
            let build = BuildInfo::load(build_dir)?;
            let recorded = build_files(&build, selection.platform());
            files.extend(
                recorded
                    .into_iter()
                    .map(|(name, sha256)| (name, Some(sha256))),
            );
        }
        let evidence = match selection {
            Selection::Everything => self.staged_evidence(None)?,
            Selection::Evidence(platform) => self.staged_evidence(Some(platform))?,
            Selection::Platform(_) => Vec::new(),
        };
        files.extend(evidence.into_iter().map(|name| (name, None)));
        for (name, want) in files {
            progress(&name);
            moved.push(self.pull_file(build_dir, &name, want)?);
        }
        Ok(moved)
    }

    /// The evidence files staged (for one platform, or all).
    fn staged_evidence(&self, platform: Option<&PlatformId>) -> Result<Vec<String>> {
        let prefix = match platform {
            Some(platform) => format!("{EVIDENCE_DIR}/{platform}/"),
            None => format!("{EVIDENCE_DIR}/"),
        };
        Ok(self
            .bucket
            .list(&prefix)?
            .into_iter()
            .map(|listed| listed.path)
            .collect())
    }

    /// Downloads one file new and checks it against `want` (build.json's
    /// digest) or else the digest its pusher recorded.
    fn pull_file(&self, build_dir: &Path, name: &str, want: Option<Sha256Digest>) -> Result<Moved> {
        let target = inside(build_dir, name)?;
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let partial = target.with_file_name(part_file_name(
            &target.file_name().expect("a file name").to_string_lossy(),
        ));
        let _ = fs::remove_file(&partial);
        let mut file = files::create_new(&partial, 0o644)?;
        let (sha256, size, recorded) = self.bucket.download(name, &mut file)?;
        let expected = want.map(|d| d.to_string()).or(recorded).with_context(|| {
            format!("{} records no sha256 to check", self.bucket.describe(name))
        })?;
        if sha256.to_string() != expected {
            let _ = fs::remove_file(&partial);
            bail!(
                "{} arrived with sha256 {sha256}, but {expected} was expected: the staged file is not the build's",
                self.bucket.describe(name)
            );
        }
        fs::rename(&partial, &target)
            .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))?;
        Ok(Moved {
            name: name.to_owned(),
            size,
            sha256,
        })
    }
}

impl Selection {
    /// The one platform whose artifacts are selected, if it is one.
    fn platform(&self) -> Option<&PlatformId> {
        match self {
            Selection::Platform(platform) => Some(platform),
            _ => None,
        }
    }
}

/// The artifacts (of one platform, or all with the update parts) a build
/// records, with their sha256, and the Secure Boot certificate of a signed
/// build (every platform's boot test enrolls it).
fn build_files(build: &BuildInfo, platform: Option<&PlatformId>) -> Vec<(String, Sha256Digest)> {
    let mut files: Vec<(String, Sha256Digest)> = build
        .artifacts
        .iter()
        .filter(|a| platform.is_none_or(|p| &a.platform == p))
        .map(|a| (a.file.clone(), a.sha256))
        .collect();
    if let Some(secure_boot) = &build.secure_boot {
        files.push((secure_boot.certificate.clone(), secure_boot.file_sha256));
    }
    if platform.is_none() {
        if let Some(update) = &build.update {
            files.extend(update.files.iter().map(|f| (f.name.clone(), f.sha256)));
        }
    }
    files
}

/// The evidence files in a build directory (`evidence/<platform>/<file>`).
fn evidence_files(build_dir: &Path, platform: &PlatformId) -> Result<Vec<String>> {
    let root = build_dir.join(EVIDENCE_DIR);
    let mut names = Vec::new();
    if !root.is_dir() {
        return Ok(names);
    }
    let mut platforms: Vec<String> = Vec::new();
    for entry in fs::read_dir(&root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            platforms.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    platforms.sort();
    for name in platforms {
        if platform.as_str() != name {
            continue;
        }
        let mut files: Vec<String> = Vec::new();
        for entry in fs::read_dir(root.join(&name))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                files.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        files.sort();
        names.extend(
            files
                .into_iter()
                .map(|f| format!("{EVIDENCE_DIR}/{name}/{f}")),
        );
    }
    Ok(names)
}

/// The file of `name` inside `build_dir`, every component a plain name.
fn inside(build_dir: &Path, name: &str) -> Result<PathBuf> {
    let mut path = build_dir.to_owned();
    for part in name.split('/') {
        path.push(SafeName::new("staged file name", part)?.as_str());
    }
    Ok(path)
}
