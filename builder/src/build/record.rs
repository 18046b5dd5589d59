//! The record of a build: assembling build.json from what the phases
//! found (with mkosi's package manifest, the disk's allocation, the tool
//! versions and each artifact's kernel command line), and writing it.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::convert::Packaged;
use super::digest::Digests;
use super::inspect::Inspected;
use super::plan::BuildPlan;
use crate::hosttools::HostTools;
use crate::platform::{Format, Platform, IMAGE_ID};
use crate::records::buildinfo::{
    ArtifactInfo, BuildInfo, DiskInfo, PackageInfo, PhaseTiming, ToolVersion, BUILD_JSON,
    SCHEMA_VERSION,
};
use crate::units::now_rfc3339;

/// build.json's content, from the plan and what the phases found.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_info(
    plan: &BuildPlan,
    tools: &HostTools,
    staging: &Path,
    inspected: Inspected,
    packaged: &[Packaged],
    (files, artifact_digests): Digests,
    update: boxcar_signing::documents::UpdatePayload,
    timings: &[PhaseTiming],
) -> Result<BuildInfo> {
    let disk_path = staging.join("disk.raw");
    let disk_meta =
        fs::metadata(&disk_path).with_context(|| format!("reading {}", disk_path.display()))?;
    let artifacts = packaged
        .iter()
        .zip(artifact_digests)
        .map(|(packaged, (sha256, size))| {
            let platform = plan
                .platform_table
                .get(&packaged.platform)
                .expect("packaged platforms are in the table");
            ArtifactInfo {
                platform: packaged.platform.clone(),
                format: packaged.format,
                role: packaged.role,
                file: packaged.file.clone(),
                size,
                sha256,
                kernel_cmdline: effective_cmdline(&inspected.kernel.cmdline, platform),
                // A compressed disk holds the composed disk, whole.
                uncompressed_size: (packaged.format == Format::RawZstd).then_some(disk_meta.len()),
            }
        })
        .collect();
    let packages = read_manifest(&staging.join("manifest.json"))?;
    let tools_tree = plan.cache.mkosi_output().join("tools/var/lib/dpkg/status");
    let tools_tree = if tools_tree.exists() {
        read_dpkg_status(&tools_tree)?
    } else {
        Vec::new()
    };
    Ok(BuildInfo {
        schema: SCHEMA_VERSION,
        name: IMAGE_ID.to_owned(),
        version: plan.version.clone(),
        channel: plan.channel.name.clone(),
        built_at: now_rfc3339(),
        source_date_epoch: plan.source_date_epoch,
        source: plan.source.clone(),
        usr: inspected.usr,
        kernel: inspected.kernel,
        dockerd: inspected.dockerd,
        disk: DiskInfo {
            file: "disk.raw".to_owned(),
            size: disk_meta.len(),
            allocated: allocated_bytes(&disk_meta),
            partition_table: inspected.table,
        },
        files,
        artifacts,
        update: Some(update),
        update_agent: Some(plan.agent.record(&plan.channel.name)?),
        // Filled in by the caller from the Secure Boot phase.
        secure_boot: None,
        platforms: plan.platform_table.platforms.clone(),
        packages,
        phases: timings.to_vec(),
        tools: tool_versions(tools),
        tools_tree,
    })
}

/// The kernel command line a platform's artifact boots with.
fn effective_cmdline(uki_cmdline: &str, platform: &Platform) -> String {
    match platform.format {
        Format::Pxe => format!("{uki_cmdline} root=tmpfs {}", platform.kernel_cmdline()),
        _ => format!("{uki_cmdline} {}", platform.kernel_cmdline()),
    }
}

/// mkosi's JSON manifest: the installed packages.
fn read_manifest(path: &Path) -> Result<Vec<PackageInfo>> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        packages: Vec<ManifestPackage>,
    }
    #[derive(serde::Deserialize)]
    struct ManifestPackage {
        name: String,
        version: String,
        architecture: String,
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("parsing mkosi manifest {}", path.display()))?;
    let mut packages: Vec<PackageInfo> = manifest
        .packages
        .into_iter()
        .map(|p| PackageInfo {
            name: p.name,
            version: p.version,
            architecture: p.architecture,
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(packages)
}

/// The installed packages a dpkg status file lists, by name.
fn read_dpkg_status(path: &Path) -> Result<Vec<PackageInfo>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut packages: Vec<PackageInfo> = text
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza.lines().find_map(|line| {
                    let value = line.strip_prefix(name)?.strip_prefix(':')?;
                    Some(value.trim().to_owned())
                })
            };
            let installed = field("Status")?.ends_with(" installed");
            installed.then_some(())?;
            Some(PackageInfo {
                name: field("Package")?,
                version: field("Version")?,
                architecture: field("Architecture")?,
            })
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(packages)
}

/// Writes build.json into the build directory.
pub(super) fn write_build_json(dir: &Path, info: &BuildInfo) -> Result<()> {
    let path = dir.join(BUILD_JSON);
    let mut text = serde_json::to_string_pretty(info)?;
    text.push('\n');
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn tool_versions(tools: &HostTools) -> Vec<ToolVersion> {
    let mut versions = vec![ToolVersion {
        name: "boxcar".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }];
    versions.extend(tools.all().filter_map(|tool| {
        Some(ToolVersion {
            name: tool.program.clone(),
            version: tool.version.clone()?,
        })
    }));
    versions
}

fn allocated_bytes(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dpkg_status_lists_installed_packages_only() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        fs::write(
            &status,
            "Package: systemd-repart\nStatus: install ok installed\nArchitecture: amd64\n\
             Version: 257.13-1~deb13u1\nDescription: repart\n more text\n\n\
             Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
             Package: erofs-utils\nStatus: install ok installed\nArchitecture: amd64\n\
             Version: 1.8.6-1\n",
        )
        .unwrap();
        let packages = read_dpkg_status(&status).unwrap();
        let listed: Vec<(&str, &str)> = packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("erofs-utils", "1.8.6-1"),
                ("systemd-repart", "257.13-1~deb13u1")
            ]
        );
    }
}
