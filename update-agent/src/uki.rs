//! Reading a staged UKI's own kernel command line (its `.cmdline` PE
//! section), to check that the `usrhash=` it boots with is the /usr staged
//! next to it. Only the headers and that section are read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The UKI's `.cmdline` section, as text.
pub fn cmdline(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let not_uki = |why: &str| anyhow::anyhow!("{} is not a UKI: {why}", path.display());
    let pe_offset = u64::from(read_u32(&mut file, 0x3c)?);
    let mut signature = [0u8; 4];
    file.seek(SeekFrom::Start(pe_offset))?;
    file.read_exact(&mut signature)?;
    if &signature != b"PE\0\0" {
        return Err(not_uki("no PE signature"));
    }
    let coff = pe_offset + 4;
    let sections = u64::from(read_u16(&mut file, coff + 2)?);
    let optional_header = u64::from(read_u16(&mut file, coff + 16)?);
    let table = coff + 20 + optional_header;
    if sections > 96 {
        return Err(not_uki("too many sections"));
    }
    for index in 0..sections {
        let entry = table + index * 40;
        let mut name = [0u8; 8];
        file.seek(SeekFrom::Start(entry))?;
        file.read_exact(&mut name)?;
        if &name != b".cmdline" {
            continue;
        }
        let size = read_u32(&mut file, entry + 8)?;
        let offset = u64::from(read_u32(&mut file, entry + 20)?);
        if size > 64 * 1024 {
            return Err(not_uki("its .cmdline section is larger than 64 KiB"));
        }
        let mut text = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut text)
            .with_context(|| format!("reading the .cmdline section of {}", path.display()))?;
        let text = String::from_utf8_lossy(&text);
        return Ok(text.trim_end_matches('\0').trim().to_owned());
    }
    bail!("{} has no .cmdline section", path.display())
}

/// The value of `usrhash=` on a kernel command line.
pub fn usrhash(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("usrhash="))
}

fn read_u32(file: &mut File, at: u64) -> Result<u32> {
    let mut bytes = [0u8; 4];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u16(file: &mut File, at: u64) -> Result<u16> {
    let mut bytes = [0u8; 2];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut bytes)?;
    Ok(u16::from_le_bytes(bytes))
}
