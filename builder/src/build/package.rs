//! The package phase: the composed and inspected parts handed to
//! [`convert`], which writes every selected platform's artifact.

use std::path::Path;

use anyhow::Result;

use super::convert::{self, Packaged, PlatformTiming};
use super::inspect::Inspected;
use super::plan::BuildPlan;
use crate::hosttools::HostTools;
use crate::platform::Platform;
use crate::progress::Progress;

/// Packages the `selected` platforms from the parts in `staging`.
pub(super) fn package(
    plan: &BuildPlan,
    inspected: &Inspected,
    staging: &Path,
    selected: &[&Platform],
    tools: &HostTools,
    progress: &Progress,
) -> Result<(Vec<Packaged>, Vec<PlatformTiming>)> {
    let parts = convert::Parts {
        dir: staging,
        version: &plan.version,
        table: &inspected.table,
        disk: "disk.raw",
        kernel: "vmlinuz",
        initrd: "initrd",
        usr: "usr.raw",
        usr_verity: "usr-verity.raw",
        usr_signature: super::inspect::USR_SIGNATURE_FILE,
        root_tar: "root.tar",
        uki_cmdline: &inspected.kernel.cmdline,
        usr_bytes: inspected.usr.filesystem_bytes,
        verity_bytes: inspected.usr.hash_tree_bytes,
        source_date_epoch: plan.source_date_epoch,
    };
    convert::package_all(&parts, selected, tools, progress)
}
