//! `boxcar`: builds, boot-tests and ships Boxcar Linux images.
//!
//! The binary (`main.rs`) only parses arguments and calls [`commands::run`].
//! Each module is one noun of the pipeline:
//!
//! | module | what it owns |
//! |---|---|
//! | [`cmdline`] | the command line (clap types only) |
//! | [`commands`] | one function per subcommand |
//! | [`project`] | where the checkout and the cache directory are |
//! | [`recipe`] | the mkosi recipes under `recipes/`, checked before use |
//! | [`channel`] | `channels/*.toml` |
//! | [`version`] | image versions |
//! | [`hosttools`] | the host programs a command needs, checked up front |
//! | [`process`] | running any external program |
//! | [`build`] | `boxcar build`: plan, compose (mkosi), inspect (partition table, verity, UKI), package ([`build::convert`]), record |
//! | [`image`] | a disk image's partition table |
//! | [`records`] | the files one side writes and another reads: `build.json` ([`records::buildinfo`]), boot-test evidence ([`records::evidence`]) |
//! | [`vmtest`] | `boxcar test`: qemu boots and their evidence |
//! | [`progress`] | progress on stderr |

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
pub mod output;
pub mod platform;
pub mod process;
pub mod progress;
pub mod project;
pub mod recipe;
pub mod records;
pub mod release;
pub mod units;
pub mod version;
pub mod vmtest;
