//! `boxcar test`, and `boxcar internal http-serve`, which qemu runs for
//! each guest connection during a boot test.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::cmdline::{AccelArg, GlobalArgs, InternalArgs, InternalCommand, TestArgs};
use crate::hosttools;
use crate::progress::Progress;
use crate::project::Cache;
use crate::vmtest::{self, qemu::AccelRequest, TestRequest};

pub(super) fn test(global: &GlobalArgs, args: &TestArgs, progress: &Progress) -> Result<()> {
    let cache = Cache::new(global.cache_dir.as_deref())?;
    let tools = hosttools::check(
        &vmtest::requirements(),
        &super::build::locator(&cache),
        "test",
    )?;
    let request = TestRequest {
        build_dir: args.build.clone(),
        platforms: args.platforms.clone(),
        tamper_usr: args.tamper_usr,
        tamper_uki: args.tamper_uki,
        tamper_usr_signature: args.tamper_usr_signature,
        update_from: args.update_from.clone(),
        stores: args.stores.clone(),
        fleet_lock: args.fleet_lock,
        failing_update: args.failing_update,
        accel: match args.accel {
            AccelArg::Auto => AccelRequest::Auto,
            AccelArg::Kvm => AccelRequest::Kvm,
            AccelArg::Tcg => AccelRequest::Tcg,
        },
        timeout: args.timeout.map(Duration::from_secs),
        memory_mib: args.memory,
        cpus: args.cpus,
        provision: !args.no_provision,
        bad_configs: args.bad_configs,
    };
    let outcomes = vmtest::run(&request, &tools, progress)?;
    if global.json {
        let all: Vec<&crate::records::evidence::Evidence> =
            outcomes.iter().map(|o| &o.evidence).collect();
        out!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for outcome in &outcomes {
            out_raw!("{}", vmtest::evidence::summary(&outcome.evidence));
            out!("evidence: {}\n", outcome.evidence_dir.display());
        }
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.evidence.passed)
        .map(|o| {
            let checks: Vec<&str> = o
                .evidence
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name.as_str())
                .collect();
            format!(
                "{} ({}; console log {})",
                o.evidence.platform,
                checks.join(", "),
                o.evidence_dir
                    .join(crate::records::evidence::CONSOLE_LOG)
                    .display()
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("boot tests failed: {}", failed.join("; "));
    }
    Ok(())
}

/// `boxcar internal http-serve`: answers HTTP on stdin/stdout for one guest
/// connection (qemu runs it per connection during boot tests).
pub(super) fn internal(args: &InternalArgs) -> Result<()> {
    match &args.command {
        InternalCommand::HttpServe(serve) => {
            let content = vmtest::http::Content {
                dir: serve.dir.clone(),
                files: serve.files.clone(),
                imds_hostname: serve.imds_hostname.clone(),
                imds_user_data: serve.imds_user_data.clone(),
                store: serve.store.clone(),
                fleet_lock: serve
                    .fleet_lock_log
                    .clone()
                    .map(|log| vmtest::http::FleetLockServer {
                        log,
                        refusals: serve.fleet_lock_refusals,
                    }),
            };
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            let mut output = std::io::BufWriter::new(std::io::stdout().lock());
            vmtest::http::serve_connection(&mut input, &mut output, &content)?;
            Ok(())
        }
    }
}
