//! Where the bytes of /usr go: each package's share of the files in the
//! image as built, the biggest directories, and what no package owns
//! (files made at build time, the overlays); and where the bytes of the
//! UKI's initrd go. Knowing this is how the image gets smaller without
//! guessing.
//!
//! It is computed from two lists the recipe writes into mkosi's output:
//! the package database's file lists, taken by mkosi.postinst (mkosi
//! removes the database before mkosi.finalize runs), and every regular file
//! of the final /usr with its inode and size, taken by mkosi.finalize
//! (after mkosi's own removals, so what is counted is what ships). The
//! initrd is read as the kernel reads it: cpio archives, each compressed or
//! not, one after the other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::records::buildinfo::{FootprintEntry, InitrdFootprint, UsrFootprint};

/// The suffix of the owners list (`package<TAB>path` lines) mkosi.postinst
/// writes.
pub const OWNERS_SUFFIX: &str = ".usr-owners";
/// The suffix of the files list (`inode<TAB>size<TAB>path` lines)
/// mkosi.finalize writes.
pub const FILES_SUFFIX: &str = ".usr-files";

/// Directories are summed down to this many levels under /usr
/// (/usr/lib/modules/VERSION/kernel is four).
const DIRECTORY_DEPTH: usize = 4;
/// How many directories build.json keeps, biggest first.
const DIRECTORIES_KEPT: usize = 40;
/// The name under which files no package owns are counted.
pub const UNOWNED: &str = "(no package)";

/// One regular file of the final /usr.
#[derive(Debug, PartialEq)]
struct UsrFile {
    inode: u64,
    size: u64,
    path: String,
}

/// Reads both lists and sums them up.
pub fn footprint(owners_text: &str, files_text: &str) -> Result<UsrFootprint> {
    let owners = parse_owners(owners_text)?;
    let files = unique_inodes(parse_files(files_text)?);
    let mut packages: BTreeMap<&str, FootprintEntry> = BTreeMap::new();
    for file in &files {
        let owner = owners.get(file.path.as_str()).copied().unwrap_or(UNOWNED);
        add(
            packages.entry(owner).or_insert_with(|| entry(owner)),
            file.size,
        );
    }
    let mut packages: Vec<FootprintEntry> = packages.into_values().collect();
    biggest_first(&mut packages);
    // /usr itself is the footprint's total, not a directory to list.
    let sizes = files.iter().map(|f| (f.path.as_str(), f.size));
    Ok(UsrFootprint {
        bytes: files.iter().map(|f| f.size).sum(),
        files: files.len() as u64,
        packages,
        directories: by_directory(sizes.clone(), 2),
        biggest_files: biggest_files(sizes),
    })
}

/// The [`FILES_KEPT`] biggest of `files`, biggest first.
fn biggest_files<'a>(files: impl Iterator<Item = (&'a str, u64)>) -> Vec<FootprintEntry> {
    let mut biggest: Vec<FootprintEntry> = files
        .map(|(name, size)| FootprintEntry {
            name: name.to_owned(),
            bytes: size,
            files: 1,
        })
        .collect();
    biggest_first(&mut biggest);
    biggest.truncate(FILES_KEPT);
    biggest
}

/// The biggest directories, each file counted in every directory it lies
/// in from the `skip`th level down to [`DIRECTORY_DEPTH`] levels.
fn by_directory<'a>(
    files: impl Iterator<Item = (&'a str, u64)>,
    skip: usize,
) -> Vec<FootprintEntry> {
    let mut directories: BTreeMap<&str, FootprintEntry> = BTreeMap::new();
    for (path, size) in files {
        for directory in ancestors(path, skip) {
            add(
                directories
                    .entry(directory)
                    .or_insert_with(|| entry(directory)),
                size,
            );
        }
    }
    let mut directories: Vec<FootprintEntry> = directories.into_values().collect();
    biggest_first(&mut directories);
    directories.truncate(DIRECTORIES_KEPT);
    directories
}

fn entry(name: &str) -> FootprintEntry {
    FootprintEntry {
        name: name.to_owned(),
        bytes: 0,
        files: 0,
    }
}

fn add(entry: &mut FootprintEntry, size: u64) {
    entry.bytes += size;
    entry.files += 1;
}

fn biggest_first(entries: &mut [FootprintEntry]) {
    entries.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
}

/// The directories absolute `path` lies in, from the `skip`th level (1 for
/// /X, 2 for /X/Y) down [`DIRECTORY_DEPTH`] levels.
fn ancestors(path: &str, skip: usize) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(|(at, _)| &path[..at])
        .skip(skip)
        .take(DIRECTORY_DEPTH)
}

/// Path to package, from the postinst's list. Packages built before merged
/// /usr list /bin, /sbin and /lib paths: they are the same files under
/// /usr. A file two packages list (a diversion) goes to the first by name.
fn parse_owners(text: &str) -> Result<HashMap<String, &str>> {
    let mut owners = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let Some((package, path)) = line.split_once('\t') else {
            bail!("owners list line {}: no tab in {line:?}", number + 1);
        };
        let Some(path) = in_usr(path) else {
            continue;
        };
        owners
            .entry(path)
            .and_modify(|owner: &mut &str| *owner = (*owner).min(package))
            .or_insert(package);
    }
    Ok(owners)
}

/// `path` as a path under /usr, if it is one (after merged /usr).
fn in_usr(path: &str) -> Option<String> {
    if path.starts_with("/usr/") {
        return Some(path.to_owned());
    }
    ["/bin/", "/sbin/", "/lib/", "/lib64/"]
        .iter()
        .find(|prefix| path.starts_with(**prefix))
        .map(|_| format!("/usr{path}"))
}

fn parse_files(text: &str) -> Result<Vec<UsrFile>> {
    text.lines()
        .enumerate()
        .map(|(number, line)| {
            let mut fields = line.splitn(3, '\t');
            let mut number_field = |what: &str| -> Result<u64> {
                fields.next().and_then(|v| v.parse().ok()).with_context(|| {
                    format!("files list line {}: no {what} in {line:?}", number + 1)
                })
            };
            let inode = number_field("inode")?;
            let size = number_field("size")?;
            let Some(path) = fields.next().filter(|p| p.starts_with("/usr/")) else {
                bail!("files list line {}: no /usr path in {line:?}", number + 1);
            };
            Ok(UsrFile {
                inode,
                size,
                path: path.to_owned(),
            })
        })
        .collect()
}

/// Hard links are one file on disk: each inode counts once, under its
/// first path by name.
fn unique_inodes(mut files: Vec<UsrFile>) -> Vec<UsrFile> {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut seen = HashSet::new();
    files.retain(|f| seen.insert(f.inode));
    files
}

/// How many of the initrd's biggest files build.json keeps.
const FILES_KEPT: usize = 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const CPIO_MAGIC: &[u8] = b"070701";
/// Linux's limit on a path's length, the terminating NUL included.
const PATH_MAX: u64 = 4096;

/// Reads the initrd at `path` (zstd-compressed or plain newc cpio
/// archives, one after the other, as mkosi makes it) and sums up its
/// regular files.
pub fn initrd_footprint(path: &Path) -> Result<InitrdFootprint> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut files = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let offset = data.len() - rest.len();
        if rest[0] == 0 {
            rest = &rest[1..];
        } else if rest.starts_with(&ZSTD_MAGIC) {
            let mut frame = zstd::stream::read::Decoder::with_buffer(rest)?.single_frame();
            read_archives(&mut frame, false, &mut files).with_context(|| {
                format!(
                    "reading the zstd frame at byte {offset} of {}",
                    path.display()
                )
            })?;
            rest = frame.finish();
        } else if rest.starts_with(CPIO_MAGIC) {
            read_archives(&mut rest, true, &mut files).with_context(|| {
                format!(
                    "reading the cpio archive at byte {offset} of {}",
                    path.display()
                )
            })?;
        } else {
            bail!(
                "{}: neither a zstd frame nor a cpio archive at byte {offset}",
                path.display()
            );
        }
    }
    let sizes = files.iter().map(|(name, size)| (name.as_str(), *size));
    Ok(InitrdFootprint {
        stored_bytes: data.len() as u64,
        bytes: files.iter().map(|(_, size)| size).sum(),
        files: files.len() as u64,
        directories: by_directory(sizes.clone(), 1),
        biggest_files: biggest_files(sizes),
    })
}

/// Reads newc archives to the end of `input` (or to the first trailer, if
/// `one`), adding each regular file's absolute path and size to `files`.
/// A hard-linked file's bytes come with one of its names only, so each is
/// counted once.
fn read_archives(input: &mut impl Read, one: bool, files: &mut Vec<(String, u64)>) -> Result<()> {
    loop {
        // Entries start 4-byte aligned; archives may be padded with zeros.
        let mut word = [0u8; 4];
        match input.read_exact(&mut word) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if word == [0; 4] {
            continue;
        }
        let mut header = [0u8; 110];
        header[..4].copy_from_slice(&word);
        input.read_exact(&mut header[4..])?;
        if !header.starts_with(CPIO_MAGIC) {
            bail!(
                "not a newc cpio header: {:?}",
                String::from_utf8_lossy(&header[..6])
            );
        }
        let field = |index: usize| -> Result<u64> {
            let hex = std::str::from_utf8(&header[6 + 8 * index..14 + 8 * index])?;
            Ok(u64::from_str_radix(hex, 16)?)
        };
        let (mode, size, name_size) = (field(1)?, field(6)?, field(11)?);
        // A damaged header must not make us allocate gigabytes for a name.
        if name_size > PATH_MAX {
            bail!("a file name of {name_size} bytes: not a sound archive");
        }
        let mut name = vec![0u8; (padded(110 + name_size) - 110) as usize];
        input.read_exact(&mut name)?;
        name.truncate(name_size.saturating_sub(1) as usize);
        let name = String::from_utf8_lossy(&name).into_owned();
        if name == "TRAILER!!!" {
            if one {
                return Ok(());
            }
            continue;
        }
        let skipped = std::io::copy(&mut input.by_ref().take(padded(size)), &mut std::io::sink())?;
        if skipped < padded(size) {
            bail!("{name}: the archive ends inside it");
        }
        if mode & 0o170000 == 0o100000 {
            files.push((format!("/{}", name.trim_start_matches("./")), size));
        }
    }
}

/// `n` rounded up to a multiple of 4 (newc's alignment).
fn padded(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNERS: &str = "\
coreutils\t/.
coreutils\t/bin/ls
coreutils\t/usr/share/doc/coreutils/copyright
linux-image-6.12\t/lib/modules/6.12/kernel/fs/erofs.ko.xz
linux-image-6.12\t/usr/lib/modules/6.12/kernel/net/a.ko.xz
base-files\t/etc/os-release
";

    const FILES: &str = "\
10\t1000\t/usr/bin/ls
11\t500\t/usr/lib/modules/6.12/kernel/fs/erofs.ko.xz
12\t300\t/usr/lib/modules/6.12/kernel/net/a.ko.xz
12\t300\t/usr/lib/modules/6.12/kernel/net/b-hardlink.ko.xz
13\t50\t/usr/share/doc/coreutils/copyright
14\t7\t/usr/lib/udev/hwdb.bin
";

    #[test]
    fn bytes_go_to_their_packages_with_merged_usr_and_hard_links_once() {
        let footprint = footprint(OWNERS, FILES).unwrap();
        assert_eq!(footprint.bytes, 1857);
        assert_eq!(footprint.files, 5);
        let named: Vec<(&str, u64, u64)> = footprint
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.bytes, p.files))
            .collect();
        assert_eq!(
            named,
            [
                ("coreutils", 1050, 2),
                ("linux-image-6.12", 800, 2),
                (UNOWNED, 7, 1)
            ]
        );
    }

    #[test]
    fn directories_are_summed_down_to_four_levels() {
        let footprint = footprint(OWNERS, FILES).unwrap();
        let sizes: HashMap<&str, u64> = footprint
            .directories
            .iter()
            .map(|d| (d.name.as_str(), d.bytes))
            .collect();
        assert_eq!(sizes["/usr/lib"], 807);
        assert_eq!(sizes["/usr/lib/modules/6.12/kernel"], 800);
        assert_eq!(sizes["/usr/bin"], 1000);
        assert!(!sizes.contains_key("/usr"));
        assert!(!sizes.contains_key("/usr/lib/modules/6.12/kernel/fs"));
        assert_eq!(footprint.directories[0].name, "/usr/bin");
    }

    #[test]
    fn the_biggest_files_are_listed_each_hard_link_once() {
        let footprint = footprint(OWNERS, FILES).unwrap();
        let biggest: Vec<(&str, u64)> = footprint
            .biggest_files
            .iter()
            .map(|f| (f.name.as_str(), f.bytes))
            .collect();
        assert_eq!(
            biggest,
            [
                ("/usr/bin/ls", 1000),
                ("/usr/lib/modules/6.12/kernel/fs/erofs.ko.xz", 500),
                ("/usr/lib/modules/6.12/kernel/net/a.ko.xz", 300),
                ("/usr/share/doc/coreutils/copyright", 50),
                ("/usr/lib/udev/hwdb.bin", 7),
            ]
        );
    }

    /// A newc archive of `files` (path, contents), with its trailer.
    fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut entry = |name: &str, mode: u32, data: &[u8]| {
            let header = format!(
                "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                1, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
            );
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.resize(padded(out.len() as u64) as usize, 0);
            out.extend_from_slice(data);
            out.resize(padded(out.len() as u64) as usize, 0);
        };
        entry("usr", 0o040755, b"");
        for (name, data) in files {
            entry(name, 0o100644, data);
        }
        entry("TRAILER!!!", 0, b"");
        out
    }

    #[test]
    fn an_initrd_is_read_across_plain_and_compressed_archives() {
        let mut initrd = cpio(&[("kernel/x86/microcode/GenuineIntel.bin", &[1; 10])]);
        initrd.extend_from_slice(&[0; 512]);
        let mut compressed = cpio(&[("usr/bin/ignition", &[2; 3000]), ("usr/lib/a.so", &[3; 5])]);
        compressed.extend_from_slice(&[0; 100]);
        compressed.extend(cpio(&[("./usr/lib/modules/6.12/kernel/b.ko", &[4; 700])]));
        initrd.extend(zstd::encode_all(&compressed[..], 3).unwrap());
        initrd.extend_from_slice(&[0; 3]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, &initrd).unwrap();

        let footprint = initrd_footprint(&path).unwrap();
        assert_eq!(footprint.stored_bytes, initrd.len() as u64);
        assert_eq!((footprint.bytes, footprint.files), (3715, 4));
        let biggest: Vec<&str> = footprint
            .biggest_files
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            biggest,
            [
                "/usr/bin/ignition",
                "/usr/lib/modules/6.12/kernel/b.ko",
                "/kernel/x86/microcode/GenuineIntel.bin",
                "/usr/lib/a.so"
            ]
        );
        let usr = footprint
            .directories
            .iter()
            .find(|d| d.name == "/usr")
            .unwrap();
        assert_eq!((usr.bytes, usr.files), (3705, 3));

        std::fs::write(&path, b"MZ not an initrd").unwrap();
        let error = initrd_footprint(&path).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("neither a zstd frame nor a cpio archive at byte 0"),
            "{error}"
        );
        let mut huge_name = cpio(&[("usr/x", &[1; 100])]);
        huge_name[6 + 8 * 11..14 + 8 * 11].copy_from_slice(b"ffffffff");
        std::fs::write(&path, &huge_name).unwrap();
        let error = format!("{:#}", initrd_footprint(&path).unwrap_err());
        assert!(error.contains("not a sound archive"), "{error}");
        std::fs::write(&path, &cpio(&[("usr/x", &[1; 100])])[..240]).unwrap();
        let error = format!("{:#}", initrd_footprint(&path).unwrap_err());
        assert!(error.contains("the archive ends inside it"), "{error}");
    }

    #[test]
    fn malformed_lists_are_refused_with_the_line() {
        let error = footprint("no-tab-here\n", FILES).unwrap_err();
        assert!(error.to_string().contains("owners list line 1"), "{error}");
        let error = footprint(OWNERS, "1\tbig\t/usr/x\n").unwrap_err();
        assert!(
            format!("{error:#}").contains("files list line 1: no size"),
            "{error:#}"
        );
        let error = footprint(OWNERS, "1\t2\t/etc/x\n").unwrap_err();
        assert!(error.to_string().contains("no /usr path"), "{error}");
    }
}
