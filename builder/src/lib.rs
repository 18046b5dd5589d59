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
//! | [`mkosi`] | the mkosi command line and its output |
//! | [`build`] | `boxcar build`: plan, compose, inspect, record |
//! | [`image`] | a disk image's partition table |
//! | [`uki`] | a unified kernel image's embedded command line |
//! | [`buildinfo`] | `build.json` |
//! | [`records`] | the files one side writes and another reads: boot-test evidence |
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
pub mod buildinfo;
pub mod channel;
pub mod channeldoc;
pub mod cmdline;
pub mod commands;
pub mod config_error;
pub mod convert;
pub mod defaults;
pub mod download;
pub mod duration;
pub mod hosttools;
pub mod image;
pub mod interrupt;
pub mod mkosi;
pub mod output;
pub mod platform;
pub mod process;
pub mod progress;
pub mod project;
pub mod promote;
pub mod publish;
pub mod recipe;
pub mod records;
pub mod store;
pub mod storesource;
pub mod uki;
pub mod units;
pub mod verify;
pub mod version;
pub mod vmtest;
