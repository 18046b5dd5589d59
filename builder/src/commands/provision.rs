//! `boxcar provision`: an Ignition config onto a disk before its first boot.

use anyhow::Result;

use crate::cmdline::{GlobalArgs, ProvisionArgs};
use crate::hosttools;
use crate::project::Cache;
use crate::provision::{self, ProvisionRequest};

pub(super) fn provision(global: &GlobalArgs, args: &ProvisionArgs) -> Result<()> {
    let cache = Cache::new(global.cache_dir.as_deref())?;
    let tools = hosttools::check(
        &provision::requirements(),
        &super::build::locator(&cache),
        "provision",
    )?;
    let written = provision::provision(
        &ProvisionRequest {
            disk: args.disk.clone(),
            config: args.config.clone(),
        },
        &tools,
    )?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&written)?);
    } else {
        out!(
            "wrote the config ({} bytes) to {} on partition {} of {}: the first boot applies it",
            written.bytes,
            written.path,
            written.root_partition,
            written.disk.display()
        );
    }
    Ok(())
}
