//! A streamOptimized VMDK writer (VMware Virtual Disk Format 5.0,
//! "stream-optimized compressed sparse extents").
//!
//! Written here rather than by `qemu-img convert` because qemu-img deflates
//! grain by grain on one CPU; here grains are compressed in parallel, at
//! zlib's fastest level, and grains inside holes of the sparse source are
//! never read. The layout: a header, the descriptor, then each non-zero
//! 64 KiB grain as a marker (its LBA and compressed size) followed by its
//! zlib stream; then the grain tables, the grain directory, a footer (the
//! header again, now with the directory's offset) and an end-of-stream
//! marker.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use flate2::write::ZlibEncoder;
use flate2::Compression;

const SECTOR: u64 = 512;
/// Sectors per grain: 64 KiB grains, what VMware writes.
const GRAIN_SECTORS: u64 = 128;
const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per grain table.
const GT_ENTRIES: u64 = 512;
const MAGIC: u32 = 0x564d_444b; // "KDMV"
const GD_AT_END: u64 = u64::MAX;
/// Valid newline detection (bit 0), compressed grains (16), markers (17).
const FLAGS: u32 = 0x0003_0001;
const COMPRESS_DEFLATE: u16 = 1;
/// Sectors reserved for the descriptor, and before the first grain.
const DESCRIPTOR_SECTORS: u64 = 20;
const OVERHEAD_SECTORS: u64 = 128;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// Grains compressed per round (spread over the worker threads).
const BATCH_GRAINS: u64 = 256;

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmdkInfo {
    /// The virtual disk's size in bytes.
    pub capacity: u64,
    /// Grains stored (non-zero 64 KiB blocks).
    pub grains: u64,
}

/// Converts the raw image `raw` into a streamOptimized VMDK at `out`.
/// `adapter` is the descriptor's `ddb.adapterType` (e.g. "lsilogic").
pub fn write_stream_optimized(raw: &Path, out: &Path, adapter: &str, cid: u32) -> Result<VmdkInfo> {
    let source = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let capacity = source.metadata()?.len();
    if capacity % SECTOR != 0 || capacity == 0 {
        bail!(
            "{} is {capacity} bytes, not a whole number of 512-byte sectors",
            raw.display()
        );
    }
    let capacity_sectors = capacity / SECTOR;
    let grain_count = capacity_sectors.div_ceil(GRAIN_SECTORS);
    let table_count = grain_count.div_ceil(GT_ENTRIES);
    let candidates = grains_with_data(&source, capacity);

    let file_name = out
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut writer = SectorWriter::new(
        File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    writer.write(&header(capacity_sectors, GD_AT_END))?;
    let descriptor = descriptor(capacity_sectors, &file_name, adapter, cid);
    if descriptor.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
        bail!("the VMDK descriptor does not fit its {DESCRIPTOR_SECTORS} sectors");
    }
    writer.write_at_sector(1, descriptor.as_bytes())?;
    writer.seek_sector(OVERHEAD_SECTORS)?;

    let mut table = vec![0u32; (table_count * GT_ENTRIES) as usize];
    let mut stored = 0;
    for batch in candidates.chunks(BATCH_GRAINS as usize) {
        for (grain, compressed) in compress_batch(&source, batch, capacity)? {
            let Some(compressed) = compressed else {
                continue;
            };
            let sector = writer.sector();
            table[grain as usize] = u32::try_from(sector).context("the VMDK grows beyond 2 TiB")?;
            let mut marker = Vec::with_capacity(12 + compressed.len());
            marker.extend_from_slice(&(grain * GRAIN_SECTORS).to_le_bytes());
            marker.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            marker.extend_from_slice(&compressed);
            writer.write(&marker)?;
            stored += 1;
        }
    }

    // Grain tables, then the directory that points at them.
    let table_sectors = GT_ENTRIES * 4 / SECTOR;
    let mut directory = Vec::with_capacity(table_count as usize);
    for entries in table.chunks(GT_ENTRIES as usize) {
        writer.write(&metadata_marker(table_sectors, MARKER_GT))?;
        directory.push(u32::try_from(writer.sector()).context("the VMDK grows beyond 2 TiB")?);
        writer.write(&le_words(entries))?;
    }
    let directory_sectors = (table_count * 4).div_ceil(SECTOR);
    writer.write(&metadata_marker(directory_sectors, MARKER_GD))?;
    let directory_sector = writer.sector();
    writer.write(&le_words(&directory))?;
    writer.write(&metadata_marker(1, MARKER_FOOTER))?;
    writer.write(&header(capacity_sectors, directory_sector))?;
    writer.write(&metadata_marker(0, MARKER_EOS))?;
    writer.finish()?;
    Ok(VmdkInfo {
        capacity,
        grains: stored,
    })
}

/// Grains that overlap a data region of the sparse source; the others are
/// holes and stay unallocated without being read.
fn grains_with_data(source: &File, capacity: u64) -> Vec<u64> {
    let mut grains = Vec::new();
    for region in boxcar_signing::data_regions(source, capacity) {
        let first = region.start / GRAIN_BYTES;
        let last = (region.end - 1) / GRAIN_BYTES;
        for grain in first..=last {
            if grains.last() != Some(&grain) {
                grains.push(grain);
            }
        }
    }
    grains
}

/// A grain's number and its zlib stream (`None`: all zeros, not stored).
type CompressedGrain = (u64, Option<Vec<u8>>);

/// Reads and compresses `grains` on every CPU; `None` for all-zero grains.
fn compress_batch(
    source: &File,
    grains: &[u64],
    capacity: u64,
) -> Result<Vec<(u64, Option<Vec<u8>>)>> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(1);
    let chunk = grains.len().div_ceil(workers).max(1);
    let results: Vec<Result<Vec<CompressedGrain>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = grains
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&g| Ok((g, compress_grain(source, g, capacity)?)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("compression thread panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(grains.len());
    for part in results {
        all.extend(part?);
    }
    Ok(all)
}

fn compress_grain(source: &File, grain: u64, capacity: u64) -> Result<Option<Vec<u8>>> {
    let offset = grain * GRAIN_BYTES;
    let length = GRAIN_BYTES.min(capacity - offset) as usize;
    let mut data = vec![0u8; GRAIN_BYTES as usize];
    source.read_exact_at(&mut data[..length], offset)?;
    if data.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(length / 2), Compression::fast());
    encoder.write_all(&data)?;
    Ok(Some(encoder.finish()?))
}

fn header(capacity_sectors: u64, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    h[12..20].copy_from_slice(&capacity_sectors.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GT_ENTRIES as u32).to_le_bytes());
    h[48..56].copy_from_slice(&0u64.to_le_bytes());
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    h[72] = 0;
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&COMPRESS_DEFLATE.to_le_bytes());
    h
}

fn metadata_marker(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn le_words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The text descriptor; geometry as VMware computes it for SCSI disks.
fn descriptor(capacity_sectors: u64, file_name: &str, adapter: &str, cid: u32) -> String {
    let cylinders = (capacity_sectors / (255 * 63)).min(65535);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {capacity_sectors} SPARSE \"{file_name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"14\"\n\
         ddb.adapterType = \"{adapter}\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\n"
    )
}

/// Writes whole sectors: every write is padded to a sector boundary.
struct SectorWriter {
    out: BufWriter<File>,
    position: u64,
}

impl SectorWriter {
    fn new(file: File) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 20, file),
            position: 0,
        }
    }

    fn sector(&self) -> u64 {
        self.position / SECTOR
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data)?;
        let padding = (SECTOR - data.len() as u64 % SECTOR) % SECTOR;
        self.out.write_all(&vec![0u8; padding as usize])?;
        self.position += data.len() as u64 + padding;
        Ok(())
    }

    fn write_at_sector(&mut self, sector: u64, data: &[u8]) -> Result<()> {
        self.seek_sector(sector)?;
        self.write(data)
    }

    fn seek_sector(&mut self, sector: u64) -> Result<()> {
        self.out.flush()?;
        let target = sector * SECTOR;
        // Extend with zeros explicitly so the metadata area is written,
        // not a hole: some importers read the file as a stream.
        if target > self.position {
            let gap = target - self.position;
            self.out.write_all(&vec![0u8; gap as usize])?;
            self.position = target;
        } else {
            self.out.get_mut().seek(SeekFrom::Start(target))?;
            self.position = target;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(())
    }
}

/// Reads a streamOptimized VMDK back into raw bytes (for tests and for the
/// OVA check): follows the footer's grain directory.
pub fn read_stream_optimized(vmdk: &Path) -> Result<Vec<u8>> {
    let mut file = File::open(vmdk)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
    if data.len() < 1536 || u32_at(0) != MAGIC {
        bail!("{} is not a VMDK sparse extent", vmdk.display());
    }
    // The footer is the second-to-last sector; end-of-stream the last.
    let footer = data.len() - 1024;
    if u32_at(footer) != MAGIC {
        bail!(
            "{} has no footer where a streamOptimized VMDK has one",
            vmdk.display()
        );
    }
    let capacity = u64_at(footer + 12) * SECTOR;
    let gd = (u64_at(footer + 56) * SECTOR) as usize;
    let grains = capacity.div_ceil(GRAIN_BYTES);
    let tables = grains.div_ceil(GT_ENTRIES);
    let mut raw = vec![0u8; capacity as usize];
    for t in 0..tables as usize {
        let gt = (u32_at(gd + t * 4) as u64 * SECTOR) as usize;
        for e in 0..GT_ENTRIES as usize {
            let grain = t as u64 * GT_ENTRIES + e as u64;
            if grain >= grains {
                break;
            }
            let sector = u32_at(gt + e * 4) as usize;
            if sector == 0 {
                continue;
            }
            let marker = sector * SECTOR as usize;
            let lba = u64_at(marker);
            let size = u32_at(marker + 8) as usize;
            if lba != grain * GRAIN_SECTORS {
                bail!("grain {grain} points at a marker for LBA {lba}");
            }
            let mut decoder =
                flate2::read::ZlibDecoder::new(&data[marker + 12..marker + 12 + size]);
            let mut grain_data = Vec::new();
            decoder.read_to_end(&mut grain_data)?;
            let start = (grain * GRAIN_BYTES) as usize;
            let end = (start + grain_data.len()).min(raw.len());
            raw[start..end].copy_from_slice(&grain_data[..end - start]);
        }
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse raw disk with data at the start, a lone sector in the
    /// middle of a hole, an all-zero written grain, and data up to an end
    /// that is not grain-aligned.
    fn sample_raw(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let size = 3 * 1024 * 1024 + 512 * 3;
        let mut content = vec![0u8; size];
        for (i, byte) in content[..100_000].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        content[1_500_000..1_500_512].fill(0xab);
        content[size - 700..].fill(0x5a);
        let path = dir.join("disk.raw");
        let mut file = File::create(&path).unwrap();
        file.write_all(&content[..100_000]).unwrap();
        file.write_all_at(&vec![0u8; 65536], 2 * 1024 * 1024)
            .unwrap();
        file.write_all_at(&content[1_500_000..1_500_512], 1_500_000)
            .unwrap();
        file.write_all_at(&content[size - 700..], (size - 700) as u64)
            .unwrap();
        file.set_len(size as u64).unwrap();
        (path, content)
    }

    #[test]
    fn round_trips_through_our_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, content) = sample_raw(dir.path());
        let vmdk = dir.path().join("disk.vmdk");
        let info = write_stream_optimized(&raw, &vmdk, "lsilogic", 0x1234).unwrap();
        assert_eq!(info.capacity, content.len() as u64);
        assert!(info.grains >= 3 && info.grains <= 6, "{info:?}");
        assert_eq!(read_stream_optimized(&vmdk).unwrap(), content);
        let text = std::fs::read(&vmdk).unwrap();
        let descriptor = String::from_utf8_lossy(&text[512..1024]);
        assert!(
            descriptor.contains("createType=\"streamOptimized\""),
            "{descriptor}"
        );
        assert!(
            descriptor.contains("RW 6147 SPARSE \"disk.vmdk\""),
            "{descriptor}"
        );
    }

    /// qemu's independent VMDK reader agrees (when qemu-img is installed,
    /// as ci/setup-host makes it).
    #[test]
    fn qemu_img_reads_it_identically() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, _) = sample_raw(dir.path());
        let vmdk = dir.path().join("disk.vmdk");
        write_stream_optimized(&raw, &vmdk, "lsilogic", 1).unwrap();
        let Ok(output) = std::process::Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vmdk"])
            .arg(&raw)
            .arg(&vmdk)
            .output()
        else {
            eprintln!("SKIPPED: qemu-img is not installed");
            return;
        };
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&vmdk)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            info["format-specific"]["data"]["create-type"],
            "streamOptimized"
        );
    }

    #[test]
    fn refuses_a_size_that_is_not_whole_sectors() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("odd.raw");
        std::fs::write(&raw, [1u8; 1000]).unwrap();
        assert!(write_stream_optimized(&raw, &dir.path().join("x.vmdk"), "lsilogic", 1).is_err());
    }
}
