//! The service: settles what the last boot means for a pending update,
//! then checks on a schedule (a first check a few minutes after a healthy
//! boot, then hourly with jitter, backing off after failures), and reboots
//! into an installed update when the strategy allows.

use std::time::Duration;

use anyhow::{Context, Result};
use rustix::fs::FlockOperation;
use serde::Serialize;

use crate::check::{Check, Outcome};
use crate::config::{Config, StrategyName};
use crate::fleet_lock::FleetLock;
use crate::host;
use crate::identity::Identity;
use crate::paths::Paths;
use crate::state::{Event, Phase, State};
use crate::strategy::{may_reboot, RebootDecision};

/// The agent's view of the host, loaded once per run.
pub struct Agent {
    pub paths: Paths,
    pub config: Config,
    pub identity: Identity,
}

/// What one round (a check, then the reboot decision) came to.
#[derive(Debug, Serialize)]
pub struct Round {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// What the strategy said about rebooting, when an update waits for it.
    pub reboot: Option<String>,
}

impl Agent {
    pub fn load(paths: Paths) -> Result<Self> {
        let config = Config::load(&paths)?;
        let identity = Identity::load(&paths)?;
        Ok(Self {
            paths,
            config,
            identity,
        })
    }

    /// Runs forever as the service. Each round takes the lock and reads the
    /// state afresh, and the lock is let go before sleeping, so
    /// `boxcar-update check` can run between rounds (and what it did is
    /// what the next round starts from).
    pub fn serve(&self) -> Result<()> {
        if !self.settle_at_start()? {
            self.release_fleet_lock();
        }
        sleep(self.config.agent.first_check_seconds);
        loop {
            let wait = self.serve_round().unwrap_or_else(|error| {
                // Not a failed check (the round records those) but the
                // lock or the state file: said here, tried again later.
                eprintln!("{error:#}");
                self.backoff(1)
            });
            sleep(wait);
        }
    }

    /// What the last boot means, settled when the service starts; whether
    /// an update still waits for its reboot.
    fn settle_at_start(&self) -> Result<bool> {
        let _lock = self.lock(WhenBusy::Wait)?;
        let mut state = State::load(&self.paths)?;
        self.settle_boot(&mut state)?;
        Ok(state.pending.is_some())
    }

    /// One round of the service, under the lock; how long to sleep before
    /// the next.
    fn serve_round(&self) -> Result<u64> {
        let _lock = self.lock(WhenBusy::Wait)?;
        let mut state = State::load(&self.paths)?;
        self.settle_boot(&mut state)?;
        let wait = match self.round(&mut state, false) {
            Ok(round) => {
                self.report(&round);
                if state.phase == Phase::RebootPending {
                    self.config.agent.reboot_retry_seconds
                } else {
                    self.next_check()
                }
            }
            // The round recorded the failure (and said it, once).
            Err(_) => self.backoff(state.failures_in_a_row),
        };
        Ok(wait)
    }

    /// One round for `boxcar-update check`, under the same lock as the
    /// service's rounds (refused while one runs, rather than waiting for
    /// a download the operator did not ask for).
    pub fn check_once(&self, ignore_waves: bool) -> Result<Round> {
        let _lock = self.lock(WhenBusy::Refuse)?;
        let mut state = State::load(&self.paths)?;
        self.settle_boot(&mut state)?;
        self.round(&mut state, ignore_waves)
    }

    /// A check, then a reboot if one is due and allowed; the state is
    /// saved. A failed round counts once towards the backoff, whichever
    /// step failed.
    fn round(&self, state: &mut State, ignore_waves: bool) -> Result<Round> {
        let round = self.check_and_reboot(state, ignore_waves);
        if round.is_ok() {
            state.failures_in_a_row = 0;
            state.last_error = None;
        } else {
            state.failures_in_a_row += 1;
        }
        state.save(&self.paths)?;
        round
    }

    /// The two steps of a round; a failure of either is recorded as it
    /// happens (and the check's is the one returned when both fail).
    fn check_and_reboot(&self, state: &mut State, ignore_waves: bool) -> Result<Round> {
        let checked = self
            .check(state, ignore_waves)
            .map_err(|error| record_failure(state, "update check failed", error));
        // An update installed earlier reboots even when this check fails
        // (a newer release that does not download, say): it was checked in
        // full when it was installed.
        let reboot = self.reboot_if_due(state).map_err(|error| {
            let what = format!("rebooting into {} failed", pending_version(state));
            record_failure(state, &what, error)
        });
        Ok(Round {
            outcome: checked?,
            reboot: reboot?,
        })
    }

    /// The check, recorded as the last one (and in the history when it
    /// installed or skipped something).
    fn check(&self, state: &mut State, ignore_waves: bool) -> Result<Outcome> {
        let check = Check {
            paths: &self.paths,
            config: &self.config,
            identity: &self.identity,
            ignore_waves,
            now: host::now(),
        };
        let outcome = check.run(state);
        let summary = match &outcome {
            Ok(outcome) => describe(outcome),
            Err(_) => "failed".into(),
        };
        state.last_check = Some(event(summary));
        if let Ok(outcome @ (Outcome::Installed(_) | Outcome::SkippedBad { .. })) = &outcome {
            state.record(describe(outcome));
        }
        outcome
    }

    /// The reboot decision, when an installed update waits for one.
    fn reboot_if_due(&self, state: &mut State) -> Result<Option<String>> {
        if state.phase != Phase::RebootPending {
            return Ok(None);
        }
        self.reboot_if_allowed(state).map(Some)
    }

    /// Asks the strategy, and reboots when it says so.
    fn reboot_if_allowed(&self, state: &mut State) -> Result<String> {
        let version = pending_version(state);
        match may_reboot(&self.config, host::now(), &self.identity.node_id)? {
            RebootDecision::Now { lock_taken } => {
                if let Some(pending) = &mut state.pending {
                    pending.lock_taken |= lock_taken;
                }
                state.phase = Phase::Rebooting;
                state.record(format!("rebooting into {version}"));
                state.save(&self.paths)?;
                if let Err(error) = host::reboot() {
                    // The update is still installed: the next round asks
                    // the strategy and reboots again.
                    state.phase = Phase::RebootPending;
                    state.save(&self.paths)?;
                    return Err(error);
                }
                Ok(format!("rebooting into {version}"))
            }
            RebootDecision::Wait(why) => {
                let message = format!("{version} is installed; not rebooting yet: {why}");
                state.record_change(message.clone());
                state.save(&self.paths)?;
                Ok(message)
            }
            RebootDecision::Never => Ok(format!(
                "{version} is installed; strategy \"off\" leaves the reboot to the operator (/run/reboot-required)"
            )),
        }
    }

    /// What the last reboot means for a pending update: the new version
    /// runs and the boot is healthy (done), or boot counting went back to
    /// the old one (the new one is bad, never tried again).
    pub fn settle_boot(&self, state: &mut State) -> Result<()> {
        let Some(pending) = state.pending.clone() else {
            return Ok(());
        };
        if pending.installed_in_boot == host::boot_id()? {
            state.phase = Phase::RebootPending;
            return Ok(());
        }
        let running = host::running_version(&self.paths)?;
        if running == pending.version {
            if host::unit_state("boot-complete.target")? != "active" {
                eprintln!(
                    "{} is running but its boot is not healthy (boot-complete.target is not active); the update is not settled",
                    pending.version
                );
                return Ok(());
            }
            let message = format!(
                "updated from {} to {}",
                pending.from_version, pending.version
            );
            state.record(message.clone());
            state.last_update = Some(event(message));
        } else {
            let reason =
                format!("it did not boot healthy, and boot counting went back to {running}");
            state.record(format!(
                "update to {} failed: {reason}; it is marked bad and will not be installed again automatically",
                pending.version
            ));
            state.mark_bad(&pending.version, reason, host::format_now());
        }
        state.pending = None;
        state.phase = Phase::Idle;
        state.save(&self.paths)
    }

    /// With the fleet_lock strategy, a healthy host holds no slot: tell
    /// the server (as Zincati does at every start), retrying until it
    /// listens. The lock is not held while asking: a `check` may run.
    fn release_fleet_lock(&self) {
        if self.config.updates.strategy != StrategyName::FleetLock {
            return;
        }
        loop {
            let released = FleetLock::new(
                &self.config.updates.fleet_lock,
                &self.identity.node_id,
                &self.config,
            )
            .and_then(|lock| lock.steady_state());
            match released {
                Ok(None) => {
                    self.record_in_history(format!(
                        "reported steady state to the fleet lock at {}",
                        self.config.updates.fleet_lock.base_url
                    ));
                    return;
                }
                Ok(Some(refusal)) => {
                    eprintln!("the fleet lock did not take the steady state: {refusal}")
                }
                Err(error) => {
                    eprintln!("reporting steady state to the fleet lock failed: {error:#}")
                }
            }
            sleep(self.config.agent.reboot_retry_seconds);
        }
    }

    /// Adds an event to the saved history, under the lock (a `check` may
    /// be saving the state at the same time).
    fn record_in_history(&self, message: String) {
        let recorded = self.lock(WhenBusy::Wait).and_then(|_lock| {
            let mut state = State::load(&self.paths)?;
            state.record(message.clone());
            state.save(&self.paths)
        });
        if let Err(error) = recorded {
            eprintln!("{message} (not kept in the history: {error:#})");
        }
    }

    /// Says what a round came to, unless its history entry already did.
    fn report(&self, round: &Round) {
        if !matches!(
            round.outcome,
            Outcome::Installed(_) | Outcome::SkippedBad { .. }
        ) {
            eprintln!("{}", describe(&round.outcome));
        }
    }

    /// The next regular check: the interval give or take the jitter.
    fn next_check(&self) -> u64 {
        let jitter = self.config.agent.jitter_seconds;
        if jitter == 0 {
            return self.config.agent.check_interval_seconds;
        }
        let spread = u64::from(host::now().nanosecond()) % (2 * jitter + 1);
        (self.config.agent.check_interval_seconds + spread).saturating_sub(jitter)
    }

    /// After `failures` failed checks in a row: the backoff doubles each
    /// time, up to four check intervals.
    fn backoff(&self, failures: u32) -> u64 {
        let agent = &self.config.agent;
        let doubled = agent
            .failure_backoff_seconds
            .saturating_mul(1 << failures.saturating_sub(1).min(16));
        doubled
            .min(agent.check_interval_seconds.saturating_mul(4))
            .max(1)
    }

    /// One round at a time: the service and `boxcar-update check` share
    /// this lock. The lock file is never opened through a symlink (one left
    /// in its place would have the agent create or lock another file).
    fn lock(&self, when_busy: WhenBusy) -> Result<std::fs::File> {
        let dir = self.paths.state_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("lock");
        let file = boxcar_client::files::open_regular(&path)?;
        let how = match when_busy {
            WhenBusy::Wait => FlockOperation::LockExclusive,
            WhenBusy::Refuse => FlockOperation::NonBlockingLockExclusive,
        };
        match (rustix::fs::flock(&file, how), when_busy) {
            (Ok(()), _) => Ok(file),
            (Err(_), WhenBusy::Refuse) => anyhow::bail!(
                "another boxcar-update is checking right now (it holds {}); try again when it is done",
                path.display()
            ),
            (Err(errno), WhenBusy::Wait) => Err(std::io::Error::from(errno))
                .with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// What taking the lock does while another process holds it.
#[derive(Clone, Copy)]
enum WhenBusy {
    /// The service waits for a `check` to finish.
    Wait,
    /// A `check` gives up at once, saying why.
    Refuse,
}

/// One line for the journal and for status.
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::NotFollowing { reason } => format!("not following a channel: {reason}"),
        Outcome::UpToDate { version } => format!("up to date: {version}"),
        Outcome::SkippedBad { version, reason } => {
            format!("not installing {version}: it failed here before ({reason})")
        }
        Outcome::Waiting { version, wave } => match wave {
            crate::rollout::WaveStatus::Paused { since } => {
                format!("{version} is available, but its rollout is paused (since {since})")
            }
            crate::rollout::WaveStatus::NotYet {
                percent,
                next_wave_at,
            } => format!(
                "{version} is available to {percent} % of the fleet, not yet to this host; its wave opens {}",
                next_wave_at.as_deref().unwrap_or("never (no wave reaches it)")
            ),
            crate::rollout::WaveStatus::Open { .. } => format!("{version} is available"),
        },
        Outcome::AlreadyInstalled { version } => format!("{version} is installed, waiting for its reboot"),
        Outcome::Installed(installed) => format!(
            "installed {} ({} bytes downloaded in {:.1} s, verified in {:.1} s, installed in {:.1} s)",
            installed.version,
            installed.downloaded_bytes,
            installed.download_seconds,
            installed.verify_seconds,
            installed.install_seconds
        ),
    }
}

/// Says a failed step of a round (one journal line) and keeps it in the
/// history and as the last error; gives the error back.
fn record_failure(state: &mut State, what: &str, error: anyhow::Error) -> anyhow::Error {
    state.last_error = Some(event(format!("{error:#}")));
    state.record(format!("{what}: {error:#}"));
    error
}

/// The version an installed update waits to reboot into.
fn pending_version(state: &State) -> String {
    state
        .pending
        .as_ref()
        .map(|p| p.version.clone())
        .unwrap_or_default()
}

fn event(message: String) -> Event {
    Event {
        at: host::format_now(),
        message,
    }
}

fn sleep(seconds: u64) {
    std::thread::sleep(Duration::from_secs(seconds));
}
