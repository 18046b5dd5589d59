//! `boxcar compare`: are two builds the same bits? The inputs each
//! build.json records are compared first (they explain most differences),
//! then every output: each file is hashed and must match the sha256 its
//! build.json records (a build directory changed afterwards is an error,
//! not a difference), the two builds' digests are compared, and for each
//! output that differs, the first differing byte is found and placed: in
//! which partition of a disk image, in which section of a UKI or addon.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use boxcar_client::layout::SafeName;
use boxcar_signing::Sha256Digest;
use serde::Serialize;

use super::uki;
use crate::image::PartitionTable;
use crate::platform::Format;
use crate::progress::Progress;
use crate::records::buildinfo::{BuildInfo, FileKind};
use crate::sparse::{open_source, HoleFilledReader};

/// What two builds have in common and where they part.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// Whether every output of both builds is byte for byte the same.
    pub identical: bool,
    /// Inputs that differ (equal inputs are not listed).
    pub inputs: Vec<InputDifference>,
    /// Every output of either build, in the first build's order.
    pub outputs: Vec<OutputComparison>,
}

/// One input recorded differently in the two build.json files.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct InputDifference {
    pub input: String,
    /// The first build's value ("(none)" when it has none).
    pub build: String,
    /// The second build's value.
    pub with: String,
}

/// One output file, as each build recorded it.
#[derive(Debug, Serialize)]
pub struct OutputComparison {
    /// File name inside the build directory.
    pub name: String,
    pub same: bool,
    /// Its sha256 in each build; `None` when that build has no such file.
    pub build_sha256: Option<Sha256Digest>,
    pub with_sha256: Option<Sha256Digest>,
    /// Where the two files first differ, when both have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_difference: Option<FirstDifference>,
}

/// The first byte at which two versions of a file differ.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FirstDifference {
    /// Byte offset from the start of the file.
    pub offset: u64,
    /// What holds that byte: "partition 2 (usr-a) + 4096", "PE section
    /// .linux + 12", or `None` when the file has no known structure.
    pub within: Option<String>,
}

impl Comparison {
    /// The outputs that differ.
    pub fn differing(&self) -> impl Iterator<Item = &OutputComparison> {
        self.outputs.iter().filter(|o| !o.same)
    }
}

/// Compares the build in `build` with the one in `with`.
pub fn compare(build: &Path, with: &Path, progress: &Progress) -> Result<Comparison> {
    let first = BuildInfo::load(build)?;
    let second = BuildInfo::load(with)?;
    let inputs = input_differences(&first, &second);
    let ours = outputs(&first)?;
    check_recorded(build, &ours, progress)?;
    let theirs = outputs(&second)?;
    check_recorded(with, &theirs, progress)?;
    let theirs: BTreeMap<String, Sha256Digest> = theirs.into_iter().collect();
    let mut compared = Vec::new();
    for (name, sha256) in &ours {
        let other = theirs.get(name).copied();
        let same = other.as_ref() == Some(sha256);
        let first_difference = match (&other, same) {
            (Some(_), false) => Some(
                first_difference(&build.join(name), &with.join(name))?
                    .map(|offset| locate(&first, name, build, offset))
                    .transpose()?
                    .with_context(|| format!("{name} is equal in both builds after all"))?,
            ),
            _ => None,
        };
        compared.push(OutputComparison {
            name: name.clone(),
            same,
            build_sha256: Some(*sha256),
            with_sha256: other,
            first_difference,
        });
    }
    let known: BTreeSet<&String> = ours.iter().map(|(name, _)| name).collect();
    for (name, sha256) in &theirs {
        if !known.contains(name) {
            compared.push(OutputComparison {
                name: name.clone(),
                same: false,
                build_sha256: None,
                with_sha256: Some(*sha256),
                first_difference: None,
            });
        }
    }
    Ok(Comparison {
        identical: compared.iter().all(|o| o.same),
        inputs,
        outputs: compared,
    })
}

/// The inputs build.json records, by name, as text.
fn inputs(info: &BuildInfo) -> BTreeMap<String, String> {
    let optional = |value: Option<String>| value.unwrap_or_else(|| NONE.to_owned());
    let mut inputs = BTreeMap::from([
        ("version".to_owned(), info.version.to_string()),
        (
            "SOURCE_DATE_EPOCH".to_owned(),
            info.source_date_epoch.to_string(),
        ),
        (
            "git commit".to_owned(),
            optional(info.source.git_commit.clone()),
        ),
        (
            "uncommitted changes".to_owned(),
            optional(info.source.git_dirty.map(|dirty| dirty.to_string())),
        ),
        (
            "recipe tree sha256".to_owned(),
            optional(info.source.recipe_sha256.as_ref().map(|d| d.to_string())),
        ),
        (
            "overlay trees sha256".to_owned(),
            optional(info.source.overlays_sha256.as_ref().map(|d| d.to_string())),
        ),
        (
            "Secure Boot certificate sha256".to_owned(),
            optional(
                info.secure_boot
                    .as_ref()
                    .map(|sb| sb.certificate_sha256.clone()),
            ),
        ),
        (
            "update agent sha256".to_owned(),
            optional(info.update_agent.as_ref().map(|a| a.sha256.to_string())),
        ),
        (
            "platform table".to_owned(),
            serde_json::to_string(&info.platforms).unwrap_or_default(),
        ),
    ]);
    for package in &info.packages {
        inputs.insert(
            format!("package {}:{}", package.name, package.architecture),
            package.version.clone(),
        );
    }
    for package in &info.tools_tree {
        inputs.insert(
            format!(
                "tools-tree package {}:{}",
                package.name, package.architecture
            ),
            package.version.clone(),
        );
    }
    for tool in &info.tools {
        inputs.insert(format!("tool {}", tool.name), tool.version.clone());
    }
    inputs
}

const NONE: &str = "(none)";

fn input_differences(first: &BuildInfo, second: &BuildInfo) -> Vec<InputDifference> {
    let (ours, theirs) = (inputs(first), inputs(second));
    let names: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let value = |map: &BTreeMap<String, String>| {
                map.get(name).cloned().unwrap_or_else(|| NONE.to_owned())
            };
            let (build, with) = (value(&ours), value(&theirs));
            (build != with).then(|| InputDifference {
                input: name.clone(),
                build,
                with,
            })
        })
        .collect()
}

/// Every file a build made, by name, with its recorded sha256: the parts,
/// the artifacts, the update payload and the Secure Boot certificate. Each
/// name becomes a path in the build directory, so each must be a plain
/// file name.
fn outputs(info: &BuildInfo) -> Result<Vec<(String, Sha256Digest)>> {
    let parts = info.files.iter().map(|f| (&f.name, &f.sha256));
    let artifacts = info.artifacts.iter().map(|a| (&a.file, &a.sha256));
    let update = info.update.iter().flat_map(|u| &u.files);
    let update = update.map(|f| (&f.name, &f.sha256));
    let certificate = info
        .secure_boot
        .iter()
        .map(|sb| (&sb.certificate, &sb.file_sha256));
    let mut seen = BTreeSet::new();
    parts
        .chain(artifacts)
        .chain(update)
        .chain(certificate)
        .filter(|(name, _)| seen.insert(name.as_str()))
        .map(|(name, sha256)| {
            let name = SafeName::new("build.json file name", name)?;
            Ok((name.as_str().to_owned(), *sha256))
        })
        .collect()
}

/// Hashes every output file of the build in `dir` (holes from memory) and
/// fails on the first that is not what its build.json records.
fn check_recorded(
    dir: &Path,
    outputs: &[(String, Sha256Digest)],
    progress: &Progress,
) -> Result<()> {
    let mut phase = progress.phase(&format!("check {}", dir.display()));
    for (name, recorded) in outputs {
        phase.status(&format!("hashing {name}"));
        let path = dir.join(name);
        let (file, length) = open_source(&path)?;
        let (actual, _) = boxcar_signing::sha256_reader(HoleFilledReader::new(file, length))
            .with_context(|| reading(&path))?;
        if actual != *recorded {
            phase.failed();
            bail!(
                "{} does not match the sha256 its build.json records ({recorded}, the file has {actual}): \
                 the build directory changed after the build",
                path.display()
            );
        }
    }
    phase.done(&format!("{} files match build.json", outputs.len()));
    Ok(())
}

/// The offset of the first byte where two files differ (a shorter file
/// differs where it ends), or `None` when they are equal. Holes in a
/// sparse disk image are compared from memory, not read.
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<u64>> {
    let (file_a, length_a) = open_source(a)?;
    let (file_b, length_b) = open_source(b)?;
    let mut reader_a = HoleFilledReader::new(file_a, length_a);
    let mut reader_b = HoleFilledReader::new(file_b, length_b);
    let (mut buffer_a, mut buffer_b) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut offset = 0u64;
    loop {
        let read_a = fill(&mut reader_a, &mut buffer_a).with_context(|| reading(a))?;
        let read_b = fill(&mut reader_b, &mut buffer_b).with_context(|| reading(b))?;
        let common = read_a.min(read_b);
        if let Some(index) = (0..common).find(|&i| buffer_a[i] != buffer_b[i]) {
            return Ok(Some(offset + index as u64));
        }
        if read_a != read_b {
            return Ok(Some(offset + common as u64));
        }
        if read_a == 0 {
            return Ok(None);
        }
        offset += read_a as u64;
    }
}

const CHUNK: usize = 1 << 20;

fn reading(path: &Path) -> String {
    format!("reading {}", path.display())
}

/// Reads until `buffer` is full or the file ends.
fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Names what holds `offset` in the build's file `name`.
fn locate(info: &BuildInfo, name: &str, dir: &Path, offset: u64) -> Result<FirstDifference> {
    let is_disk = name == info.disk.file
        || info
            .artifacts
            .iter()
            .any(|a| a.file == name && a.format == Format::Raw);
    let is_pe = info
        .files
        .iter()
        .any(|f| f.name == name && matches!(f.kind, FileKind::Uki | FileKind::Addon));
    let within = if is_disk {
        Some(disk_location(&info.disk.partition_table, offset))
    } else if is_pe {
        uki::section_at(&dir.join(name), offset)?
    } else {
        None
    };
    Ok(FirstDifference { offset, within })
}

/// "partition 2 (usr-a, "usr-a") + 4096", or the GPT's own sectors.
fn disk_location(table: &PartitionTable, offset: u64) -> String {
    let holder = table
        .partitions
        .iter()
        .find(|p| (p.offset..p.offset + p.size).contains(&offset));
    match holder {
        Some(p) => format!(
            "partition {} ({}, label {:?}) + {}",
            p.number,
            p.role.name(),
            p.label,
            offset - p.offset
        ),
        None => "the partition table (outside every partition)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn the_first_differing_byte_is_found_across_chunks_and_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![7u8; CHUNK * 2 + 10];
        let a = write(dir.path(), "a", &data);
        assert_eq!(first_difference(&a, &a).unwrap(), None);
        data[CHUNK + 3] = 8;
        let b = write(dir.path(), "b", &data);
        assert_eq!(first_difference(&a, &b).unwrap(), Some(CHUNK as u64 + 3));
        let short = write(dir.path(), "short", &data[..100]);
        assert_eq!(first_difference(&a, &short).unwrap(), Some(100));
    }

    #[test]
    fn sparse_files_compare_their_holes_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let file = std::fs::File::create(&sparse).unwrap();
        file.set_len(64 << 20).unwrap();
        let mut dense = vec![0u8; 64 << 20];
        let zeros = write(dir.path(), "zeros", &dense);
        assert_eq!(first_difference(&sparse, &zeros).unwrap(), None);
        dense[40 << 20] = 1;
        let one = write(dir.path(), "one", &dense);
        assert_eq!(first_difference(&sparse, &one).unwrap(), Some(40 << 20));
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", b"x");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let error = first_difference(&a, &link).unwrap_err();
        assert!(format!("{error:#}").contains("symlinks are not followed"));
    }
}
