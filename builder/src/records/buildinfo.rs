//! `build.json`: what a build produced, in a typed, documented form that
//! later steps (boot tests, packaging, publishing) read back.

use std::path::Path;

use anyhow::{Context, Result};
use boxcar_signing::documents::BuiltFootprint;
use boxcar_signing::Sha256Digest;
use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;
use crate::image::PartitionTable;
use crate::platform::{ArtifactRole, Format, Platform, PlatformId};
use crate::version::Version;

/// The file name of the record inside a build directory.
pub const BUILD_JSON: &str = "build.json";

/// Bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// The record of one build, written as `build/<version>/build.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// Format version of this document.
    pub schema: u32,
    /// The OS name ("boxcar"), as in os-release's ID.
    pub name: String,
    pub version: Version,
    /// The channel the build was made for. The bits do not depend on it:
    /// promotion to another channel reuses them unchanged.
    pub channel: ChannelName,
    /// When the build finished (RFC 3339, UTC).
    pub built_at: String,
    /// File times inside the image are clamped to this (seconds since the
    /// epoch): the commit time of the recipe.
    pub source_date_epoch: i64,
    pub source: SourceInfo,
    pub usr: UsrInfo,
    pub kernel: KernelInfo,
    /// dockerd as the recipe builds it from Debian's docker.io source
    /// (recipes/dockerd/); absent from builds that took Debian's dockerd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerd: Option<ProgramBuild>,
    pub disk: DiskInfo,
    /// The build's parts: every file mkosi made, from which the artifacts
    /// are packaged (build.json and the log aside).
    pub files: Vec<FileInfo>,
    /// What ships: every platform's artifact files.
    pub artifacts: Vec<ArtifactInfo>,
    /// The node agent in the image and the store keys it pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_agent: Option<AgentRecord>,
    /// What nodes download to update to this build (builds from before
    /// updates were published have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<boxcar_signing::documents::UpdatePayload>,
    /// How the boot chain is signed for Secure Boot; `None`: unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBootInfo>,
    /// The platform table the build was made with.
    pub platforms: Vec<Platform>,
    /// Every package installed in the image.
    pub packages: Vec<PackageInfo>,
    /// How long each phase took.
    pub phases: Vec<PhaseTiming>,
    /// The versions of the host tools that drove the build.
    pub tools: Vec<ToolVersion>,
    /// Every package of the tools tree mkosi made the image with (its
    /// systemd-repart, mkfs.erofs, ukify, sbsign): the programs that wrote
    /// the bits. Empty for builds from before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools_tree: Vec<PackageInfo>,
}

/// The Secure Boot signature of a build's boot chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBootInfo {
    /// The signing certificate (PEM), as a file of this build: what
    /// operators enroll in their firmware's db.
    pub certificate: String,
    /// The sha256 of that file (staging and downloads check it).
    pub file_sha256: Sha256Digest,
    /// The certificate's SHA-256 fingerprint (hex, of its DER form).
    pub certificate_sha256: String,
    /// The certificate's subject (RFC 2253).
    pub subject: String,
    /// Every boot file checked against the certificate after signing: the
    /// build's files by name, the ESP's as `disk.raw:ESP/PATH`.
    pub signed: Vec<String>,
}

/// Where the recipe came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// The git commit of the checkout, when it is one.
    pub git_commit: Option<String>,
    /// Whether the checkout had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// The recipe tree (recipes/) and the overlay trees (overlays/) as
    /// built, each digested whole (paths, modes, links and contents):
    /// equal digests are the same inputs, committed or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_sha256: Option<Sha256Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlays_sha256: Option<Sha256Digest>,
}

/// The read-only /usr and its integrity protection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsrInfo {
    /// The dm-verity root hash (hex): the UKI's `usrhash=`.
    pub root_hash: String,
    /// The file system inside the partition.
    pub filesystem: String,
    /// The /usr partition image, as a file of this build.
    pub data_file: String,
    /// The verity hash tree, as a file of this build.
    pub hash_file: String,
    /// Slot A's root hash signature partition, as a file of this build
    /// (absent from builds made before /usr was signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_file: Option<String>,
    /// The SHA-256 fingerprint (hex) of the certificate whose key signed
    /// the root hash; none when the build is not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    pub data_block_size: u64,
    pub hash_block_size: u64,
    /// The verity salt (hex).
    pub salt: String,
    /// Bytes of the (compressed) file system: the data verity covers.
    pub filesystem_bytes: u64,
    /// Bytes of the verity hash tree, superblock included.
    pub hash_tree_bytes: u64,
    /// Bytes of the files in /usr before compression, when the recipe
    /// reports them (its mkosi.finalize script).
    pub content_bytes: Option<u64>,
    /// Number of files (and links) in /usr.
    pub content_files: Option<u64>,
    /// Where the bytes of /usr go, when the recipe lists its files and
    /// their packages (`boxcar footprint` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<UsrFootprint>,
}

/// The regular files of /usr as built (before compression, each hard link
/// once), by package and by directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsrFootprint {
    pub bytes: u64,
    pub files: u64,
    /// Every package with files in /usr, and "(no package)" for files made
    /// at build time or from the overlays; biggest first.
    pub packages: Vec<FootprintEntry>,
    /// The biggest directories, down to four levels under /usr (nested
    /// ones are counted in their parents too); biggest first.
    pub directories: Vec<FootprintEntry>,
    /// The biggest files, biggest first (absent from builds before it was
    /// recorded, and then left out again when written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub biggest_files: Vec<FootprintEntry>,
}

/// A package's or a directory's share of /usr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FootprintEntry {
    pub name: String,
    pub bytes: u64,
    pub files: u64,
}

/// What boots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// `uname -r` of the kernel.
    pub release: String,
    /// The kernel command line built into the UKI.
    pub cmdline: String,
    /// Where the bytes of the UKI's initrd go (`boxcar footprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<InitrdFootprint>,
    /// The packages the kernel was built from and with (its source,
    /// Debian's configuration, the compiler), for building it again; absent
    /// from builds that took Debian's kernel package.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_packages: Vec<PackageInfo>,
}

/// A program the recipe builds from a Debian source package instead of
/// taking Debian's binary: what building it again takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramBuild {
    /// The source package and version it is built from (architecture
    /// "source").
    pub source: PackageInfo,
    /// The packages it was built with (the compiler, and for Go every
    /// library).
    pub build_packages: Vec<PackageInfo>,
}

/// The regular files of the UKI's initrd, decompressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdFootprint {
    /// Bytes of the initrd as the UKI carries it (compressed).
    pub stored_bytes: u64,
    pub bytes: u64,
    pub files: u64,
    /// The biggest directories, down to four levels (nested ones are
    /// counted in their parents too); biggest first.
    pub directories: Vec<FootprintEntry>,
    /// The biggest files, biggest first.
    pub biggest_files: Vec<FootprintEntry>,
}

/// The full disk image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskInfo {
    pub file: String,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes actually allocated on the build host's disk (the image is
    /// sparse).
    pub allocated: u64,
    pub partition_table: PartitionTable,
}

/// One file of the build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInfo {
    /// File name, relative to the build directory.
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// The platform a per-platform part belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformId>,
}

/// One file of a platform's artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactInfo {
    pub platform: PlatformId,
    pub format: Format,
    /// What the file is within the artifact (PXE has three).
    pub role: ArtifactRole,
    /// File name, relative to the build directory.
    pub file: String,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// The kernel command line the artifact boots with.
    pub kernel_cmdline: String,
    /// For a compressed image, its size decompressed (what `boxcar download
    /// --decompress` may write, and no more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
}

/// The node agent a build put into the image (boxcar-update), and what
/// it trusts and follows by default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRecord {
    pub sha256: boxcar_signing::Sha256Digest,
    pub size: u64,
    /// The ids of the store keys the image pins.
    pub keys: Vec<String>,
    /// The store it follows by default, if the build named one.
    pub store: Option<String>,
    pub channel: ChannelName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    /// The full GPT disk image.
    Disk,
    /// The /usr partition image.
    Usr,
    /// The /usr verity hash tree.
    UsrVerity,
    /// Slot A's root hash signature partition (empty when not signed).
    UsrSignature,
    /// The unified kernel image.
    Uki,
    Kernel,
    Initrd,
    /// mkosi's package manifest.
    Manifest,
    /// The root file system without /usr (what ROOT holds), as a tar.
    RootTree,
    /// A UKI addon with a platform's kernel command line additions.
    Addon,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTiming {
    pub name: String,
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolVersion {
    pub name: String,
    pub version: String,
}

impl BuildInfo {
    /// Reads `dir/build.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(BUILD_JSON);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a build directory?)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The files of one platform's artifact.
    pub fn artifact_files(&self, platform: &PlatformId) -> Vec<&ArtifactInfo> {
        self.artifacts
            .iter()
            .filter(|a| &a.platform == platform)
            .collect()
    }

    pub fn file(&self, kind: FileKind) -> Result<&FileInfo> {
        self.files
            .iter()
            .find(|f| f.kind == kind)
            .with_context(|| format!("build.json lists no {kind:?} file"))
    }

    /// The figures a release states about its size, or `None` for a build
    /// made before the footprint was recorded.
    pub fn built_footprint(&self) -> Option<BuiltFootprint> {
        let usr = self.usr.footprint.as_ref()?;
        let initrd = self.kernel.initrd.as_ref()?;
        Some(BuiltFootprint {
            usr_bytes: usr.bytes,
            usr_files: usr.files,
            usr_stored_bytes: self.usr.filesystem_bytes,
            packages: self.packages.len() as u64,
            uki_bytes: self.file(FileKind::Uki).ok()?.size,
            initrd_bytes: initrd.bytes,
            initrd_stored_bytes: initrd.stored_bytes,
        })
    }
}
