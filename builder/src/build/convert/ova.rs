//! VMware's OVA: a ustar archive of an OVF 1.0 descriptor (first), a
//! manifest with the SHA256 of the other files, and a streamOptimized VMDK.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Result;
use boxcar_signing::sha256_file;

use super::vmdk;
use crate::hosttools::HostTools;
use crate::process::Step;

/// What the descriptor says about the VM.
pub struct OvfSpec<'a> {
    /// The VM's name in the descriptor.
    pub name: &'a str,
    /// File name of the VMDK inside the OVA.
    pub disk_file: &'a str,
    /// Size of the VMDK file in bytes.
    pub disk_file_size: u64,
    /// Virtual size of the disk in bytes.
    pub capacity: u64,
    pub cpus: u32,
    pub memory_mib: u32,
}

/// Default virtual hardware: what `boxcar test` boots the OVA with too.
pub const DEFAULT_CPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u32 = 2048;

/// The OVF 1.0 descriptor: UEFI firmware, a SATA (AHCI) controller with the
/// disk, a VMXNET3 NIC, and the Ignition config as user-settable properties
/// passed through VMware's guestinfo transport (Ignition's vmware provider
/// reads them from the OVF environment vSphere puts there). `rasd` elements are in alphabetical
/// order, as the CIM schema (and strict importers) require.
pub fn descriptor(spec: &OvfSpec) -> String {
    let mut x = String::new();
    let _ = write!(
        x,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{disk}" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A Boxcar Linux container host</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="other5xLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection ovf:transport="com.vmware.guestInfo">
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{memory}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>SATA Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
    <ProductSection>
      <Info>First-boot provisioning, offered by the deploy wizard</Info>
      <Product>Boxcar Linux</Product>
      <Category>Ignition</Category>
      <Property ovf:key="guestinfo.ignition.config.data" ovf:type="string" ovf:userConfigurable="true" ovf:value="">
        <Label>Ignition config data</Label>
        <Description>The Ignition config (JSON, spec 3.0 to 3.3) applied on the first boot, encoded as the next property says</Description>
      </Property>
      <Property ovf:key="guestinfo.ignition.config.data.encoding" ovf:type="string" ovf:userConfigurable="true" ovf:value="base64" ovf:qualifiers="ValueMap{{&quot;base64&quot;,&quot;gzip+base64&quot;}}">
        <Label>Ignition config data encoding</Label>
        <Description>How the config data is encoded: base64 or gzip+base64</Description>
      </Property>
    </ProductSection>
  </VirtualSystem>
</Envelope>
"#,
        disk = xml_escape(spec.disk_file),
        size = spec.disk_file_size,
        capacity = spec.capacity,
        name = xml_escape(spec.name),
        cpus = spec.cpus,
        memory = spec.memory_mib,
    );
    x
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The manifest: `SHA256(name)= hex` for each file, as ovftool writes it.
pub fn manifest(work: &Path, files: &[&str]) -> Result<String> {
    let mut text = String::new();
    for name in files {
        let (digest, _) = sha256_file(&work.join(name))?;
        let _ = writeln!(text, "SHA256({name})= {digest}");
    }
    Ok(text)
}

/// Writes `out` (the .ova) from the raw disk `raw`, working in `work`: the
/// VMDK is written by [`vmdk`], the archive by `tar`.
pub fn write_ova(
    tools: &HostTools,
    raw: &Path,
    work: &Path,
    out: &Path,
    vm_name: &str,
    source_date_epoch: i64,
) -> Result<()> {
    let stem = out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("boxcar")
        .to_owned();
    let ovf_name = format!("{stem}.ovf");
    let mf_name = format!("{stem}.mf");
    let vmdk_name = format!("{stem}-disk1.vmdk");
    // A content id derived from the build, so the same build gives the same VMDK.
    let cid = source_date_epoch as u32;
    let vmdk = vmdk::write_stream_optimized(raw, &work.join(&vmdk_name), "ide", cid)?;
    let descriptor = descriptor(&OvfSpec {
        name: vm_name,
        disk_file: &vmdk_name,
        disk_file_size: fs::metadata(work.join(&vmdk_name))?.len(),
        capacity: vmdk.capacity,
        cpus: DEFAULT_CPUS,
        memory_mib: DEFAULT_MEMORY_MIB,
    });
    fs::write(work.join(&ovf_name), descriptor)?;
    let manifest = manifest(work, &[&ovf_name, &vmdk_name])?;
    fs::write(work.join(&mf_name), manifest)?;
    // ustar, descriptor first: importers read the OVF before the disk.
    Step::new("packing the OVA", tools.path("tar"))
        .args([
            "--format=ustar",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
        ])
        .arg(format!("--mtime=@{source_date_epoch}"))
        .arg("-C")
        .arg(work)
        .arg("-cf")
        .arg(out)
        .args([&ovf_name, &mf_name, &vmdk_name])
        .run()?;
    for name in [&ovf_name, &mf_name, &vmdk_name] {
        fs::remove_file(work.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::VMWARE_IGNITION_GUESTINFO;

    #[test]
    fn descriptor_declares_file_size_capacity_efi_sata_and_vmxnet3() {
        let xml = descriptor(&OvfSpec {
            name: "boxcar-1.0",
            disk_file: "boxcar-1.0-vmware-disk1.vmdk",
            disk_file_size: 1234,
            capacity: 4967124992,
            cpus: 2,
            memory_mib: 2048,
        });
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let ovf = "http://schemas.dmtf.org/ovf/envelope/1";
        let file = doc
            .descendants()
            .find(|n| n.has_tag_name((ovf, "File")))
            .unwrap();
        assert_eq!(file.attribute((ovf, "size")), Some("1234"));
        assert_eq!(
            file.attribute((ovf, "href")),
            Some("boxcar-1.0-vmware-disk1.vmdk")
        );
        let disk = doc
            .descendants()
            .find(|n| n.has_tag_name((ovf, "Disk")))
            .unwrap();
        assert_eq!(disk.attribute((ovf, "capacity")), Some("4967124992"));
        assert!(xml.contains(r#"vmw:key="firmware" vmw:value="efi""#));
        assert!(xml.contains("<rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>"));
        assert!(xml.contains("<rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>"));
    }

    #[test]
    fn deploy_wizard_offers_the_ignition_config_through_guestinfo() {
        let xml = descriptor(&OvfSpec {
            name: "boxcar-1.0",
            disk_file: "d.vmdk",
            disk_file_size: 1,
            capacity: 512,
            cpus: 1,
            memory_mib: 512,
        });
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let ovf = "http://schemas.dmtf.org/ovf/envelope/1";
        let hardware = doc
            .descendants()
            .find(|n| n.has_tag_name((ovf, "VirtualHardwareSection")))
            .unwrap();
        assert_eq!(
            hardware.attribute((ovf, "transport")),
            Some("com.vmware.guestInfo")
        );
        let property = |key: &str| {
            doc.descendants()
                .filter(|n| n.has_tag_name((ovf, "Property")))
                .find(|n| n.attribute((ovf, "key")) == Some(key))
                .unwrap_or_else(|| panic!("no property {key}"))
        };
        for key in VMWARE_IGNITION_GUESTINFO {
            let p = property(key);
            assert_eq!(p.attribute((ovf, "userConfigurable")), Some("true"));
            assert_eq!(p.attribute((ovf, "type")), Some("string"));
            assert!(p.parent().unwrap().has_tag_name((ovf, "ProductSection")));
        }
        let encoding = property("guestinfo.ignition.config.data.encoding");
        assert_eq!(encoding.attribute((ovf, "value")), Some("base64"));
        assert_eq!(
            encoding.attribute((ovf, "qualifiers")),
            Some(r#"ValueMap{"base64","gzip+base64"}"#)
        );
    }

    #[test]
    fn names_are_escaped() {
        let xml = descriptor(&OvfSpec {
            name: "a<b>&\"c\"",
            disk_file: "d.vmdk",
            disk_file_size: 1,
            capacity: 512,
            cpus: 1,
            memory_mib: 512,
        });
        assert!(roxmltree::Document::parse(&xml).is_ok());
    }
}
