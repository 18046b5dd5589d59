//! `boxcar stage push` and `pull`: a build handed between CI jobs.

use anyhow::Result;

use crate::cmdline::{GlobalArgs, StageArgs, StageCommand};
use crate::progress::Progress;
use crate::staging::{Selection, Staging};
use crate::units::human_bytes;

pub(super) fn stage(global: &GlobalArgs, args: &StageArgs, progress: &Progress) -> Result<()> {
    let (staging, verb, moved) = match &args.command {
        StageCommand::Push(push) => {
            let staging = Staging::open(&push.to, &global.s3_options())?;
            let selection = match &push.evidence {
                Some(platform) => Selection::Evidence(platform.parse()?),
                None => Selection::Everything,
            };
            let mut phase = progress.phase("push");
            let moved = staging.push(&push.build, &selection, &mut |name| phase.status(name))?;
            phase.done(&format!("{} files", moved.len()));
            (staging, "pushed", moved)
        }
        StageCommand::Pull(pull) => {
            let staging = Staging::open(&pull.from, &global.s3_options())?;
            let selection = match &pull.platform {
                Some(platform) => Selection::Platform(platform.parse()?),
                None => Selection::Everything,
            };
            let mut phase = progress.phase("pull");
            let moved = staging.pull(&pull.to, &selection, &mut |name| phase.status(name))?;
            phase.done(&format!("{} files", moved.len()));
            (staging, "pulled", moved)
        }
    };
    if global.json {
        out!("{}", serde_json::to_string_pretty(&moved)?);
    } else {
        let bytes: u64 = moved.iter().map(|m| m.size).sum();
        out!(
            "{verb} {} files ({}) {} {}",
            moved.len(),
            human_bytes(bytes),
            if verb == "pushed" { "to" } else { "from" },
            staging.describe()
        );
    }
    Ok(())
}
