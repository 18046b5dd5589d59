//! `boxcar`: builds, boot-tests and ships Boxcar Linux images.
//!
//! The binary (`main.rs`) only parses arguments and calls [`commands::run`].
//! Three sides stand next to each other; none imports another's code. They
//! meet in shared records and shared plumbing (a test below keeps it so):
//!
//! | side | module | what it owns |
//! |---|---|---|
//! | build | [`build`] | `boxcar build`: plan, compose (mkosi), inspect (partition table, verity, UKI), package ([`build::convert`]), record |
//! | boot tests | [`vmtest`] | `boxcar test`: qemu boots and their evidence |
//! | release | [`release`] | `boxcar publish`, `promote`, `keys`, `repair`: the store's writers and its storage backends |
//! | plumbing | [`provision`] | an Ignition config written onto a disk before its first boot (`boxcar provision`, and the boot tests' metal case) |
//! | readers | [`download`] | `boxcar download`: the operator's side of the client library (`boxcar-client`) |
//! | pipeline | [`staging`] | `boxcar stage`: a build handed between CI jobs through object storage |
//! | records | [`records`] | the files one side writes and another reads: `build.json` ([`records::buildinfo`]), boot-test evidence ([`records::evidence`]) |
//! | config | [`project`] | where the checkout and the cache directory are |
//! | config | [`recipe`] | the mkosi recipes under `recipes/`, checked before use |
//! | config | [`channel`] | `channels/*.toml` |
//! | config | [`platform`] | the platform table, `recipes/platforms.toml` |
//! | config | [`version`] | image versions |
//! | config | [`duration`] | durations as configuration writes them |
//! | config | [`config_error`] | errors naming file, line and key |
//! | config | [`defaults`] | the store and keys readers use unless told otherwise |
//! | plumbing | [`process`] | running any external program |
//! | plumbing | [`hosttools`] | the host programs a command needs, checked up front |
//! | plumbing | [`image`] | a disk image's partition table |
//! | plumbing | [`objectstore`] | S3-compatible object storage: signed requests, conditional writes, resumable uploads |
//! | plumbing | [`sparse`] | reading a build's sparse files, holes from memory |
//! | plumbing | [`progress`] | progress on stderr |
//! | plumbing | [`output`], [`units`] | results on stdout; sizes and times for people |
//! | plumbing | [`interrupt`] | Ctrl-C and SIGTERM, and crash points for tests |
//! | tests | `isolated` | unit tests that change what the process shares (umask, interrupt flag), each run in a process of its own |
//! | CLI | [`cmdline`] | the command line (clap types only) |
//! | CLI | [`commands`] | one function per subcommand, grouped by verb family |

/// Prints a line of results on stdout. A closed stdout (`boxcar platforms |
/// head`) ends the program quietly instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Like [`out!`], without the newline.
#[macro_export]
macro_rules! out_raw {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(&format!($($arg)*))
    };
}

pub mod build;
pub mod channel;
pub mod cmdline;
pub mod commands;
pub mod config_error;
pub mod defaults;
pub mod download;
pub mod duration;
pub mod hosttools;
pub mod image;
pub mod interrupt;
#[cfg(test)]
mod isolated;
pub mod objectstore;
pub mod output;
pub mod platform;
pub mod process;
pub mod progress;
pub mod project;
pub mod provision;
pub mod recipe;
pub mod records;
pub mod release;
pub mod sparse;
pub mod staging;
pub mod units;
pub mod version;
pub mod vmtest;

/// The sides stand next to each other: a side's code may use the records,
/// the configuration and the plumbing, never another side's code, and
/// nothing shared may use a side. Only `commands` sees everything.
#[cfg(test)]
mod architecture {
    use std::path::Path;

    const SIDES: &[&str] = &["build", "vmtest", "release", "download", "staging"];
    const SHARED: &[&str] = &[
        "records",
        "provision",
        "project",
        "recipe",
        "channel",
        "platform",
        "version",
        "duration",
        "config_error",
        "defaults",
        "process",
        "hosttools",
        "image",
        "progress",
        "output",
        "units",
        "interrupt",
        "objectstore",
        "sparse",
    ];

    /// The `crate::NAME` modules a file's code refers to.
    fn uses(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut found = Vec::new();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !found.contains(&name) {
                found.push(name);
            }
        }
        found
    }

    /// Every `.rs` file under `path` (or `path` itself).
    fn files(path: &Path) -> Vec<std::path::PathBuf> {
        if path.is_file() {
            return vec![path.to_owned()];
        }
        let mut all = Vec::new();
        for entry in std::fs::read_dir(path).unwrap() {
            let entry = entry.unwrap().path();
            if entry.is_dir() {
                all.extend(files(&entry));
            } else if entry.extension().is_some_and(|e| e == "rs") {
                all.push(entry);
            }
        }
        all
    }

    fn module_files(name: &str) -> Vec<std::path::PathBuf> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let dir = src.join(name);
        if dir.is_dir() {
            files(&dir)
        } else {
            files(&src.join(format!("{name}.rs")))
        }
    }

    #[test]
    fn sides_never_import_each_other_and_shared_code_imports_no_side() {
        let mut wrong = Vec::new();
        for module in SIDES.iter().chain(SHARED) {
            let forbidden: Vec<&str> = if SIDES.contains(module) {
                SIDES.iter().copied().filter(|s| s != module).collect()
            } else {
                SIDES.to_vec()
            };
            for file in module_files(module) {
                for used in uses(&file) {
                    if forbidden.contains(&used.as_str()) || used == "commands" {
                        wrong.push(format!("{} uses crate::{used}", file.display()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
