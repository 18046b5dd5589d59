//! The verbs: one function per subcommand, from parsed arguments to a
//! printed result. The work is in the library's sides (build, vmtest,
//! release) and the client; these files only gather a request, call it,
//! and print what came back (text, or JSON with --json).
//!
//! | file | verbs |
//! |---|---|
//! | [`build`] | `build`, `check`, `platforms`, `footprint`, `compare` |
//! | [`test`] | `test`, and `internal http-serve` (run by qemu during tests) |
//! | [`release`] | `keys`, `publish`, `promote`, `renew`, `repair` |
//! | [`read`] | `verify`, `download` (and `download --list`) |
//! | [`provision`] | `provision` |
//! | [`stage`] | `stage push`, `stage pull` |

mod build;
mod provision;
mod read;
mod release;
mod stage;
mod test;

use anyhow::Result;

use crate::cmdline::{Cli, Command};
use crate::progress::Progress;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    crate::interrupt::install();
    let progress = Progress::new(cli.global.quiet);
    match cli.command {
        Command::Build(args) => build::build(&cli.global, &args, &progress),
        Command::Test(args) => test::test(&cli.global, &args, &progress),
        Command::Check(args) => build::check(&cli.global, &args),
        Command::Platforms(args) => build::platforms(&cli.global, &args),
        Command::Footprint(args) => build::footprint(&cli.global, &args),
        Command::Compare(args) => build::compare(&cli.global, &args, &progress),
        Command::Internal(args) => test::internal(&args),
        Command::Keys(args) => release::keys(&cli.global, &args, &progress),
        Command::Publish(args) => release::publish(&cli.global, &args, &progress),
        Command::Promote(args) => release::promote(&cli.global, &args, &progress),
        Command::Repair(args) => release::repair(&cli.global, &args, &progress),
        Command::Renew(args) => release::renew(&cli.global, &args, &progress),
        Command::Provision(args) => provision::provision(&cli.global, &args),
        Command::Verify(args) => read::verify(&cli.global, &args, &progress),
        Command::Download(args) => read::download(&cli.global, &args, &progress),
        Command::Stage(args) => stage::stage(&cli.global, &args, &progress),
    }
}
