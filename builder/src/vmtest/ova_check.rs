//! Checking an OVA the way an importer would before booting its disk: the
//! archive order, the manifest's digests, and the descriptor's sizes.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use boxcar_signing::sha256_file;

use crate::hosttools::HostTools;
use crate::platform::VMWARE_IGNITION_GUESTINFO;
use crate::process::Step;
use crate::records::evidence::Check;

const OVF_NAMESPACE: &str = "http://schemas.dmtf.org/ovf/envelope/1";

/// Unpacks `ova` into `work`, checks it, and returns the VMDK to boot with
/// the checks (each one recorded; a failed one fails the test).
pub fn unpack_and_check(
    tools: &HostTools,
    ova: &Path,
    work: &Path,
) -> Result<(PathBuf, Vec<Check>)> {
    let listing = Step::new("listing the OVA", tools.path("tar"))
        .arg("-tf")
        .arg(ova)
        .output_text()?;
    let members: Vec<&str> = listing.lines().collect();
    let dir = work.join("ova");
    fs::create_dir_all(&dir)?;
    Step::new("unpacking the OVA", tools.path("tar"))
        .arg("-C")
        .arg(&dir)
        .arg("-xf")
        .arg(ova)
        .run()?;
    let mut checks = Vec::new();
    let order_ok = members.len() == 3
        && members[0].ends_with(".ovf")
        && members[1].ends_with(".mf")
        && members[2].ends_with(".vmdk");
    checks.push(check(
        "the OVA holds the OVF first, then the manifest and the disk",
        order_ok,
        "NAME.ovf, NAME.mf, NAME-disk1.vmdk".to_owned(),
        members.join(", "),
    ));
    let Some(ovf_name) = members.iter().find(|m| m.ends_with(".ovf")) else {
        bail!("the OVA {} has no .ovf descriptor", ova.display());
    };
    let Some(mf_name) = members.iter().find(|m| m.ends_with(".mf")) else {
        bail!("the OVA {} has no .mf manifest", ova.display());
    };
    checks.push(check_manifest(&dir, mf_name, &members)?);
    let (vmdk, size_check) = check_descriptor(tools, &dir, ovf_name)?;
    checks.push(size_check);
    checks.push(check_ignition_properties(&dir, ovf_name)?);
    Ok((vmdk, checks))
}

fn check(name: &str, passed: bool, expected: String, observed: String) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        expected,
        observed,
    }
}

/// Every file but the manifest is listed in it, with its true SHA256.
fn check_manifest(dir: &Path, mf_name: &str, members: &[&str]) -> Result<Check> {
    let manifest = fs::read_to_string(dir.join(mf_name))?;
    let mut problems = Vec::new();
    for member in members.iter().filter(|m| **m != mf_name) {
        let prefix = format!("SHA256({member})= ");
        let listed = manifest.lines().find_map(|l| l.strip_prefix(&prefix));
        let (actual, _) = sha256_file(&dir.join(member))?;
        match listed {
            None => problems.push(format!("{member} is not in the manifest")),
            Some(hex) if hex.trim() != actual.to_hex() => {
                problems.push(format!("{member}: manifest {hex}, file {actual}"))
            }
            Some(_) => {}
        }
    }
    Ok(check(
        "the manifest's SHA256 digests match the files",
        problems.is_empty(),
        "a matching SHA256 line for every file".to_owned(),
        if problems.is_empty() {
            "all match".to_owned()
        } else {
            problems.join("; ")
        },
    ))
}

/// The deploy wizard offers the Ignition config: the properties are
/// user-settable and travel by the guestinfo transport.
fn check_ignition_properties(dir: &Path, ovf_name: &str) -> Result<Check> {
    let text = fs::read_to_string(dir.join(ovf_name))?;
    let doc = roxmltree::Document::parse(&text).with_context(|| format!("parsing {ovf_name}"))?;
    let transport = doc
        .descendants()
        .find(|n| n.has_tag_name((OVF_NAMESPACE, "VirtualHardwareSection")))
        .and_then(|n| n.attribute((OVF_NAMESPACE, "transport")))
        .unwrap_or("none");
    let offered: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name((OVF_NAMESPACE, "Property")))
        .filter(|n| n.attribute((OVF_NAMESPACE, "userConfigurable")) == Some("true"))
        .filter_map(|n| n.attribute((OVF_NAMESPACE, "key")))
        .collect();
    let all_offered = VMWARE_IGNITION_GUESTINFO
        .iter()
        .all(|k| offered.contains(k));
    Ok(check(
        "the OVF offers the Ignition config as user-settable guestinfo properties",
        all_offered && transport == "com.vmware.guestInfo",
        format!(
            "{} by com.vmware.guestInfo",
            VMWARE_IGNITION_GUESTINFO.join(", ")
        ),
        format!("{} by {transport}", offered.join(", ")),
    ))
}

/// The descriptor names the VMDK with its real file size, and the disk's
/// capacity equals the VMDK's virtual size.
fn check_descriptor(tools: &HostTools, dir: &Path, ovf_name: &str) -> Result<(PathBuf, Check)> {
    let text = fs::read_to_string(dir.join(ovf_name))?;
    let doc = roxmltree::Document::parse(&text).with_context(|| format!("parsing {ovf_name}"))?;
    let attribute = |tag: &str, name: &str| -> Result<String> {
        doc.descendants()
            .find(|n| n.has_tag_name((OVF_NAMESPACE, tag)))
            .and_then(|n| n.attribute((OVF_NAMESPACE, name)))
            .map(str::to_owned)
            .with_context(|| format!("{ovf_name} has no {tag} with ovf:{name}"))
    };
    let href = attribute("File", "href")?;
    if href.contains('/') || href.starts_with('.') {
        bail!("{ovf_name} names the disk {href:?}, which is not a plain file name");
    }
    let declared_size: u64 = attribute("File", "size")?.parse()?;
    let declared_capacity: u64 = attribute("Disk", "capacity")?.parse()?;
    let vmdk = dir.join(&href);
    let actual_size = fs::metadata(&vmdk)
        .with_context(|| format!("the OVA has no {href}"))?
        .len();
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "virtual-size")]
        virtual_size: u64,
        format: String,
    }
    let info: Info = Step::new("reading the VMDK's virtual size", tools.path("qemu-img"))
        .args(["info", "--output=json"])
        .arg(&vmdk)
        .json()?;
    Ok((
        vmdk,
        check(
            "the OVF declares the VMDK's true size and capacity",
            declared_size == actual_size
                && declared_capacity == info.virtual_size
                && info.format == "vmdk",
            format!("size {actual_size}, capacity {}", info.virtual_size),
            format!(
                "size {declared_size}, capacity {declared_capacity} ({} file)",
                info.format
            ),
        ),
    ))
}
