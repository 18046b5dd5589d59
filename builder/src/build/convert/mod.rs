//! Packaging: from the one composed image to every platform's artifact.
//!
//! The OS is never recomposed per platform. Each disk artifact starts as a
//! sparse copy of the build's disk image into which only the platform's UKI
//! addon (its kernel command line additions) is written, on the ESP; /usr
//! and its verity tree are the same bytes in every artifact. The copy is
//! then converted to the platform's format. Platforms are packaged in
//! parallel, one per CPU.

pub mod ova;
pub mod pxe;
pub mod vmdk;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::hosttools::{HostTools, Requirement};
use crate::image::{PartitionTable, Role};
use crate::platform::{ArtifactRole, Format, Platform, PlatformId};
use crate::process::Step;
use crate::progress::Progress;
use crate::version::Version;

/// Where the platform addon goes on the ESP: systemd-stub applies every
/// addon in /loader/addons/ to every UKI, so it survives A/B updates that
/// bring a new UKI.
pub const ESP_ADDON_DIR: &str = "::/loader/addons";
pub const ESP_ADDON_NAME: &str = "boxcar-platform.addon.efi";

/// The converter programs, with what they are for.
pub fn requirements(platforms: &[&Platform]) -> Vec<Requirement> {
    let needed: std::collections::BTreeSet<&str> = platforms
        .iter()
        .flat_map(|p| p.converter_tools().iter().copied())
        .collect();
    let all = [
        Requirement {
            program: "qemu-img",
            purpose: "converts disk images (qcow2, VMDK)",
            min_version: Some("7.2"),
            version_args: &["--version"],
            package: "qemu-utils",
        },
        Requirement {
            program: "mcopy",
            purpose: "writes the platform addon into the ESP without mounting it",
            min_version: None,
            version_args: &[],
            package: "mtools",
        },
        Requirement {
            program: "mmd",
            purpose: "creates directories on the ESP without mounting it",
            min_version: None,
            version_args: &[],
            package: "mtools",
        },
        Requirement {
            program: "tar",
            purpose: "packs the OVA",
            min_version: None,
            version_args: &[],
            package: "tar",
        },
        Requirement {
            program: "zstd",
            purpose: "compresses the bare-metal image",
            min_version: Some("1.4"),
            version_args: &["--version"],
            package: "zstd",
        },
        Requirement {
            program: "sfdisk",
            purpose: "partitions the /usr disk the PXE initrd carries",
            min_version: Some("2.35"),
            version_args: &["--version"],
            package: "fdisk",
        },
        Requirement {
            program: "cpio",
            purpose: "packs the PXE initrd",
            min_version: None,
            version_args: &[],
            package: "cpio",
        },
        Requirement {
            program: "cp",
            purpose: "copies disk images sparsely",
            min_version: None,
            version_args: &[],
            package: "coreutils",
        },
    ];
    all.into_iter()
        .filter(|r| {
            needed.contains(r.program)
                || ["cp", "mmd"].contains(&r.program) && needed.contains("mcopy")
        })
        .collect()
}

/// The parts of a build that packaging reads.
pub struct Parts<'a> {
    pub dir: &'a Path,
    pub version: &'a Version,
    pub table: &'a PartitionTable,
    pub disk: &'a str,
    pub kernel: &'a str,
    pub initrd: &'a str,
    pub usr: &'a str,
    pub usr_verity: &'a str,
    pub usr_signature: &'a str,
    pub root_tar: &'a str,
    /// The UKI's own command line.
    pub uki_cmdline: &'a str,
    pub usr_bytes: u64,
    pub verity_bytes: u64,
    pub source_date_epoch: i64,
}

impl Parts<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The part holding a platform's addon.
    pub fn addon_name(platform: &PlatformId) -> String {
        format!("platform-{platform}.addon.efi")
    }
}

/// One packaged file.
#[derive(Clone, Debug)]
pub struct Packaged {
    pub platform: PlatformId,
    pub format: Format,
    pub role: ArtifactRole,
    pub file: String,
}

/// How long one platform took.
#[derive(Clone, Debug)]
pub struct PlatformTiming {
    pub platform: PlatformId,
    pub elapsed: Duration,
}

/// Packages every platform, in parallel. Returns the files and timings in
/// table order.
pub fn package_all(
    parts: &Parts,
    platforms: &[&Platform],
    tools: &HostTools,
    progress: &Progress,
) -> Result<(Vec<Packaged>, Vec<PlatformTiming>)> {
    let queue = Mutex::new(platforms.iter().copied());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(platforms.len().max(1));
    type Done = (usize, Vec<Packaged>, PlatformTiming);
    let results: Vec<Result<Done>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().expect("platform queue").next();
                        let Some(platform) = next else { break done };
                        let index = platforms
                            .iter()
                            .position(|p| p.id == platform.id)
                            .unwrap_or(0);
                        let started = Instant::now();
                        let result = package_platform(parts, platform, tools)
                            .with_context(|| format!("packaging the {} artifact", platform.id))
                            .map(|files| {
                                let timing = PlatformTiming {
                                    platform: platform.id.clone(),
                                    elapsed: started.elapsed(),
                                };
                                progress.note(&format!(
                                    "    {}: {} in {:.1}s",
                                    platform.id,
                                    files
                                        .iter()
                                        .map(|f| f.file.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                    timing.elapsed.as_secs_f64()
                                ));
                                (index, files, timing)
                            });
                        done.push(result);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("packaging thread panicked"))
            .collect()
    });
    let mut done = results.into_iter().collect::<Result<Vec<Done>>>()?;
    done.sort_by_key(|(index, _, _)| *index);
    let mut files = Vec::new();
    let mut timings = Vec::new();
    for (_, packaged, timing) in done {
        files.extend(packaged);
        timings.push(timing);
    }
    Ok((files, timings))
}

/// Packages one platform into the build directory.
fn package_platform(
    parts: &Parts,
    platform: &Platform,
    tools: &HostTools,
) -> Result<Vec<Packaged>> {
    let names = platform.artifact_files(parts.version);
    let path_of = |role: ArtifactRole| -> Result<PathBuf> {
        names
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, name)| parts.path(name))
            .with_context(|| format!("platform {} has no {role:?} file", platform.id))
    };
    let work = parts.dir.join(format!(".package-{}", platform.id));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let result = (|| -> Result<()> {
        match platform.format {
            Format::Qcow2 => {
                let raw = work.join("disk.raw");
                platform_disk(parts, platform, tools, &raw)?;
                Step::new(
                    "converting the disk to compressed qcow2",
                    tools.path("qemu-img"),
                )
                // zstd rather than zlib inside the qcow2: the same size here
                // (most of the image is lz4-compressed /usr already) in a
                // quarter of the time; readable by qemu 5.1 and later. No
                // -W: out-of-order writes place the clusters differently on
                // every run, and the image must be reproducible.
                .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
                .args(["-o", "compression_type=zstd"])
                .arg(&raw)
                .arg(path_of(ArtifactRole::Disk)?)
                .run()?;
            }
            Format::Ova => {
                let raw = work.join("disk.raw");
                platform_disk(parts, platform, tools, &raw)?;
                let vm_name = format!("{}-{}", crate::platform::IMAGE_ID, parts.version);
                ova::write_ova(
                    tools,
                    &raw,
                    &work,
                    &path_of(ArtifactRole::Disk)?,
                    &vm_name,
                    parts.source_date_epoch,
                )?;
            }
            Format::Raw => platform_disk(parts, platform, tools, &path_of(ArtifactRole::Disk)?)?,
            Format::RawZstd => {
                let raw = work.join("disk.raw");
                platform_disk(parts, platform, tools, &raw)?;
                compress_sparse(tools, &raw, &path_of(ArtifactRole::Disk)?)?;
            }
            Format::Pxe => {
                let cmdline = format!(
                    "{} root=tmpfs {}",
                    parts.uki_cmdline,
                    platform.kernel_cmdline()
                );
                pxe::write_pxe(
                    tools,
                    &pxe::PxeInputs {
                        kernel: &parts.path(parts.kernel),
                        initrd: &parts.path(parts.initrd),
                        usr: &parts.path(parts.usr),
                        usr_verity: &parts.path(parts.usr_verity),
                        usr_signature: &parts.path(parts.usr_signature),
                        root_tar: &parts.path(parts.root_tar),
                        table: parts.table,
                        usr_bytes: parts.usr_bytes,
                        verity_bytes: parts.verity_bytes,
                        cmdline,
                        source_date_epoch: parts.source_date_epoch,
                    },
                    &pxe::PxeOutputs {
                        kernel: &path_of(ArtifactRole::Kernel)?,
                        initrd: &path_of(ArtifactRole::Initrd)?,
                        script: &path_of(ArtifactRole::BootScript)?,
                    },
                    &work,
                )?;
            }
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    result?;
    Ok(names
        .into_iter()
        .map(|(role, file)| Packaged {
            platform: platform.id.clone(),
            format: platform.format,
            role,
            file,
        })
        .collect())
}

/// A sparse copy of the build's disk with the platform's addon on its ESP.
fn platform_disk(parts: &Parts, platform: &Platform, tools: &HostTools, out: &Path) -> Result<()> {
    let esp = parts.table.require(Role::Esp)?;
    Step::new("copying the disk image", tools.path("cp"))
        .args(["--sparse=always", "--"])
        .arg(parts.path(parts.disk))
        .arg(out)
        .run()?;
    let addon = parts.path(&Parts::addon_name(&platform.id));
    if !addon.is_file() {
        bail!(
            "the build has no UKI addon for platform {} ({}); the recipe's mkosi.finalize writes one per platform",
            platform.id,
            addon.display()
        );
    }
    let image = mtools_image(out, esp.offset);
    // mtools stamps what it creates with SOURCE_DATE_EPOCH, not the time of
    // the build: the same addon makes the same ESP.
    let epoch = parts.source_date_epoch.to_string();
    Step::new("creating /loader/addons on the ESP", tools.path("mmd"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", &epoch)
        .args(["-i", &image, ESP_ADDON_DIR])
        .run()?;
    Step::new("writing the platform addon to the ESP", tools.path("mcopy"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", &epoch)
        .args(["-i", &image])
        .arg(&addon)
        .arg(format!("{ESP_ADDON_DIR}/{ESP_ADDON_NAME}"))
        .run()?;
    Ok(())
}

/// Compresses a sparse file with zstd, feeding its holes from memory: read
/// through the file system, gigabytes of holes cost more than compressing
/// them.
fn compress_sparse(tools: &HostTools, raw: &Path, out: &Path) -> Result<()> {
    let file = fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let length = file.metadata()?.len();
    let regions = boxcar_signing::data_regions(&file, length);
    Step::new("compressing the raw disk with zstd", tools.path("zstd"))
        .args(["-q", "-T0", "-3", "--no-progress", "-c"])
        .stdout_file(out)
        .run_with_input(|stdin| feed_sparse(&file, length, &regions, stdin))?;
    Ok(())
}

/// Writes the whole of `file` to `out`: data regions as read, holes as zeros.
pub(crate) fn feed_sparse(
    file: &fs::File,
    length: u64,
    regions: &[std::ops::Range<u64>],
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut buffer = vec![0u8; CHUNK as usize];
    let mut reader = file;
    let mut position = 0;
    let write_zeros = |out: &mut dyn std::io::Write, mut count: u64| -> std::io::Result<()> {
        while count > 0 {
            let n = count.min(CHUNK);
            out.write_all(&zeros[..n as usize])?;
            count -= n;
        }
        Ok(())
    };
    for region in regions {
        write_zeros(out, region.start - position)?;
        reader.seek(SeekFrom::Start(region.start))?;
        let mut remaining = region.end - region.start;
        while remaining > 0 {
            let n = remaining.min(CHUNK) as usize;
            reader.read_exact(&mut buffer[..n])?;
            out.write_all(&buffer[..n])?;
            remaining -= n as u64;
        }
        position = region.end;
    }
    write_zeros(out, length - position)
}

/// mtools' notation for a file system at an offset inside an image.
fn mtools_image(image: &Path, offset: u64) -> String {
    format!("{}@@{offset}", image.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_follow_the_formats() {
        let table = crate::platform::PlatformTable::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(crate::platform::TABLE_FILE),
        )
        .unwrap();
        let pxe = table.select(&["pxe".parse().unwrap()]).unwrap();
        let programs: Vec<&str> = requirements(&pxe).iter().map(|r| r.program).collect();
        assert_eq!(programs, ["sfdisk", "cpio"]);
        let all = table.select(&[]).unwrap();
        let programs: Vec<&str> = requirements(&all).iter().map(|r| r.program).collect();
        assert_eq!(
            programs,
            ["qemu-img", "mcopy", "mmd", "tar", "zstd", "sfdisk", "cpio", "cp"]
        );
    }

    #[test]
    fn sparse_feed_reproduces_the_file() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("sparse.raw");
        let file = fs::File::create(&path).unwrap();
        file.write_all_at(b"start", 0).unwrap();
        file.write_all_at(b"middle", 5 * 1024 * 1024).unwrap();
        file.set_len(9 * 1024 * 1024 + 7).unwrap();
        drop(file);
        let file = fs::File::open(&path).unwrap();
        let regions = boxcar_signing::data_regions(&file, 9 * 1024 * 1024 + 7);
        let mut out = Vec::new();
        feed_sparse(&file, 9 * 1024 * 1024 + 7, &regions, &mut out).unwrap();
        out.flush().unwrap();
        assert_eq!(out, fs::read(&path).unwrap());
    }

    #[test]
    fn mtools_offset_notation() {
        assert_eq!(
            mtools_image(Path::new("/b/disk.raw"), 1048576),
            "/b/disk.raw@@1048576"
        );
    }
}
