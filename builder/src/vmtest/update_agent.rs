//! The update tests, driven by the node agent: the older build's disk
//! boots, and its own `boxcar-update` follows a store the harness serves
//! (http://10.0.2.102/<name>/, a directory of stores the test published),
//! downloads, verifies and installs the newer build and reboots into it.
//!
//! - `good/` is the store the agent updates from; with FleetLock, the
//!   harness also runs a lock server (http://10.0.2.103/) that refuses the
//!   first reboot requests and logs every request.
//! - Any other store (`paused/`, `waves/`, `tampered/`, ...) is checked
//!   first with `boxcar-update check` on the first boot: each must install
//!   nothing, and a known name must give its reason.
//! - A failing update: the host's own health check (in /etc/boxcar/
//!   health.d) fails the new version, whose tries run out; the older
//!   version comes back and the agent marks the new one bad.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::evidence::check;
use super::http::{self, LockRequest};
use crate::records::buildinfo::BuildInfo;
use crate::records::evidence::BootOutcome;
use crate::records::evidence::Check;

/// Where the guest finds the stores, and the lock server.
pub const STORE_HTTP_ADDRESS: &str = "10.0.2.102:80";
pub const LOCK_HTTP_ADDRESS: &str = "10.0.2.103:80";

/// The store the agent updates from, inside the directory of stores.
pub const GOOD_STORE: &str = "good";

/// Pre-reboot requests the test lock server refuses before granting one.
pub const LOCK_REFUSALS: u32 = 2;

/// How the update test runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Strategy `immediate`.
    Immediate,
    /// Strategy `fleet_lock`, after the checks of the other stores.
    FleetLock,
    /// Strategy `immediate`, and the new version fails its health check.
    Failing,
}

/// What each known extra store must make a check say.
const KNOWN_STORES: [(&str, &str); 3] = [
    ("paused", "rollout is paused"),
    ("waves", "not yet to this host"),
    ("tampered", "does not match the signed release"),
];

/// The files the guest script reads from testdata/agent/.
pub fn guest_files(stores: &Path, mode: Mode, build: &BuildInfo) -> Result<Vec<(String, String)>> {
    if !stores.join(GOOD_STORE).join("index.json").is_file() {
        bail!(
            "{} is not a directory of stores with a published store in {GOOD_STORE}/",
            stores.display()
        );
    }
    let channel = build.channel.as_str();
    let strategy = match mode {
        Mode::FleetLock => "fleet_lock",
        Mode::Immediate | Mode::Failing => "immediate",
    };
    let mut files = vec![(
        "agent/update.toml".to_owned(),
        config(GOOD_STORE, channel, strategy),
    )];
    if mode == Mode::FleetLock {
        for name in extra_stores(stores)? {
            files.push((
                format!("agent/check-{name}.toml"),
                config(&name, channel, "immediate"),
            ));
        }
    }
    let settled = match mode {
        Mode::Immediate => "updated from".to_owned(),
        Mode::FleetLock => "reported steady state".to_owned(),
        Mode::Failing => format!("not installing {}", build.version),
    };
    files.push(("agent/settled-when".to_owned(), settled));
    if mode == Mode::Failing {
        files.push(("agent/fails-on".to_owned(), build.version.to_string()));
    }
    Ok(files)
}

/// The stores besides the good one, sorted.
fn extra_stores(stores: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(stores)
        .with_context(|| format!("listing {}", stores.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != GOOD_STORE && !n.starts_with('.'))
        .collect();
    names.sort();
    for name in &names {
        crate::channel::ChannelName::try_from(name.clone()).map_err(|_| {
            anyhow::anyhow!("store directory {name:?}: use lowercase letters, digits and '-'")
        })?;
    }
    Ok(names)
}

/// /etc/boxcar/update.toml for the test: checks at once, short retries.
fn config(store: &str, channel: &str, strategy: &str) -> String {
    format!(
        "[store]\nurl = \"http://{}/{store}\"\nchannel = \"{channel}\"\n\
         [updates]\nstrategy = \"{strategy}\"\n\
         [updates.fleet_lock]\nbase_url = \"http://{}\"\n\
         [agent]\nfirst_check_seconds = 1\ncheck_interval_seconds = 600\njitter_seconds = 0\n\
         reboot_retry_seconds = 10\nfailure_backoff_seconds = 10\n",
        STORE_HTTP_ADDRESS.trim_end_matches(":80"),
        LOCK_HTTP_ADDRESS.trim_end_matches(":80"),
    )
}

/// The servers the guest reaches: the stores, and the lock server.
pub fn servers(stores: &Path, mode: Mode, lock_log: &Path) -> Vec<(&'static str, http::Content)> {
    let mut servers = vec![(
        STORE_HTTP_ADDRESS,
        http::Content {
            store: Some(stores.to_owned()),
            ..Default::default()
        },
    )];
    if mode == Mode::FleetLock {
        servers.push((
            LOCK_HTTP_ADDRESS,
            http::Content {
                fleet_lock: Some(http::FleetLockServer {
                    log: lock_log.to_owned(),
                    refusals: LOCK_REFUSALS,
                }),
                ..Default::default()
            },
        ));
    }
    servers
}

/// The agent's own account of the update (its status after the last boot)
/// and, with FleetLock, the checks of the other stores and the lock
/// server's log.
pub fn judge(
    report: &BTreeMap<String, String>,
    mode: Mode,
    old: &str,
    new: &str,
    lock_log: &Path,
    outcome: BootOutcome,
) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let status: serde_json::Value =
        serde_json::from_str(get("agent_status")).unwrap_or(serde_json::Value::Null);
    let history: Vec<&str> = status["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["message"].as_str()).collect())
        .unwrap_or_default();
    let said = |text: &str| history.iter().any(|m| m.contains(text));
    let mut checks = vec![check(
        "the agent downloaded, verified and installed the update on its own",
        said(&format!("installed {new} (")),
        format!("\"installed {new} (... bytes downloaded ...)\" in its history"),
        history.join(" | "),
    )];
    if mode == Mode::Failing {
        let bad = status["bad_versions"]
            .as_array()
            .and_then(|b| b.iter().find(|v| v["version"] == new))
            .and_then(|v| v["reason"].as_str())
            .unwrap_or("");
        checks.extend([
            check(
                "the agent marked the failed version bad",
                bad.contains("boot counting went back"),
                format!("{new} in bad_versions, rolled back"),
                bad,
            ),
            check(
                "the agent does not try it again and says so",
                status["last_check"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("not installing {new}")))
                    && status["running_version"] == old,
                format!("running {old}; last check: not installing {new}"),
                format!(
                    "running {}; last check: {}",
                    status["running_version"], status["last_check"]["message"]
                ),
            ),
        ]);
        return checks;
    }
    let settled = format!("updated from {old} to {new}");
    checks.push(check(
        "the agent settled the new boot and reports it",
        status["running_version"] == new
            && status["pending"].is_null()
            && status["last_update"]["message"] == settled.as_str()
            && status["state"] == "idle",
        format!("running {new}, idle, last update \"{settled}\""),
        format!(
            "running {}, {}, last update {}",
            status["running_version"], status["state"], status["last_update"]["message"]
        ),
    ));
    if mode == Mode::FleetLock {
        checks.extend(store_checks(report));
        checks.push(check(
            "the agent waited for the fleet lock",
            said(&format!(
                "{new} is installed; not rebooting yet: the fleet lock"
            )),
            "\"not rebooting yet: the fleet lock ... refused\" in its history",
            history.join(" | "),
        ));
        checks.push(lock_log_check(lock_log, outcome));
    }
    checks
}

/// Each extra store's check installed nothing, for its reason.
fn store_checks(report: &BTreeMap<String, String>) -> Vec<Check> {
    let names: Vec<&str> = report
        .keys()
        .filter_map(|k| k.strip_prefix("agent.check."))
        .collect();
    let mut checks = vec![check(
        "the other stores were checked first",
        !names.is_empty(),
        "a check per store",
        names.join(", "),
    )];
    for name in names {
        let said = report[&format!("agent.check.{name}")].as_str();
        let staged = report
            .get(&format!("agent.staged.{name}"))
            .map(String::as_str)
            .unwrap_or("?");
        let reason = KNOWN_STORES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, reason)| *reason);
        checks.push(check(
            &format!("store {name}: nothing downloaded or installed"),
            staged.trim().is_empty() && reason.is_none_or(|r| said.contains(r)),
            format!(
                "{}nothing staged",
                reason.map(|r| format!("\"{r}\", ")).unwrap_or_default()
            ),
            format!("{said}; staged: {staged}"),
        ));
    }
    checks
}

/// The lock server saw: refused pre-reboots, a granted one, then the
/// steady state, all from one node id in one group, with the protocol
/// header. (Before them, the agent reported a steady state when it started,
/// as Zincati does at every start.)
fn lock_log_check(lock_log: &Path, outcome: BootOutcome) -> Check {
    let text = std::fs::read_to_string(lock_log).unwrap_or_default();
    let requests: Vec<LockRequest> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let from_first_request = requests
        .iter()
        .position(|r| r.path == "/v1/pre-reboot")
        .unwrap_or(requests.len());
    let (_, requests) = requests.split_at(from_first_request);
    let sequence: Vec<String> = requests
        .iter()
        .map(|r| {
            format!(
                "{}{}",
                r.path.trim_start_matches("/v1/"),
                if r.granted { "" } else { " (refused)" }
            )
        })
        .collect();
    let refused = LOCK_REFUSALS as usize;
    let expected_start: Vec<String> =
        std::iter::repeat_n("pre-reboot (refused)".to_owned(), refused)
            .chain(["pre-reboot".to_owned(), "steady-state".to_owned()])
            .collect();
    let one_node = requests
        .windows(2)
        .all(|w| w[0].id == w[1].id && w[0].group == w[1].group);
    let headers = requests.iter().all(|r| r.protocol_header);
    check(
        "the lock server saw pre-reboot refused, then granted, then steady-state from one node",
        outcome == BootOutcome::PoweredOff
            && sequence.starts_with(&expected_start)
            && one_node
            && headers
            && requests.first().is_some_and(|r| r.group == "default"),
        expected_start.join(", "),
        format!(
            "{} (ids {}, group {})",
            sequence.join(", "),
            requests
                .iter()
                .map(|r| r.id.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(" "),
            requests.first().map_or("-", |r| r.group.as_str())
        ),
    )
}
