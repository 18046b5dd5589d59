//! Where the bytes of /usr go: each package's share of the files in the
//! image as built, the biggest directories, and what no package owns
//! (files made at build time, the overlays). Knowing this is how the image
//! gets smaller without guessing.
//!
//! It is computed from two lists the recipe writes into mkosi's output:
//! the package database's file lists, taken by mkosi.postinst (mkosi
//! removes the database before mkosi.finalize runs), and every regular file
//! of the final /usr with its inode and size, taken by mkosi.finalize
//! (after mkosi's own removals, so what is counted is what ships).

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Context, Result};

use crate::records::buildinfo::{FootprintEntry, UsrFootprint};

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
    let mut directories: BTreeMap<String, FootprintEntry> = BTreeMap::new();
    for file in &files {
        let owner = owners.get(file.path.as_str()).copied().unwrap_or(UNOWNED);
        add(
            packages.entry(owner).or_insert_with(|| entry(owner)),
            file.size,
        );
        for directory in ancestors(&file.path) {
            add(
                directories
                    .entry(directory.to_owned())
                    .or_insert_with(|| entry(directory)),
                file.size,
            );
        }
    }
    let mut packages: Vec<FootprintEntry> = packages.into_values().collect();
    biggest_first(&mut packages);
    let mut directories: Vec<FootprintEntry> = directories.into_values().collect();
    biggest_first(&mut directories);
    directories.truncate(DIRECTORIES_KEPT);
    Ok(UsrFootprint {
        bytes: files.iter().map(|f| f.size).sum(),
        files: files.len() as u64,
        packages,
        directories,
    })
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

/// The directories `path` lies in, from /usr/X down to [`DIRECTORY_DEPTH`]
/// levels (not /usr itself: its total is the footprint's).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(|(at, _)| &path[..at])
        .skip(2)
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
