//! Reading a unified kernel image (a PE executable): its `.cmdline`,
//! `.uname` and `.osrel` sections, to record what the image will boot with.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The text sections of a UKI that describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiInfo {
    pub cmdline: String,
    pub kernel_release: String,
    pub os_release: String,
}

impl UkiInfo {
    /// The value of `key=` on the kernel command line.
    pub fn cmdline_value(&self, key: &str) -> Option<&str> {
        self.cmdline
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Reads the descriptive sections of the UKI at `path`. Only the headers and
/// the small sections are read, not the kernel and initrd.
pub fn read_uki(path: &Path) -> Result<UkiInfo> {
    let mut sections = read_text_sections(path, &[".cmdline", ".uname", ".osrel"])?.into_iter();
    let mut next = || sections.next().unwrap_or_default();
    Ok(UkiInfo {
        cmdline: next(),
        kernel_release: next(),
        os_release: next(),
    })
}

/// The named text sections of a PE file, in the order asked for. Only the
/// headers and those sections are read.
fn read_text_sections(path: &Path, names: &[&str]) -> Result<Vec<String>> {
    let (mut file, sections) = section_table(path)?;
    let mut texts = Vec::with_capacity(names.len());
    for name in names {
        let (offset, size) = sections
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, offset, size)| (*offset, *size))
            .with_context(|| format!("{} has no {name} section", path.display()))?;
        if size > MAX_TEXT_SECTION {
            bail!(
                "{}: section {name} is {size} bytes, too large for a text section",
                path.display()
            );
        }
        let mut bytes = vec![0u8; size];
        file.seek(SeekFrom::Start(offset as u64))
            .and_then(|_| file.read_exact(&mut bytes))
            .with_context(|| format!("{}: reading section {name}", path.display()))?;
        texts.push(
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .trim()
                .to_owned(),
        );
    }
    Ok(texts)
}

/// "PE section .linux + 12" for the byte at `offset` of a PE file, "the
/// PE headers" before its first section, `None` past its last one.
pub fn section_at(path: &Path, offset: u64) -> Result<Option<String>> {
    let (_, sections) = section_table(path)?;
    let offset = offset as usize;
    if sections.iter().all(|(_, start, _)| offset < *start) {
        return Ok(Some("the PE headers".to_owned()));
    }
    Ok(sections
        .iter()
        .find(|(_, start, size)| (*start..start + size).contains(&offset))
        .map(|(name, start, _)| format!("PE section {name} + {}", offset - start)))
}

/// The kernel command line a UKI addon carries.
pub fn read_addon_cmdline(path: &Path) -> Result<String> {
    let mut sections = read_text_sections(path, &[".cmdline"])?;
    Ok(sections.remove(0))
}

/// The PE headers and section table sit in the first few KiB.
const HEADER_BYTES: usize = 64 * 1024;
/// The text sections are a few hundred bytes; anything huge is corrupt.
const MAX_TEXT_SECTION: usize = 1024 * 1024;

/// The open file and its sections, from its headers only.
fn section_table(path: &Path) -> Result<(File, Sections)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut headers = Vec::with_capacity(HEADER_BYTES);
    file.by_ref()
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut headers)
        .with_context(|| format!("reading {}", path.display()))?;
    let sections = pe_sections(&headers).with_context(|| format!("parsing {}", path.display()))?;
    Ok((file, sections))
}

/// (name, file offset, size) of every section of a PE image.
type Sections = Vec<(String, usize, usize)>;

/// Parses the section table from a PE image's first bytes.
fn pe_sections(data: &[u8]) -> Result<Sections> {
    let u16_at = |offset: usize| -> Result<usize> {
        let bytes = data
            .get(offset..offset + 2)
            .context("truncated PE header")?;
        Ok(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])))
    };
    let u32_at = |offset: usize| -> Result<usize> {
        let bytes = data
            .get(offset..offset + 4)
            .context("truncated PE header")?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    };
    if data.get(..2) != Some(b"MZ".as_slice()) {
        bail!("not a PE executable (no MZ header)");
    }
    let pe = u32_at(0x3c)?;
    if data.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        bail!("not a PE executable (no PE signature)");
    }
    let coff = pe + 4;
    let section_count = u16_at(coff + 2)?;
    let optional_header_size = u16_at(coff + 16)?;
    let table = coff + 20 + optional_header_size;
    let mut sections = Vec::with_capacity(section_count);
    for index in 0..section_count {
        let entry = table + index * 40;
        let name_bytes = data
            .get(entry..entry + 8)
            .context("truncated section table")?;
        let name = String::from_utf8_lossy(name_bytes)
            .trim_end_matches('\0')
            .to_owned();
        let virtual_size = u32_at(entry + 8)?;
        let raw_size = u32_at(entry + 16)?;
        let raw_offset = u32_at(entry + 20)?;
        // The raw size is padded to the file alignment; the virtual size is
        // what the section really holds.
        let size = if virtual_size == 0 {
            raw_size
        } else {
            virtual_size.min(raw_size)
        };
        sections.push((name, raw_offset, size));
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE file with the given sections, laid out like a UKI.
    fn fake_pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut data = vec![0u8; 0x40];
        data[..2].copy_from_slice(b"MZ");
        data[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        data.extend_from_slice(b"PE\0\0");
        let mut coff = [0u8; 20];
        coff[2..4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        coff[16..18].copy_from_slice(&0u16.to_le_bytes());
        data.extend_from_slice(&coff);
        let table_end = data.len() + sections.len() * 40;
        let mut body = Vec::new();
        for (name, content) in sections {
            let mut entry = [0u8; 40];
            entry[..name.len()].copy_from_slice(name.as_bytes());
            entry[8..12].copy_from_slice(&(content.len() as u32).to_le_bytes());
            let padded = content.len().div_ceil(512) * 512;
            entry[16..20].copy_from_slice(&(padded as u32).to_le_bytes());
            entry[20..24].copy_from_slice(&((table_end + body.len()) as u32).to_le_bytes());
            data.extend_from_slice(&entry);
            body.extend_from_slice(content);
            body.resize(body.len() + padded - content.len(), 0);
        }
        data.extend_from_slice(&body);
        data
    }

    #[test]
    fn reads_cmdline_uname_and_osrel() {
        let pe = fake_pe(&[
            (".osrel", b"ID=boxcar\n"),
            (".cmdline", b"usrhash=abc123 rw\0"),
            (".uname", b"6.12.0-amd64"),
        ]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), pe).unwrap();
        let info = read_uki(file.path()).unwrap();
        assert_eq!(info.cmdline, "usrhash=abc123 rw");
        assert_eq!(info.cmdline_value("usrhash"), Some("abc123"));
        assert_eq!(info.cmdline_value("rw"), None);
        assert_eq!(info.kernel_release, "6.12.0-amd64");
        assert_eq!(info.os_release, "ID=boxcar");
    }

    #[test]
    fn rejects_what_is_not_a_uki() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"#!/bin/sh\n").unwrap();
        assert!(read_uki(file.path()).is_err());
        std::fs::write(file.path(), fake_pe(&[(".text", b"x")])).unwrap();
        let err = read_uki(file.path()).unwrap_err();
        assert!(format!("{err:#}").contains(".cmdline"), "{err:#}");
    }

    #[test]
    fn a_byte_is_placed_in_its_section_or_the_headers() {
        let pe = fake_pe(&[(".osrel", b"ID=boxcar\n"), (".linux", &[1u8; 700])]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &pe).unwrap();
        let sections = pe_sections(&pe).unwrap();
        let (_, linux, _) = sections.iter().find(|(n, _, _)| n == ".linux").unwrap();
        let at = |offset: usize| section_at(file.path(), offset as u64).unwrap();
        assert_eq!(at(2).as_deref(), Some("the PE headers"));
        assert_eq!(at(linux + 12), Some("PE section .linux + 12".to_owned()));
        assert_eq!(at(pe.len() + 1), None);
    }
}
